"""Differential-privacy accounting for federated rounds, and why there is no SecAgg+ here.

Two mechanisms, selected by ``dp`` in the run config:

``central`` (client-level DP, trusted server)
    DP-FedAvg (:mod:`feddx.federated.central_dp`): each client's update is clipped to
    ``dp-clipping-norm`` C, and the round releases ``(sum of clipped updates + N(0, (z C)^2))
    / n`` with ``n`` the clients sampled for the round, fixed in advance. Adding or removing
    one client moves that sum by at most C, so the release has sensitivity ``C / n`` and noise
    ``z C / n``: one Gaussian release with noise multiplier ``z`` (``dp-noise-multiplier``),
    however many of the ``n`` answered (fewer replies shorten the step; they never weaken the
    noise relative to the sensitivity). A server optimizer (FedAdam, FedYogi, FedAdagrad,
    FedAvgM) acts on the released mean only: post-processing, same epsilon. Strategies that
    are not a mean (median, trimmed mean, Krum) are refused with central DP. Flower's own
    accountant hook needs the optional ``dp-accounting`` package; we account ourselves.
``local`` (example-level DP on every client, untrusted server)
    DP-SGD (Opacus, through :func:`feddx.train.trainer.train_adapter`): per-example gradients
    clipped to ``dp-clipping-norm``, noise ``dp-noise-multiplier``, Poisson sampling at rate
    ``batch_size / n``. Each client composes its own rounds (:class:`RdpLedger`, persisted on its
    disk) and reports the epsilon spent in the round and in total; the server records the
    largest total over clients.

Both use the RDP analysis of the sampled Gaussian mechanism (Mironov et al.; ``opacus``'
implementation), converted to (epsilon, delta) at ``dp-delta``.

Secure aggregation (SecAgg+)
    Not available for this app, for reasons in Flower 1.42 itself: ``SecAggPlusWorkflow``
    (``flwr.server.workflow``) drives the *legacy* ``flwr.server.strategy`` API
    (``configure_fit``/``aggregate_fit`` on ``FitIns``/``FitRes`` through a ``LegacyContext``),
    and its client half ``secaggplus_mod`` lives in ``flwr.client.mod`` and converts replies to
    ``FitRes``; neither accepts a message-API ``flwr.serverapp.strategy`` strategy, and 1.42's
    ``flwr.clientapp.mod`` has no SecAgg mod. Using it would mean leaving the Message API and
    its strategies. Even there it could only serve plain weighted averaging: masked vectors
    reveal only their sum, so the robust aggregators (FedMedian, FedTrimmedAvg, Krum) and our
    per-update validation (:mod:`feddx.federated.guard`) cannot run on them, and lossy update
    compression would have to happen before masking. What protects updates here instead:
    only adapters leave a node, TLS on every link (deployment), and central or local DP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feddx.io import atomic_write_text

_ORDERS: list[float] = [1 + x / 10.0 for x in range(1, 100)] + [float(x) for x in range(12, 64)]


@dataclass(frozen=True)
class GaussianRelease:
    """``steps`` compositions of a sampled Gaussian mechanism: sampling rate ``q`` and noise
    multiplier ``z`` (noise standard deviation over sensitivity)."""

    q: float
    z: float
    steps: int = 1


@dataclass
class RdpLedger:
    """Releases composed under Renyi DP; ``epsilon(delta)`` is the total spent so far."""

    releases: list[GaussianRelease] = field(default_factory=list)

    def add(self, release: GaussianRelease) -> None:
        if not (0 < release.q <= 1 and release.z > 0 and release.steps >= 0):
            raise ValueError(f"invalid Gaussian release {release}")
        self.releases.append(release)

    def epsilon(self, delta: float) -> float:
        """Total epsilon at ``delta`` (0 before any release)."""
        return epsilon_of(self.releases, delta)

    def to_dict(self) -> list[dict[str, float]]:
        return [{"q": r.q, "z": r.z, "steps": r.steps} for r in self.releases]

    @classmethod
    def from_dict(cls, data: list[dict[str, Any]]) -> RdpLedger:
        return cls([GaussianRelease(float(d["q"]), float(d["z"]), int(d["steps"])) for d in data])


def epsilon_of(releases: list[GaussianRelease], delta: float) -> float:
    """Epsilon at ``delta`` of the composition of ``releases`` (RDP, opacus' analysis)."""
    import warnings

    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    if not releases or all(r.steps == 0 for r in releases):
        return 0.0
    rdp = np.zeros(len(_ORDERS))
    for r in releases:
        rdp = rdp + np.asarray(
            compute_rdp(q=r.q, noise_multiplier=r.z, steps=r.steps, orders=_ORDERS)
        )
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # "optimal order is the largest alpha": still an upper bound
        eps, _ = get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def central_round_release(noise_multiplier: float) -> GaussianRelease:
    """The release of one central-DP round: the noised clipped mean over a fixed denominator,
    whose noise multiplier is ``dp-noise-multiplier`` itself (see the module docstring), with
    no sampling amplification claimed (``q = 1``)."""
    if noise_multiplier <= 0:
        raise ValueError(f"the noise multiplier must be positive, got {noise_multiplier}")
    return GaussianRelease(q=1.0, z=noise_multiplier, steps=1)


class ClientPrivacyLedger:
    """A client's DP-SGD rounds, on its own disk: ``round -> release``. Keyed by round so a
    replayed round (after a server restart) replaces its entry instead of counting twice."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[int, GaussianRelease]:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {
            int(k): GaussianRelease(float(v["q"]), float(v["z"]), int(v["steps"]))
            for k, v in raw.items()
        }

    def record(self, server_round: int, release: GaussianRelease) -> None:
        entries = self._read()
        entries[server_round] = release
        data = {str(k): {"q": r.q, "z": r.z, "steps": r.steps} for k, r in sorted(entries.items())}
        atomic_write_text(self.path, json.dumps(data))

    def epsilon_through(self, server_round: int, delta: float) -> float:
        """Total epsilon of every round up to and including ``server_round``."""
        return epsilon_of([r for k, r in self._read().items() if k <= server_round], delta)


def dp_sgd_release(
    *, batch_size: int, num_examples: int, noise_multiplier: float, steps: int
) -> GaussianRelease:
    """One client's local round of DP-SGD with Poisson sampling at ``batch_size / n``."""
    q = min(1.0, batch_size / max(1, num_examples))
    return GaussianRelease(q=q, z=noise_multiplier, steps=steps)
