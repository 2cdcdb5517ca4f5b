"""The feddx ServerApp: rounds of federated LoRA fine-tuning with checkpoints and history.

Declared in ``pyproject.toml`` as ``feddx.federated.server_app:app``; its settings come from
``context.run_config`` (:class:`~feddx.federated.config.FederatedConfig`).

Each round:

1. seed ``random``/``numpy`` from (run seed, round), so client sampling and DP noise are the
   same in a rerun or a resumed run;
2. the strategy (:func:`~feddx.federated.strategies.build_strategy`) builds the train messages:
   the global adapter as an ArrayRecord plus a ConfigRecord (round, proximal mu);
3. send them and wait up to ``round-timeout`` seconds; whoever has not answered by then is left
   out of this round;
4. the guarded strategy validates, decodes and aggregates the replies
   (:mod:`feddx.federated.guard`); with too few valid replies the global adapter stays;
5. evaluate the global adapter on the validation cases (every ``eval-every`` rounds and after
   the last), save it as a loadable adapter, write ``history.json`` and plots, and checkpoint.

The loop is Flower's ``Strategy.start`` loop opened up: the same calls in the same order, plus
what ``start`` lacks (checkpoint/resume, byte accounting, reply validation, privacy ledger).
With ``resume`` (default), a restarted server continues after the last checkpointed round.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from feddx import paths
from feddx.errors import ConfigError
from feddx.federated.checkpoint import (
    CheckpointError,
    ServerCheckpoint,
    capture_strategy_state,
    load_latest,
    restore_strategy_state,
    save_checkpoint,
)
from feddx.federated.codec import content_bytes, from_array_record, to_array_record
from feddx.federated.config import FederatedConfig
from feddx.federated.guard import GuardedStrategy
from feddx.federated.history import plot_history, write_history
from feddx.federated.privacy import RdpLedger, central_round_release, epsilon_of
from feddx.federated.strategies import (
    build_strategy,
    client_selection,
)

log = logging.getLogger(__name__)

GLOBAL_ADAPTER_DIR = paths.GLOBAL_ADAPTER_DIR  # where the registry and the demo look for it


@dataclass
class FederationResult:
    """The outcome of :func:`run_server`."""

    rounds_completed: int
    global_arrays: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    out_dir: Path
    resumed_from: int  # 0: a fresh run


def seed_round(seed: int, server_round: int) -> None:
    """Seed the global RNGs Flower's sampling (``random``) and DP noise (``numpy``) draw from."""
    mixed = (seed * 1_000_003 + server_round * 7919) % (2**32)
    random.seed(mixed)
    np.random.seed(mixed)


