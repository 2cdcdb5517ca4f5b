"""The **register** stage: every adapter of the run saved under ``adapters/`` with its budget
and fitted temperature, and what the hierarchy deploys registered in the adapter registry
(``registry/`` in the output folder unless the config names one), parents first, with level,
scope, parent, data fingerprint and validation metrics.

Registered: the global adapter, and those of the default regional construction and of each
institution's default institutional method that passed the gate, so that the resolver answers
with them and, where one failed, with its parent. The others are saved only. With the
individual level on, each institution's case index (its training cases' vectors, labels and
hashed ids, no text, and the retrieval prior's weight chosen on its validation cases) is
registered too, as an entry of kind ``case-index`` (:func:`register_case_indexes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feddx.data.candidates import CandidateList
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.gate import GateDecision
from feddx.personalize.groups import Groups
from feddx.personalize.levels import Individual, TrainedAdapter

if TYPE_CHECKING:
    from feddx.personalize.registry import AdapterRegistry


def registry_scope(name: str) -> str:
    """A region or institution name as a registry scope: its one slug
    (:func:`feddx.data.slug.slug`: "Univ. Hospitals Zurich/Basel" ->
    ``univ-hospitals-zurich-basel``, as ``feddx deploy`` and the service name it), or
    ``unnamed`` for a name without a letter or digit."""
    from feddx.data.slug import slug

    return slug(name) or "unnamed"


def adapter_folder(out_dir: Path, key: str) -> Path:
    """Where adapter ``key`` is saved under ``out_dir``: a folder name without ``:``,
    ``/`` or spaces."""
    return out_dir / "adapters" / key.replace(":", "__").replace("/", "_").replace(" ", "_")


def save_adapter(
    config: PersonalizeConfig,
    diagnoser: Any,
    a: TrainedAdapter,
    folder: Path,
    *,
    source: str,
    candidates: CandidateList,
) -> None:
    """Save ``a`` (loaded into the diagnoser's model) to ``folder`` with the config's prompt
    budget, its fitted temperature and where it sits in the hierarchy."""
    from feddx.model.adapter import load_adapter_state
    from feddx.train.recipe import save_trained_adapter

    load_adapter_state(diagnoser.model, a.state)
    save_trained_adapter(
        diagnoser.model,
        folder,
        base_fingerprint=diagnoser.base_fingerprint,
        max_prompt_tokens=config.max_prompt_tokens,
        candidates=candidates,
        temperature=a.temperature,
        temperature_source="validation split of its group's training cases",
        metadata={
            "data": source,
            "level": a.level,
            "column": a.column,
            "region": a.region,
            "institution": a.institution,
            **{k: v for k, v in a.extra.items() if k == "mu"},
        },
    )


def register_adapters(
    config: PersonalizeConfig,
    out_dir: Path,
    diagnoser: Any,
    adapters: Sequence[TrainedAdapter],
    source: str,
    *,
    gates: Mapping[str, GateDecision],
    candidates: CandidateList,
) -> list[dict[str, Any]]:
    """Save each adapter (the global one first, then parents before children) under
    ``out_dir/adapters`` and register the global one and those that passed the gate
    (``gates``). Returns one record per adapter (registry id if registered, or the gate's
    reason it is not; folder, temperature, validation metrics). The diagnoser holds the global
    adapter's weights again afterwards."""
    registry: AdapterRegistry | None = None
    if config.register_adapters:
        from feddx.personalize.registry import AdapterRegistry

        registry = AdapterRegistry(
            Path(config.registry) if config.registry else out_dir / "registry"
        )
    records = []
    ids: dict[str, str] = {}
    for a in adapters:
        folder = adapter_folder(out_dir, a.key)
        save_adapter(config, diagnoser, a, folder, source=source, candidates=candidates)
        record: dict[str, Any] = {
            "key": a.key,
            "level": a.level,
            "column": a.column,
            "folder": str(folder),
            "temperature": a.temperature,
            "validation": a.validation,
        }
        decision = gates.get(a.key)
        register = a.level == "global" or (decision is not None and decision.accepted)
        if decision is not None:
            record["gate"] = decision.to_dict()
        record["registered"] = register and registry is not None
        if registry is not None and register:
            # a parent the gate kept out: the next registered one up (the global adapter)
            parent_id = (ids.get(a.parent) or ids.get(adapters[0].key)) if a.parent else None
            ids[a.key] = record["registry_id"] = _register(registry, folder, a, parent_id)
        records.append(record)
    diagnoser.add_state("global", adapters[0].state, max_prompt_tokens=config.max_prompt_tokens)
    return records


def register_case_indexes(
    config: PersonalizeConfig,
    out_dir: Path,
    diagnoser: Any,
    groups: Groups,
    individual: Individual,
    adapters: Sequence[dict[str, Any]],
    source: str,
) -> list[dict[str, Any]]:
    """Register each institution's case index of the individual level in the registry (as
    :func:`register_adapters` opens it) under the institution's slug, with the base model and
    the adapter its prior weight was chosen with. Returns one record per institution (its
    registry id, prior weight, case count); nothing when registration is off."""
    if not config.register_adapters:
        return []
    from feddx.personalize.case_index import register_case_index
    from feddx.personalize.registry import AdapterRegistry

    registry = AdapterRegistry(Path(config.registry) if config.registry else out_dir / "registry")
    ids = {r["key"]: r["registry_id"] for r in adapters if r.get("registry_id")}
    records = []
    for inst in groups.institutions:
        ctx = individual.contexts.get(inst.name)
        if ctx is None:
            continue
        key = str(individual.summary.get(inst.name, {}).get("adapter", ""))
        entry = register_case_index(
            registry,
            ctx.index,
            inst.train,
            institution=registry_scope(inst.name),
            region=registry_scope(inst.region),
            base_fingerprint=diagnoser.base_fingerprint,
            prior_weight=ctx.prior_weight,
            k=ctx.k,
            scored_with=ids.get(key, key or None),
            source=source,
        )
        records.append(
            {
                "institution": inst.name,
                "registry_id": entry.adapter_id,
                "prior_weight": ctx.prior_weight,
                "indexed_cases": len(ctx.index),
            }
        )
    return records


def _register(
    registry: AdapterRegistry,
    folder: Path,
    a: TrainedAdapter,
    parent_id: str | None,
) -> str:
    """Register the saved adapter ``a`` under its scope's slug; returns its registry id."""
    from feddx.personalize.registry import data_fingerprint

    entry = registry.register(
        folder,
        level=a.level,
        region=None if a.region is None else registry_scope(a.region),
        institution=None if a.institution is None else registry_scope(a.institution),
        parent_id=parent_id,
        data_fingerprint=data_fingerprint(a.train_cases),
        metrics={f"validation_{k}": v for k, v in a.validation.items()},
    )
    return entry.adapter_id


__all__ = [
    "adapter_folder",
    "register_adapters",
    "register_case_indexes",
    "registry_scope",
    "save_adapter",
]
