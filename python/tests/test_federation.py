"""A federation in Python only: an in-process server, clients in threads."""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from conftest import in_threads

# The fixed-point encoding rounds each value to a multiple of 2^-16
# (randomized, unbiased): the average of three is within this of exact.
ATOL = 1e-3


def start(**settings):
    settings.setdefault("min_clients", 3)
    settings.setdefault("max_clients", 3)
    settings.setdefault("clip_norm", 100.0)
    return tessera.Server(insecure_dev=True, **settings)


def test_the_published_model_is_the_fedavg_of_the_updates_sent():
    rng = np.random.default_rng(7)
    with start(dim=12) as server:
        clients = [tessera.Client(server.url) for _ in range(3)]
        start_model = clients[0].latest_model()
        assert start_model.version == 1 and start_model.dim == 12
        updates = [rng.normal(size=12).astype(np.float32) for _ in clients]
        outcomes = in_threads([lambda c=c, u=u: c.participate(u) for c, u in zip(clients, updates)])
        for o in outcomes:
            assert isinstance(o, tessera.RoundOutcome), o
        assert {o.survivors for o in outcomes} == {3}
        assert len({o.round_id for o in outcomes}) == 1
        published = clients[1].latest_model()
        assert published.version == outcomes[0].model_version == start_model.version + 1
        expected = start_model.flatten() + np.mean(updates, axis=0)
        np.testing.assert_allclose(published.flatten(), expected, atol=ATOL)
        # The outcome carries the model the round published.
        np.testing.assert_array_equal(outcomes[2].model.flatten(), published.flatten())
        assert outcomes[0].epsilon == 0.0 and outcomes[0].epsilon_against is None


def test_a_flat_update_of_the_wrong_length_is_refused_with_both_lengths():
    with start(dim=4) as server:
        client = tessera.Client(server.url)
        # The server's length check comes back as the SDK's UpdateLength.
        results = in_threads([lambda: client.participate(np.zeros(5, np.float32))])
        err = results[0]
        assert isinstance(err, tessera.InvalidInput), err
        assert "5" in str(err) and "4" in str(err)


def test_a_multidimensional_array_is_not_taken_as_a_flat_update():
    with start(dim=4) as server:
        client = tessera.Client(server.url)
        with pytest.raises(tessera.InvalidInput, match="one-dimensional"):
            client.participate(np.zeros((2, 2), np.float32))
        with pytest.raises(tessera.InvalidInput, match="NaN or infinite"):
            client.participate(np.array([0.0, np.nan, 0.0, 0.0], np.float32))


def test_an_initial_model_of_named_tensors_comes_back_with_its_names_shapes_and_fedavg_values():
    rng = np.random.default_rng(11)
    initial = {
        "fc2.weight": rng.normal(size=(2, 3)).astype(np.float32),
        "fc1.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "fc1.bias": rng.normal(size=3).astype(np.float32),
    }
    with start(initial_model=initial) as server:
        clients = [tessera.Client(server.url) for _ in range(3)]
        start_model = clients[0].latest_model()
        # Names and shapes as given; the flat order is name order.
        assert list(start_model.tensors) == sorted(initial)
        for name, array in initial.items():
            assert start_model.tensors[name].shape == array.shape
            np.testing.assert_array_equal(start_model.tensors[name], array)
        updates = [
            {name: rng.normal(size=a.shape).astype(np.float32) for name, a in initial.items()}
            for _ in clients
        ]
        outcomes = in_threads([lambda c=c, u=u: c.participate(u) for c, u in zip(clients, updates)])
        assert {o.survivors for o in outcomes} == {3}, outcomes
        published = clients[2].latest_model()
        for name, array in initial.items():
            expected = array + np.mean([u[name] for u in updates], axis=0)
            assert published.tensors[name].shape == array.shape
            np.testing.assert_allclose(published.tensors[name], expected, atol=ATOL)
        # A flat update in the documented order means the same as the dict.
        flat = np.concatenate([initial[k].ravel() for k in sorted(initial)])
        np.testing.assert_array_equal(start_model.flatten(), flat)


def test_an_initial_model_that_is_not_float32_is_refused_naming_the_tensor():
    with pytest.raises(tessera.InvalidInput, match="counts"):
        start(initial_model={"counts": np.zeros(3, np.int64)})


def test_updates_are_weighted_by_their_clipped_example_counts_inside_the_secure_sum():
    rng = np.random.default_rng(5)
    # max_examples 100: the third client's 400 examples count as 100.
    with start(dim=6, weighting=True, max_examples=100, federated_eval=True) as server:
        clients = [tessera.Client(server.url) for _ in range(3)]
        start_model = clients[0].latest_model()
        updates = [rng.normal(size=6).astype(np.float32) for _ in clients]
        counts = [10, 50, 400]
        evaluations = [(3, 4, 1.5), tessera.Evaluation(5, 10, 2.0), (0, 0, 0.0)]
        outcomes = in_threads(
            [
                lambda c=c, u=u, n=n, e=e: c.participate(u, num_examples=n, evaluation=e)
                for c, u, n, e in zip(clients, updates, counts, evaluations)
            ]
        )
        for o in outcomes:
            assert isinstance(o, tessera.RoundOutcome), o
            assert o.clip_norm == 100.0
        weights = np.array([0.1, 0.5, 1.0])
        expected = start_model.flatten() + (weights[:, None] * np.array(updates)).sum(0) / weights.sum()
        np.testing.assert_allclose(outcomes[0].model.flatten(), expected, atol=ATOL)
        plain = start_model.flatten() + np.mean(updates, axis=0)
        assert np.abs(plain - expected).max() > 10 * ATOL


def test_a_weighting_server_refuses_a_client_without_its_example_count_by_name():
    with start(dim=3, weighting=True) as server:
        clients = [tessera.Client(server.url) for _ in range(3)]
        results = in_threads([lambda c=c: c.participate(np.zeros(3, np.float32)) for c in clients])
        for err in results:
            assert isinstance(err, tessera.InvalidInput), err
            assert "num_examples" in str(err)
        with pytest.raises(tessera.InvalidInput, match="num_examples"):
            clients[0].participate(np.zeros(3, np.float32), num_examples=-1)
        with pytest.raises(tessera.InvalidInput, match="evaluation"):
            clients[0].participate(np.zeros(3, np.float32), evaluation=(1, 2))
