//! The server strategy: which optimizer turns a round's mean update into
//! the next model, its hyper-parameters, and the FedProx term the server
//! asks clients to train with.
//!
//! The adaptive optimizers are those of Reddi et al., "Adaptive Federated
//! Optimization" (ICLR 2021, Algorithm 2); their defaults are the paper's:
//! `beta1 = 0.9`, `beta2 = 0.99`, and `tau = 1e-3` (the adaptivity, the
//! value of the paper's grid its best configurations most often use).
//! `server_lr` keeps its one default (1.0, FedAvg's "apply the mean as
//! is"); with an adaptive optimizer each coordinate moves by about
//! `server_lr` per round, so the paper's range, 0.01 to 0.1, is what to
//! give (the server warns at start when an adaptive optimizer runs at 1).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{AggregationSettings, ConfigError, invalid};

/// The server optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `x += server_lr * mean` (McMahan et al. 2017).
    FedAvg,
    /// FedAvg with server momentum `server_momentum` (Hsu, Qi and Brown
    /// 2019): smooths the noisy mean of a few clients.
    FedAvgM,
    /// Adam on the server (Reddi et al. 2021).
    FedAdam,
    /// Yogi on the server: Adam whose second moment grows additively, so
    /// it adapts less abruptly to a large update (Reddi et al. 2021).
    FedYogi,
    /// Adagrad on the server: the second moment sums every round's squared
    /// update (Reddi et al. 2021).
    FedAdagrad,
}

impl Strategy {
    /// Every strategy, in the order `--help` lists them.
    pub const ALL: [Strategy; 5] = [
        Strategy::FedAvg,
        Strategy::FedAvgM,
        Strategy::FedAdam,
        Strategy::FedYogi,
        Strategy::FedAdagrad,
    ];

    /// Its name in settings and records.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::FedAvg => "fedavg",
            Strategy::FedAvgM => "fedavgm",
            Strategy::FedAdam => "fedadam",
            Strategy::FedYogi => "fedyogi",
            Strategy::FedAdagrad => "fedadagrad",
        }
    }

    /// Whether it keeps the adaptive moments `m` and `v`.
    pub fn is_adaptive(self) -> bool {
        matches!(
            self,
            Strategy::FedAdam | Strategy::FedYogi | Strategy::FedAdagrad
        )
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "'{s}' is not a strategy: expected fedavg, fedavgm, fedadam, fedyogi or fedadagrad"
                )
            })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--strategy` values, listed in one line by `--help`.
#[cfg(feature = "clap")]
impl clap::ValueEnum for Strategy {
    fn value_variants<'a>() -> &'a [Self] {
        &Strategy::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// The paper's `beta1` (first-moment decay).
pub const DEFAULT_BETA1: f32 = 0.9;
/// The paper's `beta2` (second-moment decay; FedAdam and FedYogi).
pub const DEFAULT_BETA2: f32 = 0.99;
/// The adaptivity `tau`: smaller adapts more (see the module docs).
pub const DEFAULT_TAU: f32 = 1e-3;

/// The strategy and hyper-parameters a round ran with, as its record
/// keeps them (`tessera inspect` shows them): the settings that apply to
/// the strategy, the others absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StrategyRecord {
    /// The optimizer.
    pub strategy: Strategy,
    /// Its learning rate.
    pub server_lr: f32,
    /// FedAvgM's momentum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_momentum: Option<f32>,
    /// The adaptive optimizers' first-moment decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_beta1: Option<f32>,
    /// FedAdam's and FedYogi's second-moment decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_beta2: Option<f32>,
    /// The adaptive optimizers' adaptivity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tau: Option<f32>,
    /// The FedProx weight clients were asked to train with (0: none).
    pub proximal_mu: f64,
}

impl fmt::Display for StrategyRecord {
    /// `fedadam server_lr=0.1 beta1=0.9 beta2=0.99 tau=0.001 proximal_mu=0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} server_lr={}", self.strategy, self.server_lr)?;
        for (name, value) in [
            ("momentum", self.server_momentum),
            ("beta1", self.server_beta1),
            ("beta2", self.server_beta2),
            ("tau", self.server_tau),
        ] {
            if let Some(value) = value {
                write!(f, " {name}={value}")?;
            }
        }
        write!(f, " proximal_mu={}", self.proximal_mu)
    }
}

impl AggregationSettings {
    /// The strategy that runs: `strategy` as given, else FedAvgM when a
    /// momentum is given (as before `strategy` existed), else FedAvg.
    pub fn effective_strategy(&self) -> Strategy {
        match (self.strategy, self.server_momentum) {
            (Some(s), _) => s,
            (None, Some(_)) => Strategy::FedAvgM,
            (None, None) => Strategy::FedAvg,
        }
    }

    /// `beta1`, given or the paper's default.
    pub fn beta1(&self) -> f32 {
        self.server_beta1.unwrap_or(DEFAULT_BETA1)
    }

    /// `beta2`, given or the paper's default.
    pub fn beta2(&self) -> f32 {
        self.server_beta2.unwrap_or(DEFAULT_BETA2)
    }

    /// `tau`, given or the default.
    pub fn tau(&self) -> f32 {
        self.server_tau.unwrap_or(DEFAULT_TAU)
    }

    /// What a round record keeps of these settings.
    pub fn record(&self) -> StrategyRecord {
        let strategy = self.effective_strategy();
        let adaptive = strategy.is_adaptive();
        StrategyRecord {
            strategy,
            server_lr: self.server_lr,
            server_momentum: self.server_momentum,
            server_beta1: adaptive.then(|| self.beta1()),
            server_beta2: matches!(strategy, Strategy::FedAdam | Strategy::FedYogi)
                .then(|| self.beta2()),
            server_tau: adaptive.then(|| self.tau()),
            proximal_mu: self.proximal_mu,
        }
    }

