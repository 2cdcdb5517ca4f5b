"""The PHI leak test: known identifiers go in, and none comes out of any path.

Synthetic records with known names, CPF/CNS/SSN numbers, phone numbers, addresses, dates and
record numbers (as free-text CSV, and the FHIR Bundle of ``tests/fixtures/fhir``) go through
``feddx data prepare``, ``feddx data partition``, a federated simulation on the tiny model (the
real ServerApp loop and ClientApp handlers, in process, over the raw records, with one node
that fails on purpose with an error quoting a patient's name and record number), ``feddx
evaluate --predictions``, the loopback deployment's data preparation, ``feddx demo`` (its
predictions files, report, registry and serve command), ``feddx train`` and ``feddx
personalize`` on the raw records. Then every file
written under the output folder, every message of the federation and every captured log line
and console output is searched for each identifier, case-insensitively, and for numbers also
as bare digits: none may appear.

The negative control proves the search works: with the de-identification stage bypassed on
one path at a time, the same search finds the identifiers in that path's output.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from feddx.cli import main
from feddx.data import deid_recognizers as rec
from feddx.data.stage import DeidStage
from tiny_federation import tiny_federation_config

REPO = Path(__file__).resolve().parents[1]
FHIR_BUNDLE = REPO / "tests" / "fixtures" / "fhir" / "bundle" / "patient_a.json"
LABELS = ("Enxaqueca", "Pneumonia", "Asma")
SYMPTOMS = {
    "Enxaqueca": "cefaleia pulsátil e fotofobia",
    "Pneumonia": "febre e tosse produtiva",
    "Asma": "sibilância e dispneia noturna",
}
FIRST = ("Benedita", "Joaquim", "Quitéria", "Anselmo", "Florisbela", "Teodoro")
LAST = ("Albuquerque Viana", "Tavares Ribamar", "Cavalcanti Prado", "Nogueira Bastos")
STREETS = ("Rua das Acácias", "Avenida Jequitibá", "Travessa Bem-te-vi")
# The FHIR fixture's patient (tests/fixtures/fhir/build_fixtures.py): her names, identifiers,
# contacts, address, birth date, and the resource ids of her record and encounters.
FHIR_SECRETS = (
    "Maria Clara",
    "Souza",
    "MRN-448812",
    "999-12-3456",
    "555-201-9988",
    "maria.souza@example.org",
    "12 Rua das Flores",
    "13083-970",
    "1970-05-20",
    "2020-01-10",
    "2021-03-05",
    "2021-06-01",
    "pat-a",
    "enc-a1",
    "enc-a2",
    "enc-a3",
)


def _cpf(i: int) -> str:
    base = f"{(381_207_465 + 7_919 * i) % 10**9:09d}"
    d = base + rec.cpf_check_digits(base)
    return f"{d[:3]}.{d[3:6]}.{d[6:9]}-{d[9:]}"


def _cns(i: int) -> str:
    # A provisional card (starts with 7) whose weighted digit sum is a multiple of 11.
    for j in range(100):
        head = f"7{(40_221_873_019_3 + 97 * i + j) % 10**13:013d}"
        last = -sum(int(c) * w for c, w in zip(head, range(15, 1, -1), strict=True)) % 11
        if last < 10:
            d = head + str(last)
            assert rec.is_valid_cns(d)
            return f"{d[:3]} {d[3:7]} {d[7:11]} {d[11:]}"
    raise AssertionError("no valid CNS")


@dataclass(frozen=True)
class Records:
    """The raw inputs (kept apart from the outputs) and the identifiers they hold."""

    csv: Path
    fhir: Path
    secrets: tuple[str, ...]


def write_records(folder: Path, n: int = 24) -> Records:
    """``n`` Portuguese/English free-text records, every one full of identifiers."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    secrets: set[str] = set(FHIR_SECRETS)
    for i in range(n):
        label = LABELS[i % 3]
        first, last = FIRST[i % len(FIRST)], LAST[i % len(LAST)]
        name = f"{first} {last}"
        cpf, cns = _cpf(i), _cns(i)
        ssn = f"219-{10 + i:02d}-{4400 + i:04d}"
        phone = f"(11) 9{8760 + i:04d}-{4321 + i:04d}"
        street = STREETS[i % len(STREETS)]
        address = f"{street}, {100 + i}"
        date = f"{1 + i % 27:02d}/03/2024"
        record = f"{448_800 + i}"
        case_id, patient_id = f"HC-2024-{17_000 + i}", f"PAC-{88_200 + i}"
        text = (
            f"Paciente: {name}, CPF {cpf}, CNS: {cns}, SSN {ssn}. Prontuário nº {record}. "
            f"Reside na {address}. Telefone {phone}. Atendida em {date} com "
            f"{SYMPTOMS[label]}. Sra. {last.split()[0]} refere piora há 2 dias."
        )
        rows.append(
            {
                "id": case_id,
                "patient_id": patient_id,
                "institution": "Hospital Norte" if i % 2 else "Hospital Sul",
                "label": label,
                "text": text,
            }
        )
        digits = rec.digits_of(date)
        secrets |= {name, first, *last.split(), cpf, cns, ssn, phone, street, address, date}
        secrets |= {digits, record, case_id, patient_id}
    path = folder / "records.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fhir = folder / "fhir"
    fhir.mkdir()
    shutil.copy(FHIR_BUNDLE, fhir / FHIR_BUNDLE.name)
    return Records(path, fhir, tuple(sorted(secrets)))


