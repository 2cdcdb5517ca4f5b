"""TrainConfig: the documented defaults, files in three formats, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddx.errors import ConfigError
from feddx.model.adapter import LoraSpec
from feddx.train.config import DPConfig, TrainConfig


def test_defaults_are_the_documented_contract() -> None:
    c = TrainConfig()
    assert c.lora == LoraSpec(
        rank=16, alpha=32, dropout=0.05, target_modules=("auto",), top_layers=None
    )  # "auto": the family's default targets (Llama: q_proj, v_proj, the default before it)
    assert (c.learning_rate, c.epochs, c.batch_size, c.grad_accum) == (2e-4, 1, 8, 1)
    assert (c.warmup_ratio, c.weight_decay, c.max_grad_norm, c.seed) == (0.05, 0.0, 1.0, 0)
    assert (c.max_prompt_tokens, c.max_steps, c.checkpoint_every) == (320, None, 0)
    assert (c.proximal_mu, c.dp) == (0.0, None)
    assert DPConfig() == DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "c.yaml",
            "epochs: 3\nlora:\n  rank: 8\n  top_layers: 4\n  target_modules: [q_proj]\ndp:\n  noise_multiplier: 0.5\n",
        ),
        (
            "c.json",
            '{"epochs": 3, "lora": {"rank": 8, "top_layers": 4, "target_modules": ["q_proj"]}, "dp": {"noise_multiplier": 0.5}}',
        ),
        (
            "c.toml",
            "epochs = 3\n[lora]\nrank = 8\ntop_layers = 4\ntarget_modules = ['q_proj']\n[dp]\nnoise_multiplier = 0.5\n",
        ),
        (
            "c.toml",
            "[train]\nepochs = 3\n[train.lora]\nrank = 8\ntop_layers = 4\ntarget_modules = ['q_proj']\n[train.dp]\nnoise_multiplier = 0.5\n",
        ),
    ],
)
def test_loads_yaml_json_and_toml(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    c = TrainConfig.from_file(path)
    assert c.epochs == 3
    assert c.lora == LoraSpec(rank=8, top_layers=4, target_modules=("q_proj",))
    assert c.dp == DPConfig(noise_multiplier=0.5)


def test_round_trips_through_to_dict() -> None:
    c = TrainConfig(lora=LoraSpec(rank=4, top_layers=2), dp=DPConfig(), max_steps=7)
    assert TrainConfig.from_mapping(c.to_dict()) == c


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochz: 3\n", "unknown setting 'epochz'"),
        ("lora:\n  rnak: 3\n", "unknown setting 'lora.rnak'"),
        ("epochs: three\n", "epochs must be int"),
        ("epochs: true\n", "epochs must be int"),
        ("epochs: 0\n", "epochs must be >= 1"),
        ("learning_rate: -1\n", "learning_rate must be > 0"),
        ("lora:\n  dropout: 1.5\n", "lora.dropout must be in [0, 1)"),
        ("lora:\n  target_modules: []\n", "lora.target_modules"),
        ("lora: 3\n", "lora must be a table"),
        ("dp:\n  delta: 2\n", "dp.delta must be in (0, 1)"),
        ("loss_reduction: batch\n", "loss_reduction must be one of token, example"),
        ("- 1\n- 2\n", "expected a table"),
        ("epochs: [\n", "cannot parse YAML"),
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_file(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        TrainConfig.from_file(tmp_path / "nope.yaml")
    (tmp_path / "c.ini").write_text("x=1")
    with pytest.raises(ConfigError, match="unknown config format"):
        TrainConfig.from_file(tmp_path / "c.ini")


def test_dp_can_be_switched_on_and_off_by_boolean() -> None:
    assert TrainConfig.from_mapping({"dp": True}).dp == DPConfig()
    assert TrainConfig.from_mapping({"dp": None}).dp is None


def test_gradient_checkpointing_and_dp_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        TrainConfig(gradient_checkpointing=True, dp=DPConfig())
