"""``feddx train``: fine-tune a LoRA adapter on a dataset (:func:`feddx.train.recipe.train_and_save`).

The cases are split exactly as ``feddx evaluate`` splits them
(:func:`feddx.data.split.stratified_split` with the same ``--test-fraction`` and ``--seed``)
and only the training split is used, so ``feddx evaluate --adapter OUT`` scores cases the
adapter never saw. ``--split all`` trains on every case (e.g. a hospital's own training file).

``OUT`` receives ``adapter/`` (the adapter with the base model's fingerprint, candidates,
hardware and data spec), ``checkpoints/`` (resumable; an interrupted run continues where it
stopped unless ``--no-resume``) and ``train_result.json``. Nothing written contains case text.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from feddx.cli._app import app, console, console_err, quiet_libraries
from feddx.cli._hardware import Device, Dtype, Quantize, hardware_overrides
from feddx.cli._overrides import SetOption, with_overrides
from feddx.io import atomic_write_json
from feddx.model.loading import DEFAULT_MODEL

if TYPE_CHECKING:
    from feddx.train.config import TrainConfig
    from feddx.train.recipe import RecipeResult


class TrainSplit(StrEnum):
    train = "train"
    all = "all"


@app.command()
def train(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="SOURCE:PATH of the cases (SOURCE as in 'feddx data stats'; uci-heart alone).",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output directory (adapter, checkpoints, result).")
    ],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Training config file (.yaml, .json or .toml)."),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Base model: alias (feddx models), .gguf file, directory or hub id.")
    ] = DEFAULT_MODEL,
    device: Device = None,
    dtype: Dtype = None,
    quantize: Quantize = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the config's epochs.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option(min=0.0, help="Override the config's learning rate.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Override the config's batch size.")
    ] = None,
    top_layers: Annotated[
        int | None,
        typer.Option(min=1, help="Override lora.top_layers (adapters on the last N layers)."),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many optimizer steps.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in --out, if any.")
    ] = True,
    split: Annotated[
        TrainSplit, typer.Option(help="Train on the training split, or on every case.")
    ] = TrainSplit.train,
    test_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Held-out share (as in 'feddx evaluate').")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    train_seed: Annotated[
        int | None,
        typer.Option(
            help="Override the config's seed (adapter initialisation, data order, dropout, "
            "augmentation): train ensemble members from one config."
        ),
    ] = None,
    feature_cache: Annotated[
        Path | None,
        typer.Option(help="Directory caching frozen-layer activations across runs."),
    ] = None,
    extra_data: Annotated[
        list[str] | None,
        typer.Option(
            "--extra-data",
            help="SOURCE:PATH of more training cases (all of them; repeatable), e.g. the "
            "DDXPlus v0 release beside the English one. Their labels must occur in --data.",
        ),
    ] = None,
    extra_per_label: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Keep at most this many --extra-data cases per diagnosis (a seeded sample of "
            "all --extra-data pooled), so a large, skewed extra release does not swamp the "
            "class balance of --data.",
        ),
    ] = None,
    candidates: Annotated[
        Path | None,
        typer.Option(
            help="File with one candidate diagnosis per line, recorded with the adapter and "
            "used by answer_loss 'candidates' (default: as in 'feddx evaluate', the dataset's "
            "list or its training labels)."
        ),
    ] = None,
    drop_overlapping_extra: Annotated[
        bool,
        typer.Option(
            "--drop-overlapping-extra",
            help="Leave out --extra-data cases identical to held-out ones (same label, findings "
            "and text) instead of refusing to train; the count goes into train_result.json.",
        ),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train on at most this many cases (the first of the training split): a quick "
            "run on a slice. The held-out split is unchanged.",
        ),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Fine-tune a LoRA adapter on a dataset's training split and save it to --out.

    The held-out split of --data is never trained on, so `feddx evaluate` with the same
    --data, --test-fraction and --seed scores unseen cases even when --extra-data is given."""
    quiet_libraries()
    from feddx.data.cases import TrainingData, training_cases
    from feddx.model.hardware import resolve_hardware
    from feddx.train.recipe import train_and_save

    # Config, hardware and data first: a bad file or a missing GPU fails in a second, not
    # after the model has loaded.
    cfg = _train_config(
        config,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_steps=max_steps,
        seed=train_seed,
        top_layers=top_layers,
        hardware=hardware_overrides(device, dtype, quantize),
    )
    cfg = with_overrides(cfg, set_)  # --set KEY=VALUE, after the options above
    hardware = resolve_hardware(cfg.hardware)
    from feddx.model.loading import resolve_model

    resolve_model(model)  # an unknown --model: one line and exit 2 before the data loads
    if extra_per_label is not None and not extra_data:
        raise typer.BadParameter(
            "--extra-per-label needs --extra-data", param_hint="--extra-per-label"
        )
    spec = TrainingData(
        data=data,
        split=split.value,
        test_fraction=test_fraction,
        seed=seed,
        extra_data=tuple(extra_data or ()),
        extra_per_label=extra_per_label,
        candidates_file=candidates,
        drop_overlapping_extra=drop_overlapping_extra,
        limit=limit,
    )
    tdata = training_cases(spec, need_candidates=True)
    record = {
        "data": data,
        "split": split.value,
        "test_fraction": test_fraction if split is TrainSplit.train else None,
        "seed": seed,
        "n_train": len(tdata.cases),
        "n_held_out": tdata.n_held_out,
        "extra_data": tdata.extra_info,
        "limit": limit,
        "config": cfg.to_dict(),
    }
    from feddx.cli.progress import progress_for

    # Bars on a terminal, timestamped lines in a log (the activation cache alone can take
    # minutes before step 1), nothing with --quiet.
    with progress_for("train", console_err) as progress:
        progress.note(f"loading {model} ({len(tdata.cases)} training cases)")
        done = train_and_save(
            model,
            tdata.cases,
            cfg,
            out,
            hardware=hardware,
            candidates=tdata.candidates,
            metadata=record,
            resume=resume,
            progress=progress,
            feature_cache_dir=feature_cache,
        )
    in_adapter = ("candidates", "icd10")  # long lists, kept in the adapter only
    summary = {
        **{k: v for k, v in done.adapter.metadata.items() if k not in in_adapter},
        **tdata.info,
        "base_fingerprint": done.loaded.fingerprint,
        "result": done.result.to_dict(),
        "adapter": str(done.adapter.directory),
    }
    atomic_write_json(out / "train_result.json", summary, allow_nan=False)
    _print_result(done, cfg, data, out)


