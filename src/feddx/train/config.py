"""Every knob of a LoRA training run, as plain dataclasses loadable from YAML, JSON or TOML.

A config file holds the :class:`TrainConfig` fields at its top level (or under a ``train``
section), with the LoRA and DP settings as nested tables::

    learning_rate = 2e-4
    epochs = 3
    [lora]
    rank = 16
    top_layers = 4
    [dp]
    noise_multiplier = 1.0

Unknown keys and wrong types are refused with a :class:`~feddx.errors.ConfigError` naming the
file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast, get_args

from feddx.errors import ConfigError
from feddx.model.adapter import LoraSpec
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS

LossReduction = Literal["token", "example"]
CacheDtype = Literal["float32", "float16", "bfloat16"]
LrSchedule = Literal["cosine", "constant"]
AnswerLoss = Literal["vocabulary", "candidates"]


@dataclass
class DPConfig:
    """DP-SGD (Opacus): per-example clipping to ``max_grad_norm`` plus Gaussian noise of
    standard deviation ``noise_multiplier * max_grad_norm``; epsilon is reported at ``delta``."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        _check(self.noise_multiplier >= 0, "dp.noise_multiplier", "must be >= 0")
        _check(self.max_grad_norm > 0, "dp.max_grad_norm", "must be > 0")
        _check(0 < self.delta < 1, "dp.delta", "must be in (0, 1)")


@dataclass
class AugmentSpec:
    """Dropout augmentation: copies of cases with findings or note sentences left out
    (:mod:`feddx.train.augment`).

    Parameters
    ----------
    copies
        Augmented copies added per case that has something to drop: two or more findings, or
        a note of two or more sentences when ``drop_sentence > 0`` (``0``: off). An epoch
        then passes over ``copies + 1`` times as many examples, so scale ``epochs`` down to
        keep the number of steps.
    drop_finding
        Probability that a copy leaves out each finding (at least one is always kept).
    shuffle_findings
        Also put each copy's findings in a random order.
    drop_sentence
        Probability that a copy leaves out each sentence of the case's free-text note (at
        least one is always kept; ``0``: notes are copied whole).
    """

    copies: int = 0
    drop_finding: float = 0.2
    shuffle_findings: bool = False
    drop_sentence: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        _check(self.copies >= 0, "augment.copies", "must be >= 0")
        _check(0 <= self.drop_finding < 1, "augment.drop_finding", "must be in [0, 1)")
        _check(0 <= self.drop_sentence < 1, "augment.drop_sentence", "must be in [0, 1)")


