"""The federated results table, produced by one command: ``feddx federate experiments``.

A plan is a list of :class:`Experiment` s, each a set of overrides of one base
:class:`~feddx.federated.config.FederatedConfig`:

* DDXPlus (when its path is given), 5 clients: centralised training on the same cases and
  budget, FedAvg on IID and Dirichlet alpha 1.0 / 0.5 / 0.1 partitions, every strategy on
  alpha 0.5, the compression schemes, and central and local DP;
* UCI Heart's natural partition, one client per hospital (4), against centralised and IID.

"Same budget": the centralised run makes ``num-rounds x local-epochs`` passes over the union
of the clients' cases with the same optimiser settings, so every example is seen as often as
in the federation. Every run evaluates on the same held-out validation cases (``max-eval-cases``
of them). Each experiment writes ``<runs>/<name>/result.json`` (plus the usual run
folder); a finished experiment is skipped when the command is run again, so an interrupted plan
resumes. :func:`write_results` turns the results into ``federated.md``.

This is expensive on a small CPU machine; the defaults (adapters on the top 2 layers, cached
frozen-layer activations shared by all runs, a few rounds, a validation sample) are chosen to
make the full plan a matter of hours on 2 cores, and the sizes actually used are printed in the
results file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from feddx.federated.config import STRATEGIES, FederatedConfig
from feddx.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

Engine = Literal["flower", "inprocess"]
RESULTS_FILE = "federated.md"


@dataclass(frozen=True)
class Experiment:
    """One row of the results: a named set of overrides, or the centralised baseline."""

    name: str
    dataset: str
    group: str  # "partition", "strategy", "compression", "privacy"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    centralized: bool = False


@dataclass(frozen=True)
class PlanSettings:
    """Sizes of the plan (the knobs that decide its cost)."""

    ddxplus: Path | None = None
    rounds: int = 4
    local_epochs: int = 1
    ddxplus_clients: int = 5
    max_cases: int = 0
    max_eval_cases: int = 150
    lora_top_layers: int = 2
    lora_rank: int = 8
    lora_targets: str = "auto"
    learning_rate: float = 1e-3
    batch_size: int = 8
    max_prompt_tokens: int = (
        256  # what results/federated.md was measured with (7 of 1,567 DDXPlus prompts are longer)
    )
    strategies: tuple[str, ...] = STRATEGIES
    groups: tuple[str, ...] = ("partition", "strategy", "compression", "privacy")
    seed: int = 0


def base_config(settings: PlanSettings, runs: Path, model: str) -> FederatedConfig:
    """The settings every experiment starts from; runs go under ``runs/<name>`` and share one
    activation cache (``runs/activations``)."""
    return FederatedConfig(
        model=model,
        num_rounds=settings.rounds,
        local_epochs=settings.local_epochs,
        eval_every=settings.rounds,
        eval_initial=False,
        max_cases=settings.max_cases,
        max_eval_cases=settings.max_eval_cases,
        lora_top_layers=settings.lora_top_layers,
        lora_rank=settings.lora_rank,
        lora_alpha=2.0 * settings.lora_rank,
        lora_targets=settings.lora_targets,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        seed=settings.seed,
        min_train_clients=2,
        min_available_clients=2,
        out_dir=str(runs),
        activation_cache_dir=str(runs / "activations"),
    )


def default_plan(settings: PlanSettings) -> list[Experiment]:
    """The experiments of the results table (see the module docstring), cheapest answers to
    the main questions first: an interrupted plan has already produced the centralised
    reference, FedAvg on Dirichlet alpha 0.5, its 8-bit compressed twin and the other
    partitions (UCI's hospitals included) before it reaches the strategy sweep."""
    groups = set(settings.groups)
    uci = {"data": "uci-heart", "num-clients": 4, "max-cases": 0}
    uci_central = Experiment("uci-centralized", "uci-heart", "partition", uci, centralized=True)
    uci_hospitals = Experiment(
        "uci-fedavg-hospitals",
        "uci-heart",
        "partition",
        {**uci, "partition": "attribute", "partition-attribute": "institution"},
    )
    uci_iid = Experiment("uci-fedavg-iid", "uci-heart", "partition", {**uci, "partition": "iid"})
    if settings.ddxplus is None:
        return [uci_central, uci_hospitals, uci_iid]

    data = {
        "data": f"ddxplus:{settings.ddxplus.resolve()}",
        "num-clients": settings.ddxplus_clients,
    }
    dir05 = {**data, "partition": "dirichlet", "partition-alpha": 0.5}

    def ddx(name: str, group: str, overrides: Mapping[str, Any]) -> Experiment:
        return Experiment(f"ddxplus-{name}", "ddxplus", group, overrides)

    def compressed(scheme: str) -> Experiment:
        return ddx(f"fedavg-{scheme}", "compression", {**dir05, "compression": scheme})

    plan = [
        Experiment("ddxplus-centralized", "ddxplus", "partition", data, centralized=True),
        ddx("fedavg-dirichlet-0.5", "partition", dir05),
    ]
    if "compression" in groups:
        plan.append(compressed("int8"))
    if "partition" in groups:
        plan.append(ddx("fedavg-iid", "partition", {**data, "partition": "iid"}))
        for alpha in (1.0, 0.1):
            plan.append(
                ddx(
                    f"fedavg-dirichlet-{alpha}",
                    "partition",
                    {**data, "partition": "dirichlet", "partition-alpha": alpha},
                )
            )
    plan += [uci_central, uci_hospitals]
    if "strategy" in groups:
        plan += [
            ddx(f"{name}-dirichlet-0.5", "strategy", {**dir05, "strategy": name})
            for name in settings.strategies
            if name != "fedavg"
        ]
    if "compression" in groups:
        plan += [compressed("float16"), compressed("topk")]
    plan.append(uci_iid)
    if "privacy" in groups:
        plan.append(
            ddx(
                "fedavg-central-dp",
                "privacy",
                {**dir05, "dp": "central", "dp-noise-multiplier": 0.3, "dp-clipping-norm": 1.0},
            )
        )
        plan.append(
            ddx(
                "fedavg-local-dp",
                "privacy",
                {**dir05, "dp": "local", "dp-noise-multiplier": 0.8, "dp-clipping-norm": 1.0},
            )
        )
    return plan


# ----------------------------------------------------------------------------- running
def run_centralized(cfg: FederatedConfig) -> dict[str, Any]:
    """Train one adapter on all training cases with the federation's budget and evaluate it
    on the same validation cases; returns a summary shaped like a federated one."""
    from feddx.federated.codec import numpy_to_torch_state
    from feddx.federated.task import adapter_model, evaluate_adapter, task_data
    from feddx.model.adapter import adapter_state, load_adapter_state
    from feddx.train.recipe import fit

    data = task_data(cfg)
    am = adapter_model(cfg)
    load_adapter_state(am.model, numpy_to_torch_state(am.initial))
    # One warm-up and cosine decay over the whole budget (the "local" schedule of a single
    # round that lasts it): the curve a federation with lr-schedule "rounds" follows round by
    # round.
    train_cfg = (
        cfg.replace(lr_schedule="local")
        .train_config(seed=cfg.seed)
        .replace(epochs=cfg.num_rounds * cfg.local_epochs)
    )
    t0 = time.perf_counter()
    result = fit(
        am.model,
        am.tokenizer,
        data.train,
        train_cfg,
        feature_cache_dir=cfg.activation_cache_path(),
    )
    train_seconds = time.perf_counter() - t0
    am.model.eval()
    metrics = evaluate_adapter(
        am,
        adapter_state(am.model),
        data.validation[: cfg.max_eval_cases or None],
        data.candidates,
        data.icd10,
        max_prompt_tokens=cfg.max_prompt_tokens,
    )
    return {
        "strategy": "centralized",
        "data": cfg.data.split(":", 1)[0],
        "partition": "none",
        "num_clients": 1,
        "num_rounds": cfg.num_rounds,
        "rounds_completed": cfg.num_rounds,
        "compression": "none",
        "dp": "none",
        "initial": None,
        "final": metrics,
        "train_cases": len(data.train),
        "train_steps": result.steps,
        "train_loss": result.mean_loss,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_seconds,
    }


def run_federated(cfg: FederatedConfig, engine: Engine) -> dict[str, Any]:
    """Run one federation; returns its history summary plus client sizes."""
    from feddx.federated.task import task_data

    t0 = time.perf_counter()
    if engine == "flower":
        from feddx.federated.simulation import run_simulation

        history = run_simulation(cfg).history
    else:
        from feddx.federated.client_app import app as client_app
        from feddx.federated.history import HISTORY_FILE
        from feddx.federated.inprocess import InProcessGrid
        from feddx.federated.server_app import run_server

        nodes = [
            {"partition-id": i, "num-partitions": cfg.num_clients} for i in range(cfg.num_clients)
        ]
        run_server(InProcessGrid(client_app, cfg.to_run_config(), nodes), cfg)
        history = json.loads((cfg.out_path() / HISTORY_FILE).read_text())
    summary = dict(history["summary"])
    summary["train_cases"] = len(task_data(cfg).train)
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["rounds"] = [
        {
            k: r.get(k)
            for k in (
                "round",
                "accepted",
                "rejected",
                "bytes_per_reply",
                "train_loss",
                "epsilon_total",
            )
        }
        for r in history["rounds"]
    ]
    return summary


def run_plan(
    plan: Sequence[Experiment],
    base: FederatedConfig,
    runs: Path,
    *,
    engine: Engine = "flower",
    on_done: Callable[[Experiment, dict[str, Any]], None] | None = None,
) -> list[tuple[Experiment, dict[str, Any]]]:
    """Run every experiment not already finished under ``runs/<name>``; returns all results
    in plan order."""
    results = []
    for exp in plan:
        cfg = base.replace(**exp.overrides).replace(out_dir=str(runs / exp.name))
        if exp.centralized:
            cfg = cfg.replace(partition="iid")
        result_path = runs / exp.name / "result.json"
        fingerprint = cfg.fingerprint(ignore=("resume", "round_timeout", "out_dir"))  # rounds count
        cached = _read_result(result_path, fingerprint)
        if cached is None:
            log.info("experiment %s: running", exp.name)
            summary = run_centralized(cfg) if exp.centralized else run_federated(cfg, engine)
            cached = {
                "name": exp.name,
                "fingerprint": fingerprint,
                "engine": engine,
                "config": cfg.to_run_config(),
                "summary": summary,
            }
            atomic_write_json(result_path, cached)
        results.append((exp, cached["summary"]))
        if on_done is not None:
            on_done(exp, cached["summary"])
    return results


def _read_result(path: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("fingerprint") == fingerprint else None


# ----------------------------------------------------------------------------- reporting
def message_sizes(cfg: FederatedConfig) -> dict[str, int]:
    """Bytes of one message carrying (a) the full model's float32 weights and (b) the LoRA
    adapter, serialized as Flower 1.42 sends them. A tensor shared by two names (SmolLM2 ties
    its LM head to the token embedding) is one parameter set: sent and counted once."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, RecordDict

    from feddx.federated.codec import content_bytes, to_array_record
    from feddx.federated.task import adapter_model

    am = adapter_model(cfg)
    base = am.model.get_base_model()
    unique: dict[str, Any] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for k, v in base.state_dict().items():
        where = (v.data_ptr(), tuple(v.shape))  # the same memory and shape: a tied tensor
        if "lora_" in k or where in seen:
            continue
        seen.add(where)
        unique[k] = Array(v.detach().to("cpu").float().numpy())
    full = ArrayRecord(unique)
    sizes = {
        "full_model": content_bytes(RecordDict({"arrays": full})),
        # A trained adapter's values: the initial one has all-zero LoRA B matrices, whose
        # identical chunks Flower's content-addressed transport sends once, which would
        # flatter the ratio.
        "adapter": content_bytes(
            RecordDict({"arrays": to_array_record(_like_trained(am.initial))})
        ),
        "full_model_params": int(sum(np.prod(a.shape) for a in full.values())),
        "adapter_params": int(sum(v.size for v in am.initial.values())),
    }
    del full
    return sizes


def _like_trained(arrays: Mapping[str, Any]) -> dict[str, Any]:
    """Seeded random tensors of the adapter's shapes (no two chunks alike, as after training)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in arrays.items()}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _kib(x: float | None) -> str:
    return "-" if x is None else f"{x / 1024:,.1f}"


def write_results(
    results: Sequence[tuple[Experiment, dict[str, Any]]],
    settings: PlanSettings,
    base: FederatedConfig,
    path: Path,
    *,
    engine: Engine,
    sizes: dict[str, int] | None = None,
    command: str = "",
) -> Path:
    """Write the markdown results file (atomically)."""
    by_name = {e.name: s for e, s in results}
    lines = ["# Federated fine-tuning results", ""]
    if command:
        lines += [f"Produced by `{command}` (engine: {engine}).", ""]
    lines += [
        f"Model {base.model}, LoRA rank {base.lora_rank} on {base.lora_targets} of the top "
        f"{base.lora_top_layers} layers; {settings.rounds} rounds x {settings.local_epochs} local "
        f"epoch(s), batch {base.batch_size}, learning rate {base.learning_rate:g}"
        + (
            " decayed by one cosine over the rounds (constant within a round)"
            if base.lr_schedule == "rounds"
            else " with a warm-up and cosine decay inside every round"
        )
        + f", prompts <= {base.max_prompt_tokens} tokens; every client trains in each round. "
        "The centralised baseline trains on the union of the clients' cases for the same "
        "number of epochs (rounds x local epochs), with one warm-up and cosine decay. "
        f"Validation: a stratified {100 * base.validation_fraction:.0f}% hold-out"
        + (
            f", of which the first {settings.max_eval_cases} cases are scored"
            if settings.max_eval_cases
            else ", all of it scored"
        )
        + " (the same cases for every row).",
        "",
    ]

    def row(name: str, label: str, ref: dict[str, Any] | None) -> str | None:
        s = by_name.get(name)
        if s is None or not s.get("final"):
            return None
        f = s["final"]
        delta = (
            f"{100 * (f['top1'] - ref['final']['top1']):+.1f}" if ref and ref.get("final") else "-"
        )
        return (
            f"| {label} | {int(f['n'])} | {s.get('train_cases', '-')} | {_pct(f['top1'])} | "
            f"{_pct(f['top3'])} | {_pct(f['macro_f1'])} | {delta} | "
            f"{_kib(s.get('mean_bytes_per_reply'))} | {s.get('seconds', 0) / 60:.1f} |"
        )

    header = (
        "| run | eval n | train cases | top-1 % | top-3 % | macro-F1 % | top-1 vs ref (pts) | "
        "KiB per update | minutes |\n|---|---|---|---|---|---|---|---|---|"
    )

    def table(title: str, note: str, rows: list[tuple[str, str]], ref_name: str) -> None:
        ref = by_name.get(ref_name)
        body = [r for n, label in rows if (r := row(n, label, ref)) is not None]
        if body:
            lines.extend([f"## {title}", "", note, "", header, *body, ""])

    table(
        "DDXPlus: partitions (FedAvg, 5 clients)",
        "Reference: centralised training on the same cases and budget.",
        [
            ("ddxplus-centralized", "centralised"),
            ("ddxplus-fedavg-iid", "FedAvg, IID"),
            *[
                (f"ddxplus-fedavg-dirichlet-{a}", f"FedAvg, Dirichlet alpha={a}")
                for a in (1.0, 0.5, 0.1)
            ],
        ],
        "ddxplus-centralized",
    )
    table(
        "DDXPlus: strategies (Dirichlet alpha=0.5, 5 clients)",
        "Reference: FedAvg on the same partition. Flower's implementations; FedProx mu = "
        f"{base.proximal_mu:g} (proximal term in the client loss), FedAdam/FedYogi/FedAdagrad "
        f"eta = {base.fedopt_eta:g}, FedAvgM momentum {base.server_momentum:g}, FedTrimmedAvg "
        f"beta {base.trim_beta:g}, Krum with {base.num_malicious} assumed malicious clients.",
        [
            ("ddxplus-fedavg-dirichlet-0.5", "fedavg"),
            *[(f"ddxplus-{n}-dirichlet-0.5", n) for n in settings.strategies if n != "fedavg"],
        ],
        "ddxplus-fedavg-dirichlet-0.5",
    )
    table(
        "DDXPlus: compression of client updates (FedAvg, alpha=0.5)",
        "Reference: uncompressed float32 adapters. KiB per update: the mean serialized size "
        "of a client's reply records as Flower sends them.",
        [
            ("ddxplus-fedavg-dirichlet-0.5", "none (float32)"),
            ("ddxplus-fedavg-float16", "float16"),
            ("ddxplus-fedavg-int8", "int8 (+DEFLATE)"),
            ("ddxplus-fedavg-topk", "top-10% + error feedback"),
        ],
        "ddxplus-fedavg-dirichlet-0.5",
    )
    ref_bytes = (by_name.get("ddxplus-fedavg-dirichlet-0.5") or {}).get("mean_bytes_per_reply")
    ratio_lines = []
    for name, label in (
        ("ddxplus-fedavg-float16", "float16"),
        ("ddxplus-fedavg-int8", "int8"),
        ("ddxplus-fedavg-topk", "top-k"),
    ):
        got = (by_name.get(name) or {}).get("mean_bytes_per_reply")
        if ref_bytes and got:
            ratio_lines.append(f"{label} {ref_bytes / got:.2f}x")
    if ratio_lines:
        lines += ["Update size reduction vs float32: " + ", ".join(ratio_lines) + ".", ""]
    if sizes:
        lines += [
            f"Message size, full model vs adapter: the float32 weights of {base.model} "
            f"({sizes['full_model_params']:,} parameters) take {sizes['full_model'] / 2**20:,.1f} "
            f"MiB in one Flower message; the adapter ({sizes['adapter_params']:,} parameters) "
            f"{sizes['adapter'] / 1024:,.1f} KiB: {sizes['full_model'] / sizes['adapter']:,.0f}x "
            "smaller.",
            "",
        ]
    priv = []
    for name, label in (
        ("ddxplus-fedavg-central-dp", "central DP (Flower server-side fixed clipping)"),
        ("ddxplus-fedavg-local-dp", "local DP-SGD (Opacus), per-client epsilon"),
    ):
        s = by_name.get(name)
        if s and s.get("final"):
            eps = s.get("epsilon_total")
            priv.append(
                f"| {label} | {_pct(s['final']['top1'])} | "
                f"{'-' if eps is None else f'{eps:.2f}'} | {base.dp_delta:g} |"
            )
    if priv:
        lines += [
            "## DDXPlus: differential privacy (FedAvg, alpha=0.5)",
            "",
            "| mechanism | top-1 % | epsilon (total) | delta |",
            "|---|---|---|---|",
            *priv,
            "",
        ]
    table(
        "UCI Heart: natural hospital partition (4 hospitals)",
        "One client per hospital (Cleveland, Hungary, Switzerland, VA Long Beach): real covariate "
        "and label shift. Reference: centralised training.",
        [
            ("uci-centralized", "centralised"),
            ("uci-fedavg-hospitals", "FedAvg, by hospital"),
            ("uci-fedavg-iid", "FedAvg, IID (4 clients)"),
        ],
        "uci-centralized",
    )
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
