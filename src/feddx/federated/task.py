"""The learning task both Flower apps share: which model, which cases, how to evaluate.

Kept apart from the apps so that the ServerApp and every ClientApp build exactly the same
model (same base, same LoRA layout, same seeded initial adapter) and the same data split,
without either importing the other.

Costly objects are cached per process: in Flower's simulation a ClientApp runs inside a
long-lived worker that serves many rounds (and possibly several simulated nodes), so the base
model is loaded once (from feddx's on-disk model cache, about a second for SmolLM2) and the
dataset is read, split and partitioned once. Heavy imports (torch, transformers) happen inside
the functions, keeping the import of the app modules themselves cheap.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddx.data.schema import Case
from feddx.errors import ConfigError, DataError
from feddx.federated.config import FederatedConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model
@dataclass
class AdapterModel:
    """A base model with the run's LoRA adapters attached.

    ``initial`` is the seeded initial adapter every party agrees on (LoRA ``B`` starts at zero,
    so the initial global model is the base model); ``fingerprint`` identifies the base
    weights and goes into every saved adapter.
    """

    model: Any
    tokenizer: Any
    fingerprint: str
    initial: dict[str, Any]


@functools.lru_cache(maxsize=2)
def _cached_model(
    model: str, rank: int, alpha: float, dropout: float, targets: str, top_layers: int, seed: int
) -> AdapterModel:
    import torch

    from feddx.model.loading import load_base_model
    from feddx.train.adapter import adapter_state, attach_lora
    from feddx.train.config import LoraSpec

    loaded = load_base_model(model)
    torch.manual_seed(seed)  # the initial adapter is a function of the run seed alone
    spec = LoraSpec(
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=tuple(t.strip() for t in targets.split(",") if t.strip()),
        top_layers=top_layers or None,
    )
    peft_model = attach_lora(loaded.model, spec)
    peft_model.eval()
    initial = {k: v.numpy() for k, v in adapter_state(peft_model).items()}
    return AdapterModel(peft_model, loaded.tokenizer, loaded.fingerprint, initial)


def adapter_model(cfg: FederatedConfig) -> AdapterModel:
    """The run's model, loaded once per process. Its adapter weights are whatever was loaded
    last: callers load the adapter they need (:func:`feddx.train.adapter.load_adapter_state`)."""
    return _cached_model(
        cfg.model,
        cfg.lora_rank,
        cfg.lora_alpha,
        cfg.lora_dropout,
        cfg.lora_targets,
        cfg.lora_top_layers,
        cfg.seed,
    )


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TaskData:
    """The cases of a run: training cases (to be partitioned), the server's validation cases,
    and the candidate diagnoses with their ICD-10 codes."""

    train: list[Case]
    validation: list[Case]
    candidates: list[str]
    icd10: dict[str, str]


def load_cases(spec: str, *, max_cases: int = 0, seed: int = 0) -> list[Case]:
    """The labeled cases of a ``SOURCE[:PATH]`` spec, optionally a stratified sample of
    ``max_cases`` (deterministic for a seed). Raises :class:`DataError` for unreadable data."""
    from feddx.data.report import LoadReport
    from feddx.data.sources import load_source, parse_data_spec
    from feddx.data.split import stratified_split

    source, path = parse_data_spec(spec)
    report = LoadReport(source)
    cases = [c for c in load_source(source, path, report) if c.label is not None]
    if report.n_skipped:
        log.info("%s: %d records skipped (%s)", source, report.n_skipped, report.skipped_reasons())
    if not cases:
        raise DataError(f"{source}: no labeled cases in the data")
    if max_cases and max_cases < len(cases):
        _, cases = stratified_split(cases, test_fraction=max_cases / len(cases), seed=seed)
        cases.sort(key=lambda c: c.case_id)
    return cases


def candidates_for(spec: str, cases: Sequence[Case]) -> tuple[list[str], dict[str, str]]:
    """The candidate list of a dataset (its full label space) and the ICD-10 code of each."""
    from feddx.data.sources import parse_data_spec

    source, path = parse_data_spec(spec)
    if source in ("ddxplus", "ddxplus-v0") and path is not None:
        from feddx.data.ddxplus import ddxplus_candidates, ddxplus_icd10

        return ddxplus_candidates(path), ddxplus_icd10(path)
    if source == "uci-heart":
        from feddx.data.uci_heart import DIAGNOSES, ICD10

        return list(DIAGNOSES.values()), dict(ICD10)
    labels = sorted({c.require_label().diagnosis for c in cases})
    codes = {
        c.require_label().diagnosis: c.require_label().icd10
        for c in cases
        if c.label is not None and c.label.icd10
    }
    return labels, {k: v for k, v in codes.items() if v}


@functools.lru_cache(maxsize=4)
def _cached_task_data(
    data: str, eval_data: str, fraction: float, max_cases: int, seed: int
) -> TaskData:
    from feddx.data.split import stratified_split

    cases = load_cases(data, max_cases=max_cases, seed=seed)
    if eval_data:
        train, validation = cases, load_cases(eval_data, seed=seed)
    else:
        train, validation = stratified_split(cases, test_fraction=fraction, seed=seed)
    candidates, icd10 = candidates_for(data, [*train, *validation])
    outside = {c.require_label().diagnosis for c in validation} - set(candidates)
    if outside:
        raise DataError(
            f"{len(outside)} validation labels are not among the {len(candidates)} candidates"
        )
    return TaskData(train, validation, candidates, icd10)


def task_data(cfg: FederatedConfig) -> TaskData:
    """Training and validation cases of the run (cached per process)."""
    return _cached_task_data(
        cfg.data, cfg.eval_data, cfg.validation_fraction, cfg.max_cases, cfg.seed
    )


@functools.lru_cache(maxsize=4)
def _cached_partitions(cfg: FederatedConfig, num_partitions: int) -> list[list[Case]]:
    from feddx.data.partition import partition_cases

    return partition_cases(task_data(cfg).train, cfg.partition_spec(num_partitions))


def simulation_partition(
    cfg: FederatedConfig, partition_id: int, num_partitions: int
) -> list[Case]:
    """The training cases of simulated client ``partition_id`` of ``num_partitions``.

    Every client computes the whole (seeded, deterministic) partition and keeps its own part.
    ``attribute`` partitions have one part per attribute value, which must match the number of
    simulated clients.
    """
    data_only = FederatedConfig().replace(
        **{k: getattr(cfg, k) for k in _DATA_FIELDS}
    )  # a cache key that ignores training knobs
    parts = _cached_partitions(data_only, num_partitions)
    if len(parts) != num_partitions:
        raise ConfigError(
            f"partition {cfg.partition!r} yields {len(parts)} clients but the simulation has "
            f"{num_partitions} (set num-clients = {len(parts)})"
        )
    if not 0 <= partition_id < len(parts):
        raise ConfigError(f"partition-id {partition_id} out of range 0..{len(parts) - 1}")
    return parts[partition_id]


_DATA_FIELDS = (
    "data",
    "eval_data",
    "validation_fraction",
    "max_cases",
    "seed",
    "partition",
    "partition_attribute",
    "partition_alpha",
    "partition_sigma",
    "partition_min_size",
)


def node_cases(source: str, path: str, *, max_cases: int = 0, seed: int = 0) -> list[Case]:
    """A deployed node's own training cases (``data-source``/``data-path`` node config)."""
    spec = f"{source}:{path}" if path else source
    return _cached_node_cases(spec, max_cases, seed)


