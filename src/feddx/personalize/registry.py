"""The adapter registry: a persistent, checkable store of the adapters a federation and its
hospitals produce, one level of the personalization hierarchy each.

Layout under the registry root::

    registry.sqlite3                         one row per adapter (schema: PRAGMA user_version)
    adapters/global/v2/                      the adapter folders, copied in at registration
    adapters/regional/europe/v1/             (feddx_adapter.json, adapter_config.json,
    adapters/institutional/cleveland/v3/      adapter_model.safetensors)

Why it is built this way:

- **SQLite in WAL mode**, one kept connection per thread: a service reads (resolves, lists)
  while a trainer registers, and every write is one ``BEGIN IMMEDIATE`` transaction, so two
  registering processes are serialised and the next version number per (level, scope) is
  assigned under the lock. Version numbers are never reused after a delete, so an id a service
  cached always means the same weights.
- **The row is written last.** A folder is built beside its final place and renamed in
  (:func:`feddx.io.building_dir`), then the row is inserted and committed. A crash before the
  commit leaves a folder without a row, which no reader sees; the next ``register`` or
  :meth:`AdapterRegistry.clean_orphans` removes it.
- **Content hashes, checked on load.** ``content_sha256`` covers every file of the folder (names
  and bytes); :meth:`AdapterRegistry.verify` recomputes it and names the adapter and what is
  wrong (missing, truncated, corrupt, other base model) in one line. Results are cached by the
  files' size, mtime and inode, so resolving per request costs a few ``stat`` calls, not a hash
  of every adapter; a cached result is only trusted for files whose mtime is older than the
  check by more than :data:`RACY_SECONDS` (a file rewritten within the filesystem's timestamp
  granularity would otherwise look unchanged: git's "racy clean" problem). A change that keeps a
  file's size, mtime and inode is only seen by a ``fresh`` check or a new process.
- **No data.** A row holds ids, numbers and a hash of the training data's case ids and labels
  (:func:`data_fingerprint`), never cases, text or patient identifiers.
- **Two kinds of entry.** ``kind`` is ``adapter`` (LoRA weights, one level of the hierarchy)
  or ``case-index`` (an institution's retrieval index of past cases: vectors, labels and
  hashed case ids, no text; built by :mod:`feddx.personalize.case_index`), stored under
  ``adapters/case-index/<institution>/vN/`` with the same hash, versioning and atomic write,
  and resolved with the institution's chain (:meth:`AdapterRegistry.resolve` returns the
  newest intact one in :attr:`Resolution.case_index`). Schema version 2 added the ``kind``
  and ``lineage`` columns; a version-1 registry is migrated in place when opened (its
  entries become adapters), so older registries stay readable.

Scope names (regions, institutions) become folder names, so they are normalised once
(:func:`normalize_scope`: the one slug of :mod:`feddx.data.slug`) and checked for path-like
names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from feddx.data.schema import Case
from feddx.data.slug import slug
from feddx.errors import ConfigError, ModelError
from feddx.io import building_dir, file_sha256
from feddx.model.adapter import (
    META_FILE,
    PEFT_CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterInfo,
    LoraSpec,
    read_adapter_info,
)
from feddx.personalize.hierarchy import ResolvedChain, resolve_chain

log = logging.getLogger(__name__)

Level = Literal["global", "regional", "institutional"]
LEVELS: tuple[Level, ...] = ("global", "regional", "institutional")
"""Least specific first: a parent is always of an earlier level than its child."""

DB_FILE = "registry.sqlite3"
ADAPTERS_DIR = "adapters"
SCHEMA_VERSION = 2
Kind = Literal["adapter", "case-index"]
KINDS: tuple[Kind, ...] = ("adapter", "case-index")
CASE_INDEX_DIR = "case-index"
"""Folder (under ``adapters/``) and id prefix of case-index entries."""
ADAPTER_FILES = (META_FILE, PEFT_CONFIG_FILE, WEIGHTS_FILE)
"""What a registered adapter folder holds, and all it holds (anything else is corruption)."""
RACY_SECONDS = 2.0
"""A cached verification is trusted only for files last modified this long before it."""

_HASH_RE = re.compile(r"^(sha256:)?[0-9a-f]{16,128}$")
_ID_RE = re.compile(
    r"^(global/v(?P<gv>\d+)|(?P<level>regional|institutional)/(?P<scope>[^/]+)/v(?P<v>\d+))$"
)
_LEVEL_RANK = {level: i for i, level in enumerate(LEVELS)}

_SCHEMA = """
CREATE TABLE adapters (
    adapter_id TEXT PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('global', 'regional', 'institutional')),
    region TEXT,
    institution TEXT,
    parent_id TEXT,
    version INTEGER NOT NULL CHECK (version >= 1),
    rel_path TEXT NOT NULL UNIQUE,
    base_fingerprint TEXT NOT NULL,
    lora TEXT NOT NULL,
    max_prompt_tokens INTEGER NOT NULL,
    temperature REAL NOT NULL,
    training_round INTEGER,
    data_fingerprint TEXT,
    metrics TEXT NOT NULL,
    files TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'adapter',
    lineage TEXT
);
CREATE INDEX adapters_by_scope ON adapters (level, region, institution, version);
CREATE TABLE versions (
    level TEXT NOT NULL,
    scope TEXT NOT NULL,
    last_version INTEGER NOT NULL,
    PRIMARY KEY (level, scope)
);
CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO state (key, value) VALUES ('generation', 0);
"""


@dataclass(frozen=True)
class AdapterEntry:
    """One registered adapter: where it sits in the hierarchy, how to score with it, and how
    to check it is still the adapter that was registered.

    ``adapter_id`` is ``<level>/<scope>/v<version>`` (``global/v2``, ``regional/europe/v1``,
    ``institutional/cleveland/v3``); ``parent_id`` the adapter it was fine-tuned from; ``path``
    its folder inside the registry (give it to ``Diagnoser.add_adapter`` after
    :meth:`AdapterRegistry.verify`). ``max_prompt_tokens`` and ``temperature`` are copied from
    the adapter's own ``feddx_adapter.json``; ``data_fingerprint`` is a hash of the training
    data (:func:`data_fingerprint`), never data; ``files`` the registered file sizes by name.
    """

    adapter_id: str
    level: Level
    region: str | None
    institution: str | None
    parent_id: str | None
    version: int
    path: Path
    base_fingerprint: str
    max_prompt_tokens: int
    temperature: float
    training_round: int | None
    data_fingerprint: str | None
    metrics: dict[str, float]
    content_sha256: str
    created_at: str
    files: dict[str, int] = field(default_factory=dict)
    kind: Kind = "adapter"
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str | None:
        """The region of a regional adapter, the institution of an institutional one."""
        return {"global": None, "regional": self.region, "institutional": self.institution}[
            self.level
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``path`` as a string)."""
        return {
            "adapter_id": self.adapter_id,
            "level": self.level,
            "region": self.region,
            "institution": self.institution,
            "parent_id": self.parent_id,
            "version": self.version,
            "path": str(self.path),
            "base_fingerprint": self.base_fingerprint,
            "max_prompt_tokens": self.max_prompt_tokens,
            "temperature": self.temperature,
            "training_round": self.training_round,
            "data_fingerprint": self.data_fingerprint,
            "metrics": dict(self.metrics),
            "content_sha256": self.content_sha256,
            "created_at": self.created_at,
            "files": dict(self.files),
            "kind": self.kind,
            "lineage": dict(self.lineage),
        }


