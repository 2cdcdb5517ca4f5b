"""The grouped bar chart a run draws per region and institution: one cluster of bars per
group, one bar per series (a column of the table, a level of personalization), n under each
group. ``per_group.png`` (:mod:`feddx.personalize.report`) and ``error_by_group.png``
(:mod:`feddx.personalize.error_analysis`) are both this chart, so the layout is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BarSeries:
    """One bar per group: ``heights`` in the groups' order, drawn in ``colour`` (a colormap's
    name and the value it is called with: an int picks a listed map's colour, such as
    ``tab10``'s, a float in [0, 1] a point along a continuous one, such as ``viridis``), each
    bar labelled with its entry of ``bar_labels`` where given."""

    label: str
    heights: list[float]
    colour: tuple[str, float]
    bar_labels: list[str] | None = None


def plot_group_bars(
    groups: Sequence[dict[str, Any]],
    series: Sequence[BarSeries],
    *,
    ylabel: str,
    title: str,
    path: Path,
) -> None:
    """Write the chart to ``path`` as a PNG (Agg, atomic). ``groups`` are table rows (``kind``,
    ``group``, ``n``): a region's name is marked ``[R]``; the y axis runs from 0 to 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feddx.io import atomic_write_with

    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.5))
    for j, s in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        cmap, at = s.colour
        bars = ax.bar(xs, s.heights, width, label=s.label, color=plt.get_cmap(cmap)(at))
        if s.bar_labels is not None:
            ax.bar_label(bars, s.bar_labels, fontsize=6)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [("[R] " if g["kind"] == "region" else "") + f"{g['group']}\n(n={g['n']})" for g in groups],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    atomic_write_with(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


__all__ = ["BarSeries", "plot_group_bars"]
