"""Server checkpoints: everything needed to continue a run exactly where it stopped.

After each round the server writes ``checkpoints/round-NNNNN/`` (global adapter, the
strategy's internal state, the history, the privacy ledger, the run's config fingerprint) into
a temporary folder, renames it into place, and then points ``checkpoints/LATEST`` at it (a
one-line file replaced atomically). A crash at any moment leaves either the previous complete
checkpoint or the new one; an unreadable checkpoint is reported, never half-loaded.

Strategy state is what Flower's strategies keep between rounds: FedAdam/FedYogi/FedAdagrad's
moments (``m_t``, ``v_t``), FedAvgM's momentum (``momentum_vector``) and the arrays each wrapper
remembers (``current_arrays``). It is captured generically from every layer of the wrapper
chain, so a resumed server aggregates exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from feddx.errors import FeddxError
from feddx.io import atomic_write_json, atomic_write_text, building_dir

STATE_ATTRS = ("current_arrays", "m_t", "v_t", "momentum_vector")
LATEST = "LATEST"
_FORMAT = 1


class CheckpointError(FeddxError):
    """A checkpoint exists but cannot be used (corrupt, or written by a different run)."""


@dataclass
class ServerCheckpoint:
    """The server's state after ``server_round`` completed rounds."""

    server_round: int
    fingerprint: str
    global_arrays: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    privacy: list[dict[str, float]] = field(default_factory=list)
    strategy_meta: dict[str, Any] = field(default_factory=dict)
    strategy_arrays: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------- strategy state
def rounds_done(out_dir: Path) -> int:
    """Rounds the federation in ``out_dir`` has checkpointed (0 before the first): its
    progress, as seen from outside Flower's processes."""
    latest = out_dir / "checkpoints" / LATEST
    if not latest.is_file():
        return 0
    return int(latest.read_text().strip().rpartition("-")[2] or 0)


def strategy_chain(strategy: Any) -> list[Any]:
    """The strategy and every strategy it wraps (``.inner`` / ``.strategy``), outermost first."""
    chain = [strategy]
    while True:
        nxt = getattr(chain[-1], "inner", None) or getattr(chain[-1], "strategy", None)
        if nxt is None or nxt in chain:
            return chain
        chain.append(nxt)


def capture_strategy_state(strategy: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON description, arrays) of the between-round state of every layer."""
    meta: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for depth, layer in enumerate(strategy_chain(strategy)):
        for attr in STATE_ATTRS:
            if not hasattr(layer, attr):
                continue
            value = getattr(layer, attr)
            slot = f"{depth}.{attr}"
            if value is None:
                meta[slot] = {"kind": "none"}
            elif isinstance(value, ArrayRecord):
                keys = list(value.keys())
                meta[slot] = {"kind": "arrayrecord", "keys": keys}
                for i, k in enumerate(keys):
                    arrays[f"{slot}/{i}"] = value[k].numpy()
            elif isinstance(value, dict):
                keys = list(value.keys())
                meta[slot] = {"kind": "dict", "keys": keys}
                for i, k in enumerate(keys):
                    arrays[f"{slot}/{i}"] = np.asarray(value[k])
            elif isinstance(value, list):
                meta[slot] = {"kind": "list", "n": len(value)}
                for i, v in enumerate(value):
                    arrays[f"{slot}/{i}"] = np.asarray(v)
            else:
                raise TypeError(
                    f"cannot checkpoint strategy attribute {attr} of type {type(value)}"
                )
    return meta, arrays


def restore_strategy_state(
    strategy: Any, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Put captured state back into a freshly built strategy of the same configuration."""
    chain = strategy_chain(strategy)
    for slot, desc in meta.items():
        depth_s, attr = slot.split(".", 1)
        depth = int(depth_s)
        if depth >= len(chain) or attr not in STATE_ATTRS or not hasattr(chain[depth], attr):
            raise CheckpointError(f"checkpoint has strategy state {slot} this strategy lacks")
        kind = desc["kind"]
        value: Any
        if kind == "none":
            value = None
        elif kind == "arrayrecord":
            value = ArrayRecord(
                {k: Array(arrays[f"{slot}/{i}"]) for i, k in enumerate(desc["keys"])}
            )
        elif kind == "dict":
            value = {k: arrays[f"{slot}/{i}"] for i, k in enumerate(desc["keys"])}
        elif kind == "list":
            value = [arrays[f"{slot}/{i}"] for i in range(int(desc["n"]))]
        else:
            raise CheckpointError(f"unknown strategy state kind {kind!r} in {slot}")
        setattr(chain[depth], attr, value)


# ----------------------------------------------------------------------------- files
def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub misreads **kwargs


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_checkpoint(root: Path, ckpt: ServerCheckpoint, keep: int = 2) -> Path:
    """Write ``ckpt`` under ``root/checkpoints`` atomically; keep the last ``keep`` rounds."""
    base = root / "checkpoints"
    base.mkdir(parents=True, exist_ok=True)
    name = f"round-{ckpt.server_round:05d}"
    with building_dir(base / name) as tmp:
        _write_npz(tmp / "global.npz", ckpt.global_arrays)
        _write_npz(tmp / "strategy.npz", ckpt.strategy_arrays)
        state = {
            "format": _FORMAT,
            "round": ckpt.server_round,
            "fingerprint": ckpt.fingerprint,
            "history": ckpt.history,
            "privacy": ckpt.privacy,
            "strategy": ckpt.strategy_meta,
            "written_at": time.time(),
        }
        atomic_write_json(tmp / "state.json", state)
    atomic_write_text(base / LATEST, name + "\n")
    for old in sorted(p for p in base.glob("round-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return base / name


def load_latest(root: Path) -> ServerCheckpoint | None:
    """The checkpoint ``LATEST`` points at, ``None`` if there is none; raises
    :class:`CheckpointError` if it is unreadable."""
    base = root / "checkpoints"
    pointer = base / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    folder = base / name
    try:
        state = json.loads((folder / "state.json").read_text())
        if state.get("format") != _FORMAT:
            raise CheckpointError(
                f"{folder}: unsupported checkpoint format {state.get('format')!r}"
            )
        return ServerCheckpoint(
            server_round=int(state["round"]),
            fingerprint=str(state["fingerprint"]),
            global_arrays=_read_npz(folder / "global.npz"),
            history=list(state["history"]),
            privacy=list(state["privacy"]),
            strategy_meta=dict(state["strategy"]),
            strategy_arrays=_read_npz(folder / "strategy.npz"),
        )
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {folder} is unreadable ({type(e).__name__}); delete it or use resume = false"
        ) from None
