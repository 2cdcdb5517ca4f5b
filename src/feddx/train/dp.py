"""DP-SGD through Opacus: per-example gradient clipping, Gaussian noise, RDP accounting.

Opacus' hooks compute per-example gradients of the LoRA layers (plain ``nn.Linear`` modules
inside peft's wrappers); :class:`DPSGD` then follows Opacus' own recipe for large logical
batches split into micro-batches (what ``BatchMemoryManager`` does): clip and accumulate each
micro-batch, add noise once per logical batch, average by the expected batch size.

The logical batches are Poisson-sampled (each example joins with probability ``q``), which is
the sampling the RDP accountant's bound assumes. An empty batch still takes a noise-only step
and is still accounted: skipping it would leak that no example was drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from feddx.train.config import DPConfig


class DPSGD:
    """Per-example clipping and noise around an existing optimizer, plus the accountant."""

    def __init__(
        self,
        model: Any,
        params: Sequence[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        config: DPConfig,
        *,
        sample_rate: float,
        expected_batch_size: float,
        history: Sequence[Sequence[float]] = (),
    ) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.optimizers import DPOptimizer

        self.config = config
        self.sample_rate = sample_rate
        self.params = list(params)
        # strict=False: the frozen base model has buffers (rotary tables) Opacus would refuse
        # in strict mode; they carry no trainable state, so per-example gradients stay exact.
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=max(1, round(expected_batch_size)),
            loss_reduction="mean",
        )
        self.accountant = RDPAccountant()
        self.accountant.history = [(float(n), float(q), int(s)) for n, q, s in history]

    def accumulate(self) -> None:
        """Clip this micro-batch's per-example gradients into the running sum (not the last
        micro-batch of a logical batch)."""
        self.optimizer.signal_skip_step(do_skip=True)
        self.optimizer.pre_step()
        self.optimizer.zero_grad(set_to_none=True)

    def finish(self, *, empty: bool) -> None:
        """Clip the last micro-batch, add noise and average: afterwards ``p.grad`` holds the
        private gradient. ``empty``: the logical batch drew no example (noise-only step)."""
        if empty:
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self.optimizer.pre_step()
        self.accountant.step(
            noise_multiplier=self.config.noise_multiplier, sample_rate=self.sample_rate
        )

    def step(self) -> None:
        """Apply the update with the wrapped optimizer, then clear per-example state."""
        self.optimizer.original_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.config.delta))

    @property
    def history(self) -> list[list[float]]:
        return [[float(n), float(q), float(s)] for n, q, s in self.accountant.history]

    def close(self) -> None:
        """Remove Opacus' hooks and attributes so the model is an ordinary model again."""
        for p in self.params:
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(p, attr):
                    setattr(p, attr, None)
        self.module._close()
