"""``feddx personalize --config FILE``: the adapter hierarchy (global -> regional ->
institutional) trained and evaluated per region and institution
(:mod:`feddx.personalize.experiment`); writes ``table.md``, ``table.json``, ``per_group.png``
and ``error_by_group.png`` (the per-region error analysis) to ``--out``. ``--json`` prints the
table's JSON and nothing else on stdout; progress goes to stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from feddx.cli._app import app, console, console_err, quiet_libraries
from feddx.cli._overrides import SetOption, with_overrides


@app.command()
def personalize(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            help="YAML/JSON/TOML experiment config (see configs/personalize-*.yaml).",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: runs/personalize-<config name>)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as one JSON object.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Train global, regional and institutional adapters and compare them per group."""
    from feddx.personalize.config import PersonalizeConfig
    from feddx.personalize.experiment import run_experiment
    from feddx.personalize.report import TABLE_MD

    # ConfigError names the file (or --set) and the key
    cfg = with_overrides(PersonalizeConfig.from_file(config), set_)
    out_dir = out or Path("runs") / f"personalize-{config.stem}"
    quiet_libraries()

    from feddx.cli.progress import progress_for

    # Each step as a timestamped line (in a log too); nothing with --quiet.
    with progress_for("personalize", console_err) as shown:
        result = run_experiment(cfg, out_dir, progress=shown.note)
    if as_json:
        typer.echo(json.dumps(result, default=str, allow_nan=False))
        return
    console.print((out_dir / TABLE_MD).read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(
        f"written: {out_dir / TABLE_MD}, table.json, per_group.png, error_by_group.png",
        markup=False,
    )
