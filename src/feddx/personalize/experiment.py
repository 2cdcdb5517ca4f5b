"""``feddx personalize``: the per-group evaluation of the adapter hierarchy, from one config.

:func:`run_experiment` is the list of stages, each in a module with one job, on one dataset
and one budget for every method:

1. **groups** (:mod:`~feddx.personalize.groups`): the dataset's cases get a region and an
   institution (UCI Heart and eICU: their own hospitals and regions, eICU's small hospitals
   merged per region; DDXPlus: a two-level Dirichlet split, regions first, then institutions
   inside each region); each institution's cases are split train/test (stratified), and a
   validation split is carved from its training cases (temperatures and the Ditto ``mu`` are
   chosen on it, never on the test split);
2. **federate** (:mod:`~feddx.personalize.levels`): in-process FedAvg over all institutions
   from a seeded fresh adapter (:func:`feddx.personalize.methods.federate`): the global level;
3. **personalize** (:mod:`~feddx.personalize.levels`): per region, fine-tuning of the global
   adapter on the region's pooled training cases (``"finetune"``) and/or a FedAvg
   sub-federation of the region's institutions started from the global adapter
   (``"federated"``); then per institution and method, ``finetune`` and ``ditto`` from the
   global adapter (``institutional_from``) and ``fedsa``, its own federation from the fresh
   adapter (A shared, B kept), with the global federation's rounds;
4. **score** (:mod:`~feddx.personalize.scoring`): every adapter of an institution is scored
   on its validation and test cases in one pass of the frozen layers per case;
5. **choose** (:mod:`~feddx.personalize.choose`): on validation only, the Ditto ``mu``, the
   default regional construction, temperatures, the adapter selected per institution, the
   default institutional method (best pooled validation figures) and the gate; then the
   **individual** level (:func:`~feddx.personalize.levels.individualize`): the deployed
   adapter with the institution's own institutional retrieval prior;
6. **report** (:mod:`~feddx.personalize.report`): ``table.md``/``table.json`` (per region and
   institution: cases, top-1, top-3, macro-F1 for every column), ``per_group.png``, and the
   per-region error analysis (:mod:`~feddx.personalize.error_analysis`: error with its counts
   per region and institution at each level, the change each level made, in ``table.md``,
   ``table.json`` and ``error_by_group.png``);
7. **register** (:mod:`~feddx.personalize.register`): every adapter saved with its budget and
   fitted temperature under ``adapters/``; what the hierarchy deploys (global, the default
   regional construction, each institution's adapter of the default method where it passed
   the gate) registered in the registry (``registry/`` in the output folder unless the config
   names one) with level, scope, parent, data fingerprint and its validation metrics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feddx.personalize.choose import choose
from feddx.personalize.columns import INDIVIDUAL
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.groups import build_groups
from feddx.personalize.levels import (
    Progress,
    federate_global,
    individualize,
    personalize_institutions,
    personalize_regions,
    prepare_training,
)
from feddx.personalize.register import register_adapters, register_case_indexes
from feddx.personalize.report import build_result, write_outputs
from feddx.personalize.scoring import score_hierarchy

if TYPE_CHECKING:
    from feddx.personalize.embedding import Embedder

log = logging.getLogger(__name__)


def run_experiment(
    config: PersonalizeConfig,
    out_dir: Path,
    *,
    diagnoser: Any = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the experiment of ``config`` and write its outputs to ``out_dir``; returns the
    ``table.json`` content. ``diagnoser``: a :class:`~feddx.model.predict.Diagnoser` without
    adapters to use instead of loading ``config.model`` (tests pass a tiny model);
    ``embedder``: the :class:`~feddx.personalize.embedding.Embedder` of the individual column
    (default all-MiniLM-L6-v2).

    Raises :class:`DataError` for unusable data and :class:`ConfigError` for a config that
    cannot run (e.g. a diagnoser already holding another LoRA layout).
    """
    from feddx.data.candidates import candidate_list
    from feddx.data.sources import load_cases
    from feddx.train.recipe import load_diagnoser

    say = progress or _silent
    started = time.perf_counter()
    loaded = load_cases(
        config.data,
        purpose="personalize",
        max_cases=config.max_cases,
        seed=config.seed,
        top_labels=config.top_labels,
    )
    groups = build_groups(loaded.cases, config)
    every = [c for i in groups.institutions for c in i.train + i.validation + i.test]
    candidates = candidate_list(loaded.source, loaded.path, every)
    say(f"{len(groups.institutions)} institutions in {len(groups.regions())} regions")
    if diagnoser is None:
        diagnoser = load_diagnoser(config.model)
    training = prepare_training(config, diagnoser, candidates, say)

    hierarchy = federate_global(groups, training)  # federate
    personalize_regions(config, groups, training, hierarchy)  # personalize
    personalize_institutions(config, groups, training, hierarchy)
    scores = score_hierarchy(config, groups, hierarchy, diagnoser, candidates, say)  # score
    choice = choose(config, groups, hierarchy, scores.validation)  # choose
    individual = None
    if config.individual:  # the individual level, on what each institution deploys
        individual = individualize(
            groups, diagnoser, candidates, choice.deployed, embedder=embedder, say=say
        )
        for name, preds in individual.test_preds.items():
            scores.test[name][INDIVIDUAL] = preds
    result = build_result(
        config, loaded, candidates, groups, hierarchy, scores.test, choice, individual, started
    )
    # The table first: a registration that fails (a full disk, a name the registry refuses)
    # must not cost the measurements.
    write_outputs(result, out_dir)
    result["adapters"] = register_adapters(  # register
        config,
        out_dir,
        diagnoser,
        [*hierarchy.upper(), *hierarchy.final_institutional()],
        loaded.source,
        gates=choice.gates,
        candidates=candidates,
    )
    if individual is not None:  # each institution's case index, its own registry entry
        result["case_indexes"] = register_case_indexes(
            config, out_dir, diagnoser, groups, individual, result["adapters"], loaded.source
        )
    write_outputs(result, out_dir)
    return result


def _silent(_msg: str) -> None:
    """No progress lines."""


__all__ = ["run_experiment"]