@functools.lru_cache(maxsize=2)
def _cached_node_cases(spec: str, max_cases: int, seed: int) -> list[Case]:
    return load_cases(spec, max_cases=max_cases, seed=seed)


# ----------------------------------------------------------------------------- evaluation
def evaluate_adapter(
    am: AdapterModel,
    cases: Sequence[Case],
    candidates: Sequence[str],
    icd10: dict[str, str],
    *,
    max_prompt_tokens: int,
) -> dict[str, float]:
    """Score ``cases`` with the model's current adapter: the harness summary (top-1/3/5,
    macro-F1, ...) plus ``val_loss``, the mean negative log-probability of the right diagnosis
    among the candidates. Numbers only: safe to log and store."""
    import torch

    from feddx.evaluate.metrics import summary
    from feddx.evaluate.predict import predict_cases

    with torch.inference_mode():
        preds = predict_cases(
            am.model,
            am.tokenizer,
            cases,
            candidates,
            max_prompt_tokens=max_prompt_tokens,
            icd10=icd10,
        )
    out = {k: float(v) for k, v in summary(preds).items()}
    losses = []
    for p in preds:
        gold = p.case.require_label().diagnosis
        prob = next((r.probability for r in p.ranked if r.name == gold), 0.0)
        losses.append(-math.log(max(prob, 1e-12)))
    out["val_loss"] = sum(losses) / len(losses)
    return out


def client_state_dir(cfg: FederatedConfig, node_config: dict[str, Any], node_key: str) -> Path:
    """Where a node keeps its activation cache, residuals and privacy ledger."""
    configured = node_config.get("state-dir")
    if isinstance(configured, str) and configured:
        return Path(configured).expanduser()
    return cfg.client_state_path() / node_key


def quiet_runtime() -> None:
    """Inside a Flower app process: feddx logs at INFO, third-party libraries only warnings
    (their progress bars and notices add nothing and some echo inputs)."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    ours = logging.getLogger("feddx")
    ours.setLevel(logging.INFO)
    if not ours.handlers:  # print through Flower's console/log-stream handlers
        for handler in logging.getLogger("flwr").handlers:
            ours.addHandler(handler)
        ours.propagate = not ours.handlers
    for name in ("transformers", "peft", "opacus", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
