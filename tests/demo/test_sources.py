"""``feddx demo --data SOURCE:PATH`` on every shipped source (issue 26 item 7), each on a slice:
the tiny Llama, a few dozen cases, every stage. A stage that does not apply to the data is
skipped with its reason (console, ``results.json``, report), never an error; ``feddx report``
rebuilds the demo's page byte for byte. The full runs' figures: results/demo-sources.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from feddx.cli import main
from feddx.demo.options import SOURCE_CONFIGS, DemoOptions, demo_options

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SOURCES = {
    "csv": f"csv:{SHARED}/symptom2disease/symptom2disease_sample.csv",
    "ddxplus": f"ddxplus:{SHARED}/ddxplus",
    "fhir": f"fhir:{SHARED}/fhir/synthea_bulk_10_patients",
    "eicu": f"eicu:{SHARED}/eicu_demo",
}
ALL = "data,zero-shot,baseline,centralized,federated,personalized,evaluation,report,serve"


def _run(tiny: Path, data: str, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    argv = [
        "demo",
        "--model",
        str(tiny),
        "--data",
        data,
        "--out",
        str(out),
        "--stages",
        ALL,
        "--limit",
        "12",
        "--epochs",
        "1",
        "--max-epochs",
        "1",
        "--set",
        "max-cases=80",
        "--set",
        "train.lora-top-layers=1",  # the tiny model has 2 layers
        "--set",
        "engine=inprocess",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_shipped_source_runs_the_whole_demo(
    source: str,
    tiny_llama_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the shared datasets)")
    monkeypatch.setenv("FEDDX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    results = _run(tiny_llama_dir, SOURCES[source], out, capsys)
    captured = capsys.readouterr()
    said = captured.out
    # not a terminal: every scoring pass writes timestamped progress lines, as training does
    # (a full DDXPlus demo was silent for 10 minutes of validation scoring before)
    for stage in ("zero-shot scoring", "validating", "federation"):
        assert re.search(rf"Z demo: {stage}\S* .*\d+/\d+", captured.err), stage
    assert re.search(r"Z demo: federation \d+/\d+ rounds", captured.err)  # counted in rounds
    stages = results["stages"]
    # the source's shipped config was used (its layout is recorded with the run)
    assert results["config"]["train"]["lora_targets"][0] == "q_proj"
    assert {"zero-shot", "baseline", "centralized", "federated", "report", "serve"} <= set(stages)
    # none of the shipped sources names institutions big enough to personalize to: the stage is
    # skipped with its reason, in the output, the record and the report
    why = results["skipped"]["personalized"]
    assert "nothing to personalize to" in why
    assert f"personalized: skipped: {why}"[:60] in " ".join(said.split())
    page = (out / "report.html").read_text()
    assert "Stages skipped" in page and "nothing to personalize to" in page
    # feddx report rebuilds exactly the page the demo wrote
    written = (out / "report.html").read_bytes()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_bytes() == written


def test_each_source_has_its_shipped_config_and_options_override_it(tmp_path: Path) -> None:
    for source, path in SOURCE_CONFIGS.items():
        opts = demo_options(f"{source}:x", None, {}, out_dir=tmp_path, stages=("data",))
        assert opts.train != DemoOptions().train, path  # each ships its own layout
    # the built-in story keeps the built-in settings
    assert demo_options("uci-heart", None, {}, out_dir=tmp_path).train == DemoOptions().train
    # command-line options beat the file, a named --config replaces the source's
    opts = demo_options("csv:x", None, {"max_epochs": 3}, out_dir=tmp_path)
    assert opts.max_epochs == 3 and opts.seed == 1
    own = tmp_path / "mine.yaml"
    own.write_text("seed: 5\ntrain:\n  lora-top-layers: 6\n")
    opts = demo_options("csv:x", own, {}, out_dir=tmp_path)
    assert opts.seed == 5 and opts.train.lora_top_layers == 6 and opts.max_epochs == 4


def test_a_config_with_a_bad_key_or_a_run_setting_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lora-top-layer: 6\n")
    assert main(["demo", "--data", "uci-heart", "--config", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lora-top-layer" in err and str(bad) in err and "Traceback" not in err
    bad.write_text("out-dir: elsewhere\n")
    assert main(["demo", "--data", "uci-heart", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "belongs on the command line" in capsys.readouterr().err
