"""The typer application object and shared console helpers."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from typing import Annotated, Any

import typer
import typer.rich_utils
from rich.columns import Columns
from rich.console import Console
from rich.table import Table
from rich.text import Text

from feddx.cli.progress import LogFormat, configure_output

# "\b" keeps a paragraph's line breaks (click's convention, honoured by feddx.cli.main).
WORKFLOW_HELP = """Personalized, federated LLMs for medical diagnosis.

\b
The workflow, one example per step (data as SOURCE:PATH everywhere):
  data         feddx data stats ddxplus:../shared/data/ddxplus
  train        feddx train --data uci-heart --out runs/central
  or federate  feddx federate --config configs/fed.toml
  personalize  feddx personalize --config configs/personalize-uci.yaml
  evaluate     feddx evaluate --adapter runs/central
  serve        feddx serve --registry runs/demo/registry
  all of it    feddx demo

\b
Progress goes to stderr: bars on a terminal, timestamped lines in a log or
pipe; --quiet for none, --log-format json for one JSON object per line.
Exit codes: 0 success, 2 usage or input error, 1 runtime failure."""

app = typer.Typer(
    name="feddx",
    help=WORKFLOW_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
console_err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _root(
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="No progress output (results and errors are still printed)."
        ),
    ] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="FEDDX_LOG_FORMAT",
            help="Progress as rich bars, plain timestamped lines or JSON lines (auto: bars "
            "on a terminal, lines otherwise).",
        ),
    ] = LogFormat.auto,
) -> None:
    configure_output(quiet=quiet, log_format=log_format)


class _HelpTable(Table):
    """Typer's help tables with every column but the last two (an option's type and help)
    kept whole: rich otherwise shrinks all columns evenly at 80 columns and cuts option names
    (``--extra-per-lab…``); the type and help columns wrap instead."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*renderables, **kwargs)
        for column in self.columns[:-2]:
            column.no_wrap = True


class _HelpColumns(Columns):
    """An option's help, its default and its env var, folding a word too long for the column
    (a path, ``[tool.flwr.app.config]``) instead of cutting it with an ellipsis."""

    def __init__(self, renderables: Iterable[Any] | None = None, *args: Any, **kwargs: Any):
        items = list(renderables or [])
        for item in items:
            if isinstance(item, Text):
                item.overflow = "fold"
        super().__init__(items, *args, **kwargs)


# Typer builds its help from these two names; both substitutes only change widths.
setattr(typer.rich_utils, "Table", _HelpTable)  # noqa: B010  (not a public name)
setattr(typer.rich_utils, "Columns", _HelpColumns)  # noqa: B010


def quiet_libraries() -> None:
    """Silence third-party chatter (download checks, progress bars, deprecation notes) so the
    CLI prints only its own, privacy-reviewed output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
