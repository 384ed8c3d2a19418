"""The client: a thin layer over the Rust SDK's ``tessera_client::Client``."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from tessera import _native
from tessera.errors import InvalidInput

__all__ = ["Client", "Model", "Policy", "RoundOutcome", "PathOrPem"]

#: A file path, or the file's contents as bytes.
PathOrPem = Union[str, "os.PathLike[str]", bytes]


@dataclass(frozen=True)
class Policy:
    """The rounds a client accepts; a round below it is refused with
    :class:`tessera.PolicyRefused` before any key leaves the client.

    The defaults are the Rust SDK's (``tessera_client::Policy``): they
    accept a ``tessera serve`` round at its defaults and refuse thresholds
    a lying server could beat with 5% of the clients.
    """

    #: The weakest threat model to take part in: ``"semi-honest"``,
    #: ``"semi-malicious"`` or ``"malicious-server"``; ``None``: semi-honest,
    #: or malicious-server for a client with an identity.
    threat_model: Optional[str] = None
    #: The fraction of every round's clients assumed to collude with the
    #: server, whatever the server states.
    assume_corrupt: float = 0.05
    #: The fewest clients a round may have (at least 3).
    min_clients: int = 3
    #: The most clients a round may have (bounds what the client allocates).
    max_clients: int = 100_000
    #: The fewest inputs a published sum containing this client's may hold.
    min_survivors: int = 3
    #: Take part only in rounds with distributed DP (client-added noise,
    #: which holds against the server).
    require_dp: bool = False
    #: With ``require_dp``: the smallest per-client noise multiplier.
    min_noise_multiplier: float = 0.0


@dataclass(frozen=True)
class Model:
    """A model the server published.

    ``tensors`` maps each parameter's name to a float32 array of its shape,
    in the server's order, which is the order of the flat update vector
    (tensors in name order, each row-major).
    """

    #: The model's version; each completed round publishes the next.
    version: int
    #: The round that produced it (0 for the initial model).
    round: int
    #: Differential privacy spent up to and including this version (0
    #: without DP).
    epsilon: float
    #: The delta of ``epsilon``.
    delta: float
    #: The parameters by name, in the flat order.
    tensors: Dict[str, np.ndarray]
    #: Against whom ``epsilon`` holds, as the server's privacy ledger says:
    #: ``"server"`` only when every round up to this version ran
    #: distributed DP, ``"model-consumers"`` when any ran central DP (the
    #: server saw that round's un-noised sum), ``None`` without DP.
    epsilon_against: Optional[str] = None
    #: FedProx's mu the server runs with (its ``proximal_mu`` setting): train
    #: locally with ``(mu / 2) * ||w - w_global||**2`` added to the loss,
    #: ``w_global`` this model's tensors (summed over every tensor), so the
    #: update the round averages is the one the server asked for. 0 means
    #: plain FedAvg: add nothing.
    proximal_mu: float = 0.0

    @property
    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Each tensor's shape, in the flat order."""
        return {name: t.shape for name, t in self.tensors.items()}

    @property
    def dim(self) -> int:
        """The number of parameters: the length of a flat update."""
        return sum(int(t.size) for t in self.tensors.values())

    def flatten(self) -> np.ndarray:
        """All values in one float32 vector, in the flat order."""
        if not self.tensors:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([t.reshape(-1) for t in self.tensors.values()])


class Evaluation(NamedTuple):
    """A client's evaluation, on its own held-out examples, of the model
    version it trained from: what ``participate(..., evaluation=...)`` sends
    to a server that runs federated evaluation (``federated_eval``). A
    plain ``(correct, total, loss_sum)`` tuple does as well."""

    #: Examples classified correctly.
    correct: int
    #: Examples evaluated.
    total: int
    #: The sum (not the mean) of the per-example losses.
    loss_sum: float