@dataclass(frozen=True)
class _Verdict:
    signature: tuple[Any, ...]
    reason: str | None
    trusted: bool


def normalize_scope(name: str, what: str = "scope") -> str:
    """A region or institution name as the registry stores it: its one slug
    (:func:`feddx.data.slug.slug`, the name deploy, personalize, the demo and the service use:
    "Hungarian Inst. of Cardiology" -> ``hungarian-inst-of-cardiology``, "Univ. Hospitals
    Zurich/Basel" -> ``univ-hospitals-zurich-basel``): only ``a-z 0-9 -``, so it is safe as a
    folder name and part of an adapter id whatever was typed. Raises :class:`ConfigError`
    naming ``what`` for a name without a letter or digit."""
    value = slug(str(name))
    if not value:
        raise ConfigError(
            f"{what} {name!r} is not a valid registry name: it needs a letter or digit"
        )
    return value


def data_fingerprint(cases: Iterable[Case]) -> str:
    """A SHA-256 over the sorted (case id, diagnosis) pairs of the training cases.

    Two adapters with the same fingerprint were trained on the same cases with the same
    labels; the hash says nothing recoverable about any case, so it can sit in the registry
    and in replies where the cases themselves never may.
    """
    pairs = sorted((c.case_id, c.label.diagnosis if c.label else "") for c in cases)
    h = hashlib.sha256()
    for case_id, diagnosis in pairs:
        h.update(json.dumps([case_id, diagnosis], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def content_sha256(directory: Path, names: Iterable[str]) -> str:
    """The content hash of an adapter folder: SHA-256 over each file's name and the SHA-256 of
    its bytes, in sorted name order (a renamed, added or changed file changes it)."""
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode() + b"\0" + file_sha256(Path(directory) / name).encode() + b"\n")
    return h.hexdigest()


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on ``conn`` holding SQLite's write lock from the start
    (``BEGIN IMMEDIATE``), so what it reads cannot change before it commits; rolled back if
    anything (an interrupt included) leaves the block."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class AdapterRegistry:
    """The registry at ``root`` (``root/registry.sqlite3`` and ``root/adapters/<id>/``).

    ``create=False`` refuses a root that holds no registry yet (the CLI's read commands use it
    so a mistyped ``--registry`` is an error, not a new empty registry). Safe to share between
    threads: each thread uses its own SQLite connection. Raises :class:`ModelError` naming the
    database when it is not a feddx registry or was written by a newer feddx.
    """

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.db_path = self.root / DB_FILE
        self._cache_lock = threading.Lock()
        self._verified: dict[str, _Verdict] = {}
        self._local = threading.local()
        self._logged_skips: dict[str, str] = {}
        if not self.db_path.is_file():
            if not create:
                raise ModelError(f"no adapter registry at {self.root} (no {DB_FILE})")
            self.root.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    def __repr__(self) -> str:
        return f"AdapterRegistry({str(self.root)!r})"

    # ------------------------------------------------------------------ database plumbing
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, opened on first use and kept: opening one costs more
        than the queries of a resolve, and closing the last one makes SQLite checkpoint and
        delete the WAL files (a 3-level resolve measured 14.7 ms with a connection per call,
        1.0 ms with a kept one). A forked child opens its own (SQLite connections must not
        cross a fork)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            try:
                conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
            except sqlite3.Error as e:
                raise ModelError(f"cannot open adapter registry {self.db_path}: {e}") from None
            conn.row_factory = sqlite3.Row
            self._local.conn, self._local.pid = conn, os.getpid()
        try:
            yield conn
        except sqlite3.Error as e:
            self.close()  # a connection in an unknown state is not reused
            raise ModelError(f"adapter registry {self.db_path}: database error: {e}") from None

    def close(self) -> None:
        """Close this thread's database connection (the next call opens a new one)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            if conn.in_transaction:
                conn.rollback()
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from the start (``IMMEDIATE``), so
        what it reads (the last version number) cannot change before it commits."""
        with self._connect() as conn, _immediate(conn):
            yield conn

    def _init_schema(self) -> None:
        with self._connect() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == SCHEMA_VERSION:
                return
            if version == 1:
                self._migrate_v1(conn)
                return
            if version > SCHEMA_VERSION:
                raise ModelError(
                    f"adapter registry {self.db_path} has schema version {version}; this feddx "
                    f"reads version {SCHEMA_VERSION} (upgrade feddx)"
                )
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if mode.lower() != "wal":  # e.g. a network filesystem without shared memory
                log.warning(
                    "adapter registry %s: WAL mode unavailable (journal mode %s); readers "
                    "wait while an adapter is registered",
                    self.db_path,
                    mode,
                )
            # Re-read under the lock: another process may have created it meanwhile.
            with _immediate(conn):
                if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
                    tables = conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                    ).fetchall()
                    if tables:
                        raise ModelError(
                            f"{self.db_path} is an SQLite database but not a feddx adapter "
                            "registry (it has tables and no registry schema version)"
                        )
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_v1(self, conn: sqlite3.Connection) -> None:
        """Version 1 -> 2: add ``kind`` (every existing entry is an adapter) and ``lineage``,
        in one transaction, so a registry written by an older feddx stays readable."""
        with _immediate(conn):
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 1:
                conn.execute("ALTER TABLE adapters ADD COLUMN kind TEXT NOT NULL DEFAULT 'adapter'")
                conn.execute("ALTER TABLE adapters ADD COLUMN lineage TEXT")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("adapter registry %s: schema migrated from version 1 to 2", self.db_path)

    def _entry(self, row: sqlite3.Row) -> AdapterEntry:
        return AdapterEntry(
            adapter_id=row["adapter_id"],
            level=cast(Level, row["level"]),
            region=row["region"],
            institution=row["institution"],
            parent_id=row["parent_id"],
            version=int(row["version"]),
            path=self.root / row["rel_path"],
            base_fingerprint=row["base_fingerprint"],
            max_prompt_tokens=int(row["max_prompt_tokens"]),
            temperature=float(row["temperature"]),
            training_round=row["training_round"],
            data_fingerprint=row["data_fingerprint"],
            metrics={str(k): float(v) for k, v in json.loads(row["metrics"]).items()},
            content_sha256=row["content_sha256"],
            created_at=row["created_at"],
            files={str(k): int(v) for k, v in json.loads(row["files"]).items()},
            kind=cast(Kind, row["kind"]),
            lineage=json.loads(row["lineage"]) if row["lineage"] else {},
        )

    @staticmethod
    def _bump_generation(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE state SET value = value + 1 WHERE key = 'generation'")

    # ------------------------------------------------------------------ reading
    def generation(self) -> int:
        """A number that changes on every register and delete: a service compares it with the
        one it resolved under to pick up new versions without a restart."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        return int(row[0])

    def entries(
        self,
        *,
        level: Level | None = None,
        region: str | None = None,
        institution: str | None = None,
        kind: Kind | None = "adapter",
    ) -> list[AdapterEntry]:
        """The registered entries of ``kind`` (default adapters; ``None``: every kind),
        filtered by level, region and institution (names are normalised as at registration),
        least specific level first, then by scope, kind and version (oldest first)."""
        clauses: list[str] = []
        params: list[str] = []
        if kind is not None:
            if kind not in KINDS:
                raise ConfigError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
            clauses.append("kind = ?")
            params.append(kind)
        if level is not None:
            clauses.append("level = ?")
            params.append(_check_level(level))
        if region is not None:
            clauses.append("region = ?")
            params.append(normalize_scope(region, "region"))
        if institution is not None:
            clauses.append("institution = ?")
            params.append(normalize_scope(institution, "institution"))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT * FROM adapters {where}", params).fetchall()
        found = [self._entry(r) for r in rows]
        return sorted(
            found,
            key=lambda e: (
                _LEVEL_RANK[e.level],
                e.region or "",
                e.institution or "",
                e.kind,
                e.version,
            ),
        )

    def get(self, adapter_id: str) -> AdapterEntry:
        """The entry ``adapter_id``, or :class:`ModelError` naming it if it is not registered."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM adapters WHERE adapter_id = ?", (adapter_id,)
            ).fetchone()
        if row is None:
            raise ModelError(f"adapter {adapter_id} is not in the registry {self.root}")
        return self._entry(row)

    def children(self, adapter_id: str) -> list[str]:
        """The ids of the adapters registered with ``adapter_id`` as their parent."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT adapter_id FROM adapters WHERE parent_id = ? ORDER BY adapter_id",
                (adapter_id,),
            ).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ checking
    def check(
        self, entry: AdapterEntry, *, base_fingerprint: str | None = None, fresh: bool = False
    ) -> str | None:
        """``None`` when ``entry``'s folder still holds exactly what was registered (and, when
        ``base_fingerprint`` is given, it was trained for that base model); otherwise the
        reason, starting with its kind: ``missing (...)``, ``truncated (...)``,
        ``corrupt (...)`` or ``other base model (...)``. ``fresh=True`` ignores the cache."""
        if base_fingerprint is not None and entry.base_fingerprint != base_fingerprint:
            return (
                f"other base model (trained for {entry.base_fingerprint!r}, "
                f"not {base_fingerprint!r})"
            )
        return self._content_problem(entry, fresh=fresh)

    def verify(
        self, adapter_id: str, *, base_fingerprint: str | None = None, fresh: bool = False
    ) -> AdapterEntry:
        """The entry, after checking its files against the registered content hash (see
        :meth:`check`). Raises :class:`ModelError` with one line naming the adapter and what is
        wrong when it is unknown, missing, truncated, corrupt or for another base model."""
        entry = self.get(adapter_id)
        reason = self.check(entry, base_fingerprint=base_fingerprint, fresh=fresh)
        if reason is not None:
            raise ModelError(f"adapter {adapter_id} refused: {reason}")
        return entry

    def _content_problem(self, entry: AdapterEntry, *, fresh: bool) -> str | None:
        folder = entry.path
        try:
            listing = sorted(os.scandir(folder), key=lambda d: d.name)
            stats = tuple(
                (d.name, d.is_file(follow_symlinks=False), d.stat(follow_symlinks=False))
                for d in listing
            )
        except FileNotFoundError:
            return f"missing (its folder {folder.relative_to(self.root)} is gone)"
        except OSError as e:
            return f"missing (its folder cannot be read: {e.strerror})"
        signature = (
            entry.content_sha256,
            tuple((n, f, s.st_size, s.st_mtime_ns, s.st_ino) for n, f, s in stats),
        )
        with self._cache_lock:
            cached = self._verified.get(entry.adapter_id)
        if not fresh and cached is not None and cached.trusted and cached.signature == signature:
            return cached.reason
        started = time.time_ns()
        reason = self._inspect(entry, {n: (f, s.st_size) for n, f, s in stats})
        newest = max((s.st_mtime_ns for _, _, s in stats), default=0)
        trusted = newest < started - int(RACY_SECONDS * 1e9)
        with self._cache_lock:
            self._verified[entry.adapter_id] = _Verdict(signature, reason, trusted)
        return reason

    @staticmethod
    def _inspect(entry: AdapterEntry, found: dict[str, tuple[bool, int]]) -> str | None:
        for name in sorted(entry.files):
            if name not in found:
                return f"missing ({name} is gone)"
        extra = sorted(set(found) - set(entry.files))
        if extra:
            kind = "file" if found[extra[0]][0] else "entry"
            return f"corrupt (unexpected {kind} {extra[0]})"
        for name, size in sorted(entry.files.items()):
            is_file, actual = found[name]
            if not is_file:
                return f"corrupt ({name} is not a regular file)"
            if actual < size:
                return f"truncated ({name} has {actual} of its {size} bytes)"
            if actual > size:
                return f"corrupt ({name} has {actual} bytes, {size} were registered)"
        try:
            digest = content_sha256(entry.path, entry.files)
        except OSError as e:
            return f"missing (cannot read its files: {e.strerror})"
        if digest != entry.content_sha256:
            return "corrupt (content hash mismatch: a file changed since it was registered)"
        return None

    # ------------------------------------------------------------------ writing
    def register(
        self,
        adapter_dir: Path,
        *,
        level: Level,
        region: str | None = None,
        institution: str | None = None,
        parent_id: str | None = None,
        training_round: int | None = None,
        data_fingerprint: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> AdapterEntry:
        """Copy the adapter saved in ``adapter_dir`` (or ``adapter_dir/adapter``) into the
        registry as the next version of its (level, scope) and return its entry.

        ``global`` adapters take no region, institution or parent; ``regional`` ones need a
        region and may descend from a global adapter; ``institutional`` ones need an
        institution and may descend from a regional (whose region they inherit) or a global
        adapter. An institution keeps the region it was first registered under. The parent
        must be registered, intact, for the same base model and of the same LoRA layout.

        Raises :class:`ModelError` (one line naming the folder or the parent) when the folder
        is not a complete, intact feddx adapter or the parent does not fit, and
        :class:`ConfigError` for invalid levels, names, rounds, metrics or fingerprints.
        Nothing becomes visible unless the whole registration succeeds.
        """
        level = _check_level(level)
        region, institution = _check_scope(level, region, institution)
        if level == "global" and parent_id is not None:
            raise ConfigError("a global adapter has no parent (it is the root of the hierarchy)")
        if training_round is not None and (
            isinstance(training_round, bool)
            or not isinstance(training_round, int)
            or training_round < 0
        ):
            raise ConfigError(f"training_round must be an integer >= 0, not {training_round!r}")
        if data_fingerprint is not None and not _HASH_RE.match(str(data_fingerprint)):
            raise ConfigError(
                "data_fingerprint must be a hex hash (see feddx.personalize.registry."
                "data_fingerprint), not free text"
            )
        clean_metrics = _check_metrics(metrics or {})
        info = _read_source(Path(adapter_dir))

        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            final: Path | None = None
            try:
                if parent_id is not None:
                    region = self._check_parent(conn, parent_id, level, region, info)
                if level == "institutional":
                    assert institution is not None
                    self._check_institution_region(conn, institution, region)
                self._remove_orphans(conn)
                scope = {"global": "", "regional": region, "institutional": institution}[level]
                assert scope is not None
                version = self._next_version(conn, level, scope)
                adapter_id = (
                    f"global/v{version}" if level == "global" else f"{level}/{scope}/v{version}"
                )
                rel_path = f"{ADAPTERS_DIR}/{adapter_id}"
                final = self.root / rel_path
                files, digest = _copy_adapter(info, final)
                conn.execute(
                    "INSERT INTO adapters (adapter_id, level, region, institution, parent_id, "
                    "version, rel_path, base_fingerprint, lora, max_prompt_tokens, temperature, "
                    "training_round, data_fingerprint, metrics, files, content_sha256, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        adapter_id,
                        level,
                        region,
                        institution,
                        parent_id,
                        version,
                        rel_path,
                        info.base_fingerprint,
                        json.dumps(info.lora.to_dict()),
                        info.max_prompt_tokens,
                        info.temperature,
                        training_round,
                        data_fingerprint,
                        json.dumps(clean_metrics, allow_nan=False),
                        json.dumps(files),
                        digest,
                        datetime.now(UTC).isoformat(timespec="seconds"),
                    ),
                )
                self._commit_version(conn, level, scope, version)
            except BaseException:
                self._abort(conn, final)
                raise
        with self._cache_lock:
            self._verified.pop(adapter_id, None)
        log.info("registered adapter %s (base %s)", adapter_id, info.base_fingerprint)
        return self.get(adapter_id)

    @staticmethod
    def _next_version(conn: sqlite3.Connection, level: str, scope: str) -> int:
        """The number the next registration of ``(level, scope)`` gets: one past the last ever
        given (a deleted version's number is not reused). Read inside the write transaction."""
        row = conn.execute(
            "SELECT last_version FROM versions WHERE level = ? AND scope = ?", (level, scope)
        ).fetchone()
        return (int(row[0]) if row else 0) + 1

    def _commit_version(
        self, conn: sqlite3.Connection, level: str, scope: str, version: int
    ) -> None:
        """Record ``version`` as the last one of ``(level, scope)`` and commit the registration
        (with the generation bump that tells readers to refresh)."""
        conn.execute(
            "INSERT INTO versions (level, scope, last_version) VALUES (?, ?, ?) "
            "ON CONFLICT (level, scope) DO UPDATE SET last_version = excluded.last_version",
            (level, scope, version),
        )
        self._bump_generation(conn)
        conn.execute("COMMIT")

    @staticmethod
    def _abort(conn: sqlite3.Connection, final: Path | None) -> None:
        """Undo a failed registration: roll the transaction back and remove the folder it had
        moved into place, so neither a row nor files of a half-registered entry remain."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if final is not None and final.exists():
            shutil.rmtree(final, ignore_errors=True)

    def register_case_index(
        self,
        index_dir: Path,
        *,
        institution: str,
        base_fingerprint: str,
        region: str | None = None,
        data_fingerprint: str | None = None,
        lineage: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> AdapterEntry:
        """Copy the case index saved in ``index_dir`` (every regular file in it; see
        :mod:`feddx.personalize.case_index`) into the registry as the next version of
        ``case-index/<institution>`` and return its entry.

        ``base_fingerprint`` is the base model its prior weight was chosen with (the resolver
        only offers it to a service running that model); ``lineage`` records what it was built
        from (embedder, dimension, the adapter that scored validation: short values, never
        data); ``metrics`` numbers such as the chosen prior weight and the case count. The
        institution keeps one region, as with adapters. Raises :class:`ConfigError` for bad
        names, fingerprints or metrics and :class:`ModelError` for an empty or odd folder;
        nothing becomes visible unless the whole registration succeeds.
        """
        institution = normalize_scope(institution, "institution")
        region = normalize_scope(region, "region") if region else None
        if not base_fingerprint:
            raise ConfigError("a case index needs the base-model fingerprint it was tuned with")
        if data_fingerprint is not None and not _HASH_RE.match(str(data_fingerprint)):
            raise ConfigError("data_fingerprint must be a hex hash, not free text")
        clean_metrics = _check_metrics(metrics or {})
        names = _index_files(Path(index_dir))
        record = json.dumps(dict(lineage or {}), allow_nan=False, sort_keys=True)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            final: Path | None = None
            try:
                self._check_institution_region(conn, institution, region)
                self._remove_orphans(conn)
                version = self._next_version(conn, CASE_INDEX_DIR, institution)
                entry_id = f"{CASE_INDEX_DIR}/{institution}/v{version}"
                final = self.root / ADAPTERS_DIR / entry_id
                files, digest = _copy_files(Path(index_dir), names, final)
                conn.execute(
                    "INSERT INTO adapters (adapter_id, level, region, institution, parent_id, "
                    "version, rel_path, base_fingerprint, lora, max_prompt_tokens, temperature, "
                    "training_round, data_fingerprint, metrics, files, content_sha256, "
                    "created_at, kind, lineage) "
                    "VALUES (?, 'institutional', ?, ?, NULL, ?, ?, ?, '{}', 0, 1.0, NULL, ?, ?, "
                    "?, ?, ?, 'case-index', ?)",
                    (
                        entry_id,
                        region,
                        institution,
                        version,
                        f"{ADAPTERS_DIR}/{entry_id}",
                        base_fingerprint,
                        data_fingerprint,
                        json.dumps(clean_metrics, allow_nan=False),
                        json.dumps(files),
                        digest,
                        datetime.now(UTC).isoformat(timespec="seconds"),
                        record,
                    ),
                )
                self._commit_version(conn, CASE_INDEX_DIR, institution, version)
            except BaseException:
                self._abort(conn, final)
                raise
        with self._cache_lock:
            self._verified.pop(entry_id, None)
        log.info("registered case index %s", entry_id)
        return self.get(entry_id)

    def _check_parent(
        self,
        conn: sqlite3.Connection,
        parent_id: str,
        level: Level,
        region: str | None,
        info: AdapterInfo,
    ) -> str | None:
        """Check the parent fits; returns the child's region (inherited from a regional
        parent when not given)."""
        row = conn.execute("SELECT * FROM adapters WHERE adapter_id = ?", (parent_id,)).fetchone()
        if row is None:
            raise ModelError(f"parent adapter {parent_id} is not in the registry {self.root}")
        parent = self._entry(row)
        if parent.kind != "adapter":
            raise ConfigError(f"parent {parent_id} is a {parent.kind}, not an adapter")
        if _LEVEL_RANK[parent.level] >= _LEVEL_RANK[level]:
            raise ConfigError(
                f"parent {parent_id} is a {parent.level} adapter: a {level} adapter descends "
                "from a less specific level (institutional -> regional -> global)"
            )
        reason = self.check(parent)
        if reason is not None:
            raise ModelError(f"parent adapter {parent_id} refused: {reason}")
        if parent.base_fingerprint != info.base_fingerprint:
            raise ModelError(
                f"adapter {info.directory} was trained for base model {info.base_fingerprint!r}, "
                f"its parent {parent_id} for {parent.base_fingerprint!r}"
            )
        parent_lora = LoraSpec(**json.loads(row["lora"]))
        if parent_lora.layout() != info.lora.layout():
            raise ModelError(
                f"adapter {info.directory} has LoRA layout {info.lora.layout()}, its parent "
                f"{parent_id} {parent_lora.layout()} (rank, alpha, targets and layers must match)"
            )
        if parent.level == "regional":
            if region is not None and region != parent.region:
                raise ConfigError(
                    f"region {region} does not match the region {parent.region} of the parent "
                    f"{parent_id}"
                )
            return parent.region
        return region

    @staticmethod
    def _check_institution_region(
        conn: sqlite3.Connection, institution: str, region: str | None
    ) -> None:
        row = conn.execute(
            "SELECT region, adapter_id FROM adapters WHERE level = 'institutional' AND "
            "institution = ? ORDER BY version DESC LIMIT 1",
            (institution,),
        ).fetchone()
        if row is not None and row["region"] != region:
            raise ConfigError(
                f"institution {institution} is registered under region "
                f"{row['region'] or '(none)'} ({row['adapter_id']}), not {region or '(none)'}: "
                "an institution keeps one region"
            )

    def delete(self, adapter_id: str) -> None:
        """Remove ``adapter_id``'s row and folder (its version number is not reused). Its
        children stay registered; the resolver skips them as having a missing parent. Raises
        :class:`ModelError` naming it if it is not registered."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            trash: Path | None = None
            folder: Path | None = None
            try:
                row = conn.execute(
                    "SELECT rel_path FROM adapters WHERE adapter_id = ?", (adapter_id,)
                ).fetchone()
                if row is None:
                    raise ModelError(f"adapter {adapter_id} is not in the registry {self.root}")
                conn.execute("DELETE FROM adapters WHERE adapter_id = ?", (adapter_id,))
                self._bump_generation(conn)
                folder = self.root / row["rel_path"]
                if folder.exists():
                    trash = self.root / ADAPTERS_DIR / f".trash-{os.getpid()}-{time.time_ns()}"
                    folder.rename(trash)
                    _remove_empty_parents(folder.parent, self.root / ADAPTERS_DIR)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if trash is not None and folder is not None and trash.exists():
                    folder.parent.mkdir(parents=True, exist_ok=True)
                    trash.rename(folder)
                raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        with self._cache_lock:
            self._verified.pop(adapter_id, None)
        log.info("deleted adapter %s", adapter_id)

    def clean_orphans(self) -> list[str]:
        """Remove what an interrupted register or delete left under ``adapters/`` (folders
        without a row, temporary and trash folders); returns their paths relative to the
        root. Runs under the write lock, so no registration in progress is touched."""
        with self._transaction() as conn:
            return self._remove_orphans(conn)

    def _remove_orphans(self, conn: sqlite3.Connection) -> list[str]:
        top = self.root / ADAPTERS_DIR
        if not top.is_dir():
            return []
        known = {r[0] for r in conn.execute("SELECT rel_path FROM adapters").fetchall()}
        removed: list[str] = []

        def drop(path: Path) -> None:
            rel = path.relative_to(self.root).as_posix()
            shutil.rmtree(path, ignore_errors=True)
            removed.append(rel)
            log.warning(
                "adapter registry: removed %s (no registry row: left by an interrupted write)", rel
            )

        def scan(directory: Path, depth: int) -> None:
            # depth: folders between here and a version folder (global: 1, others: 2).
            for child in sorted(directory.iterdir()):
                if not child.is_dir():
                    continue
                if child.name.startswith((".tmp-", ".trash-")):
                    drop(child)
                elif depth == 1:
                    if re.fullmatch(r"v\d+", child.name) and (
                        child.relative_to(self.root).as_posix() not in known
                    ):
                        drop(child)
                else:
                    scan(child, depth - 1)
                    _remove_empty_parents(child, directory)

        for child in sorted(top.iterdir()):
            if child.is_dir() and child.name.startswith((".tmp-", ".trash-")):
                drop(child)
            elif child.is_dir() and (child.name in LEVELS or child.name == CASE_INDEX_DIR):
                scan(child, 1 if child.name == "global" else 2)
        return removed

    # ------------------------------------------------------------------ resolving
    def resolve(
        self, *, institution: str | None, region: str | None, base_fingerprint: str
    ) -> Resolution:
        """The most specific usable chain for (institution, region) on the base model
        ``base_fingerprint`` (see :func:`feddx.personalize.hierarchy.resolve_chain`):
        skipped adapters are listed in ``fallbacks`` every time and logged as a warning the
        first time (and again when the reason or the fallback changes). The institution's
        newest intact case index for that base model comes with it
        (:attr:`Resolution.case_index`; skipped ones are listed in ``fallbacks`` too), and an
        institution with a case index but no adapter of its own is not "unknown"."""
        inst = normalize_scope(institution, "institution") if institution else None
        asked = normalize_scope(region, "region") if region else None
        indexes = list(reversed(self.entries(kind="case-index", institution=inst))) if inst else []
        # An institution registered by its case index only keeps that index's region.
        implied = None if asked else next((e.region for e in indexes if e.region), None)
        chain = resolve_chain(
            self,
            institution=inst,
            region=asked or implied,
            base_fingerprint=base_fingerprint,
            logged=self._logged_skips,
        )
        chosen: AdapterEntry | None = None
        skipped: list[str] = []
        for entry in indexes:
            why = self.check(entry, base_fingerprint=base_fingerprint)
            if why is None:
                chosen = entry
                break
            skipped.append(f"{entry.adapter_id} skipped: {why}")
            if self._logged_skips.get(entry.adapter_id) != why:
                log.warning("case index %s skipped: %s", entry.adapter_id, why)
                self._logged_skips[entry.adapter_id] = why
        unknown = tuple(
            u
            for u in chain.unknown
            if not (indexes and u.startswith(f"institution {inst} "))
            and not (implied and u.startswith(f"region {implied} "))
        )
        return Resolution(
            entries=chain.entries,
            fallbacks=chain.fallbacks + tuple(skipped),
            unknown=unknown,
            case_index=chosen,
        )


