"""``feddx data stats`` and ``feddx data partition``: output shape, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feddx.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "csv"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_stats_json_is_exactly_one_object_with_the_contract_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["data", "stats", f"csv:{FIXTURES / 'malformed.csv'}", "--json"], capsys)
    assert code == 0
    stats = json.loads(out)  # the whole of stdout is one JSON document
    assert isinstance(stats, dict)
    assert stats["n_cases"] == 2 and isinstance(stats["n_cases"], int)
    assert stats["labels"] == {"Migraine": 1, "Typhoid": 1}
    assert stats["n_skipped"] == 4
    assert stats["skipped_reasons"] == {
        "missing text": 1,
        "empty label": 1,
        "too many columns": 1,
        "too few columns": 1,
    }
    assert stats["skipped_examples"][0] == "malformed.csv:3: missing text"
    assert stats["icd10"]["label_codes"] == {"Migraine": "G43.909", "Typhoid": "A01.00"}


def test_stats_json_extras(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["data", "stats", f"csv:{FIXTURES / 'extra_columns.csv'}", "--json"], capsys)
    assert code == 0
    stats = json.loads(out)
    assert stats["n_cases"] == 3 and stats["n_labeled"] == 3
    assert stats["institutions"] == {"Hospital Norte": 2, "Hospital Sul": 1}
    assert stats["regions"] == {"North": 2, "South": 1}
    assert stats["sex"] == {"female": 2, "male": 1}
    assert stats["age"] == {"n": 3, "min": 33.0, "max": 71.0, "mean": 56.0, "median": 64.0}
    assert stats["n_with_text"] == 3 and stats["n_with_history"] == 0


def test_stats_table_shows_counts_and_first_skipped_records(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["data", "stats", f"csv:{FIXTURES / 'malformed.csv'}"], capsys)
    assert code == 0
    assert "Migraine" in out and "G43.909" in out
    assert "malformed.csv:5: too many columns (expected 2, got 4)" in out
    assert "chills" not in out  # never the patient text of a skipped row


def test_the_older_source_path_form_still_works_with_a_one_line_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DATA is SOURCE:PATH, as --data everywhere; 'SOURCE PATH' is deprecated (issue 26)."""
    data = FIXTURES / "malformed.csv"
    code, new, err = run(["data", "stats", f"csv:{data}", "--json"], capsys)
    assert code == 0 and err == ""
    code, old, err = run(["data", "stats", "csv", str(data), "--json"], capsys)
    assert code == 0 and json.loads(old) == json.loads(new)
    assert err == f"feddx: note: 'SOURCE PATH' is deprecated; write csv:{data}\n"


def test_limit_reads_at_most_n_cases(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["data", "stats", "uci-heart", "--limit", "25", "--json"], capsys)
    assert code == 0 and json.loads(out)["n_cases"] == 25


def test_stats_uci_heart_needs_no_path(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["data", "stats", "uci-heart", "--json"], capsys)
    assert code == 0
    stats = json.loads(out)
    assert stats["n_cases"] == 920 and stats["path"] is None
    assert len(stats["institutions"]) == 4
    assert set(stats["regions"]) == {"USA", "Hungary", "Switzerland"}
    # A path is accepted and ignored.
    assert (
        json.loads(run(["data", "stats", "uci-heart:ignored", "--json"], capsys)[1])["n_cases"]
        == 920
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "stats", "nosuch:x"], "unknown data source 'nosuch'"),
        (["data", "stats", "csv:/nonexistent/file.csv"], "path not found"),
        (["data", "stats", "csv"], "needs a PATH"),
        (["data", "stats", f"csv:{FIXTURES / 'no_header.csv'}"], "no label column"),
        (["data", "stats", f"csv:{FIXTURES / 'no_header.csv'}", "--json"], "no label column"),
    ],
)
def test_stats_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    line = err.strip()
    assert line.startswith("feddx: error:") and message in line
    assert "\n" not in line and "Traceback" not in line


def test_partition_writes_shards_and_prints_histograms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir, plot = tmp_path / "clients", tmp_path / "partition.png"
    code, out, _ = run(
        [
            "data", "partition", f"csv:{FIXTURES / 'symptoms_small.csv'}",
            "--out", str(out_dir), "--kind", "iid", "--num-clients", "2", "--seed", "3",
            "--plot", str(plot),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["spec"]["kind"] == "iid" and manifest["seed"] == 3
    assert manifest["sizes"] == [4, 3]
    assert manifest["input"]["source"] == "csv"
    assert "Drug reaction" in out and "client 0" in out and "wrote 2 shards (7 cases)" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_partition_by_attribute_defaults_to_institution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        ["data", "partition", "uci-heart", "--out", str(tmp_path / "p"), "--kind", "attribute"],
        capsys,
    )
    assert code == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["spec"]["attribute"] == "institution"
    assert [c["attribute_value"] for c in manifest["clients"]] == [
        "Cleveland Clinic",
        "Hungarian Inst. of Cardiology",
        "Univ. Hospitals Zurich/Basel",
        "VA Long Beach",
    ]
    assert manifest["sizes"] == [304, 293, 123, 200]
    assert "Cleveland" in out and "920" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-clients", "50"], "use fewer clients"),
        (["--kind", "attribute", "--attribute", "hospital"], "no case attribute 'hospital'"),
        (["--kind", "random"], "Invalid value for '--kind'"),
        (["--kind", "dirichlet", "--alpha", "0"], "alpha must be positive"),
    ],
)
def test_partition_errors_are_one_line_and_exit_2(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "partition", f"csv:{FIXTURES / 'symptoms_small.csv'}"]
    code, _, err = run([*argv, "--out", str(tmp_path / "p"), *extra], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()


def test_stats_symptom2disease(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["data", "stats", f"csv:{shared_data / 'symptom2disease'}", "--json"], capsys
    )
    assert code == 0
    stats = json.loads(out)
    assert stats["n_cases"] == 870 and len(stats["labels"]) == 24 and stats["n_skipped"] == 0
    assert stats["icd10"]["labels_without_code"] == []


def test_prepare_writes_deidentified_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "prepared" / "cases.jsonl"
    source = FIXTURES / "with_identifiers.csv"
    code, stdout, _ = run(["data", "prepare", f"csv:{source}", "--out", str(out), "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["n_cases"] == 3 and result["n_skipped"] == 0
    assert result["n_text_redacted"] == 2  # the third row has no identifiers
    written = out.read_text()
    for identifier in (
        "123.456.789-09",
        "98765-4321",
        "john.doe@example.com",
        "555-201-3344",
        "12/03/2024",
    ):
        assert identifier not in written
    assert "Sneezing and a runny nose since yesterday." in written
    # The prepared file is the jsonl source: it loads back into the same labels.
    code, stdout, _ = run(["data", "stats", f"jsonl:{out}", "--json"], capsys)
    assert code == 0
    assert json.loads(stdout)["labels"] == {
        "Migraine": 1,
        "Urinary tract infection": 1,
        "Common cold": 1,
    }


def test_prepare_rejects_a_directory_as_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "prepare", f"csv:{FIXTURES / 'symptoms_small.csv'}", "--out", str(tmp_path)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "must be a file" in err


def test_help_names_the_sources(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["data", "stats", "--help"], capsys)
    assert code == 0
    for source in ("ddxplus", "ddxplus-v0", "csv", "jsonl", "uci-heart", "fhir"):
        assert source in out
