"""Resumable training checkpoints, written atomically and verified on load.

A checkpoint is a directory ``<out_dir>/checkpoints/step-000040/`` with

- ``adapter.safetensors``: the LoRA tensors;
- ``trainer.pt``: optimizer state and the RNG states of torch, ``random`` and numpy
  (loaded with ``weights_only=True``: no arbitrary pickle code runs on load);
- ``state.json``: the step, the data-order position, running loss sums, the config and data
  fingerprints it belongs to, and the SHA-256 of the two files above.

It is built under a temporary name and renamed into place, and the previous checkpoint is kept
until a newer one is complete, so a crash mid-write never loses the last good state. A
checkpoint that fails its checksums raises one :class:`~feddx.errors.ModelError` naming it and
is left untouched, as is the one before it.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from feddx.errors import ModelError
from feddx.io import atomic_write_json, building_dir, file_sha256

log = logging.getLogger(__name__)

_FORMAT = 1
_KEEP = 2
ADAPTER_FILE = "adapter.safetensors"
TRAINER_FILE = "trainer.pt"
STATE_FILE = "state.json"


@dataclass
class TrainState:
    """Where a run is: everything besides tensors that a resumed run needs."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next step
    step_in_epoch: int = 0  # steps of that epoch already done
    examples: int = 0
    loss_sum: float = 0.0  # sum of losses in the unit of loss_reduction
    loss_count: float = 0.0  # tokens or examples behind loss_sum
    seconds: float = 0.0  # training time of all invocations before this one
    loss_history: list[float] = field(default_factory=list)
    dp_history: list[list[float]] = field(default_factory=list)  # [noise, sample_rate, steps]
    extra: dict[str, float] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch, ``random``, numpy) in a ``weights_only``-loadable form."""
    np_state = cast(tuple[Any, ...], np.random.get_state())
    return {
        "torch": torch.get_rng_state(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


@dataclass
class Checkpoint:
    state: TrainState
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    path: Path


class CheckpointStore:
    """The checkpoints of one output directory, bound to one run's identity.

    ``identity`` (config and data fingerprints, base-weights key) is stored in every checkpoint;
    resuming from a checkpoint of a different run is refused rather than silently mixing them.
    """

    def __init__(self, out_dir: Path, identity: dict[str, Any]) -> None:
        self.root = Path(out_dir) / "checkpoints"
        self.identity = json.loads(json.dumps(identity))

    def _steps(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step-"))

    def clear(self) -> None:
        """Delete every checkpoint (a run started with ``resume=False``)."""
        if self.root.exists():
            shutil.rmtree(self.root)

    def save(
        self,
        state: TrainState,
        adapter: dict[str, torch.Tensor],
        optimizer: dict[str, Any],
    ) -> Path:
        """Write a checkpoint for ``state.step`` atomically; keep the newest two."""
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{state.step:07d}"
        # building_dir's temporary name (.tmp-step-...) is what latest() clears after a crash.
        with building_dir(final) as tmp:
            save_file({k: v.contiguous() for k, v in adapter.items()}, str(tmp / ADAPTER_FILE))
            torch.save({"optimizer": optimizer, "rng": rng_state()}, tmp / TRAINER_FILE)
            meta = {
                "format": _FORMAT,
                "identity": self.identity,
                "state": asdict(state),
                "sha256": {n: file_sha256(tmp / n) for n in (ADAPTER_FILE, TRAINER_FILE)},
            }
            atomic_write_json(tmp / STATE_FILE, meta)
        for old in self._steps()[:-_KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint, verified; ``None`` if there is none.

        Raises :class:`ModelError` if it is corrupt or belongs to a different run.
        """
        for stale in self.root.glob(".tmp-step-*") if self.root.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)  # a write interrupted by a crash
        steps = self._steps()
        if not steps:
            return None
        return self._load(steps[-1], previous=steps[-2] if len(steps) > 1 else None)

    def _load(self, path: Path, previous: Path | None) -> Checkpoint:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        def corrupt(why: str) -> ModelError:
            hint = (
                f"delete it to resume from {previous.name}"
                if previous is not None
                else "delete it or start over with resume disabled (--no-resume)"
            )
            return ModelError(f"checkpoint {path} is corrupt ({why}); {hint}")

        try:
            meta = json.loads((path / STATE_FILE).read_text())
            sums = meta["sha256"]
            state = TrainState(**meta["state"])
            identity = meta["identity"]
        except FileNotFoundError:
            raise corrupt(f"{STATE_FILE} is missing") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise corrupt(f"{STATE_FILE} is unreadable: {type(e).__name__}") from None
        if meta.get("format") != _FORMAT:
            raise corrupt(f"unknown format {meta.get('format')!r}")
        for name in (ADAPTER_FILE, TRAINER_FILE):
            file = path / name
            if not file.is_file():
                raise corrupt(f"{name} is missing")
            if file_sha256(file) != sums.get(name):
                raise corrupt(f"{name} fails its checksum")
        try:
            adapter = load_file(str(path / ADAPTER_FILE))
            trainer = torch.load(path / TRAINER_FILE, weights_only=True)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise corrupt(f"{type(e).__name__}") from None
        self._check_identity(path, identity)
        return Checkpoint(state, adapter, trainer["optimizer"], trainer["rng"], path)

    def _check_identity(self, path: Path, identity: dict[str, Any]) -> None:
        for key, ours in self.identity.items():
            theirs = identity.get(key)
            if theirs != ours:
                what = {
                    "model": "another base model",
                    "data": "different training data",
                    "config": "a different training config",
                    "lora": "a different LoRA layout",
                }.get(key, f"a different {key}")
                detail = ""
                if isinstance(ours, dict) and isinstance(theirs, dict):
                    changed = sorted(k for k in ours if ours.get(k) != theirs.get(k))
                    detail = f" (changed: {', '.join(changed)})" if changed else ""
                raise ModelError(
                    f"checkpoint {path} belongs to a run with {what}{detail}; "
                    "use another output directory or start over with resume disabled (--no-resume)"
                )
