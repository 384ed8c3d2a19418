"""PyTorch quickstart: three clients train a small ``torch.nn`` classifier
together through secure aggregation, each on its own partition of
synthetic data; the server (in this process) only
sees the sum of their updates.

    pip install ./python torch
    python examples/python/torch_quickstart.py

Each round a client loads the global ``state_dict``, trains locally, and
sends the difference of its float parameters and buffers
(``tessera.state_dict.float_update``). Integer buffers such as batch-norm's
``num_batches_tracked`` are not averaged: they stay on the client and are
kept when the global model is loaded back
(``tessera.state_dict.load_global``). The server's model has PyTorch's
names and layouts (``fc1.weight`` as ``[out, in]``), so the global
``state_dict`` loads straight into the same module.

The conversion code lives in ``tessera.state_dict`` and is tested with
NumPy arrays in the package's pytest suite (PyTorch is too large for CI).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

import tessera
from tessera.state_dict import float_update, load_global, split_state

CLIENTS = 3
ROUNDS = 5
FEATURES, CLASSES = 8, 3


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def partitions(seed: int = 0):
    """Gaussian blobs, one centre per class, split across the clients."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, size=600)
    x = centres[labels] + rng.normal(size=(600, FEATURES))
    parts = np.array_split(np.arange(600), CLIENTS)
    return [(torch.tensor(x[i], dtype=torch.float32), torch.tensor(labels[i])) for i in parts]


def accuracy(model: nn.Module, data) -> float:
    model.eval()
    with torch.no_grad():
        x, y = data
        return float((model(x).argmax(dim=1) == y).float().mean())


def client_round(client: tessera.Client, net: Net, data) -> tessera.RoundOutcome:
    global_model = client.latest_model()
    net.load_state_dict(load_global(net.state_dict(), global_model.tensors))
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = data
    for _ in range(10):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return client.participate(float_update(net.state_dict(), global_model.tensors))


def main() -> int:
    torch.manual_seed(0)
    data = partitions()
    initial, _integer_buffers = split_state(Net().state_dict())
    with tessera.Server(initial_model=initial, min_clients=CLIENTS, max_clients=CLIENTS,
                        clip_norm=10.0, insecure_dev=True) as server:
        clients = [tessera.Client(server.url) for _ in range(CLIENTS)]
        nets = [Net() for _ in range(CLIENTS)]
        with ThreadPoolExecutor(CLIENTS) as pool:
            for _ in range(ROUNDS):
                outcomes = list(pool.map(client_round, clients, nets, data))
                print(f"round {outcomes[0].round_id}: model v{outcomes[0].model_version}")
        # The global state_dict, with the names and layouts it started with.
        final = clients[0].latest_model()
        evaluator = Net()
        evaluator.load_state_dict(load_global(evaluator.state_dict(), final.tensors))
    acc = np.mean([accuracy(evaluator, d) for d in data])
    print(f"global model v{final.version}: accuracy {acc:.3f}")
    return 0 if acc > 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
