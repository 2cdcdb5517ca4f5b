"""Two systems on the same held-out cases: ``feddx evaluate --compare A B``.

A system is an adapter folder (scored on the split it records, see
:mod:`feddx.evaluate.trained_split`), ``base`` (the base model alone, zero-shot, on that same
split), or a predictions file written by ``feddx evaluate --predictions`` (or the demo): one
JSON line per case with ``case_id``, ``gold`` and ``correct``. Both systems' per-case answers
are paired by case id (compared as the keyed pseudonyms the predictions files carry: a file
pairs with a live system when both use the same ``FEDDX_DEID_KEY``) and handed to :func:`feddx.evaluate.stats.compare_predictions`: both top-1 accuracies,
the difference with its paired bootstrap interval, and McNemar's exact p-value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddx.data.stage import DeidStage
from feddx.errors import DataError
from feddx.evaluate.dataset import DatasetEvaluation, evaluate_dataset
from feddx.evaluate.harness import Progress
from feddx.evaluate.stats import DEFAULT_RESAMPLES, Comparison, compare_predictions
from feddx.evaluate.trained_split import TrainedOn, resolve_split
from feddx.model.adapter import read_adapter_info

BASE = "base"


@dataclass(frozen=True)
class SystemsComparison:
    """The outcome of :func:`compare_systems`: what A and B were, where they were scored
    (``meta``: data and split, or the predictions files alone), the notes the evaluations
    carried, and the paired statistics."""

    a: str
    b: str
    comparison: Comparison
    meta: dict[str, Any]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            **self.comparison.to_dict(),
            "meta": self.meta,
            "notes": self.notes,
        }


def compare_systems(
    a: str,
    b: str,
    request: DatasetEvaluation,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    on_progress: Progress | None = None,
) -> SystemsComparison:
    """Score (or read) systems ``a`` and ``b`` on the same cases and compare them (module
    docstring). ``request`` gives the data, split, model and the allow flags; its adapters are
    ignored. Raises :class:`DataError` for a predictions file that cannot be read, systems
    scored on different cases, or a split/data the adapters forbid."""
    specs = (a, b)
    adapters = [Path(s) for s in specs if s != BASE and not Path(s).is_file()]
    live = [s for s in specs if not Path(s).is_file()]
    meta: dict[str, Any] = {}
    notes: list[str] = []
    rows: dict[str, list[dict[str, Any]]] = {}
    stage = DeidStage()  # one key for both systems (FEDDX_DEID_KEY, else a random one)
    if live:
        resolved = resolve_split(
            [TrainedOn.from_metadata(str(p), read_adapter_info(p).metadata) for p in adapters],
            data=request.data,
            split=request.split,
            test_fraction=request.test_fraction,
            seed=request.seed,
            allow_other_split=request.allow_other_split,
            allow_other_data=request.allow_other_data,
        )
        common = request.replace(
            data=resolved.data,
            test_fraction=resolved.test_fraction,
            seed=resolved.seed,
            baseline=False,
            extra_data=(),
        )
        for spec in live:
            chosen = () if spec == BASE else (Path(spec),)
            result = evaluate_dataset(common.replace(adapters=chosen), on_progress=on_progress)
            rows[spec] = _pseudonymous(result.cases, stage)
            notes.extend(n for n in result.notes if n not in notes)
            meta = {k: result.meta.get(k) for k in ("data", "split", "test_fraction", "seed")}
            meta["model"] = result.meta.get("model")
    for spec in specs:
        if spec not in rows:
            rows[spec] = _pseudonymous(read_predictions(Path(spec)), stage)
            meta.setdefault("predictions_files", []).append(spec)
    comparison = compare_predictions(rows[a], rows[b], resamples=resamples, seed=seed)
    return SystemsComparison(a, b, comparison, meta, notes)


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of a predictions file (JSON lines); :class:`DataError` naming the file and
    line for anything else."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"{path}: cannot read the predictions file ({e.__class__.__name__})"
        ) from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(f"{path}:{i}: not a JSON line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: a prediction row must be a JSON object")
        out.append(row)
    return out


def _pseudonymous(rows: Sequence[dict[str, Any]], stage: DeidStage) -> list[dict[str, Any]]:
    # Files carry keyed pseudonyms; live rows raw ids. The stage maps raw ids to the same
    # pseudonyms (with the key the file was written with: FEDDX_DEID_KEY) and leaves
    # pseudonyms as they are, so the two pair up.
    return [
        {**r, "case_id": stage.case_id(str(r["case_id"]))} if "case_id" in r else r for r in rows
    ]
