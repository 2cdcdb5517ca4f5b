"""Every ``feddx`` command the README shows names commands and options that exist (issue 26
items 1 and 8): a renamed option (``--root`` -> ``--registry``) cannot stay in the docs.
The names are checked for every example; the fenced ones also run, on a tiny model and a slice
of the data, unless marked ``<!-- illustrative: why -->`` (below)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer

from feddx.cli import DEPRECATED_OPTIONS
from feddx.cli._app import app

README = Path(__file__).resolve().parents[2] / "README.md"


# ---------------------------------------------------------------------------------------------
# Running the examples (issue 26 item 8): every fenced ``feddx`` command runs here, in README
# order, on a tiny model and a slice of the data, unless its block is marked illustrative with
# ``<!-- illustrative: why -->`` on the line above the fence. A new unmarked example that this
# module does not know how to run (:func:`_sandboxed`) fails the test: run it or mark it.

ILLUSTRATIVE = re.compile(r"<!--\s*illustrative:\s*(\S.*?)\s*-->")
SHARED = README.parent.parent / "shared"


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: where it starts, its ``feddx`` commands, and the reason
    it is only illustrative (``None``: it runs)."""

    line: int
    commands: tuple[str, ...]
    illustrative: str | None

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def _block_commands(body: list[str]) -> tuple[str, ...]:
    """The ``feddx`` commands of a block, continuation lines joined, comments and a ``$ `` or
    ``.venv/bin/`` prefix dropped; ``a && feddx b`` gives ``feddx b``."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(body))
    out = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            part = part.split(" #", 1)[0].strip().removeprefix("$ ").removeprefix(".venv/bin/")
            if part.startswith("feddx "):
                out.append(" ".join(part.split()))
    return tuple(out)


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` holding a ``feddx`` command (any info string)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("```"):
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        above = [ln for ln in lines[:start] if ln.strip()][-1:] or [""]
        marker = ILLUSTRATIVE.search(above[0])
        commands = _block_commands(body)
        if commands:
            blocks.append(Block(start + 1, commands, marker.group(1) if marker else None))
    return blocks


def _fenced_commands() -> list[str]:
    return [c for b in readme_blocks(README.read_text(encoding="utf-8")) for c in b.commands]


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
    after_option = False  # the token is an option's value, not a subcommand
    for token in tokens[1:]:
        if isinstance(cmd, click.Group) and token in cmd.commands and not after_option:
            cmd = cmd.commands[token]
            names |= {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            continue
        if (
            isinstance(cmd, click.Group)
            and not tolerant
            and not after_option
            and re.fullmatch(r"[a-z][a-z-]*", token)
        ):
            return [f"unknown command {token!r}"]
        after_option = token.startswith("-") and "=" not in token
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


def _set_option(argv: list[str], name: str, value: str) -> list[str]:
    """``argv`` with ``name value`` replacing any given value of ``name``."""
    out = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == name:
            skip = True
            continue
        if token.startswith(name + "="):
            continue
        out.append(token)
    return [*out, name, value]


def _command_path(argv: list[str]) -> tuple[str, ...]:
    """The subcommand names at the start of ``argv`` (``("serve", "keys", "add")``)."""
    cmd: click.Command = typer.main.get_command(app)
    path: list[str] = []
    for token in argv:
        if not (isinstance(cmd, click.Group) and token in cmd.commands):
            break
        cmd = cmd.commands[token]
        path.append(token)
    return tuple(path)


def _sandboxed(command: str, tiny: Path) -> list[str] | None:
    """The argv that runs ``command`` on the tiny model and a slice of its data; ``None`` for
    a command this module does not know how to run small (mark its block illustrative)."""
    argv = shlex.split(command)[1:]
    head = _command_path(argv)
    if head[:1] == ("data",) and head[1:2] in (("stats",), ("prepare",), ("partition",)):
        return _set_option(argv, "--limit", "60")
    if head[:1] == ("train",):
        for name, value in (
            ("--model", str(tiny)),
            ("--limit", "40"),
            ("--max-steps", "2"),
            ("--top-layers", "1"),
        ):
            argv = _set_option(argv, name, value)
        return argv
    if head[:1] == ("evaluate",):
        return _set_option(_set_option(argv, "--model", str(tiny)), "--limit", "8")
    if head[:1] in (("registry",), ("report",)) or head[:2] == ("serve", "keys"):
        return argv
    if head == ("serve",):
        return _set_option(argv, "--model", str(tiny))
    return None


def test_every_fenced_command_runs_here_or_is_marked_illustrative(tiny_llama_dir: Path) -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "no fenced feddx command found: the README parser is broken"
    uncovered = [
        f"{b.id}: {c}"
        for b in blocks
        if b.illustrative is None
        for c in b.commands
        if _sandboxed(c, tiny_llama_dir) is None
    ]
    assert not uncovered, (
        "README examples neither run by tests/cli/test_readme_commands.py nor marked "
        "'<!-- illustrative: why -->' above their fence:\n" + "\n".join(uncovered)
    )


def test_the_marker_and_the_parser() -> None:
    text = (
        "intro\n\n<!-- illustrative: needs a GPU -->\n```bash\n.venv/bin/feddx train \\\n"
        "  --device cuda   # on a GPU\n```\n\n```\nscripts/setup.sh && feddx demo\nls\n```\n"
        "```toml\nmodel = 1\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.commands, b.illustrative) for b in blocks] == [
        (("feddx train --device cuda",), "needs a GPU"),
        (("feddx demo",), None),
    ]
    tiny = Path("/m")
    assert _sandboxed("feddx deploy local --certs c", tiny) is None  # unknown: not covered
    assert _sandboxed("feddx train --data uci-heart --top-layers 4 --out r", tiny) == [
        "train", "--data", "uci-heart", "--out", "r", "--model", "/m", "--limit", "40",
        "--max-steps", "2", "--top-layers", "1",
    ]  # fmt: skip


def _runnable_blocks() -> list[Block]:
    return [b for b in readme_blocks(README.read_text(encoding="utf-8")) if not b.illustrative]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder where the README's relative paths resolve: ``configs/`` and
    ``../shared`` link to the project's, every output lands inside it."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    (work / "configs").symlink_to(README.parent / "configs")
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED)
    return work


def _serve_until_ready(argv: list[str], cwd: Path) -> None:
    """Start the service the README starts, wait until ``/readyz`` answers 200, stop it."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = str(Path(sys.executable).with_name("feddx"))
    proc = subprocess.Popen(
        [exe, *argv, "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"feddx serve exited: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("feddx serve did not become ready in 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("block", _runnable_blocks(), ids=lambda b: b.id)
def test_readme_block_runs(
    block: Block, sandbox: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feddx.cli import main

    if "../shared" in " ".join(block.commands) and not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the shared datasets)")
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("FEDDX_CACHE", str(sandbox / ".cache"))
    for command in block.commands:
        argv = _sandboxed(command, tiny_llama_dir)
        assert argv is not None, command
        if argv[0] == "serve" and argv[1] != "keys":
            _serve_until_ready(argv, sandbox)
            continue
        assert main(argv) == 0, f"{block.id}: {command}"
