"""The one ``feddx`` command.

Commands are thin: they parse options, call library functions and print. Every
:class:`~feddx.errors.FeddxError` and every usage error becomes one line on stderr and a
non-zero exit code; only bugs show a traceback.
"""

from __future__ import annotations

import inspect
import re
import sys

import click
import typer
from rich.markup import escape

from feddx.cli._app import app, console_err
from feddx.errors import FeddxError

# Importing the command modules registers their commands on ``app``.
from feddx.cli import core, data, deploy, evaluate, federate, personalize, registry, serve, train  # noqa: F401  # isort: skip


# Options of the root command that a user may also write after the subcommand
# (``feddx train ... --quiet``): they are moved in front of it.
_ROOT_FLAGS = ("--quiet", "-q")
_ROOT_VALUED = ("--log-format",)


def _hoist_root_options(argv: list[str]) -> list[str]:
    """``argv`` with ``--quiet`` and ``--log-format X`` moved before the subcommand, wherever
    they were written (no command defines options of those names; ``--`` ends the search)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _ROOT_FLAGS or any(arg.startswith(f"{o}=") for o in _ROOT_VALUED):
            front.append(arg)
        elif arg in _ROOT_VALUED and i + 1 < len(argv):
            front.extend(argv[i : i + 2])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


# Option names that now have one name across commands (issue 26 item 1): the old spelling
# still works, with a one-line note, and is rewritten before parsing.
DEPRECATED_OPTIONS = {
    "--root": "--registry",
    "--lr": "--learning-rate",
    "--dataset": "--data",
    "--max-cases": "--limit",
    "--run-config": "--set",
}


def _rename_deprecated(argv: list[str]) -> list[str]:
    """``argv`` with each deprecated option name (:data:`DEPRECATED_OPTIONS`) replaced by
    its current one, saying so once per name on stderr; ``--`` ends the search."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        name, eq, value = arg.partition("=")
        new = DEPRECATED_OPTIONS.get(name)
        if new is not None:
            console_err.print(
                f"feddx: note: {name} is deprecated; use {new}", markup=False, highlight=False
            )
            arg = new + eq + value
        out.append(arg)
    return out


def _readable_help(text: str | None) -> str | None:
    """Help text as written, shown literally: rich markup escaped (so ``[tool.flwr.app]`` and
    ``feddx[gpu]`` are not taken for style tags and deleted) and a paragraph's single line
    breaks joined (rich keeps them, breaking lines mid-sentence at 80 columns) unless the
    paragraph starts with ``\\b``."""
    if not text:
        return text
    body, sep, tail = text.partition("\f")
    paragraphs = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(body)):
        lines = para.strip("\n").splitlines()
        if lines and lines[0].strip() == "\b":
            paragraphs.append("\n".join(lines[1:]))  # kept as written
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return escape("\n\n".join(paragraphs)) + sep + tail


def _prepare_help(command: click.Command) -> None:
    """Apply :func:`_readable_help` to ``command``, its parameters and subcommands."""
    command.help = _readable_help(command.help)
    command.short_help = _readable_help(command.short_help)
    for param in command.params:
        if isinstance(param, click.Option) or hasattr(param, "help"):  # typer's arguments
            param.help = _readable_help(param.help)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _prepare_help(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns (and, as a script, exits with) the process exit code."""
    command = typer.main.get_command(app)
    _prepare_help(command)
    argv = _rename_deprecated(_hoist_root_options(list(sys.argv[1:] if argv is None else argv)))
    try:
        result = command.main(args=argv, prog_name="feddx", standalone_mode=False)
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        console_err.print(
            f"feddx: error: {e.format_message()}{hint}", markup=False, highlight=False
        )
        return 2
    except click.ClickException as e:
        console_err.print(f"feddx: error: {e.format_message()}", markup=False, highlight=False)
        return e.exit_code
    except click.Abort:
        console_err.print("feddx: aborted", markup=False)
        return 130
    except FeddxError as e:
        console_err.print(f"feddx: error: {e}", markup=False, highlight=False)
        return e.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
