"""``feddx demo`` end to end on a tiny model (the real model is exercised by the smollm2 tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from feddx.cli import main


def test_demo_zero_shot_and_centralized_on_a_tiny_model(
    tmp_path: Path,
    tiny_model: Any,
    tokenizer: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FEDDX_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = ["demo", "--model", str(model_dir), "--stages", "zero-shot,centralized"]
    argv += ["--limit", "6", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "920 UCI Heart cases from 4 hospitals" in out
    assert "3. Zero-shot" in out and "4. Centralized fine-tune" in out
    for column in ("zero-shot", "centralized", "logistic", "majority"):
        assert column in out
    assert (tmp_path / "run" / "centralized-adapter").is_dir()
