"""The resolver: the most specific usable lineage for (institution, region), and for every
adapter it passes over (missing, corrupt, truncated, other base model, unusable parent) a
logged warning and a fallback line naming it and why."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from feddx.personalize import registry as registry_mod
from feddx.personalize.registry import AdapterEntry, AdapterRegistry, ResolvedChain

from .registry_helpers import BASE, DAMAGE, age_files, flip_byte

CHAIN = ["global/v1", "regional/europe/v1", "institutional/cleveland/v1"]


def resolve(
    registry: AdapterRegistry, institution: str | None = "cleveland", region: str | None = "europe"
) -> ResolvedChain:
    return registry.resolve(institution=institution, region=region, base_fingerprint=BASE)


def test_the_most_specific_lineage_answers(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry]
) -> None:
    chain = resolve(registry)
    assert chain.ids() == CHAIN and chain.fallbacks == ()
    assert chain.answering == hierarchy["institutional"]
    assert chain.entries == (hierarchy["global"], hierarchy["regional"], hierarchy["institutional"])
    # The institution's registered region is used when the request names none.
    assert resolve(registry, region=None).ids() == CHAIN
    # An institution without its own adapter gets its region's; no region: the global one.
    assert resolve(registry, institution="zurich").ids() == CHAIN[:2]
    assert resolve(registry, institution="zurich").unknown == (
        "institution zurich is unknown to this registry",
    )  # said, not silently answered for (issue 26)
    assert resolve(registry, institution="zurich", region=None).ids() == CHAIN[:1]
    assert resolve(registry, institution=None, region=None).ids() == CHAIN[:1]
    assert resolve(registry, institution="Cleveland", region="Europe").ids() == CHAIN
    assert chain.to_dict() == {
        "chain": CHAIN,
        "answering": "institutional/cleveland/v1",
        "fallbacks": [],
        "unknown": [],
        "case_index": None,
    }


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_institutional_adapter_falls_back_to_its_parent_and_says_so(
    registry: AdapterRegistry,
    hierarchy: dict[str, AdapterEntry],
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    for entry in hierarchy.values():
        age_files(entry)
    assert resolve(registry).ids() == CHAIN  # verified and cached as intact
    harm, reason = DAMAGE[damage]
    harm(hierarchy["institutional"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="feddx.personalize.hierarchy"):
        chain = resolve(registry)
    assert chain.ids() == CHAIN[:2]
    assert chain.answering == hierarchy["regional"]
    assert len(chain.fallbacks) == 1
    assert chain.fallbacks[0].startswith(f"institutional/cleveland/v1 skipped: {reason}")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"adapter institutional/cleveland/v1 skipped: {reason}")
    assert record.getMessage().endswith("; falling back to regional/europe/v1")
    # Resolving per request lists the skip every time but does not repeat the warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="feddx.personalize.hierarchy"):
        assert resolve(registry).fallbacks == chain.fallbacks
    assert caplog.records == []


def test_an_adapter_for_another_base_model_is_skipped_for_an_older_version(
    registry: AdapterRegistry,
    hierarchy: dict[str, AdapterEntry],
    make_adapter: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry.register(
        make_adapter("i2", base="other-model:9"),
        level="institutional",
        institution="cleveland",
        region="europe",
    )
    with caplog.at_level(logging.WARNING, logger="feddx.personalize.hierarchy"):
        chain = resolve(registry)
    assert chain.ids() == CHAIN  # the newest usable version of the level answers
    assert chain.fallbacks == (
        "institutional/cleveland/v2 skipped: other base model (trained for 'other-model:9', "
        "not 'tiny-llama:test')",
    )
    assert "falling back to institutional/cleveland/v1" in caplog.text
    # For the other base model, v2 answers on its own (it has no parent).
    other = registry.resolve(institution="cleveland", region=None, base_fingerprint="other-model:9")
    assert other.ids() == ["institutional/cleveland/v2"]
    assert other.fallbacks == ()


def test_a_corrupt_parent_makes_its_children_fall_back_too(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry]
) -> None:
    flip_byte(hierarchy["regional"])
    chain = resolve(registry)
    assert chain.ids() == ["global/v1"]
    assert chain.fallbacks[0].startswith(
        "institutional/cleveland/v1 skipped: unusable parent (regional/europe/v1: corrupt (content hash mismatch"
    )
    assert chain.fallbacks[1].startswith("regional/europe/v1 skipped: corrupt (content hash")
    assert len(chain.fallbacks) == 2


def test_a_deleted_parent_row_or_folder_makes_its_children_fall_back(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry]
) -> None:
    shutil.rmtree(hierarchy["global"].path)
    chain = resolve(registry)
    assert chain.ids() == [] and chain.answering is None
    assert chain.fallbacks == (
        "institutional/cleveland/v1 skipped: unusable parent (global/v1: missing (its folder "
        "adapters/global/v1 is gone))",
        "regional/europe/v1 skipped: unusable parent (global/v1: missing (its folder "
        "adapters/global/v1 is gone))",
        "global/v1 skipped: missing (its folder adapters/global/v1 is gone)",
    )
    registry.delete("global/v1")
    chain = resolve(registry)
    assert chain.answering is None
    assert chain.fallbacks == (
        "institutional/cleveland/v1 skipped: missing parent (global/v1 is not in the registry)",
        "regional/europe/v1 skipped: missing parent (global/v1 is not in the registry)",
    )


def test_a_new_version_is_returned_by_the_next_resolve(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry], make_adapter: Callable[..., Path]
) -> None:
    generation = registry.generation()
    assert resolve(registry).answering == hierarchy["institutional"]
    v2 = registry.register(
        make_adapter("i2", seed=7),
        level="institutional",
        institution="cleveland",
        parent_id="regional/europe/v1",
        training_round=2,
    )
    assert registry.generation() != generation
    chain = resolve(registry)
    assert chain.answering == v2 and chain.ids() == [*CHAIN[:2], "institutional/cleveland/v2"]
    # Deleting it brings the previous version back.
    registry.delete(v2.adapter_id)
    assert resolve(registry).ids() == CHAIN


def test_a_request_from_another_region_does_not_get_the_institutions_adapter(
    registry: AdapterRegistry, hierarchy: dict[str, AdapterEntry], make_adapter: Callable[..., Path]
) -> None:
    registry.register(make_adapter("asia"), level="regional", region="asia", parent_id="global/v1")
    chain = resolve(registry, region="asia")
    assert chain.ids() == ["global/v1", "regional/asia/v1"]
    assert chain.fallbacks == (
        "institutional/cleveland/v1 skipped: other region (registered under europe, not asia)",
    )


def test_resolving_per_request_rehashes_nothing_unchanged(
    registry: AdapterRegistry,
    hierarchy: dict[str, AdapterEntry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for entry in hierarchy.values():
        age_files(entry)
    hashed: list[str] = []
    real = registry_mod.content_sha256

    def counting(directory: Path, names: object) -> str:
        hashed.append(Path(directory).relative_to(registry.root).as_posix())
        return real(directory, names)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_mod, "content_sha256", counting)
    for _ in range(20):
        assert resolve(registry).ids() == CHAIN
    assert sorted(hashed) == [
        "adapters/global/v1",
        "adapters/institutional/cleveland/v1",
        "adapters/regional/europe/v1",
    ]
    # A file changed on disk is seen by the next resolve.
    flip_byte(hierarchy["global"])
    chain = resolve(registry)
    assert chain.answering is None and len(chain.fallbacks) == 3
    assert hashed[3:] == ["adapters/global/v1"]
