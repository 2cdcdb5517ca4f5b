"""An unknown --model is an input error: every command that takes --model prints one line and
exits 2 (issue 26 item 1), before it reads data or starts a server; never 1 or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddx.cli import main
from feddx.errors import ModelError, UnknownModelError
from feddx.model.loading import resolve_model


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], what: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error:") and what in err, err
    assert "\n" not in err and "Traceback" not in err


def test_train_unknown_model_exits_2_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the data does not exist: the model is checked first, so the error names the model
    argv = ["train", "--model", "no-such-model", "--data", f"csv:{tmp_path / 'none.csv'}"]
    _one_line_exit_2([*argv, "--out", str(tmp_path / "out")], capsys, "unknown model")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("model", "what"),
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("missing.gguf", "GGUF file not found"),
        ("no-org/no-such-model", "not in the local HF cache"),  # the suite runs offline
    ],
)
def test_evaluate_unknown_model_exits_2(
    model: str, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--model", model, "--data", "uci-heart", "--limit", "2"]
    _one_line_exit_2(argv, capsys, what)


def test_serve_unknown_model_exits_2_instead_of_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--model", "no-such-model", "--keys", str(tmp_path / "keys.json")]
    argv += ["--registry", str(tmp_path / "reg"), "--port", "1"]  # never bound: it exits first
    _one_line_exit_2(argv, capsys, "unknown model")


def test_a_directory_without_config_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError) as err:
        resolve_model(str(tmp_path))
    assert err.value.exit_code == 2 and isinstance(err.value, ModelError)
    assert ModelError("load failed").exit_code == 1  # a model that exists but fails: runtime


def test_federate_unknown_model_exits_2_before_flower_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = Path(__file__).resolve().parents[2] / "configs" / "fed.toml"
    argv = ["federate", "--config", str(fed), "--set", "model=no-such-model"]
    _one_line_exit_2([*argv, "--out", str(tmp_path / "fed")], capsys, "unknown model")
    assert not (tmp_path / "fed").exists()  # nothing started, nothing written


def test_registry_resolve_unknown_model_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from feddx.personalize.registry import AdapterRegistry

    AdapterRegistry(tmp_path / "reg")  # an empty registry: the model is what is wrong
    argv = ["registry", "resolve", "--model", "no-such-model", "--registry", str(tmp_path / "reg")]
    _one_line_exit_2(argv, capsys, "unknown model")


def test_demo_unknown_model_exits_2_before_its_data_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--model", "no-such-model", "--out", str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().startswith("feddx: error: unknown model")
    assert "\n" not in err.strip() and not (tmp_path / "run").exists()
