"""Rich progress bars for the training loop's events (:class:`feddx.train.trainer.TrainProgress`).

The loop only reports; how it is shown is the caller's business. ``feddx train`` and ``feddx
demo`` show one bar per stage (caching the frozen layers, then the optimizer steps with the
step's loss and examples/s), on stderr so the results on stdout stay clean::

    with train_progress(enabled=console_err.is_terminal) as progress:
        result = train_adapter(..., progress=progress)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from feddx.train.trainer import NoProgress, TrainProgress


class RichTrainProgress:
    """A :class:`~feddx.train.trainer.TrainProgress` drawing each stage as a rich bar on a
    running :class:`rich.progress.Progress`."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self._task: TaskID | None = None

    def started(self, stage: str, total: int, done: int = 0) -> None:
        self._task = self.bar.add_task(stage, total=total, completed=done, info="")

    def advanced(self, n: int = 1, info: str = "") -> None:
        if self._task is None:
            return
        fields: dict[str, Any] = {"info": info} if info else {}
        self.bar.update(self._task, advance=n, **fields)

    def finished(self) -> None:
        if self._task is not None:
            self.bar.stop_task(self._task)  # its clock stops; the bar stays on screen
        self._task = None


@contextmanager
def train_progress(
    console: Console | None = None, *, enabled: bool = True
) -> Iterator[TrainProgress]:
    """Bars on ``console`` (default: a new stderr console) for the duration of the block, or
    a :class:`~feddx.train.trainer.NoProgress` when not ``enabled`` (e.g. output is not a
    terminal, where redrawn bars would litter a log)."""
    if not enabled:
        yield NoProgress()
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )
    with bar:
        yield RichTrainProgress(bar)
