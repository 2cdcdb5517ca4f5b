"""The training recipe: what every adapter records, the hardware defaults it applies, and
``feddx train``'s hardware options (the CPU in float32 trains; a GPU this machine lacks is
refused in one line before any data or model loads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from train_fixtures import make_cases, make_tiny_llama  # type: ignore[import-not-found]

import feddx.cli.train  # noqa: F401  (registers the command)
from cli_errors import one_line_error
from feddx.cli import main
from feddx.data.candidates import CandidateList
from feddx.data.jsonl import write_jsonl
from feddx.model.adapter import (
    LoraSpec,
    adapter_state,
    attach_lora,
    read_adapter_info,
    read_adapter_state,
)
from feddx.model.loading import load_base_model
from feddx.train.config import DPConfig, TrainConfig
from feddx.train.recipe import (
    adapter_record,
    attach_adapter,
    save_trained_adapter,
    train_and_save,
    training_config_for,
)
from feddx.train.trainer import train_adapter

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
LORA = LoraSpec(rank=4, target_modules=("q_proj", "v_proj"), top_layers=1)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cases.jsonl"
    write_jsonl(make_cases(20), path)
    return path


def test_the_adapter_records_what_it_depends_on(tokenizer: Any, tmp_path: Path) -> None:
    net = attach_adapter(make_tiny_llama(len(tokenizer), layers=2), LORA, seed=0)
    candidates = CandidateList(["Asthma", "Migraine"], {"Asthma": "J45.9"})
    info = save_trained_adapter(
        net,
        tmp_path / "adapter",
        base_fingerprint="tiny:test",
        max_prompt_tokens=200,
        candidates=candidates,
        metadata={"data": "jsonl:x"},
    )
    meta = info.metadata
    assert meta["data"] == "jsonl:x" and meta["architecture"] == "llama"
    assert meta["target_modules"] == ["q_proj", "v_proj"]
    assert meta["candidates"] == ["Asthma", "Migraine"] and meta["icd10"] == {"Asthma": "J45.9"}
    assert meta["trained_on"] == {"device": "cpu", "dtype": "float32", "quantize": "none"}
    assert meta["max_prompt_tokens"] == 200 == info.max_prompt_tokens
    assert read_adapter_info(tmp_path / "adapter").metadata == meta


def test_equal_seeds_give_equal_initial_adapters(tokenizer: Any) -> None:
    a = attach_adapter(make_tiny_llama(len(tokenizer), layers=2), LORA, seed=3)
    b = attach_adapter(make_tiny_llama(len(tokenizer), layers=2), LORA, seed=3)
    key = next(k for k, _ in a.named_parameters() if "lora_A" in k)
    assert torch.equal(dict(a.named_parameters())[key], dict(b.named_parameters())[key])


def test_gradient_checkpointing_defaults_off_on_the_cpu(tokenizer: Any) -> None:
    net = attach_adapter(make_tiny_llama(len(tokenizer), layers=2), LORA, seed=0)
    assert TrainConfig().gradient_checkpointing is None
    assert training_config_for(net, TrainConfig()).gradient_checkpointing is False
    # an explicit choice is kept
    assert training_config_for(net, TrainConfig(gradient_checkpointing=True)).gradient_checkpointing
    assert training_config_for(net, TrainConfig(dp=DPConfig())).gradient_checkpointing is False


def test_candidate_names_without_codes_are_recorded(tokenizer: Any) -> None:
    net = attach_adapter(make_tiny_llama(len(tokenizer), layers=2), LORA, seed=0)
    record = adapter_record(net, 128, ["A", "B"])
    assert record["candidates"] == ["A", "B"] and "icd10" not in record


def test_train_and_save_trains_and_saves(tiny_llama_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(lora=LORA, batch_size=4, max_steps=2, learning_rate=0.01)
    cases = make_cases(8)
    done = train_and_save(
        str(tiny_llama_dir),
        cases,
        config,
        tmp_path / "run",
        candidates=CandidateList(sorted({c.require_label().diagnosis for c in cases})),
        metadata={"seed": 0},
    )
    assert done.result.steps == 2
    assert done.adapter.directory == tmp_path / "run" / "adapter"
    assert done.adapter.metadata["model"] == tiny_llama_dir.name
    assert done.adapter.metadata["seed"] == 0
    assert done.adapter.base_fingerprint == done.loaded.fingerprint


def test_the_recipe_trains_what_load_attach_train_did_before_it(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    # The steps feddx train took before the recipe (load in float32, seed, attach, train):
    # on the CPU in float32 the recipe gives the same adapter, tensor for tensor.
    config = TrainConfig(lora=LORA, batch_size=4, max_steps=2, learning_rate=0.01)
    cases = make_cases(8)
    done = train_and_save(str(tiny_llama_dir), cases, config, tmp_path / "recipe")
    loaded = load_base_model(str(tiny_llama_dir))
    torch.manual_seed(config.seed)
    net = attach_lora(loaded.model, config.lora)
    train_adapter(net, loaded.tokenizer, cases, config.replace(gradient_checkpointing=False))
    saved, _ = read_adapter_state(done.adapter.directory)
    before = adapter_state(net)
    assert saved.keys() == before.keys()
    assert all(torch.equal(saved[k], before[k]) for k in before)


def test_feddx_train_on_the_cpu_in_float32(
    tiny_llama_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        f"jsonl:{data_file}",
        "--model",
        str(tiny_llama_dir),
        "--out",
        str(out),
    ]
    argv += ["--device", "cpu", "--dtype", "float32", "--max-steps", "1", "--top-layers", "1"]
    assert main(argv) == 0
    assert "cpu float32" in capsys.readouterr().out
    meta = read_adapter_info(out).metadata
    assert meta["trained_on"] == {"device": "cpu", "dtype": "float32", "quantize": "none"}
    assert meta["config"]["hardware"] == {"device": "cpu", "dtype": "float32", "quantize": "none"}
    assert len(meta["candidates"]) == 4 and meta["split"] == "train"
    result = json.loads((out / "train_result.json").read_text())
    assert "candidates" not in result and result["base_fingerprint"]


@needs_no_cuda
@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--device", "cuda"], "no CUDA GPU"),
        (["--device", "cuda:1"], "no CUDA GPU"),
        (["--quantize", "4bit"], "needs a CUDA GPU"),
        (["--device", "tpu"], "hardware.device"),
        (["--dtype", "float8"], "hardware.dtype"),
    ],
)
def test_feddx_train_refuses_hardware_it_lacks_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], says: str
) -> None:
    # the data does not exist: the hardware is checked first, in a second
    argv = ["train", "--data", f"jsonl:{tmp_path / 'missing.jsonl'}", "--out", str(tmp_path)]
    assert main(argv + options) != 0
    assert says in one_line_error(capsys)


@needs_no_cuda
def test_a_config_files_hardware_section_is_checked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.toml"
    config.write_text('epochs = 1\n[hardware]\ndevice = "cuda"\n')
    argv = ["train", "--data", "jsonl:x.jsonl", "--out", str(tmp_path), "--config", str(config)]
    assert main(argv) != 0
    assert "no CUDA GPU" in one_line_error(capsys)
