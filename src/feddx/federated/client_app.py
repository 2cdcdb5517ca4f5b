"""The feddx ClientApp: one institution's local LoRA training round.

Declared in ``pyproject.toml`` as ``feddx.federated.client_app:app``. Settings shared by the
whole federation come from ``context.run_config``
(:class:`~feddx.federated.config.FederatedConfig`); what is specific to one node comes from its
node config, ``flower-supernode --node-config "key=value ..."``:

=================  ==============================================================================
``partition-id``   simulation only (set by Flower): this client's index into the partition of
                   the run's ``data``; ``num-partitions`` is the number of simulated clients
``data-source``    deployment: this institution's data source (``ddxplus``, ``csv``, ``jsonl``,
                   ``uci-heart``, ``fhir``, ...), read with :func:`feddx.data.sources.load_source`
``data-path``      deployment: the path of this institution's data (never leaves the node;
                   ignored for ``uci-heart``)
``max-cases``      optional cap on the node's training cases (stratified sample)
``state-dir``      optional folder for the node's error-feedback residuals and DP ledger
                   (default ``<client-state-dir or out-dir/clients>/<node>``)
``activation-cache-dir``  optional folder for cached frozen-layer activations (default: the
                   run's ``activation-cache-dir``, else ``$FEDDX_CACHE/activations``)
``client-index``   optional integer that seeds this node's local training (default 0, or the
                   partition id in simulation)
``reply-delay``    optional seconds to hold the reply back after training (default 0): a
                   straggler drill, to see what ``round-timeout`` does with a slow node
=================  ==============================================================================

A deployed node must set ``data-source`` (and ``data-path``); a node with neither falls back to
the simulation partition. A train message carries the global adapter (ArrayRecord ``arrays``)
and a ConfigRecord ``config`` with ``server-round`` (and ``proximal-mu`` under FedProx). The
reply carries only:

* ``arrays``: the local adapter, or a compressed update (:mod:`feddx.federated.codec`);
* ``codec``: a ConfigRecord naming the scheme and its per-tensor scales/offsets/counts;
* ``metrics``: numbers only (``num-examples``, ``unit-weight``, ``train-loss``, ``train-steps``,
  ``train-seconds``, ``update-bytes``, ``dp-epsilon-round``, ``dp-epsilon-total``).

No case text, prompt, label or per-example value is ever put in a reply or logged. A failed
round becomes an error reply that names a failure class and that class's fixed text, from
:data:`FAILURE_CLASSES`, and nothing else: an exception's own message may quote a case id, a
name or a path (a loader's ``DataError`` names the row it could not read), and Flower would
forward it to the server and write it to every log on the way. The node's local log gets the
same class and text plus the code location (file and line of the innermost frame) and a short
digest of the full message, so an operator can tell two failures apart and reproduce them with
the data they hold, without the log itself holding data:

============  ==================================  ==========================================
class         raised as                           reply text (``feddx <class>: <text>``)
============  ==================================  ==========================================
``data``      :class:`~feddx.errors.DataError`    the node's training data cannot be used
``config``    :class:`~feddx.errors.ConfigError`  the node or run configuration is invalid
``model``     :class:`~feddx.errors.ModelError`   the base model or adapter cannot be loaded
``message``   a malformed train message           the train message is malformed
``memory``    :class:`MemoryError`                the node ran out of memory
``refused``   any other feddx error               local training was refused by feddx
``internal``  anything else (a bug)               local training failed (internal error)
============  ==================================  ==========================================

The reply is returned as an ``Error`` message rather than raised, so Flower neither logs a
traceback nor wraps the exception's text into the reason.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from feddx.errors import ConfigError
from feddx.federated.codec import (
    ARRAYS_KEY,
    CODEC_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    ResidualStore,
    content_bytes,
    encode_update,
    from_array_record,
    numpy_to_torch_state,
    torch_state_to_numpy,
)
from feddx.federated.config import FederatedConfig
from feddx.federated.failures import ClientRoundError, failure_class, local_description

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSettings:
    """What one node brings: where its data is and where it keeps local state."""

    key: str  # a stable, data-free name for this node ("partition-3", "node-<hash>")
    index: int  # seeds local training
    partition_id: int | None
    num_partitions: int | None
    data_source: str | None
    data_path: str
    max_cases: int
    state_dir: Path
    activation_dir: Path
    reply_delay: float = 0.0

    @classmethod
    def from_context(cls, context: Context, cfg: FederatedConfig) -> NodeSettings:
        from feddx.federated.task import client_state_dir

        nc = dict(context.node_config)
        source = _opt_str(nc, "data-source")
        path = _opt_str(nc, "data-path") or ""
        pid = _opt_int(nc, "partition-id")
        nparts = _opt_int(nc, "num-partitions")
        if source is None and pid is None:
            raise ConfigError(
                "node config needs data-source (and data-path) in a deployment, or "
                "partition-id in a simulation"
            )
        if source is not None:
            key = "node-" + hashlib.sha256(f"{source}:{path}".encode()).hexdigest()[:12]
        else:
            key = f"partition-{pid}"
        index = _opt_int(nc, "client-index")
        return cls(
            key=key,
            index=index if index is not None else (pid or 0),
            partition_id=pid,
            num_partitions=nparts,
            data_source=source,
            data_path=path,
            max_cases=_opt_int(nc, "max-cases") or 0,
            state_dir=client_state_dir(cfg, nc, key),
            activation_dir=(
                Path(act).expanduser()
                if (act := _opt_str(nc, "activation-cache-dir"))
                else cfg.activation_cache_path()
            ),
            reply_delay=_opt_seconds(nc, "reply-delay"),
        )


def _opt_str(nc: dict[str, Any], key: str) -> str | None:
    v = nc.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ConfigError(f"node config {key} must be a string")
    return v


def _opt_int(nc: dict[str, Any], key: str) -> int | None:
    v = nc.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ConfigError(f"node config {key} must be an integer")
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"node config {key} must be an integer") from None


def _opt_seconds(nc: dict[str, Any], key: str) -> float:
    v = nc.get(key)
    if v is None or v == "":
        return 0.0
    try:
        seconds = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"node config {key} must be a number of seconds") from None
    if isinstance(v, bool) or not 0 <= seconds < float("inf"):
        raise ConfigError(f"node config {key} must be a number of seconds >= 0")
    return seconds


def local_seed(cfg: FederatedConfig, server_round: int, index: int) -> int:
    """The seed of one node's local round: different per node and round, fixed per run."""
    return (cfg.seed * 1_000_003 + server_round * 10_007 + index * 101) % (2**31)


