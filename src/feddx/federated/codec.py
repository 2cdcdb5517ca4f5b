"""What crosses the wire: adapter tensors as Flower records, update compression, byte counts.

Only LoRA adapter tensors (float32, sorted parameter names) and scalar metrics ever go into a
message. A client's reply carries either its whole local adapter (``compression = "none"``) or
a compressed *update* (local minus the global adapter it started from), which the server turns
back into a full adapter before any strategy sees it:

``float16``
    the update in half precision (2x smaller);
``int8``
    per-tensor affine 8-bit quantisation: ``x ~ offset + scale * q`` with ``q`` in 0..255,
    ``offset`` the tensor's minimum (its zero point) and ``scale = (max - min) / 255``;
``topk``
    per tensor, the ``topk-fraction`` entries of largest magnitude (int32 index + float32
    value); what is left out is kept by the client as a residual and added to its next update
    (error feedback), so no part of an update is lost, only delayed.

Compressed tensors are packed, in sorted-key order, into one ``uint8`` array (``payload``),
optionally DEFLATE-compressed: quantised updates cluster around their zero point, so the
lossless stage shrinks them further at almost no CPU cost. The per-tensor scales, offsets or
counts travel in a ``codec`` ConfigRecord; tensor names and shapes are not repeated, the server
knows them from the global adapter.

:func:`decode_update` checks everything it reads (keys, shapes, sizes, finiteness are checked
later by the guard) and raises :class:`MalformedUpdate`, never an arbitrary exception, so one
bad client cannot break a round.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from feddx.federated.config import Compression
from feddx.io import atomic_open

ARRAYS_KEY = "arrays"  # Flower's default ArrayRecord key in strategy messages
METRICS_KEY = "metrics"
CODEC_KEY = "codec"
CONFIG_KEY = "config"
PAYLOAD = "payload"

NDArrays = dict[str, np.ndarray]


class MalformedUpdate(ValueError):
    """A client's update cannot be decoded against the global adapter (names no data)."""


# ----------------------------------------------------------------------------- records
def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Sorted-key ArrayRecord of float32 tensors (the layout every party agrees on)."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(arrays[k], dtype=np.float32)) for k in sorted(arrays)}
    )


def from_array_record(record: ArrayRecord) -> NDArrays:
    """The tensors of an ArrayRecord as numpy arrays (sorted keys)."""
    return {k: record[k].numpy() for k in sorted(record.keys())}


def torch_state_to_numpy(state: Mapping[str, Any]) -> NDArrays:
    """``adapter_state(model)`` (CPU float32 torch tensors) as numpy arrays."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=False) for k, v in state.items()}


def numpy_to_torch_state(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()}


def content_bytes(content: RecordDict) -> int:
    """Bytes a message's content occupies on the wire in Flower 1.42: the serialized objects
    (record dict, records, arrays, array chunks) that the Fleet API pushes and pulls."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


# ----------------------------------------------------------------------------- codecs
def _pack(buffers: list[bytes], deflate: bool) -> Array:
    raw = b"".join(buffers)
    data = zlib.compress(raw, 6) if deflate else raw
    return Array(np.frombuffer(data, dtype=np.uint8).copy())


def _unpack(arrays: ArrayRecord, deflate: bool, expected: int) -> bytes:
    if set(arrays.keys()) != {PAYLOAD}:
        raise MalformedUpdate(f"expected one '{PAYLOAD}' array, got {len(arrays)} arrays")
    try:
        raw = arrays[PAYLOAD].numpy()
    except Exception as e:  # not a numpy array record
        raise MalformedUpdate(f"unreadable payload ({type(e).__name__})") from None
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise MalformedUpdate("payload must be a flat uint8 array")
    data: bytes = bytes(raw.tobytes())
    if deflate:
        try:
            d = zlib.decompressobj()
            data = bytes(d.decompress(data, expected + 1))
        except zlib.error:
            raise MalformedUpdate("payload is not valid DEFLATE data") from None
    if len(data) != expected:
        raise MalformedUpdate(f"payload holds {len(data)} bytes, expected {expected}")
    return data


def _floats(codec: ConfigRecord, key: str, n: int) -> list[float]:
    v = codec.get(key)
    if not isinstance(v, list) or len(v) != n or not all(isinstance(x, float) for x in v):
        raise MalformedUpdate(f"codec.{key} must list {n} floats")
    if not all(math.isfinite(x) for x in v):
        raise MalformedUpdate(f"codec.{key} has non-finite values")
    return cast(list[float], v)


