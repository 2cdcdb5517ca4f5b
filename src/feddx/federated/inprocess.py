"""An in-process Flower ``Grid``: the ServerApp's loop talking straight to ClientApp handlers.

Flower's runtimes (simulation or deployment) put a SuperLink, process isolation and
serialization between the two apps; that is what production needs, but it makes unit tests
slow and faults hard to stage. :class:`InProcessGrid` implements the same ``Grid`` interface
the ServerApp sees and delivers each message by calling the real ClientApp (``app(message,
context)``) with a per-node ``Context`` (node config, persistent state, run config), exactly the
objects a SuperNode would pass. A hook may drop or alter replies to stage dropouts, timeouts
and corrupted or hostile updates.

Messages are delivered one after another in one process: a tool for tests and for checking a
configuration quickly, not a runtime.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

# (server_round, node_id, reply) -> the reply to deliver, or None to drop it (a dropout or a
# reply that missed the deadline).
ReplyHook = Callable[[int, int, Message], Message | None]


class InProcessGrid(Grid):  # type: ignore[misc]  # flwr is untyped for mypy
    """A Grid whose nodes are ClientApp calls in this process.

    Parameters
    ----------
    client_app
        The ClientApp to deliver messages to.
    run_config
        The run config every node's Context carries (``FederatedConfig.to_run_config()``).
    node_configs
        One node config per node (e.g. ``{"partition-id": 0, "num-partitions": 2}``).
    reply_hook
        Optional fault injection, see :data:`ReplyHook`.
    """

    def __init__(
        self,
        client_app: ClientApp,
        run_config: Mapping[str, Any],
        node_configs: Sequence[Mapping[str, Any]],
        *,
        reply_hook: ReplyHook | None = None,
        first_node_id: int = 1001,
    ) -> None:
        self.client_app = client_app
        _set_task_identity()
        self.reply_hook = reply_hook
        self.contexts: dict[int, Context] = {
            first_node_id + i: Context(
                run_id=1,
                node_id=first_node_id + i,
                node_config=dict(nc),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, nc in enumerate(node_configs)
        }
        self._run: Any = None
        self._pending: dict[str, Message] = {}
        self.delivered: list[Message] = []  # every instruction delivered (for inspection)
        self.replies: list[Message] = []  # every reply returned to the server

    # -- Grid interface ---------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            self._pending[mid] = msg
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in message_ids:
            msg = self._pending.pop(mid, None)
            if msg is not None:
                reply = self._deliver(msg)
                if reply is not None:
                    out.append(reply)
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # -- delivery ---------------------------------------------------------------
    def _deliver(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        context = self.contexts[node]
        self.delivered.append(msg)
        try:
            reply = self.client_app(msg, context)
        except Exception as e:
            reason = f"{type(e)}:<'{e}'>"
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
            )
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        if self.reply_hook is not None:
            server_round = _round_of(msg)
            hooked = self.reply_hook(server_round, node, reply)
            if hooked is None:
                log.info("node %d: reply dropped (staged fault)", node)
                return None
            reply = hooked
        self.replies.append(reply)
        return reply


def _set_task_identity() -> None:
    """Messages stamp the sending task's identity, which a Flower runtime sets per process;
    outside one, act as the ServerApp of run 1 (unless something already set it)."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    if TaskIdentity._run_id is None:
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID


def _round_of(msg: Message) -> int:
    cfg = msg.content.config_records.get("config") if msg.has_content() else None
    value = cfg.get("server-round", 0) if cfg is not None else 0
    return int(value) if isinstance(value, int) else 0