@dataclass(frozen=True)
class RoundOutcome:
    """What a client learns from a round it took part in."""

    #: The round.
    round_id: int
    #: This client's id in the round.
    client_id: int
    #: How many clients' inputs are in the aggregate.
    survivors: int
    #: The model version the server published from this round.
    model_version: int
    #: Whether the update was scaled down to the round's clip norm.
    clipped: bool
    #: The update's L2 norm before clipping.
    update_norm: float
    #: Bytes of gRPC frames this client sent in the round.
    bytes_sent: int
    #: Bytes of gRPC frames it received.
    bytes_received: int
    #: ``(client_id, reason, detail)`` of clients the server evicted.
    evicted: List[Tuple[int, str, str]]
    #: The L2 norm the round clipped updates to (it changes from round to
    #: round under the server's adaptive clipping).
    clip_norm: float
    #: Epsilon spent so far, as the published model records it (0 without
    #: DP), at ``delta``.
    epsilon: float
    #: The delta of ``epsilon``.
    delta: float
    #: Against whom ``epsilon`` holds, as the server's privacy ledger says:
    #: ``"server"`` when every round so far ran distributed DP (every client
    #: added noise before masking, so the server never saw an un-noised
    #: sum), ``"model-consumers"`` when any round ran central DP (the server
    #: added that noise: it holds against those who get the published
    #: model, not against the server), ``None`` without DP.
    epsilon_against: Optional[str]
    #: The model this round published (with ``version == model_version``).
    model: Model = field(repr=False)
    #: FedProx's mu this round ran with, from its start message: local
    #: training adds ``(mu / 2) * ||w - w_global||**2`` to the loss,
    #: ``w_global`` the model trained from; 0 means plain FedAvg. The same
    #: as :attr:`Model.proximal_mu` unless the server was restarted with
    #: another mu between the model's download and the round (then train the
    #: next update with this one).
    proximal_mu: float = 0.0


