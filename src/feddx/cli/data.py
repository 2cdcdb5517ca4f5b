"""``feddx data ...``: inspect, prepare and partition datasets.

Each command loads through :func:`feddx.data.sources.load_source`, so every registered source
works the same way; an unknown source or unreadable path is a :class:`~feddx.errors.DataError`
(one line, exit code 2). Output never contains case text: only counts, labels and positions.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from feddx.cli._app import app, console, console_err
from feddx.data.report import LoadReport
from feddx.data.schema import Case
from feddx.data.stats import SHOW_SKIPPED, dataset_stats
from feddx.errors import DataError

data_app = typer.Typer(help="Inspect, prepare and partition datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SOURCE_HELP = (
    "The data as SOURCE:PATH (as --data everywhere), e.g. ddxplus:../shared/data/ddxplus; "
    "SOURCE is ddxplus, ddxplus-v0, csv, jsonl, uci-heart (no PATH), fhir or eicu."
)
PATH_HELP = "Deprecated: the PATH of 'SOURCE PATH'; write SOURCE:PATH."


def _data_spec(data: str, path: Path | None) -> tuple[str, Path | None]:
    """``(source, path)`` of a ``SOURCE:PATH`` argument, or of the older two-argument form
    ``SOURCE PATH`` (still accepted, with a one-line note on stderr)."""
    if path is not None:
        console_err.print(
            f"feddx: note: 'SOURCE PATH' is deprecated; write {data}:{path}",
            markup=False,
            highlight=False,
        )
        return data, path
    source, sep, rest = data.partition(":")
    return source, (Path(rest) if sep and rest else None)


class PartitionKindOption(StrEnum):
    attribute = "attribute"
    iid = "iid"
    dirichlet = "dirichlet"
    size_skew = "size-skew"


def _load(
    source: str, path: Path | None, report: LoadReport, limit: int | None = None
) -> Iterator[Case]:
    """The cases of ``source``, with a live count on stderr: a spinner on a terminal,
    timestamped lines in a log (a large dataset takes minutes to read), nothing with
    --quiet."""
    from feddx.cli.progress import LineProgress, progress_style
    from feddx.data.sources import load_source

    cases: Iterator[Case] = iter(load_source(source, path, report))
    if limit is not None:
        cases = itertools.islice(cases, limit)
    style = progress_style(console_err)
    if style in ("plain", "json"):
        lines = LineProgress("data", as_json=style == "json", only_slow=True)
        lines.started(f"loading {source}", 0)
        for case in cases:
            lines.advanced(1)
            yield case
        lines.finished()
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("loading {task.description}: {task.completed:,} cases"),
        TimeElapsedColumn(),
        console=console_err,
        transient=True,
        disable=style == "off",
    ) as progress:
        task = progress.add_task(source, total=None)
        for case in cases:
            progress.advance(task)
            yield case


def _counts_table(title: str, counts: dict[str, int], total: int) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(title.split(" ")[0].lower())
    table.add_column("cases", justify="right")
    table.add_column("share", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}", f"{count / max(total, 1):.1%}")
    return table


def _print_stats(stats: dict[str, Any]) -> None:
    where = f": {stats['path']}" if stats["path"] else ""
    summary = Table(title=f"{stats['source']}{where}", title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    age = stats["age"]
    rows = [
        ("cases", f"{stats['n_cases']:,}"),
        ("labeled", f"{stats['n_labeled']:,}"),
        ("distinct labels", f"{stats['n_labels']:,}"),
        ("skipped", f"{stats['n_skipped']:,}"),
        ("with text", f"{stats['n_with_text']:,}"),
        ("with findings", f"{stats['n_with_findings']:,}"),
        ("with history", f"{stats['n_with_history']:,}"),
        ("with differential", f"{stats['n_with_differential']:,}"),
        (
            "age",
            f"{age['min']:g}-{age['max']:g}, median {age['median']:g} (n={age['n']:,})"
            if age
            else "-",
        ),
        ("sex", ", ".join(f"{k} {v:,}" for k, v in stats["sex"].items()) or "-"),
    ]
    for key, value in rows:
        summary.add_row(key, value)
    console.print(summary)

    codes = stats["icd10"]["label_codes"]
    labels = Table(title="labels", title_justify="left")
    for col, justify in (
        ("label", "left"),
        ("ICD-10", "left"),
        ("cases", "right"),
        ("share", "right"),
    ):
        labels.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, count in stats["labels"].items():
        labels.add_row(
            name, codes.get(name) or "-", f"{count:,}", f"{count / max(stats['n_labeled'], 1):.1%}"
        )
    console.print(labels)
    for key in ("institutions", "regions"):
        if stats[key]:
            console.print(_counts_table(f"{key}", stats[key], stats["n_cases"]))
    if stats["icd10"]["codes_not_in_icd10cm"]:
        console.print(
            "ICD-10 codes unknown to ICD-10-CM (scored at chapter/category level only): "
            + ", ".join(stats["icd10"]["codes_not_in_icd10cm"]),
            markup=False,
        )
    if stats["n_skipped"]:
        reasons = ", ".join(f"{r}: {n:,}" for r, n in stats["skipped_reasons"].items())
        console.print(
            f"skipped {stats['n_skipped']:,} records ({reasons}); first ones:", markup=False
        )
        for line in stats["skipped_examples"]:
            console.print(f"  {line}", markup=False, highlight=False)


@data_app.command()
def stats(
    source: Annotated[str, typer.Argument(metavar="DATA", help=SOURCE_HELP)],
    path: Annotated[Path | None, typer.Argument(help=PATH_HELP, hidden=True)] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    limit: LimitOption = None,
) -> None:
    """Count a dataset's cases, labels, skipped records and demographics.

    DATA is SOURCE:PATH, e.g. ddxplus:../shared/data/ddxplus (SOURCE one of ddxplus,
    ddxplus-v0, csv, jsonl, uci-heart, fhir, eicu; uci-heart needs no PATH). With --json, print
    one JSON object (n_cases, labels, n_skipped, skipped_reasons, ...).
    """
    source, path = _data_spec(source, path)
    report = LoadReport(source)
    result = dataset_stats(source, path, _load(source, path, report, limit), report)
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
    else:
        _print_stats(result)


LimitOption = Annotated[
    int | None,
    typer.Option(min=1, help="Read at most this many cases (the first ones): a quick look."),
]

ASSUME_HELP = (
    "The data is already de-identified: write the cases as they are read (recorded as "
    "'assumed' in the output, with a warning)."
)


@data_app.command()
def prepare(
    source: Annotated[str, typer.Argument(metavar="DATA", help=SOURCE_HELP)],
    path: Annotated[Path | None, typer.Argument(help=PATH_HELP, hidden=True)] = None,
    *,
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write (the case schema).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the counts as one JSON object.")
    ] = False,
    assume_deidentified: Annotated[
        bool, typer.Option("--assume-deidentified", help=ASSUME_HELP)
    ] = False,
    limit: LimitOption = None,
) -> None:
    """De-identify a dataset and write it as JSONL of the case schema.

    DATA is SOURCE:PATH as in 'feddx data stats'.
    Names, dates, phones, e-mails, addresses, record numbers and CPF/CNS/RG/CEP are replaced by
    typed placeholders; case and patient ids become keyed pseudonyms. OUT.deid.json records
    how (and the key's fingerprint, never the key). Set FEDDX_DEID_KEY to get the same
    pseudonyms in every run.
    """
    from feddx.data.jsonl import write_jsonl
    from feddx.data.stage import DeidStage, write_marker

    source, path = _data_spec(source, path)
    if out.is_dir():
        raise DataError(f"--out must be a file, not a directory: {out}")
    report = LoadReport(source)
    stage = DeidStage(assume_deidentified=assume_deidentified)  # warns when assumed
    n_written = write_jsonl(stage.cases(_load(source, path, report, limit)), out)
    marker = stage.marker()
    write_marker(out, marker, extra={"n_cases": n_written, "source": source})
    result = {
        "out": str(out),
        "n_cases": n_written,
        # Ids and dates may be pseudonymised in every case; count the texts that held PHI.
        "n_text_redacted": stage.n_text_redacted,
        "placeholders": dict(stage.placeholders.most_common()),
        "n_skipped": report.n_skipped,
        "skipped_reasons": report.skipped_reasons(),
        "deidentification": marker.as_dict(),
    }
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    what = "de-identified" if not stage.assumed else "(assumed de-identified)"
    counts = ", ".join(f"{n:,} {p}" for p, n in stage.placeholders.most_common())
    console.print(
        f"wrote {n_written:,} {what} cases to {out} ({stage.n_text_redacted:,} texts had "
        f"identifiers removed{': ' + counts if counts else ''}); skipped "
        f"{report.n_skipped:,} records",
        markup=False,
        highlight=False,
    )
    for line in [str(s) for s in report.skipped[:SHOW_SKIPPED]]:
        console.print(f"  {line}", markup=False, highlight=False)


@data_app.command()
def partition(
    source: Annotated[str, typer.Argument(metavar="DATA", help=SOURCE_HELP)],
    path: Annotated[Path | None, typer.Argument(help=PATH_HELP, hidden=True)] = None,
    *,
    out: Annotated[
        Path, typer.Option("--out", help="Directory for client_<i>.jsonl and manifest.json.")
    ],
    kind: Annotated[
        PartitionKindOption, typer.Option("--kind", help="How to split.")
    ] = PartitionKindOption.iid,
    attribute: Annotated[
        str | None,
        typer.Option(help="Case attribute for --kind attribute (default: institution)."),
    ] = None,
    num_clients: Annotated[
        int, typer.Option("--num-clients", min=1, help="Clients (not used by attribute).")
    ] = 5,
    alpha: Annotated[
        float, typer.Option(help="Dirichlet concentration (smaller: more label skew).")
    ] = 0.5,
    sigma: Annotated[
        float, typer.Option(help="Log-normal sigma of client sizes (size-skew).")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    min_size: Annotated[
        int, typer.Option("--min-size", min=0, help="Fewest cases per client.")
    ] = 1,
    plot: Annotated[
        Path | None, typer.Option(help="Also save a stacked bar chart (PNG) here.")
    ] = None,
    assume_deidentified: Annotated[
        bool, typer.Option("--assume-deidentified", help=ASSUME_HELP)
    ] = False,
    limit: LimitOption = None,
) -> None:
    """Split a dataset into federated clients: JSONL shards plus a manifest.

    DATA is SOURCE:PATH as in 'feddx data stats'.
    Kinds: attribute (one client per institution/region/...), iid, dirichlet (label skew,
    --alpha) and size-skew (log-normal client sizes, --sigma); seeded and reproducible.
    Cases are de-identified as by 'feddx data prepare' before they are split (data prepared
    with the same FEDDX_DEID_KEY passes through unchanged); the manifest lists pseudonyms.
    """
    from feddx.data.partition import (
        PartitionSpec,
        client_names,
        label_histograms,
        partition_cases,
        plot_partition,
        write_partition,
    )
    from feddx.data.stage import DeidStage

    source, path = _data_spec(source, path)
    if kind is PartitionKindOption.attribute and attribute is None:
        attribute = "institution"
    spec = PartitionSpec(
        kind=kind.value,  # type: ignore[arg-type]  # the enum's values are exactly PartitionKind
        num_clients=num_clients,
        attribute=attribute if kind is PartitionKindOption.attribute else None,
        alpha=alpha,
        sigma=sigma,
        seed=seed,
        min_size=min_size,
    )
    report = LoadReport(source)
    stage = DeidStage(assume_deidentified=assume_deidentified)  # warns when assumed
    cases = list(stage.cases(_load(source, path, report, limit)))
    parts = partition_cases(cases, spec)
    manifest = write_partition(
        parts,
        out,
        spec,
        extra={"source": source, "path": str(path) if path else None},
        stage=stage,
    )
    names = client_names(parts, spec)
    _print_partition(parts, names, label_histograms(parts))
    skipped = f"; {report.n_skipped:,} records skipped while loading" if report.n_skipped else ""
    console.print(
        f"wrote {len(parts)} shards ({len(cases):,} cases) and {manifest}{skipped}",
        markup=False,
        highlight=False,
    )
    if plot is not None:
        console.print(
            f"plot: {plot_partition(parts, plot, names=names)}", markup=False, highlight=False
        )


def _print_partition(
    parts: list[list[Case]], names: list[str], hists: list[dict[str, int]]
) -> None:
    totals: Counter[str] = Counter()
    for h in hists:
        totals.update(h)
    if len(parts) <= 10:
        # A label x client matrix: the histograms side by side.
        table = Table(
            title="cases per label and client",
            title_justify="left",
            show_footer=True,
            box=box.SIMPLE_HEAD,  # light borders leave room for up to 10 client columns
        )
        # Counts never wrap; the label column gives way when the terminal is narrow.
        table.add_column("label", footer="total", min_width=12)
        # Long client names (institutions) would squeeze the table: number them, with a legend.
        short = all(len(n) <= 10 for n in names)
        for i, (name, part) in enumerate(zip(names, parts, strict=True)):
            header = name if short else f"#{i}"
            table.add_column(header, justify="right", footer=f"{len(part):,}", no_wrap=True)
        table.add_column("total", justify="right", footer=f"{sum(totals.values()):,}", no_wrap=True)
        for label, total in totals.most_common():
            table.add_row(label, *(f"{h.get(label, 0):,}" for h in hists), f"{total:,}")
        if not short:
            table.caption = "  ".join(f"#{i}: {name}" for i, name in enumerate(names))
            table.caption_justify = "left"
    else:
        table = Table(title="clients", title_justify="left")
        for col in ("client", "cases", "labels", "most frequent labels"):
            table.add_column(col, justify="right" if col in ("cases", "labels") else "left")
        for name, part, h in zip(names, parts, hists, strict=True):
            top = ", ".join(f"{label} {n}" for label, n in list(h.items())[:4])
            more = f", +{len(h) - 4} more" if len(h) > 4 else ""
            table.add_row(name, f"{len(part):,}", f"{len(h)}", top + more)
    console.print(table)