def run_server(
    grid: Grid, cfg: FederatedConfig, *, stop_after: int | None = None
) -> FederationResult:
    """Run (or resume) the federation described by ``cfg`` over ``grid``.

    ``stop_after``: return after this round (for tests that simulate a server crash).
    Raises :class:`ConfigError` when a checkpoint in ``out-dir`` belongs to a run with other
    settings.
    """
    from feddx.federated.task import adapter_model, evaluate_adapter, task_data

    out = cfg.out_path()
    out.mkdir(parents=True, exist_ok=True)
    num_nodes = cfg.num_clients
    strategy = build_strategy(cfg, num_nodes)
    am = adapter_model(cfg)
    data = task_data(cfg)
    eval_cases = data.validation[: cfg.max_eval_cases or None]
    fingerprint = cfg.fingerprint()
    log.info(
        "federation: %s, %d rounds, %d clients, %d validation cases, out %s",
        cfg.strategy,
        cfg.num_rounds,
        num_nodes,
        len(eval_cases),
        out,
    )
    log.info("client selection: %s", client_selection(cfg))

    def evaluate(arrays: dict[str, np.ndarray]) -> dict[str, float]:
        return evaluate_adapter(
            am,
            arrays,
            eval_cases,
            data.candidates,
            data.icd10,
            max_prompt_tokens=cfg.max_prompt_tokens,
        )

    ledger = RdpLedger()
    ckpt = load_latest(out) if cfg.resume else None
    if ckpt is not None:
        if ckpt.fingerprint != fingerprint:
            raise ConfigError(
                f"{out} holds a checkpoint of a run with other settings; use another out-dir "
                "or resume = false"
            )
        global_arrays = ckpt.global_arrays
        history = ckpt.history
        ledger = RdpLedger.from_dict(ckpt.privacy)
        try:
            restore_strategy_state(strategy, ckpt.strategy_meta, ckpt.strategy_arrays)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint strategy state does not fit: {e}") from None
        start = ckpt.server_round + 1
        log.info("resuming after round %d", ckpt.server_round)
    else:
        global_arrays = {k: np.array(v, dtype=np.float32) for k, v in am.initial.items()}
        history = [{"round": 0, "seconds": 0.0}]
        if cfg.eval_initial:
            history[0]["eval"] = evaluate(global_arrays)
            log.info("round 0 (initial adapter): %s", _fmt(history[0]["eval"]))
        start = 1

    resumed_from = start - 1 if ckpt is not None else 0
    last = cfg.num_rounds if stop_after is None else min(cfg.num_rounds, stop_after)
    for rnd in range(start, last + 1):
        t0 = time.perf_counter()
        seed_round(cfg.seed, rnd)
        global_record = to_array_record(global_arrays)
        messages = list(strategy.configure_train(rnd, global_record, ConfigRecord(), grid))
        sent = sum(content_bytes(m.content) for m in messages)
        replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
        received = sum(content_bytes(m.content) for m in replies if m.has_content())
        agg_arrays, agg_metrics = strategy.aggregate_train(rnd, replies)
        outcome = strategy.last_outcome
        entry: dict[str, Any] = {
            "round": rnd,
            "sampled": len(messages),
            "bytes_sent": sent,
            "bytes_received": received,
            "bytes_per_reply": received / max(1, sum(m.has_content() for m in replies)),
            **(outcome.to_dict() if outcome else {}),
        }
        if agg_arrays is not None:
            global_arrays = {
                k: np.asarray(v, dtype=np.float32)
                for k, v in sorted(from_array_record(agg_arrays).items())
            }
            if cfg.dp == "central" and outcome is not None:
                ledger.add(central_round_release(cfg.dp_noise_multiplier))
        if agg_metrics is not None:
            entry["train_loss"] = _float(agg_metrics.get("train-loss"))
            entry["train_seconds"] = _float(agg_metrics.get("train-seconds"))
        entry.update(_privacy_entry(cfg, ledger, replies, strategy))
        if rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds:
            entry["eval"] = evaluate(global_arrays)
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        log.info(
            "round %d: %d/%d replies accepted, %.1f KiB sent, %.1f KiB received%s",
            rnd,
            entry.get("accepted", 0),
            len(messages),
            sent / 1024,
            received / 1024,
            f", {_fmt(entry['eval'])}" if "eval" in entry else "",
        )
        meta, arrays = capture_strategy_state(strategy)
        save_checkpoint(
            out,
            ServerCheckpoint(
                rnd, fingerprint, global_arrays, history, ledger.to_dict(), meta, arrays
            ),
        )
        _write_outputs(out, cfg, am, global_arrays, history, rnd)

    done = history[-1]["round"]
    if start > last:  # nothing left to do: refresh outputs anyway
        _write_outputs(out, cfg, am, global_arrays, history, done)
    return FederationResult(done, global_arrays, history, out, resumed_from)


def _privacy_entry(
    cfg: FederatedConfig, ledger: RdpLedger, replies: list[Message], strategy: GuardedStrategy
) -> dict[str, Any]:
    if cfg.dp == "central":
        last = ledger.releases[-1:] if ledger.releases else []
        return {
            "epsilon_round": epsilon_of(last, cfg.dp_delta),
            "epsilon_total": ledger.epsilon(cfg.dp_delta),
            "delta": cfg.dp_delta,
        }
    if cfg.dp == "local":
        accepted = set(strategy.last_outcome.accepted_nodes if strategy.last_outcome else [])
        rows = [
            next(iter(m.content.metric_records.values()))
            for m in replies
            if m.has_content() and int(m.metadata.src_node_id) in accepted
        ]
        eps_round = [_float(r.get("dp-epsilon-round")) or 0.0 for r in rows]
        eps_total = [_float(r.get("dp-epsilon-total")) or 0.0 for r in rows]
        return {
            "epsilon_round": max(eps_round, default=0.0),
            "epsilon_total": max(eps_total, default=0.0),
            "delta": cfg.dp_delta,
        }
    return {}