def search_forms(secret: str) -> set[str]:
    """The forms a secret is searched in: itself, case-folded, and its bare digits (numbers
    of 6 digits or more, which cannot occur by chance in what feddx writes)."""
    forms = {secret.casefold()}
    digits = rec.digits_of(secret)
    if len(digits) >= 6:
        forms.add(digits)
    return forms


def find_leaks(texts: dict[str, str], secrets: tuple[str, ...]) -> list[str]:
    """``where: secret`` for every secret found in any of ``texts`` (name -> content)."""
    leaks = []
    folded = {where: text.casefold() for where, text in texts.items()}
    for secret in secrets:
        for form in search_forms(secret):
            leaks += [f"{where}: {secret!r}" for where, text in folded.items() if form in text]
    return sorted(set(leaks))


def files_under(root: Path) -> dict[str, str]:
    """Every file under ``root``, read as text (binary files as latin-1: digits and ASCII
    letters keep their bytes)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = path.read_bytes().decode("latin-1")
    return out


# --------------------------------------------------------------------------------------------
# The paths
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stage_bypassed(active: bool) -> Iterator[None]:
    """While active, the de-identification stage lets every case and id through as is."""
    if not active:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DeidStage, "case", lambda self, case: case)
        mp.setattr(DeidStage, "case_id", lambda self, case_id: case_id)
        yield


@contextlib.contextmanager
def demo_ids_bypassed(active: bool) -> Iterator[None]:
    """While active, the demo's predictions keep the raw case ids (its keyed pseudonyms off)."""
    if not active:
        yield
        return
    from feddx.data.deid import Pseudonymizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Pseudonymizer, "pseudonym", lambda self, value, kind="id": value)
        yield


def run_prepare(records: Records, out: Path, tiny_llama_dir: Path) -> None:
    for source, path, name in (("csv", records.csv, "csv"), ("fhir", records.fhir, "fhir")):
        assert (
            main(["data", "prepare", source, str(path), "--out", str(out / f"{name}.jsonl")]) == 0
        )


def run_partition(records: Records, out: Path, tiny_llama_dir: Path) -> None:
    argv = ["data", "partition", "csv", str(records.csv), "--out", str(out / "csv")]
    assert main([*argv, "--kind", "attribute", "--plot", str(out / "csv.png")]) == 0
    argv = ["data", "partition", "fhir", str(records.fhir), "--out", str(out / "fhir")]
    assert main([*argv, "--num-clients", "1"]) == 0


