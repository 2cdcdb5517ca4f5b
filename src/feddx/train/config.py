"""Every knob of a LoRA training run, as :class:`~feddx.settings.Settings` loadable from YAML,
JSON or TOML.

A config file holds the :class:`TrainConfig` fields at its top level (or under a ``train``
section), with the LoRA and DP settings as nested tables::

    learning_rate = 2e-4
    epochs = 3
    [hardware]
    device = "auto"
    [lora]
    rank = 16
    top_layers = 4
    [dp]
    noise_multiplier = 1.0

Unknown keys and wrong types are refused with a :class:`~feddx.errors.ConfigError` naming the
file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from feddx.model.adapter import LoraSpec
from feddx.model.hardware import HardwareSpec
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS
from feddx.settings import Settings

LossReduction = Literal["token", "example"]
CacheDtype = Literal["float32", "float16", "bfloat16"]
LrSchedule = Literal["cosine", "constant"]
AnswerLoss = Literal["vocabulary", "candidates"]


class DPConfig(Settings):
    """DP-SGD (Opacus): per-example clipping to ``max_grad_norm`` plus Gaussian noise of
    standard deviation ``noise_multiplier * max_grad_norm``; epsilon is reported at ``delta``."""

    settings_name: ClassVar[str] = "dp"

    noise_multiplier: float = Field(default=1.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)


class AugmentSpec(Settings):
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

    settings_name: ClassVar[str] = "augment"

    copies: int = Field(default=0, ge=0)
    drop_finding: float = Field(default=0.2, ge=0.0, lt=1.0)
    shuffle_findings: bool = False
    drop_sentence: float = Field(default=0.0, ge=0.0, lt=1.0)


class TrainConfig(Settings):
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
        ~30% more compute; not available with DP). ``None`` (default): on where it pays, on a
        GPU, and off on a CPU (:func:`feddx.train.recipe.training_config_for`).
    hardware
        Device, dtype and quantization of the base model (:class:`HardwareSpec`; all ``auto``
        by default: a CUDA GPU in bf16 when present, else the CPU in float32).
    augment
        Dropout copies of each case (:class:`AugmentSpec`; off by default). Not
        available with DP: copies of one patient are not independent examples, so the
        accountant's epsilon would understate the privacy spent.
    history_dropout
        The fraction of training cases with a history that are rendered without it (exactly
        ``round(fraction * n)`` of the ``n`` such cases, picked from ``seed``): the model learns
        to use the patient's history and still answers a patient with none on record. ``0``
        (default): every case as it comes; ``1``: no history at all (a model trained without
        it). See :func:`feddx.train.augment.drop_history`.
    """

    settings_name: ClassVar[str] = "training config"
    file_section: ClassVar[str | None] = "train"

    lora: LoraSpec = Field(default_factory=LoraSpec)
    learning_rate: float = Field(default=2e-4, gt=0.0, allow_inf_nan=False)
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0)
    lr_schedule: LrSchedule = "cosine"
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, ge=0.0)  # 0 disables clipping
    seed: int = 0
    max_prompt_tokens: int = Field(default=DEFAULT_MAX_PROMPT_TOKENS, ge=16)
    max_steps: int | None = Field(default=None, ge=1)
    checkpoint_every: int = Field(default=0, ge=0)
    proximal_mu: float = Field(default=0.0, ge=0.0)
    dp: DPConfig | None = None
    loss_reduction: LossReduction = "token"
    answer_loss: AnswerLoss = "vocabulary"
    bucket_batches: int = Field(default=16, ge=1)
    activation_cache_dtype: CacheDtype = "float32"
    activation_cache_max_mb: int = Field(default=2048, ge=0)
    gradient_checkpointing: bool | None = None
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    history_dropout: float = Field(default=0.0, ge=0.0, le=1.0)
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)

    @field_validator("dp", mode="before")
    @classmethod
    def _dp_switch(cls, value: Any) -> Any:
        # `dp: true` in a file means DP-SGD with the default settings, `dp: false` none.
        if value is True:
            return DPConfig()
        if value is False:
            return None
        return value

    @model_validator(mode="after")
    def _exclusive_with_dp(self) -> TrainConfig:
        if self.dp is not None and self.gradient_checkpointing:
            raise ValueError(
                "gradient_checkpointing cannot be combined with dp (per-example gradients "
                "need the original activations)"
            )
        if self.dp is not None and self.augment.copies:
            raise ValueError(
                "augment.copies cannot be combined with dp (copies of one patient are not "
                "independent examples, so the reported epsilon would be wrong)"
            )
        return self
