"""The personalization experiment end to end on a tiny random Llama: groups, splits, every
method, the table, the plot and the registry entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from feddx.data.jsonl import write_jsonl
from feddx.data.schema import Case, Finding, Label
from feddx.errors import ConfigError, DataError
from feddx.model.adapter import LoraSpec
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.error_analysis import ERROR_PLOT_FILE
from feddx.personalize.experiment import run_experiment
from feddx.personalize.groups import assign_groups, build_groups
from feddx.personalize.register import registry_scope
from feddx.personalize.report import PLOT_FILE, TABLE_JSON, TABLE_MD

HOSPITALS = {  # institution -> (region, share of "Asthma", cases)
    "North General": ("north", 0.8, 30),
    "North Clinic": ("north", 0.7, 30),
    "South General": ("south", 0.2, 30),
    "South Cottage": ("south", 0.5, 6),  # small: merged into "south small hospitals"
    "South Hut": ("south", 0.5, 6),
}


def hospital_cases() -> list[Case]:
    out = []
    for name, (region, share, n) in HOSPITALS.items():
        k = round(n * share)
        for i in range(n):
            dx = "Asthma" if i < k else "Pneumonia"
            out.append(
                Case(
                    case_id=f"{name.replace(' ', '-')}-{i}",
                    findings=(Finding(name="cough"), Finding(name="fever", negated=i % 2 == 0)),
                    region=region,
                    institution=name,
                    label=Label(diagnosis=dx),
                )
            )
    return out


def tiny_config(data: Path, **changes: Any) -> PersonalizeConfig:
    settings: dict[str, Any] = {
        "data": f"jsonl:{data}",
        "min_institution_cases": 10,
        "rounds": 1,
        "local_epochs": 1,
        "personal_epochs": 1,
        "learning_rate": 1e-2,
        "personal_learning_rate": 1e-2,
        "ditto_mu": (0.5, 5.0),
        "regional": ("finetune", "federated"),
        "lora": LoraSpec(rank=4, alpha=8, top_layers=1, dropout=0.0),
        "max_prompt_tokens": 128,
        "batch_size": 8,
    }
    return PersonalizeConfig(**{**settings, **changes})


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "cases.jsonl"
    write_jsonl(hospital_cases(), path)
    return path


def test_small_hospitals_are_merged_per_region(data_file: Path) -> None:
    cases, notes = assign_groups(hospital_cases(), tiny_config(data_file))
    names = sorted({c.institution or "" for c in cases})
    assert names == ["North Clinic", "North General", "South General", "south small hospitals"]
    assert sum(c.institution == "south small hospitals" for c in cases) == 12
    assert any("2 hospitals with < 10 cases merged" in n for n in notes)
    groups = build_groups(hospital_cases(), tiny_config(data_file))
    general = next(i for i in groups.institutions if i.name == "North General")
    # 30 cases (24 Asthma): 6 test (20%), then 15% of the other 24 for validation.
    assert (len(general.train), len(general.validation), len(general.test)) == (20, 4, 6)
    assert sorted(groups.regions()) == ["north", "south"]


def test_dirichlet_partition_draws_regions_then_institutions(data_file: Path) -> None:
    cfg = tiny_config(
        data_file,
        partition="dirichlet",
        regions=2,
        institutions_per_region=2,
        min_institution_cases=5,
        alpha=0.3,
    )
    cases, notes = assign_groups(hospital_cases(), cfg)
    assert len(cases) == len(hospital_cases())
    assert sorted({c.institution or "" for c in cases}) == [
        "inst-1.1",
        "inst-1.2",
        "inst-2.1",
        "inst-2.2",
    ]
    assert all(c.institution.startswith(c.region.replace("region-", "inst-")) for c in cases)  # type: ignore[union-attr]
    assert "alpha=0.3" in notes[0]


def test_one_institution_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    write_jsonl([c for c in hospital_cases() if c.institution == "North General"], path)
    with pytest.raises(DataError, match="at least 2 institutions, found 1"):
        build_groups(hospital_cases()[:30], tiny_config(path))


def test_bad_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match="methods"):
        PersonalizeConfig.from_mapping({"methods": ["fedprox"]}, origin="p.yaml")
    with pytest.raises(ConfigError, match="ditto_mu"):
        PersonalizeConfig.from_mapping({"ditto_mu": [0]}, origin="p.yaml")
    with pytest.raises(ConfigError, match="unknown setting 'roundz'"):
        PersonalizeConfig.from_mapping({"roundz": 3}, origin="p.yaml")


@pytest.mark.slow  # ~25 training runs of the tiny model: 30-55 s on a shared core
def test_experiment_writes_table_plot_and_registers_the_hierarchy(
    data_file: Path, tmp_path: Path, diagnoser: Any
) -> None:
    out = tmp_path / "out"
    from tiny_embedder import BagEmbedder

    result = run_experiment(
        tiny_config(data_file), out, diagnoser=diagnoser, embedder=BagEmbedder()
    )
    assert result["columns"] == [
        "global",
        "+regional (finetune)",
        "+regional (federated)",
        "+institutional (finetune)",
        "+institutional (ditto)",
        "+institutional (fedsa)",
        "selected on validation",
        "+individual context",
    ]
    rows = {(r["kind"], r["group"]): r for r in result["rows"]}
    sizes = {g["institution"]: g["test"] for g in result["groups"]}
    assert sizes == {
        "North Clinic": 6,
        "North General": 6,
        "South General": 6,
        "south small hospitals": 2,
    }
    assert rows[("all", "all")]["n"] == 20 and rows[("region", "south")]["n"] == 8
    for row in result["rows"]:
        for column in result["columns"]:
            m = row[column]
            assert m is not None and m["n"] == row["n"]
            assert m["top1"] <= m["top3"]  # only 2 candidates: top-3 is always 1
            assert m["top3"] == 1.0
    assert set(result["ditto_mu"].values()) <= {0.5, 5.0} and len(result["ditto_mu"]) == 4
    assert result["regional_default"] in ("finetune", "federated")
    chosen = result["selected_on_validation"]
    assert sorted(chosen) == sorted(sizes) and all(
        k == "global" or k.startswith(("regional-", "finetune:", "ditto-", "fedsa:"))
        for k in chosen.values()
    )
    table = (out / TABLE_MD).read_text()
    assert "south small hospitals" in table and "+institutional (fedsa)" in table
    assert json.loads((out / TABLE_JSON).read_text())["rows"] == json.loads(
        json.dumps(result["rows"])
    )
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the error analysis: per level, true counts that agree with the table's top-1
    errors = result["error_by_group"]
    columns = {lv["level"]: lv["column"] for lv in errors["levels"]}
    assert list(columns) == ["global", "regional", "institutional", "individual"]
    table_rows = {(r["kind"], r["group"]): r for r in result["rows"]}
    for row in errors["rows"]:
        for level, cell in row["levels"].items():
            top1 = table_rows[(row["kind"], row["group"])][columns[level]]["top1"]
            assert cell["n"] == row["n"] and cell["wrong"] == round((1 - top1) * row["n"])
    north = [r for r in errors["rows"] if r["region"] == "north" and r["kind"] == "institution"]
    north_region = next(
        r for r in errors["rows"] if r["kind"] == "region" and r["group"] == "north"
    )
    assert north_region["levels"]["global"]["wrong"] == sum(
        r["levels"]["global"]["wrong"] for r in north
    )
    assert "## Error by region and institution" in table
    assert (out / ERROR_PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from feddx.personalize.registry import AdapterRegistry

    registry = AdapterRegistry(out / "registry", create=False)
    ids = sorted(e.adapter_id for e in registry.entries())
    # 1 global, 2 regional (the default construction only), and each institution's adapter of
    # the default method (best pooled validation): the resolver answers with that method
    method = result["default_method"]
    assert method in ("finetune", "ditto", "fedsa") and set(result["method_validation"]) == {
        "finetune",
        "ditto",
        "fedsa",
    }
    # The gate: a regional or institutional adapter is registered exactly when it got at
    # least one more validation case right than what would otherwise answer its group.
    decisions = result["gate"]["decisions"]
    assert len(decisions) == 2 + 4  # the default regional construction and method only
    for d in decisions.values():
        assert d["accepted"] == (d["child_correct"] - d["parent_correct"] >= 1)
    accepted = {k for k, d in decisions.items() if d["accepted"]}
    registered = {a["key"] for a in result["adapters"] if a["registered"]}
    assert registered == {"global", *accepted} and ids[0] == "global/v1"
    assert len(ids) == len(registered)
    for a in result["adapters"]:
        if a["key"] in decisions:
            assert a["gate"]["reason"] == decisions[a["key"]]["reason"]
    answering = result["gate"]["answering"]
    assert sorted(answering) == sorted(sizes)
    assert all(k == "global" or k in accepted for k in answering.values())
    prefix = {"finetune": "finetune:", "ditto": "ditto-", "fedsa": "fedsa:"}[method]
    assert all(
        k.startswith(prefix) for k in registered if k.startswith(("finetune:", "ditto-", "fedsa:"))
    )
    inst = registry.entries(level="institutional")
    assert all(e.version == 1 for e in inst)
    registered_ids = {e.adapter_id for e in registry.entries()}
    assert all(e.parent_id in registered_ids for e in inst if e.parent_id is not None)
    individual = result["individual_context"]["per_institution"]
    assert sorted(individual) == sorted(sizes)
    assert all(0.0 <= v["prior_weight"] <= 1.0 for v in individual.values())
    assert all(e.data_fingerprint and "validation_top1" in e.metrics for e in inst)
    for e in registry.entries():
        registry.verify(e.adapter_id)
        assert e.max_prompt_tokens == 128 and e.temperature > 0


def test_small_hospitals_can_be_dealt_into_several_groups(data_file: Path) -> None:
    sizes = {"A": 6, "B": 5, "C": 3, "D": 2}
    cases = [
        Case(
            case_id=f"{h}{i}",
            region="south",
            institution=h,
            label=Label(diagnosis="Asthma" if i % 2 else "Pneumonia"),
        )
        for h, n in sizes.items()
        for i in range(n)
    ]
    cfg = tiny_config(data_file, min_institution_cases=8, small_groups_per_region=2)
    tagged, notes = assign_groups(cases, cfg)
    # Whole hospitals, largest first, each to the emptiest group: A | B, C to B's, D to A's.
    groups = {
        g: sorted({c.institution for c in cases if c.case_id in ids})
        for g, ids in {
            g: {c.case_id for c in tagged if c.institution == g}
            for g in {c.institution for c in tagged}
        }.items()
    }
    assert groups == {"south small hospitals 1": ["A", "D"], "south small hospitals 2": ["B", "C"]}
    assert len(notes) == 2 and all("(8 cases)" in n for n in notes)


def test_registry_scopes_are_safe_folder_names() -> None:
    from feddx.personalize.registry import normalize_scope

    names = [
        "Univ. Hospitals Zurich/Basel",
        "Hungarian Inst. of Cardiology",
        "south small hospitals 2",
    ]
    scopes = [registry_scope(n) for n in names]
    assert scopes == [
        "univ-hospitals-zurich-basel", "hungarian-inst-of-cardiology", "south-small-hospitals-2"
    ]  # fmt: skip
    assert [normalize_scope(s) for s in scopes] == scopes  # the registry accepts them as they are
    assert registry_scope("///") == "unnamed" and len(registry_scope("x" * 80)) == 63
