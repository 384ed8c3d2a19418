"""tessera.privacy with mechanism="dp-ftrl": DP-FTRL's tree-aggregation
accountant, against Google dp-accounting's table
(dp/tests/data/dp_ftrl_reference.csv), its inverses, and the arguments it
refuses, as ``tessera privacy --mechanism dp-ftrl``."""

import csv
from pathlib import Path

import pytest

import tessera

REFERENCE = Path(__file__).resolve().parents[2] / "dp" / "tests" / "data" / "dp_ftrl_reference.csv"


def reference_rows():
    lines = [l for l in REFERENCE.read_text().splitlines() if not l.startswith("#")]
    return list(csv.DictReader(lines))


def test_dp_ftrl_epsilon_matches_dp_accounting():
    rows = reference_rows()
    assert len(rows) == 36
    for row in rows:
        got = tessera.privacy.epsilon(
            mechanism="dp-ftrl",
            noise_multiplier=float(row["noise_multiplier"]),
            steps_per_epoch=int(row["steps_per_epoch"]),
            epochs=int(row["epochs"]),
            delta=float(row["delta"]),
        )
        assert got.epsilon == pytest.approx(float(row["epsilon"]), rel=1e-6), row
        assert got.order > 1


def test_dp_ftrl_noise_and_rounds_invert_epsilon():
    z = tessera.privacy.noise(mechanism="dp-ftrl", target_epsilon=8.0, steps_per_epoch=16, epochs=5, delta=1e-5)
    eps = tessera.privacy.epsilon(mechanism="dp-ftrl", noise_multiplier=z, steps_per_epoch=16, epochs=5, delta=1e-5)
    assert 8.0 * (1 - 1e-6) < eps.epsilon <= 8.0
    n = tessera.privacy.rounds(mechanism="dp-ftrl", noise_multiplier=3.0, target_epsilon=11.5, steps_per_epoch=15, delta=1e-5)
    # 10 whole trees spend 11.44 (the reference), so at least 150 rounds fit,
    # but not 11 whole trees.
    assert 150 <= n < 165
    assert tessera.privacy.epsilon(
        mechanism="dp-ftrl", noise_multiplier=3.0, steps_per_epoch=15, epochs=n // 15 + 1, delta=1e-5
    ).epsilon > 11.5


def test_the_default_mechanism_is_unchanged_and_foreign_arguments_are_refused():
    fedavg = tessera.privacy.epsilon(noise_multiplier=1.1, sampling_rate=0.01, rounds=1000, delta=1e-5)
    same = tessera.privacy.epsilon(
        mechanism="dp-fedavg", noise_multiplier=1.1, sampling_rate=0.01, rounds=1000, delta=1e-5
    )
    assert fedavg == same
    ftrl = dict(mechanism="dp-ftrl", noise_multiplier=1.5, steps_per_epoch=15, delta=1e-5)
    with pytest.raises(tessera.InvalidInput, match="not used by mechanism='dp-ftrl'"):
        tessera.privacy.epsilon(epochs=2, rounds=30, **ftrl)
    with pytest.raises(tessera.InvalidInput, match="not used by mechanism='dp-ftrl'"):
        tessera.privacy.epsilon(epochs=2, sampling_rate=0.1, **ftrl)
    with pytest.raises(tessera.InvalidInput, match="needs steps_per_epoch and epochs"):
        tessera.privacy.epsilon(**ftrl)
    with pytest.raises(tessera.InvalidInput, match="epochs must be at least 1"):
        tessera.privacy.epsilon(epochs=0, **ftrl)
    with pytest.raises(tessera.InvalidInput, match="are for mechanism='dp-ftrl'"):
        tessera.privacy.epsilon(noise_multiplier=1.1, sampling_rate=0.01, rounds=10, epochs=3, delta=1e-5)
    with pytest.raises(tessera.InvalidInput, match="unknown mechanism"):
        tessera.privacy.rounds(mechanism="dp-sgd", noise_multiplier=1.0, target_epsilon=1.0, delta=1e-5)