def encode_update(
    local: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    scheme: Compression,
    *,
    topk_fraction: float = 0.1,
    deflate: bool = True,
    residual: Mapping[str, np.ndarray] | None = None,
) -> tuple[ArrayRecord, ConfigRecord, NDArrays | None]:
    """Encode a client's local adapter for the reply.

    Returns the ArrayRecord, the ``codec`` ConfigRecord, and (``topk`` only) the new
    error-feedback residual the client must keep for its next round.
    """
    keys = sorted(reference)
    if sorted(local) != keys:
        raise ValueError("local adapter and reference have different tensor names")
    if scheme == "none":
        return to_array_record(local), ConfigRecord({"scheme": "none"}), None
    delta = {
        k: np.asarray(local[k], np.float32) - np.asarray(reference[k], np.float32) for k in keys
    }
    codec = ConfigRecord({"scheme": scheme, "deflate": deflate})
    if scheme == "float16":
        payload = _pack([delta[k].astype(np.float16).tobytes() for k in keys], deflate)
        return ArrayRecord({PAYLOAD: payload}), codec, None
    if scheme == "int8":
        offsets, scales, buffers = [], [], []
        for k in keys:
            d = delta[k].ravel()
            lo, hi = (float(d.min()), float(d.max())) if d.size else (0.0, 0.0)
            scale = (hi - lo) / 255.0
            q = (
                np.zeros(d.shape, np.uint8)
                if scale == 0.0
                else np.clip(np.rint((d - lo) / scale), 0, 255).astype(np.uint8)
            )
            offsets.append(lo)
            scales.append(scale)
            buffers.append(q.tobytes())
        codec["offset"] = offsets
        codec["scale"] = scales
        return ArrayRecord({PAYLOAD: _pack(buffers, deflate)}), codec, None
    if scheme == "topk":
        idx_bufs, val_bufs, counts = [], [], []
        new_residual: NDArrays = {}
        for k in keys:
            v = delta[k].ravel() + (
                np.asarray(residual[k], np.float32).ravel() if residual and k in residual else 0.0
            )
            n = max(1, math.ceil(topk_fraction * v.size)) if v.size else 0
            idx = (
                np.sort(np.argpartition(np.abs(v), v.size - n)[v.size - n :])
                if n
                else np.zeros(0, np.int64)
            )
            idx_bufs.append(idx.astype(np.int32).tobytes())
            val_bufs.append(v[idx].astype(np.float32).tobytes())
            counts.append(int(n))
            rest = v.copy()
            rest[idx] = 0.0
            new_residual[k] = rest.reshape(delta[k].shape)
        codec["count"] = counts
        return ArrayRecord({PAYLOAD: _pack(idx_bufs + val_bufs, deflate)}), codec, new_residual
    raise ValueError(f"unknown compression scheme {scheme!r}")