def _read(value: Optional[PathOrPem], what: str) -> Optional[bytes]:
    """A PEM or key given as bytes, or read from its path."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        with open(os.fspath(value), "rb") as f:
            return f.read()
    except OSError as e:
        raise InvalidInput(f"{what}: cannot read {os.fspath(value)}: {e.strerror}") from None


class Client:
    """A client of one aggregation server: fetches the model and takes
    part in secure aggregation rounds with an update.

    A thin binding of the Rust SDK (its own tokio runtime; the GIL is
    released while a call waits, so clients in several Python threads can
    take part in one round). One client serves any number of calls, from
    any thread.

    Args:
        url: ``https://host:port``, or ``http://host:port`` for a local
            server started with ``insecure_dev=True``.
        token: the per-client token the server checks
            (``Server.mint_token`` or ``tessera token``). Never logged.
        ca_cert: the CA certificate (path or PEM bytes) that signed the
            server's certificate; required for ``https`` URLs.
        client_cert, client_key: a client certificate and key (paths or
            PEM bytes) for servers that authenticate clients by mutual TLS.
        identity: this client's Ed25519 identity key file (path or bytes,
            from ``tessera keygen``) for malicious-server rounds; needs
            ``trusted_identities``.
        trusted_identities: the operator's allow-list of identities (path
            or bytes, ``NAME ed25519:HEX`` lines).
        insecure_loopback: allow a token over ``http://`` to a loopback
            server (a local experiment).
        policy: the rounds this client accepts (default :class:`Policy`).
        round_timeout: seconds a ``participate`` call may take, lobby
            included, restarted by each keep-alive the server sends while
            the client waits in its lobby (default 600).

    Raises:
        InvalidInput: a bad URL, TLS file, token or policy.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str] = None,
        ca_cert: Optional[PathOrPem] = None,
        client_cert: Optional[PathOrPem] = None,
        client_key: Optional[PathOrPem] = None,
        identity: Optional[PathOrPem] = None,
        trusted_identities: Optional[PathOrPem] = None,
        insecure_loopback: bool = False,
        policy: Optional[Policy] = None,
        round_timeout: Optional[float] = None,
    ) -> None:
        identity_text = _read(identity, "identity")
        trusted_text = _read(trusted_identities, "trusted_identities")
        self._native = _native.Client(
            url,
            token,
            _read(ca_cert, "ca_cert"),
            _read(client_cert, "client_cert"),
            _read(client_key, "client_key"),
            None if identity_text is None else identity_text.decode("utf-8", "replace"),
            None if trusted_text is None else trusted_text.decode("utf-8", "replace"),
            insecure_loopback,
            policy,
            round_timeout,
        )
        self._layout: Optional[List[Tuple[str, Tuple[int, ...]]]] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"tessera.Client({self.url!r})"

    @property
    def url(self) -> str:
        """The server URL."""
        return self._native.url

    def latest_model(self) -> Model:
        """Downloads the latest published model.

        Raises:
            ServerRefused: nothing is published yet.
            ConnectionFailed, AuthRefused, ProtocolViolation.
        """
        return self.model(0)

    def model(self, version: int) -> Model:
        """Downloads published model ``version`` (0: the latest)."""
        raw = self._native.model(version)
        version_, round_, epsilon, delta, against, tensors, proximal_mu = raw
        model = Model(
            version=version_,
            round=round_,
            epsilon=epsilon,
            delta=delta,
            tensors={name: values.reshape(shape) for name, shape, values in tensors},
            epsilon_against=against if epsilon > 0.0 else None,
            proximal_mu=proximal_mu,
        )
        with self._lock:
            self._layout = [(n, t.shape) for n, t in model.tensors.items()]
        return model

    def participate(
        self,
        update: Union[Mapping[str, "np.typing.ArrayLike"], np.ndarray],
        num_examples: Optional[int] = None,
        evaluation: Optional[Tuple[int, int, float]] = None,
    ) -> RoundOutcome:
        """Joins the server's next round with ``update`` and runs it to the
        end through secure aggregation (with the round's DP noise where
        configured); returns the outcome, with the model the round published.

        ``update`` is either a mapping from the model's tensor names to
        float arrays of their shapes (every tensor, no other name; floats
        of any precision are converted to float32), or one flat float32
        array in the flat order: the tensors in the server's order (name
        order), each row-major, as :meth:`Model.flatten` lays them out.
        A mapping needs the model's names and shapes: the client fetches the
        latest model for them if it has not seen one.

        The update is clipped to the round's L2 norm bound by the SDK
        (``outcome.clipped`` says whether it was).

        ``num_examples``: the number of examples the update was trained on,
        required by a server that weights updates by example count
        (``weighting``; it counts at most its public ``max_examples``).
        ``evaluation``: ``(correct, total, loss_sum)`` (or an
        :class:`Evaluation`) of the model version this client trained from,
        on its own held-out examples, for a server that runs federated
        evaluation (``federated_eval``). Both travel inside the secure sum,
        with the update's DP noise; a server that does not ask for one
        ignores it.

        Raises:
            InvalidInput: a missing, extra or misshapen tensor, a wrong
                length, a NaN or infinity (nothing is sent); no
                ``num_examples`` for a server that weights; a negative count.
            PolicyRefused: the round breaks the client's policy.
            RoundAborted: the server aborted the round (``.reason``).
            RoundFailed, ConnectionFailed, AuthRefused, ServerRefused,
            ProtocolViolation: as their names say.
        """
        return self._outcome(
            self._native.participate(
                self._flat(update), *_extras(num_examples, evaluation)
            )
        )

    def participate_or_drop(
        self,
        update: Union[Mapping[str, "np.typing.ArrayLike"], np.ndarray],
        drop_before: str,
        num_examples: Optional[int] = None,
        evaluation: Optional[Tuple[int, int, float]] = None,
    ) -> Optional[RoundOutcome]:
        """Like :meth:`participate`, but hangs up instead of sending this
        client's message of stage ``drop_before`` (``"advertise-keys"``,
        ``"share-keys"``, ``"masked-input"``, ``"consistency-check"``,
        ``"unmasking"``): a real dropout as the server and the other
        clients see it, for dropout experiments and tests. Returns ``None``
        when it dropped; the outcome if the round never reached that stage.
        """
        raw = self._native.participate_or_drop(
            self._flat(update), drop_before, *_extras(num_examples, evaluation)
        )
        return None if raw is None else self._outcome(raw)

    def _outcome(self, raw: Dict[str, object]) -> RoundOutcome:
        """The outcome, with the model the round published and the epsilon
        it records."""
        model = self.model(int(raw["model_version"]))  # type: ignore[call-overload]
        # Whom the epsilon holds against is the ledger's word over every
        # round so far, not this round's mode: a job that ran a central
        # round before going distributed never again holds against the
        # server.
        raw.pop("client_noise")
        return RoundOutcome(
            epsilon=model.epsilon,
            delta=model.delta,
            epsilon_against=model.epsilon_against,
            model=model,
            **raw,  # type: ignore[arg-type]
        )

    def _flat(self, update: Union[Mapping[str, "np.typing.ArrayLike"], np.ndarray]) -> np.ndarray:
        """The update as one contiguous float32 vector in the flat order."""
        if isinstance(update, Mapping):
            with self._lock:
                layout = self._layout
            if layout is None:
                self.latest_model()
                with self._lock:
                    layout = self._layout
            assert layout is not None
            return flatten_update(update, layout)
        array = np.asarray(update)
        if array.ndim != 1:
            raise InvalidInput(
                f"a flat update is one-dimensional; got shape {array.shape} "
                "(give a dict of named tensors, or flatten in the model's order)"
            )
        return _as_float32(array, "the flat update")


