"""The local SuperLink that ``flwr run . local`` uses, started so that it installs nothing.

``flwr run . local`` (Flower 1.42) starts a SuperLink in the background the first time, leaves
it running afterwards, and that SuperLink installs the app's dependencies for every run with
``uv sync`` (downloading torch into a fresh environment) unless it was started with
``--disable-runtime-dependency-installation``. A Flower app cannot opt out of that in its
``pyproject.toml``; only the SuperLink's flag (or ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``
in the environment of the ``flwr run`` that starts it) does.

:func:`start_local_superlink` starts the very SuperLink ``flwr run`` would start (same ports,
database and log under ``$FLWR_HOME/local-superlink``), with that flag: ``flwr run . local``
finds it running and uses it. :func:`find_local_superlink` and :func:`stop_local_superlink` find
and stop it (and the executor it spawned) by its command line, whoever started it, never
another user's federation.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from feddx.federated.deploy.control import flower_executable
from feddx.federated.deploy.processes import DeploymentError

NO_INSTALL_FLAG = "--disable-runtime-dependency-installation"


def _ports() -> tuple[str, str]:
    """The local SuperLink's HTTP and Control API ports, as Flower reads them."""
    return (
        os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091"),
        os.environ.get("FLWR_LOCAL_CONTROL_API_PORT", "39093"),
    )


def flwr_home() -> Path:
    """``$FLWR_HOME`` or ``~/.flwr``, as Flower resolves it."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


def local_superlink_dir() -> Path:
    return flwr_home() / "local-superlink"


@dataclass(frozen=True)
class LocalSuperLink:
    """A running local SuperLink: its PID, its helpers' PIDs, whether it installs app
    dependencies at run time, and its log file."""

    pid: int
    helper_pids: tuple[int, ...]
    installs_dependencies: bool
    log_file: Path


def _is_ours(cmdline: list[str], log_file: Path) -> bool:
    if not any(Path(arg).name == "flower-superlink" for arg in cmdline[:2]):
        return False
    try:
        return Path(cmdline[cmdline.index("--log-file") + 1]) == log_file
    except (ValueError, IndexError):
        return False


def find_local_superlink() -> LocalSuperLink | None:
    """The local SuperLink of this ``$FLWR_HOME`` if one runs (recognised by its log file
    under ``$FLWR_HOME/local-superlink``), else ``None``."""
    log_file = local_superlink_dir() / "superlink.log"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if _is_ours(cmdline, log_file):
            try:
                helpers = tuple(p.pid for p in proc.children(recursive=True))
            except psutil.Error:
                helpers = ()
            return LocalSuperLink(
                pid=proc.pid,
                helper_pids=helpers,
                installs_dependencies=NO_INSTALL_FLAG not in cmdline and _env_installs(proc),
                log_file=log_file,
            )
    return None


def _env_installs(proc: psutil.Process) -> bool:
    """Whether the flag's environment default (set by the ``flwr run`` that started it)
    leaves installation on."""
    try:
        env: dict[str, str] = proc.environ()
        return env.get("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION") != "1"
    except psutil.Error:
        return True  # cannot tell: assume Flower's default


def _healthy(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_local_superlink(timeout: float = 30.0) -> LocalSuperLink:
    """Start the local SuperLink ``flwr run . local`` uses, with runtime dependency
    installation off, and wait until it answers. Raises :class:`DeploymentError` when one
    already runs that installs dependencies (stop it first), when its port is taken by
    something else, or when it does not come up within ``timeout`` seconds."""
    running = find_local_superlink()
    if running is not None:
        if running.installs_dependencies:
            raise DeploymentError(
                f"the local SuperLink (pid {running.pid}) was started by 'flwr run' and "
                "installs app dependencies at run time; stop it first: feddx deploy "
                "superlink stop"
            )
        return running
    http_port, control_port = _ports()
    if _healthy(http_port):
        raise DeploymentError(
            f"port {http_port} already answers as a SuperLink not started from this "
            f"FLWR_HOME ({flwr_home()}); stop it or set FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"
        )
    folder = local_superlink_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / "superlink.log"
    # The command Flower's `flwr run` uses for its managed SuperLink, plus the flag.
    command = [
        flower_executable("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{control_port}",
        "--host",
        "127.0.0.1",
        "--port",
        http_port,
        "--log-file",
        str(log_file),
        "--database",
        str(folder / "state.db"),
        NO_INSTALL_FLAG,
    ]
    # The SuperLink spawns flower-superexec by name: the venv's scripts come first on PATH.
    scripts = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")]),
    }
    try:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command, as Flower's own does
        )
    except OSError as e:
        raise DeploymentError(f"cannot start flower-superlink: {e}") from e
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(
                f"flower-superlink exited with code {proc.returncode}; see {log_file}"
            )
        if _healthy(http_port):
            found = find_local_superlink()
            if found is not None:
                return found
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise DeploymentError(f"flower-superlink did not answer within {timeout:.0f} s; see {log_file}")


def stop_local_superlink(grace: float = 10.0) -> list[int]:
    """Stop the local SuperLink and everything it spawned (SIGTERM, then SIGKILL after
    ``grace`` seconds); returns the PIDs stopped (empty when none ran)."""
    running = find_local_superlink()
    if running is None:
        return []
    procs: list[psutil.Process] = []
    for pid in (running.pid, *running.helper_pids):
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in procs]
