"""The typer application object and shared console helpers."""

from __future__ import annotations

import logging
import os
import warnings

import typer
from rich.console import Console

app = typer.Typer(
    name="feddx",
    help="Personalized, federated LLMs for medical diagnosis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
console_err = Console(stderr=True, soft_wrap=True)


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
