"""The one ``feddx`` command.

Commands are thin: they parse options, call library functions and print. Every
:class:`~feddx.errors.FeddxError` and every usage error becomes one line on stderr and a
non-zero exit code; only bugs show a traceback.
"""

from __future__ import annotations

import sys

import click
import typer

from feddx.cli._app import app, console_err
from feddx.errors import FeddxError

# Importing the command modules registers their commands on ``app``.
from feddx.cli import core, data, deploy, evaluate, federate, personalize, registry, serve, train  # noqa: F401  # isort: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns (and, as a script, exits with) the process exit code."""
    command = typer.main.get_command(app)
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
