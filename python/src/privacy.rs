//! `tessera.privacy`: the Rényi DP accountant of `tessera privacy`
//! (DP-FedAvg with Poisson sampling of clients), the same functions of the
//! `tessera-dp` crate the command calls.

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