def run_loopback_data(records: Records, out: Path, tiny_llama_dir: Path) -> None:
    from feddx.federated.deploy.local import prepare_local_data

    prepared = prepare_local_data(f"csv:{records.csv}", out, validation_fraction=0.25)
    assert [n.name for n in prepared.nodes] == ["hospital-norte", "hospital-sul"]
    assert prepared.n_train + prepared.n_eval == 24


def run_predictions(records: Records, out: Path, tiny_llama_dir: Path) -> None:
    argv = ["evaluate", "--data", f"csv:{records.csv}", "--model", str(tiny_llama_dir), "--json"]
    argv += ["--predictions", str(out / "predictions.jsonl"), "--result", str(out / "r.json")]
    argv += ["--report", str(out / "report.html"), "--max-prompt-tokens", "96"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # the stratified 20% test split of 24 cases


def run_demo_path(records: Records, out: Path, tiny_llama_dir: Path) -> None:
    argv = ["demo", "--model", str(tiny_llama_dir), "--data", f"csv:{records.csv}"]
    argv += ["--stages", "data,zero-shot,baseline,centralized,personalized,evaluation,report,serve"]
    argv += ["--epochs", "1", "--max-epochs", "1", "--validation-fraction", "0.3"]
    # configs/demo-csv.yaml on the tiny model's 2 layers; every institution a client, however
    # small, so the personalized stage's files are checked too
    argv += ["--set", "train.lora-top-layers=1", "--set", "min-client-cases=1"]
    assert main([*argv, "--out", str(out / "run"), "--test-fraction", "0.25"]) == 0
    rows = json.loads((out / "run" / "centralized" / "predictions.json").read_text())
    assert len(rows) == 6


def run_train(records: Records, out: Path, tiny_llama_dir: Path) -> None:
    argv = ["train", "--data", f"csv:{records.csv}", "--model", str(tiny_llama_dir)]
    argv += ["--out", str(out / "run"), "--epochs", "1", "--top-layers", "1"]
    assert main(argv) == 0


def run_personalize(records: Records, out: Path, tiny_llama_dir: Path) -> None:
    config = out / "personalize.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"data: csv:{records.csv}\nmodel: {tiny_llama_dir}\nmin_institution_cases: 5\n"
        "methods: [finetune]\nregional: [finetune]\nrounds: 1\nlocal_epochs: 1\n"
        "personal_epochs: 1\nmax_prompt_tokens: 96\nindividual: false\n"
        "lora: {rank: 2, alpha: 4.0, top_layers: 1}\n"
        f"registry: {out / 'registry'}\n"
    )
    assert main(["personalize", "--config", str(config), "--out", str(out / "run")]) == 0


PATHS: dict[str, Callable[[Records, Path, Path], None]] = {
    "prepare": run_prepare,
    "partition": run_partition,
    "loopback": run_loopback_data,
    "predictions": run_predictions,
    "demo": run_demo_path,
    "train": run_train,
    "personalize": run_personalize,
}
# Paths that write case ids but no case text: the negative control finds ids only.
IDS_ONLY = {"predictions", "demo"}
# Paths that write neither ids nor text (an adapter, figures): the negative control has
# nothing to find, and the positive test is what guards them.
NOTHING_TO_FIND = {"train", "personalize"}


