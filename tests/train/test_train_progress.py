"""Progress of ``feddx train`` when its output is a log, not a terminal (issue 26 item 2)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from train_fixtures import make_cases, make_tiny_llama  # type: ignore[import-not-found]

from feddx.cli.progress import (
    LineProgress,
    LogFormat,
    NoStageProgress,
    configure_output,
    progress_for,
    progress_style,
)
from feddx.data.jsonl import write_jsonl

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"


class _Stream(io.StringIO):
    """Records whether each line was flushed right after it was written."""

    def __init__(self) -> None:
        super().__init__()
        self.unflushed = 0

    def write(self, s: str) -> int:
        self.unflushed += 1
        return super().write(s)

    def flush(self) -> None:
        self.unflushed = 0
        super().flush()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_give_stage_counts_elapsed_rate_and_eta_and_are_flushed() -> None:
    stream, clock = _Stream(), _Clock()
    p = LineProgress("train", stream, interval=5.0, clock=clock)
    p.started("caching frozen layers", 100)
    assert stream.unflushed == 0
    clock.now = 2.0
    p.advanced(20)  # within the interval: no line
    clock.now = 10.0
    p.advanced(30)  # 50 of 100 in 10 s
    clock.now = 12.0
    p.advanced(50)  # within the interval again: only the end line follows
    p.finished()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert all(re.match(rf"{STAMP} train: caching frozen layers ", line) for line in lines)
    assert "0/100 cases (0%)" in lines[0]
    assert "50/100 cases (50%)" in lines[1]
    assert "elapsed 0:00:10" in lines[1] and "5.00 cases/s" in lines[1]
    assert "ETA 0:00:10" in lines[1]
    assert "100/100 cases (100%)" in lines[2] and "done in 0:00:12" in lines[2]
    assert stream.unflushed == 0


def test_training_counts_steps_with_the_loop_status_and_json_lines_parse() -> None:
    stream, clock = _Stream(), _Clock()
    p = LineProgress("train", stream, as_json=True, interval=0.0, clock=clock)
    p.started("training", 12, done=4)  # a resumed run
    clock.now = 4.0
    p.advanced(2, info="loss 2.345  6.1 ex/s")
    p.finished()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["started", "progress", "finished"]
    mid = records[1]
    assert mid["command"] == "train" and mid["stage"] == "training" and mid["unit"] == "steps"
    assert (mid["done"], mid["total"], mid["elapsed_s"], mid["rate_per_s"]) == (6, 12, 4.0, 0.5)
    assert mid["eta_s"] == 12.0 and mid["info"] == "loss 2.345  6.1 ex/s"


def test_update_form_starts_and_ends_stages() -> None:
    stream, clock = _Stream(), _Clock()
    p = LineProgress("evaluate", stream, interval=60.0, clock=clock)
    for done in range(1, 4):
        p.update("fine-tuned", done, 3)
    p.update("baseline", 1, 1)
    text = stream.getvalue()
    assert "fine-tuned 0/3" in text and "fine-tuned 3/3" in text and "baseline 1/1" in text
    assert len(text.splitlines()) == 4


def test_only_slow_stages_are_shown_when_asked() -> None:
    stream, clock = _Stream(), _Clock()
    p = LineProgress("data", stream, interval=5.0, clock=clock, only_slow=True)
    p.started("loading csv", 0)
    clock.now = 1.0
    p.advanced(100)
    p.finished()
    assert stream.getvalue() == ""  # a quick read: silent
    p.started("loading ddxplus", 0)
    clock.now = 7.0
    p.advanced(5000)
    p.finished()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "loading ddxplus: 5,000 cases" in lines[0]
    assert "ETA" not in lines[0]  # no size known in advance: no ETA


def test_watching_reports_work_done_elsewhere_until_the_block_ends() -> None:
    """A federation's rounds run in Flower's processes; the CLI polls their checkpoints."""
    from feddx.cli.progress import watching

    stream = _Stream()
    p = LineProgress("federate", stream, interval=0.0)
    done = iter([0, 1, 2, 2, 2])
    with watching(p, "federation", 3, lambda: next(done, 2), every=0.01):
        import time

        time.sleep(0.2)
    lines = stream.getvalue().splitlines()
    assert any("federation 1/3 rounds" in x for x in lines)
    assert "federation 2/3 rounds" in lines[-1]
    assert "done in" in lines[-1]  # ended short of 3: the last count is still reported


def test_style_follows_quiet_and_log_format() -> None:
    try:
        configure_output(quiet=True, log_format=LogFormat.json)
        assert progress_style() == "off"
        with progress_for("train") as p:
            assert isinstance(p, NoStageProgress)
        configure_output(log_format=LogFormat.json)
        assert progress_style() == "json"
        configure_output()  # auto: pytest's captured stderr is no terminal
        assert progress_style() == "plain"
    finally:
        configure_output()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("progress")
    model = root / "model"
    make_tiny_llama(len(tokenizer), layers=3).save_pretrained(model)
    tokenizer.save_pretrained(model)
    data = root / "cases.jsonl"
    write_jsonl(make_cases(30), data)
    return {"model": model, "data": data, "root": root}


def test_train_into_a_log_writes_progress_lines_while_it_runs(tiny_run: dict[str, Path]) -> None:
    """``feddx train ... > log 2>&1``: stdout and stderr are a file, not a terminal; the log
    gets timestamped lines for the activation cache and the steps, before the result."""
    out = tiny_run["root"] / "run"
    log = tiny_run["root"] / "train.log"
    argv = [
        sys.executable,
        "-c",
        "import sys; from feddx.cli import main; sys.exit(main())",
        "train",
        "--data",
        f"jsonl:{tiny_run['data']}",
        "--model",
        str(tiny_run["model"]),
        "--out",
        str(out),
        "--top-layers",
        "1",  # 2 frozen layers below: the activation cache runs first
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--limit",
        "10",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    env.pop("FEDDX_LOG_FORMAT", None)
    with log.open("w") as f:
        done = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    lines = text.splitlines()
    cache = [i for i, x in enumerate(lines) if re.match(rf"{STAMP} train: caching frozen", x)]
    steps = [i for i, x in enumerate(lines) if re.match(rf"{STAMP} train: training ", x)]
    result = next(i for i, x in enumerate(lines) if "adapter saved to" in x)
    assert cache and steps, text
    assert "/10 cases" in lines[cache[-1]]  # --limit 10: ten cases cached
    assert "6/6 steps" in lines[steps[-1]]  # 10 cases, batch 4, 2 epochs
    assert max(cache) < min(steps) < max(steps) < result
    assert "\x1b[" not in text  # no bar redraws or colours in a log
    meta = json.loads((out / "train_result.json").read_text())
    assert meta["n_train"] == 10 and meta["limit"] == 10


def test_the_last_unit_is_written_once_by_the_finished_line() -> None:
    """A stage whose last unit lands after the interval wrote 100% twice (a progress line and
    the finished line); a slow stage of one step still gets its finished line."""
    stream, clock = _Stream(), _Clock()
    p = LineProgress("demo", stream, interval=5.0, clock=clock, only_slow=True)
    p.started("validating epoch 1", 16)
    clock.now = 6.0
    p.advanced(16)
    p.finished()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "16/16" in lines[0] and "done in" in lines[0], lines
