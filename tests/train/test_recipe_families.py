"""``feddx train --model DIR`` through the recipe, for every family of
``tests/model/test_families.py``: a tiny random model saved as a Hugging Face directory trains
two steps on the CPU in float32 and its adapter records the family and the targets ``auto``
chose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from train_fixtures import make_cases  # type: ignore[import-not-found]

import feddx.cli.train  # noqa: F401  (registers the command)
from feddx.cli import main
from feddx.data.jsonl import write_jsonl
from feddx.model.adapter import read_adapter_info
from tiny_models import FAMILIES, make_tiny_model  # type: ignore[import-not-found]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cases.jsonl"
    write_jsonl(make_cases(12), path)
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_feddx_train_trains_every_family(
    family: str, tokenizer: Any, data_file: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / family
    model = make_tiny_model(family, len(tokenizer))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    argv = ["train", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--out", str(out)]
    argv += ["--device", "cpu", "--dtype", "float32", "--max-steps", "2", "--batch-size", "4"]
    assert main(argv) == 0
    meta = read_adapter_info(out).metadata
    assert meta["architecture"] == model.config.model_type
    assert meta["target_modules"] and "auto" not in meta["target_modules"]
    assert meta["trained_on"] == {"device": "cpu", "dtype": "float32", "quantize": "none"}
