"""``feddx federate``: federated fine-tuning with Flower (simulation), and the results table."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.table import Table

from feddx.cli._app import app, console, console_err, quiet_libraries
from feddx.errors import ConfigError

federate_app = typer.Typer(
    help="Federated LoRA fine-tuning on Flower's simulation runtime.",
    invoke_without_command=True,
)
app.add_typer(federate_app, name="federate")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as TOML scalars (``3``, ``0.5``, ``true``, ``'x'``),
    bare words as strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def _absolute(cfg: Any) -> Any:
    """Make the config's paths absolute: Flower's processes run in other folders."""

    def spec(value: str) -> str:
        source, sep, path = value.partition(":")
        return f"{source}:{Path(path).expanduser().resolve()}" if sep and path else value

    changes: dict[str, Any] = {"data": spec(cfg.data), "out_dir": str(cfg.out_path().resolve())}
    if cfg.eval_data:
        changes["eval_data"] = spec(cfg.eval_data)
    for key in ("client_state_dir", "activation_cache_dir"):
        if getattr(cfg, key):
            changes[key] = str(Path(getattr(cfg, key)).expanduser().resolve())
    if Path(cfg.model).expanduser().exists():
        changes["model"] = str(Path(cfg.model).expanduser().resolve())
    return cfg.replace(**changes)


@federate_app.callback()
def federate(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Run settings (TOML/YAML/JSON; keys as in pyproject's [tool.flwr.app.config]).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override one setting: key=value.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (overrides out-dir).")
    ] = None,
    client_cpus: Annotated[int, typer.Option(min=1, help="CPUs per simulated client.")] = 1,
    client_gpus: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="GPUs per simulated client (0.5: two ClientApps share a GPU; with the run "
            "config's device = 'auto' each trains on its GPU).",
        ),
    ] = 0.0,
    engine: Annotated[
        str,
        typer.Option(
            help="flower: Flower's simulation runtime; inprocess: the same apps called directly "
            "in this process (quick checks)."
        ),
    ] = "flower",
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            help="Adapter registry to register the run's global adapter in (implies --register).",
        ),
    ] = None,
    register: Annotated[
        bool | None,
        typer.Option(
            "--register/--no-register",
            help="Register the global adapter as the next global version, with its round and "
            "final metrics (default: only with --registry; without it, $FEDDX_REGISTRY or "
            "~/.local/share/feddx/registry).",
        ),
    ] = None,
) -> None:
    """Run a federated simulation from a settings file: ``feddx federate --config fed.toml``."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise typer.BadParameter("give --config FILE (or a subcommand)", param_hint="--config")
    if engine not in ("flower", "inprocess"):
        raise typer.BadParameter("choose flower or inprocess", param_hint="--engine")
    quiet_libraries()
    from feddx.federated.config import FederatedConfig
    from feddx.federated.experiments import run_federated

    cfg = FederatedConfig.from_file(config)
    overrides = _parse_overrides(set_ or [])
    if out is not None:
        overrides["out_dir"] = str(out)
    if overrides:
        cfg = cfg.replace(**overrides)
    cfg = _absolute(cfg)
    from feddx.model.loading import resolve_model

    resolve_model(cfg.model)  # an unknown model: exit 2 now, not after Flower has started
    store = None
    if (registry is not None) if register is None else register:
        # Opened before the run, so a bad --registry fails before hours of training.
        from feddx.paths import registry_root
        from feddx.personalize.registry import AdapterRegistry

        store = AdapterRegistry(registry or registry_root())
    console.print(
        f"[bold]feddx federate[/]: {cfg.strategy}, {cfg.num_clients} clients "
        f"({cfg.partition}), {cfg.num_rounds} rounds on {cfg.data.split(':')[0]} -> {cfg.out_dir}"
    )
    from feddx.cli.progress import progress_for, watching
    from feddx.federated.checkpoint import rounds_done

    # The rounds run in Flower's processes: their checkpoints are the progress to show.
    with (
        progress_for("federate", console_err) as progress,
        watching(progress, "federation", cfg.num_rounds, lambda: rounds_done(cfg.out_path())),
    ):
        if engine == "flower":
            from feddx.federated.simulation import run_simulation

            outcome = run_simulation(cfg, client_cpus=client_cpus, client_gpus=client_gpus)
        else:
            run_federated(cfg, "inprocess")
    if engine == "flower":
        history = outcome.history
        console.print(
            f"Flower run {outcome.run_id}: {outcome.status} in {outcome.seconds:.0f} s "
            f"(log: {outcome.log_path})"
        )
    else:
        import json

        history = json.loads((cfg.out_path() / "history.json").read_text())
    _print_history(history)
    if store is not None:
        from feddx.federated.task import task_data
        from feddx.personalize.registry import data_fingerprint, register_federated_run

        entry = register_federated_run(
            store, cfg.out_path(), data_fingerprint=data_fingerprint(task_data(cfg).train)
        )
        console.print(
            f"Registered the global adapter as {entry.adapter_id} in {store.root}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _print_history(history: dict[str, Any]) -> None:
    table = Table(title="Rounds")
    for col in (
        "round",
        "accepted",
        "rejected",
        "KiB sent",
        "KiB received",
        "train loss",
        "top-1",
        "top-3",
        "val loss",
        "epsilon",
    ):
        table.add_column(col, justify="right")
    for r in history["rounds"]:
        ev = r.get("eval") or {}

        def num(v: Any, fmt: str) -> str:
            return "" if v is None else format(v, fmt)

        table.add_row(
            str(r["round"]),
            num(r.get("accepted"), "d"),
            str(len(r.get("rejected", []))) if r["round"] else "",
            num(r.get("bytes_sent", None) and r["bytes_sent"] / 1024, ",.1f"),
            num(r.get("bytes_received", None) and r["bytes_received"] / 1024, ",.1f"),
            num(r.get("train_loss"), ".4f"),
            num(ev.get("top1"), ".3f"),
            num(ev.get("top3"), ".3f"),
            num(ev.get("val_loss"), ".3f"),
            num(r.get("epsilon_total"), ".2f"),
        )
    console.print(table)


@federate_app.command("experiments")
def experiments(
    out: Annotated[Path, typer.Option(help="Folder for federated.md.")] = Path("results"),
    runs: Annotated[
        Path, typer.Option(help="Folder for the runs (checkpoints, adapters, activation cache).")
    ] = Path("runs/federated-experiments"),
    ddxplus: Annotated[
        Path | None,
        typer.Option(
            help="DDXPlus release folder (e.g. ../shared/data/ddxplus); without it only the UCI "
            "Heart rows run."
        ),
    ] = None,
    rounds: Annotated[
        int, typer.Option(min=1, help="Federated rounds (centralised: as many epochs).")
    ] = 4,
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    max_cases: Annotated[
        int,
        typer.Option(
            "--limit", min=0, help="DDXPlus: at most N cases, a stratified sample (0: all)."
        ),
    ] = 0,
    max_eval_cases: Annotated[
        int, typer.Option(min=0, help="Validation cases scored per run (0: all).")
    ] = 150,
    top_layers: Annotated[int, typer.Option(min=1, help="LoRA on the top N layers.")] = 2,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 8,
    targets: Annotated[
        str, typer.Option(help="LoRA target modules (auto: per architecture).")
    ] = "auto",
    lr: Annotated[
        float, typer.Option("--learning-rate", min=0.0, help="Client learning rate.")
    ] = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Client batch size.")] = 8,
    strategies: Annotated[
        str, typer.Option(help="Comma-separated strategy names, or 'all'.")
    ] = "all",
    groups: Annotated[
        str,
        typer.Option(help="DDXPlus tables to produce (partition,strategy,compression,privacy)."),
    ] = "partition,strategy,compression,privacy",
    model: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m-instruct",
    engine: Annotated[
        str, typer.Option(help="flower (simulation runtime) or inprocess.")
    ] = "flower",
) -> None:
    """Produce the federated results table (``<out>/federated.md``); finished runs are reused."""
    quiet_libraries()
    from feddx.federated.config import STRATEGIES
    from feddx.federated.experiments import (
        RESULTS_FILE,
        Engine,
        PlanSettings,
        base_config,
        default_plan,
        message_sizes,
        run_plan,
        write_results,
    )

    if engine not in ("flower", "inprocess"):
        raise typer.BadParameter("choose flower or inprocess", param_hint="--engine")
    chosen = STRATEGIES if strategies == "all" else tuple(s.strip() for s in strategies.split(","))
    unknown = set(chosen) - set(STRATEGIES)
    if unknown:
        raise typer.BadParameter(
            f"unknown strategies: {', '.join(sorted(unknown))}", param_hint="--strategies"
        )
    out_arg, runs_arg = out, runs  # as typed, for the command line in the results file
    out = out.resolve()
    settings = PlanSettings(
        ddxplus=ddxplus.resolve() if ddxplus else None,
        rounds=rounds,
        local_epochs=local_epochs,
        max_cases=max_cases,
        max_eval_cases=max_eval_cases,
        lora_top_layers=top_layers,
        lora_rank=rank,
        lora_targets=targets,
        learning_rate=lr,
        batch_size=batch_size,
        strategies=chosen,
        groups=tuple(g.strip() for g in groups.split(",") if g.strip()),
    )
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    from feddx.model.loading import resolve_model

    resolve_model(model)  # an unknown --model: exit 2 before any run starts
    runs = runs.resolve()
    base = base_config(settings, runs, model)
    plan = default_plan(settings)
    console.print(
        f"[bold]feddx federate experiments[/]: {len(plan)} runs, engine {engine}, "
        f"results in {out / RESULTS_FILE}"
    )
    parts = [
        "feddx federate experiments",
        f"--out {shlex.quote(str(out_arg))}",
        f"--runs {shlex.quote(str(runs_arg))}",
    ]
    if ddxplus is not None:
        parts.append(f"--ddxplus {shlex.quote(str(ddxplus))}")
    parts += [
        f"--rounds {rounds}",
        f"--local-epochs {local_epochs}",
        f"--limit {max_cases}",
        f"--max-eval-cases {max_eval_cases}",
        f"--top-layers {top_layers}",
        f"--rank {rank}",
        f"--targets {targets}",
        f"--learning-rate {lr:g}",
        f"--batch-size {batch_size}",
        f"--strategies {strategies}",
        f"--groups {groups}",
        f"--engine {engine}",
    ]
    command = " ".join(parts)
    sizes = message_sizes(base.replace(data="uci-heart"))

    finished: list[Any] = []

    def done(exp: Any, summary: dict[str, Any]) -> None:
        """Print the row and rewrite the results file after every run (partial results stay
        readable while the plan goes on)."""
        finished.append((exp, summary))
        final = summary.get("final") or {}
        console.print(
            f"  {exp.name}: top-1 {final.get('top1', float('nan')):.3f}, "
            f"{summary.get('seconds', 0) / 60:.1f} min"
        )
        write_results(
            finished,
            settings,
            base,
            out / RESULTS_FILE,
            engine=cast(Engine, engine),
            sizes=sizes,
            command=command,
        )

    run_plan(plan, base, runs, engine=cast(Engine, engine), on_done=done)
    console.print(f"Results: {out / RESULTS_FILE}")
