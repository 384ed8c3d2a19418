"""Every error class is reachable, with the SDK's message, and a client
that saw an error stays usable."""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from tessera import _native
from conftest import in_threads

# Every variant of the SDK's ClientError, and the class it maps to.
SDK_ERRORS = {
    "InvalidUrl": tessera.InvalidInput,
    "InvalidTls": tessera.InvalidInput,
    "InvalidToken": tessera.InvalidInput,
    "InvalidSetting": tessera.InvalidInput,
    "OsRandomness": tessera.TesseraError,
    "EmptyUpdate": tessera.InvalidInput,
    "NonFiniteUpdate": tessera.InvalidInput,
    "Unreachable": tessera.ConnectionFailed,
    "ConnectionLost": tessera.ConnectionFailed,
    "AuthRefused": tessera.AuthRefused,
    "VersionMismatch": tessera.ProtocolViolation,
    "UpdateLength": tessera.InvalidInput,
    "ModelMismatch": tessera.InvalidInput,
    "ServerUnavailable": tessera.ServerRefused,
    "NotEligible": tessera.NotEligible,
    "NoSuchModel": tessera.ServerRefused,
    "Rejected": tessera.ServerRefused,
    "RoundAborted": tessera.RoundAborted,
    "AccusedNeighbours": tessera.RoundFailed,
    "RoundNotStored": tessera.RoundAborted,
    "LeftOut": tessera.RoundFailed,
    "ServerSilent": tessera.RoundFailed,
    "RoundTimeout": tessera.RoundFailed,
    "PolicyRefused": tessera.PolicyRefused,
    "ServerMisbehaved": tessera.ProtocolViolation,
}


@pytest.mark.parametrize("variant", sorted(SDK_ERRORS))
def test_every_sdk_error_maps_to_its_class_with_the_sdk_message(variant):
    with pytest.raises(tessera.TesseraError) as info:
        _native._raise_sdk_error(variant)
    assert type(info.value) is SDK_ERRORS[variant]
    assert str(info.value), "the SDK's message is kept"


def test_the_mapped_exceptions_carry_their_fields():
    with pytest.raises(tessera.RoundAborted) as info:
        _native._raise_sdk_error("RoundAborted")
    assert info.value.round_id == 4
    assert "shares" in info.value.reason
    with pytest.raises(tessera.PolicyRefused) as info:
        _native._raise_sdk_error("PolicyRefused")
    assert info.value.rule == "min-clients"
    with pytest.raises(tessera.NotEligible, match="DP-FTRL tree") as info:
        _native._raise_sdk_error("NotEligible")
    assert info.value.rounds_left == 3
    assert isinstance(info.value, tessera.ServerRefused)
    with pytest.raises(tessera.ProtocolViolation, match="another client"):
        _native._raise_sdk_error("ServerMisbehaved")
    # Python's own hierarchy still catches them.
    with pytest.raises(ValueError):
        _native._raise_sdk_error("EmptyUpdate")
    with pytest.raises(ConnectionError):
        _native._raise_sdk_error("Unreachable")


def server(**settings):
    settings.setdefault("min_clients", 3)
    settings.setdefault("max_clients", 3)
    settings.setdefault("clip_norm", 100.0)
    settings.setdefault("stage_timeout_ms", 2000)
    return tessera.Server(insecure_dev=True, **settings)


def test_an_unreachable_server_is_a_connection_error():
    with server(dim=2) as s:
        url = s.url
    # The server is stopped: nothing listens on its port any more.
    with pytest.raises(tessera.ConnectionFailed, match="cannot reach the server"):
        tessera.Client(url).latest_model()


def test_a_wrong_token_is_refused_and_a_minted_one_admitted(tmp_path):
    with server(dim=2, tokens_file=tmp_path / "tokens") as s:
        token = s.mint_token("alice")
        with pytest.raises(tessera.AuthRefused) as info:
            tessera.Client(s.url, token="not-the-token", insecure_loopback=True).latest_model()
        assert "not-the-token" not in str(info.value)
        model = tessera.Client(s.url, token=token, insecure_loopback=True).latest_model()
        assert model.dim == 2
        with pytest.raises(tessera.InvalidInput, match="already"):
            s.mint_token("alice")


def test_a_token_over_plain_http_needs_insecure_loopback():
    with pytest.raises(tessera.InvalidInput):
        tessera.Client("http://127.0.0.1:9", token="t")


def test_a_version_never_published_is_refused_by_the_server():
    with server(dim=2) as s:
        with pytest.raises(tessera.ServerRefused, match="no model version 9"):
            tessera.Client(s.url).model(9)


def test_a_policy_refusal_names_its_rule_and_leaves_the_client_usable():
    with server(dim=2) as s:
        picky = tessera.Client(s.url, policy=tessera.Policy(min_clients=4))
        others = [tessera.Client(s.url) for _ in range(2)]
        update = np.ones(2, np.float32)
        results = in_threads([lambda c=c: c.participate(update) for c in [picky, *others]])
        assert isinstance(results[0], tessera.PolicyRefused), results[0]
        assert results[0].rule == "min-clients"
        # The picky client still works: it reads the model.
        assert picky.latest_model().version >= 1


def test_an_aborted_round_raises_round_aborted_and_the_clients_take_part_again():
    with server(dim=3) as s:
        clients = [tessera.Client(s.url) for _ in range(3)]
        update = np.full(3, 0.5, np.float32)
        # One client hangs up before masked input: two inputs are below the
        # minimum aggregate of three, so the round aborts unpublished.
        results = in_threads(
            [lambda: clients[0].participate_or_drop(update, "masked-input")]
            + [lambda c=c: c.participate(update) for c in clients[1:]]
        )
        assert results[0] is None
        for r in results[1:]:
            assert isinstance(r, tessera.RoundAborted), r
            assert r.reason and "survivor floor" in r.reason
        assert clients[1].latest_model().version == 1
        # The same clients take part in the next round.
        results = in_threads([lambda c=c: c.participate(update) for c in clients])
        for r in results:
            assert isinstance(r, tessera.RoundOutcome), r
        np.testing.assert_allclose(clients[0].latest_model().flatten(), update, atol=1e-3)


def test_a_round_that_never_opens_times_out_as_round_failed():
    with server(dim=2) as s:
        lonely = tessera.Client(s.url, round_timeout=0.5)
        with pytest.raises(tessera.RoundFailed, match="no round ended"):
            lonely.participate(np.zeros(2, np.float32))


def test_a_server_that_cannot_start_is_a_server_error(tmp_path):
    with server(dim=2) as s:
        port = s.url.rsplit(":", 1)[1]
        with pytest.raises(tessera.ServerError, match="cannot listen"):
            server(dim=2, listen=f"127.0.0.1:{port}")


def test_an_unknown_setting_is_refused_with_the_known_ones():
    with pytest.raises(tessera.InvalidInput, match="min_clients"):
        server(dim=2, min_clinets=3)
    with pytest.raises(tessera.InvalidInput, match="min_clients"):
        server(dim=2, min_clients=2)
