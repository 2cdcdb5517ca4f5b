"""``feddx ... --help`` over every command of the typer app (issue 26 item 5): text shown as
written, nothing cut at 80 columns, and the workflow on the first page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer

from feddx.cli import main
from feddx.cli._app import app

REPO = Path(__file__).resolve().parents[2]


def _commands() -> Iterator[tuple[list[str], click.Command]]:
    def walk(cmd: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])

    return walk(typer.main.get_command(app), [])


COMMANDS = list(_commands())


def _help(path: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*path, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "feddx")
def test_help_at_80_columns_shows_every_option_whole(
    path: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    text = _help(path, capsys)
    command = dict((tuple(p), c) for p, c in COMMANDS)[tuple(path)]
    names = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    missing = [n for n in names if not re.search(rf"{re.escape(n)}(?![\w-])", text)]
    assert not missing, f"cut or missing at 80 columns: {missing}"
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize(
    ("path", "literal"),
    [
        (["federate"], "[tool.flwr.app.config]"),
        (["deploy", "local"], "[tool.flwr.app]"),
        (["train"], "feddx[gpu]"),
    ],
)
def test_square_brackets_in_help_are_shown_not_taken_for_markup(
    path: list[str],
    literal: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert literal in _help(path, capsys)


def test_root_help_shows_the_workflow_with_one_example_per_step(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = _help([], capsys)
    order = []
    for step in ("data", "train", "federate", "personalize", "evaluate", "serve"):
        m = re.search(rf"^\s+(or )?{step}\s+(feddx {step}\b.*)$", text, re.M)
        assert m, f"no example for {step}"
        order.append(m.start())
    assert order == sorted(order)  # in the pipeline's order
    assert "--quiet" in text and "--log-format" in text


def test_the_config_files_the_help_and_readme_name_exist_and_load() -> None:
    from feddx.federated.config import FederatedConfig

    named = set(
        re.findall(r"configs/[\w.-]+\.(?:toml|ya?ml|json)", (REPO / "README.md").read_text())
    )
    root_help = typer.main.get_command(app).help or ""
    named |= set(re.findall(r"configs/[\w.-]+\.(?:toml|ya?ml|json)", root_help))
    missing = sorted(n for n in named if not (REPO / n).is_file())
    assert not missing, missing
    cfg = FederatedConfig.from_file(REPO / "configs" / "fed.toml")
    assert cfg.data == "uci-heart" and cfg.partition == "attribute"
