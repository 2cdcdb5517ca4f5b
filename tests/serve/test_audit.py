"""The audit log: whole JSON lines, appended, private, a torn tail healed, no patient data."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from feddx.serve.audit import AuditEvent, AuditLog, read_audit


def event(i: int, **kw: object) -> AuditEvent:
    return AuditEvent(
        request_id=f"r{i}",
        method="POST",
        route="/v1/diagnose",
        status=200,
        outcome="ok",
        latency_ms=1.5,
        **kw,  # type: ignore[arg-type]
    )


def test_lines_are_appended_whole_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "a" / "audit.jsonl"
    log = AuditLog(path)
    threads = [
        threading.Thread(target=lambda k=k: [log.record(event(k * 100 + i)) for i in range(50)])
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    ids = sorted(json.loads(x)["request_id"] for x in lines)
    assert ids == sorted(f"r{k * 100 + i}" for k in range(4) for i in range(50))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_concurrent_lines_share_fsyncs_and_each_returns_once_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: a record returns only after an fsync that began once its line was
    written, and requests finishing together share fsyncs (one slow flush each otherwise)."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    flushed: list[set[str]] = []  # the lines each completed fsync covered

    def slow_fsync(fd: int) -> None:
        covered = {json.loads(x)["request_id"] for x in path.read_text().splitlines()}
        time.sleep(0.05)
        flushed.append(covered)

    monkeypatch.setattr("feddx.serve.audit.os.fsync", slow_fsync)
    late: list[str] = []

    def one(k: int) -> None:
        log.record(event(k))
        if not any(f"r{k}" in covered for covered in flushed):
            late.append(f"r{k}")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert late == []
    assert len(path.read_text().splitlines()) == 12
    assert len(flushed) < 12  # shared: one fsync per line would make 12


def test_a_torn_tail_is_terminated_before_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record(event(1, adapter_chain=("global/v1",), answering="global/v1"))
    log.close()
    with path.open("ab") as f:  # a crash mid-write by an older writer
        f.write(b'{"ts": "2026-12-01T00:00:00Z", "request_id": "torn')
    log = AuditLog(path)
    log.record(event(2))
    log.close()
    lines = read_audit(path)
    assert [x["request_id"] for x in lines] == ["r1", "r2"]
    assert lines[0]["adapter_chain"] == ["global/v1"] and lines[0]["answering"] == "global/v1"
    assert set(lines[1]) >= {
        "ts",
        "request_id",
        "route",
        "status",
        "outcome",
        "latency_ms",
        "subject",
    }


def test_patient_refs_are_keyed_and_scoped_by_institution(tmp_path: Path) -> None:
    a = AuditLog(tmp_path / "a.jsonl", patient_key=b"k1")
    b = AuditLog(tmp_path / "b.jsonl", patient_key=b"k1")
    c = AuditLog(tmp_path / "c.jsonl", patient_key=b"k2")
    ref = a.patient_ref("cleveland", "p-1")
    assert ref == b.patient_ref("cleveland", "p-1") and len(ref) == 16
    assert ref != a.patient_ref("va-long-beach", "p-1") != c.patient_ref("cleveland", "p-1")
    assert "p-1" not in ref
