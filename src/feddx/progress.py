"""Polling work done elsewhere for a progress display: the one background poller that the CLI
(``feddx federate``) and the demo share. A federation's rounds run in Flower's processes and
report nothing to this one; what they leave on disk (a checkpoint per round) is the progress."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress


@contextmanager
def polling(
    read: Callable[[], int],
    report: Callable[[int], None],
    total: int,
    *,
    every: float = 2.0,
) -> Iterator[threading.Event]:
    """Call ``report(done)`` with ``read()`` (clamped to ``0..total``) every ``every`` seconds
    while the block runs, from a background thread, and once more with the count the work
    ended at. Yields an event that is set when the thread saw the whole of it, so a caller can
    close a display that stopped short. A read that fails (``OSError``/``ValueError``: a file
    half written) is skipped, never raised into the work."""
    stop = threading.Event()
    complete = threading.Event()

    def count() -> int:
        return min(total, max(0, read()))

    def poll() -> None:
        while True:
            try:
                done = count()
            except (OSError, ValueError):
                done = -1
            if done >= 0:
                report(done)
            if done >= total:
                complete.set()
                return
            if stop.wait(every):
                return

    thread = threading.Thread(target=poll, name="feddx-progress-poll", daemon=True)
    thread.start()
    try:
        yield complete
    finally:
        stop.set()
        thread.join(timeout=every + 1.0)
        if not complete.is_set():
            with suppress(OSError, ValueError):
                report(count())
