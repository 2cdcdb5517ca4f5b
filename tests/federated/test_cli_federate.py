"""``feddx federate``: a settings file runs a federation end to end; mistakes are one line and
exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import feddx.cli.federate  # noqa: F401  # registers the command (until cli/__init__ imports it)
from feddx.cli import main
from feddx.federated.config import FederatedConfig


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_config(path: Path, cfg: FederatedConfig) -> Path:
    from feddx.federated.deploy.control import toml_value

    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.to_run_config().items()))
    return path


def test_federate_runs_a_config_file(
    fed_config: FederatedConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "fed.toml", fed_config.replace(num_rounds=1))
    out = tmp_path / "cli-run"
    code, stdout, err = run(
        [
            "federate",
            "--config",
            str(config),
            "--engine",
            "inprocess",
            "--out",
            str(out),
            "--set",
            "strategy=fedmedian",
        ],
        capsys,
    )
    assert code == 0, err
    assert "fedmedian" in stdout and "Rounds" in stdout
    history = json.loads((out / "history.json").read_text())
    assert history["summary"]["strategy"] == "fedmedian"
    assert history["summary"]["rounds_completed"] == 1
    # stderr is no terminal here: the rounds, read from the run's checkpoints, as lines
    assert re.search(r"Z federate: federation 1/1 rounds \(100%\), done in", err), err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = 3\n", "unknown setting 'rounds'"),
        ('strategy = "fedsgd"\n', "strategy must be one of fedavg, "),
        ("num-rounds = [\n", "cannot parse TOML"),
    ],
)
def test_bad_config_files_are_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    code, _, err = run(["federate", "--config", str(bad)], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_config_and_bad_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["federate"], capsys)
    assert code == 2 and "--config" in err
    good = write_config(tmp_path / "ok.toml", FederatedConfig())
    code, _, err = run(["federate", "--config", str(good), "--set", "num-rounds"], capsys)
    assert code == 2 and "key=value" in err
    code, _, err = run(["federate", "--config", str(good), "--set", "num-rounds=0"], capsys)
    assert code == 2 and "num-rounds" in err
