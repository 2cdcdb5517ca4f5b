"""The append-only audit log: one JSON line per request, written so a crash never tears a line.

Each line says who (the credential's subject and institution), when (UTC), what (method, route
template, status, outcome), with what (the adapter chain that answered, fallbacks taken, cases
scored), for whom (a keyed hash of the patient id, never the id) and how long it took. It never
holds patient text, findings, the raw patient id, the request body or a credential.

A line is encoded whole, written with a single ``os.write`` on a descriptor opened with
``O_APPEND`` (the kernel appends it at the end in one piece, even with several writers) and
fsynced before the request's response is complete, so a crash leaves the log ending at a line
boundary. A write that lands short (disk full) is reported, and the partial tail is terminated
with a newline by the next successful write so every later line parses.

The fsync is a group commit: a line written while another request's fsync runs waits for the
next one, and one fsync covers every line written before it started, so concurrent requests
share the disk's flush instead of queueing one flush each (the service calls :meth:`AuditLog.
record` off its event loop, from several threads).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEvent:
    """One request, as the audit log records it (see the module docstring)."""

    request_id: str
    method: str
    route: str
    status: int
    outcome: str
    latency_ms: float
    subject: str | None = None
    institution: str | None = None
    adapter_chain: tuple[str, ...] = ()
    answering: str | None = None
    fallbacks: int = 0
    cases: int = 0
    patient_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    """Appends :class:`AuditEvent` lines to ``path`` (created 0600 with its folder).

    ``patient_key`` keys the patient-id hash (:meth:`patient_ref`): set it (the service reads
    ``FEDDX_AUDIT_KEY``) to link one patient's requests across restarts; otherwise a random key
    per process makes the references unlinkable beyond it.
    """

    def __init__(self, path: Path, *, patient_key: bytes | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._key = patient_key or secrets.token_bytes(32)
        self._lock = threading.Lock()  # the write and its sequence number
        self._sync_lock = threading.Lock()  # one fsync at a time
        self._written = 0  # lines written so far
        self._synced = 0  # lines known to be on disk
        self._torn = self._ends_torn()

    def _ends_torn(self) -> bool:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return False
        with self.path.open("rb") as f:
            f.seek(size - 1)
            return f.read(1) != b"\n"

    def patient_ref(self, institution: str, patient_id: str) -> str:
        """A keyed, institution-scoped hash of ``patient_id`` (16 hex digits)."""
        msg = f"{institution}\x00{patient_id}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:16]

    def record(self, event: AuditEvent) -> None:
        """Append ``event`` as one line and fsync. Raises :class:`OSError` if it cannot."""
        line = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            **asdict(event),
        }
        line["adapter_chain"] = list(event.adapter_chain)
        if not line["detail"]:
            del line["detail"]
        data = (json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            if self._torn:
                data = b"\n" + data
            written = os.write(self._fd, data)
            torn = self._torn = written != len(data)
            self._written += 1
            mine = self._written
        self._sync(mine)
        if torn:
            raise OSError(f"audit log {self.path}: short write ({written} of {len(data)} bytes)")

    def _sync(self, line: int) -> None:
        """Return once line number ``line`` is on disk: fsync, unless an fsync that started
        after it was written has already finished (the group commit)."""
        with self._sync_lock:
            if self._synced >= line:
                return
            with self._lock:
                upto = self._written  # every line counted here was written before the fsync
            os.fsync(self._fd)
            self._synced = upto

    def close(self) -> None:
        with self._sync_lock, self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every complete line of an audit log (a torn tail, if any, is skipped)."""
    out = []
    for raw in Path(path).read_bytes().split(b"\n"):
        if raw.strip():
            try:
                out.append(json.loads(raw))
            except ValueError:
                log.warning("audit log %s has a torn line (skipped)", path)
    return out
