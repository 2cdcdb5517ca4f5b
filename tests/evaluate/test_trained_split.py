"""The split an adapter is evaluated on comes from what it records; anything that could score
its training cases, other data or another label space is refused unless explicitly allowed."""

from __future__ import annotations

import pytest

from feddx.errors import DataError
from feddx.evaluate.trained_split import (
    ResolvedSplit,
    TrainedOn,
    check_label_space,
    resolve_split,
    same_data,
)

TRAINED = TrainedOn.from_metadata(
    "runs/a",
    {"data": "uci-heart", "split": "train", "test_fraction": 0.5, "seed": 1, "candidates": ["x"]},
)


def _resolve(records: list[TrainedOn], **kw: object) -> ResolvedSplit:
    args: dict[str, object] = {"data": None, "split": "test", "test_fraction": None, "seed": None}
    return resolve_split(records, **{**args, **kw})  # type: ignore[arg-type]


def test_the_adapters_own_split_is_the_default() -> None:
    r = resolve_split([TRAINED], data=None, split="test", test_fraction=None, seed=None)
    assert (r.data, r.test_fraction, r.seed, r.source, r.notes) == (
        "uci-heart",
        0.5,
        1,
        "adapter",
        (),
    )
    same = resolve_split([TRAINED], data="uci-heart", split="test", test_fraction=0.5, seed=1)
    assert (same.test_fraction, same.seed, same.notes) == (0.5, 1, ())


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"seed": 0}, "trained with --seed 1 --test-fraction 0.5"),
        ({"test_fraction": 0.2}, "another split of uci-heart scores cases it trained on"),
        ({"split": "all"}, "--split all scores every case of uci-heart"),
    ],
)
def test_another_split_of_the_same_data_is_refused_unless_allowed(
    kw: dict[str, object], says: str
) -> None:
    with pytest.raises(DataError, match="--allow-other-split") as e:
        _resolve([TRAINED], **kw)
    assert says in str(e.value) and "\n" not in str(e.value)
    allowed = resolve_split(
        [TRAINED],
        data=None,
        split=str(kw.get("split", "test")),
        test_fraction=kw.get("test_fraction"),  # type: ignore[arg-type]
        seed=kw.get("seed"),  # type: ignore[arg-type]
        allow_other_split=True,
    )
    assert allowed.notes[0].startswith("other split (--allow-other-split)")


def test_an_adapter_trained_on_every_case_has_no_held_out_split() -> None:
    everything = TrainedOn.from_metadata("b", {"data": "uci-heart", "split": "all", "seed": 0})
    with pytest.raises(DataError, match="trained on every case of uci-heart"):
        _resolve([everything])


def test_other_data_is_refused_unless_allowed() -> None:
    ddx = TrainedOn.from_metadata("ddx", {"data": "ddxplus:/d", "split": "train", "seed": 0})
    with pytest.raises(
        DataError, match="trained on ddxplus:/d, not uci-heart: pass --allow-other-data"
    ):
        _resolve([ddx], data="uci-heart")
    r = resolve_split(
        [ddx], data="uci-heart", split="test", test_fraction=None, seed=None, allow_other_data=True
    )
    assert r.notes == ("other data: adapter ddx was trained on ddxplus:/d, scored on uci-heart",)


def test_an_adapter_without_a_record_is_scored_on_the_requested_split_with_a_note() -> None:
    bare = TrainedOn.from_metadata("old", {})
    r = _resolve([bare], data="uci-heart", seed=3)
    assert (r.test_fraction, r.seed, r.trained_on) == (0.2, 3, None)
    assert "does not record the data and split" in r.notes[0]
    with pytest.raises(DataError, match="--data is needed"):
        _resolve([bare])


def test_same_data_compares_sources_and_resolved_paths() -> None:
    assert same_data("uci-heart", "uci-heart:anything")
    assert same_data("ddxplus", "ddxplus:/data/x")  # a writer that records the source alone
    assert same_data("jsonl:a/../b.jsonl", "jsonl:b.jsonl")
    assert not same_data("jsonl:a.jsonl", "jsonl:b.jsonl")
    assert not same_data("ddxplus:/x", "uci-heart")


def test_another_label_space_is_refused_unless_allowed() -> None:
    assert check_label_space(TRAINED, ["x"], allow_other_data=False) is None
    with pytest.raises(DataError, match="adapter runs/a ranks 1 diagnoses, this evaluation 2"):
        check_label_space(TRAINED, ["x", "y"], allow_other_data=False)
    note = check_label_space(TRAINED, ["y"], allow_other_data=True)
    assert note is not None and note.startswith("other data (--allow-other-data)")