    /// The strategy's settings: each in range, and none given that the
    /// strategy does not use (a setting silently ignored would be a
    /// setting the operator believes in).
    pub(super) fn validate_strategy(&self) -> Result<(), ConfigError> {
        let strategy = self.effective_strategy();
        match (strategy, self.server_momentum) {
            (Strategy::FedAvgM, None) => {
                return Err(invalid(
                    "strategy",
                    "fedavgm needs server_momentum (in [0, 1))",
                ));
            }
            (s, Some(m)) if s != Strategy::FedAvgM => {
                return Err(invalid(
                    "server_momentum",
                    format!(
                        "{m} is FedAvgM's momentum, but the strategy is {s}: drop server_momentum, or choose strategy fedavgm"
                    ),
                ));
            }
            _ => {}
        }
        let uses_beta2 = matches!(strategy, Strategy::FedAdam | Strategy::FedYogi);
        for (field, value, used) in [
            ("server_beta1", self.server_beta1, strategy.is_adaptive()),
            ("server_beta2", self.server_beta2, uses_beta2),
            ("server_tau", self.server_tau, strategy.is_adaptive()),
        ] {
            if let Some(v) = value
                && !used
            {
                return Err(invalid(
                    field,
                    format!(
                        "{v} is given, but strategy {strategy} does not use it (server_beta1 and server_tau are fedadam's, fedyogi's and fedadagrad's; server_beta2 fedadam's and fedyogi's)"
                    ),
                ));
            }
        }
        for (field, v) in [
            ("server_beta1", self.beta1()),
            ("server_beta2", self.beta2()),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(invalid(field, format!("{v} is not in [0, 1)")));
            }
        }
        let tau = self.tau();
        if !(tau.is_finite() && tau > 0.0) {
            return Err(invalid(
                "server_tau",
                format!("{tau} is not a positive number (it bounds the step where v is small)"),
            ));
        }
        let mu = self.proximal_mu;
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(invalid(
                "proximal_mu",
                format!("{mu} is not a non-negative number (0 turns FedProx off)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::config::tests::dev;

    /// `dev()` with the TOML `text` written over it.
    fn with(text: &str) -> ServerConfig {
        let mut c = dev();
        c.apply(crate::config::ServerOverrides::from_toml(text).unwrap());
        c
    }

    #[test]
    fn each_bad_strategy_setting_is_refused_by_name() {
        for (text, field, says) in [
            (
                "strategy = \"fedavgm\"",
                "strategy",
                "needs server_momentum",
            ),
            (
                "strategy = \"fedadam\"\nserver_momentum = 0.9",
                "server_momentum",
                "the strategy is fedadam",
            ),
            (
                "server_beta1 = 0.9",
                "server_beta1",
                "strategy fedavg does not use it",
            ),
            (
                "server_momentum = 0.5\nserver_tau = 0.01",
                "server_tau",
                "strategy fedavgm does not use it",
            ),
            (
                "strategy = \"fedadagrad\"\nserver_beta2 = 0.99",
                "server_beta2",
                "strategy fedadagrad does not use it",
            ),
            (
                "strategy = \"fedadam\"\nserver_beta1 = 1.0",
                "server_beta1",
                "not in [0, 1)",
            ),
            (
                "strategy = \"fedyogi\"\nserver_beta2 = -0.5",
                "server_beta2",
                "not in [0, 1)",
            ),
            (
                "strategy = \"fedadam\"\nserver_tau = 0.0",
                "server_tau",
                "not a positive",
            ),
            (
                "strategy = \"fedadam\"\nserver_tau = nan",
                "server_tau",
                "not a positive",
            ),
            ("proximal_mu = -0.1", "proximal_mu", "not a non-negative"),
            ("proximal_mu = inf", "proximal_mu", "not a non-negative"),
        ] {
            let err = with(text).validate().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("config: {field}: ")) && err.contains(says),
                "{text:?}: {err}"
            );
        }
        let err = crate::config::ServerOverrides::from_toml("strategy = \"fedsgd\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config: strategy: 'fedsgd' is not a strategy"),
            "{err}"
        );
    }

    #[test]
    fn good_settings_pass_and_the_record_keeps_what_the_strategy_uses() {
        let c = with("server_momentum = 0.5");
        c.validate().unwrap();
        assert_eq!(c.aggregation.effective_strategy(), Strategy::FedAvgM);
        assert_eq!(dev().aggregation.effective_strategy(), Strategy::FedAvg);
        let c =
            with("strategy = \"fedyogi\"\nserver_lr = 0.05\nserver_tau = 0.01\nproximal_mu = 0.1");
        c.validate().unwrap();
        let record = c.aggregation.record();
        assert_eq!(
            record,
            StrategyRecord {
                strategy: Strategy::FedYogi,
                server_lr: 0.05,
                server_momentum: None,
                server_beta1: Some(0.9),
                server_beta2: Some(0.99),
                server_tau: Some(0.01),
                proximal_mu: 0.1,
            }
        );
        assert_eq!(
            record.to_string(),
            "fedyogi server_lr=0.05 beta1=0.9 beta2=0.99 tau=0.01 proximal_mu=0.1"
        );
        let adagrad = with("strategy = \"fedadagrad\"").aggregation.record();
        assert_eq!(
            (adagrad.server_beta1, adagrad.server_beta2),
            (Some(0.9), None)
        );
    }
}
