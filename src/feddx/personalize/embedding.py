"""What an embedder is, for the modules that take one: a protocol of its own, low in the
package, so that :mod:`feddx.personalize.history` (which compares history items by
embedding) and :mod:`feddx.personalize.retrieval` (which indexes cases by embedding, and uses
the history's ordering) each import it without importing one another both ways."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """Anything that maps texts to L2-normalised float32 vectors of one dimension."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


__all__ = ["Embedder"]
