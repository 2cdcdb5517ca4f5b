"""Talk to a SuperLink through Flower's own ``flwr`` CLI: connections, node registration, runs.

We drive the public CLI (``flwr supernode register``, ``flwr run``, ``flwr log``, ``flwr ls``)
rather than Flower's internal Python clients: it is the interface Flower documents and keeps
stable, it is what an operator types by hand, and each call's output is JSON (``--format json``).
Each call costs about 1-1.5 s of CLI start-up.

The CLI finds SuperLinks through "connections" in ``$FLWR_HOME/config.toml``; we write a
private ``FLWR_HOME`` per run so a user's own Flower configuration is never read or touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddx.errors import ConfigError
from feddx.federated.deploy.processes import DeploymentError
from feddx.io import atomic_write_text

Scalar = str | int | float | bool
CONNECTION = "feddx"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

# Offline, quiet, reproducible Flower processes: no telemetry or update checks (no network on
# hospital servers), no `uv sync` of the app's dependencies at run time (that would try to
# download torch), and no Hugging Face hub lookups.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def flower_executable(name: str) -> str:
    """Path of a Flower console script (``flower-superlink``, ``flwr``...).

    The one next to the running interpreter wins (the venv feddx runs from), so the daemons use
    the exact flwr version feddx pins; then ``PATH``.
    """
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(
            f"'{name}' not found next to {sys.executable} or on PATH: install flwr"
        )
    return found


def process_env(base: Mapping[str, str], flwr_home: Path, **extra: str) -> dict[str, str]:
    """The environment of one Flower process: ``base`` + :data:`FLOWER_ENV` + its own FLWR_HOME.

    The interpreter's bin folder goes first on PATH because the SuperLink and SuperNodes start
    ``flower-superexec``/``flwr-clientapp`` by name.
    """
    env = dict(base)
    env.update(FLOWER_ENV)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]]) if env.get("PATH") else bin_dir
    env["FLWR_HOME"] = str(flwr_home)
    env.update(extra)
    return env


def toml_value(value: Scalar) -> str:
    """A scalar as a TOML value (bool before int: ``True`` is an ``int`` in Python)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"config value {value!r} is not a finite number")
        return repr(value)
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value)


def node_config_arg(config: Mapping[str, Scalar]) -> str:
    """The ``--node-config`` string for a SuperNode: ``key="value" key2=3``.

    Flower splits this string with a regex that knows quoted values but not escaped quotes, so
    strings are written as TOML literal strings ``'...'`` (no escapes at all: Windows paths and
    backslashes survive) or, if they hold a single quote, as basic strings ``"..."``.
    """
    parts = []
    for key, value in config.items():
        if not _BARE_KEY.match(key):
            raise ConfigError(f"node-config key {key!r}: use letters, digits, '-', '_' and '.'")
        if isinstance(value, str):
            if "\n" in value or "\r" in value:
                raise ConfigError(f"node-config value of {key!r} contains a line break")
            if "'" not in value:
                rendered = f"'{value}'"
            elif '"' not in value and "\\" not in value:
                rendered = f'"{value}"'
            else:
                raise ConfigError(
                    f"node-config value of {key!r} contains both quote kinds; rename the path"
                )
        else:
            rendered = toml_value(value)
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def write_toml_table(path: Path, values: Mapping[str, Scalar]) -> Path:
    """Write flat ``key = value`` lines (dotted keys allowed) as a TOML file, atomically."""
    lines = []
    for key, value in values.items():
        if not _BARE_KEY.match(key):
            raise ConfigError(f"config key {key!r}: use letters, digits, '-', '_' and '.'")
        lines.append(f"{key} = {toml_value(value)}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_connection(flwr_home: Path, address: str, root_certificates: Path) -> Path:
    """Write ``flwr_home/config.toml`` with one TLS connection named :data:`CONNECTION`."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    text = (
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f"address = {json.dumps(address)}\n"
        f"root-certificates = {json.dumps(str(root_certificates.resolve()))}\n"
    )
    path = flwr_home / "config.toml"
    atomic_write_text(path, text)
    return path


@dataclass(frozen=True)
class RunStatus:
    """What ``flwr ls --run-id`` reports about a run."""

    run_id: int
    status: str  # e.g. "finished:completed", "finished:failed", "running"
    details: str
    raw: dict[str, Any]

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")


class FlowerControl:
    """The ``flwr`` CLI bound to one private ``FLWR_HOME`` and its :data:`CONNECTION`."""

    def __init__(self, flwr_home: Path, env: Mapping[str, str], *, timeout: float = 120.0) -> None:
        self.flwr_home = flwr_home
        self.env = dict(env)
        self.timeout = timeout
        self.flwr = flower_executable("flwr")

    def _call(self, args: list[str], *, timeout: float | None = None) -> dict[str, Any]:
        argv = [self.flwr, *args]
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DeploymentError(
                f"'flwr {args[0]}' did not answer within {timeout or self.timeout:.0f} s"
            ) from None
        payload = _last_json_object(done.stdout)
        if done.returncode != 0 or payload is None or payload.get("success") is False:
            message = (payload or {}).get("error-message")
            reason = (
                " ".join(str(message).split()) if message else _tail(done.stderr or done.stdout)
            )
            raise DeploymentError(
                f"'flwr {' '.join(args[:2])}' failed (exit {done.returncode}): {reason}"
            )
        return payload

    def register_node(self, public_key: Path, name: str) -> int:
        """Register a SuperNode's public key; returns the node id the SuperLink assigned."""
        out = self._call(
            [
                "supernode",
                "register",
                str(public_key),
                CONNECTION,
                "--name",
                name,
                "--format",
                "json",
            ]
        )
        return int(out["node-id"])

    def list_nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode ls``: each node's id and status ("registered", "online"...)."""
        out = self._call(["supernode", "ls", CONNECTION, "--format", "json"])
        nodes: list[dict[str, Any]] = out.get("nodes", [])
        return nodes

    def submit_run(self, app_dir: Path, run_config: Path | None) -> int:
        """``flwr run APP`` (builds the FAB from ``app_dir``); returns the run id."""
        args = ["run", str(app_dir), CONNECTION, "--format", "json"]
        if run_config is not None:
            args += ["--run-config", str(run_config)]
        out = self._call(args, timeout=max(self.timeout, 300.0))
        return int(out["run-id"])

    def stream_logs(
        self,
        run_id: int,
        log_path: Path,
        timeout: float,
        *,
        tick: Callable[[], None] | None = None,
    ) -> bool:
        """Append the run's logs to ``log_path`` until the run finishes; False on timeout.

        ``tick`` is called about once a second while waiting (the caller uses it to note the
        processes the run spawns).
        """
        deadline = time.monotonic() + timeout
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [self.flwr, "log", str(run_id), CONNECTION, "--stream"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        return False
                    if tick is not None:
                        tick()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=1.0)
                return True
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def run_status(self, run_id: int) -> RunStatus:
        out = self._call(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"])
        runs = out.get("runs") or [{}]
        run = runs[0]
        return RunStatus(
            run_id=run_id,
            status=str(run.get("status", "unknown")),
            details=str(run.get("status-details", "")),
            raw=run,
        )

    def stop_run(self, run_id: int) -> None:
        self._call(["stop", str(run_id), CONNECTION, "--format", "json"])


def _last_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object the CLI prints with ``--format json`` (other lines may precede it)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _tail(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"
