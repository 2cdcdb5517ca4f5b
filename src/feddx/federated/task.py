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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feddx.data.schema import Case
from feddx.errors import ConfigError, DataError
from feddx.federated.config import FederatedConfig

if TYPE_CHECKING:  # torch-heavy: imported where used, so importing the app stays cheap
    from feddx.model.adapter import LoraSpec
    from feddx.model.hardware import HardwareSpec
    from feddx.model.predict import Diagnoser

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model
@dataclass
class AdapterModel:
    """A base model with the run's LoRA adapters attached, inside the shared inference object.

    ``initial`` is the seeded initial adapter every party agrees on (LoRA ``B`` starts at zero,
    so the initial global model is the base model). ``diagnoser.model`` is the network clients
    train in place; the server scores a round's global adapter through ``diagnoser``.
    """

    diagnoser: Diagnoser
    initial: dict[str, Any]

    @property
    def model(self) -> Any:
        return self.diagnoser.model

    @property
    def tokenizer(self) -> Any:
        return self.diagnoser.tokenizer

    @property
    def fingerprint(self) -> str:
        return self.diagnoser.base_fingerprint


@functools.lru_cache(maxsize=2)
def _cached_model(model: str, lora: LoraSpec, seed: int, hardware: HardwareSpec) -> AdapterModel:
    from feddx.model.adapter import adapter_state
    from feddx.train.recipe import load_diagnoser

    # the initial adapter is a function of the run seed alone
    diagnoser = load_diagnoser(model, hardware, lora=lora, seed=seed)
    diagnoser.model.eval()
    initial = {k: v.numpy() for k, v in adapter_state(diagnoser.model).items()}
    return AdapterModel(diagnoser, initial)


def adapter_model(cfg: FederatedConfig) -> AdapterModel:
    """The run's model, loaded once per process. Its adapter weights are whatever was loaded
    last: callers load the adapter they need (:func:`feddx.model.adapter.load_adapter_state`)."""
    return _cached_model(cfg.model, cfg.lora_spec(), cfg.seed, cfg.hardware_spec())


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TaskData:
    """The cases of a run: training cases (to be partitioned), the server's validation cases,
    and the candidate diagnoses with their ICD-10 codes."""

    train: list[Case]
    validation: list[Case]
    candidates: list[str]
    icd10: dict[str, str]


@functools.lru_cache(maxsize=4)
def _cached_task_data(
    data: str, eval_data: str, fraction: float, max_cases: int, seed: int, candidates: str
) -> TaskData:
    from feddx.data.candidates import candidate_list
    from feddx.data.sources import load_cases
    from feddx.data.split import stratified_split

    loaded = load_cases(data, purpose="train on", max_cases=max_cases, seed=seed)
    if eval_data:
        train = loaded.cases
        validation = load_cases(eval_data, purpose="evaluate against", seed=seed).cases
    else:
        train, validation = stratified_split(loaded.cases, test_fraction=fraction, seed=seed)
    cands = candidate_list(
        loaded.source, loaded.path, [*train, *validation], Path(candidates) if candidates else None
    )
    outside = {c.require_label().diagnosis for c in validation} - set(cands.names)
    if outside:
        raise DataError(
            f"{len(outside)} validation labels are not among the {len(cands.names)} candidates"
        )
    return TaskData(train, validation, cands.names, cands.icd10)


def task_data(cfg: FederatedConfig) -> TaskData:
    """Training and validation cases of the run (cached per process)."""
    return _cached_task_data(
        cfg.data, cfg.eval_data, cfg.validation_fraction, cfg.max_cases, cfg.seed, cfg.candidates
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
    "candidates",
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
    from feddx.data.sources import load_cases

    return load_cases(spec, purpose="train on", max_cases=max_cases, seed=seed).cases


# ----------------------------------------------------------------------------- evaluation
def evaluate_adapter(
    am: AdapterModel,
    state: Mapping[str, Any],
    cases: Sequence[Case],
    candidates: Sequence[str],
    icd10: dict[str, str],
    *,
    max_prompt_tokens: int,
) -> dict[str, float]:
    """Score ``cases`` with the LoRA ``state`` (a round's global adapter): the harness summary
    (top-1/3/5, macro-F1, ...) plus ``val_loss``, the mean negative log-probability of the
    right diagnosis among the candidates, and ``temperature``, the softmax temperature fitted
    on these cases (what the saved adapter records). Numbers only: safe to log and store."""
    from feddx.evaluate.calibration import fit_prediction_temperature
    from feddx.evaluate.metrics import summary

    am.diagnoser.add_state("global", state, max_prompt_tokens=max_prompt_tokens)
    preds = am.diagnoser.diagnose(cases, candidates, adapter="global", icd10=icd10, temperature=1.0)
    out = {k: float(v) for k, v in summary(preds).items()}
    losses = [-math.log(max(p.probability_of(p.gold), 1e-12)) for p in preds]
    out["val_loss"] = sum(losses) / len(losses)
    out["temperature"] = float(fit_prediction_temperature(preds))
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
