"""The results-table plan: which runs it holds, that finished runs are reused, and how the
markdown reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from feddx.federated import experiments
from feddx.federated.experiments import PlanSettings, base_config, default_plan, write_results


def test_plan_covers_partitions_strategies_compression_privacy_and_hospitals() -> None:
    plan = default_plan(PlanSettings(ddxplus=Path("/data/ddxplus")))
    names = [e.name for e in plan]
    assert "ddxplus-centralized" in names and "uci-centralized" in names
    for alpha in (1.0, 0.5, 0.1):
        assert f"ddxplus-fedavg-dirichlet-{alpha}" in names
    for s in (
        "fedprox",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedavgm",
        "fedmedian",
        "fedtrimmedavg",
        "krum",
    ):
        assert f"ddxplus-{s}-dirichlet-0.5" in names
    assert {"ddxplus-fedavg-int8", "ddxplus-fedavg-topk", "ddxplus-fedavg-central-dp"} <= set(names)
    # The main answers come first, so an interrupted plan has them.
    assert names[:3] == [
        "ddxplus-centralized",
        "ddxplus-fedavg-dirichlet-0.5",
        "ddxplus-fedavg-int8",
    ]
    assert len(names) == len(set(names))
    hospitals = next(e for e in plan if e.name == "uci-fedavg-hospitals")
    assert hospitals.overrides["partition"] == "attribute"
    assert [e.name for e in default_plan(PlanSettings())] == [
        "uci-centralized",
        "uci-fedavg-hospitals",
        "uci-fedavg-iid",
    ]


def fake_summary(top1: float, nbytes: float = 4096.0) -> dict[str, Any]:
    return {
        "final": {"n": 100, "top1": top1, "top3": min(1.0, top1 + 0.1), "macro_f1": top1 / 2},
        "mean_bytes_per_reply": nbytes,
        "seconds": 60.0,
        "train_cases": 400,
        "epsilon_total": 3.5,
    }


def test_finished_runs_are_reused_and_the_table_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = PlanSettings(ddxplus=Path("/data/ddxplus"), groups=("partition", "compression"))
    plan = default_plan(settings)
    base = base_config(settings, tmp_path / "runs", "smollm2-135m-instruct")
    calls: list[str] = []

    def fake_fed(cfg: Any, engine: str) -> dict[str, Any]:
        calls.append(cfg.out_dir)
        nbytes = {"int8": 1000.0, "float16": 2048.0, "topk": 800.0}.get(cfg.compression, 4096.0)
        return fake_summary(0.8 if cfg.partition == "iid" else 0.7, nbytes)

    monkeypatch.setattr(experiments, "run_federated", fake_fed)
    monkeypatch.setattr(experiments, "run_centralized", lambda cfg: fake_summary(0.82))
    results = experiments.run_plan(plan, base, tmp_path / "runs", engine="inprocess")
    n_federated = sum(not e.centralized for e in plan)
    assert len(calls) == n_federated and len(results) == len(plan)
    experiments.run_plan(plan, base, tmp_path / "runs", engine="inprocess")  # all cached
    assert len(calls) == n_federated

    sizes = {
        "full_model": 538 * 2**20,
        "adapter": 123 * 1024,
        "full_model_params": 134_515_008,
        "adapter_params": 30_720,
    }
    md = write_results(
        results,
        settings,
        base,
        tmp_path / "federated.md",
        engine="inprocess",
        sizes=sizes,
        command="feddx federate experiments",
    ).read_text()
    assert "| FedAvg, IID | 100 | 400 | 80.0 |" in md
    assert "| FedAvg, Dirichlet alpha=0.5 | 100 | 400 | 70.0 | 80.0 | 35.0 | -12.0 |" in md
    assert "int8 4.10x" in md
    assert "4,479x smaller" in md


def test_demo_federation_is_one_client_per_hospital_on_the_demo_split(tmp_path: Path) -> None:
    from feddx.data.report import LoadReport
    from feddx.data.split import stratified_split
    from feddx.data.uci_heart import load_uci_heart
    from feddx.federated.demo import demo_config
    from feddx.federated.task import task_data

    cfg = demo_config(
        model="smollm2-135m-instruct", seed=3, test_fraction=0.2, out_dir=tmp_path / "demo"
    )
    assert (cfg.partition, cfg.partition_attribute, cfg.num_clients) == (
        "attribute",
        "institution",
        4,
    )
    assert Path(cfg.out_dir).is_absolute()
    # the federation is evaluated on exactly the demo's held-out cases
    _, test = stratified_split(list(load_uci_heart(None, LoadReport("uci-heart"))), 0.2, 3)
    assert [c.case_id for c in task_data(cfg).validation] == [c.case_id for c in test]


def test_the_full_model_counts_a_tied_embedding_once(fed_config: Any, tokenizer: Any) -> None:
    """SmolLM2 (and the tiny Llama) tie the LM head to the token embedding: one tensor under
    two names. The message-size comparison counts it once, as the model itself does."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(fed_config.model)
    assert base.config.tie_word_embeddings
    names = sum(v.numel() for v in base.state_dict().values())
    sizes = experiments.message_sizes(fed_config)
    assert sizes["full_model_params"] == base.num_parameters()
    assert names - sizes["full_model_params"] == len(tokenizer) * base.config.hidden_size


def test_the_centralized_baseline_trains_through_the_recipe_with_the_federation_budget(
    fed_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``fit`` call (the training recipe's, as the ClientApp's) over the union of the
    clients' cases, for ``num_rounds x local_epochs`` epochs, scored on the validation cases."""
    import math

    from feddx.train import recipe

    configs: list[Any] = []
    real_fit = recipe.fit

    def spy(model: Any, tokenizer: Any, cases: Any, config: Any, **options: Any) -> Any:
        configs.append(config)
        return real_fit(model, tokenizer, cases, config, **options)

    monkeypatch.setattr(recipe, "fit", spy)
    summary = experiments.run_centralized(fed_config)
    assert len(configs) == 1
    epochs = fed_config.num_rounds * fed_config.local_epochs
    assert configs[0].epochs == epochs and configs[0].gradient_checkpointing is None
    assert summary["strategy"] == "centralized" and summary["num_clients"] == 1
    assert summary["train_steps"] == epochs * math.ceil(summary["train_cases"] / 4)
    assert 0.0 <= summary["final"]["top1"] <= 1.0 and summary["train_loss"] > 0