def _train_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """The config file's settings (or the defaults) with the options given on the command
    line in their place."""
    from feddx.train.config import TrainConfig

    cfg = TrainConfig.from_file(path) if path is not None else TrainConfig()
    given = {k: v for k, v in overrides.items() if v is not None and v != {}}
    if "top_layers" in given:
        given["lora"] = {**cfg.lora.to_dict(), "top_layers": given.pop("top_layers")}
    if "hardware" in given:
        given["hardware"] = {**cfg.hardware.to_dict(), **given["hardware"]}
    return TrainConfig.from_mapping({**cfg.to_dict(), **given}, origin="command line")


def _print_result(done: RecipeResult, cfg: TrainConfig, data: str, out: Path) -> None:
    result = done.result
    n = int(done.adapter.metadata.get("n_train", 0))
    title = f"Training ({n} cases, {done.loaded.source.name}, {done.loaded.hardware.describe()})"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("steps", f"{result.steps}"),
        ("examples", f"{result.examples}"),
        ("mean loss", f"{result.mean_loss:.4f}"),
        ("last step loss", f"{result.loss_history[-1]:.4f}" if result.loss_history else "-"),
        ("seconds", f"{result.seconds:.1f}"),
        ("examples/s", f"{result.examples_per_second:.2f}"),
        ("padding", f"{result.stats.get('padding_ratio', 0.0):.1%}"),
    ]
    if result.epsilon is not None and cfg.dp is not None:
        rows.append(("DP epsilon", f"{result.epsilon:.3f} (delta {cfg.dp.delta:g})"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    meta = done.adapter.metadata
    if meta.get("split") == "all":  # no held-out case of --data is left
        hint = f"feddx evaluate --adapter {out} --data OTHER_DATA --allow-other-data"
    else:  # evaluate reads the data and split from the adapter
        hint = (
            f"feddx evaluate --adapter {out} (its held-out split: --data {data} "
            f"--seed {meta.get('seed')} --test-fraction {meta.get('test_fraction')})"
        )
    console.print(f"adapter saved to {out / 'adapter'}; evaluate with: {hint}", highlight=False)
