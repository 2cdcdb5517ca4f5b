"""One key style in config files (issue 26 item 1): kebab-case, as Flower's run config;
snake_case accepted and normalised, for every model and at any depth."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feddx.demo.options import DemoOptions
from feddx.errors import ConfigError
from feddx.federated.config import FederatedConfig
from feddx.personalize.config import PersonalizeConfig
from feddx.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_kebab_and_snake_case_give_the_same_config() -> None:
    kebab = TrainConfig.from_mapping(
        {"learning-rate": 0.01, "batch-size": 4, "lora": {"top-layers": 2, "rank": 4}}
    )
    snake = TrainConfig.from_mapping(
        {"learning_rate": 0.01, "batch_size": 4, "lora": {"top_layers": 2, "rank": 4}}
    )
    assert kebab == snake and kebab.lora.top_layers == 2
    assert FederatedConfig.from_mapping({"num_rounds": 2}) == FederatedConfig.from_mapping(
        {"num-rounds": 2}
    )


def test_an_unknown_key_is_named_as_written() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'learning-rat'"):
        TrainConfig.from_mapping({"learning-rat": 0.1})


@pytest.mark.parametrize("path", sorted(CONFIGS.iterdir()), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_is_written_in_kebab_case(path: Path) -> None:
    model = {"personalize": PersonalizeConfig, "train": TrainConfig, "demo": DemoOptions}.get(
        path.name.split("-")[0], FederatedConfig
    )
    model.from_file(path)
    keys = re.findall(r"^\s*(?:- )?([A-Za-z0-9_-]+)\s*[:=]", path.read_text(), re.M)
    assert keys and not [k for k in keys if "_" in k]
