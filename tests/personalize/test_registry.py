"""The adapter registry: what registering records and copies, versions that are never reused,
content hashes checked on load, refusals in one line naming the adapter, crash safety, and
readers that are not blocked by a writer."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from feddx.data.schema import Case, Label
from feddx.errors import ConfigError, ModelError
from feddx.io import file_sha256
from feddx.model.adapter import META_FILE, WEIGHTS_FILE
from feddx.personalize import registry as registry_mod
from feddx.personalize.registry import (
    ADAPTER_FILES,
    AdapterEntry,
    AdapterRegistry,
    content_sha256,
    data_fingerprint,
    normalize_scope,
    parse_adapter_id,
    register_federated_run,
)

from .registry_helpers import BASE, DAMAGE, age_files, flip_byte


def test_register_list_show_delete_round_trip(
    registry: AdapterRegistry, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_adapter("g", seed=1, temperature=1.7)
    fp = "ab" * 32
    g1 = registry.register(
        source,
        level="global",
        training_round=6,
        data_fingerprint=fp,
        metrics={"top1": 0.533, "n": 150},
    )
    assert g1.adapter_id == "global/v1" and g1.version == 1 and g1.level == "global"
    assert (g1.region, g1.institution, g1.parent_id) == (None, None, None)
    assert g1.path == tmp_path / "registry" / "adapters" / "global" / "v1"
    assert sorted(p.name for p in g1.path.iterdir()) == sorted(ADAPTER_FILES)
    assert file_sha256(g1.path / WEIGHTS_FILE) == file_sha256(source / WEIGHTS_FILE)
    assert (g1.base_fingerprint, g1.max_prompt_tokens, g1.temperature) == (BASE, 64, 1.7)
    assert (g1.training_round, g1.data_fingerprint) == (6, fp)
    assert g1.metrics == {"top1": 0.533, "n": 150.0}
    assert g1.files == {n: (source / n).stat().st_size for n in ADAPTER_FILES}
    created = datetime.fromisoformat(g1.created_at)
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60

    g2 = registry.register(make_adapter("g2", seed=2), level="global")
    europe = registry.register(
        make_adapter("r", seed=3), level="regional", region="Europe", parent_id="global/v2"
    )
    clinic = registry.register(
        make_adapter("i", seed=4),
        level="institutional",
        institution="Cleveland Clinic",
        parent_id=europe.adapter_id,
    )
    assert g2.adapter_id == "global/v2"
    assert europe.adapter_id == "regional/europe/v1" and europe.region == "europe"
    # The institution inherits its regional parent's region; names are normalised.
    assert clinic.adapter_id == "institutional/cleveland-clinic/v1"
    assert (clinic.region, clinic.institution) == ("europe", "cleveland-clinic")
    assert (
        clinic.path
        == tmp_path / "registry" / "adapters" / "institutional" / "cleveland-clinic" / "v1"
    )

    assert [e.adapter_id for e in registry.entries()] == [
        "global/v1",
        "global/v2",
        "regional/europe/v1",
        "institutional/cleveland-clinic/v1",
    ]
    assert [e.adapter_id for e in registry.entries(level="global")] == ["global/v1", "global/v2"]
    assert [e.adapter_id for e in registry.entries(region="EUROPE")] == [
        "regional/europe/v1",
        "institutional/cleveland-clinic/v1",
    ]
    assert registry.entries(institution="zurich") == []
    assert registry.get("regional/europe/v1") == europe
    assert registry.children("regional/europe/v1") == ["institutional/cleveland-clinic/v1"]

    # A fresh object over the same root reads the same rows (it is a real file).
    assert AdapterRegistry(tmp_path / "registry").entries() == registry.entries()

    registry.delete("global/v2")
    assert not g2.path.exists()
    with pytest.raises(ModelError, match=r"^adapter global/v2 is not in the registry"):
        registry.get("global/v2")
    with pytest.raises(ModelError, match="global/v2"):
        registry.delete("global/v2")
    # Version numbers are never reused: a service that cached global/v2 is not fooled.
    assert registry.register(make_adapter("g3", seed=5), level="global").adapter_id == "global/v3"
    assert [e.adapter_id for e in registry.entries(level="global")] == ["global/v1", "global/v3"]


def test_schema_is_versioned_and_the_database_is_in_wal_mode(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    db = tmp_path / "registry" / "registry.sqlite3"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(ModelError, match=r"schema version 7; this feddx reads version 2"):
        AdapterRegistry(tmp_path / "registry")


def test_foreign_databases_and_missing_roots_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no adapter registry at .*nowhere"):
        AdapterRegistry(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / "registry.sqlite3") as conn:
        conn.execute("CREATE TABLE patients (id TEXT)")
    with pytest.raises(ModelError, match="not a feddx adapter registry"):
        AdapterRegistry(other)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "registry.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ModelError, match=r"registry\.sqlite3"):
        AdapterRegistry(tmp_path / "junk")


def test_content_hash_covers_names_and_bytes_and_is_checked_on_load(
    registry: AdapterRegistry, make_adapter: Callable[..., Path]
) -> None:
    entry = registry.register(make_adapter("g"), level="global")
    expected = hashlib.sha256()
    for name in sorted(ADAPTER_FILES):
        expected.update(name.encode() + b"\0" + file_sha256(entry.path / name).encode() + b"\n")
    assert entry.content_sha256 == expected.hexdigest() == content_sha256(entry.path, ADAPTER_FILES)
    assert registry.verify("global/v1") == entry
    flip_byte(entry)
    with pytest.raises(ModelError) as err:
        registry.verify("global/v1")
    assert str(err.value) == (
        "adapter global/v1 refused: corrupt (content hash mismatch: a file changed since it "
        "was registered)"
    )


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_adapter_is_refused_in_one_line_naming_it(
    registry: AdapterRegistry, make_adapter: Callable[..., Path], damage: str
) -> None:
    entry = registry.register(make_adapter("g"), level="global")
    registry.verify(entry.adapter_id)  # cached as intact first: the damage must still be seen
    harm, reason = DAMAGE[damage]
    harm(entry)
    with pytest.raises(ModelError) as err:
        registry.verify(entry.adapter_id)
    message = str(err.value)
    assert message.startswith(f"adapter global/v1 refused: {reason}")
    assert "\n" not in message
    assert registry.check(entry) is not None and registry.check(entry).startswith(reason)  # type: ignore[union-attr]


def test_a_deleted_folder_an_extra_file_and_another_base_model_are_refused(
    registry: AdapterRegistry, make_adapter: Callable[..., Path]
) -> None:
    g1 = registry.register(make_adapter("g1"), level="global")
    g2 = registry.register(make_adapter("g2", base="other-model:123"), level="global")
    with pytest.raises(ModelError) as err:
        registry.verify("global/v2", base_fingerprint=BASE)
    assert str(err.value) == (
        "adapter global/v2 refused: other base model (trained for 'other-model:123', not "
        "'tiny-llama:test')"
    )
    assert registry.verify("global/v2", base_fingerprint="other-model:123") == g2
    (g1.path / "notes.txt").write_text("x")
    with pytest.raises(
        ModelError, match=r"^adapter global/v1 refused: corrupt \(unexpected file notes\.txt\)$"
    ):
        registry.verify("global/v1")
    shutil.rmtree(g1.path)
    with pytest.raises(
        ModelError,
        match=r"^adapter global/v1 refused: missing \(its folder adapters/global/v1 is gone\)$",
    ):
        registry.verify("global/v1")


def test_verification_is_cached_until_a_file_changes(
    registry: AdapterRegistry, make_adapter: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = registry.register(make_adapter("g"), level="global")
    calls: list[Path] = []
    real = registry_mod.content_sha256

    def counting(directory: Path, names: Any) -> str:
        calls.append(Path(directory))
        return real(directory, names)

    monkeypatch.setattr(registry_mod, "content_sha256", counting)
    # Just written: inside the racy window the cache is not trusted, every check re-hashes.
    registry.verify("global/v1")
    registry.verify("global/v1")
    assert len(calls) == 2
    age_files(entry)
    for _ in range(5):
        registry.verify("global/v1")
    assert len(calls) == 3  # hashed once more for the new mtimes, then served from the cache
    registry.verify("global/v1", fresh=True)
    assert len(calls) == 4
    flip_byte(entry)  # a rewrite changes the mtime: seen at once
    with pytest.raises(ModelError, match="corrupt"):
        registry.verify("global/v1")
    assert len(calls) == 5


def test_register_refuses_what_is_not_an_intact_adapter(
    registry: AdapterRegistry, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=rf"^{empty} is not a feddx adapter \(no {META_FILE}\)$"):
        registry.register(empty, level="global")
    with pytest.raises(ModelError, match="adapter directory not found"):
        registry.register(tmp_path / "absent", level="global")
    source = make_adapter("bad")
    data = bytearray((source / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0x01
    (source / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"^adapter {source} is corrupt: {WEIGHTS_FILE} fails"):
        registry.register(source, level="global")
    incomplete = make_adapter("incomplete")
    (incomplete / "adapter_config.json").unlink()
    with pytest.raises(ModelError, match=r"incomplete: adapter_config\.json is missing"):
        registry.register(incomplete, level="global")
    assert registry.entries() == [] and registry.generation() == 0


def test_register_checks_the_parent(
    registry: AdapterRegistry, make_adapter: Callable[..., Path]
) -> None:
    registry.register(make_adapter("g"), level="global")
    registry.register(make_adapter("r"), level="regional", region="europe", parent_id="global/v1")
    with pytest.raises(ModelError, match=r"^parent adapter global/v9 is not in the registry"):
        registry.register(make_adapter("a"), level="regional", region="asia", parent_id="global/v9")
    with pytest.raises(
        ModelError,
        match=r"trained for base model 'other:1', its parent global/v1 for 'tiny-llama:test'",
    ):
        registry.register(
            make_adapter("b", base="other:1"),
            level="regional",
            region="asia",
            parent_id="global/v1",
        )
    with pytest.raises(ModelError, match=r"LoRA layout \(8, 8\.0.*its parent global/v1 \(4, 8\.0"):
        registry.register(
            make_adapter("c", rank=8), level="regional", region="asia", parent_id="global/v1"
        )
    with pytest.raises(ConfigError, match="less specific level"):
        registry.register(
            make_adapter("d"), level="regional", region="asia", parent_id="regional/europe/v1"
        )
    with pytest.raises(ConfigError, match="region asia does not match the region europe"):
        registry.register(
            make_adapter("e"),
            level="institutional",
            institution="x",
            region="asia",
            parent_id="regional/europe/v1",
        )
    flip_byte(registry.get("global/v1"))
    with pytest.raises(ModelError, match=r"^parent adapter global/v1 refused: corrupt"):
        registry.register(make_adapter("f"), level="regional", region="asia", parent_id="global/v1")
    assert [e.adapter_id for e in registry.entries()] == ["global/v1", "regional/europe/v1"]


def test_register_validates_levels_names_and_numbers(
    registry: AdapterRegistry, make_adapter: Callable[..., Path]
) -> None:
    source = make_adapter("g")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"level": "national"}, "level 'national' is not one of global, regional, institutional"),
        ({"level": "global", "region": "europe"}, "a global adapter takes no region"),
        ({"level": "global", "parent_id": "global/v1"}, "a global adapter has no parent"),
        ({"level": "regional"}, "a regional adapter needs a region"),
        ({"level": "institutional", "region": "europe"}, "needs an institution"),
        ({"level": "regional", "region": "../.."}, "region '../..' is not a valid registry name"),
        ({"level": "global", "training_round": -1}, "training_round must be an integer >= 0"),
        ({"level": "global", "data_fingerprint": "case-17 Jane Doe"}, "must be a hex hash"),
        ({"level": "global", "metrics": {"top1": float("nan")}}, "metric top1 must be a finite"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
            registry.register(source, **kwargs)
    registry.register(source, level="institutional", institution="Hospital A", region="europe")
    with pytest.raises(
        ConfigError, match="institution hospital-a is registered under region europe"
    ):
        registry.register(source, level="institutional", institution="hospital_a", region="asia")
    assert [e.adapter_id for e in registry.entries()] == ["institutional/hospital-a/v1"]


def test_scope_names_and_ids() -> None:
    assert normalize_scope("  Hospital  A ") == "hospital-a"
    assert normalize_scope("Basel_Stadt") == "basel-stadt"
    assert normalize_scope("us-west.2") == "us-west-2"
    # One slug everywhere (feddx.data.slug): Hungary's hospital as deploy and the demo name it.
    assert normalize_scope("Hungarian Inst. of Cardiology") == "hungarian-inst-of-cardiology"
    assert normalize_scope("Zürich") == "zurich"
    # Path-like names become plain slugs: nothing typed can leave the registry's folder.
    assert normalize_scope("../etc") == "etc" and normalize_scope("a/b") == "a-b"
    assert len(normalize_scope("x" * 80)) == 63
    for bad in ("", "..", "///", " - "):
        with pytest.raises(ConfigError, match="not a valid registry name"):
            normalize_scope(bad, "institution")
    assert parse_adapter_id("global/v12") == ("global", None, 12)
    assert parse_adapter_id("regional/europe/v1") == ("regional", "europe", 1)
    assert parse_adapter_id("institutional/cleveland/v3") == ("institutional", "cleveland", 3)
    with pytest.raises(ConfigError, match="not an adapter id"):
        parse_adapter_id("global/europe/v1")


def test_generation_changes_on_every_register_and_delete_only(
    registry: AdapterRegistry, make_adapter: Callable[..., Path]
) -> None:
    assert registry.generation() == 0
    registry.register(make_adapter("g1"), level="global")
    assert registry.generation() == 1
    registry.register(make_adapter("g2"), level="global")
    registry.entries()
    registry.verify("global/v1")
    assert registry.generation() == 2
    registry.delete("global/v1")
    assert registry.generation() == 3
    with pytest.raises(ModelError):
        registry.register(
            make_adapter("g3", base="x:1"), level="regional", region="r", parent_id="global/v2"
        )
    assert registry.generation() == 3


def test_a_crash_mid_copy_leaves_the_registry_as_it_was(
    registry: AdapterRegistry,
    make_adapter: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    registry.register(make_adapter("g1"), level="global")
    before = (registry.entries(), registry.generation())
    real_copy = shutil.copyfile
    copied: list[str] = []

    def crash_on_second(src: Any, dst: Any, **kw: Any) -> Any:
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(str(dst))
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(registry_mod.shutil, "copyfile", crash_on_second)
    with pytest.raises(OSError, match="No space left"):
        registry.register(make_adapter("g2"), level="global")
    monkeypatch.undo()
    assert copied  # it did fail half way
    assert (registry.entries(), registry.generation()) == before
    top = tmp_path / "registry" / "adapters" / "global"
    assert sorted(p.name for p in top.iterdir()) == ["v1"]  # no half folder, no temp folder
    assert registry.register(make_adapter("g2"), level="global").adapter_id == "global/v2"


def test_a_crash_between_copy_and_insert_leaves_an_orphan_that_is_ignored_and_removed(
    registry: AdapterRegistry,
    make_adapter: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    g1 = registry.register(make_adapter("g1"), level="global")
    adapters = tmp_path / "registry" / "adapters"
    # What a killed process leaves: the renamed folder of v2 (no row), a temp folder, a trash.
    shutil.copytree(g1.path, adapters / "global" / "v2")
    (adapters / "global" / ".tmp-v3-abc").mkdir()
    shutil.copytree(g1.path, adapters / "regional" / "asia" / "v1")
    (adapters / ".trash-123-456").mkdir()
    assert [e.adapter_id for e in registry.entries()] == ["global/v1"]  # not visible
    assert sorted(registry.clean_orphans()) == [
        "adapters/.trash-123-456",
        "adapters/global/.tmp-v3-abc",
        "adapters/global/v2",
        "adapters/regional/asia/v1",
    ]
    assert sorted(p.name for p in (adapters / "global").iterdir()) == ["v1"]
    assert not (adapters / "regional" / "asia").exists()
    assert registry.clean_orphans() == []
    registry.verify("global/v1")
    # The next register also sweeps: an orphan at the version it assigns is replaced whole.
    shutil.copytree(g1.path, adapters / "global" / "v2")
    (adapters / "global" / "v2" / "stale.bin").write_bytes(b"x")
    g2 = registry.register(make_adapter("g2", seed=9), level="global")
    assert g2.adapter_id == "global/v2"
    assert registry.verify("global/v2") == g2


def test_readers_are_not_blocked_while_a_writer_holds_the_lock(
    registry: AdapterRegistry, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    registry.register(make_adapter("g1"), level="global")
    writer = sqlite3.connect(tmp_path / "registry" / "registry.sqlite3", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE state SET value = value + 100 WHERE key = 'generation'")
        # WAL: a service resolving now sees the last committed state, without waiting.
        assert [e.adapter_id for e in registry.entries()] == ["global/v1"]
        assert registry.generation() == 1
        writer.execute("ROLLBACK")
    finally:
        writer.close()


def test_concurrent_registrations_get_distinct_versions_while_threads_resolve(
    registry: AdapterRegistry, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    sources = [make_adapter(f"g{i}", seed=i) for i in range(6)]
    # Two registry objects: two connections, the same locking as two processes.
    other = AdapterRegistry(tmp_path / "registry")
    errors: list[BaseException] = []
    ids: list[str] = []

    def register(reg: AdapterRegistry, mine: list[Path]) -> None:
        try:
            ids.extend(reg.register(s, level="global").adapter_id for s in mine)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def resolve() -> None:
        try:
            for _ in range(20):
                registry.resolve(institution="x", region=None, base_fingerprint=BASE)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=register, args=(registry, sources[:3])),
        threading.Thread(target=register, args=(other, sources[3:])),
        threading.Thread(target=resolve),
        threading.Thread(target=resolve),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(ids) == [f"global/v{v}" for v in range(1, 7)]
    assert registry.generation() == 6
    assert registry.resolve(institution=None, region=None, base_fingerprint=BASE).ids() == [
        "global/v6"
    ]


def test_a_registered_adapter_scores_through_the_diagnoser(
    registry: AdapterRegistry, make_adapter: Callable[..., Path], diagnoser: Any
) -> None:
    entry = registry.verify(registry.register(make_adapter("g"), level="global").adapter_id)
    held = diagnoser.add_adapter(entry.path, name=entry.adapter_id)
    assert held.max_prompt_tokens == 64
    cases = [Case(case_id="c1", text="Fever and productive cough.")]
    prediction = diagnoser.diagnose(cases, ["Pneumonia", "Asthma"], adapter="global/v1")[0]
    assert sorted(c.name for c in prediction.ranked) == ["Asthma", "Pneumonia"]
    assert sum(c.probability for c in prediction.ranked) == pytest.approx(1.0, abs=1e-5)


def test_data_fingerprint_hashes_sorted_ids_and_labels() -> None:
    cases = [
        Case(case_id="b", text="x", label=Label(diagnosis="Asthma")),
        Case(case_id="a", text="y", label=Label(diagnosis="Pneumonia")),
        Case(case_id="c", text="z"),
    ]
    expected = hashlib.sha256(b'["a", "Pneumonia"]\n["b", "Asthma"]\n["c", ""]\n').hexdigest()
    assert data_fingerprint(cases) == expected
    assert data_fingerprint(reversed(cases)) == expected  # order does not matter
    relabeled = [
        cases[0],
        cases[1].model_copy(update={"label": Label(diagnosis="Asthma")}),
        cases[2],
    ]
    assert data_fingerprint(relabeled) != expected
    # The text is not part of it (and never stored): same ids and labels, same fingerprint.
    retexted = [c.model_copy(update={"text": "other"}) for c in cases]
    assert data_fingerprint(retexted) == expected


def test_register_federated_run_records_round_and_final_metrics(
    registry: AdapterRegistry, make_model: Callable[..., Any], tmp_path: Path
) -> None:
    from feddx.federated.history import HISTORY_FILE
    from feddx.federated.server_app import GLOBAL_ADAPTER_DIR

    from .registry_helpers import save_tiny_adapter

    run = tmp_path / "run"
    save_tiny_adapter(make_model, run / GLOBAL_ADAPTER_DIR)
    summary = {
        "strategy": "fedavg",
        "rounds_completed": 3,
        "final": {"top1": 0.5, "top3": 0.75, "val_loss": 1.25, "n": 4, "flag": True},
        "epsilon_total": None,
    }
    (run / HISTORY_FILE).write_text(json.dumps({"summary": summary, "rounds": []}))
    entry = register_federated_run(registry, run, data_fingerprint="cd" * 32)
    assert isinstance(entry, AdapterEntry)
    assert (entry.adapter_id, entry.training_round, entry.data_fingerprint) == (
        "global/v1",
        3,
        "cd" * 32,
    )
    assert entry.metrics == {"top1": 0.5, "top3": 0.75, "val_loss": 1.25, "n": 4.0}
    with pytest.raises(ModelError, match=r"federated run .*empty has no readable history\.json"):
        register_federated_run(registry, tmp_path / "empty")
