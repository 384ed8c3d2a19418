"""The exceptions Tessera raises.

Every error of the Rust SDK maps to exactly one class below, raised with
the SDK's message. Catch :class:`TesseraError` for all of them; the
subclasses say whose fault it was, as the SDK groups its errors: the
caller's input (:class:`InvalidInput`), the network
(:class:`ConnectionFailed`), a server that refused the client
(:class:`AuthRefused`, :class:`ServerRefused`), a round that ended without
a result (:class:`RoundFailed`, :class:`RoundAborted`), a server that broke
the protocol (:class:`ProtocolViolation`) and a round the client's own
policy refused (:class:`PolicyRefused`). No exception carries an update,
a key or a token.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

__all__ = [
    "TesseraError",
    "InvalidInput",
    "ConnectionFailed",
    "AuthRefused",
    "ServerRefused",
    "NotEligible",
    "ProtocolViolation",
    "PolicyRefused",
    "RoundFailed",
    "RoundAborted",
    "ServerError",
]


class TesseraError(Exception):
    """Base class of every error Tessera raises.

    ``str(error)`` is the Rust SDK's (or server's) message.
    """

    def __init__(self, message: str, **attrs: object) -> None:
        super().__init__(message)
        for key, value in attrs.items():
            setattr(self, key, value)


class InvalidInput(TesseraError, ValueError):
    """The caller's input or settings cannot be used: an update whose
    tensor names, shapes or length do not match the model, a NaN, a bad
    URL, TLS file, token or setting. Nothing was sent."""


class ConnectionFailed(TesseraError, ConnectionError):
    """The server could not be reached (after the retries), or the
    connection broke. ``round_id`` is the round under way, if any."""

    round_id: Optional[int] = None


class ServerRefused(TesseraError):
    """The server refused the request: it runs no more rounds (privacy
    budget spent, shutting down), has no such model version, or refused
    for another stated reason."""


class NotEligible(ServerRefused):
    """DP-FTRL: this client already took part in the server's current
    tree, and each client takes part at most once per tree. Join again
    after the tree ends: within ``rounds_left`` rounds (sooner if a round
    aborts or the tree closes early)."""

    rounds_left: Optional[int] = None


class AuthRefused(ServerRefused):
    """The server did not accept the client's credentials (token or
    client certificate)."""


class ProtocolViolation(TesseraError):
    """The server broke the protocol (or speaks another protocol version):
    the client refused the rest of the round. ``round_id`` if known."""

    round_id: Optional[int] = None


class PolicyRefused(TesseraError):
    """The round's parameters break the client's :class:`tessera.Policy`:
    the client refused the round before making or sending any key.
    ``rule`` names the rule (e.g. ``"min-clients"``), ``round_id`` the
    round. The client stays usable for the next round."""

    round_id: int
    rule: str


class RoundFailed(TesseraError):
    """The round ended without this client's contribution in a published
    model: it was left out, accused neighbours whose share bundles did not
    open (``accused``), the server fell silent, or no round ended within
    the client's ``round_timeout``. ``round_id`` if known."""

    round_id: Optional[int] = None
    accused: List[int] = []


class RoundAborted(RoundFailed):
    """The server aborted the round: nothing was published from it.
    ``reason`` is why (``None`` if the server gave no reason this version
    knows); ``evicted`` lists ``(client_id, reason, detail)`` of clients
    the server evicted for breaking the protocol."""

    reason: Optional[str] = None
    evicted: List[Tuple[int, str, str]] = []


class ServerError(TesseraError):
    """An in-process :class:`tessera.Server` could not start or stopped
    with an error (data directory, tokens file, TLS files, listen
    address)."""
