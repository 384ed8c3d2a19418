"""Models and updates by name; the epsilon a round spends and whom it
holds against; the accountant."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import tessera
from conftest import in_threads


def server(**settings):
    settings.setdefault("min_clients", 3)
    settings.setdefault("max_clients", 3)
    settings.setdefault("clip_norm", 100.0)
    return tessera.Server(insecure_dev=True, **settings)


def test_a_named_update_is_matched_by_name_and_shape():
    with server(dim=4) as s:
        client = tessera.Client(s.url)
        model = client.latest_model()
        assert model.shapes == {"params": (4,)}
        with pytest.raises(tessera.InvalidInput, match=r"missing tensor\(s\) \['params'\]"):
            client.participate({"w": np.zeros(4)})
        with pytest.raises(tessera.InvalidInput, match=r"\['extra'\] not in the model"):
            client.participate({"params": np.zeros(4), "extra": np.zeros(1)})
        with pytest.raises(tessera.InvalidInput, match=r"'params' has shape \(2, 2\), the model's is \(4,\)"):
            client.participate({"params": np.zeros((2, 2))})
        with pytest.raises(tessera.InvalidInput, match="dtype int64"):
            client.participate({"params": np.zeros(4, np.int64)})
        clients = [client, tessera.Client(s.url), tessera.Client(s.url)]
        # float64 is converted; a dict and flat arrays mix in one round.
        updates = [{"params": np.arange(4.0)}, np.arange(4, dtype=np.float32), np.arange(4.0)]
        results = in_threads([lambda c=c, u=u: c.participate(u) for c, u in zip(clients, updates)])
        for r in results:
            assert isinstance(r, tessera.RoundOutcome), r
        np.testing.assert_allclose(results[0].model.tensors["params"], np.arange(4.0), atol=1e-3)


@pytest.mark.parametrize("mode, against", [("central", "model-consumers"), ("distributed", "server")])
def test_a_dp_round_reports_the_epsilon_spent_and_whom_it_holds_against(mode, against):
    with server(dim=8, dp=mode, noise_multiplier=1.0, epsilon_budget=100.0, clip_norm=1.0) as s:
        clients = [tessera.Client(s.url) for _ in range(3)]
        results = in_threads([lambda c=c: c.participate(np.full(8, 0.1, np.float32)) for c in clients])
        for r in results:
            assert isinstance(r, tessera.RoundOutcome), r
            assert r.epsilon > 0 and 0 < r.delta < 1
            assert r.epsilon_against == against
            assert r.epsilon == clients[0].latest_model().epsilon


def test_the_accountant_matches_tessera_privacy():
    eps = tessera.privacy.epsilon(noise_multiplier=1.1, sampling_rate=0.01, rounds=1000, delta=1e-5)
    assert 0 < eps.epsilon < 10 and eps.order > 1
    z = tessera.privacy.noise(target_epsilon=eps.epsilon, sampling_rate=0.01, rounds=1000, delta=1e-5)
    assert z == pytest.approx(1.1, rel=1e-3)
    rounds = tessera.privacy.rounds(
        noise_multiplier=1.1, sampling_rate=0.01, target_epsilon=eps.epsilon, delta=1e-5
    )
    assert rounds == 1000
    with pytest.raises(tessera.InvalidInput):
        tessera.privacy.epsilon(noise_multiplier=0.0, sampling_rate=0.01, rounds=1, delta=1e-5)


def test_epsilon_against_is_the_ledgers_word_not_this_rounds_mode(tmp_path):
    # A job that ran a central round (the server saw its un-noised sum)
    # and then went distributed: every client of the distributed round
    # added noise, but the epsilon spent so far includes the central
    # round's, so it holds against the model's consumers only.
    data = tmp_path / "data"
    dp = dict(dim=8, noise_multiplier=1.0, epsilon_budget=100.0, clip_norm=1.0, data_dir=data)
    with server(dp="central", **dp) as s:
        clients = [tessera.Client(s.url) for _ in range(3)]
        first = in_threads([lambda c=c: c.participate(np.full(8, 0.1, np.float32)) for c in clients])
        assert all(r.epsilon_against == "model-consumers" for r in first), first
    with server(dp="distributed", **dp) as s:
        clients = [tessera.Client(s.url) for _ in range(3)]
        second = in_threads([lambda c=c: c.participate(np.full(8, 0.1, np.float32)) for c in clients])
        for r in second:
            assert isinstance(r, tessera.RoundOutcome), r
            assert r.epsilon > first[0].epsilon
            assert r.epsilon_against == "model-consumers", r
            assert r.model.epsilon_against == "model-consumers"
        assert clients[0].model(1).epsilon_against is None, "nothing spent at the initial model"
