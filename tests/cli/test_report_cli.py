"""``feddx report RUN_DIR``: the demo's page rebuilt from the run folder's results.json alone."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from feddx.cli import main


def _metrics(top1: float, per: dict[str, float]) -> dict[str, Any]:
    return {
        "n": 10,
        "top1": top1,
        "top3": 0.9,
        "macro_f1": 0.31,
        "balanced_accuracy": 0.3,
        "ece": 0.041,
        "per_hospital": per,
        "seconds": 12.5,
    }


def _results() -> dict[str, Any]:
    per = {"A": 0.5, "B": 0.6}
    rounds = [
        {"round": r, "top1": t, "train_loss": 1.0 / r, "bytes_sent": 1000, "bytes_received": 900}
        for r, t in ((1, 0.4), (2, 0.55))
    ]
    return {
        "format": 1,
        "config": {"model": "tiny", "dataset": "uci-heart", "seed": 0},
        "stages": {
            "data": {
                "source": "uci-heart",
                "n_cases": 50,
                "n_train": 40,
                "n_test": 10,
                "candidates": ["x", "y"],
                "majority_class": "x",
                "majority_rate": 0.4,
                "partition": {
                    "kind": "institution",
                    "clients": 2,
                    "train": {"A": 25, "B": 15},
                    "test": {"A": 6, "B": 4},
                    "regions": {"A": "north", "B": "south"},
                },
                "partition_note": "one client per institution (2)",
                "split": "stratified by diagnosis",
                "seconds": 0.2,
            },
            "zero-shot": _metrics(0.4, {"A": 0.5, "B": 0.25}),
            "centralized": _metrics(0.617, per),
            "federated": {
                **_metrics(0.583, per),
                "budget": "2 rounds x 2 local epochs",
                "clients": 2,
                "learning_rate": 0.001,
                "lr_schedule": "one cosine decay over the rounds",
                "rounds": rounds,
                "round_eval_cases": 5,
                "bytes_per_update": 450.0,
                "bytes_sent": 2000,
                "bytes_received": 1800,
                "full_model_bytes": 538_000_000,
                "full_model_params": 134_515_008,
                "full_model_exchange_bytes": 4 * 2 * 538_000_000,
                "epsilon": None,
                "dp": "none",
            },
            "evaluation": {
                "stages": ["zero-shot", "centralized", "federated"],
                "binary": {"centralized": {"n": 10, "accuracy": 0.812}},
                "verdicts": [
                    "federated vs centralized: -3.4 points top-1 (MORE than 3 points behind)"
                ],
                "seconds": 0.1,
            },
        },
        "per_hospital": [
            {
                "hospital": "all",
                "n": 10,
                "majority_rate": 0.4,
                "zero-shot": 0.4,
                "centralized": 0.617,
                "federated": 0.583,
            },
            {
                "hospital": "A",
                "n": 6,
                "majority_rate": 0.5,
                "zero-shot": 0.5,
                "centralized": 0.5,
                "federated": 0.5,
            },
            {
                "hospital": "B",
                "n": 4,
                "majority_rate": 0.25,
                "zero-shot": 0.25,
                "centralized": 0.6,
                "federated": 0.6,
            },
        ],
    }


def test_report_rebuilds_the_page_from_results_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    assert main(["report", str(tmp_path)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (tmp_path / "report.html").read_text()
    # every figure shown comes from the file
    for figure in ("0.617", "0.583", "0.812", "134.5M parameters", "-3.4 points"):
        assert figure in page
    assert "Differential privacy was off" in page
    # self-contained: the plots are embedded PNGs, nothing is fetched, no script runs
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) >= 4
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # rebuilding gives the same page
    first = page
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").read_text() == first


def test_report_of_a_folder_without_results_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("feddx: error: ") and "not a feddx demo run folder" in err
    assert err.count("\n") == 1