def node_training_cases(cfg: FederatedConfig, node: NodeSettings) -> list[Any]:
    from feddx.federated.task import node_cases, simulation_partition

    if node.data_source is not None:
        return node_cases(node.data_source, node.data_path, max_cases=node.max_cases, seed=cfg.seed)
    assert node.partition_id is not None
    cases = simulation_partition(cfg, node.partition_id, node.num_partitions or cfg.num_clients)
    return cases[: node.max_cases or None]


def handle_train(msg: Message, context: Context) -> Message:
    """Train the global adapter on this node's cases and reply with the update."""
    from feddx.federated.privacy import ClientPrivacyLedger, dp_sgd_release
    from feddx.federated.task import adapter_model
    from feddx.model.adapter import adapter_state, load_adapter_state
    from feddx.train.recipe import fit

    cfg = FederatedConfig.from_run_config(context.run_config)
    node = NodeSettings.from_context(context, cfg)
    config = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
    server_round = int(config.get("server-round", 0))
    mu = float(config.get("proximal-mu", 0.0))
    if ARRAYS_KEY not in msg.content.array_records:
        raise ClientRoundError(f"train message without an '{ARRAYS_KEY}' ArrayRecord")
    global_arrays = from_array_record(msg.content.array_records[ARRAYS_KEY])

    cases = node_training_cases(cfg, node)
    am = adapter_model(cfg)
    global_state = numpy_to_torch_state(global_arrays)
    load_adapter_state(am.model, global_state)
    train_cfg = cfg.train_config(
        seed=local_seed(cfg, server_round, node.index), proximal_mu=mu, server_round=server_round
    )
    start = time.perf_counter()
    result = fit(
        am.model,
        am.tokenizer,
        cases,
        train_cfg,
        proximal_reference=global_state if mu > 0 else None,
        feature_cache_dir=node.activation_dir,
    )
    seconds = time.perf_counter() - start
    am.model.eval()
    local = torch_state_to_numpy(adapter_state(am.model))

    residuals = ResidualStore(node.state_dir / "residuals")
    arrays, codec, new_residual = encode_update(
        local,
        global_arrays,
        cfg.compression,
        topk_fraction=cfg.topk_fraction,
        deflate=cfg.deflate,
        residual=residuals.load_before(server_round) if cfg.compression == "topk" else None,
    )
    if new_residual is not None:
        residuals.save(server_round, new_residual)

    eps_round = eps_total = 0.0
    if cfg.dp == "local":
        ledger = ClientPrivacyLedger(node.state_dir / "privacy.json")
        ledger.record(
            server_round,
            dp_sgd_release(
                batch_size=cfg.batch_size,
                num_examples=len(cases),
                noise_multiplier=cfg.dp_noise_multiplier,
                steps=int(result.steps),
            ),
        )
        eps_round = float(result.epsilon) if result.epsilon is not None else 0.0
        eps_total = ledger.epsilon_through(server_round, cfg.dp_delta)

    update = RecordDict({ARRAYS_KEY: arrays, CODEC_KEY: codec})
    metrics = MetricRecord(
        {
            "num-examples": len(cases),
            "unit-weight": 1.0,
            "train-loss": float(result.mean_loss),
            "train-steps": int(result.steps),
            "train-seconds": seconds,
            "update-bytes": content_bytes(update),
            "dp-epsilon-round": eps_round,
            "dp-epsilon-total": eps_total,
        }
    )
    log.info(
        "round %d, %s: %d cases, %d steps, loss %.4f, %.1f s",
        server_round,
        node.key,
        len(cases),
        result.steps,
        result.mean_loss,
        seconds,
    )
    if node.reply_delay > 0:
        log.info(
            "round %d, %s: holding the reply %.0f s (reply-delay)",
            server_round,
            node.key,
            node.reply_delay,
        )
        time.sleep(node.reply_delay)
    return Message(
        RecordDict({ARRAYS_KEY: arrays, CODEC_KEY: codec, METRICS_KEY: metrics}), reply_to=msg
    )


def failure_reply(msg: Message, exc: BaseException) -> Message:
    """The error reply for a round that raised ``exc``: Flower's "ClientApp raised an
    exception" code and the fixed text of ``exc``'s failure class, nothing of ``exc`` itself
    (see :mod:`feddx.federated.failures`)."""
    reason = failure_class(exc).reason
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


# ----------------------------------------------------------------------------- the Flower app
app = ClientApp()


@app.train()  # type: ignore[untyped-decorator]
def train(msg: Message, context: Context) -> Message:
    """Flower entry point for train messages."""
    from feddx.federated.task import quiet_runtime

    quiet_runtime()
    try:
        return handle_train(msg, context)
    except Exception as e:
        log.error("local training failed: %s", local_description(e))
        return failure_reply(msg, e)