def _extras(
    num_examples: Optional[int], evaluation: Optional[Tuple[int, int, float]]
) -> Tuple[Optional[int], Optional[Tuple[int, int, float]]]:
    """``num_examples`` and ``evaluation`` checked for the native call."""
    if num_examples is not None and (isinstance(num_examples, bool) or int(num_examples) < 0):
        raise InvalidInput(f"num_examples must be a count (0 or more), got {num_examples!r}")
    if evaluation is None:
        return (None if num_examples is None else int(num_examples)), None
    try:
        correct, total, loss_sum = evaluation
        checked = (int(correct), int(total), float(loss_sum))
    except (TypeError, ValueError) as e:
        raise InvalidInput(
            f"evaluation is (correct, total, loss_sum), got {evaluation!r}: {e}"
        ) from None
    if checked[0] < 0 or checked[1] < 0:
        raise InvalidInput(f"evaluation counts must be 0 or more, got {evaluation!r}")
    return (None if num_examples is None else int(num_examples)), checked


def _as_float32(array: np.ndarray, what: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInput(
            f"{what} has dtype {array.dtype}; updates are floating point "
            "(integer buffers such as batch-norm counters stay local)"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def flatten_update(
    update: Mapping[str, "np.typing.ArrayLike"],
    layout: Sequence[Tuple[str, Tuple[int, ...]]],
) -> np.ndarray:
    """Lays out a named update as the flat float32 vector of ``layout``
    (the model's ``(name, shape)`` pairs in the flat order), matching by
    name.

    Raises:
        InvalidInput: a name the model lacks, a tensor the update lacks,
            a shape that differs, or a non-float dtype; every problem is
            named.
    """
    names = [name for name, _ in layout]
    missing = [n for n in names if n not in update]
    extra = sorted(set(update) - set(names))
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {missing}")
    if extra:
        problems.append(f"tensor(s) {extra} not in the model (its tensors: {names})")
    if problems:
        raise InvalidInput("the update does not match the model: " + "; ".join(problems))
    parts = []
    for name, shape in layout:
        array = np.asarray(update[name])
        if tuple(array.shape) != tuple(shape):
            raise InvalidInput(
                f"tensor '{name}' has shape {tuple(array.shape)}, the model's is {tuple(shape)}"
            )
        parts.append(_as_float32(array, f"tensor '{name}'").reshape(-1))
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
