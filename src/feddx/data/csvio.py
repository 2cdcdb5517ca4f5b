"""One CSV policy for every loader.

The csv module's field-size cap is process-global. Loaders that each set their own value made
a loader's behaviour depend on which other loader ran first, so the cap is raised once, here,
to one documented value: clinical notes can be long, but a single field over 16 MiB is a
malformed file, not a note.
"""

from __future__ import annotations

import csv
import sys

FIELD_LIMIT = 16 * 2**20


def allow_long_fields() -> None:
    """Raise the csv module's per-field cap to :data:`FIELD_LIMIT` (idempotent)."""
    csv.field_size_limit(min(FIELD_LIMIT, sys.maxsize))
