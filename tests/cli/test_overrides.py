"""``--set KEY=VALUE``, one way for every command that reads a config (issue 26 item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddx.cli import main
from feddx.cli._overrides import parse_overrides, with_overrides
from feddx.errors import ConfigError
from feddx.federated.config import FederatedConfig
from feddx.personalize.config import PersonalizeConfig
from feddx.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_values_are_toml_scalars_and_dotted_keys_nest() -> None:
    assert parse_overrides(["epochs=3", "learning-rate=0.5", "resume=true", "data=csv:x.csv"]) == {
        "epochs": 3,
        "learning-rate": 0.5,
        "resume": True,
        "data": "csv:x.csv",
    }
    assert parse_overrides(["lora.rank=4", "lora.top-layers=2"]) == {
        "lora": {"rank": 4, "top-layers": 2}
    }
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        parse_overrides(["epochs"])


def test_overrides_apply_in_either_key_spelling() -> None:
    cfg = with_overrides(TrainConfig(), ["learning-rate=0.05", "lora.top_layers=3"])
    assert cfg.learning_rate == 0.05 and cfg.lora.top_layers == 3
    assert cfg.lora.rank == TrainConfig().lora.rank  # the rest of the table is kept
    assert with_overrides(FederatedConfig(), ["num-rounds=7"]).num_rounds == 7
    with pytest.raises(ConfigError, match="--set: unknown setting 'epoch'"):
        with_overrides(TrainConfig(), ["epoch=2"])


def test_personalize_takes_set(capsys: pytest.CaptureFixture[str]) -> None:
    config = CONFIGS / "personalize-uci.yaml"
    assert with_overrides(PersonalizeConfig.from_file(config), ["rounds=1"]).rounds == 1
    # A bad override fails in one line, before any model loads.
    assert main(["personalize", "--config", str(config), "--set", "roundz=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error: --set: unknown setting 'roundz'") and "\n" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "uci-heart", "--out", "unused", "--set", "epoch=2"],
        ["demo", "--stages", "data", "--set", "epoch=2"],
    ],
    ids=["train", "demo"],
)
def test_train_and_the_demo_take_set(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Both validate --set like a config file, and fail in one line before any work."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddx: error: --set: unknown setting 'epoch'") and "\n" not in err
