"""Privacy accounting: RDP composition as Opacus computes it, central rounds charged at their
effective noise, and a client's ledger that a replayed round does not count twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddx.federated.privacy import (
    ClientPrivacyLedger,
    GaussianRelease,
    RdpLedger,
    central_round_release,
    dp_sgd_release,
    epsilon_of,
)


def test_epsilon_matches_opacus_accountant_for_dp_sgd() -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(3):  # three rounds of 20 steps each
        acc.history.append((1.1, 0.05, 20))
    ours = epsilon_of([GaussianRelease(0.05, 1.1, 20)] * 3, 1e-5)
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    ledger = RdpLedger()
    values = []
    for _ in range(4):
        ledger.add(GaussianRelease(q=1.0, z=2.0))
        values.append(ledger.epsilon(1e-5))
    assert values == sorted(values) and values[0] > 0
    noisier = epsilon_of([GaussianRelease(1.0, 4.0)] * 4, 1e-5)
    assert noisier < values[-1]
    assert RdpLedger.from_dict(ledger.to_dict()).epsilon(1e-5) == values[-1]


def test_central_round_is_charged_at_the_configured_noise_multiplier() -> None:
    # the fixed-denominator mean has sensitivity C/n and noise zC/n however many clients
    # answered (tests/federated/test_central_dp.py measures it): every round is charged z
    release = central_round_release(1.0)
    assert (release.q, release.z, release.steps) == (1.0, 1.0, 1)
    assert epsilon_of([central_round_release(0.5)], 1e-5) > epsilon_of([release], 1e-5)
    with pytest.raises(ValueError, match="positive"):
        central_round_release(0.0)


def test_client_ledger_counts_a_replayed_round_once(tmp_path: Path) -> None:
    ledger = ClientPrivacyLedger(tmp_path / "privacy.json")
    r = dp_sgd_release(batch_size=8, num_examples=160, noise_multiplier=1.0, steps=20)
    assert r.q == pytest.approx(0.05)
    ledger.record(1, r)
    ledger.record(2, r)
    after_two = ledger.epsilon_through(2, 1e-5)
    ledger.record(2, r)  # the server restarted and replayed round 2
    assert ledger.epsilon_through(2, 1e-5) == after_two
    assert ledger.epsilon_through(1, 1e-5) < after_two
    assert ClientPrivacyLedger(tmp_path / "none.json").epsilon_through(5, 1e-5) == 0.0
