"""General commands: version, models, demo."""

from __future__ import annotations

import typer
from rich.table import Table

from feddx import __version__
from feddx.cli._app import app, console, quiet_libraries
from feddx.model.loading import DEFAULT_MODEL, list_cached_models


@app.command()
def version() -> None:
    """Print the feddx version."""
    console.print(f"feddx {__version__}")


@app.command()
def models() -> None:
    """List the base models in the feddx cache, with sizes."""
    cached = list_cached_models()
    if not cached:
        console.print("No models cached yet; the first load of a GGUF model creates one.")
        return
    table = Table("model", "size", "status", "path")
    for m in cached:
        table.add_row(
            m.name,
            f"{m.size_bytes / 2**20:,.0f} MiB",
            "ok" if m.valid else "corrupt",
            str(m.directory),
        )
    console.print(table)


@app.command()
def demo(
    model: str = typer.Option(
        DEFAULT_MODEL, help="Base model: alias, .gguf file, directory or hub id."
    ),
    test_fraction: float = typer.Option(0.2, min=0.05, max=0.5, help="Share of cases held out."),
    seed: int = typer.Option(0, help="Seed of the train/test split."),
    limit: int = typer.Option(0, min=0, help="Evaluate at most this many test cases (0: all)."),
) -> None:
    """Run the end-to-end pipeline on the 4-hospital UCI Heart data and the default model."""
    quiet_libraries()
    from feddx.demo import DemoOptions, run_demo

    run_demo(DemoOptions(model=model, test_fraction=test_fraction, seed=seed, limit=limit), console)
