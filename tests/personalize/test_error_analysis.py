"""Per-region error analysis (issue 24 item 5): true counts per region and institution at each
level, the change each level made (paired), and its table section and plot."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from feddx.data.schema import Case, Label
from feddx.personalize.choose import Choice
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.error_analysis import error_by_group, plot_errors, render_errors
from feddx.personalize.groups import Groups, Institution
from feddx.personalize.levels import Hierarchy, TrainedAdapter

# institution -> (region, test cases, wrong at global, regional, institutional, individual)
WRONG = {
    "A": ("north", 10, 6, 4, 2, 1),
    "B": ("north", 5, 1, 1, 3, 3),
    "C": ("south", 4, 4, 2, 2, 0),
}


def _adapter(key: str) -> TrainedAdapter:
    return TrainedAdapter(key, "institutional", key, {})


def _world() -> tuple[Groups, Hierarchy, Choice, dict[str, dict[str, list[Any]]]]:
    insts, preds = [], {}
    hierarchy = Hierarchy(TrainedAdapter("global", "global", "global", {}))
    hierarchy.regional = {"finetune": {r: _adapter(f"reg:{r}") for r in ("north", "south")}}
    for name, (region, n, *wrong) in WRONG.items():
        test = [Case(case_id=f"{name}{i}", label=Label(diagnosis="x")) for i in range(n)]
        insts.append(Institution(name, region, [], [], test))
        hierarchy.institutional[name] = {"ditto": _adapter(f"ditto:{name}")}
        keys = ["global", f"reg:{region}", f"ditto:{name}", "+individual context"]
        # the first k cases wrong at each level: a later level fixes a prefix's tail
        preds[name] = {
            key: [SimpleNamespace(top="y" if i < k else "x", gold="x") for i in range(n)]
            for key, k in zip(keys, wrong, strict=True)
        }
    choice = Choice("finetune", {}, {}, {}, "ditto", {}, {})
    return Groups(insts), hierarchy, choice, preds


def test_counts_are_true_per_region_and_institution_at_every_level() -> None:
    groups, hierarchy, choice, preds = _world()
    config = PersonalizeConfig(methods=("ditto",))
    out = error_by_group(config, groups, hierarchy, choice, preds)
    assert [lv["column"] for lv in out["levels"]] == [
        "global",
        "+regional (finetune)",
        "+institutional (ditto)",
        "+individual context",
    ]
    rows = {(r["kind"], r["group"]): r for r in out["rows"]}
    levels = ("global", "regional", "institutional", "individual")
    for name, (_, n, *wrong) in WRONG.items():
        cells = rows[("institution", name)]["levels"]
        assert [cells[lv]["wrong"] for lv in levels] == wrong
        assert all(cells[lv]["n"] == n for lv in levels)
    north = rows[("region", "north")]["levels"]
    assert [north[lv]["wrong"] for lv in levels] == [7, 5, 5, 4] and north["global"]["n"] == 15
    assert rows[("all", "all")]["levels"]["global"] == {"wrong": 11, "n": 19, "error": 11 / 19}
    # B got worse at the institutional level: 2 cases broken, none fixed
    change = rows[("institution", "B")]["changes"]["institutional"]
    assert change["error_change"] == 2 / 5 and (change["fixed"], change["broken"]) == (0, 2)
    assert change["low"] <= change["error_change"] <= change["high"]
    c = rows[("institution", "C")]["changes"]["regional"]
    assert c["error_change"] == -0.5 and c["fixed"] == 2 and c["mcnemar_p"] == 0.5
    assert "global" not in rows[("all", "all")]["changes"]


def test_individual_level_only_where_it_ran_and_table_and_plot(tmp_path: Path) -> None:
    groups, hierarchy, choice, preds = _world()
    config = PersonalizeConfig(methods=("ditto",), individual=False)
    out = error_by_group(config, groups, hierarchy, choice, preds)
    assert [lv["level"] for lv in out["levels"]] == ["global", "regional", "institutional"]
    text = "\n".join(render_errors(out))
    assert "| &nbsp;&nbsp;A | 10 | 0.600 (6/10) | 0.400 (4/10) | 0.200 (2/10) |" in text
    assert "| **north** | 15 |" in text and "individual" not in text
    plot_errors(out, "test data", tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
