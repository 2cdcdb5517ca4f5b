"""``benchmarks/bench_scale.py``'s bookkeeping: which process counts as the server, the
per-client slope, and which rounds count as steady (no start-up, no evaluation)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        (["/v/bin/python", "/v/bin/flower-superlink", "--simulation"], "superlink"),
        (["/v/bin/python", "/v/bin/flower-superexec", "--insecure"], "superexec"),
        (["/v/bin/python", "/v/bin/flwr-simulation", "--token", "x"], "simulation"),
        (["/v/bin/python", "/v/bin/flwr", "log", "123", "--stream"], "flwr-cli"),
        (["ray::ClientAppActor.run"], "ray-client-worker"),
        (["/v/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/r"], "ray-runtime"),
    ],
)
def test_processes_are_grouped_by_role(bench: ModuleType, cmdline: list[str], role: str) -> None:
    assert bench.role_of(cmdline) == role


def test_only_superlink_superexec_and_the_serverapp_count_as_the_server(
    bench: ModuleType,
) -> None:
    assert set(bench.SERVER_ROLES) == {"superlink", "superexec", "simulation"}


def test_slope_is_the_least_squares_cost_per_client(bench: ModuleType) -> None:
    b, a = bench.slope([10.0, 30.0, 100.0], [1.0 + 0.5 * x for x in (10, 30, 100)])
    assert b == pytest.approx(0.5)
    assert a == pytest.approx(1.0)


def test_steady_rounds_leave_out_the_first_and_the_evaluated_last(bench: ModuleType) -> None:
    assert bench.steady_round_seconds({"round_seconds": [9.0, 2.0, 4.0, 7.0]}) == 3.0
    assert bench.steady_round_seconds({"round_seconds": [9.0, 2.0]}) == 2.0
    assert bench.steady_round_seconds({"round_seconds": [9.0]}) == 9.0
