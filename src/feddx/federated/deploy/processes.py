"""Start long-running Flower processes and stop exactly those, with everything they spawned.

Flower's daemons spawn helpers: a SuperLink starts a ``flower-superexec`` *in a new session*
(so it is not in the SuperLink's process group), which starts one ``flwr-serverapp`` per run; a
SuperNode starts a ``flower-superexec`` that starts a ``flwr-clientapp`` per message. Killing the
PIDs we started is therefore not enough, and killing by name (``pkill flower``) would hit other
users' federations. :class:`ProcessSet` starts each daemon as the leader of its own session,
records every PID in a file (so a shell ``trap`` can clean up after a crashed Python process),
and on :meth:`ProcessSet.stop` terminates each process group plus every descendant it can
still find, escalating from SIGTERM to SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from feddx.errors import FeddxError


class DeploymentError(FeddxError):
    """A federation process failed to start, was refused, or a run did not complete."""

    exit_code = 1


@dataclass
class ManagedProcess:
    """One process we started: its name (for logs and errors), Popen handle and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)
    # psutil handles remember each process's start time, so a recycled PID is never signalled.
    known_descendants: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of this process's log, for error messages (Flower logs carry no
        patient data: only ids, counts, metrics and tracebacks of our code)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _descendants(pid: int) -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def _running(proc: psutil.Process) -> bool:
    # is_running() also checks the start time (PID reuse); a zombie has exited already.
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has exited; only its entry remains)."""
    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


class ProcessSet:
    """The processes of one federation run, stopped together.

    Use as a context manager: leaving the block (normally, by an exception, or by SIGTERM/SIGINT
    turned into an exception by the caller) stops every process. PIDs are appended to
    ``pid_file`` as ``<pid> <name>`` lines when each process starts.
    """

    def __init__(self, pid_file: Path, *, grace_seconds: float = 10.0) -> None:
        self.pid_file = pid_file
        self.grace_seconds = grace_seconds
        self.processes: list[ManagedProcess] = []
        pid_file.parent.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            log.close()
            raise DeploymentError(f"cannot start {name} ({argv[0]}): {e.strerror}") from e
        proc = ManagedProcess(name=name, popen=popen, log_path=log_path, _log=log)
        self.processes.append(proc)
        with self.pid_file.open("a", encoding="utf-8") as f:
            f.write(f"{popen.pid} {name}\n")
        return proc

    def refresh_descendants(self) -> None:
        """Remember the current descendants of every process.

        Called periodically (and by :meth:`stop`) because a helper whose parent already died is
        re-parented to init and can no longer be found from our PIDs.
        """
        for proc in self.processes:
            if proc.alive():
                proc.known_descendants.update(_descendants(proc.pid))

    def all_pids(self) -> set[int]:
        """Every PID started or seen as a descendant so far."""
        pids: set[int] = set()
        for proc in self.processes:
            pids.add(proc.pid)
            pids |= set(proc.known_descendants)
        return pids

    def _handles(self) -> list[psutil.Process]:
        handles: list[psutil.Process] = []
        for proc in self.processes:
            with contextlib.suppress(psutil.Error):
                handles.append(psutil.Process(proc.pid))  # our child: cannot be recycled yet
            handles.extend(proc.known_descendants.values())
        return handles

    def stop(self) -> list[int]:
        """Stop every process and its descendants; return the PIDs still running (normally none).

        SIGTERM first (Flower shuts down cleanly and its helpers exit with their parent), then
        SIGKILL for whatever is left after ``grace_seconds``.
        """
        self.refresh_descendants()
        handles = self._handles()
        # Newest first: SuperNodes before the SuperLink, so nodes do not log reconnect storms.
        for proc in reversed(self.processes):
            if proc.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for handle in handles:
            with contextlib.suppress(psutil.Error):
                handle.terminate()
        deadline = time.monotonic() + self.grace_seconds
        while time.monotonic() < deadline and any(_running(h) for h in handles):
            for proc in self.processes:
                proc.popen.poll()  # reap our direct children so they stop counting
            time.sleep(0.1)
        for handle in handles:
            if _running(handle):
                with contextlib.suppress(psutil.Error):
                    handle.kill()
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
            if proc._log is not None:
                proc._log.close()
                proc._log = None
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(_running(h) for h in handles):
            time.sleep(0.05)
        return sorted(h.pid for h in handles if _running(h))