@dataclass(frozen=True)
class Resolution(ResolvedChain[AdapterEntry]):
    """A resolved adapter chain (:class:`~feddx.personalize.hierarchy.ResolvedChain`) plus the
    institution's case index, ``None`` when it has no intact one for this base model."""

    case_index: AdapterEntry | None = None

    def to_dict(self) -> dict[str, Any]:
        """The chain's fields and the case index's id."""
        return {
            **super().to_dict(),
            "case_index": self.case_index.adapter_id if self.case_index else None,
        }


def parse_adapter_id(adapter_id: str) -> tuple[Level, str | None, int]:
    """``(level, scope, version)`` of an adapter id, or :class:`ConfigError` naming it."""
    m = _ID_RE.match(adapter_id)
    if m is None:
        raise ConfigError(
            f"{adapter_id!r} is not an adapter id (global/vN, regional/REGION/vN or "
            "institutional/INSTITUTION/vN)"
        )
    if m["gv"] is not None:
        return "global", None, int(m["gv"])
    return cast(Level, m["level"]), m["scope"], int(m["v"])


def register_federated_run(
    registry: AdapterRegistry, run_dir: Path, *, data_fingerprint: str | None = None
) -> AdapterEntry:
    """Register the global adapter a federated run wrote in ``run_dir`` as the next global
    version, with the run's last completed round and the numbers of its final evaluation
    (top-1, top-3, macro-F1, validation loss, temperature, ...) and privacy spent as metrics.
    Raises :class:`ModelError` naming the folder when the run left no adapter or history."""
    from feddx.federated.history import HISTORY_FILE
    from feddx.paths import GLOBAL_ADAPTER_DIR

    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / HISTORY_FILE).read_text())["summary"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"federated run {run_dir} has no readable {HISTORY_FILE} ({e})") from None
    metrics = {
        k: float(v)
        for k, v in (summary.get("final") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    eps = summary.get("epsilon_total")
    if isinstance(eps, int | float) and not isinstance(eps, bool) and math.isfinite(eps):
        metrics["epsilon_total"] = float(eps)
    rounds = summary.get("rounds_completed")
    return registry.register(
        run_dir / GLOBAL_ADAPTER_DIR,
        level="global",
        training_round=int(rounds) if isinstance(rounds, int) else None,
        data_fingerprint=data_fingerprint,
        metrics=metrics,
    )


def _check_level(level: str) -> Level:
    if level not in LEVELS:
        raise ConfigError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    return level


def _check_scope(
    level: Level, region: str | None, institution: str | None
) -> tuple[str | None, str | None]:
    region = normalize_scope(region, "region") if region else None
    institution = normalize_scope(institution, "institution") if institution else None
    if level == "global" and (region or institution):
        raise ConfigError("a global adapter takes no region or institution")
    if level == "regional":
        if region is None:
            raise ConfigError("a regional adapter needs a region")
        if institution is not None:
            raise ConfigError(
                "a regional adapter takes no institution (register it as institutional)"
            )
    if level == "institutional" and institution is None:
        raise ConfigError("an institutional adapter needs an institution")
    return region, institution


def _check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"metric names must be non-empty strings, not {key!r}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"metric {key} must be a finite number, not {value!r}")
        out[key] = float(value)
    return out


def _read_source(adapter_dir: Path) -> AdapterInfo:
    """The info of the folder to register, after checking it holds every adapter file and its
    weights pass their checksum (a corrupt source is refused before anything is copied)."""
    info = read_adapter_info(adapter_dir)
    for name in ADAPTER_FILES:
        if not (info.directory / name).is_file():
            raise ModelError(f"adapter {info.directory} is incomplete: {name} is missing")
    if file_sha256(info.directory / WEIGHTS_FILE) != info.weights_sha256:
        raise ModelError(f"adapter {info.directory} is corrupt: {WEIGHTS_FILE} fails its checksum")
    return info


def _copy_adapter(info: AdapterInfo, final: Path) -> tuple[dict[str, int], str]:
    """Copy the adapter files into ``final`` atomically (fsynced, then renamed into place);
    returns their sizes and the content hash, computed on the copies."""
    with building_dir(final) as tmp:
        for name in ADAPTER_FILES:
            shutil.copyfile(info.directory / name, tmp / name)
            with (tmp / name).open("rb") as f:
                os.fsync(f.fileno())
        if file_sha256(tmp / WEIGHTS_FILE) != info.weights_sha256:
            raise ModelError(
                f"adapter {info.directory} changed while it was copied: {WEIGHTS_FILE} fails its "
                "checksum; not registered"
            )
        files = {name: (tmp / name).stat().st_size for name in ADAPTER_FILES}
        digest = content_sha256(tmp, ADAPTER_FILES)
    return files, digest


def _index_files(directory: Path) -> list[str]:
    """The names of the regular files a case-index folder holds (all it may hold)."""
    try:
        children = sorted(directory.iterdir())
    except OSError as e:
        raise ModelError(f"case index {directory} cannot be read ({e.strerror})") from None
    odd = [c.name for c in children if not c.is_file() or c.is_symlink()]
    if odd:
        raise ModelError(f"case index {directory} holds {odd[0]!r}, which is not a regular file")
    if not children:
        raise ModelError(f"case index {directory} is empty")
    return [c.name for c in children]


def _copy_files(source: Path, names: list[str], final: Path) -> tuple[dict[str, int], str]:
    """Copy ``names`` from ``source`` into ``final`` atomically (fsynced, renamed into place);
    their sizes and the content hash, computed on the copies."""
    with building_dir(final) as tmp:
        for name in names:
            shutil.copyfile(source / name, tmp / name)
            with (tmp / name).open("rb") as f:
                os.fsync(f.fileno())
        files = {name: (tmp / name).stat().st_size for name in names}
        digest = content_sha256(tmp, names)
    return files, digest


def _remove_empty_parents(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its empty parents up to (not including) ``stop``."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


__all__ = [
    "ADAPTER_FILES",
    "KINDS",
    "LEVELS",
    "AdapterEntry",
    "AdapterRegistry",
    "Kind",
    "Level",
    "Resolution",
    "ResolvedChain",
    "content_sha256",
    "data_fingerprint",
    "normalize_scope",
    "parse_adapter_id",
    "register_federated_run",
]
