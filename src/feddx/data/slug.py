"""The one short name of an institution or region (issue 26 item 3).

Data names institutions as people write them ("Hungarian Inst. of Cardiology", "São Paulo");
folders, registry scopes, Flower node names, certificates and API keys need one short,
safe name for each. Every part of feddx derives it here, so Hungary's hospital is
``hungarian-inst-of-cardiology`` in ``feddx deploy``, ``feddx personalize``, the registry, the
demo and the service alike.
"""

from __future__ import annotations

import re
import unicodedata

MAX_SLUG = 63  # a DNS label: node names and certificate host names use it as is


def slug(name: str) -> str:
    """``name`` in lower case ASCII (accents dropped: ``São`` -> ``sao``), every run of other
    characters as one ``-``, without leading or trailing ``-``, at most 63 characters:
    ``"Hungarian Inst. of Cardiology"`` -> ``hungarian-inst-of-cardiology``,
    ``"Univ. Hospitals Zurich/Basel"`` -> ``univ-hospitals-zurich-basel``. Empty when ``name``
    has no letter or digit; a slug is its own slug."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    out = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return out[:MAX_SLUG].rstrip("-")


__all__ = ["MAX_SLUG", "slug"]
