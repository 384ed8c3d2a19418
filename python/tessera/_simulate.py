"""``tessera.simulate``: ``tessera simulate --json`` from Python.

Whole secure aggregation rounds run in this process: every client and the
server go through the same state machines and wire encoding a deployment
uses, with the chosen fraction of clients dropping out just before they
send at each stage. The planning (the parameter finder, the defaults, the
drop plan) and each round's record are the library functions the CLI
calls, so the same arguments and seed give the same records as the
command's JSON lines (the wall times and the peak memory aside).
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from tessera import _native
from tessera.errors import InvalidInput

__all__ = ["simulate", "Drops"]

#: ``drop=``: fractions by stage (``{"masked-input": 0.1}``), or
#: ``"STAGE=FRACTION"`` strings as ``--drop`` takes them (one string, or
#: several).
Drops = Union[Mapping[str, float], Iterable[str], str]

_U8 = 2**8 - 1
_U32 = 2**32 - 1
_U64 = 2**64 - 1


def simulate(
    *,
    clients: int = 100,
    dim: int = 100_000,
    graph: Optional[str] = None,
    neighbours: Optional[int] = None,
    threshold: Optional[int] = None,
    dropout_rate: float = 0.1,
    corrupt_rate: float = 0.05,
    threat_model: str = "semi-honest",
    drop: Optional[Drops] = None,
    bits: int = 32,
    prg: str = "aes",
    rounds: int = 1,
    seed: int = 42,
    faults: Optional[str] = None,
    threads: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Runs secure aggregation rounds in process and reports their cost,
    as ``tessera simulate --json`` does; each keyword is the command's flag
    of that name (``dropout_rate`` is ``--dropout-rate``).

    Args:
        clients: Clients invited to each round (at least 2).
        dim: Length of each client's input vector (at least 1).
        graph: Neighbour graph, ``"complete"`` (SecAgg) or ``"harary"``
            (SecAgg+); ``None``: what the parameter finder picks, Harary
            when ``neighbours`` is given.
        neighbours: Neighbours per client for the Harary graph: even, at
            least 2, less than ``clients``; ``None``: the finder's k.
        threshold: Shamir threshold t, between 2 and the share holders per
            client (its k neighbours); ``None``: the finder's t when it
            chose the same graph, else a majority of the share holders. A t
            below the threat model's floor still runs, for research, and the
            records say ``"secure": False`` and why.
        dropout_rate: Dropout rate in [0, 1) the finder sizes k and t for.
        corrupt_rate: Corrupt rate in [0, 1) the finder sizes k and t for.
        threat_model: Who the round must stay private against:
            ``"semi-honest"``, ``"semi-malicious"`` (adds the
            consistency-check stage) or ``"malicious-server"``.
        drop: Fraction of the clients still in the round that drop out just
            before sending at each stage (``advertise-keys``, ``share-keys``,
            ``masked-input``, ``consistency-check``, ``unmasking``), e.g.
            ``{"share-keys": 0.05, "masked-input": 0.1}`` or
            ``["share-keys=0.05", "masked-input=0.1"]``; ``None``: 10% at
            masked-input; ``{}``: no dropouts.
        bits: Arithmetic modulus 2^bits of inputs and masks (1 to 32).
        prg: Stream cipher expanding the masks: ``"aes"`` (AES-128-CTR,
            also ``"aes128-ctr"``) or ``"chacha20"``.
        rounds: Rounds to run, each with fresh keys, inputs and dropouts.
        seed: Seed of everything random (keys, inputs, who drops), so runs
            reproduce; from 0 to 2**64 - 1.
        faults: An unreliable network between clients and server, seeded by
            ``seed``, e.g. ``"loss=0.01,duplicate=0.01,delay=0.02,reorder"``;
            what the faults did is in each record's ``faults``.
        threads: Worker threads; ``None``: one per core.

    Returns:
        One dict per round, the command's JSON line for it: ``round``,
        ``outcome`` (``"completed"`` or ``"aborted"``), ``abort_stage``,
        ``abort_reason``, ``verified`` (the unmasked sum equals the plain sum
        of the accepted inputs), ``survivors``, ``dropped`` (by stage),
        ``k``, ``t``, ``secure``, ``insecure_reasons``, ``stage_seconds``,
        ``client_mask_seconds_median``, ``server_unmask_seconds``,
        ``total_seconds``, traffic in bytes (``bytes_sent_per_client``,
        ``bytes_received_per_client``, ``server_bytes_received``,
        ``server_bytes_sent``, ``packed_vector_bytes``), ``peak_rss_bytes``
        (of this process; ``None`` off Linux) and ``faults``. An aborted
        round is a normal outcome, not an error.

    Warnings:
        The command's warnings (drops likely to abort every round,
        parameters weaker than the threat model promises) are issued as
        :class:`UserWarning` before the rounds run.

    Raises:
        InvalidInput: a value the command refuses, with its message (naming
            the flag).
        TesseraError: a round failed between honest parties, or a completed
            round's sum differs from the plain sum (a bug, as the command's
            exit code 1).
    """
    lines = _native.simulate(
        clients=_whole("clients", clients, _U32),
        dim=_whole("dim", dim, _U32),
        graph=_name("graph", graph),
        neighbours=_whole("neighbours", neighbours, _U32),
        threshold=_whole("threshold", threshold, _U32),
        dropout_rate=_number("dropout-rate", dropout_rate),
        corrupt_rate=_number("corrupt-rate", corrupt_rate),
        threat_model=_name("threat-model", threat_model),
        drops=_drops(drop),
        bits=_whole("bits", bits, _U8),
        prg=_name("prg", prg),
        rounds=_whole("rounds", rounds, _U32),
        seed=_whole("seed", seed, _U64),
        faults=_name("faults", faults),
        threads=_whole("threads", threads, _U32),
        on_warning=lambda message: warnings.warn(message, UserWarning, stacklevel=3),
    )
    return [json.loads(line) for line in lines]


def _whole(flag: str, value: Any, most: int) -> Any:
    """An int within the flag's Rust type, or ``None``; else InvalidInput
    (not an overflow from the binding)."""
    if value is None:
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InvalidInput(f"invalid value {value!r} for --{flag}: expected a whole number")
    value = value.__index__()
    if not 0 <= value <= most:
        raise InvalidInput(f"invalid value {value} for --{flag}: a whole number from 0 to {most}")
    return value


def _number(flag: str, value: Any) -> float:
    """A real number (checked against its range by the CLI's parser)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise InvalidInput(f"invalid value {value!r} for --{flag}: expected a number")
    return float(value)


def _name(flag: str, value: Any) -> Optional[str]:
    """A string flag value, or ``None``."""
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"invalid value {value!r} for --{flag}: expected a string")
    return value


def _drops(drop: Optional[Drops]) -> Optional[List[str]]:
    """``drop=`` as ``--drop`` strings (parsed, and refused, by the CLI's
    parser); ``None`` keeps the command's default."""
    if drop is None:
        return None
    if isinstance(drop, str):
        return [drop]
    if isinstance(drop, Mapping):
        return [f"{stage}={fraction}" for stage, fraction in drop.items()]
    items = list(drop)
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(
                f"invalid value {item!r} for --drop: expected STAGE=FRACTION strings or a dict"
            )
    return items
