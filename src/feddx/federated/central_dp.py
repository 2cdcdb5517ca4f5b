"""Central DP as DP-FedAvg: the Gaussian mechanism on the clipped mean, and a server optimizer
that only post-processes it.

The released quantity of a round is

    mean~ = (sum_i clip_C(w_i - w) + N(0, (z C)^2 I)) / n

where ``w`` is the global adapter, ``w_i`` client ``i``'s reply, ``clip_C`` scales an update
down to L2 norm ``C`` (``dp-clipping-norm``), ``z`` is ``dp-noise-multiplier`` and ``n`` the
number of clients sampled for the round, fixed before any reply arrives (McMahan et al. 2018,
"Learning differentially private recurrent language models": the fixed-denominator estimator).
Adding or removing one client's update moves the sum by at most ``C``, so ``mean~`` has
sensitivity ``C / n`` and noise ``z C / n``: one Gaussian release with noise multiplier ``z``
whatever the number of replies (:func:`feddx.federated.privacy.central_round_release`). When
fewer than ``n`` clients answer, the step is shorter (``m / n`` of the mean), never less
private. Dividing by the number of replies instead would make the denominator depend on the
neighbouring dataset and double the sensitivity (``2C/m``).

The wrapped strategy then receives ``w + mean~`` as a single reply. FedAvg and FedProx return
it as it is; FedAdam, FedYogi, FedAdagrad and FedAvgM apply their server optimizer to it. That
is post-processing of a private release, so the round's epsilon is unchanged. (Flower's
``DifferentialPrivacyServerSideFixedClipping`` instead adds its noise to the *output* of the
inner strategy: after a server optimizer, whose adaptive step has no bounded sensitivity, and
with the noise calibrated for a mean over the replies.) Median, trimmed mean and Krum are not a
mean of the updates, and are refused with central DP (:class:`~feddx.federated.config.
FederatedConfig`).

The clients' training metrics (loss, time) are averaged as they come, outside the mechanism:
they are not part of the DP guarantee, which covers the adapter weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from feddx.federated.codec import ARRAYS_KEY, METRICS_KEY, from_array_record, to_array_record


def clip_update(update: dict[str, np.ndarray], clipping_norm: float) -> dict[str, np.ndarray]:
    """``update`` scaled down to L2 norm ``clipping_norm`` (over every tensor) if it is longer."""
    norm = float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in update.values())))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in update.items()}


def clipped_sum_over_n(
    reference: dict[str, np.ndarray],
    replies: Iterable[dict[str, np.ndarray]],
    clipping_norm: float,
    num_sampled: int,
) -> dict[str, np.ndarray]:
    """The mechanism's input before noise: ``sum_i clip_C(w_i - w) / n`` (module docstring)."""
    total = {k: np.zeros(v.shape, dtype=np.float64) for k, v in reference.items()}
    for arrays in replies:
        clipped = clip_update({k: arrays[k] - reference[k] for k in reference}, clipping_norm)
        for k in total:
            total[k] += clipped[k]
    return {k: v / num_sampled for k, v in total.items()}


def gaussian_noise(std: float, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, std^2) per coordinate, from numpy's global generator (as Flower's DP wrappers)."""
    return np.random.normal(0.0, std, shape)


class ClippedMeanDP(Strategy):  # type: ignore[misc]  # flwr is untyped for mypy
    """Clip each reply's update, release the noised fixed-denominator mean, and hand it to
    ``inner`` as a single reply (see the module docstring).

    Parameters
    ----------
    inner
        A FedAvg-family strategy (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM) that
        post-processes the release.
    noise_multiplier, clipping_norm
        ``z`` and ``C``: the noise standard deviation is ``z * C / num_sampled``.
    num_sampled
        ``n``, the clients sampled per round (the denominator, fixed in advance).
    """

    def __init__(
        self, inner: FedAvg, *, noise_multiplier: float, clipping_norm: float, num_sampled: int
    ) -> None:
        if noise_multiplier <= 0 or clipping_norm <= 0 or num_sampled < 1:
            raise ValueError("central DP needs a positive noise multiplier, clip and sample size")
        self.inner = inner
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.num_sampled = num_sampled
        self.current_arrays: ArrayRecord | None = None

    @property
    def noise_std(self) -> float:
        """Per-coordinate standard deviation of the noise on the mean: ``z C / n``."""
        return self.noise_multiplier * self.clipping_norm / self.num_sampled

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)  # type: ignore[no-any-return]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)  # type: ignore[no-any-return]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)  # type: ignore[no-any-return]

    def summary(self) -> None:
        self.inner.summary()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.current_arrays is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        valid = [m for m in replies if not m.has_error()]
        if not valid:
            return None, None
        reference = from_array_record(self.current_arrays)
        mean = clipped_sum_over_n(
            reference,
            (from_array_record(m.content[ARRAYS_KEY]) for m in valid),
            self.clipping_norm,
            self.num_sampled,
        )
        released = {
            k: (reference[k] + mean[k] + gaussian_noise(self.noise_std, mean[k].shape)).astype(
                reference[k].dtype
            )
            for k in reference
        }
        key = self.inner.weighted_by_key
        averaged = self.inner.train_metrics_aggr_fn([m.content for m in valid], key)
        metrics = MetricRecord({**dict(averaged), key: 1.0})  # the one reply's weight
        content = RecordDict({ARRAYS_KEY: to_array_record(released), METRICS_KEY: metrics})
        return self.inner.aggregate_train(  # type: ignore[no-any-return]
            server_round, [Message(content=content, metadata=valid[0].metadata)]
        )
