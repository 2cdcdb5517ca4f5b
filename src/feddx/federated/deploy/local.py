"""A real Flower deployment on one machine: one SuperLink and one SuperNode per institution, as
separate OS processes talking TLS over loopback, with SuperNode authentication.

This is the production topology (what ``deploy/k8s`` runs across machines) shrunk onto one host,
so the exact same app, certificates and flags are exercised in CI. The sequence:

1. start ``flower-superlink`` with our TLS certificate and ``--enable-supernode-auth``, and wait
   until it completes a TLS handshake verified against our CA;
2. register every institution's public key (``flwr supernode register``);
3. start one ``flower-supernode`` per institution, each with its own private key, its own
   runtime port, its own ``FLWR_HOME`` and *only its own* ``--node-config`` (data source and
   path): no process ever learns another institution's data location;
4. wait until the SuperLink lists every node as online;
5. submit the app (``flwr run APP``), stream its log to a file until it finishes, read its status;
6. stop exactly the processes started here and everything they spawned (see
   :mod:`feddx.federated.deploy.processes`), on success, error, Ctrl-C or SIGTERM.

Everything lands in ``run_dir``: ``logs/`` (one file per process plus ``run.log``), ``pids``,
the private ``FLWR_HOME`` folders, ``run-config.toml`` and ``federation.json`` (timings, ids,
status).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Literal

import psutil
from pydantic import Field

from feddx.errors import ConfigError
from feddx.federated.certs import FederationCredentials, load_credentials, validate_node_names
from feddx.federated.deploy.control import (
    FlowerControl,
    RunStatus,
    Scalar,
    flower_executable,
    node_config_arg,
    process_env,
    write_connection,
    write_toml_table,
)
from feddx.federated.deploy.processes import DeploymentError, ManagedProcess, ProcessSet
from feddx.io import atomic_write_json
from feddx.settings import SettingPath, Settings

LOOPBACK = "127.0.0.1"
_FLOWER_EXIT = re.compile(r"Exit Code: (\d+)")


class NodeSpec(Settings):
    """One institution's SuperNode: its name (= its key's name in the credentials) and the
    node config it alone receives (``data-source``, ``data-path``, anything else the app reads
    from ``context.node_config``)."""

    settings_name: ClassVar[str] = "node"

    name: str
    node_config: Mapping[str, Scalar]

    @classmethod
    def for_data(cls, name: str, source: str, path: Path | None) -> NodeSpec:
        """A node reading ``source`` at ``path`` (made absolute: the ClientApp's cwd differs)."""
        config: dict[str, Scalar] = {"data-source": source}
        if path is not None:
            config["data-path"] = str(Path(path).expanduser().resolve())
        return cls(name=name, node_config=config)

    @classmethod
    def parse(cls, text: str) -> NodeSpec:
        """Parse ``NAME=SOURCE:PATH`` (``NAME=uci-heart`` for path-less sources)."""
        name, sep, spec = text.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(
                f"node {text!r}: expected NAME=SOURCE:PATH, e.g. hospital-a=jsonl:/data/a.jsonl"
            )
        source, _, path = spec.partition(":")
        return cls.for_data(name.strip(), source.strip(), Path(path) if path else None)


def node_name_for(value: str) -> str:
    """A node name (DNS label) for a partition client: its one slug
    (:func:`feddx.data.slug.slug`, as the registry and personalize name it):
    ``"VA Long Beach"`` -> ``va-long-beach``."""
    from feddx.data.slug import slug

    return slug(value) or "node"


def nodes_from_partition(partition_dir: Path) -> list[NodeSpec]:
    """One :class:`NodeSpec` per client shard of a ``feddx data partition`` folder.

    Nodes are named after the partition attribute's value (an institution partition gives
    ``cleveland-clinic``, ``va-long-beach``...), else ``client-<i>``; each reads its own
    ``client_<i>.jsonl``. Raises :class:`ConfigError` if the manifest is missing or malformed.
    """
    from feddx.data.partition import MANIFEST

    manifest_path = Path(partition_dir) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        clients = manifest["clients"]
        nodes: list[NodeSpec] = []
        used: set[str] = set()
        for client in clients:
            value = client.get("attribute_value")
            name = node_name_for(str(value)) if value else f"client-{client['index']}"
            if name in used:
                name = f"{name}-{client['index']}"[-63:]
            used.add(name)
            shard = (Path(partition_dir) / client["file"]).resolve()
            nodes.append(NodeSpec.for_data(name, "jsonl", shard))
    except FileNotFoundError:
        raise ConfigError(
            f"{manifest_path} not found: write shards with 'feddx data partition'"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{manifest_path}: not a feddx partition manifest ({e})") from None
    if not nodes:
        raise ConfigError(f"{manifest_path}: the partition has no clients")
    return nodes


@dataclass(frozen=True)
class LocalData:
    """What :func:`prepare_local_data` wrote: one node per institution, and the server's
    validation cases (``eval-data``), disjoint from every node's training cases."""

    nodes: list[NodeSpec]
    partition_dir: Path
    eval_path: Path
    n_train: int
    n_eval: int


def prepare_local_data(
    data: str,
    out_dir: Path,
    *,
    attribute: str = "institution",
    validation_fraction: float = 0.2,
    seed: int = 0,
    max_cases: int = 0,
    assume_deidentified: bool = False,
) -> LocalData:
    """Split a dataset the way a real federation is split, for a loopback deployment.

    A stratified ``validation_fraction`` becomes the server's validation set
    (``out_dir/eval.jsonl``, pass it as ``eval-data``); the rest is partitioned by ``attribute``
    (one shard per institution, ``out_dir/shards``) and each shard becomes one node. So no node
    trains on a case the server validates on. ``max_cases`` (0: all) takes a stratified sample
    first, for runs that must be quick.

    Every case is de-identified (:class:`~feddx.data.stage.DeidStage`) before it is split and
    written: the shards, their manifest, ``eval.jsonl`` and its marker
    (``eval.jsonl.deid.json``) hold pseudonyms and redacted text only.
    ``assume_deidentified`` writes them as read (recorded as ``"assumed"``, with a warning).
    """
    from feddx.data.jsonl import write_jsonl
    from feddx.data.partition import PartitionSpec, partition_cases, write_partition
    from feddx.data.report import LoadReport
    from feddx.data.sources import load_source, parse_data_spec
    from feddx.data.split import stratified_split
    from feddx.data.stage import DeidStage, write_marker
    from feddx.errors import DataError

    source, path = parse_data_spec(data)
    stage = DeidStage(assume_deidentified=assume_deidentified)
    cases = [c for c in load_source(source, path, LoadReport(source)) if c.label is not None]
    if not cases:
        raise DataError(f"{data}: no labeled cases")
    if max_cases and max_cases < len(cases):
        _, cases = stratified_split(cases, test_fraction=max_cases / len(cases), seed=seed)
    cases = list(stage.cases(cases))
    train, validation = stratified_split(cases, test_fraction=validation_fraction, seed=seed)
    spec = PartitionSpec(kind="attribute", attribute=attribute, seed=seed)
    partition_dir = Path(out_dir) / "shards"
    write_partition(
        partition_cases(train, spec),
        partition_dir,
        spec,
        extra={"source": data, "split": "train"},
        stage=stage,
    )
    eval_path = Path(out_dir) / "eval.jsonl"
    write_jsonl(sorted(validation, key=lambda c: c.case_id), eval_path)
    write_marker(eval_path, stage.marker(), extra={"n_cases": len(validation), "split": "eval"})
    return LocalData(
        nodes=nodes_from_partition(partition_dir),
        partition_dir=partition_dir,
        eval_path=eval_path.resolve(),
        n_train=len(train),
        n_eval=len(validation),
    )


class LocalFederationConfig(Settings):
    """Everything one loopback federation needs.

    Parameters
    ----------
    run_dir
        Folder for logs, PID file, FLWR_HOME folders and the summary (created).
    credentials
        Folder written by ``feddx deploy certs`` holding a key pair for every node.
    nodes
        One :class:`NodeSpec` per institution.
    app_dir
        The Flower app project (a folder with ``pyproject.toml`` declaring ``[tool.flwr.app]``);
        ``flwr run`` builds the FAB from it.
    run_config
        Overrides of the app's ``[tool.flwr.app.config]`` (written to ``run-config.toml``).
    threads_per_node
        ``OMP_NUM_THREADS`` for each SuperNode's ClientApps; default: the CPU count divided by
        the number of nodes (at least 1), so concurrent clients do not oversubscribe the cores.
    startup_timeout, run_timeout
        Seconds to wait for the daemons to come up, and for the run to finish.
    isolation
        ``"subprocess"``: the SuperLink and SuperNodes start their own ServerApp/ClientApp
        executors (one process tree each). ``"process"``: we start each executor
        (``flower-superexec``) as a separate process, the way ``deploy/k8s`` runs them as
        separate containers from a different image; the SuperLink's executor authenticates
        with the shared secret from the credentials folder.
    """

    settings_name: ClassVar[str] = "local federation"

    run_dir: SettingPath
    credentials: SettingPath
    nodes: Sequence[NodeSpec]
    app_dir: SettingPath
    run_config: Mapping[str, Scalar] = Field(default_factory=dict)
    host: str = LOOPBACK
    threads_per_node: int | None = Field(default=None, ge=1)
    startup_timeout: float = Field(default=120.0, gt=0.0)
    run_timeout: float = Field(default=3600.0, gt=0.0)
    isolation: Literal["subprocess", "process"] = "subprocess"


@dataclass
class FederationResult:
    """What a finished loopback federation reports (also saved as ``federation.json``)."""

    run_id: int
    status: str
    status_details: str
    superlink_address: str
    node_ids: dict[str, int]
    timings_s: dict[str, float]
    pids: dict[str, int]
    leftover_pids: list[int]
    run_dir: str


@dataclass(frozen=True)
class Refusal:
    """How a SuperNode with an unregistered key ended: process exit code and Flower's code."""

    exit_code: int
    flower_exit_code: int | None  # 305 = SuperNode could not activate (refused)
    seconds: float


def free_loopback_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (the OS picks them)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_tls(
    host: str, port: int, ca_cert: Path, *, timeout: float, alive: ManagedProcess
) -> None:
    """Wait until ``host:port`` completes a TLS handshake whose certificate our CA signed.

    Raises :class:`DeploymentError` if ``alive`` exits first or the timeout passes.
    """
    context = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not alive.alive():
            raise DeploymentError(
                f"{alive.name} exited with code {alive.popen.returncode} during start-up "
                f"(log: {alive.log_path}):\n{alive.log_tail()}"
            )
        try:
            with (
                socket.create_connection((host, port), timeout=2.0) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return
        except ssl.SSLCertVerificationError as e:
            raise DeploymentError(
                f"{alive.name} at {host}:{port} presents a certificate our CA did not sign or "
                f"that does not name {host}: {e.verify_message}"
            ) from e
        except OSError as e:
            last_error = str(e)
        time.sleep(0.2)
    raise DeploymentError(
        f"{alive.name} not reachable at {host}:{port} after {timeout:.0f} s ({last_error})"
    )


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`KeyboardInterrupt` while the block runs, so ``finally``
    clauses (which stop our processes) also run when a script or CI kills us politely."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP while the block runs (a shutdown in progress must finish:
    a second Ctrl-C must not leave half the federation running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class LocalFederation:
    """Start, use and stop one loopback federation (see the module docstring for the sequence).

    Use as a context manager; :meth:`stop` runs on leaving the block whatever happened.
    """

    def __init__(self, config: LocalFederationConfig) -> None:
        self.config = config
        validate_node_names([n.name for n in config.nodes])
        self.run_dir = config.run_dir.resolve()
        # Absolute: every process runs in its own working directory.
        self.creds: FederationCredentials = load_credentials(config.credentials.resolve())
        for node in config.nodes:
            keys = self.creds.node(node.name)
            if not keys.private_key.is_file():
                raise DeploymentError(
                    f"{keys.private_key}: private key of node '{node.name}' missing"
                )
        if config.host not in self.creds.ip_addresses and config.host not in self.creds.hostnames:
            raise ConfigError(
                f"the SuperLink certificate in {self.creds.root} does not name {config.host} "
                f"(it names {', '.join(self.creds.hostnames + self.creds.ip_addresses)})"
            )
        app_pyproject = config.app_dir / "pyproject.toml"
        if not app_pyproject.is_file() or "[tool.flwr.app" not in app_pyproject.read_text(
            encoding="utf-8"
        ):
            raise ConfigError(
                f"{config.app_dir} is not a Flower app: {app_pyproject} has no [tool.flwr.app]"
            )
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs = ProcessSet(self.run_dir / "pids")
        self.port, *node_ports = free_loopback_ports(1 + len(config.nodes), config.host)
        self.node_ports = dict(zip([n.name for n in config.nodes], node_ports, strict=True))
        self.address = f"{config.host}:{self.port}"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
        cli_home = self.run_dir / "cli" / "flwr-home"
        write_connection(cli_home, self.address, self.creds.ca_cert)
        self.control = FlowerControl(cli_home, process_env(base_env, cli_home))
        self._base_env = base_env
        self.node_ids: dict[str, int] = {}
        self.supernodes: dict[str, ManagedProcess] = {}
        self.superlink: ManagedProcess | None = None
        self.timings: dict[str, float] = {}
        self.leftover_pids: list[int] = []
        self.run_id: int | None = None
        self._supernodes_t0: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """SuperLink up, every node registered, every SuperNode online."""
        self.start_superlink()
        self.register_nodes()
        for node in self.config.nodes:
            self.start_supernode(node)
        self.wait_online()

    def start_superlink(self) -> None:
        t0 = time.monotonic()
        home = self.run_dir / "superlink" / "flwr-home"
        argv = [
            flower_executable("flower-superlink"),
            "--host", self.config.host,
            "--port", str(self.port),
            "--ssl-ca-certfile", str(self.creds.ca_cert),
            "--ssl-certfile", str(self.creds.server_cert),
            "--ssl-keyfile", str(self.creds.server_key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--isolation", self.config.isolation,
        ]  # fmt: skip
        if self.config.isolation == "process":
            argv += ["--superexec-auth-secret-file", str(self.creds.superexec_secret)]
        self.superlink = self.procs.start(
            "superlink",
            argv,
            log_path=self.logs / "superlink.log",
            env=process_env(self._base_env, home),
            cwd=self.run_dir / "superlink",
        )
        wait_for_tls(
            self.config.host,
            self.port,
            self.creds.ca_cert,
            timeout=self.config.startup_timeout,
            alive=self.superlink,
        )
        if self.config.isolation == "process":
            self.procs.start(
                "serverapp-executor",
                [
                    flower_executable("flower-superexec"),
                    "--runtime-api-address",
                    self.address,
                    "--root-certificates",
                    str(self.creds.ca_cert),
                    "--superexec-auth-secret-file",
                    str(self.creds.superexec_secret),
                ],
                log_path=self.logs / "serverapp-executor.log",
                env=process_env(self._base_env, self.run_dir / "superlink" / "flwr-home"),
                cwd=self.run_dir / "superlink",
            )
        self.timings["superlink_start"] = time.monotonic() - t0

    def register_nodes(self) -> None:
        t0 = time.monotonic()
        for node in self.config.nodes:
            keys = self.creds.node(node.name)
            self.node_ids[node.name] = self.control.register_node(keys.public_key, node.name)
        self.timings["register_nodes"] = time.monotonic() - t0

    def _supernode_argv(self, name: str, private_key: Path, port: int) -> list[str]:
        return [
            flower_executable("flower-supernode"),
            "--superlink", self.address,
            "--root-certificates", str(self.creds.ca_cert),
            "--auth-supernode-private-key", str(private_key),
            "--host", self.config.host,
            "--port", str(port),
        ]  # fmt: skip

    def _node_env(self, name: str) -> dict[str, str]:
        threads = self.config.threads_per_node or max(
            1, (os.cpu_count() or 1) // max(1, len(self.config.nodes))
        )
        return process_env(
            self._base_env,
            self.run_dir / "nodes" / name / "flwr-home",
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
        )

    def start_supernode(self, node: NodeSpec) -> ManagedProcess:
        if self._supernodes_t0 is None:
            self._supernodes_t0 = time.monotonic()
        keys = self.creds.node(node.name)
        argv = self._supernode_argv(node.name, keys.private_key, self.node_ports[node.name])
        argv += ["--node-config", node_config_arg(node.node_config)]
        argv += ["--isolation", self.config.isolation]
        proc = self.procs.start(
            f"supernode:{node.name}",
            argv,
            log_path=self.logs / f"supernode-{node.name}.log",
            env=self._node_env(node.name),
            cwd=self.run_dir / "nodes" / node.name,
        )
        self.supernodes[node.name] = proc
        if self.config.isolation == "process":
            # The executor reaches its SuperNode's runtime API on loopback only, as the
            # sidecar container does in a Kubernetes pod.
            self.procs.start(
                f"clientapp-executor:{node.name}",
                [
                    flower_executable("flower-superexec"),
                    "--insecure",
                    "--runtime-api-address",
                    f"{self.config.host}:{self.node_ports[node.name]}",
                ],
                log_path=self.logs / f"clientapp-executor-{node.name}.log",
                env=self._node_env(node.name),
                cwd=self.run_dir / "nodes" / node.name,
            )
        return proc

    def wait_online(self) -> None:
        """Poll ``flwr supernode ls`` until every registered node of ours is online."""
        begin = self._supernodes_t0 or time.monotonic()
        deadline = time.monotonic() + self.config.startup_timeout
        wanted = {str(i): name for name, i in self.node_ids.items()}
        while True:
            for name, proc in self.supernodes.items():
                if not proc.alive():
                    raise DeploymentError(
                        f"SuperNode '{name}' exited with code {proc.popen.returncode} "
                        f"(log: {proc.log_path}):\n{proc.log_tail()}"
                    )
            online = {
                str(n.get("node-id"))
                for n in self.control.list_nodes()
                if n.get("status") == "online"
            }
            if set(wanted) <= online:
                break
            if time.monotonic() > deadline:
                missing = sorted(wanted[i] for i in set(wanted) - online)
                raise DeploymentError(
                    f"SuperNodes not online after {self.config.startup_timeout:.0f} s: {', '.join(missing)}"
                )
            time.sleep(0.5)
        self.procs.refresh_descendants()
        self.timings["supernodes_online"] = time.monotonic() - begin

    def probe_refused(self, name: str, private_key: Path, *, timeout: float = 60.0) -> Refusal:
        """Start a SuperNode with ``private_key`` (which must NOT be registered) and report how
        it ended. With SuperNode authentication on, the SuperLink refuses it and the process exits
        non-zero with Flower exit code 305. The probe never retries and is stopped with the rest.

        Raises :class:`DeploymentError` if the node is still running after ``timeout``, i.e.
        it was admitted.
        """
        (port,) = free_loopback_ports(1, self.config.host)
        argv = [*self._supernode_argv(name, private_key, port), "--max-retries", "0"]
        t0 = time.monotonic()
        proc = self.procs.start(
            f"probe:{name}",
            argv,
            log_path=self.logs / f"probe-{name}.log",
            env=self._node_env(name),
            cwd=self.run_dir / "probes" / name,
        )
        try:
            code = proc.popen.wait(timeout=timeout)
        except Exception as e:
            raise DeploymentError(
                f"SuperNode '{name}' with an unregistered key was not refused within {timeout:.0f} s"
            ) from e
        found = _FLOWER_EXIT.findall(proc.log_path.read_text(encoding="utf-8", errors="replace"))
        return Refusal(code, int(found[-1]) if found else None, time.monotonic() - t0)

    def run(
        self,
        run_config: Mapping[str, Scalar] | None = None,
        *,
        timeout: float | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> RunStatus:
        """Submit the app, follow its log into ``logs/run.log`` and return its final status.

        ``on_tick`` is called about once a second while the run is followed (a fault drill
        uses it to act at a chosen moment: kill a node, kill the ServerApp).
        Raises :class:`DeploymentError` if it does not finish within ``timeout`` (then it is
        stopped on the SuperLink).
        """
        config = {**self.config.run_config, **(run_config or {})}
        config_file = write_toml_table(self.run_dir / "run-config.toml", config) if config else None
        t0 = time.monotonic()
        run_id = self.control.submit_run(self.config.app_dir.resolve(), config_file)
        self.run_id = run_id
        timeout = timeout or self.config.run_timeout

        def tick() -> None:
            self.procs.refresh_descendants()
            if on_tick is not None:
                on_tick()

        finished = self.control.stream_logs(run_id, self.logs / "run.log", timeout, tick=tick)
        if not finished:
            with contextlib.suppress(DeploymentError):
                self.control.stop_run(run_id)
            raise DeploymentError(
                f"run {run_id} did not finish within {timeout:.0f} s (log: {self.logs / 'run.log'})"
            )
        status = self.control.run_status(run_id)
        # The log stream can end a moment before the SuperLink records the final state.
        deadline = time.monotonic() + 30
        while not status.finished and time.monotonic() < deadline:
            time.sleep(1.0)
            status = self.control.run_status(run_id)
        self.timings["run"] = time.monotonic() - t0
        return status

    # -- fault drills ---------------------------------------------------------------------------

    def app_processes(self, daemon: ManagedProcess, executable: str) -> list[psutil.Process]:
        """The live descendants of ``daemon`` running ``executable`` (``flwr-serverapp`` under
        the SuperLink, ``flwr-clientapp`` under a SuperNode). Each is also remembered, so
        :meth:`stop` ends it even once its parent is gone."""
        self.procs.refresh_descendants()
        found = []
        for proc in list(daemon.known_descendants.values()):
            with contextlib.suppress(psutil.Error):
                running = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
                if running and any(Path(a).name == executable for a in proc.cmdline()[:2]):
                    found.append(proc)
        return found

    def kill(self, pid: int) -> None:
        """SIGKILL one process we started or saw as a descendant: a crash, not a shutdown.

        Raises :class:`DeploymentError` for a PID this federation does not own: a drill never
        signals anyone else's process."""
        if pid not in self.procs.all_pids():
            raise DeploymentError(f"PID {pid} is not a process of this federation")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for proc in self.procs.processes:
            if proc.pid == pid:  # our own child: reap it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=10)

    def restart_supernode(self, name: str) -> ManagedProcess:
        """Start node ``name`` again after it crashed, on a fresh runtime port, and wait until
        the SuperLink lists it online."""
        node = next((n for n in self.config.nodes if n.name == name), None)
        if node is None:
            raise ConfigError(f"no node named {name!r} in this federation")
        old = self.supernodes.get(name)
        if old is not None and old.alive():
            raise DeploymentError(f"SuperNode '{name}' is still running")
        (self.node_ports[name],) = free_loopback_ports(1, self.config.host)
        proc = self.start_supernode(node)
        self.wait_online()
        return proc

    def stop(self) -> list[int]:
        """Stop every process started here and all their descendants; return any survivors."""
        t0 = time.monotonic()
        self.leftover_pids = self.procs.stop()
        self.timings["stop"] = time.monotonic() - t0
        return self.leftover_pids

    def result(self, status: RunStatus) -> FederationResult:
        return FederationResult(
            run_id=status.run_id,
            status=status.status,
            status_details=status.details,
            superlink_address=self.address,
            node_ids=dict(self.node_ids),
            timings_s={k: round(v, 2) for k, v in self.timings.items()},
            pids={p.name: p.pid for p in self.procs.processes},
            leftover_pids=list(self.leftover_pids),
            run_dir=str(self.run_dir),
        )


def run_local_federation(config: LocalFederationConfig) -> FederationResult:
    """Start a loopback federation, run the app once, stop everything, and write
    ``run_dir/federation.json``.

    Raises :class:`DeploymentError` if a process fails to start, the run does not complete, or
    a process survives the shutdown.
    """
    fed = LocalFederation(config)
    status: RunStatus | None = None
    with signals_as_exceptions():
        try:
            fed.start()
            status = fed.run()
        finally:
            with signals_deferred():
                fed.stop()
    result = fed.result(status)
    _write_json(fed.run_dir / "federation.json", asdict(result))
    if fed.leftover_pids:
        raise DeploymentError(f"processes still running after shutdown: {fed.leftover_pids}")
    if not status.completed:
        raise DeploymentError(
            f"run {status.run_id} ended as '{status.status}' ({status.details}); "
            f"see {fed.logs / 'run.log'}"
        )
    return result


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_json(path, payload, indent=2)
