"""Which cases an evaluation may score, read from what the adapters record about their training.

``feddx train`` records in each adapter the data spec it trained on, the split (``"train"``:
its training split; ``"all"``: every case), the split's seed and test fraction, and the
candidate list it ranks. An adapter scored on any other split of the same data is scored on
cases it trained on, and one scored on other data or another label space is not being
evaluated on what it was trained to do. So, by default:

- the data and the split come from the adapter (``--data``, ``--seed`` and
  ``--test-fraction`` may be left out);
- an explicitly different split of the same data, ``--split all`` on it, or an adapter trained
  on every case, is refused unless ``allow_other_split``;
- other data (another source or path) or another candidate list is refused unless
  ``allow_other_data``;

and when allowed, the evaluation's notes say so. Adapters that record none of this (written
by older versions, or by writers that keep only the source name) are scored on the requested
or default split, with a note saying the split could not be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feddx.data.sources import PATHLESS, parse_data_spec
from feddx.errors import DataError

DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 0
ALLOW_SPLIT = "--allow-other-split"
ALLOW_DATA = "--allow-other-data"


@dataclass(frozen=True)
class TrainedOn:
    """What one adapter's metadata says it was trained on (``None``: not recorded)."""

    adapter: str
    data: str | None = None
    split: str | None = None
    test_fraction: float | None = None
    seed: int | None = None
    candidates: tuple[str, ...] | None = None

    @classmethod
    def from_metadata(cls, adapter: str, metadata: dict[str, Any]) -> TrainedOn:
        def number(key: str) -> Any:
            value = metadata.get(key)
            return value if isinstance(value, int | float) and not isinstance(value, bool) else None

        names = metadata.get("candidates")
        data = metadata.get("data")
        return cls(
            adapter=adapter,
            data=data if isinstance(data, str) and data else None,
            split=metadata.get("split") if metadata.get("split") in ("train", "all") else None,
            test_fraction=None
            if number("test_fraction") is None
            else float(number("test_fraction")),
            seed=None if number("seed") is None else int(number("seed")),
            candidates=tuple(str(n) for n in names) if isinstance(names, list) else None,
        )

    def split_text(self) -> str:
        if self.split == "all":
            return "every case"
        return f"--seed {self.seed} --test-fraction {self.test_fraction}"


@dataclass(frozen=True)
class ResolvedSplit:
    """The data and split to evaluate, the adapter record they were checked against (if any)
    and the notes the output must carry (what was allowed, what could not be checked)."""

    data: str
    test_fraction: float
    seed: int
    trained_on: TrainedOn | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    source: str = "options"  # "adapter" when the split was taken from the adapter's record


def same_data(a: str, b: str) -> bool:
    """Whether two ``SOURCE[:PATH]`` specs name the same data: the same source, and the same
    resolved path where both give one (writers that record the source alone match any path)."""
    (sa, pa), (sb, pb) = parse_data_spec(a), parse_data_spec(b)
    if sa != sb:
        return False
    if sa in PATHLESS or pa is None or pb is None:
        return True
    return Path(pa).expanduser().resolve() == Path(pb).expanduser().resolve()


def resolve_split(
    records: Sequence[TrainedOn],
    *,
    data: str | None,
    split: str,
    test_fraction: float | None,
    seed: int | None,
    allow_other_split: bool = False,
    allow_other_data: bool = False,
) -> ResolvedSplit:
    """The split to evaluate ``records``' adapters on (see the module docstring). Raises
    :class:`DataError` (one line, naming the flag that would allow it) for a split or data the
    adapters were not held out from."""
    known = [r for r in records if r.data]
    ref = known[0] if known else None
    if ref is not None and not allow_other_split:
        _check_same_training(ref, known[1:])
    chosen = data or (ref.data if ref else None)
    if chosen is None:
        raise DataError("--data is needed: no adapter records the data it was trained on")
    if ref is None:
        return _unchecked(records, chosen, test_fraction, seed)
    if not same_data(chosen, ref.data or ""):
        if not allow_other_data:
            raise DataError(
                f"adapter {ref.adapter} was trained on {ref.data}, not {chosen}: pass "
                f"{ALLOW_DATA} to score it on data it was not trained on"
            )
        note = f"other data: adapter {ref.adapter} was trained on {ref.data}, scored on {chosen}"
        return ResolvedSplit(
            chosen,
            DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction,
            DEFAULT_SEED if seed is None else seed,
            ref,
            (note,),
        )
    return _same_data_split(ref, chosen, split, test_fraction, seed, allow_other_split)


