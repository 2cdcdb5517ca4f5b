"""``feddx train`` then ``feddx evaluate``: the adapter is scored on its own held-out split by
default, never on its training cases or other data without an explicit flag, and
``--compare`` pairs two systems on the same cases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import feddx.cli.evaluate  # registers the commands until the CLI imports them
import feddx.cli.train  # noqa: F401
from cli_errors import one_line_error
from feddx.cli import main
from feddx.data.jsonl import write_jsonl
from feddx.data.schema import Case, Finding, Label
from feddx.data.split import stratified_split

_DX = {"Angina": "chest pain: pressure", "GERD": "chest pain: burning", "Pneumonia": "cough"}


def _cases(n: int, prefix: str = "c") -> list[Case]:
    names = list(_DX)
    return [
        Case(
            case_id=f"{prefix}{i}",
            age=20 + i,
            findings=(Finding(name=_DX[names[i % 3]]),),
            label=Label(diagnosis=names[i % 3]),
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cases.jsonl"
    write_jsonl(_cases(18), path)
    return path


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, data_file: Path
) -> tuple[Path, str]:
    """An adapter trained with --seed 1 --test-fraction 0.5 (and its data spec)."""
    out = tmp_path_factory.mktemp("run") / "adapter-run"
    assert main(_train(tiny_llama_dir, data_file, out)) == 0
    return out, f"jsonl:{data_file}"


def _train(tiny_llama_dir: Path, data_file: Path, out: Path) -> list[str]:
    """One step of ``feddx train`` with ``--seed 1 --test-fraction 0.5``: the split that
    evaluate must then find in the adapter's record."""
    argv = ["train", "--data", f"jsonl:{data_file}", "--model", str(tiny_llama_dir)]
    argv += ["--out", str(out), "--seed", "1", "--test-fraction", "0.5"]
    return [*argv, "--max-steps", "1", "--top-layers", "1"]


def _evaluate(tiny_llama_dir: Path, *args: str) -> list[str]:
    return ["evaluate", "--model", str(tiny_llama_dir), "--no-baseline", *args]


def test_plain_evaluate_scores_the_adapters_own_test_split(
    trained: tuple[Path, str],
    tiny_llama_dir: Path,
    data_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, _ = trained
    preds = tmp_path / "p.jsonl"
    flags = ["--predictions", str(preds), "--assume-deidentified", "--json"]
    # no --data, --seed or --test-fraction: all three come from the adapter
    assert main(_evaluate(tiny_llama_dir, "--adapter", str(out), *flags)) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["meta"]["seed"], result["meta"]["test_fraction"]) == (1, 0.5)
    assert result["meta"]["split_from"] == "adapter"
    _, held_out = stratified_split(_cases(18), test_fraction=0.5, seed=1)
    scored = {json.loads(line)["case_id"] for line in preds.read_text().splitlines()}
    assert scored == {c.case_id for c in held_out}  # its own held-out cases, none it trained on
    # the same with --data named: still the adapter's split (the default 0.2/seed 0 is not used)
    assert (
        main(
            _evaluate(
                tiny_llama_dir, "--adapter", str(out), "--data", f"jsonl:{data_file}", "--json"
            )
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["meta"]["seed"] == 1


def test_another_split_is_refused_in_one_line_unless_allowed(
    trained: tuple[Path, str], tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = trained
    assert main(_evaluate(tiny_llama_dir, "--adapter", str(out), "--seed", "0")) == 2
    err = one_line_error(capsys)
    assert "trained with --seed 1 --test-fraction 0.5" in err and "--allow-other-split" in err
    argv = _evaluate(tiny_llama_dir, "--adapter", str(out), "--seed", "0", "--allow-other-split")
    assert main([*argv, "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("other split (--allow-other-split)") for n in notes)
    assert main(argv) == 0  # the table output says so too
    assert "note: other split" in capsys.readouterr().out


def test_other_data_is_refused_in_one_line_unless_allowed(
    trained: tuple[Path, str],
    tiny_llama_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, _ = trained
    other = tmp_path / "other.jsonl"
    write_jsonl(_cases(12, prefix="o"), other)
    argv = _evaluate(tiny_llama_dir, "--adapter", str(out), "--data", f"jsonl:{other}")
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "was trained on jsonl:" in err and "--allow-other-data" in err
    assert main([*argv, "--allow-other-data", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("other data: adapter") for n in notes)


def test_train_prints_the_exact_evaluate_command(
    tiny_llama_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_train(tiny_llama_dir, data_file, out)) == 0
    printed = " ".join(capsys.readouterr().out.split())
    hint = re.search(r"evaluate with: feddx (evaluate --adapter \S+)", printed)
    assert hint is not None and "--seed 1 --test-fraction 0.5" in printed
    # following the hint scores the held-out split (the one the hint names)
    assert main([*hint.group(1).split(), "--model", str(tiny_llama_dir), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)["meta"]
    assert (meta["seed"], meta["test_fraction"]) == (1, 0.5)


def test_compare_an_adapter_with_the_base_model_and_with_a_predictions_file(
    trained: tuple[Path, str],
    tiny_llama_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, _ = trained
    monkeypatch.setenv("FEDDX_DEID_KEY", "compare-test-key")  # files and live rows pair up
    argv = _evaluate(tiny_llama_dir, "--compare", str(out), "base", "--resamples", "200", "--json")
    assert main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["n"] == 9 and body["meta"]["seed"] == 1  # the adapter's held-out split
    assert body["interval"]["resamples"] == 200
    assert body["difference"] == pytest.approx(body["top1_a"] - body["top1_b"])
    assert 0.0 <= body["mcnemar"]["p_value"] <= 1.0
    # a predictions file of the same cases pairs with a live system (ids as pseudonyms)
    preds = tmp_path / "base.jsonl"
    assert (
        main([*_evaluate(tiny_llama_dir, "--adapter", str(out)), "--predictions", str(preds)]) == 0
    )
    capsys.readouterr()
    assert (
        main(_evaluate(tiny_llama_dir, "--compare", str(preds), str(out), "--resamples", "200"))
        == 0
    )
    shown = capsys.readouterr().out
    assert "Comparison on 9 cases" in shown and "paired-bootstrap interval" in shown
    assert "McNemar exact p = 1" in shown  # the same adapter twice: no discordant case
