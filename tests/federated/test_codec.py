"""Update compression: what each scheme sends, how exactly it comes back, and that a damaged or
hostile payload is refused with MalformedUpdate (never another exception)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from feddx.federated.codec import (
    PAYLOAD,
    MalformedUpdate,
    ResidualStore,
    content_bytes,
    decode_update,
    encode_update,
    to_array_record,
)


def adapter(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """A LoRA-shaped adapter: A (r x d) and B (d x r) for two layers, sorted keys."""
    rng = np.random.default_rng(seed)
    shapes = {
        "model.layers.0.self_attn.q_proj.lora_A.weight": (8, 64),
        "model.layers.0.self_attn.q_proj.lora_B.weight": (64, 8),
        "model.layers.1.self_attn.v_proj.lora_A.weight": (8, 64),
        "model.layers.1.self_attn.v_proj.lora_B.weight": (32, 8),
    }
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


@pytest.fixture()
def pair() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    glob = adapter(0)
    local = {k: v + adapter(1, 0.01)[k] for k, v in glob.items()}
    return glob, local


def test_none_sends_the_local_adapter_exactly(pair: tuple) -> None:
    glob, local = pair
    arrays, codec, residual = encode_update(local, glob, "none")
    assert residual is None and codec["scheme"] == "none"
    out = decode_update(arrays, codec, glob)
    assert all(np.array_equal(out[k], local[k]) for k in glob)


@pytest.mark.parametrize(("scheme", "tolerance"), [("float16", 1e-4), ("int8", 2e-4)])
def test_lossy_schemes_reconstruct_within_their_quantisation_step(
    pair: tuple, scheme: str, tolerance: float
) -> None:
    glob, local = pair
    arrays, codec, _ = encode_update(local, glob, scheme)  # type: ignore[arg-type]
    out = decode_update(arrays, codec, glob)
    for k in glob:
        delta = local[k] - glob[k]
        step = (delta.max() - delta.min()) / 255 if scheme == "int8" else 0
        assert np.max(np.abs(out[k] - local[k])) <= max(tolerance, step / 2 + 1e-7)


def test_sizes_adapter_update_float16_int8_topk(pair: tuple) -> None:
    glob, local = pair

    def size(scheme: str, **kw: object) -> int:
        arrays, codec, _ = encode_update(local, glob, scheme, **kw)  # type: ignore[arg-type]
        return content_bytes(RecordDict({"arrays": arrays, "codec": codec}))

    full = size("none")
    assert full / size("float16", deflate=False) > 1.9
    assert full / size("int8", deflate=False) > 3.5  # 8 of 32 bits, plus a little metadata
    # DEFLATE only helps: how much depends on how peaked the update is (benchmarked on real ones)
    assert size("int8") <= size("int8", deflate=False) + 16
    assert full / size("topk", topk_fraction=0.1, deflate=False) > 4.0


def test_topk_error_feedback_loses_nothing_over_rounds(tmp_path: Path) -> None:
    """What top-k leaves out is carried in the residual: the decoded updates of all rounds plus
    the final residual add up to the sum of the true updates."""
    glob = adapter(0)
    store = ResidualStore(tmp_path / "residuals")
    sent_total = {k: np.zeros_like(v) for k, v in glob.items()}
    true_total = {k: np.zeros_like(v) for k, v in glob.items()}
    for rnd in range(1, 5):
        local = {k: v + adapter(rnd, 0.01)[k] for k, v in glob.items()}
        arrays, codec, residual = encode_update(
            local, glob, "topk", topk_fraction=0.05, residual=store.load_before(rnd)
        )
        assert residual is not None
        store.save(rnd, residual)
        decoded = decode_update(arrays, codec, glob)
        for k in glob:
            sent_total[k] += decoded[k] - glob[k]
            true_total[k] += local[k] - glob[k]
    final = store.load_before(99)
    assert final is not None
    for k in glob:
        np.testing.assert_allclose(sent_total[k] + final[k], true_total[k], atol=1e-5)


def test_residual_of_a_replayed_round_is_the_one_before_it(tmp_path: Path) -> None:
    store = ResidualStore(tmp_path)
    store.save(1, {"a": np.ones(3, np.float32)})
    store.save(2, {"a": np.full(3, 2.0, np.float32)})
    replay = store.load_before(2)  # a resumed server re-runs round 2
    assert replay is not None and float(replay["a"][0]) == 1.0
    assert store.load_before(1) is None


def test_wrong_keys_shapes_and_dtypes_are_malformed(pair: tuple) -> None:
    glob, local = pair
    missing = dict(local)
    missing.pop(next(iter(missing)))
    with pytest.raises(MalformedUpdate, match="missing"):
        decode_update(to_array_record(missing), None, glob)
    wrong = dict(local)
    k0 = next(iter(wrong))
    wrong[k0] = np.zeros((3, 3), np.float32)
    with pytest.raises(MalformedUpdate, match="shape"):
        decode_update(to_array_record(wrong), None, glob)
    record = to_array_record(local)
    record[k0] = Array(local[k0].astype(np.float64))
    with pytest.raises(MalformedUpdate, match="dtype"):
        decode_update(record, None, glob)


@pytest.mark.parametrize("scheme", ["float16", "int8", "topk"])
def test_truncated_or_garbled_payloads_are_malformed(pair: tuple, scheme: str) -> None:
    glob, local = pair
    arrays, codec, _ = encode_update(local, glob, scheme)  # type: ignore[arg-type]
    data = arrays[PAYLOAD].numpy()
    truncated = ArrayRecord({PAYLOAD: Array(data[: len(data) // 2].copy())})
    with pytest.raises(MalformedUpdate):
        decode_update(truncated, codec, glob)
    garbled = ArrayRecord({PAYLOAD: Array(np.frombuffer(b"not deflate" * 9, np.uint8).copy())})
    with pytest.raises(MalformedUpdate):
        decode_update(garbled, codec, glob)


def test_hostile_codec_metadata_is_malformed(pair: tuple) -> None:
    glob, local = pair
    arrays, codec, _ = encode_update(local, glob, "topk", deflate=False)
    bad = ConfigRecord(dict(codec))
    bad["count"] = [10**9] * len(glob)
    with pytest.raises(MalformedUpdate, match="count"):
        decode_update(arrays, bad, glob)
    arrays, codec, _ = encode_update(local, glob, "int8")
    bad = ConfigRecord(dict(codec))
    bad["scale"] = [float("inf")] * len(glob)
    with pytest.raises(MalformedUpdate, match="non-finite"):
        decode_update(arrays, bad, glob)
    with pytest.raises(MalformedUpdate, match="unknown codec"):
        decode_update(arrays, ConfigRecord({"scheme": "zip"}), glob)