def run_federation(records: Records, out: Path, tiny_llama_dir: Path) -> list[str]:
    """Two simulated hospitals train on the raw records; a third node fails on purpose, with a
    data error whose message quotes a patient's name and record number (its data folder is
    named after the patient). Returns every message, serialized."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from feddx.federated.client_app import app as client_app
    from feddx.federated.inprocess import InProcessGrid
    from feddx.federated.server_app import run_server

    broken = records.csv.parent / f"{FIRST[0]} {LAST[0]} 448800" / "notes.csv"
    broken.parent.mkdir(parents=True)
    broken.write_text("label,text\n,Paciente sem diagnóstico\n", encoding="utf-8")
    cfg = tiny_federation_config(
        tiny_llama_dir,
        f"csv:{records.csv}",
        max_eval_cases=4,
        min_available_clients=3,
        out_dir=str(out / "run"),
        client_state_dir=str(out / "clients"),
        activation_cache_dir=str(out / "activations"),
    )
    nodes: list[dict[str, Any]] = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    nodes.append({"data-source": "csv", "data-path": str(broken)})
    grid = InProcessGrid(client_app, cfg.to_run_config(), nodes)
    result = run_server(grid, cfg)
    history = result.history[1]
    assert (history["replies"], history["accepted"], history["aggregated"]) == (3, 2, True)
    assert result.rounds_completed == 1
    messages = []
    for msg in [*grid.delivered, *grid.replies]:
        if msg.has_content():
            blobs = get_all_nested_objects(msg.content).values()
            messages.append(b"".join(o.deflate() for o in blobs).decode("latin-1"))
        else:
            messages.append(f"{msg.error.code} {msg.error.reason}")
    return messages


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEDDX_DEID_KEY", "phi-leak-test-key")
    return tmp_path


@pytest.mark.slow  # about 40 s on two idle cores (the NER model, a federation, an evaluation)
def test_no_identifier_leaves_any_path(
    env: Path,
    tiny_llama_dir: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    records = write_records(env / "input")
    out = env / "out"
    with caplog.at_level(logging.DEBUG):
        for name, run in PATHS.items():
            run(records, out / name, tiny_llama_dir)
        messages = run_federation(records, out / "federation", tiny_llama_dir)
    captured = capfd.readouterr()
    texts = files_under(out)
    texts |= {f"message {i}": m for i, m in enumerate(messages)}
    texts |= {
        "log": "\n".join(r.getMessage() for r in caplog.records),
        "stdout": captured.out,
        "stderr": captured.err,
    }
    # No identifier anywhere (checked first: a leak is reported with where it was found).
    assert find_leaks(texts, records.secrets) == []
    # And everything ran and wrote what it should, de-identified.
    assert {
        "prepare/csv.jsonl",
        "prepare/csv.jsonl.deid.json",
        "partition/csv/manifest.json",
    } <= set(texts)
    assert {"loopback/eval.jsonl.deid.json", "predictions/predictions.jsonl.deid.json"} <= set(
        texts
    )
    assert any(k.startswith("federation/run/") for k in texts)
    assert {"demo/run/results.json", "demo/run/report.html"} <= set(texts)
    demo_rows = json.loads(texts["demo/run/centralized/predictions.json"])
    assert all(row["case_id"].startswith("case-") for row in demo_rows)
    assert "demo/run/centralized/predictions.json.deid.json" in texts
    assert any(k.startswith("train/run/") for k in texts)
    assert any(k.startswith("personalize/run/") for k in texts)
    predictions = texts["predictions/predictions.jsonl"].splitlines()
    assert all(json.loads(row)["case_id"].startswith("case-") for row in predictions)
    manifest = json.loads(texts["partition/csv/manifest.json"])
    assert manifest["deidentification"]["deidentified"] is True
    assert "[NAME]" in texts["prepare/csv.jsonl"] and "[CPF]" in texts["prepare/csv.jsonl"]
    assert any("feddx data:" in m for m in messages)  # the failing node's fixed reply


@pytest.mark.parametrize("path", [p for p in PATHS if p not in NOTHING_TO_FIND])
def test_the_search_finds_identifiers_when_the_stage_is_bypassed(
    path: str, env: Path, tiny_llama_dir: Path
) -> None:
    """The negative control: the same search on one path with de-identification turned off."""
    records = write_records(env / "input")
    out = env / "out" / path
    with stage_bypassed(True), demo_ids_bypassed(path == "demo"):
        PATHS[path](records, out, tiny_llama_dir)
    leaks = find_leaks(files_under(out), records.secrets)
    assert leaks, f"{path}: nothing found with the stage bypassed: the search is broken"
    assert any("HC-2024-" in leak for leak in leaks)  # a raw case id
    if path not in IDS_ONLY:  # ids only there: the file holds no text
        assert any(_cpf(0) in leak for leak in leaks)
