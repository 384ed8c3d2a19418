"""A federation in one script, NumPy only: an in-process Tessera server and
three clients in threads fit a linear regression together, each on its own
partition of the data, through secure aggregation (the server only ever
sees the sum of the three updates).

    pip install ./python
    python examples/python/numpy_federation.py

Each round every client starts from the global model, takes a few
gradient steps on its data, and sends ``local - global``; the server
averages the updates (FedAvg) and publishes the next model.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import tessera

FEATURES = 4
CLIENTS = 3
ROUNDS = 5


def make_partitions(rng: np.random.Generator):
    """Each client's private data: y = X w + b + noise, same w and b."""
    w, b = rng.normal(size=FEATURES), 0.5
    parts = []
    for _ in range(CLIENTS):
        x = rng.normal(size=(200, FEATURES))
        parts.append((x, x @ w + b + 0.01 * rng.normal(size=200)))
    return parts


def loss(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ params[:FEATURES] + params[FEATURES] - y) ** 2))


def train(params: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int = 20, lr: float = 0.1) -> np.ndarray:
    """A few steps of gradient descent on the mean squared error."""
    p = params.astype(np.float64)
    for _ in range(steps):
        err = x @ p[:FEATURES] + p[FEATURES] - y
        grad = np.concatenate([x.T @ err, [err.sum()]]) * 2 / len(y)
        p -= lr * grad
    return p.astype(np.float32)


def client_round(client: tessera.Client, data) -> tessera.RoundOutcome:
    x, y = data
    model = client.latest_model()
    global_params = model.tensors["params"]
    local = train(global_params, x, y)
    return client.participate({"params": local - global_params})


def main() -> int:
    rng = np.random.default_rng(0)
    parts = make_partitions(rng)
    # insecure_dev: no TLS, loopback only (a local experiment). The model is
    # one tensor of FEATURES weights and a bias.
    with tessera.Server(dim=FEATURES + 1, min_clients=CLIENTS, max_clients=CLIENTS,
                        clip_norm=10.0, insecure_dev=True) as server:
        clients = [tessera.Client(server.url) for _ in range(CLIENTS)]
        first = clients[0].latest_model().tensors["params"]
        losses = [np.mean([loss(first, x, y) for x, y in parts])]
        with ThreadPoolExecutor(CLIENTS) as pool:
            for _ in range(ROUNDS):
                outcomes = list(pool.map(client_round, clients, parts))
                model = outcomes[0].model
                losses.append(np.mean([loss(model.tensors["params"], x, y) for x, y in parts]))
                print(f"round {outcomes[0].round_id}: {outcomes[0].survivors} clients, "
                      f"model v{model.version}, mean loss {losses[-1]:.4f}")
    if not losses[-1] < losses[0] / 10:
        print(f"error: the loss did not fall ({losses[0]:.4f} -> {losses[-1]:.4f})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
