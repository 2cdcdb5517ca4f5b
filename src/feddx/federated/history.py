"""The per-round history of a federated run: ``history.json`` and its plots.

One entry per round (round 0 is the initial global adapter, i.e. the base model), holding only
numbers and node ids: evaluation metrics of the global adapter, aggregated client training
metrics, bytes sent and received, which replies were accepted or rejected (with reasons), and
the privacy spent. Plots: validation top-1 and loss per round, client training loss, and the
bytes moved per round.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feddx.io import atomic_write_json, atomic_write_with

HISTORY_FILE = "history.json"


def write_history(
    out_dir: Path, history: Sequence[dict[str, Any]], summary: dict[str, Any]
) -> Path:
    """Write ``history.json`` (atomically): ``{"summary": ..., "rounds": [...]}``."""
    path = out_dir / HISTORY_FILE
    atomic_write_json(path, {"summary": summary, "rounds": list(history)})
    return path


def plot_history(out_dir: Path, history: Sequence[dict[str, Any]]) -> list[Path]:
    """``plots/metrics.png`` (top-1 and losses per round) and ``plots/bytes.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []

    evaluated = [h for h in history if h.get("eval")]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    if evaluated:
        rounds = [h["round"] for h in evaluated]
        ax_acc.plot(rounds, [h["eval"]["top1"] for h in evaluated], "o-", label="top-1")
        ax_acc.plot(rounds, [h["eval"]["top3"] for h in evaluated], "s--", label="top-3")
        ax_loss.plot(rounds, [h["eval"]["val_loss"] for h in evaluated], "o-", label="validation")
    trained = [h for h in history if h.get("train_loss") is not None]
    if trained:
        ax_loss.plot(
            [h["round"] for h in trained],
            [h["train_loss"] for h in trained],
            "s--",
            label="client training (mean)",
        )
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Global adapter, validation", ylim=(0, 1))
    ax_loss.set(xlabel="round", ylabel="loss (nats)", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    fig.tight_layout()
    written.append(_save(fig, plots / "metrics.png"))
    plt.close(fig)

    moved = [h for h in history if h["round"] > 0]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    if moved:
        rounds = [h["round"] for h in moved]
        ax.bar(
            [r - 0.2 for r in rounds],
            [h["bytes_sent"] / 1024 for h in moved],
            0.4,
            label="server -> clients",
        )
        ax.bar(
            [r + 0.2 for r in rounds],
            [h["bytes_received"] / 1024 for h in moved],
            0.4,
            label="clients -> server",
        )
    ax.set(xlabel="round", ylabel="KiB", title="Bytes per round")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best")
    fig.tight_layout()
    written.append(_save(fig, plots / "bytes.png"))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110))
    return path
