"""``tessera.simulate`` against the real ``tessera simulate --json``.

The binary is ``$TESSERA_BIN`` (``.ci/run`` sets it after building it),
else ``$CARGO_TARGET_DIR/debug/tessera``, else ``target/debug/tessera`` in
the repository (``cargo build --bin tessera``).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest

import tessera

REPO = Path(__file__).resolve().parents[2]


def tessera_bin() -> Path:
    """The CLI binary; a clear failure (not a skip) when it is missing, so
    CI cannot pass without comparing."""
    if "TESSERA_BIN" in os.environ:
        path = Path(os.environ["TESSERA_BIN"])
    elif "CARGO_TARGET_DIR" in os.environ:
        path = Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "tessera"
    else:
        path = REPO / "target" / "debug" / "tessera"
    if not path.is_file():
        pytest.fail(f"no tessera binary at {path}: run `cargo build --bin tessera` or set TESSERA_BIN")
    return path


def flags(kwargs: Dict[str, Any]) -> List[str]:
    """The command-line flags for ``simulate``'s keywords (``dropout_rate``
    is ``--dropout-rate``; each ``drop`` item one ``--drop``)."""
    argv: List[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if key == "drop":
            items = value.items() if isinstance(value, dict) else (v.split("=", 1) for v in value)
            argv += [f"{flag}={stage}={fraction}" for stage, fraction in items]
        else:
            # `--flag=value`: a negative value is not taken for a flag.
            argv.append(f"{flag}={value}")
    return argv


def cli(kwargs: Dict[str, Any]) -> subprocess.CompletedProcess:
    """``tessera simulate --json`` with the same arguments."""
    return subprocess.run(
        [str(tessera_bin()), "simulate", "--json", *flags(kwargs)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def is_timing(key: str) -> bool:
    """Fields that measure this run (wall time, memory), not the round."""
    return key.endswith("_seconds") or key.endswith("_seconds_median") or key == "peak_rss_bytes"


def assert_same_record(ours: Dict[str, Any], theirs: Dict[str, Any], where: str) -> None:
    """Every key equal, in order; every value equal, except timings, which
    must be present and non-negative (per stage for ``stage_seconds``)."""
    assert list(ours) == list(theirs), where
    for key, value in theirs.items():
        if not is_timing(key):
            assert ours[key] == value, f"{where}: {key}"
        elif isinstance(value, dict):
            assert list(ours[key]) == list(value), f"{where}: {key}"
            assert all(v >= 0 for v in ours[key].values()), f"{where}: {key}"
        elif value is None:
            assert ours[key] is None, f"{where}: {key}"
        else:
            assert ours[key] is not None and ours[key] >= 0, f"{where}: {key}"


CASES = {
    "finder": dict(clients=30, dim=64, rounds=3, seed=7),
    "complete, semi-malicious, every stage dropping": dict(
        clients=20,
        dim=33,
        graph="complete",
        threshold=11,
        threat_model="semi-malicious",
        drop={"share-keys": 0.1, "masked-input": 0.1, "consistency-check": 0.05, "unmasking": 0.1},
        bits=16,
        prg="chacha20",
        rounds=2,
        seed=123,
    ),
    "harary, semi-malicious, faulty network": dict(
        clients=24,
        dim=10,
        neighbours=12,
        threat_model="semi-malicious",
        dropout_rate=0.05,
        corrupt_rate=0.02,
        faults="loss=0.02,duplicate=0.02,delay=0.02,reorder",
        rounds=2,
        seed=99,
        threads=2,
    ),
    "an aborting plan": dict(clients=10, dim=5, graph="complete", threshold=8, drop={"share-keys": 0.5}),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_records_equal_the_cli_json_lines(kwargs: Dict[str, Any]) -> None:
    result = cli(kwargs)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        records = tessera.simulate(**kwargs)
    assert len(records) == len(lines) == kwargs.get("rounds", 1)
    for i, (ours, line) in enumerate(zip(records, lines)):
        assert_same_record(ours, json.loads(line), f"round {i}")


def test_a_dropout_plan_drops_whom_it_says_and_still_verifies() -> None:
    # 20 clients: 4 drop before sharing keys, then a quarter of the 16
    # left before sending their masked input.
    (record,) = tessera.simulate(
        clients=20, dim=16, graph="complete", threshold=8, drop={"share-keys": 0.2, "masked-input": 0.25}
    )
    assert record["outcome"] == "completed" and record["verified"], record
    assert record["dropped"]["share-keys"] == 4
    assert record["dropped"]["masked-input"] == 4
    assert record["survivors"] == 12
    assert record["k"] == 19 and record["t"] == 8
    # The same plan as strings, as --drop takes them.
    (again,) = tessera.simulate(
        clients=20, dim=16, graph="complete", threshold=8, drop=["share-keys=0.2", "masked-input=0.25"]
    )
    assert again["dropped"] == record["dropped"] and again["survivors"] == 12
    (none,) = tessera.simulate(clients=20, dim=16, drop={})
    assert none["survivors"] == 20 and set(none["dropped"].values()) <= {0}


def test_the_cli_warnings_are_python_warnings() -> None:
    kwargs = dict(clients=10, dim=4, graph="complete", threshold=8, drop={"share-keys": 0.5})
    with pytest.warns(UserWarning) as caught:
        (record,) = tessera.simulate(**kwargs)
    assert record["outcome"] == "aborted" and record["abort_stage"] is not None
    ours = [str(w.message) for w in caught]
    theirs = [line.removeprefix("warning: ") for line in cli(kwargs).stderr.splitlines()]
    assert ours == theirs and any("every round will abort" in w for w in ours), (ours, theirs)
    # A threshold below the floor runs, marked insecure, with its reason.
    with pytest.warns(UserWarning, match="not secure"):
        (weak,) = tessera.simulate(clients=10, dim=4, graph="complete", threshold=2, corrupt_rate=0.3)
    assert weak["secure"] is False and weak["insecure_reasons"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(clients=10, neighbours=3),
        dict(graph="complete", neighbours=4),
        dict(clients=10, graph="complete", threshold=11),
        dict(drop={"consistency-check": 0.1}),
        # Refused by the round configuration, not the planning.
        dict(clients=24, neighbours=12, threat_model="malicious-server"),
    ],
)
def test_a_refused_plan_raises_invalid_input_with_the_cli_message(kwargs: Dict[str, Any]) -> None:
    result = cli(kwargs)
    assert result.returncode == 2, result.stderr
    with warnings.catch_warnings(record=True), pytest.raises(tessera.InvalidInput) as raised:
        warnings.simplefilter("always")
        tessera.simulate(**kwargs)
    # The last line: the warnings (as Python warnings here) come first.
    assert result.stderr.strip().splitlines()[-1] == f"error: {raised.value}"


# The drop and rate parsers are the CLI's own (the library's); the names
# the CLI takes through its argument parser's value lists, which word
# their refusal differently.
@pytest.mark.parametrize(
    "kwargs, parser_says, cli_says_the_same",
    [
        (dict(drop={"bogus": 0.1}), "unknown stage 'bogus'", True),
        (dict(drop=["masked-input=1.5"]), "fraction for masked-input must be in [0, 1], got 1.5", True),
        (dict(dropout_rate=1.0), "must be a fraction in [0, 1), got 1", True),
        (dict(corrupt_rate=-0.5), "must be a fraction in [0, 1), got -0.5", True),
        (dict(faults="loss=2"), 'faults "loss=2": expected', True),
        (dict(threat_model="paranoid"), 'unknown threat model "paranoid"', False),
        (dict(prg="rot13"), 'unknown mask PRG "rot13"', False),
        (dict(graph="ring"), "unknown graph 'ring'", False),
    ],
)
def test_a_bad_value_raises_invalid_input_naming_the_flag(
    kwargs: Dict[str, Any], parser_says: str, cli_says_the_same: bool
) -> None:
    with pytest.raises(tessera.InvalidInput, match="for --") as raised:
        tessera.simulate(clients=5, dim=2, **kwargs)
    assert parser_says in str(raised.value)
    result = cli(kwargs)
    assert result.returncode == 2, result.stderr
    assert (parser_says in result.stderr) == cli_says_the_same, result.stderr


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(clients=1), "--clients"),
        (dict(clients=-3), "--clients"),
        (dict(dim=0), "--dim"),
        (dict(bits=33), "--bits"),
        (dict(bits=300), "--bits"),
        (dict(rounds=0), "--rounds"),
        (dict(seed=-1), "--seed"),
        (dict(seed=2**64), "--seed"),
        (dict(threads=0), "--threads"),
        (dict(clients=True), "--clients"),
        (dict(clients="10"), "--clients"),
        (dict(drop=[0.1]), "--drop"),
    ],
)
def test_out_of_range_values_raise_invalid_input(kwargs: Dict[str, Any], flag: str) -> None:
    base = dict(clients=5, dim=2)
    base.update(kwargs)
    with pytest.raises(tessera.InvalidInput, match=flag):
        tessera.simulate(**base)


def test_the_defaults_are_the_commands() -> None:
    native = _native_defaults()
    for name, parameter in inspect.signature(tessera.simulate).parameters.items():
        if name in ("rounds", "threads", "drop"):
            continue
        assert parameter.default == native[name], name
    # drop=None is the command's default plan, as the docstring says.
    assert native["drop"] == [("masked-input", 0.1)]
    assert "``None``: 10% at\n            masked-input" in tessera.simulate.__doc__
    assert inspect.signature(tessera.simulate).parameters["rounds"].default == 1


def _native_defaults() -> Dict[str, Any]:
    from tessera import _native

    return dict(_native.simulate_defaults())


def test_every_keyword_is_documented() -> None:
    doc = tessera.simulate.__doc__
    for name in inspect.signature(tessera.simulate).parameters:
        assert f"\n        {name}: " in doc, name
