"""``feddx demo`` end to end on a tiny random Llama (the real model: the smollm2-marked tests).

The fast stages (data, zero-shot, baseline, centralized, evaluation, report) run for real on
UCI Heart's 920 cases with 12 test cases; the federated stage on Flower's runtime is marked
slow. A module-scoped run folder is built once and copied where a test changes it.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from feddx.cli import main

FAST = "data,zero-shot,baseline,centralized,evaluation,report"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_llama import make_tiny_llama
    from transformers import AutoTokenizer

    from feddx.model.loading import resolve_model

    path = Path(resolve_model("smollm2-135m-instruct").location)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_llama(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _argv(model: Path, out: Path, stages: str = FAST, *extra: str) -> list[str]:
    return [
        "demo",
        "--model",
        str(model),
        "--stages",
        stages,
        "--limit",
        "12",
        "--epochs",
        "1",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module", autouse=True)
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One feddx cache (activations) for the module's runs, as one machine would have."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDDX_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def finished_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("demo") / "run"
    assert main(_argv(tiny_dir, run)) == 0
    return run


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text())


def test_the_fast_stages_record_their_figures_and_artefacts(finished_run: Path) -> None:
    r = _results(finished_run)
    data = r["stages"]["data"]
    assert (data["n_cases"], data["n_train"], data["n_test"]) == (920, 736, 12)
    train = data["partition"]["train"]
    assert len(train) == 4 and sum(train.values()) == 736
    assert sum(data["partition"]["test"].values()) == 12
    for stage in ("zero-shot", "baseline", "centralized"):
        e = r["stages"][stage]
        assert e["n"] == 12 and {"top1", "top3", "macro_f1", "ece"} <= set(e)
        rows = json.loads((finished_run / stage / "predictions.json").read_text())
        assert len(rows) == 12
        assert e["top1"] == pytest.approx(sum(x["correct"] for x in rows) / 12)
    assert (finished_run / "centralized" / "adapter").is_dir()
    rows = r["per_hospital"]
    assert rows[0]["hospital"] == "all" and rows[0]["n"] == 12
    assert sum(x["n"] for x in rows[1:]) == 12
    assert rows[0]["centralized"] == r["stages"]["centralized"]["top1"]
    binary = r["stages"]["evaluation"]["binary"]["centralized"]
    assert binary["n"] == 12 and 0 <= binary["accuracy"] <= 1
    page = (finished_run / "report.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    assert f"{r['stages']['centralized']['top1']:.3f}" in page


def test_feddx_report_rebuilds_the_demos_page_byte_for_byte(
    finished_run: Path, tmp_path: Path
) -> None:
    # the demo writes its page from the final record (its own stage's time included), so the
    # rebuild from results.json alone is the same file (issue 26 item 6)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    written = (run / "report.html").read_bytes()
    assert b"Time per stage" in written
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").read_bytes() == written


def test_binary_task_sums_the_disease_grades() -> None:
    from feddx.demo.stages import UCI_NO_DISEASE, _binary_accuracy

    def row(gold: str, p_none: float) -> dict[str, Any]:
        return {
            "gold": gold,
            "ranked": [
                {"name": UCI_NO_DISEASE, "probability": p_none},
                {"name": "a", "probability": (1 - p_none) / 2},
                {"name": "b", "probability": (1 - p_none) / 2},
            ],
        }

    # P(disease) 0.6 > 0.5 although "no disease" is the single most probable grade
    out = _binary_accuracy(
        [row("a", 0.4), row(UCI_NO_DISEASE, 0.7), row("b", 0.55)], UCI_NO_DISEASE
    )
    assert out == {"n": 3, "accuracy": pytest.approx(2 / 3), "sensitivity": 0.5, "precision": 1.0}


def test_rerun_skips_finished_stages_and_force_reruns(
    finished_run: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _results(run)
    capsys.readouterr()
    assert main(_argv(tiny_dir, run, "data,zero-shot,centralized,evaluation")) == 0
    out = capsys.readouterr().out
    assert "zero-shot: finished earlier, skipped" in out
    assert "centralized: finished earlier, skipped" in out
    after = _results(run)
    assert (
        after["stages"]["centralized"]["finished_at"]
        == before["stages"]["centralized"]["finished_at"]
    )
    assert main(_argv(tiny_dir, run, "zero-shot", "--force")) == 0
    out = capsys.readouterr().out
    assert "2. Zero-shot" in out and "skipped" not in out
    forced = _results(run)["stages"]["zero-shot"]
    assert forced["top1"] == before["stages"]["zero-shot"]["top1"]  # same seed, same figure


def test_json_prints_the_results_object(
    finished_run: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    capsys.readouterr()
    assert main([*_argv(tiny_dir, run, "data,zero-shot"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stages"]["zero-shot"]["top1"] == _results(run)["stages"]["zero-shot"]["top1"]


def test_other_settings_are_refused_without_force(
    finished_run: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert main([*_argv(tiny_dir, run, "zero-shot"), "--seed", "3"]) != 0
    err = capsys.readouterr().err
    assert "other settings (seed 0 -> 3)" in err and "--force" in err


def test_unknown_stage_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--stages", "zero-shot,nope"]) == 2
    assert "unknown stage(s) nope" in capsys.readouterr().err


@pytest.mark.slow  # the fast stages twice, in a subprocess
def test_a_killed_run_resumes_and_ends_with_the_same_figures(
    finished_run: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """Kill the demo process once the centralized stage's entry is written; a second run skips
    the finished stages, runs the rest and reports what the uninterrupted run reported."""
    run = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "feddx"), *_argv(tiny_dir, run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            path = run / "results.json"
            if path.is_file() and "centralized" in json.loads(path.read_text() or "{}").get(
                "stages", {}
            ):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=60)
    partial = _results(run)["stages"]
    assert "centralized" in partial
    assert main(_argv(tiny_dir, run)) == 0
    resumed, full = _results(run), _results(finished_run)
    for stage in ("zero-shot", "baseline", "centralized"):
        assert resumed["stages"][stage]["top1"] == full["stages"][stage]["top1"]
        assert resumed["stages"][stage]["ece"] == pytest.approx(full["stages"][stage]["ece"])
    assert resumed["per_hospital"] == full["per_hospital"]


@pytest.mark.slow
def test_federated_personalized_and_serve_stages_in_process(
    finished_run: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    from rich.console import Console

    from feddx.demo import DemoOptions, run_demo

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    opts = DemoOptions(
        model=str(tiny_dir),
        limit=12,
        epochs=1,
        out_dir=run,
        engine="inprocess",
        stages=("data", "federated", "personalized", "evaluation", "report", "serve"),
    )
    results = run_demo(opts, Console(file=io.StringIO()))
    fed = results["stages"]["federated"]
    assert fed["rounds_planned"] == 2 and fed["clients"] == 4  # 1 epoch x 4 clients / 2 local
    assert fed["full_model_bytes"] > 100 * fed["bytes_per_update"]
    # each stage's budget is chosen on validation; equal work: 4 epochs vs 2 rounds x 2
    assert fed["rounds_chosen"] in (1, 2) and fed["round_eval"] == "validation split"
    assert results["stages"]["centralized"]["equal_work"]["epochs"] == 4
    assert fed["equal_work"]["rounds"] == 2
    comparisons = results["stages"]["evaluation"]["comparisons"]
    assert {"equal_work", "own_budgets"} <= set(comparisons)
    assert comparisons["equal_work"]["interval"]["resamples"] == 10_000
    verdicts = results["stages"]["evaluation"]["verdicts"]
    own = next(v for v in verdicts if "budget chosen on validation" in v)
    assert "ahead" not in own  # the budgets' work differs or not: never "ahead" here
    pers = results["stages"]["personalized"]
    hospitals = {
        "Cleveland Clinic",
        "Hungarian Inst. of Cardiology",
        "Univ. Hospitals Zurich/Basel",
        "VA Long Beach",
    }
    assert set(pers["answering"]) == hospitals
    adapters = pers["adapters"]
    assert len(adapters) == 3 + 2  # a regional adapter per region, the USA's two institutions
    for a in adapters.values():
        g = a["gate"]
        assert a["registered"] == g["accepted"] == (g["child_correct"] - g["parent_correct"] >= 1)
    # no hospital is answered by an adapter that did not beat its parent on validation
    assert all(
        name == "federated" or adapters[name]["registered"] for name in pers["answering"].values()
    )
    serve = results["stages"]["serve"]
    kept = [n for n, a in adapters.items() if a["registered"]]
    assert serve["adapters"][0] == "global/v1" and len(serve["adapters"]) == 1 + len(kept)
    assert set(serve["not_registered"]) == set(adapters) - set(kept)
    assert "--registry" in serve["command"] and "--keys" in serve["command"]

    # A federated stage that has to run again (here: its entry lost, as after an interrupted
    # forced rerun) makes the personalized stage built on it run again too, unforced.
    data = _results(run)
    del data["stages"]["federated"]
    (run / "results.json").write_text(json.dumps(data))
    again = run_demo(opts, Console(file=io.StringIO()))
    assert again["stages"]["personalized"]["finished_at"] > pers["finished_at"]  # ran again
    assert again["stages"]["federated"]["top1"] == fed["top1"]


def test_a_csv_demo_serves_its_own_candidates(tiny_dir: Path, tmp_path: Path) -> None:
    """A non-UCI demo: its adapter records the run's candidates, the serve command names the
    run's own list, and a service on UCI Heart's list would refuse that adapter."""
    from feddx.model.adapter import read_adapter_info
    from feddx.serve.adapters import (
        CandidatesMismatch,
        adapter_candidates,
        check_candidates,
        default_candidates,
    )

    labels = ("Asthma", "Migraine", "Pneumonia")
    rows = ["id,institution,label,text"]
    rows += [
        f"c{i},{'North' if i % 2 else 'South'},{labels[i % 3]},{labels[i % 3].lower()} signs {i}"
        for i in range(60)
    ]
    data = tmp_path / "cases.csv"
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    argv = _argv(tiny_dir, run, "data,centralized,serve", "--data", f"csv:{data}")
    # the source's shipped config (configs/demo-csv.yaml) but for the tiny model's 2 layers
    assert main([*argv, "--max-epochs", "1", "--set", "train.lora-top-layers=1"]) == 0
    r = _results(run)
    command = r["stages"]["serve"]["command"]
    listed = (run / "candidates.txt").read_text().split()
    assert (
        listed == list(labels) and f"--candidates {(run / 'candidates.txt').resolve()}" in command
    )
    recorded = adapter_candidates(read_adapter_info(run / "centralized" / "adapter").metadata)
    assert recorded is not None and recorded.names == list(labels)
    service_list = default_candidates(str((run / "candidates.txt").resolve()))
    assert service_list is not None
    check_candidates("global/v1", recorded.names, service_list.names, "service's")
    uci = default_candidates("uci-heart")
    assert uci is not None
    with pytest.raises(CandidatesMismatch, match="global/v1 was trained on 3 candidates"):
        check_candidates("global/v1", recorded.names, uci.names, "service's")
    # predictions name cases by keyed pseudonyms only
    preds = json.loads((run / "centralized" / "predictions.json").read_text())
    assert preds and all(p["case_id"].startswith("case-") for p in preds)
    assert (run / "centralized" / "predictions.json.deid.json").is_file()
