"""What a node may say when its round fails: a failure class and that class's fixed text.

An exception's own message is data-derived: a loader's :class:`~feddx.errors.DataError` names
the row or case it could not read, a path can name a patient or a ward, and a bug's message can
quote anything. Flower forwards an error reply's ``reason`` to the server and writes it to the
SuperLink's and ServerApp's logs, so the ClientApp never puts an exception's text there: it
maps the exception to one row of :data:`FAILURE_CLASSES` and sends that row's fixed text.
The server reads a reason back with :func:`failure_class_of`, which accepts only the exact
texts of this table, so a hostile client cannot smuggle text into the server's logs or history
either.

Client and server share this module, so the two sides can never disagree about the table.
"""

from __future__ import annotations

import hashlib
import traceback
from dataclasses import dataclass
from pathlib import Path

from feddx.errors import ConfigError, DataError, FeddxError, ModelError
from feddx.federated.codec import MalformedUpdate

REASON_PREFIX = "feddx "


class ClientRoundError(RuntimeError):
    """A train message this node cannot work with (a missing record); no data in the text."""


@dataclass(frozen=True)
class FailureClass:
    """One row of the table: the name the server records and the fixed text of the reply."""

    name: str
    text: str

    @property
    def reason(self) -> str:
        """The error reply's ``reason``: ``feddx <name>: <text>``."""
        return f"{REASON_PREFIX}{self.name}: {self.text}"


DATA = FailureClass("data", "the node's training data cannot be used")
CONFIG = FailureClass("config", "the node or run configuration is invalid")
MODEL = FailureClass("model", "the base model or adapter cannot be loaded")
MESSAGE = FailureClass("message", "the train message is malformed")
MEMORY = FailureClass("memory", "the node ran out of memory")
REFUSED = FailureClass("refused", "local training was refused by feddx")
INTERNAL = FailureClass("internal", "local training failed (internal error)")

# First match wins: subclasses before their bases (every feddx error is a FeddxError).
FAILURE_CLASSES: tuple[tuple[type[BaseException], FailureClass], ...] = (
    (DataError, DATA),
    (ConfigError, CONFIG),
    (ModelError, MODEL),
    (ClientRoundError, MESSAGE),
    (MalformedUpdate, MESSAGE),
    (MemoryError, MEMORY),
    (FeddxError, REFUSED),
)
_BY_REASON = {c.reason: c for _, c in FAILURE_CLASSES} | {INTERNAL.reason: INTERNAL}
UNRECOGNISED = "unrecognised"


def failure_class(exc: BaseException) -> FailureClass:
    """The row of :data:`FAILURE_CLASSES` ``exc`` belongs to (:data:`INTERNAL` for a bug)."""
    for kind, cls in FAILURE_CLASSES:
        if isinstance(exc, kind):
            return cls
    return INTERNAL


def failure_class_of(reason: str | None) -> str:
    """The class name a reply's ``reason`` states, if it is exactly one of this table's
    texts; otherwise :data:`UNRECOGNISED` (a Flower runtime error, an older or hostile client).
    Never returns any part of an unrecognised reason."""
    found = _BY_REASON.get(reason or "")
    return found.name if found is not None else UNRECOGNISED


def local_description(exc: BaseException) -> str:
    """What the node's own log says about ``exc``: its class and fixed text, the exception
    type, the code location it was raised at, and a digest of its message (to tell failures
    apart and find them again with the data at hand, without writing the message down)."""
    cls = failure_class(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    digest = hashlib.sha256(f"{type(exc).__name__}: {exc}".encode()).hexdigest()[:12]
    return f"{cls.reason} ({type(exc).__name__}{where}, message digest {digest})"
