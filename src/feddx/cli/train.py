"""``feddx train``: fine-tune a LoRA adapter on a dataset.

The cases are split exactly as ``feddx evaluate`` splits them
(:func:`feddx.data.split.stratified_split` with the same ``--test-fraction`` and ``--seed``)
and only the training split is used, so ``feddx evaluate --adapter OUT`` scores cases the
adapter never saw. ``--split all`` trains on every case (e.g. a hospital's own training file).

``OUT`` receives ``adapter/`` (the adapter with the base model's fingerprint),
``checkpoints/`` (resumable; an interrupted run continues where it stopped unless
``--no-resume``) and ``train_result.json``. Nothing written contains case text.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from feddx.cli._app import app, console, console_err, quiet_libraries
from feddx.io import atomic_write_json
from feddx.model.loading import DEFAULT_MODEL


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
        str, typer.Option(help="Base model: alias, .gguf file, directory or hub id.")
    ] = DEFAULT_MODEL,
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
            help="With answer_loss 'candidates': file with one candidate diagnosis per line "
            "(default: as in 'feddx evaluate', the dataset's list or its training labels)."
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
) -> None:
    """Fine-tune a LoRA adapter on a dataset's training split and save it to --out.

    The held-out split of --data is never trained on, so `feddx evaluate` with the same
    --data, --test-fraction and --seed scores unseen cases even when --extra-data is given."""
    quiet_libraries()
    from feddx.train.config import TrainConfig

    # Config and data first: a bad file fails in a second, not after the model has loaded.
    cfg = TrainConfig.from_file(config) if config is not None else TrainConfig()
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "epochs": epochs,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
            "max_steps": max_steps,
            "seed": train_seed,
        }.items()
        if v is not None
    }
    if top_layers is not None:
        overrides["lora"] = {**cfg.lora.to_dict(), "top_layers": top_layers}
    if overrides:
        cfg = TrainConfig.from_mapping({**cfg.to_dict(), **overrides}, origin="command line")
    if extra_per_label is not None and not extra_data:
        raise typer.BadParameter(
            "--extra-per-label needs --extra-data", param_hint="--extra-per-label"
        )
    from feddx.train.cases import TrainingData, training_cases

    tdata = training_cases(
        TrainingData(
            data=data,
            split=split.value,
            test_fraction=test_fraction,
            seed=seed,
            extra_data=tuple(extra_data or ()),
            extra_per_label=extra_per_label,
            candidates_file=candidates,
            drop_overlapping_extra=drop_overlapping_extra,
        ),
        need_candidates=cfg.answer_loss == "candidates",
    )
    cases = tdata.cases

    import torch

    from feddx.cli.progress import train_progress
    from feddx.model.adapter import attach_lora, save_adapter
    from feddx.model.loading import load_base_model
    from feddx.train.trainer import train_adapter

    loaded = load_base_model(model)
    torch.manual_seed(cfg.seed)  # the adapter's initial values
    net = attach_lora(loaded.model, cfg.lora)
    with train_progress(console_err, enabled=console_err.is_terminal) as progress:
        result = train_adapter(
            net,
            loaded.tokenizer,
            cases,
            cfg,
            out_dir=out,
            resume=resume,
            progress=progress,
            feature_cache_dir=feature_cache,
            candidates=tdata.candidates.names if tdata.candidates else None,
        )
    meta: dict[str, Any] = {
        "data": data,
        "split": split.value,
        "test_fraction": test_fraction if split is TrainSplit.train else None,
        "seed": seed,
        "n_train": len(cases),
        "n_held_out": tdata.n_held_out,
        "extra_data": tdata.extra_info,
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "model": loaded.source.name,
        "base_fingerprint": loaded.fingerprint,
        "config": cfg.to_dict(),
    }
    save_adapter(
        net,
        out / "adapter",
        base_fingerprint=loaded.fingerprint,
        max_prompt_tokens=cfg.max_prompt_tokens,
        metadata=meta,
    )
    summary = {**meta, **tdata.info, "result": result.to_dict(), "adapter": str(out / "adapter")}
    atomic_write_json(out / "train_result.json", summary, allow_nan=False)

    table = Table(title=f"Training ({len(cases)} cases, {loaded.source.name})")
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
    console.print(
        f"adapter saved to {out / 'adapter'}; evaluate with: feddx evaluate --data {data} --adapter {out}"
    )
