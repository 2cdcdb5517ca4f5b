"""Who the experiment personalizes for: every case gets a region and an institution (the
cases' own, small hospitals merged per region, or a two-level Dirichlet split), and each
institution's cases are split train / validation / test, stratified and seeded, so that every
level of the hierarchy is chosen on validation and measured on the same test cases."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from feddx.data.schema import Case
from feddx.errors import DataError
from feddx.personalize.config import PersonalizeConfig


@dataclass(frozen=True)
class Institution:
    """One institution's cases, already split (train / validation / test)."""

    name: str
    region: str
    train: list[Case]
    validation: list[Case]
    test: list[Case]


@dataclass
class Groups:
    """The experiment's institutions and what building them dropped or merged."""

    institutions: list[Institution]
    notes: list[str] = field(default_factory=list)

    def regions(self) -> dict[str, list[Institution]]:
        out: dict[str, list[Institution]] = {}
        for inst in self.institutions:
            out.setdefault(inst.region, []).append(inst)
        return dict(sorted(out.items()))


def _retag(cases: Sequence[Case], region: str, institution: str) -> list[Case]:
    return [c.model_copy(update={"region": region, "institution": institution}) for c in cases]


def assign_groups(cases: Sequence[Case], config: PersonalizeConfig) -> tuple[list[Case], list[str]]:
    """Give every case the region and institution it is evaluated under (see
    :class:`PersonalizeConfig`); returns the cases and notes on merges and drops (counts and
    group names only). Raises :class:`DataError` when fewer than 2 institutions remain."""
    if config.partition == "dirichlet":
        return _dirichlet_groups(cases, config)
    return _natural_groups(cases, config)


def _dirichlet_groups(
    cases: Sequence[Case], config: PersonalizeConfig
) -> tuple[list[Case], list[str]]:
    """Regions drawn first (Dirichlet over label shares), then institutions inside each."""
    from feddx.data.partition import PartitionSpec, partition_cases

    out: list[Case] = []
    spec = PartitionSpec(
        "dirichlet",
        num_clients=config.regions,
        alpha=config.alpha,
        seed=config.seed,
        min_size=config.min_institution_cases * config.institutions_per_region,
    )
    for r, region_cases in enumerate(partition_cases(cases, spec)):
        inner = PartitionSpec(
            "dirichlet",
            num_clients=config.institutions_per_region,
            alpha=config.alpha,
            seed=config.seed + 1 + r,
            min_size=config.min_institution_cases,
        )
        for i, inst_cases in enumerate(partition_cases(region_cases, inner)):
            out.extend(_retag(inst_cases, f"region-{r + 1}", f"inst-{r + 1}.{i + 1}"))
    note = (
        f"Dirichlet alpha={config.alpha}: {config.regions} regions x "
        f"{config.institutions_per_region} institutions (regions drawn first)"
    )
    return out, [note]


def _natural_groups(
    cases: Sequence[Case], config: PersonalizeConfig
) -> tuple[list[Case], list[str]]:
    """The cases' own institutions (each under its most frequent region); those below
    ``min_institution_cases`` merged per region (:func:`_merge_small`)."""
    notes: list[str] = []
    missing = sum(c.institution is None for c in cases)
    if missing:
        notes.append(f"{missing} cases without an institution left out")
    by_inst: dict[str, list[Case]] = {}
    for c in cases:
        if c.institution is not None:
            by_inst.setdefault(c.institution, []).append(c)
    kept: list[Case] = []
    small: dict[str, list[Case]] = {}
    for name in sorted(by_inst):
        group = by_inst[name]
        region = Counter(c.region or "unknown region" for c in group).most_common(1)[0][0]
        if len(group) >= config.min_institution_cases:
            kept.extend(_retag(group, region, name))
        else:
            small.setdefault(region, []).extend(group)
    for region in sorted(small):
        kept.extend(_merge_small(small[region], region, config, notes))
    return kept, notes


def _merge_small(
    cases: list[Case], region: str, config: PersonalizeConfig, notes: list[str]
) -> list[Case]:
    """A region's small hospitals as merged institutions (:func:`_deal_hospitals`); a merged
    group still below ``min_institution_cases`` is dropped. Appends one note per group."""
    kept: list[Case] = []
    for name, group in _deal_hospitals(cases, region, config.small_groups_per_region):
        n_hosp = len({c.institution for c in group})
        if len(group) >= config.min_institution_cases:
            kept.extend(_retag(group, region, name))
            notes.append(
                f"{region}: {n_hosp} hospitals with < {config.min_institution_cases} cases "
                f"merged into '{name}' ({len(group)} cases)"
            )
        else:
            notes.append(
                f"{region}: '{name}' ({n_hosp} small hospitals, {len(group)} cases) dropped: even "
                f"merged they have < {config.min_institution_cases} cases"
            )
    return kept


def _deal_hospitals(cases: list[Case], region: str, k: int) -> list[tuple[str, list[Case]]]:
    """A region's small hospitals dealt into ``k`` named groups of whole hospitals (largest
    hospital first, each to the group with the fewest cases so far; ties by name)."""
    by_hosp: dict[str, list[Case]] = {}
    for c in cases:
        by_hosp.setdefault(c.institution or "", []).append(c)
    if k == 1:
        return [(f"{region} small hospitals", cases)]
    groups: list[list[Case]] = [[] for _ in range(k)]
    for _, hosp in sorted(by_hosp.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        min(groups, key=len).extend(hosp)
    return [(f"{region} small hospitals {i + 1}", g) for i, g in enumerate(groups) if g]


def build_groups(cases: Sequence[Case], config: PersonalizeConfig) -> Groups:
    """Assign groups (:func:`assign_groups`) and split each institution train/validation/test
    (stratified by diagnosis, seeded). Raises :class:`DataError` for fewer than 2
    institutions or an institution left without test or validation cases."""
    from feddx.data.split import stratified_split

    tagged, notes = assign_groups(cases, config)
    by_inst: dict[tuple[str, str], list[Case]] = {}
    for c in tagged:
        assert c.region is not None and c.institution is not None
        by_inst.setdefault((c.region, c.institution), []).append(c)
    if len(by_inst) < 2:
        raise DataError(
            f"{config.data}: personalization needs at least 2 institutions, found {len(by_inst)}"
        )
    insts = []
    for (region, name), group in sorted(by_inst.items()):
        group.sort(key=lambda c: c.case_id)
        train, test = stratified_split(group, config.test_fraction, seed=config.seed)
        train, val = stratified_split(train, config.validation_fraction, seed=config.seed + 1)
        if not test or not val:
            raise DataError(
                f"{config.data}: institution {name!r} has too few cases ({len(group)}) for a "
                "test and a validation split"
            )
        insts.append(Institution(name, region, train, val, test))
    return Groups(insts, notes)


__all__ = ["Groups", "Institution", "assign_groups", "build_groups"]
