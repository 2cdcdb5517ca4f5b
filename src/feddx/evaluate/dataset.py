"""Evaluate a model (and adapters) on a dataset named by ``SOURCE:PATH``: the policy behind
``feddx evaluate``, as a library function the CLI (and anyone else) calls.

The cases are split exactly as ``feddx train`` splits them
(:func:`feddx.data.split.stratified_split`, grouped by patient), with the data, test fraction
and seed the adapter records by default (:mod:`feddx.evaluate.trained_split`: another split,
other data or another label space is refused unless allowed), and the held-out test split is
evaluated, so an adapter is never scored on cases it was trained on without saying so; ``split="all"`` evaluates every case (e.g. a hospital's own held-out file).
Candidates come from :func:`feddx.data.candidates.candidate_list` over every labeled case (or
a candidates file). Bad input (data, labels, candidates, adapters) fails before the base model
is loaded, so it costs a second, not a minute.

The logistic-regression baseline is fitted on the training split; with ``extra_data`` (the
``--extra-data`` an adapter was trained with) a second one is fitted on exactly the cases
``feddx train`` trained on (:func:`feddx.data.cases.training_cases`, same split, cap and
overlap rule), so the LLM is compared with a baseline that saw the same data as well.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from feddx.data.candidates import candidate_list
from feddx.data.sources import load_cases
from feddx.data.split import split_grouping, stratified_split
from feddx.errors import DataError
from feddx.evaluate.harness import EvaluationOptions, EvaluationResult, Progress, evaluate_cases
from feddx.evaluate.trained_split import TrainedOn, check_label_space, resolve_split
from feddx.model.adapter import read_adapter_info
from feddx.model.hardware import HardwareSpec, resolve_hardware
from feddx.model.loading import DEFAULT_MODEL
from feddx.model.predict import Diagnoser, check_labels
from feddx.model.scoring import validate_candidates
from feddx.settings import Names, SettingPath, Settings

Split = Literal["test", "all"]


class DatasetEvaluation(Settings):
    """What to evaluate: the data, the split, the model and adapters (several: an ensemble)."""

    settings_name: ClassVar[str] = "evaluation"

    data: str | None = None  # None: the data the adapter records
    adapters: tuple[SettingPath, ...] = ()
    model: str = DEFAULT_MODEL
    split: Split = "test"
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)  # None: the adapter's
    seed: int | None = None  # None: the adapter's split seed
    allow_other_split: bool = False
    allow_other_data: bool = False
    limit: int = Field(default=0, ge=0)
    candidates_file: SettingPath | None = None
    baseline: bool = True
    extra_data: Names = ()  # what the adapter also trained on: a second baseline
    extra_per_label: int | None = Field(default=None, ge=1)
    drop_overlapping_extra: bool = False
    options: EvaluationOptions = Field(default_factory=EvaluationOptions)
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)


def evaluate_dataset(
    request: DatasetEvaluation, *, on_progress: Progress | None = None
) -> EvaluationResult:
    """Run the evaluation ``request`` describes; the result's ``meta`` records the data, split,
    budget and model/adapter provenance. Raises :class:`DataError` for unusable data, labels
    outside the candidate list or an empty split, and :class:`~feddx.errors.ModelError` for a
    missing, corrupt or mismatched adapter.

    The data and split default to the ones the adapters record; another split of their data,
    other data or another label space raises :class:`DataError` unless the request allows it
    (:mod:`feddx.evaluate.trained_split`), and the result's ``notes`` then say so."""
    resolved = resolve_split(
        [TrainedOn.from_metadata(str(a), read_adapter_info(a).metadata) for a in request.adapters],
        data=request.data,
        split=request.split,
        test_fraction=request.test_fraction,
        seed=request.seed,
        allow_other_split=request.allow_other_split,
        allow_other_data=request.allow_other_data,
    )
    data, fraction, seed = resolved.data, resolved.test_fraction, resolved.seed
    loaded = load_cases(data, purpose="evaluate against")
    labeled = loaded.cases
    if request.split == "test":
        train, test = stratified_split(labeled, test_fraction=fraction, seed=seed)
    else:
        train, test = [], labeled
    if request.limit:
        test = test[: request.limit]
    if not test:
        raise DataError(f"{data}: the {request.split} split is empty")
    # The label space is the dataset's: with a patient-grouped split a test diagnosis may have
    # no training case (then it is a miss the model could not avoid, not an error).
    candidates = candidate_list(loaded.source, loaded.path, labeled, request.candidates_file)
    try:
        validate_candidates(candidates.names)
        check_labels(test, candidates.names, f"{request.split} split")
    except ValueError as e:
        raise DataError(f"{data}: {e}") from None
    label_note = check_label_space(
        resolved.trained_on, candidates.names, allow_other_data=request.allow_other_data
    )
    extra_train = None
    if request.baseline and request.extra_data and request.split == "test":
        from feddx.data.cases import TrainingData, training_cases

        extra_train = training_cases(
            TrainingData(
                data=data,
                test_fraction=fraction,
                seed=seed,
                extra_data=tuple(request.extra_data),
                extra_per_label=request.extra_per_label,
                drop_overlapping_extra=request.drop_overlapping_extra,
            )
        )
    # Diagnoser.load reads the adapters' records before the base model: a missing or corrupt
    # adapter fails fast too.
    diagnoser = Diagnoser.load(
        request.model, request.adapters, hardware=resolve_hardware(request.hardware)
    )
    names = list(diagnoser.adapters)
    _, budget, _ = diagnoser.settings(names or None, request.options.max_prompt_tokens)
    result = evaluate_cases(
        diagnoser,
        test,
        candidates,
        adapter=names or None,
        options=request.options,
        baseline_train=train if request.baseline and train else None,
        baseline_extra_train=extra_train.cases if extra_train else None,
        on_progress=on_progress,
    )
    result.notes = [*resolved.notes, *([label_note] if label_note else []), *result.notes]
    meta: dict[str, Any] = {
        "data": data,
        "split": request.split,
        "test_fraction": fraction if request.split == "test" else None,
        "seed": seed,
        "split_from": resolved.source,
        "split_grouping": split_grouping(labeled),
        "n_train": len(train),
        **({"baseline_extra_data": extra_train.extra_info} if extra_train else {}),
        "max_prompt_tokens": budget,
        **loaded.info,
        "model": diagnoser.model_name,
        "base_fingerprint": diagnoser.base_fingerprint,
    }
    if names:
        held = [diagnoser.held(n) for n in names]
        meta["adapter"] = names[0]
        if len(names) > 1:
            meta["adapters"] = names
        meta["adapter_max_prompt_tokens"] = held[0].max_prompt_tokens
        meta["adapter_temperature"] = held[0].temperature if len(held) == 1 else None
    result.meta = meta
    return result
