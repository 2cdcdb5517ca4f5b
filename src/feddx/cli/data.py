"""``feddx data ...``: inspect, prepare and partition datasets."""

from __future__ import annotations

import typer

from feddx.cli._app import app

data_app = typer.Typer(help="Inspect, prepare and partition datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
