"""Case indexes as registry entries (issue 24 item 3): stored without text, versioned per
institution, listed with their kind, resolved with the institution's chain (a damaged version
skipped), an older registry migrated; and applied to one case (the retrieval prior mixed at its
registered weight, the similar cases named by hash and diagnosis only)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from feddx.cli import main
from feddx.errors import ModelError
from feddx.personalize.case_index import (
    apply_case_index,
    load_case_index,
    register_case_index,
)
from feddx.personalize.registry import AdapterEntry, AdapterRegistry
from feddx.personalize.retrieval import CaseIndex, case_text
from tiny_embedder import FINDINGS, BagEmbedder, findings_case, prediction_of

from .registry_helpers import BASE

DX = ("Pneumonia", "Asthma", "Myocardial infarction", "Urticaria")


TRAIN = [
    findings_case("MRN-1001-stay", ("cough", "fever"), "Pneumonia", patient="MRN-1001"),
    findings_case("MRN-1002-stay", ("cough", "wheeze"), "Asthma", patient="MRN-1002"),
    findings_case("MRN-1003-stay", ("chest pain", "sweating"), "Myocardial infarction"),
    findings_case("MRN-1004-stay", ("rash", "itch"), "Urticaria"),
    findings_case("MRN-1005-stay", ("cough", "fever", "wheeze"), "Pneumonia"),
]


def flip_byte(entry: AdapterEntry, name: str) -> None:
    """Invert one byte in the middle of ``name`` (same size: only the hash can tell)."""
    path = entry.path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _register(registry: AdapterRegistry, weight: float = 0.5, **kw: str | None) -> AdapterEntry:
    index = CaseIndex.build(TRAIN, BagEmbedder())
    args: dict[str, str | None] = {"institution": "Cleveland", "region": "europe", **kw}
    return register_case_index(
        registry,
        index,
        TRAIN,
        institution=str(args["institution"]),
        region=args["region"],
        base_fingerprint=BASE,
        prior_weight=weight,
        k=3,
        scored_with="institutional/cleveland/v1",
        source="csv:cases.csv",
    )


def test_a_case_index_is_stored_without_text_and_versioned(registry: AdapterRegistry) -> None:
    first = _register(registry)
    assert first.adapter_id == "case-index/cleveland/v1" and first.kind == "case-index"
    assert (first.level, first.institution, first.region) == (
        "institutional",
        "cleveland",
        "europe",
    )
    assert first.lineage["embedder"] == "bag-of-findings" and first.lineage["dim"] == len(FINDINGS)
    assert first.metrics == {"prior_weight": 0.5, "cases": 5.0}
    assert first.data_fingerprint and len(first.data_fingerprint) == 64
    assert first.path == registry.root / "adapters" / "case-index" / "cleveland" / "v1"
    # Nothing a case said or was called is on disk: no findings text, no case or patient id.
    stored = b"".join(p.read_bytes() for p in first.path.iterdir())
    for case in TRAIN:
        assert case_text(case).encode() not in stored
        assert case.case_id.encode() not in stored
    assert b"MRN-" not in stored and b"cough" not in stored
    assert _register(registry).adapter_id == "case-index/cleveland/v2"
    # Listed with every kind, but not among the adapters the hierarchy resolves over.
    assert registry.entries() == []
    assert [e.kind for e in registry.entries(kind=None)] == ["case-index", "case-index"]
    assert registry.check(first, fresh=True) is None


def test_an_institution_keeps_one_region_across_kinds(registry: AdapterRegistry) -> None:
    _register(registry)
    from feddx.errors import ConfigError

    with pytest.raises(ConfigError, match="an institution keeps one region"):
        _register(registry, region="americas")


def test_resolve_gives_the_chain_and_the_newest_intact_case_index(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry]
) -> None:
    v1, v2 = _register(registry), _register(registry)
    chain = registry.resolve(institution="cleveland", region=None, base_fingerprint=BASE)
    assert chain.answering == hierarchy["institutional"]
    assert chain.case_index == v2 and chain.to_dict()["case_index"] == v2.adapter_id
    flip_byte(v2, "vectors.faiss")
    chain = registry.resolve(institution="cleveland", region=None, base_fingerprint=BASE)
    assert chain.case_index == v1
    assert any(f.startswith("case-index/cleveland/v2 skipped: corrupt") for f in chain.fallbacks)
    # Chosen for another base model: no index offered.
    other = registry.resolve(institution="cleveland", region=None, base_fingerprint="other:1")
    assert other.case_index is None
    # Another institution never gets Cleveland's.
    assert (
        registry.resolve(institution="zurich", region=None, base_fingerprint=BASE).case_index
        is None
    )


def test_an_institution_with_only_a_case_index_is_known(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry]
) -> None:
    _register(registry, institution="zurich")
    chain = registry.resolve(institution="zurich", region=None, base_fingerprint=BASE)
    assert chain.unknown == () and chain.case_index is not None
    assert chain.ids() == ["global/v1", "regional/europe/v1"]
    nobody = registry.resolve(institution="nobody", region=None, base_fingerprint=BASE)
    assert nobody.unknown == ("institution nobody is unknown to this registry",)


def test_a_version_1_registry_is_migrated_and_its_entries_are_adapters(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry], tmp_path: Path
) -> None:
    registry.close()
    db = registry.db_path
    with sqlite3.connect(db) as conn:  # the version-1 layout: no kind, no lineage
        conn.execute("ALTER TABLE adapters DROP COLUMN kind")
        conn.execute("ALTER TABLE adapters DROP COLUMN lineage")
        conn.execute("PRAGMA user_version = 1")
    reopened = AdapterRegistry(registry.root)
    assert [e.kind for e in reopened.entries(kind=None)] == ["adapter"] * 3
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert _register(reopened).adapter_id == "case-index/cleveland/v1"


def test_registry_list_shows_each_entrys_kind(
    registry: AdapterRegistry,
    hierarchy: dict[str, AdapterEntry],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _register(registry)
    assert main(["registry", "list", "--registry", str(registry.root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["adapter_id"], e["kind"]) for e in listed] == [
        ("global/v1", "adapter"),
        ("regional/europe/v1", "adapter"),
        ("institutional/cleveland/v1", "adapter"),
        ("case-index/cleveland/v1", "case-index"),
    ]
    args = ["registry", "list", "--registry", str(registry.root), "--kind", "case-index"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["id", "kind"]
    assert [line.split()[:2] for line in lines[1:]] == [["case-index/cleveland/v1", "case-index"]]


def test_applying_an_index_mixes_the_prior_and_names_cases_by_hash_only(
    registry: AdapterRegistry,
) -> None:
    entry = _register(registry)
    stored = load_case_index(registry, entry.adapter_id)
    assert stored.prior_weight == 0.5 and stored.k == 3 and len(stored.index) == 5
    query = findings_case("q", ("cough", "fever"), None, patient="MRN-9")
    model = prediction_of(query, {"Asthma": 0.7, "Pneumonia": 0.1, "Urticaria": 0.1, "X": 0.1})
    mixed, used = apply_case_index(stored, query, model, BagEmbedder())
    assert mixed.top == "Pneumonia"  # two of its three neighbours are pneumonia, one at cos 1
    assert sum(r.probability for r in mixed.ranked) == pytest.approx(1.0)
    assert [u.diagnosis for u in used] == ["Pneumonia", "Pneumonia", "Asthma"]
    assert all(u.ref.startswith("case#") and len(u.ref) == 17 for u in used)
    assert used[0].similarity == pytest.approx(1.0)
    # The patient's own past stays out of the neighbours (history, not a "similar case").
    own = findings_case("q2", ("cough", "fever"), None, patient="MRN-1001")
    _, used_own = apply_case_index(stored, own, prediction_of(own, {"Asthma": 1.0}), BagEmbedder())
    assert used_own[0].similarity < 1.0
    # Weight 0 (validation found no help): the prediction is unchanged and no case is used.
    zero = load_case_index(registry, _register(registry, weight=0.0).adapter_id)
    assert apply_case_index(zero, query, model, BagEmbedder()) == (model, [])


def test_a_damaged_or_wrong_kind_entry_is_refused(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry]
) -> None:
    entry = _register(registry)
    flip_byte(entry, "index.json")
    with pytest.raises(ModelError, match=r"case-index/cleveland/v1 refused: corrupt"):
        load_case_index(registry, entry.adapter_id)
    with pytest.raises(ModelError, match="global/v1 is not a case index"):
        load_case_index(registry, "global/v1")


def test_an_empty_folder_is_not_registered(registry: AdapterRegistry, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="is empty"):
        registry.register_case_index(empty, institution="cleveland", base_fingerprint=BASE)
    assert registry.entries(kind=None) == []


def test_the_register_stage_registers_one_case_index_per_institution(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from feddx.personalize.config import PersonalizeConfig
    from feddx.personalize.groups import Groups, Institution
    from feddx.personalize.levels import Individual
    from feddx.personalize.register import register_case_indexes
    from feddx.personalize.retrieval import IndividualContext

    emb = BagEmbedder()
    north = Institution("North General", "North", TRAIN[:3], [], [])
    south = Institution("South Clinic", "South", TRAIN[2:], [], [])
    individual = Individual()
    for inst, weight in ((north, 0.3), (south, 0.0)):
        index = CaseIndex.build(inst.train, emb)
        individual.contexts[inst.name] = IndividualContext(index, emb, prior_weight=weight, k=4)
        individual.summary[inst.name] = {"adapter": f"institutional:{inst.name}:finetune"}
    adapters = [{"key": "institutional:North General:finetune", "registry_id": "x/v1"}]
    config = PersonalizeConfig(data="jsonl:unused.jsonl")
    records = register_case_indexes(
        config,
        tmp_path,
        SimpleNamespace(base_fingerprint=BASE),
        Groups([north, south]),
        individual,
        adapters,
        "jsonl",
    )
    assert [r["registry_id"] for r in records] == [
        "case-index/north-general/v1",
        "case-index/south-clinic/v1",
    ]
    registry = AdapterRegistry(tmp_path / "registry", create=False)
    entries = registry.entries(kind="case-index")
    assert [(e.region, e.metrics["prior_weight"], e.lineage["k"]) for e in entries] == [
        ("north", 0.3, 4),
        ("south", 0.0, 4),
    ]
    assert entries[0].lineage["scored_with"] == "x/v1"  # the registered adapter's id
    assert entries[1].lineage["scored_with"] == "institutional:South Clinic:finetune"
    off = PersonalizeConfig(data="jsonl:unused.jsonl", register_adapters=False)
    assert register_case_indexes(off, tmp_path, None, Groups([north]), individual, [], "x") == []


def test_registry_resolve_names_the_case_index(
    registry: AdapterRegistry,
    hierarchy: dict[str, AdapterEntry],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _register(registry)
    base = ["--registry", str(registry.root), "--base-fingerprint", BASE]
    assert main(["registry", "resolve", "--institution", "cleveland", *base]) == 0
    assert "case index  case-index/cleveland/v1" in capsys.readouterr().out.splitlines()
    assert main(["registry", "resolve", "--institution", "cleveland", *base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["case_index"] == "case-index/cleveland/v1"


def test_an_interrupted_case_index_write_is_cleaned_up(registry: AdapterRegistry) -> None:
    kept = _register(registry)
    orphan = registry.root / "adapters" / "case-index" / "cleveland" / "v7"
    orphan.mkdir(parents=True)
    (orphan / "index.json").write_text("{}")
    assert registry.clean_orphans() == ["adapters/case-index/cleveland/v7"]
    assert not orphan.exists() and registry.check(kept, fresh=True) is None
    registry.delete(kept.adapter_id)
    assert not (registry.root / "adapters" / "case-index").exists()
    assert _register(registry).adapter_id == "case-index/cleveland/v2"  # never reused
