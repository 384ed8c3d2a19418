"""The privacy accountant of ``tessera privacy``: DP-FedAvg with Poisson
sampling of clients (each round samples clients with probability q, clips
their updates to norm C and adds Gaussian noise of standard deviation z*C
to the sum), accounted with Rényi DP; the same functions of the
``tessera-dp`` crate the command calls, which match Google's dp-accounting.
"""

from __future__ import annotations

from typing import NamedTuple

from tessera import _native

__all__ = ["Epsilon", "epsilon", "noise", "rounds"]


class Epsilon(NamedTuple):
    """Epsilon spent, and the Rényi order that attains it."""

    #: The epsilon of the (epsilon, delta) guarantee.
    epsilon: float
    #: The optimal Rényi order.
    order: float


def epsilon(*, noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> Epsilon:
    """Epsilon spent by ``rounds`` rounds at noise multiplier z and sampling
    rate q (``tessera privacy epsilon``).

    Raises:
        InvalidInput: z <= 0, q outside (0, 1], delta outside (0, 1), rounds 0.
    """
    eps, order = _native.epsilon(
        noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, rounds=rounds, delta=delta
    )
    return Epsilon(eps, order)


def noise(*, target_epsilon: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier that keeps ``rounds`` rounds within
    ``target_epsilon`` (``tessera privacy noise``)."""
    return _native.noise(
        target_epsilon=target_epsilon, sampling_rate=sampling_rate, rounds=rounds, delta=delta
    )


def rounds(*, noise_multiplier: float, sampling_rate: float, target_epsilon: float, delta: float) -> int:
    """How many rounds fit within ``target_epsilon`` (``tessera privacy
    rounds``)."""
    return _native.rounds(
        noise_multiplier=noise_multiplier,
        sampling_rate=sampling_rate,
        target_epsilon=target_epsilon,
        delta=delta,
    )