def _write_outputs(
    out: Path,
    cfg: FederatedConfig,
    am: Any,
    global_arrays: dict[str, np.ndarray],
    history: list[dict[str, Any]],
    rnd: int,
) -> None:
    from feddx.data.candidates import CandidateList
    from feddx.federated.codec import numpy_to_torch_state
    from feddx.federated.task import task_data
    from feddx.model.adapter import load_adapter_state
    from feddx.train.recipe import save_trained_adapter

    load_adapter_state(am.model, numpy_to_torch_state(global_arrays))
    # The temperature fitted on the server's validation cases, when the saved round was
    # evaluated (otherwise 1.0 and no source: nothing was fitted for these weights).
    final = history[-1].get("eval") if history and history[-1].get("round") == rnd else None
    fitted = final.get("temperature") if final else None
    source = (
        f"server validation split ({int(final.get('n', 0))} cases), round {rnd}"
        if final and fitted
        else None
    )
    task = task_data(cfg)
    save_trained_adapter(
        am.model,
        out / GLOBAL_ADAPTER_DIR,
        base_fingerprint=am.fingerprint,
        max_prompt_tokens=cfg.max_prompt_tokens,
        # the list the service must rank with this adapter (it refuses another)
        candidates=CandidateList(list(task.candidates), dict(task.icd10)),
        temperature=float(fitted) if fitted else 1.0,
        temperature_source=source,
        metadata={
            "federated_round": rnd,
            "strategy": cfg.strategy,
            "data": _safe_data(cfg),
            **_split_record(cfg),
        },
    )
    import shutil

    kept = out / paths.ROUND_ADAPTERS_DIR / f"round-{rnd:05d}"
    shutil.copytree(out / GLOBAL_ADAPTER_DIR, kept, dirs_exist_ok=True)
    write_history(out, history, summarize(cfg, history))
    plot_history(out, history)


def _split_record(cfg: FederatedConfig) -> dict[str, Any]:
    """The split the clients trained beside, as ``feddx train`` records it, so ``feddx
    evaluate`` scores the global adapter on the server's held-out cases by default: the
    validation split of ``data`` (:func:`feddx.federated.task.task_data`). Nothing when the
    held-out cases are another file (``eval-data``) or a sample (``max-cases``): evaluate
    then says it could not check the split."""
    if cfg.eval_data or cfg.max_cases:
        return {}
    return {"split": "train", "test_fraction": cfg.validation_fraction, "seed": cfg.seed}


def _safe_data(cfg: FederatedConfig) -> str:
    """The data source name only: paths can name institutions or people."""
    return cfg.data.split(":", 1)[0]


def summarize(cfg: FederatedConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline figures of a run (for the results table)."""
    evals = [h for h in history if h.get("eval")]
    rounds = [h for h in history if h["round"] > 0]
    return {
        "strategy": cfg.strategy,
        "data": _safe_data(cfg),
        "partition": cfg.partition,
        "num_clients": cfg.num_clients,
        "num_rounds": cfg.num_rounds,
        "rounds_completed": history[-1]["round"] if history else 0,
        "compression": cfg.compression,
        "dp": cfg.dp,
        "client_selection": client_selection(cfg),
        "initial": history[0].get("eval") if history else None,
        "final": evals[-1]["eval"] if evals else None,
        "bytes_sent": sum(h.get("bytes_sent", 0) for h in rounds),
        "bytes_received": sum(h.get("bytes_received", 0) for h in rounds),
        "mean_bytes_per_reply": (
            sum(h.get("bytes_per_reply", 0.0) for h in rounds) / len(rounds) if rounds else 0.0
        ),
        "rejected": sum(len(h.get("rejected", [])) for h in rounds),
        "failed": sum(h.get("failed", 0) for h in rounds),
        "epsilon_total": rounds[-1].get("epsilon_total") if rounds else None,
        "seconds": sum(h.get("seconds", 0.0) for h in history),
    }


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {metrics[k]:.3f}" for k in ("top1", "top3", "macro_f1", "val_loss") if k in metrics
    )


# ----------------------------------------------------------------------------- the Flower app
app = ServerApp()


@app.main()  # type: ignore[untyped-decorator]
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: read the run config and run the federation."""
    from feddx.federated.task import quiet_runtime

    quiet_runtime()
    cfg = FederatedConfig.from_run_config(context.run_config)
    result = run_server(grid, cfg)
    final = result.history[-1].get("eval") or {}
    log.info("federation finished after round %d: %s", result.rounds_completed, _fmt(final))
