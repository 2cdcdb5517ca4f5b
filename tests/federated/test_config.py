"""The run config: one typed model read from Flower's run_config and from files, in sync with
pyproject's [tool.flwr.app.config], refusing bad keys by name."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import pytest

from feddx.errors import ConfigError
from feddx.federated.config import FederatedConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_declares_the_app_with_every_config_key_at_its_default() -> None:
    app = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "feddx.federated.server_app:app",
        "clientapp": "feddx.federated.client_app:app",
    }
    assert app["config"] == FederatedConfig().to_run_config()


def test_run_config_round_trip() -> None:
    cfg = FederatedConfig(strategy="fedyogi", num_rounds=7, compression="int8")
    rc = cfg.to_run_config()
    assert rc["num-rounds"] == 7 and rc["strategy"] == "fedyogi"
    assert all(isinstance(v, bool | int | float | str) for v in rc.values())
    assert FederatedConfig.from_run_config(rc) == cfg


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"strategy": "fedsgd"}, "strategy"),
        ({"num-rounds": 0}, "num-rounds"),
        ({"learning-rate": -1.0}, "learning-rate"),
        ({"compression": "zip"}, "compression"),
        ({"nmu-rounds": 3}, "nmu-rounds"),
        ({"lora-targets": " , "}, "lora-targets"),
        ({"min-train-clients": 5, "min-available-clients": 2}, "min-available-clients"),
        ({"dp": "central", "strategy": "krum"}, "dp"),
    ],
)
def test_bad_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        FederatedConfig.from_run_config(data)


def test_unknown_key_is_called_unknown() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown setting 'nmu-rounds' \(did you mean 'num-rounds'\?\)"
    ):
        FederatedConfig.from_run_config({"nmu-rounds": 3})


def test_from_file_accepts_kebab_or_snake_case_and_a_section(tmp_path: Path) -> None:
    toml = tmp_path / "fed.toml"
    toml.write_text('num-rounds = 4\nstrategy = "fedprox"\nproximal_mu = 0.1\n')
    cfg = FederatedConfig.from_file(toml)
    assert (cfg.num_rounds, cfg.strategy, cfg.proximal_mu) == (4, "fedprox", 0.1)
    yaml = tmp_path / "fed.yaml"
    yaml.write_text("federated:\n  num-clients: 5\n  partition: dirichlet\n")
    assert FederatedConfig.from_file(yaml).num_clients == 5
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown setting 'rounds'"):
        FederatedConfig.from_file(bad)


def test_train_config_carries_lora_dp_and_proximal_settings() -> None:
    cfg = FederatedConfig(
        lora_rank=4,
        lora_top_layers=3,
        lora_targets="q_proj, v_proj,o_proj",
        dp="local",
        dp_noise_multiplier=1.3,
        local_steps=5,
    )
    tc = cfg.train_config(seed=11, proximal_mu=0.2)
    assert tc.lora.rank == 4 and tc.lora.top_layers == 3
    assert tc.lora.target_modules == ("q_proj", "v_proj", "o_proj")
    assert tc.dp is not None and tc.dp.noise_multiplier == 1.3
    assert (tc.seed, tc.proximal_mu, tc.max_steps) == (11, 0.2, 5)
    assert FederatedConfig().train_config(seed=0).dp is None


def test_round_schedule_decays_over_rounds_and_is_constant_within_one() -> None:
    cfg = FederatedConfig(learning_rate=0.01, num_rounds=4)
    lrs = [cfg.round_learning_rate(r) for r in range(1, 5)]
    assert lrs[0] == 0.01 and all(a > b > 0 for a, b in itertools.pairwise(lrs))
    first, later = cfg.train_config(seed=0), cfg.train_config(seed=0, server_round=3)
    assert (first.lr_schedule, first.warmup_ratio > 0) == ("constant", True)
    assert (later.lr_schedule, later.warmup_ratio, later.learning_rate) == ("constant", 0.0, lrs[2])
    local = cfg.replace(lr_schedule="local").train_config(seed=0, server_round=3)
    assert (local.lr_schedule, local.learning_rate) == ("cosine", 0.01)


def test_fingerprint_ignores_rounds_but_not_what_changes_results() -> None:
    base = FederatedConfig(lr_schedule="local")
    assert base.fingerprint() == base.replace(num_rounds=9, round_timeout=5.0).fingerprint()
    # Under the round schedule the number of rounds sets every round's learning rate.
    rounds = base.replace(lr_schedule="rounds")
    assert rounds.fingerprint() != rounds.replace(num_rounds=9).fingerprint()
    assert base.fingerprint() != base.replace(learning_rate=1e-3).fingerprint()