def decode_update(
    arrays: ArrayRecord, codec: ConfigRecord | None, reference: Mapping[str, np.ndarray]
) -> NDArrays:
    """The client's full local adapter (float32), reconstructed against ``reference`` (the
    global adapter the client started from). Raises :class:`MalformedUpdate`."""
    keys = sorted(reference)
    scheme = (codec or ConfigRecord({"scheme": "none"})).get("scheme", "none")
    if scheme == "none":
        if sorted(arrays.keys()) != keys:
            raise MalformedUpdate(_key_mismatch(set(arrays.keys()), set(keys)))
        out: NDArrays = {}
        for k in keys:
            try:
                a = arrays[k].numpy()
            except Exception as e:
                raise MalformedUpdate(f"tensor {k!r} unreadable ({type(e).__name__})") from None
            if a.shape != reference[k].shape:
                raise MalformedUpdate(
                    f"tensor {k!r} has shape {tuple(a.shape)}, expected {tuple(reference[k].shape)}"
                )
            if a.dtype != np.float32:
                raise MalformedUpdate(f"tensor {k!r} has dtype {a.dtype}, expected float32")
            out[k] = a
        return out
    assert codec is not None
    deflate = bool(codec.get("deflate", False))
    sizes = [int(np.prod(reference[k].shape)) for k in keys]
    if scheme == "float16":
        data = _unpack(arrays, deflate, 2 * sum(sizes))
        flat = np.frombuffer(data, dtype=np.float16).astype(np.float32)
        return _add_flat(reference, keys, sizes, flat)
    if scheme == "int8":
        data = _unpack(arrays, deflate, sum(sizes))
        offsets = _floats(codec, "offset", len(keys))
        scales = _floats(codec, "scale", len(keys))
        q = np.frombuffer(data, dtype=np.uint8).astype(np.float32)
        parts, pos = [], 0
        for n, lo, s in zip(sizes, offsets, scales, strict=True):
            parts.append(lo + s * q[pos : pos + n])
            pos += n
        return _add_flat(reference, keys, sizes, np.concatenate(parts) if parts else q)
    if scheme == "topk":
        counts = codec.get("count")
        if (
            not isinstance(counts, list)
            or len(counts) != len(keys)
            or not all(
                isinstance(c, int) and 0 <= c <= n for c, n in zip(counts, sizes, strict=True)
            )
        ):
            raise MalformedUpdate(f"codec.count must list {len(keys)} valid entry counts")
        counts = cast(list[int], counts)
        total = sum(counts)
        data = _unpack(arrays, deflate, 8 * total)
        idx_all = np.frombuffer(data[: 4 * total], dtype=np.int32)
        val_all = np.frombuffer(data[4 * total :], dtype=np.float32)
        out = {}
        pos = 0
        for k, n, c in zip(keys, sizes, counts, strict=True):
            idx, val = idx_all[pos : pos + c], val_all[pos : pos + c]
            pos += c
            if c and (idx.min() < 0 or idx.max() >= n):
                raise MalformedUpdate(f"tensor {k!r}: sparse index out of range")
            flat = np.zeros(n, np.float32)
            flat[idx] = val
            out[k] = np.asarray(reference[k], np.float32) + flat.reshape(reference[k].shape)
        return out
    raise MalformedUpdate(f"unknown codec scheme {scheme!r}")


def _add_flat(
    reference: Mapping[str, np.ndarray], keys: list[str], sizes: list[int], flat: np.ndarray
) -> NDArrays:
    out, pos = {}, 0
    for k, n in zip(keys, sizes, strict=True):
        ref = np.asarray(reference[k], np.float32)
        out[k] = ref + flat[pos : pos + n].reshape(ref.shape).astype(np.float32)
        pos += n
    return out


def _key_mismatch(got: set[str], expected: set[str]) -> str:
    missing, extra = sorted(expected - got), sorted(got - expected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]!r})")
    if extra:
        # An unexpected name is echoed only if it looks like a parameter name.
        name = extra[0] if _PARAM_NAME.fullmatch(extra[0]) else "<unexpected name>"
        parts.append(f"{len(extra)} unexpected tensors (e.g. {name!r})")
    return "; ".join(parts) or "tensor names differ"


_PARAM_NAME = re.compile(r"[A-Za-z0-9_.]{1,200}")


# ----------------------------------------------------------------------------- residuals
class ResidualStore:
    """A client's error-feedback residuals on its own disk, one file per round.

    The residual produced in round ``r`` is read back when training round ``r' > r``; keeping it
    per round (not as one mutable file) means a server that restarts and replays a round gets
    exactly the residual it would have got the first time.
    """

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory = directory
        self.keep = keep

    def _path(self, server_round: int) -> Path:
        return self.directory / f"residual-r{server_round:05d}.npz"

    def load_before(self, server_round: int) -> NDArrays | None:
        """The residual of the latest round before ``server_round``, if any."""
        if not self.directory.is_dir():
            return None
        rounds = sorted(
            int(p.stem.removeprefix("residual-r"))
            for p in self.directory.glob("residual-r*.npz")
            if p.stem.removeprefix("residual-r").isdigit()
        )
        earlier = [r for r in rounds if r < server_round]
        if not earlier:
            return None
        with np.load(self._path(earlier[-1])) as f:
            return {k: f[k] for k in f.files}

    def save(self, server_round: int, residual: Mapping[str, np.ndarray]) -> None:
        with atomic_open(self._path(server_round), "wb", private=True) as f:
            np.savez(f, **dict(residual))  # type: ignore[arg-type]
        files = sorted(self.directory.glob("residual-r*.npz"))
        for old in files[: -self.keep]:
            old.unlink(missing_ok=True)
