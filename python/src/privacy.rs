//! `tessera.privacy`: the Rényi DP accountant of `tessera privacy`
//! (DP-FedAvg with Poisson sampling of clients, and DP-FTRL's tree
//! aggregation), the same functions of the `tessera-dp` crate the command
//! calls. Which mechanism, and the refusal of the other mechanism's
//! arguments, is decided in `tessera/privacy.py`.

use pyo3::prelude::*;
use tessera_dp::accountant;

use crate::errors::raise;

/// Epsilon spent by `rounds` rounds, and the Rényi order attaining it.
#[pyfunction]
#[pyo3(signature = (*, noise_multiplier, sampling_rate, rounds, delta))]
pub(crate) fn epsilon(
    noise_multiplier: f64,
    sampling_rate: f64,
    rounds: u64,
    delta: f64,
) -> PyResult<(f64, f64)> {
    accountant::epsilon(noise_multiplier, sampling_rate, rounds, delta)
        .map(|r| (r.epsilon, r.order))
        .map_err(|e| raise("InvalidInput", e.to_string()))
}

/// The smallest noise multiplier keeping `rounds` rounds within
/// `target_epsilon`.
#[pyfunction]
#[pyo3(signature = (*, target_epsilon, sampling_rate, rounds, delta))]
pub(crate) fn noise(
    target_epsilon: f64,
    sampling_rate: f64,
    rounds: u64,
    delta: f64,
) -> PyResult<f64> {
    accountant::noise_multiplier(target_epsilon, sampling_rate, rounds, delta)
        .map_err(|e| raise("InvalidInput", e.to_string()))
}

/// How many rounds fit within `target_epsilon`.
#[pyfunction]
#[pyo3(signature = (*, noise_multiplier, sampling_rate, target_epsilon, delta))]
pub(crate) fn rounds(
    noise_multiplier: f64,
    sampling_rate: f64,
    target_epsilon: f64,
    delta: f64,
) -> PyResult<u64> {
    accountant::max_rounds(noise_multiplier, sampling_rate, target_epsilon, delta)
        .map_err(|e| raise("InvalidInput", e.to_string()))
}

/// DP-FTRL (`--mechanism dp-ftrl`): epsilon of `epochs` trees of
/// `steps_per_epoch` steps, and the Rényi order attaining it.
#[pyfunction]
#[pyo3(signature = (*, noise_multiplier, steps_per_epoch, epochs, delta))]
pub(crate) fn tree_epsilon(
    noise_multiplier: f64,
    steps_per_epoch: u64,
    epochs: u64,
    delta: f64,
) -> PyResult<(f64, f64)> {
    accountant::tree_epsilon(noise_multiplier, steps_per_epoch, epochs, delta)
        .map(|r| (r.epsilon, r.order))
        .map_err(|e| raise("InvalidInput", e.to_string()))
}

/// DP-FTRL: the smallest noise multiplier keeping `epochs` trees within
/// `target_epsilon`.
#[pyfunction]
#[pyo3(signature = (*, target_epsilon, steps_per_epoch, epochs, delta))]
pub(crate) fn tree_noise(
    target_epsilon: f64,
    steps_per_epoch: u64,
    epochs: u64,
    delta: f64,
) -> PyResult<f64> {
    accountant::tree_noise_multiplier(target_epsilon, steps_per_epoch, epochs, delta)
        .map_err(|e| raise("InvalidInput", e.to_string()))
}

/// DP-FTRL: how many rounds (the last tree may be partial) fit within
/// `target_epsilon`.
#[pyfunction]
#[pyo3(signature = (*, noise_multiplier, steps_per_epoch, target_epsilon, delta))]
pub(crate) fn tree_rounds(
    noise_multiplier: f64,
    steps_per_epoch: u64,
    target_epsilon: f64,
    delta: f64,
) -> PyResult<u64> {
    accountant::tree_max_rounds(noise_multiplier, steps_per_epoch, target_epsilon, delta)
        .map_err(|e| raise("InvalidInput", e.to_string()))
}
