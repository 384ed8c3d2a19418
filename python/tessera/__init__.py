"""Tessera: federated learning with secure aggregation, from Python.

A thin binding of Tessera's Rust client SDK and server. Each client sends
its model update through secure aggregation (Bonawitz et al. 2017 and
SecAgg+), so the server learns only the sum of many clients' updates,
with differential privacy where configured.

>>> import numpy as np, tessera                                  # doctest: +SKIP
>>> server = tessera.Server(initial_model={"w": np.zeros((2, 3), np.float32)},
...                         min_clients=3, insecure_dev=True)    # doctest: +SKIP
>>> client = tessera.Client(server.url)                          # doctest: +SKIP
>>> model = client.latest_model()                                # doctest: +SKIP
>>> outcome = client.participate({"w": np.ones((2, 3))})         # doctest: +SKIP

``tessera.simulate(...)`` runs whole rounds in process and returns one
dict per round, the records of ``tessera simulate --json``.

The flat order of a model (and of a flat update) is its tensors in name
order, each row-major.
"""

from tessera import privacy, state_dict
from tessera._client import Client, Evaluation, Model, Policy, RoundOutcome
from tessera._server import Server
from tessera._simulate import simulate
from tessera.errors import (
    AuthRefused,
    ConnectionFailed,
    InvalidInput,
    NotEligible,
    PolicyRefused,
    ProtocolViolation,
    RoundAborted,
    RoundFailed,
    ServerError,
    ServerRefused,
    TesseraError,
)

__all__ = [
    "Client",
    "Evaluation",
    "Model",
    "Policy",
    "RoundOutcome",
    "Server",
    "simulate",
    "privacy",
    "state_dict",
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

__version__ = "0.1.0"
