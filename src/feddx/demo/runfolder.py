"""The demo's run folder: ``results.json`` plus one folder of artefacts per stage.

A stage is finished when its entry in ``results.json`` says so; the entry is written last,
atomically, after the stage's artefacts, so an interrupted stage (Ctrl-C, kill, power loss)
leaves no entry and reruns, and a finished one is never half-recorded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from feddx.errors import ConfigError, DataError
from feddx.io import atomic_write_json

RESULTS_FILE = "results.json"
FORMAT = 1


class RunFolder:
    """``root/results.json`` and the stage folders beside it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.results_path = self.root / RESULTS_FILE
        self.results: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        if not self.results_path.is_file():
            return {"format": FORMAT, "config": None, "stages": {}, "per_hospital": []}
        try:
            data = json.loads(self.results_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(
                f"{self.results_path}: not a readable demo results file ({e})"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise DataError(f"{self.results_path}: not a feddx demo results file (no 'stages')")
        return data

    def check_config(self, config: dict[str, Any], *, force: bool) -> None:
        """Adopt ``config`` for a new folder; refuse to mix a folder made with other settings
        unless ``force`` (which then starts the record afresh)."""
        old = self.results.get("config")
        # compared on today's settings: one no longer part of the fingerprint does not matter
        changed = [k for k in sorted(config) if old is not None and old.get(k) != config[k]]
        if changed and not force:
            assert old is not None
            diff = ", ".join(f"{k} {old.get(k)!r} -> {config[k]!r}" for k in changed)
            raise ConfigError(
                f"{self.root} holds a demo run made with other settings ({diff}); "
                "pass --force to start it again, or choose another --out"
            )
        if old is None or changed:
            self.results = {"format": FORMAT, "config": config, "stages": {}, "per_hospital": []}
            self.save()

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def entry(self, name: str) -> dict[str, Any] | None:
        found = self.results["stages"].get(name)
        return found if isinstance(found, dict) else None

    def finished(self, name: str) -> bool:
        """The stage's entry is written and every artefact it lists still exists."""
        entry = self.entry(name)
        if not entry:
            return False
        return all((self.root / a).exists() for a in entry.get("artefacts", []))

    def forget(self, name: str) -> None:
        """Drop the stage's entry before it reruns (``--force``), so a rerun interrupted after
        it replaced some artefacts never leaves the old figures standing beside new files."""
        if self.results["stages"].pop(name, None) is not None:
            self.save()

    def record(self, name: str, entry: dict[str, Any], **top: Any) -> None:
        """Write the stage's entry (and any top-level keys such as ``per_hospital``) in one
        atomic replacement of ``results.json``: the moment the stage becomes finished."""
        self.results["stages"][name] = {
            **entry,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.results.update(top)
        self.save()

    def skip(self, name: str, reason: str | None) -> None:
        """Record why stage ``name`` was skipped (``results.json``'s ``skipped``; the report
        shows it), or clear that record (``None``) when the stage runs."""
        skipped = self.results.setdefault("skipped", {})
        changed = skipped.get(name) != reason
        if reason is None:
            skipped.pop(name, None)
        else:
            self.results["stages"].pop(name, None)
            skipped[name] = reason
        if not skipped:
            del self.results["skipped"]
        if changed:
            self.save()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.results_path, self.results, allow_nan=False)

    def read_json(self, relative: str) -> Any:
        """An artefact of an earlier stage (named relative to the folder)."""
        path = self.root / relative
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: missing or unreadable demo artefact ({e})") from None
