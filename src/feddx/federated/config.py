"""Every knob of a federated run, in one typed model shared by the Flower app and the CLI.

The same settings arrive two ways:

* through Flower: ``[tool.flwr.app.config]`` in ``pyproject.toml`` (overridable with
  ``flwr run . CONN --run-config "num-rounds=5 strategy='fedprox'"``), read by the ServerApp and
  every ClientApp from ``context.run_config``;
* through ``feddx federate --config FILE`` (TOML, YAML or JSON with the same keys), which turns
  the file into that run config.

Keys are kebab-case as Flower apps expect (``num-rounds``); a file may also use snake_case.
Every value is a TOML scalar (Flower's run config allows nothing else), so lists are written as
comma-separated strings (``lora-targets = "q_proj,v_proj"``) and "unset" is ``0`` or ``""``.
A bad key or value raises :class:`~feddx.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from feddx.model.hardware import DtypeName, HardwareSpec, QuantizeName
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS
from feddx.settings import Settings

if TYPE_CHECKING:
    from feddx.data.partition import PartitionSpec
    from feddx.model.adapter import LoraSpec
    from feddx.train.config import TrainConfig

StrategyName = Literal[
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavgm",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
]
STRATEGIES: tuple[str, ...] = StrategyName.__args__  # type: ignore[attr-defined]
# The strategies whose aggregate is the (weighted) mean of the updates, optionally followed by a
# server optimizer: the only ones central DP is defined for (feddx.federated.central_dp).
MEAN_STRATEGIES: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavgm",
)
Compression = Literal["none", "float16", "int8", "topk"]
DPMode = Literal["none", "central", "local"]
PartitionKind = Literal["attribute", "iid", "dirichlet", "size-skew"]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class FederatedConfig(Settings):
    """A federated fine-tuning run (see the module docstring for how it is supplied).

    Data
        ``data`` is a ``SOURCE[:PATH]`` spec (as ``feddx data stats``). The server holds out a
        stratified ``validation-fraction`` of it for centralised evaluation; in simulation each
        client partitions the rest (``partition``, ``partition-*``, ``num-clients``) and keeps
        its own share. ``eval-data`` gives the server a separate validation set instead (a
        deployment, where clients bring their own data through their node config).
        ``max-cases`` / ``max-eval-cases`` cap the cases used (``0``: all), for runs that must
        fit a small machine; report them with the results. ``candidates`` names a file with
        one candidate diagnosis per line (default: the dataset's list, as in ``feddx
        evaluate``; :func:`feddx.data.candidates.candidate_list`).
    Rounds and sampling
        ``num-rounds`` rounds; ``fraction-train`` of the connected clients train each round, at
        least ``min-train-clients``; the server waits for ``min-available-clients`` to connect.
        A round waits ``round-timeout`` seconds for replies and aggregates those that arrived
        in time, if at least ``min-train-clients`` passed validation (else the global adapter
        is kept). ``eval-every``: evaluate the global adapter every N rounds (and always after
        the last); ``eval-initial``: also evaluate the initial adapter (the base model) as
        round 0.
    Strategy
        ``strategy`` names a Flower strategy; ``proximal-mu`` (FedProx, also sent to clients
        for the proximal term), ``server-lr``/``server-momentum`` (FedAvgM), ``fedopt-eta``,
        ``fedopt-beta1``, ``fedopt-beta2``, ``fedopt-tau`` (FedAdam/FedYogi/FedAdagrad),
        ``trim-beta`` (FedTrimmedAvg), ``num-malicious`` (Krum).
    Local training
        ``local-epochs``, ``local-steps`` (cap on optimizer steps per round, ``0``: none),
        ``batch-size``, ``learning-rate``, ``lr-schedule``, ``max-prompt-tokens``,
        ``history-dropout`` (the share of a client's cases with a history trained without it,
        :attr:`feddx.train.config.TrainConfig.history_dropout`) and the LoRA shape
        (``lora-rank``, ``lora-alpha``, ``lora-dropout``, ``lora-targets``,
        ``lora-top-layers``: adapters on the last N layers only, ``0``: every layer).
        ``lr-schedule = "rounds"`` (the default) lays one cosine decay over the rounds: round
        r of R trains at ``learning-rate * (1 + cos(pi * (r - 1) / R)) / 2``, constant within
        the round (round 1 warms up over its first 5% of steps), so a federation and a
        centralised run of ``R * local-epochs`` epochs see the same learning-rate curve.
        ``"local"`` gives every round its own warm-up and full cosine decay: each round then
        spends much of its steps at a small rate, which slows FedAvg several-fold.
    Hardware
        ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), ``dtype`` (``auto``,
        ``float32``, ``bfloat16``, ``float16``) and ``quantize`` (``none``, ``8bit``,
        ``4bit``) of every party's base model (:mod:`feddx.model.hardware`). In a simulation,
        give each ClientApp a GPU share with ``feddx federate --client-gpus``; in a deployment,
        run one SuperNode per GPU (``CUDA_VISIBLE_DEVICES``, see ``deploy/``), each with
        ``device = "auto"``.
    Communication
        ``compression`` of client updates: ``none`` (float32 adapter), ``float16``, ``int8``
        (per-tensor affine 8-bit) or ``topk`` (the ``topk-fraction`` largest entries, with
        error feedback); ``deflate`` adds lossless DEFLATE to compressed payloads.
    Privacy
        ``dp = "central"``: DP-FedAvg (:mod:`feddx.federated.central_dp`: updates clipped to
        ``dp-clipping-norm``, Gaussian noise ``dp-noise-multiplier`` on their mean, which a
        server optimizer only post-processes); only for :data:`MEAN_STRATEGIES` (median,
        trimmed mean and Krum are refused: not a mean, no epsilon); ``dp = "local"``:
        DP-SGD on each client (Opacus, per-example clipping to ``dp-clipping-norm``). Epsilon is
        reported at ``dp-delta``.
    Robustness
        Replies with non-finite values, wrong keys or shapes are always rejected; an update
        whose L2 norm (local adapter minus the round's global one, over every LoRA tensor)
        exceeds ``max-update-norm`` (``0``: no absolute limit) or ``outlier-factor`` times the
        round's median update norm (``0``: off; needs 3+ replies) is rejected too. The
        absolute bound is what protects a round of two clients. Its default, 100, is 4.5x the
        largest honest update measured (``benchmarks/bench_update_norms.py``, 2 rounds, every
        client of every round): 22.1 with the settings of ``results/federated.md`` (rank 16 on
        all 7 linear modules of the top 2 layers, lr 0.005, 2 local epochs) on UCI Heart's
        hospitals, 4.0 in ``feddx demo``'s federation (rank 8 q/v, lr 0.001), 0.18 for the
        tiny test model (0.16 with local DP-SGD). Wider adapters, more local steps or higher
        rates make larger honest updates: ``update_norms`` in ``history.json`` shows them;
        raise the bound when they approach it. Under ``dp = "central"`` neither rule applies
        (a data-dependent selection of clients the epsilon ledger does not account for);
        clipping to ``dp-clipping-norm`` bounds every update instead, and the run's summary
        says so (``client_selection``).
    Output
        ``out-dir`` receives the checkpoints, the global adapter, ``history.json`` and plots;
        with ``resume`` a restarted server continues from the last completed round.
        ``client-state-dir`` is where simulated clients keep their error-feedback residuals and
        DP ledgers (default: ``<out-dir>/clients``); ``activation-cache-dir`` holds the cached
        frozen-layer activations (default: ``$FEDDX_CACHE/activations``; entries are keyed by
        base weights and token ids, so runs and nodes on one machine can share it).
    """

    # Lax types: run-config values arrive from Flower and from `feddx federate --set` as TOML
    # scalars or bare words, and have always been coerced where pydantic can (1 for true).
    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, strict=False)

    settings_name: ClassVar[str] = "run config"
    file_section: ClassVar[str | None] = "federated"

    # data
    model: str = "smollm2-135m-instruct"
    data: str = "uci-heart"
    eval_data: str = ""
    candidates: str = ""
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    max_cases: int = Field(default=0, ge=0)
    max_eval_cases: int = Field(default=0, ge=0)
    num_clients: int = Field(default=4, ge=1)
    partition: PartitionKind = "attribute"
    partition_attribute: str = "institution"
    partition_alpha: float = Field(default=0.5, gt=0.0)
    partition_sigma: float = Field(default=1.0, gt=0.0)
    partition_min_size: int = Field(default=1, ge=1)
    seed: int = 0
    # rounds
    num_rounds: int = Field(default=3, ge=1)
    fraction_train: float = Field(default=1.0, gt=0.0, le=1.0)
    min_train_clients: int = Field(default=2, ge=1)
    min_available_clients: int = Field(default=2, ge=1)
    round_timeout: float = Field(default=3600.0, gt=0.0)
    eval_every: int = Field(default=1, ge=1)
    eval_initial: bool = True
    # strategy
    strategy: StrategyName = "fedavg"
    proximal_mu: float = Field(default=0.01, ge=0.0)
    server_lr: float = Field(default=1.0, gt=0.0)
    server_momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    fedopt_eta: float = Field(default=0.01, gt=0.0)
    fedopt_beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    fedopt_beta2: float = Field(default=0.99, ge=0.0, lt=1.0)
    fedopt_tau: float = Field(default=1e-3, gt=0.0)
    trim_beta: float = Field(default=0.2, ge=0.0, lt=0.5)
    num_malicious: int = Field(default=0, ge=0)
    # local training
    local_epochs: int = Field(default=1, ge=1)
    local_steps: int = Field(default=0, ge=0)
    batch_size: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=5e-4, gt=0.0)
    lr_schedule: Literal["rounds", "local"] = "rounds"
    max_prompt_tokens: int = Field(default=DEFAULT_MAX_PROMPT_TOKENS, ge=16)
    history_dropout: float = Field(default=0.0, ge=0.0, le=1.0)
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0.0)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_targets: str = "auto"
    lora_top_layers: int = Field(default=2, ge=0)
    # hardware
    device: str = "auto"
    dtype: DtypeName = "auto"
    quantize: QuantizeName = "none"
    # communication
    compression: Compression = "none"
    topk_fraction: float = Field(default=0.1, gt=0.0, le=1.0)
    deflate: bool = True
    # privacy
    dp: DPMode = "none"
    dp_noise_multiplier: float = Field(default=1.0, gt=0.0)
    dp_clipping_norm: float = Field(default=1.0, gt=0.0)
    dp_delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    # robustness
    max_update_norm: float = Field(default=100.0, ge=0.0)
    outlier_factor: float = Field(default=10.0, ge=0.0)
    # output
    out_dir: str = "runs/federated"
    resume: bool = True
    client_state_dir: str = ""
    activation_cache_dir: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> FederatedConfig:
        for name in ("validation_fraction", "partition_alpha", "learning_rate", "round_timeout"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{_kebab(name)} must be finite")
        if not self.target_modules():
            raise ValueError("lora-targets must name at least one module")
        if self.min_available_clients < self.min_train_clients:
            raise ValueError("min-available-clients must be >= min-train-clients")
        if self.partition == "attribute" and not self.partition_attribute:
            raise ValueError("partition-attribute is required for partition = 'attribute'")
        if self.dp == "central" and self.strategy not in MEAN_STRATEGIES:
            raise ValueError(
                f"dp = 'central' adds its noise to the clipped mean of the updates, and "
                f"{self.strategy} is not a mean (its epsilon would not hold); use one of "
                f"{', '.join(MEAN_STRATEGIES)}, or dp = 'local'"
            )
        return self

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederatedConfig:
        """The config of a Flower run (``context.run_config``)."""
        return cls.from_mapping(run_config, origin="run config")

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The kebab-case scalar mapping Flower's ``--run-config`` and ``run_config`` carry."""
        return self.model_dump(by_alias=True)

    # ---------------------------------------------------------------- derived values
    def target_modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.lora_targets.split(",") if m.strip())

    def out_path(self) -> Path:
        return Path(self.out_dir).expanduser()

    def client_state_path(self) -> Path:
        return (
            Path(self.client_state_dir).expanduser()
            if self.client_state_dir
            else (self.out_path() / "clients")
        )

    def activation_cache_path(self) -> Path:
        from feddx.paths import activation_cache_root

        return (
            Path(self.activation_cache_dir).expanduser()
            if self.activation_cache_dir
            else activation_cache_root()
        )

    def round_learning_rate(self, server_round: int) -> float:
        """A client's learning rate in ``server_round`` (1-based) under ``lr-schedule``."""
        if self.lr_schedule == "local":
            return self.learning_rate
        r = min(max(server_round, 1), self.num_rounds)
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (r - 1) / self.num_rounds))

    def train_config(
        self, *, seed: int, proximal_mu: float = 0.0, server_round: int = 1
    ) -> TrainConfig:
        """The trainer's config for one client's local round."""
        from feddx.train.config import DPConfig, TrainConfig

        by_rounds = self.lr_schedule == "rounds"
        return TrainConfig(
            lora=self.lora_spec(),
            hardware=self.hardware_spec(),
            learning_rate=self.round_learning_rate(server_round),
            lr_schedule="constant" if by_rounds else "cosine",
            warmup_ratio=(
                0.0
                if by_rounds and server_round > 1
                else TrainConfig.model_fields["warmup_ratio"].default
            ),
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            seed=seed,
            max_prompt_tokens=self.max_prompt_tokens,
            history_dropout=self.history_dropout,
            max_steps=self.local_steps or None,
            proximal_mu=proximal_mu,
            dp=(
                DPConfig(
                    noise_multiplier=self.dp_noise_multiplier,
                    max_grad_norm=self.dp_clipping_norm,
                    delta=self.dp_delta,
                )
                if self.dp == "local"
                else None
            ),
        )

    def hardware_spec(self) -> HardwareSpec:
        """The device, dtype and quantization every party loads the base model with."""
        return HardwareSpec(device=self.device, dtype=self.dtype, quantize=self.quantize)

    def lora_spec(self) -> LoraSpec:
        from feddx.model.adapter import LoraSpec

        return LoraSpec(
            rank=self.lora_rank,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.target_modules(),
            top_layers=self.lora_top_layers or None,
        )

    def partition_spec(self, num_clients: int | None = None) -> PartitionSpec:
        """The data layer's partition spec for ``num_clients`` (default ``num-clients``)."""
        from feddx.data.partition import PartitionSpec

        return PartitionSpec(
            kind=self.partition,
            num_clients=num_clients or self.num_clients,
            attribute=self.partition_attribute if self.partition == "attribute" else None,
            alpha=self.partition_alpha,
            sigma=self.partition_sigma,
            seed=self.seed,
            min_size=self.partition_min_size,
        )

    def fingerprint(self, *, ignore: tuple[str, ...] | None = None) -> str:
        """A hash of the settings that determine a run's result; a checkpoint written under a
        different fingerprint is not resumed. Settings that only pace a run (the timeout) are
        left out by default, and so is the number of rounds under ``lr-schedule = "local"``,
        where it only extends a run (a finished run can be extended); under ``"rounds"`` it
        shapes every round's learning rate, so it counts."""
        if ignore is None:
            ignore = ("resume", "round_timeout")
            if self.lr_schedule == "local":
                ignore += ("num_rounds",)
        data = {k: v for k, v in self.model_dump().items() if k not in ignore}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
