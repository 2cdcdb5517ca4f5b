"""The table's columns and rows: which adapter's test predictions fill a column for an
institution (:func:`column_key`), and which institutions a row pools (:func:`scopes`). One
place, so the table and the error analysis read the same predictions."""

from __future__ import annotations

from feddx.personalize.choose import Choice
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.groups import Groups, Institution
from feddx.personalize.levels import Hierarchy

SELECTED = "selected on validation"
INDIVIDUAL = "+individual context"


def table_columns(config: PersonalizeConfig) -> list[str]:
    """The table's columns, least specific first."""
    return [
        "global",
        *(f"+regional ({m})" for m in config.regional),
        *(f"+institutional ({m})" for m in config.methods),
        SELECTED,
        *([INDIVIDUAL] if config.individual else []),
    ]


def column_key(
    column: str, inst: Institution, config: PersonalizeConfig, hierarchy: Hierarchy, choice: Choice
) -> str | None:
    """The adapter key whose test predictions fill ``column`` for ``inst`` (``INDIVIDUAL``
    for the individual column; ``None`` when the institution has no such adapter)."""
    if column == "global":
        return "global"
    if column == SELECTED:
        return choice.selected[inst.name]
    if column == INDIVIDUAL:
        return INDIVIDUAL
    for m in config.regional:
        if column == f"+regional ({m})":
            return hierarchy.regional[m][inst.region].key
    for m in config.methods:
        if column == f"+institutional ({m})":
            a = hierarchy.institutional[inst.name].get(m)
            return a.key if a else None
    return None


def scopes(groups: Groups) -> list[tuple[str, str, list[Institution]]]:
    """The table's rows as ``(kind, name, institutions)``: all, then each region followed by
    its institutions."""
    out: list[tuple[str, str, list[Institution]]] = [("all", "all", groups.institutions)]
    for region, members in groups.regions().items():
        out.append(("region", region, members))
        out.extend(("institution", i.name, [i]) for i in members)
    return out


__all__ = ["INDIVIDUAL", "SELECTED", "column_key", "scopes", "table_columns"]
