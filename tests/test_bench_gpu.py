"""``benchmarks/bench_gpu.py`` on a machine without CUDA: one line, a non-zero exit code,
nothing loaded (no traceback, no model built)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_without_cuda_it_says_so_in_one_line_and_fails() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "1b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("bench_gpu: needs a CUDA GPU")
    assert "nothing was measured" in lines[0]