def _check_same_training(ref: TrainedOn, others: Sequence[TrainedOn]) -> None:
    for other in others:
        if (other.data, other.split_text()) != (ref.data, ref.split_text()):
            raise DataError(
                f"the adapters were trained on different data or splits ({ref.adapter}: "
                f"{ref.data} {ref.split_text()}; {other.adapter}: {other.data} "
                f"{other.split_text()}); pass {ALLOW_SPLIT} to score them on one split anyway"
            )


def _unchecked(
    records: Sequence[TrainedOn], data: str, test_fraction: float | None, seed: int | None
) -> ResolvedSplit:
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    seed = DEFAULT_SEED if seed is None else seed
    notes = tuple(
        f"adapter {r.adapter} does not record the data and split it was trained on: scored on "
        f"--seed {seed} --test-fraction {fraction} of {data} unchecked"
        for r in records
    )
    return ResolvedSplit(data, fraction, seed, None, notes)


def _same_data_split(
    ref: TrainedOn,
    data: str,
    split: str,
    test_fraction: float | None,
    seed: int | None,
    allow: bool,
) -> ResolvedSplit:
    notes: list[str] = []
    fraction = (
        test_fraction
        if test_fraction is not None
        else (ref.test_fraction if ref.test_fraction is not None else DEFAULT_TEST_FRACTION)
    )
    chosen_seed = seed if seed is not None else (ref.seed if ref.seed is not None else DEFAULT_SEED)
    overlap = None
    if ref.split == "all":
        overlap = f"adapter {ref.adapter} was trained on every case of {ref.data}"
    elif split == "all":
        overlap = f"--split all scores every case of {data}, including adapter {ref.adapter}'s training cases"
    elif (ref.seed is not None and chosen_seed != ref.seed) or (
        ref.test_fraction is not None and fraction != ref.test_fraction
    ):
        overlap = (
            f"adapter {ref.adapter} was trained with {ref.split_text()}; another split of "
            f"{data} scores cases it trained on"
        )
    if overlap and not allow:
        raise DataError(f"{overlap}: pass {ALLOW_SPLIT} to score it anyway")
    if overlap:
        notes.append(f"other split ({ALLOW_SPLIT}): {overlap}")
    missing = [
        k for k, v in (("seed", ref.seed), ("test fraction", ref.test_fraction)) if v is None
    ]
    if missing and ref.split != "all":
        notes.append(
            f"adapter {ref.adapter} does not record its split {' or '.join(missing)}: "
            f"scored on --seed {chosen_seed} --test-fraction {fraction}"
        )
    source = "adapter" if test_fraction is None and seed is None and not missing else "options"
    return ResolvedSplit(data, fraction, chosen_seed, ref, tuple(notes), source)


def check_label_space(
    ref: TrainedOn | None, candidates: Sequence[str], *, allow_other_data: bool
) -> str | None:
    """Refuse (or, when allowed, return a note for) candidates other than the ones the
    adapter was trained to rank."""
    if ref is None or ref.candidates is None or set(ref.candidates) == set(candidates):
        return None
    only_adapter = sorted(set(ref.candidates) - set(candidates))
    only_here = sorted(set(candidates) - set(ref.candidates))
    example = (only_here or only_adapter)[0]
    text = (
        f"adapter {ref.adapter} ranks {len(ref.candidates)} diagnoses, this evaluation "
        f"{len(candidates)} ({len(only_here)} new, {len(only_adapter)} missing, e.g. "
        f"{example!r}): another label space"
    )
    if not allow_other_data:
        raise DataError(f"{text}; pass {ALLOW_DATA} to score it anyway")
    return f"other data ({ALLOW_DATA}): {text}"
