"""One slug per institution and region, from every command (issue 26 item 3)."""

from __future__ import annotations

import pytest

from feddx.data.slug import MAX_SLUG, slug
from feddx.data.uci_heart import load_uci_heart
from feddx.federated.deploy.local import node_name_for
from feddx.personalize.register import registry_scope
from feddx.personalize.registry import normalize_scope
from feddx.serve.adapters import scope_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Hungarian Inst. of Cardiology", "hungarian-inst-of-cardiology"),
        ("Univ. Hospitals Zurich/Basel", "univ-hospitals-zurich-basel"),
        ("São Paulo", "sao-paulo"),
        ("  Hospital  A ", "hospital-a"),
        ("Basel_Stadt", "basel-stadt"),
        ("VA Long Beach", "va-long-beach"),
        ("///", ""),
    ],
)
def test_slug(name: str, expected: str) -> None:
    assert slug(name) == expected
    assert slug(expected) == expected  # a slug is its own slug


def test_slug_is_a_dns_label() -> None:
    long = slug("x" * 80 + " hospital")
    assert len(long) == MAX_SLUG and not long.endswith("-")


def test_every_part_names_each_uci_institution_alike() -> None:
    """deploy (node names), personalize (registry scopes), the registry and the service give
    each institution of the data the same name: no 'hungarian-inst.-of-cardiology' beside
    'hungarian-inst-of-cardiology'."""
    names = sorted({c.institution for c in load_uci_heart() if c.institution})
    assert "Hungarian Inst. of Cardiology" in names
    for name in names:
        expected = slug(name)
        assert node_name_for(name) == expected
        assert registry_scope(name) == expected
        assert normalize_scope(name) == expected
        assert scope_name(name) == expected
