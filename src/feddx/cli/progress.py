"""Progress of long steps, shown the way the output is read (issue 26 item 2).

The library only reports (:class:`feddx.train.trainer.TrainProgress`, an evaluation's
``on_progress(stage, done, total)``, a personalize run's messages); this module shows it:

- on a terminal, rich bars on stderr;
- when stderr is a file or a pipe (``nohup``, CI logs, ``> log 2>&1``), plain timestamped lines,
  flushed as written, one when a stage starts, then at most one every few seconds, and one when
  it ends: ``2026-12-07 16:40:02Z train: training 3/12 steps (25%), elapsed 0:00:31,
  0.10 steps/s, ETA 0:01:33, loss 2.345  8.1 ex/s``;
- with ``--log-format json``, the same events as one JSON object per line;
- with ``--quiet``, nothing (results and errors are still printed).

The choice is made once per process by :func:`configure_output` (the root options ``--quiet``
and ``--log-format``, or ``$FEDDX_LOG_FORMAT``); commands ask :func:`progress_for`. Progress
goes to stderr so a command's results (``--json``) stay alone on stdout::

    with progress_for("train") as progress:
        result = train_adapter(..., progress=progress)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TextIO

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


class LogFormat(StrEnum):
    """How progress is shown: ``auto`` (bars on a terminal, lines otherwise), ``rich``,
    ``plain`` (timestamped lines) or ``json`` (one object per line)."""

    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"


# Units of the stages whose library name does not say what is counted.
_UNITS = {"training": "steps", "federation": "rounds"}
# Seconds between two lines of one stage (its start and end are always written).
LINE_INTERVAL_S = 5.0

_settings: dict[str, Any] = {"quiet": False, "format": LogFormat.auto}


def configure_output(*, quiet: bool = False, log_format: LogFormat = LogFormat.auto) -> None:
    """Set how every later :func:`progress_for` shows progress (the CLI's root options)."""
    _settings["quiet"] = quiet
    _settings["format"] = LogFormat(log_format)


def progress_style(console: Console | None = None) -> str:
    """``"off"``, ``"rich"``, ``"plain"`` or ``"json"`` for output on ``console`` (default:
    stderr), from :func:`configure_output`'s settings."""
    if _settings["quiet"]:
        return "off"
    fmt: LogFormat = _settings["format"]
    if fmt is LogFormat.auto:
        console = console or Console(stderr=True)
        return "rich" if console.is_terminal else "plain"
    return fmt.value


class StageProgress(Protocol):
    """What a command reports: stages with a size (a
    :class:`~feddx.train.trainer.TrainProgress` plus ``update`` and ``note``)."""

    def started(self, stage: str, total: int, done: int = 0) -> None: ...

    def advanced(self, n: int = 1, info: str = "") -> None: ...

    def finished(self) -> None: ...

    def update(self, stage: str, done: int, total: int) -> None:
        """Absolute form (an evaluation's ``on_progress``): ``stage`` is at ``done`` of
        ``total``; a new stage name ends the previous one."""

    def note(self, message: str) -> None:
        """A one-off message (a personalize run's step), timestamped like the progress."""


class NoStageProgress:
    """Shows nothing (``--quiet``)."""

    def started(self, stage: str, total: int, done: int = 0) -> None:
        pass

    def advanced(self, n: int = 1, info: str = "") -> None:
        pass

    def finished(self) -> None:
        pass

    def update(self, stage: str, done: int, total: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def _clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LineProgress:
    """Timestamped lines (or JSON objects) on ``stream``, flushed as written: readable in a
    log file while the command still runs. ``interval`` seconds at least between two lines
    of one stage, apart from its first and last; with ``only_slow``, a stage that ends within
    ``interval`` writes nothing (reading a small file is not worth two lines)."""

    def __init__(
        self,
        command: str,
        stream: TextIO | None = None,
        *,
        as_json: bool = False,
        interval: float = LINE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        only_slow: bool = False,
    ) -> None:
        self.command = command
        self.only_slow = only_slow
        self._shown = False
        self.stream = stream
        self.as_json = as_json
        self.interval = interval
        self.clock = clock
        self._stage: str | None = None
        self._total = 0
        self._done = 0
        self._start_done = 0
        self._t0 = 0.0
        self._last = 0.0
        self._info = ""

    # --- TrainProgress ---------------------------------------------------------------
    def started(self, stage: str, total: int, done: int = 0) -> None:
        if self._stage is not None:
            self.finished()
        self._stage, self._total, self._done, self._start_done = stage, total, done, done
        self._t0 = self._last = self.clock()
        self._info = ""
        self._shown = not self.only_slow
        if self._shown:
            self._write("started")

    def advanced(self, n: int = 1, info: str = "") -> None:
        if self._stage is None:
            return
        self._done += n
        if info:
            self._info = info
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._shown = True  # a slow stage: its finished line is written
            if not 0 < self._total <= self._done:  # 100% is the finished line's to write
                self._write("progress")

    def finished(self) -> None:
        if self._stage is None:
            return
        if self._shown:
            self._write("finished")
        self._stage = None

    # --- StageProgress -----------------------------------------------------------------
    def update(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.started(stage, total)
        self.advanced(done - self._done)
        if done >= total:
            self.finished()

    def note(self, message: str) -> None:
        self._emit({"event": "note", "message": message}, message)

    # --- output --------------------------------------------------------------------------
    def _write(self, event: str) -> None:
        stage, done, total = self._stage or "", self._done, self._total
        elapsed = self.clock() - self._t0
        rate = (done - self._start_done) / elapsed if elapsed > 0 and done else None
        left = total - done
        eta: float | None = left / rate if rate and left > 0 else (0.0 if left <= 0 else None)
        unit = _UNITS.get(stage, "cases")
        record: dict[str, Any] = {
            "event": event,
            "stage": stage,
            "done": done,
            "total": total,
            "unit": unit,
            "elapsed_s": round(elapsed, 1),
            "rate_per_s": round(rate, 3) if rate is not None else None,
            "eta_s": round(eta, 1) if eta is not None and event != "finished" else None,
        }
        if total <= 0:
            record["total"] = record["eta_s"] = None
        if self._info:
            record["info"] = self._info
        if total > 0:
            parts = [f"{stage} {done:,}/{total:,} {unit} ({done / total:.0%})"]
        else:  # a size not known in advance (cases read from a file): the count so far
            parts = [f"{stage}: {done:,} {unit}"]
        if event == "finished":
            parts.append(f"done in {_clock(elapsed)}")
        else:
            parts.append(f"elapsed {_clock(elapsed)}")
        if rate is not None and done > self._start_done:
            parts.append(f"{rate:.2f} {unit}/s")
        if event != "finished" and total > 0:
            parts.append(f"ETA {_clock(eta)}" if eta is not None else "ETA -")
        if self._info:
            parts.append(self._info)
        self._emit(record, ", ".join(parts))

    def _emit(self, record: dict[str, Any], text: str) -> None:
        stamp = datetime.now(UTC)
        stream = self.stream or sys.stderr
        if self.as_json:
            line = json.dumps(
                {"time": stamp.isoformat(timespec="seconds"), "command": self.command, **record}
            )
        else:
            line = f"{stamp:%Y-%m-%d %H:%M:%S}Z {self.command}: {text}"
        stream.write(line + "\n")
        stream.flush()


class RichTrainProgress:
    """A :class:`~feddx.train.trainer.TrainProgress` drawing each stage as a rich bar on a
    running :class:`rich.progress.Progress`."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self._task: TaskID | None = None
        self._stage: str | None = None

    def started(self, stage: str, total: int, done: int = 0) -> None:
        self._task = self.bar.add_task(stage, total=total, completed=done, info="")
        self._stage = stage

    def advanced(self, n: int = 1, info: str = "") -> None:
        if self._task is None:
            return
        fields: dict[str, Any] = {"info": info} if info else {}
        self.bar.update(self._task, advance=n, **fields)

    def finished(self) -> None:
        if self._task is not None:
            self.bar.stop_task(self._task)  # its clock stops; the bar stays on screen
        self._task = None
        self._stage = None

    def update(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.finished()
            self.started(stage, total)
        if self._task is not None:
            self.bar.update(self._task, completed=done)

    def note(self, message: str) -> None:
        self.bar.console.print(
            f"[dim]{datetime.now(UTC):%H:%M:%S}[/]  {message}", highlight=False, markup=True
        )


def _bar(console: Console | None, transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=transient,
    )


@contextmanager
def progress_for(
    command: str, console: Console | None = None, *, transient: bool = False
) -> Iterator[StageProgress]:
    """The progress display of ``command`` for the duration of the block, as
    :func:`progress_style` chooses: rich bars on ``console`` (default: stderr), timestamped
    lines or JSON lines on stderr, or nothing."""
    style = progress_style(console)
    if style == "off":
        yield NoStageProgress()
    elif style == "rich":
        with _bar(console, transient) as bar:
            yield RichTrainProgress(bar)
    else:
        yield LineProgress(command, as_json=style == "json")


@contextmanager
def watching(
    progress: StageProgress,
    stage: str,
    total: int,
    read: Callable[[], int],
    *,
    every: float = 2.0,
) -> Iterator[None]:
    """Report ``read()`` (work done so far, e.g. rounds a federation has checkpointed) as
    ``stage`` of ``total`` every ``every`` seconds while the block runs
    (:func:`feddx.progress.polling`): for work done in other processes, which report nothing
    to this one."""
    from feddx.progress import polling

    seen = None
    try:
        with polling(read, lambda n: progress.update(stage, n, total), total, every=every) as seen:
            yield
    finally:  # after polling's last report: the count the work ended at
        if seen is not None and not seen.is_set():
            progress.finished()  # also when the work stopped short


def train_progress_factory(command: str) -> Callable[[Progress], StageProgress]:
    """For callers that own a rich bar (the demo): the bar when bars are shown, else lines
    (or nothing) in the style :func:`progress_style` chooses."""

    def make(bar: Progress) -> StageProgress:
        style = progress_style(bar.console)
        if style == "rich":
            return RichTrainProgress(bar)
        if style == "off":
            return NoStageProgress()
        return LineProgress(command, as_json=style == "json")

    return make


@contextmanager
def train_progress(console: Console | None = None, *, enabled: bool = True) -> Iterator[Any]:
    """Kept for callers of the earlier API: :func:`progress_for` with bars when ``enabled``."""
    if not enabled:
        from feddx.train.trainer import NoProgress

        yield NoProgress()
        return
    with _bar(console) as bar:
        yield RichTrainProgress(bar)
