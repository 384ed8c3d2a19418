"""FedProx: the server's ``proximal_mu`` reaches Python clients with the
model and with each round's outcome."""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from conftest import in_threads


def start(**settings):
    settings.setdefault("min_clients", 3)
    settings.setdefault("max_clients", 3)
    settings.setdefault("clip_norm", 100.0)
    return tessera.Server(insecure_dev=True, dim=4, **settings)


def one_round(clients):
    """Runs one round with every client; the outcomes."""
    outcomes = in_threads([lambda c=c: c.participate(np.zeros(4, np.float32)) for c in clients])
    for o in outcomes:
        assert isinstance(o, tessera.RoundOutcome), o
    return outcomes


def test_a_servers_proximal_mu_comes_with_the_model_and_with_each_round_outcome():
    with start(proximal_mu=0.25) as server:
        clients = [tessera.Client(server.url) for _ in range(3)]
        model = clients[0].latest_model()
        assert model.proximal_mu == 0.25
        outcomes = one_round(clients)
        assert [o.proximal_mu for o in outcomes] == [0.25] * 3
        # The model the round published, downloaded with the outcome, too.
        assert outcomes[0].model.version == model.version + 1
        assert outcomes[0].model.proximal_mu == 0.25


def test_a_server_without_proximal_mu_sends_zero_and_the_native_layer_says_so():
    with start() as server:
        clients = [tessera.Client(server.url) for _ in range(3)]
        assert clients[0].latest_model().proximal_mu == 0.0
        # The dataclasses default to 0.0, so check that the native layer
        # itself carries the server's value (a tuple without it, or a dict
        # without the key, would pass the checks above unnoticed).
        raw_model = clients[0]._native.model(0)
        assert len(raw_model) == 7
        assert isinstance(raw_model[-1], float) and raw_model[-1] == 0.0
        zeros = np.zeros(4, np.float32)
        raws = in_threads([lambda c=c: c._native.participate(zeros) for c in clients])
        for raw in raws:
            assert isinstance(raw, dict), raw
            assert raw["proximal_mu"] == 0.0
        outcomes = one_round(clients)
        assert [o.proximal_mu for o in outcomes] == [0.0] * 3


def test_a_negative_proximal_mu_is_refused_by_name():
    with pytest.raises(tessera.InvalidInput, match="proximal_mu"):
        start(proximal_mu=-0.1)
