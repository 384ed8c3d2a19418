"""The privacy accountant of ``tessera privacy``, accounted with Rényi DP;
the same functions of the ``tessera-dp`` crate the command calls, which
match Google's dp-accounting.

Two mechanisms, chosen with ``mechanism=`` as the command's ``--mechanism``:

- ``"dp-fedavg"`` (the default): DP-FedAvg with Poisson sampling of clients
  (each round samples clients with probability q, clips their updates to
  norm C and adds Gaussian noise of standard deviation z*C to the sum);
  takes ``sampling_rate`` and ``rounds``.
- ``"dp-ftrl"``: DP-FTRL with tree aggregation (Kairouz et al. 2021): the
  server noises every node of a binary tree over the rounds of an epoch,
  restarts the tree every ``steps_per_epoch`` rounds and takes each client
  at most once per tree; takes ``steps_per_epoch`` and ``epochs``, and
  refuses ``sampling_rate`` and ``rounds`` (no sampling is claimed). Its
  epsilon holds against consumers of the published model, not against
  the server, which adds the noise.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from tessera import _native
from tessera.errors import InvalidInput

__all__ = ["Epsilon", "epsilon", "noise", "rounds"]


class Epsilon(NamedTuple):
    """Epsilon spent, and the Rényi order that attains it."""

    #: The epsilon of the (epsilon, delta) guarantee.
    epsilon: float
    #: The optimal Rényi order.
    order: float


def _fedavg(
    mechanism: str,
    sampling_rate: Optional[float],
    rounds: Optional[int],
    steps_per_epoch: Optional[int],
    epochs: Optional[int],
    need_rounds: bool,
) -> bool:
    """Checks the arguments against ``mechanism`` as the command checks its
    flags; True for dp-fedavg, False for dp-ftrl."""
    if mechanism == "dp-fedavg":
        if steps_per_epoch is not None or epochs is not None:
            raise InvalidInput(
                "steps_per_epoch and epochs are for mechanism='dp-ftrl'; "
                "dp-fedavg (the default) takes sampling_rate and rounds"
            )
        if sampling_rate is None or (need_rounds and rounds is None):
            raise InvalidInput("mechanism='dp-fedavg' (the default) needs sampling_rate and rounds")
        return True
    if mechanism == "dp-ftrl":
        if sampling_rate is not None or rounds is not None:
            raise InvalidInput(
                "sampling_rate and rounds are not used by mechanism='dp-ftrl': it samples "
                "nothing (each client at most once per tree); give steps_per_epoch and epochs"
            )
        if steps_per_epoch is None or (need_rounds and epochs is None):
            raise InvalidInput("mechanism='dp-ftrl' needs steps_per_epoch and epochs")
        return False
    raise InvalidInput(f"unknown mechanism {mechanism!r}: use 'dp-fedavg' or 'dp-ftrl'")


def epsilon(
    *,
    noise_multiplier: float,
    delta: float,
    sampling_rate: Optional[float] = None,
    rounds: Optional[int] = None,
    mechanism: str = "dp-fedavg",
    steps_per_epoch: Optional[int] = None,
    epochs: Optional[int] = None,
) -> Epsilon:
    """Epsilon spent by ``rounds`` rounds at noise multiplier z and sampling
    rate q, or with ``mechanism="dp-ftrl"`` by ``epochs`` trees of
    ``steps_per_epoch`` steps (``tessera privacy epsilon``).

    Raises:
        InvalidInput: z <= 0, q outside (0, 1], delta outside (0, 1), zero
            rounds, steps or epochs, an argument the mechanism does not use.
    """
    result: Tuple[float, float]
    if _fedavg(mechanism, sampling_rate, rounds, steps_per_epoch, epochs, True):
        result = _native.epsilon(
            noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, rounds=rounds, delta=delta
        )
    else:
        result = _native.tree_epsilon(
            noise_multiplier=noise_multiplier, steps_per_epoch=steps_per_epoch, epochs=epochs, delta=delta
        )
    return Epsilon(*result)


def noise(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: Optional[float] = None,
    rounds: Optional[int] = None,
    mechanism: str = "dp-fedavg",
    steps_per_epoch: Optional[int] = None,
    epochs: Optional[int] = None,
) -> float:
    """The smallest noise multiplier that keeps ``rounds`` rounds (or, for
    dp-ftrl, ``epochs`` trees) within ``target_epsilon`` (``tessera privacy
    noise``)."""
    if _fedavg(mechanism, sampling_rate, rounds, steps_per_epoch, epochs, True):
        return _native.noise(
            target_epsilon=target_epsilon, sampling_rate=sampling_rate, rounds=rounds, delta=delta
        )
    return _native.tree_noise(
        target_epsilon=target_epsilon, steps_per_epoch=steps_per_epoch, epochs=epochs, delta=delta
    )


def rounds(
    *,
    noise_multiplier: float,
    target_epsilon: float,
    delta: float,
    sampling_rate: Optional[float] = None,
    mechanism: str = "dp-fedavg",
    steps_per_epoch: Optional[int] = None,
) -> int:
    """How many rounds fit within ``target_epsilon`` (``tessera privacy
    rounds``); for dp-ftrl the last tree may be partial."""
    if _fedavg(mechanism, sampling_rate, None, steps_per_epoch, None, False):
        return _native.rounds(
            noise_multiplier=noise_multiplier,
            sampling_rate=sampling_rate,
            target_epsilon=target_epsilon,
            delta=delta,
        )
    return _native.tree_rounds(
        noise_multiplier=noise_multiplier,
        steps_per_epoch=steps_per_epoch,
        target_epsilon=target_epsilon,
        delta=delta,
    )
