"""The CLI: help, version, and one-line errors with non-zero exits for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddx import __version__
from feddx.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "models", "version", "data"):
        assert cmd in out


@pytest.mark.parametrize(
    "argv",
    [["no-such-command"], ["demo", "--seed", "x"], ["demo", "--test-fraction", "2"]],
)
def test_bad_arguments_are_one_line_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error:") and "\n" not in err and "Traceback" not in err


def test_unknown_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # its own run folder: a demo the user ran in ./runs/demo must not change the answer
    out = str(tmp_path / "run")
    assert main(["demo", "--model", "nonexistent-model", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error: unknown model") and "\n" not in err


def test_models_lists_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDDX_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    assert "No models cached" in capsys.readouterr().out