@dataclass
class TrainConfig:
    """A LoRA fine-tuning run.

    Parameters
    ----------
    lora
        Adapter placement and size (:class:`LoraSpec`).
    learning_rate, weight_decay
        AdamW settings; the learning rate warms up linearly over ``warmup_ratio`` of the steps
        and then follows ``lr_schedule``: a cosine decay to zero, or ``"constant"`` (a
        federated client's round, whose decay is laid out over the rounds instead).
    epochs, batch_size, grad_accum
        Passes over the data, examples per forward/backward, and micro-batches per optimizer
        step (the effective batch is ``batch_size * grad_accum``).
    max_grad_norm
        Global gradient-norm clipping (``0`` disables it; ignored under DP, which clips each
        example's gradient instead).
    seed
        Seeds torch, ``random`` and numpy, the data order and dropout: equal seeds, equal runs.
    max_prompt_tokens
        Token budget of :func:`feddx.model.prompt.render_prompt`.
    max_steps
        Stop after this many optimizer steps (the schedule is laid out over
        ``min(max_steps, epochs * steps_per_epoch)`` steps).
    checkpoint_every
        Write a resumable checkpoint every this many steps (``0``: only at the end).
    proximal_mu
        FedProx: adds ``mu / 2 * ||w - w_ref||^2`` over the LoRA weights to the loss.
    dp
        DP-SGD settings, or ``None`` for ordinary training.
    loss_reduction
        ``"token"``: mean over every answer token of the optimizer step (what Hugging Face's
        masked loss computes); ``"example"``: each example's mean token loss, averaged over
        examples, so long diagnosis names do not weigh more. DP always uses ``"example"``
        (per-example gradients need a per-example loss).
    answer_loss
        ``"vocabulary"``: cross-entropy of each answer token over the whole vocabulary (plain
        language-model fine-tuning). ``"candidates"``: cross-entropy over the candidate
        diagnoses only, i.e. at each answer token a softmax restricted to the tokens that
        continue some candidate (the candidate trie's children), which is exactly the
        distribution that ``"constrained"`` scoring ranks by. Training then optimises the
        classifier that is evaluated, and spends no gradient on pushing down tokens no
        candidate can produce; positions with a single continuation carry no loss and are
        skipped. Needs the candidate list (``feddx train`` passes the dataset's).
    bucket_batches
        Length bucketing: the shuffled data is cut into chunks of ``bucket_batches * batch_size``
        examples, each chunk sorted by length and cut into batches, and the batches shuffled.
        Larger chunks mean less padding and a less random order.
    activation_cache_dtype
        Storage dtype of the cached frozen-layer activations (compute stays float32).
        ``float16`` halves the cache; measured on SmolLM2 with DDXPlus prompts it moves a
        token's loss by at most 0.004 (0.00007 on average; ``bfloat16``: 0.03), and entries
        whose values would overflow float16 are kept in float32.
    activation_cache_max_mb
        Memory budget of that cache; beyond it, activations are read back from
        ``feature_cache_dir`` (or recomputed each epoch when there is none).
    gradient_checkpointing
        Recompute each trainable layer's activations in the backward pass (less memory,
        ~30% more compute; not available with DP).
    augment
        Dropout copies of each case (:class:`AugmentSpec`; off by default). Not
        available with DP: copies of one patient are not independent examples, so the
        accountant's epsilon would understate the privacy spent.
    """

    lora: LoraSpec = field(default_factory=LoraSpec)
    learning_rate: float = 2e-4
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    lr_schedule: LrSchedule = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    max_steps: int | None = None
    checkpoint_every: int = 0
    proximal_mu: float = 0.0
    dp: DPConfig | None = None
    loss_reduction: LossReduction = "token"
    answer_loss: AnswerLoss = "vocabulary"
    bucket_batches: int = 16
    activation_cache_dtype: CacheDtype = "float32"
    activation_cache_max_mb: int = 2048
    gradient_checkpointing: bool = False
    augment: AugmentSpec = field(default_factory=AugmentSpec)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field (also checks the nested
        specs, so a config mutated after construction is re-checked before training)."""
        self.lora.validate()
        self.augment.validate()
        if self.dp is not None:
            self.dp.validate()
        _check(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            "must be > 0",
        )
        _check(self.epochs >= 1, "epochs", "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        _check(
            self.lr_schedule in get_args(LrSchedule),
            "lr_schedule",
            f"must be one of {', '.join(get_args(LrSchedule))}",
        )
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 disables clipping)")
        _check(self.max_prompt_tokens >= 16, "max_prompt_tokens", "must be >= 16")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1")
        _check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        _check(self.proximal_mu >= 0, "proximal_mu", "must be >= 0")
        _check(
            self.loss_reduction in get_args(LossReduction),
            "loss_reduction",
            f"must be one of {', '.join(get_args(LossReduction))}",
        )
        _check(
            self.answer_loss in get_args(AnswerLoss),
            "answer_loss",
            f"must be one of {', '.join(get_args(AnswerLoss))}",
        )
        _check(self.bucket_batches >= 1, "bucket_batches", "must be >= 1")
        _check(
            self.activation_cache_dtype in get_args(CacheDtype),
            "activation_cache_dtype",
            f"must be one of {', '.join(get_args(CacheDtype))}",
        )
        _check(self.activation_cache_max_mb >= 0, "activation_cache_max_mb", "must be >= 0")
        _check(
            not (self.gradient_checkpointing and self.dp is not None),
            "gradient_checkpointing",
            "cannot be combined with dp (per-example gradients need the original activations)",
        )
        _check(
            not (self.augment.copies and self.dp is not None),
            "augment.copies",
            "cannot be combined with dp (copies of one patient are not independent examples, "
            "so the reported epsilon would be wrong)",
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "config") -> TrainConfig:
        """Build a config from plain data (a parsed file, CLI overrides).

        Raises :class:`ConfigError` naming ``origin`` and the key for unknown keys, wrong types
        and out-of-range values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: expected a table of settings, got {type(data).__name__}")
        try:
            kwargs = _convert_fields(cls, data, prefix="")
            if "lora" in kwargs:
                kwargs["lora"] = _nested(LoraSpec, kwargs["lora"], "lora")
            if "augment" in kwargs:
                kwargs["augment"] = _nested(AugmentSpec, kwargs["augment"], "augment")
            if "dp" in kwargs:
                dp = kwargs["dp"]
                if dp is None or dp is False:
                    kwargs["dp"] = None
                elif dp is True:
                    kwargs["dp"] = DPConfig()
                else:
                    kwargs["dp"] = _nested(DPConfig, dp, "dp")
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None

    @classmethod
    def from_file(cls, path: Path) -> TrainConfig:
        """Load a ``.yaml``/``.yml``, ``.json`` or ``.toml`` file (see the module docstring)."""
        data = read_config_file(path)
        if set(data) == {"train"}:
            data = data["train"]
        return cls.from_dict(data, origin=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-friendly data; ``from_dict(to_dict())`` gives an equal config."""
        out = dataclasses.asdict(self)
        out["lora"]["target_modules"] = list(self.lora.target_modules)
        return out


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML file into a dict, or raise :class:`ConfigError` saying why."""
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw) or {}
        elif suffix == ".json":
            data = json.loads(raw)
        elif suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise ConfigError(
                f"{path}: unknown config format {suffix!r} (use .yaml, .json or .toml)"
            )
    except ConfigError:
        raise
    except Exception as e:  # each parser has its own exception type; all mean "malformed"
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path}: cannot parse {suffix[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    return data


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {why}")


def _nested(cls: type[Any], data: Any, prefix: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix} must be a table of settings")
    return cls(**_convert_fields(cls, data, prefix=prefix + "."))


# Expected scalar type of each field, by annotation string (the dataclasses use postponed
# annotations, so these are strings).
_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "int | None": (int, type(None)),
    "LossReduction": (str,),
    "CacheDtype": (str,),
    "tuple[str, ...]": (list, tuple, str),
}


def _convert_fields(cls: type[Any], data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(f"unknown setting {prefix + str(key)!r} (known: {hint})")
        expected = _SCALARS.get(cast(str, known[key].type))
        if expected is not None:
            # bool is an int in Python; refuse `epochs = true` and `dropout = false` anyway.
            bad_bool = isinstance(value, bool) and bool not in expected
            if bad_bool or not isinstance(value, expected):
                names = "/".join(t.__name__ for t in expected).replace("NoneType", "null")
                raise ConfigError(f"{prefix}{key} must be {names}, got {type(value).__name__}")
            if expected == (int, float):
                value = float(cast(float, value))
        out[key] = value
    return out
