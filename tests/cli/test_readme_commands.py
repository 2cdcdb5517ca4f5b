"""Every ``feddx`` command the README shows names commands and options that exist (issue 26
items 1 and 8): a renamed option (``--root`` -> ``--registry``) cannot stay in the docs.
Only names are checked here; running the examples is a later step."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from feddx.cli import DEPRECATED_OPTIONS
from feddx.cli._app import app

README = Path(__file__).resolve().parents[2] / "README.md"


def _fenced_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [line.strip() for line in joined.splitlines() if line.strip().startswith("feddx ")]
    return out


def _inline_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [c for c in re.findall(r"`(feddx [^`]+)`", text) if "\n" not in c]


def _check(command_line: str, tolerant: bool) -> list[str]:
    """Problems with ``command_line``: an unknown subcommand or option name."""
    root = typer.main.get_command(app)
    text = command_line.split("#", 1)[0]
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    cmd: click.Command = root
    names = {o for p in root.params for o in (*p.opts, *p.secondary_opts)}
    for token in tokens[1:]:
        if isinstance(cmd, click.Group) and token in cmd.commands:
            cmd = cmd.commands[token]
            names |= {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            continue
        if isinstance(cmd, click.Group) and not tolerant and re.fullmatch(r"[a-z][a-z-]*", token):
            return [f"unknown command {token!r}"]
    if isinstance(cmd, click.Group):  # a table row naming several subcommands: any of theirs
        names |= _all_options(cmd)
    problems = []
    if re.match(r"feddx data (stats|prepare|partition) [a-z0-9-]+ [^-\s]", text):
        problems.append("data as 'SOURCE PATH' (deprecated): write SOURCE:PATH")
    for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
        if option in DEPRECATED_OPTIONS:
            problems.append(f"{option} is deprecated (use {DEPRECATED_OPTIONS[option]})")
        elif option not in names and option != "--help":
            problems.append(f"unknown option {option}")
    return problems


def _all_options(group: click.Group) -> set[str]:
    found: set[str] = set()
    for sub in group.commands.values():
        found |= {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
        if isinstance(sub, click.Group):
            found |= _all_options(sub)
    return found


@pytest.mark.parametrize("line", _fenced_commands())
def test_fenced_readme_commands_name_real_options(line: str) -> None:
    assert not _check(line, tolerant=False), line


@pytest.mark.parametrize("line", _inline_commands())
def test_inline_readme_commands_name_real_options(line: str) -> None:
    assert not _check(line, tolerant=True), line
