"""``benchmarks/crosslingual.py``'s record of a timed story run: the wall time, peak RSS and
exit status read from ``/usr/bin/time -v``, and the results file's verdict on the 15-minute
target and on whether the story reproduced condition (c)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "crosslingual.py"

TIME_V = """report written to runs/story-xl/report.html
\tCommand being timed: ".venv/bin/feddx demo --story crosslingual"
\tElapsed (wall clock) time (h:mm:ss or m:ss): {wall}
\tMaximum resident set size (kbytes): 3145728
\tExit status: 0
"""


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_crosslingual", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("wall", "seconds"), [("12:41.27", 761.27), ("1:02:03", 3723.0)])
def test_time_v_reads_wall_time_in_both_formats(
    bench: ModuleType, wall: str, seconds: float
) -> None:
    got = bench._time_v(TIME_V.format(wall=wall))
    assert got == {"wall_s": pytest.approx(seconds), "peak_rss_kib": 3145728, "exit": 0}


def test_a_log_without_the_summary_is_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit, match="no /usr/bin/time -v summary"):
        bench._time_v("report written to x\n")


def _saved(fed: float, pers: float) -> dict[str, Any]:
    return {
        "gemma3-270m": {
            "federation-pt": {"top1": fed},
            "federation-pt+personalized": {"top1": pers, "seconds": 719.0},
        }
    }


def _record(folder: Path, wall_s: float, fed: float, pers: float) -> None:
    record = {
        "wall_s": wall_s,
        "peak_rss_kib": 3145728,
        "exit": 0,
        "command": "CMD",
        "report": "runs/story-xl/report.html",
        "report_exists": True,
        "last_line": "report written to runs/story-xl/report.html",
        "systems": {"federation-pt": fed, "federation-pt+personalized": pers},
        "note": "",
    }
    (folder / "story-timing.json").write_text(json.dumps(record))  # bench.STORY_RECORD


def test_story_section_says_within_target_and_identical(bench: ModuleType, tmp_path: Path) -> None:
    _record(tmp_path, 761.3, 0.117, 0.467)
    text = "\n".join(bench._story_section(_saved(0.117, 0.467), tmp_path))
    assert "12 min 41 s" in text and "within the 15-minute target" in text
    assert "peak RSS 3.00 GiB" in text and "identical to (c) above" in text


def test_story_section_flags_over_target_and_different_figures(
    bench: ModuleType, tmp_path: Path
) -> None:
    _record(tmp_path, 901.0, 0.117, 0.400)
    text = "\n".join(bench._story_section(_saved(0.117, 0.467), tmp_path))
    assert "**over** the 15-minute target" in text and "**not** (c)'s" in text


def test_story_section_without_a_record_says_not_timed(bench: ModuleType, tmp_path: Path) -> None:
    text = "\n".join(bench._story_section(_saved(0.117, 0.467), tmp_path))
    assert "not timed separately" in text
