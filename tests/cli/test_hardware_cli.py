"""``feddx evaluate`` and ``feddx serve`` take the same --device/--dtype/--quantize as
``feddx train`` (tests/train/test_recipe.py), and refuse a GPU this machine lacks in one line
before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_errors import one_line_error
from feddx.cli import main
from feddx.serve.settings import ServeSettings

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@needs_no_cuda
@pytest.mark.parametrize(
    ("options", "says"),
    [(["--device", "cuda"], "no CUDA GPU"), (["--quantize", "4bit"], "needs a CUDA GPU")],
)
def test_evaluate_refuses_a_gpu_it_lacks(
    capsys: pytest.CaptureFixture[str], options: list[str], says: str
) -> None:
    argv = ["evaluate", "--data", "uci-heart", "--limit", "4", "--no-baseline", *options]
    assert main(argv) != 0
    assert says in one_line_error(capsys)


@needs_no_cuda
def test_serve_refuses_a_gpu_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDDX_CACHE", str(tmp_path))
    assert main(["serve", "--device", "cuda:0", "--registry", str(tmp_path / "r")]) != 0
    assert "no CUDA GPU" in one_line_error(capsys)


def test_serve_settings_carry_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDDX_SERVE_DTYPE", "bfloat16")
    settings = ServeSettings.load(None, device="cpu")
    spec = settings.hardware_spec()
    assert (spec.device, spec.dtype, spec.quantize) == ("cpu", "bfloat16", "none")
