//! The privacy ledger: the server's durable, append-only record of how much
//! differential privacy each published model has spent.
//!
//! Every published aggregate is one DP release. Before a round starts the
//! server asks [`PrivacyLedger::can_spend`] whether one more such round stays
//! within the job's ε budget (at the job's δ); after it publishes, it calls
//! [`PrivacyLedger::record`], which composes the round's Rényi DP curve with
//! all earlier rounds (RDP adds up per order) and stores the ε spent so far.
//! The ledger keeps the accumulated RDP per order over
//! [`DEFAULT_ORDERS`], so recording is O(orders), not O(rounds).
//!
//! # Against whom
//!
//! Every entry names the adversary its ε holds against:
//! - `server`: distributed DP. The noise is in the sum before the server
//!   sees it, carried by the honest contributors alone (the `corrupt`
//!   clients the threat model lets collude with the server know their own
//!   noise and subtract it), so ε bounds what the server, and anyone
//!   downstream of it, learns about one client.
//! - `model-consumers`: central DP. The server sees the un-noised sum and
//!   noises it before publishing: ε bounds what consumers of the published
//!   model learn, and nothing about what the server learns. DP-FTRL's
//!   tree aggregation ([`Mechanism::TreeAggregation`]) is server-added
//!   noise too: its entries can only name this adversary (the ledger
//!   refuses a `server` claim for them, when recording and when loading).
//!
//! The cumulative ε after a round ([`LedgerEntry::epsilon_spent`]) holds
//! against the weakest adversary of the entries so far
//! ([`PrivacyLedger::holds_against`]): one central round and the ledger's
//! total says nothing about the server.
//!
//! Neighbouring datasets differ in one client's update, replaced by zero
//! (`zero-out-one`, dp-accounting's "replace special"): one client's
//! clipped contribution is the L2 sensitivity the accountant uses for every
//! mechanism here, and the noise clients add is the same on both sides
//! (see [`Neighbouring::ZeroOutOne`]).
//!
//! # JSON layout (version 2)
//!
//! The ledger serialises (with any serde format; the server uses JSON) as:
//!
//! ```text
//! {
//!   "version": 2,
//!   "budget_epsilon": 8.0,
//!   "delta": 1e-5,
//!   "entries": [
//!     { "event": "round-charge", "round": 1, "adversary": "model-consumers",
//!       "neighbouring": "zero-out-one",
//!       "mechanism": { "kind": "discrete-gaussian", "sigma": 72000.0, "l2_sensitivity": 65636.0 },
//!       "epsilon_spent": 0.21 },
//!     { "event": "round-charge", "round": 2, "adversary": "server",
//!       "neighbouring": "zero-out-one",
//!       "mechanism": { "kind": "skellam", "mu": 400.0, "l1": 30.0, "l2": 1.0 },
//!       "epsilon_spent": 2.3 },
//!     { "event": "round-charge", "round": 3, "adversary": "model-consumers",
//!       "neighbouring": "zero-out-one",
//!       "mechanism": { "kind": "gaussian", "noise_multiplier": 1.1, "sampling_rate": 1.0 },
//!       "epsilon_spent": 2.5, "migrated_from": 1 },
//!     { "event": "round-charge", "round": 4, "adversary": "model-consumers",
//!       "neighbouring": "zero-out-one",
//!       "mechanism": { "kind": "tree-aggregation", "sigma": 9000.0,
//!                      "l2_sensitivity": 6000.0, "step": 1 },
//!       "epsilon_spent": 3.1 }
//!   ]
//! }
//! ```
//!
//! The `tree-aggregation` kind (DP-FTRL, one entry per step of its tree)
//! was added without a new layout version: every ledger written before it
//! reads unchanged, and a build that predates it refuses a file holding
//! one (unknown `kind`) rather than misread it, as for `changes` below.
//!
//! `event` is the kind of entry: every entry is a `round-charge` (a
//! published round's release). Changes of the job's terms go in an
//! optional `changes` list after `entries`, absent while there are none
//! (so ledgers written before changes existed read unchanged, and a ledger
//! without changes is written byte for byte as before):
//!
//! ```text
//!   "changes": [
//!     { "event": "budget-change", "after_round": 3, "at_unix": 1767225600,
//!       "old": 8.0, "new": 5.0 },
//!     { "event": "delta-recompute", "after_round": 3, "at_unix": 1767225600,
//!       "old": 1e-5, "new": 1e-3 }
//!   ]
//! ```
//!
//! A `budget-change` ([`PrivacyLedger::set_budget`]) moves
//! `budget_epsilon`; a `delta-recompute`
//! ([`PrivacyLedger::recompute_at_delta`]) moves `delta` after every
//! entry's `epsilon_spent` was recomputed at the new δ from its stored
//! mechanism. `after_round` is the last charged round when the change was
//! made; each change's `old` is the previous change's `new` (of its kind),
//! and the last one's `new` is the ledger's current value. A `sealed`
//! change ([`PrivacyLedger::record_sealing`], at most one, `old` 0 and
//! `new` the authentication scheme) records that a ledger written
//! without authentication was found and sealed as found: what came
//! before it could have been edited undetectably. The layout
//! version stays 2: a build that predates `changes` refuses such a file
//! (unknown field) rather than run on terms it would not see. This build
//! refuses unknown fields and unknown event kinds rather than ignore them.
//!
//! `epsilon_spent` is the cumulative ε after that round, at `delta`, as
//! computed when the round was recorded. The accumulated RDP is not stored:
//! loading recomputes it from the entries (a pure function of them), so a
//! hand-edited or truncated file cannot carry an RDP curve that disagrees
//! with its entries. Loading refuses an unknown `version`, invalid
//! parameters and rounds that are not strictly increasing.
//!
//! # Migration from version 1
//!
//! Version 1 entries had only `round`, `mechanism` and `epsilon_spent`.
//! They are read and migrated, never silently: each gets
//! `"migrated_from": 1`, `event` `round-charge`, neighbouring
//! `zero-out-one` (what the accountant always computed), and the
//! adversary inferred from its mechanism, which in version 1 was
//! unambiguous: `gaussian` was central DP (`model-consumers`),
//! `discrete-gaussian` and `skellam` distributed DP (`server`). Version 1
//! charged distributed rounds for all survivors' noise, colluders'
//! included, so a migrated `server` ε may be lower than the colluding
//! server faces; the recorded values are kept as the historical record.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::accountant::{
    DEFAULT_ORDERS, discrete_gaussian_rho, rdp_subsampled_gaussian, rdp_to_epsilon, skellam_rdp,
    tree_depth,
};

/// The JSON layout version this code writes (it also reads, and migrates,
/// version 1).
pub const LEDGER_VERSION: u32 = 2;

/// Whom an entry's ε protects against (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Adversary {
    /// Consumers of the published model only: the server saw the
    /// un-noised sum (central DP).
    ModelConsumers,
    /// The server, colluding with up to the round's `corrupt` clients, and
    /// everyone downstream of it (distributed DP).
    Server,
}

impl Adversary {
    /// The kebab-case name written in the ledger.
    pub fn name(self) -> &'static str {
        match self {
            Adversary::ModelConsumers => "model-consumers",
            Adversary::Server => "server",
        }
    }
}

/// Which datasets the ε compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Neighbouring {
    /// Datasets that differ in one client's update, replaced by zero: the
    /// client still takes part, so its masks and (with distributed DP) its
    /// noise are in the sum either way, and the sensitivity is one client's
    /// clipped vector. This is the relation under which noise the clients
    /// add is accounted exactly: under add/remove-one the removed client's
    /// noise would go too, and the two sums would differ in variance, not
    /// only in mean. Server-added noise (central DP) has the same
    /// sensitivity under either relation. It is `dp-accounting`'s
    /// `REPLACE_SPECIAL`, the relation its DP-FTRL tree-aggregation
    /// accountant (and our reference table for it) uses as is.
    ZeroOutOne,
}

/// The kind of a ledger entry ([`LedgerEntry`]) or change
/// ([`LedgerChange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LedgerEvent {
    /// A published round's release, charged to the budget (an entry).
    RoundCharge,
    /// The operator changed the ε budget (a change: old and new budget).
    BudgetChange,
    /// The operator changed δ and every entry's ε was recomputed at the
    /// new δ from its stored mechanism (a change: old and new δ).
    DeltaRecompute,
    /// The ledger was found without authentication (written by a build
    /// that did not authenticate it) and sealed as found: the entries and
    /// changes before this one could have been edited before it, and
    /// nothing can tell. `old` and `new` are the authentication scheme's
    /// versions (0, none; 1, HMAC-SHA256 under the server's state key);
    /// recorded once.
    Sealed,
}

impl LedgerEvent {
    /// The kebab-case name written in the ledger.
    pub fn name(self) -> &'static str {
        match self {
            LedgerEvent::RoundCharge => "round-charge",
            LedgerEvent::BudgetChange => "budget-change",
            LedgerEvent::DeltaRecompute => "delta-recompute",
            LedgerEvent::Sealed => "sealed",
        }
    }
}

/// A change of the ledger's terms (its budget or its δ), recorded beside
/// the round charges so the history says when the terms moved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerChange {
    /// [`LedgerEvent::BudgetChange`] or [`LedgerEvent::DeltaRecompute`].
    pub event: LedgerEvent,
    /// The last charged round when the change was made (0: before any).
    pub after_round: u64,
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    /// The budget (or δ) before the change.
    pub old: f64,
    /// The budget (or δ) after the change.
    pub new: f64,
}

/// The DP mechanism used in one published round, with the parameters the
/// accountant needs. Serialised internally tagged by `"kind"`
/// (`"gaussian"`, `"discrete-gaussian"`, `"skellam"`,
/// `"tree-aggregation"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Mechanism {
    /// Central DP: Poisson-subsampled Gaussian noise of std
    /// `noise_multiplier × clip norm` added by the server.
    Gaussian {
        /// Noise std divided by the L2 clipping norm (`z`).
        noise_multiplier: f64,
        /// Probability each client is sampled into the round (`q`).
        sampling_rate: f64,
    },
    /// Distributed DP with discrete Gaussian noise; ρ = Δ²/(2σ²) zCDP.
    DiscreteGaussian {
        /// Scale of the discrete Gaussian in the released sum.
        sigma: f64,
        /// L2 sensitivity of one client's integer vector.
        l2_sensitivity: f64,
    },
    /// Distributed DP with Skellam noise (Agarwal, Kairouz, Liu 2021).
    Skellam {
        /// Variance of the Skellam noise per coordinate in the released sum.
        mu: f64,
        /// L1 sensitivity of one client's integer vector.
        l1: f64,
        /// L2 sensitivity of one client's integer vector.
        l2: f64,
    },
    /// DP-FTRL tree aggregation (Kairouz et al. 2021), one round: the
    /// server adds noise to the nodes of a binary tree over the rounds of
    /// an epoch and releases prefix sums built from the completed nodes.
    /// The round's RDP is `α Δ² (d(step) − d(step − 1)) / (2σ²)` with
    /// `d(r) = ceil(log2(r + 1))` ([`tree_depth`]): the released nodes that
    /// contain a leaf number one per level whose span `2^k` is at most the
    /// steps run, so after `r` steps a leaf lies in at most `d(r)` of them,
    /// and `d(step) − d(step − 1)` (1 when `step` is a power of two, else
    /// 0) is what this step adds to that bound. Summed over a tree's steps
    /// `1..=S` this is exactly `dp-accounting`'s
    /// `SingleEpochTreeAggregationDpEvent` at noise multiplier `σ/Δ`, so the
    /// ledger charges the tree as it releases it, never behind it. Sound
    /// only if each client is in at most one step per tree (the server's
    /// cohort sampler enforces that) and the ledger holds every step of the
    /// tree in order with the same `σ` and `Δ`: the ledger refuses a step
    /// that does not follow its predecessor (a skipped step would release
    /// nodes it never charged) and a change of `σ` or `Δ` inside a tree
    /// (the charge assumes every node has the same noise); a new tree
    /// starts at step 1. The noise is the server's, so the ε holds against
    /// `model-consumers` only: the ledger refuses a `server` claim.
    /// Neighbouring: zero-out-one, dp-accounting's `REPLACE_SPECIAL`, the
    /// relation of the reference accountant itself, so no conversion
    /// factor applies: replacing one client's update by zero changes each
    /// node containing its leaf by at most `Δ` and no other node.
    TreeAggregation {
        /// Std of each tree node's noise, in the released integer sum.
        sigma: f64,
        /// L2 sensitivity of one client's integer contribution (rounding included).
        l2_sensitivity: f64,
        /// This round's step within its tree, from 1.
        step: u64,
    },
}

impl Mechanism {
    /// The `kind` name written in the ledger.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gaussian { .. } => "gaussian",
            Self::DiscreteGaussian { .. } => "discrete-gaussian",
            Self::Skellam { .. } => "skellam",
            Self::TreeAggregation { .. } => "tree-aggregation",
        }
    }

    /// The only adversary this mechanism's ε can hold against, if it is
    /// fixed by the mechanism: tree aggregation's noise is added by the
    /// server, which sees the un-noised sums.
    fn forced_adversary(&self) -> Option<Adversary> {
        match self {
            Self::TreeAggregation { .. } => Some(Adversary::ModelConsumers),
            Self::Gaussian { .. } | Self::DiscreteGaussian { .. } | Self::Skellam { .. } => None,
        }
    }

    /// RDP of one round of this mechanism at `order`.
    fn rdp(&self, order: f64) -> f64 {
        match *self {
            Self::Gaussian {
                noise_multiplier,
                sampling_rate,
            } => rdp_subsampled_gaussian(sampling_rate, noise_multiplier, order),
            Self::DiscreteGaussian {
                sigma,
                l2_sensitivity,
            } => discrete_gaussian_rho(sigma, l2_sensitivity) * order,
            Self::Skellam { mu, l1, l2 } => skellam_rdp(mu, l1, l2, order),
            Self::TreeAggregation {
                sigma,
                l2_sensitivity,
                step,
            } => {
                let released = tree_depth(step) - tree_depth(step.saturating_sub(1));
                order * l2_sensitivity * l2_sensitivity * released as f64 / (2.0 * sigma * sigma)
            }
        }
    }

    fn validate(&self) -> Result<(), LedgerError> {
        let positive = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(LedgerError::InvalidMechanism { name, value: v })
            }
        };
        match *self {
            Self::Gaussian {
                noise_multiplier,
                sampling_rate,
            } => {
                positive("noise_multiplier", noise_multiplier)?;
                positive("sampling_rate", sampling_rate)?;
                if sampling_rate > 1.0 {
                    return Err(LedgerError::InvalidMechanism {
                        name: "sampling_rate",
                        value: sampling_rate,
                    });
                }
                Ok(())
            }
            Self::DiscreteGaussian {
                sigma,
                l2_sensitivity,
            } => {
                positive("sigma", sigma)?;
                positive("l2_sensitivity", l2_sensitivity)
            }
            Self::Skellam { mu, l1, l2 } => {
                positive("mu", mu)?;
                positive("l1", l1)?;
                positive("l2", l2)
            }
            Self::TreeAggregation {
                sigma,
                l2_sensitivity,
                step,
            } => {
                positive("sigma", sigma)?;
                positive("l2_sensitivity", l2_sensitivity)?;
                if step == 0 {
                    return Err(LedgerError::InvalidMechanism {
                        name: "step",
                        value: 0.0,
                    });
                }
                Ok(())
            }
        }
    }
}

/// One entry of the ledger: today always a published round's charge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LedgerEntry {
    /// The kind of entry.
    pub event: LedgerEvent,
    /// The round number (strictly increasing along the ledger; gaps are
    /// rounds that published nothing).
    pub round: u64,
    /// Whom this round's ε holds against.
    pub adversary: Adversary,
    /// Which datasets the ε compares.
    pub neighbouring: Neighbouring,
    /// The mechanism and parameters of that round's release.
    pub mechanism: Mechanism,
    /// Cumulative ε after this round, at the ledger's δ, against
    /// [`PrivacyLedger::holds_against`] of the entries up to here.
    pub epsilon_spent: f64,
    /// The layout version this entry was migrated from, if it was read
    /// from an older ledger (its adversary was then inferred).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrated_from: Option<u32>,
}

/// Why the ledger refused an operation.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The ε budget was not a positive finite number.
    #[error("privacy budget epsilon must be finite and > 0, got {0}")]
    InvalidBudget(f64),
    /// δ was outside `(0, 1)`.
    #[error("delta must be in (0, 1), got {0}")]
    InvalidDelta(f64),
    /// A mechanism parameter was out of range.
    #[error(
        "mechanism parameter {name} is invalid: {value} (must be finite and > 0; sampling_rate <= 1)"
    )]
    InvalidMechanism {
        /// The parameter's name.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A round was recorded at or before the last recorded round: the ledger
    /// is append-only.
    #[error("round {round} is not after the last recorded round {last}")]
    RoundNotIncreasing {
        /// The round that was offered.
        round: u64,
        /// The last round already in the ledger.
        last: u64,
    },
    /// δ cannot change: an entry's ε cannot be recomputed at another δ.
    #[error(
        "round {round}'s epsilon cannot be recomputed at another delta: it was migrated from a version {from} ledger, whose charges were accounted differently (its recorded epsilon is the historical record); keep the ledger's delta, or start a new data directory"
    )]
    NotRecomputable {
        /// The entry's round.
        round: u64,
        /// The layout version it was migrated from.
        from: u32,
    },
    /// The recorded changes do not agree with each other or with the
    /// ledger's terms.
    #[error("ledger change {index}: {problem}")]
    BadChange {
        /// Its position in `changes`.
        index: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// The entry claimed an adversary its mechanism cannot hold against
    /// (a tree-aggregation round claiming `server`: the server added the
    /// noise, so it saw the sums without it).
    #[error(
        "round {round}: a {mechanism} round's epsilon holds against {holds} only (the server adds its noise), not against {claimed}"
    )]
    WrongAdversary {
        /// The round.
        round: u64,
        /// The mechanism's `kind`.
        mechanism: &'static str,
        /// The adversary claimed.
        claimed: &'static str,
        /// The only adversary the mechanism's ε holds against.
        holds: &'static str,
    },
    /// A tree-aggregation step that does not continue its tree in the
    /// ledger (see [`Mechanism::TreeAggregation`]).
    #[error("round {round}: tree-aggregation step {step}: {problem}")]
    TreeStep {
        /// The round.
        round: u64,
        /// The step offered.
        step: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// A serialised ledger had a layout version this code does not know.
    #[error("unsupported ledger version {0} (this build reads versions 1 to {LEDGER_VERSION})")]
    UnsupportedVersion(u32),
    /// A serialised entry lacks a field its layout version requires, or
    /// has one its version does not have.
    #[error("ledger entry for round {round}: {problem}")]
    BadEntry {
        /// The entry's round.
        round: u64,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The append-only privacy ledger of one training job.
///
/// ```
/// use tessera_dp::ledger::{Mechanism, PrivacyLedger};
/// use tessera_dp::ledger::Adversary;
/// let mut ledger = PrivacyLedger::new(2.0, 1e-5)?;
/// let round = Mechanism::DiscreteGaussian { sigma: 4.0, l2_sensitivity: 1.0 };
/// let mut r = 0;
/// while ledger.can_spend(&round) {
///     r += 1;
///     ledger.record(r, round, Adversary::Server)?;
/// }
/// assert!(ledger.spent() <= 2.0);
/// assert_eq!(ledger.holds_against(), Some(Adversary::Server));
/// // Rounds only move forward.
/// assert!(ledger.record(r, round, Adversary::Server).is_err());
/// # Ok::<(), tessera_dp::ledger::LedgerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LedgerJson", into = "LedgerJson")]
pub struct PrivacyLedger {
    budget_epsilon: f64,
    delta: f64,
    entries: Vec<LedgerEntry>,
    /// Changes of the budget or δ, oldest first.
    changes: Vec<LedgerChange>,
    /// Accumulated RDP of all entries, per order of [`DEFAULT_ORDERS`].
    rdp: Vec<f64>,
}

impl PrivacyLedger {
    /// An empty ledger for a job allowed to spend `budget_epsilon` at
    /// `delta`.
    pub fn new(budget_epsilon: f64, delta: f64) -> Result<Self, LedgerError> {
        if !(budget_epsilon.is_finite() && budget_epsilon > 0.0) {
            return Err(LedgerError::InvalidBudget(budget_epsilon));
        }
        if !(delta > 0.0 && delta < 1.0) {
            return Err(LedgerError::InvalidDelta(delta));
        }
        Ok(Self {
            budget_epsilon,
            delta,
            entries: Vec::new(),
            changes: Vec::new(),
            rdp: vec![0.0; DEFAULT_ORDERS.len()],
        })
    }

    /// The job's ε budget.
    pub fn budget_epsilon(&self) -> f64 {
        self.budget_epsilon
    }

    /// The δ at which every ε in the ledger is stated.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// The recorded rounds, oldest first.
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// The recorded changes of the budget and of δ, oldest first.
    pub fn changes(&self) -> &[LedgerChange] {
        &self.changes
    }

    /// The accumulated RDP per order of
    /// [`DEFAULT_ORDERS`].
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// ε spent so far at the ledger's δ (0 for an empty ledger).
    pub fn spent(&self) -> f64 {
        self.entries.last().map_or(0.0, |e| e.epsilon_spent)
    }

    /// Whom [`spent`](Self::spent) holds against: the weakest adversary of
    /// all entries (one central round and the total protects only against
    /// the model's consumers); `None` for an empty ledger.
    pub fn holds_against(&self) -> Option<Adversary> {
        Self::weakest(&self.entries)
    }

    /// The weakest adversary of `entries`, as [`Self::holds_against`].
    pub fn weakest(entries: &[LedgerEntry]) -> Option<Adversary> {
        entries.iter().map(|e| e.adversary).min()
    }

    /// Whether any entry was migrated from an older layout.
    pub fn migrated(&self) -> bool {
        self.entries.iter().any(|e| e.migrated_from.is_some())
    }

    /// The accumulated curve plus one round of `mechanism`.
    fn composed_with(&self, mechanism: &Mechanism) -> Vec<f64> {
        self.rdp
            .iter()
            .zip(DEFAULT_ORDERS)
            .map(|(acc, &order)| acc + mechanism.rdp(order))
            .collect()
    }

    /// Whether one more round of `next` keeps the total within budget: the
    /// question a server asks before starting a round, so a job stops
    /// before it would pass its budget. Invalid parameters, and a
    /// tree-aggregation step that would not continue its tree, answer
    /// `false`.
    pub fn can_spend(&self, next: &Mechanism) -> bool {
        if next.validate().is_err()
            || self
                .check_tree_step(self.last_round().saturating_add(1), next)
                .is_err()
        {
            return false;
        }
        let rdp = self.composed_with(next);
        rdp_to_epsilon(DEFAULT_ORDERS, &rdp, self.delta).0 <= self.budget_epsilon
    }

    /// The last charged round (0 for an empty ledger).
    fn last_round(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.round)
    }

    /// Records `event` from `old` to `new` at `at_unix`.
    fn push_change(
        &mut self,
        event: LedgerEvent,
        old: f64,
        new: f64,
        at_unix: u64,
    ) -> LedgerChange {
        let change = LedgerChange {
            event,
            after_round: self.last_round(),
            at_unix,
            old,
            new,
        };
        self.changes.push(change);
        change
    }

    /// Sets the ε budget to `budget` and records the change (made at
    /// `at_unix`, seconds since the Unix epoch); `None` if the budget is
    /// already `budget`. Whether a change is allowed (a raise, say) is the
    /// caller's policy: the ledger records what was decided.
    pub fn set_budget(
        &mut self,
        budget: f64,
        at_unix: u64,
    ) -> Result<Option<LedgerChange>, LedgerError> {
        if !(budget.is_finite() && budget > 0.0) {
            return Err(LedgerError::InvalidBudget(budget));
        }
        if budget == self.budget_epsilon {
            return Ok(None);
        }
        let old = self.budget_epsilon;
        self.budget_epsilon = budget;
        Ok(Some(self.push_change(
            LedgerEvent::BudgetChange,
            old,
            budget,
            at_unix,
        )))
    }

    /// Restates the ledger at `delta`: every entry's cumulative ε is
    /// recomputed from the stored mechanisms with the same accountant that
    /// recorded it, and the change is recorded (made at `at_unix`); `None`
    /// if the ledger is already at `delta`. Refuses, changing nothing, if
    /// an entry was migrated from an older layout (its ε was accounted
    /// differently and is kept as the historical record).
    pub fn recompute_at_delta(
        &mut self,
        delta: f64,
        at_unix: u64,
    ) -> Result<Option<LedgerChange>, LedgerError> {
        if !(delta > 0.0 && delta < 1.0) {
            return Err(LedgerError::InvalidDelta(delta));
        }
        if delta == self.delta {
            return Ok(None);
        }
        if let Some(e) = self.entries.iter().find(|e| e.migrated_from.is_some()) {
            return Err(LedgerError::NotRecomputable {
                round: e.round,
                from: e.migrated_from.unwrap_or_default(),
            });
        }
        let mut rdp = vec![0.0; DEFAULT_ORDERS.len()];
        for e in &mut self.entries {
            for (acc, &order) in rdp.iter_mut().zip(DEFAULT_ORDERS) {
                *acc += e.mechanism.rdp(order);
            }
            e.epsilon_spent = rdp_to_epsilon(DEFAULT_ORDERS, &rdp, delta).0;
        }
        let old = self.delta;
        self.delta = delta;
        Ok(Some(self.push_change(
            LedgerEvent::DeltaRecompute,
            old,
            delta,
            at_unix,
        )))
    }

    /// Records that the ledger, found unauthenticated, was sealed as found
    /// (at `at_unix`), under authentication scheme `scheme` (see
    /// [`LedgerEvent::Sealed`]); `None` if a seal is already recorded.
    pub fn record_sealing(&mut self, scheme: u32, at_unix: u64) -> Option<LedgerChange> {
        if self.sealed_at().is_some() {
            return None;
        }
        Some(self.push_change(LedgerEvent::Sealed, 0.0, f64::from(scheme), at_unix))
    }

    /// The recorded sealing of an unauthenticated ledger, if any.
    pub fn sealed_at(&self) -> Option<&LedgerChange> {
        self.changes.iter().find(|c| c.event == LedgerEvent::Sealed)
    }

    /// The ledger is append-only: refuses a round at or before the last one.
    fn check_next_round(&self, round: u64) -> Result<(), LedgerError> {
        match self.entries.last() {
            Some(last) if round <= last.round => Err(LedgerError::RoundNotIncreasing {
                round,
                last: last.round,
            }),
            _ => Ok(()),
        }
    }

    /// A tree-aggregation step must continue its tree: step 1 starts one;
    /// step `n > 1` must directly follow the same tree's step `n − 1`
    /// (same σ and Δ) in the ledger. Other mechanisms pass.
    fn check_tree_step(&self, round: u64, mechanism: &Mechanism) -> Result<(), LedgerError> {
        let Mechanism::TreeAggregation {
            sigma,
            l2_sensitivity,
            step,
        } = *mechanism
        else {
            return Ok(());
        };
        if step <= 1 {
            return Ok(());
        }
        let bad = |problem| LedgerError::TreeStep {
            round,
            step,
            problem,
        };
        match self.entries.last().map(|e| e.mechanism) {
            Some(Mechanism::TreeAggregation {
                sigma: prev_sigma,
                l2_sensitivity: prev_l2,
                step: prev,
            }) if prev == step - 1 => {
                if prev_sigma == sigma && prev_l2 == l2_sensitivity {
                    Ok(())
                } else {
                    Err(bad(
                        "sigma and l2_sensitivity must stay the same within a tree (a change starts a new tree at step 1)",
                    ))
                }
            }
            _ => Err(bad(
                "does not follow the same tree's previous step in the ledger (a skipped step would release tree nodes it never charged); a new tree starts at step 1",
            )),
        }
    }

    /// Refuses an entry whose mechanism fixes another adversary.
    fn check_adversary(
        round: u64,
        mechanism: &Mechanism,
        adversary: Adversary,
    ) -> Result<(), LedgerError> {
        match mechanism.forced_adversary() {
            Some(holds) if holds != adversary => Err(LedgerError::WrongAdversary {
                round,
                mechanism: mechanism.name(),
                claimed: adversary.name(),
                holds: holds.name(),
            }),
            _ => Ok(()),
        }
    }

    /// Everything an entry must satisfy to be appended (when recorded and
    /// when read back from a file).
    fn check_entry(
        &self,
        round: u64,
        mechanism: &Mechanism,
        adversary: Adversary,
    ) -> Result<(), LedgerError> {
        mechanism.validate()?;
        self.check_next_round(round)?;
        Self::check_adversary(round, mechanism, adversary)?;
        self.check_tree_step(round, mechanism)
    }

    /// Records a published round's charge and returns its entry (with the
    /// cumulative ε), stating whom this round's ε holds against
    /// (neighbouring: zero-out-one, see [`Neighbouring`]). The round is recorded even
    /// if it passes the budget: the release has happened and the ledger
    /// must say so; use [`can_spend`](Self::can_spend) beforehand to avoid
    /// that.
    pub fn record(
        &mut self,
        round: u64,
        mechanism: Mechanism,
        adversary: Adversary,
    ) -> Result<LedgerEntry, LedgerError> {
        self.check_entry(round, &mechanism, adversary)?;
        let rdp = self.composed_with(&mechanism);
        let (epsilon_spent, _) = rdp_to_epsilon(DEFAULT_ORDERS, &rdp, self.delta);
        let entry = LedgerEntry {
            event: LedgerEvent::RoundCharge,
            round,
            adversary,
            neighbouring: Neighbouring::ZeroOutOne,
            mechanism,
            epsilon_spent,
            migrated_from: None,
        };
        self.rdp = rdp;
        self.entries.push(entry);
        Ok(entry)
    }
}

/// The serialised form (see the module docs for the layout).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerJson {
    version: u32,
    budget_epsilon: f64,
    delta: f64,
    entries: Vec<EntryJson>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    changes: Vec<LedgerChange>,
}

/// An entry as read: the fields of every layout version, checked against
/// the file's version in [`PrivacyLedger::try_from`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<LedgerEvent>,
    round: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adversary: Option<Adversary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    neighbouring: Option<Neighbouring>,
    mechanism: Mechanism,
    epsilon_spent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    migrated_from: Option<u32>,
}

impl From<LedgerEntry> for EntryJson {
    fn from(e: LedgerEntry) -> Self {
        Self {
            event: Some(e.event),
            round: e.round,
            adversary: Some(e.adversary),
            neighbouring: Some(e.neighbouring),
            mechanism: e.mechanism,
            epsilon_spent: e.epsilon_spent,
            migrated_from: e.migrated_from,
        }
    }
}

impl EntryJson {
    /// The entry of a `version` file: version 2 must state every field;
    /// version 1 has none of the new ones and is migrated (see the module
    /// docs), its adversary inferred from the mechanism.
    fn into_entry(self, version: u32) -> Result<LedgerEntry, LedgerError> {
        let bad = |problem| LedgerError::BadEntry {
            round: self.round,
            problem,
        };
        match version {
            1 => {
                if self.event.is_some()
                    || self.adversary.is_some()
                    || self.neighbouring.is_some()
                    || self.migrated_from.is_some()
                {
                    return Err(bad(
                        "a version 1 ledger has no event, adversary, neighbouring or migrated_from",
                    ));
                }
                let adversary = match self.mechanism {
                    // Version 1 used the Gaussian for central DP only, the
                    // integer noises for distributed DP only.
                    Mechanism::Gaussian { .. } => Adversary::ModelConsumers,
                    Mechanism::DiscreteGaussian { .. } | Mechanism::Skellam { .. } => {
                        Adversary::Server
                    }
                    Mechanism::TreeAggregation { .. } => {
                        return Err(bad("a version 1 ledger has no tree-aggregation entries"));
                    }
                };
                Ok(LedgerEntry {
                    event: LedgerEvent::RoundCharge,
                    round: self.round,
                    adversary,
                    neighbouring: Neighbouring::ZeroOutOne,
                    mechanism: self.mechanism,
                    epsilon_spent: self.epsilon_spent,
                    migrated_from: Some(1),
                })
            }
            _ => Ok(LedgerEntry {
                event: match self.event {
                    None => return Err(bad("no event")),
                    Some(LedgerEvent::RoundCharge) => LedgerEvent::RoundCharge,
                    Some(_) => {
                        return Err(bad("an entry is a round-charge; changes go in changes"));
                    }
                },
                round: self.round,
                adversary: self.adversary.ok_or_else(|| bad("no adversary"))?,
                neighbouring: self.neighbouring.ok_or_else(|| bad("no neighbouring"))?,
                mechanism: self.mechanism,
                epsilon_spent: self.epsilon_spent,
                migrated_from: self.migrated_from,
            }),
        }
    }
}

/// Recorded changes must be of a change kind, in round order, within the
/// charged rounds, each starting where the previous change of its kind
/// ended, the last ending at the ledger's `(budget, delta)`.
fn check_changes(
    changes: &[LedgerChange],
    last_round: u64,
    (budget, delta): (f64, f64),
) -> Result<(), LedgerError> {
    let mut current: [Option<f64>; 2] = [None, None];
    let mut after = 0;
    let mut sealed = false;
    for (index, c) in changes.iter().enumerate() {
        let bad = |problem| LedgerError::BadChange { index, problem };
        let slot = match c.event {
            LedgerEvent::BudgetChange => 0,
            LedgerEvent::DeltaRecompute => 1,
            LedgerEvent::Sealed => 2,
            LedgerEvent::RoundCharge => return Err(bad("a round charge is not a change")),
        };
        if c.after_round < after || c.after_round > last_round {
            return Err(bad(
                "after_round is out of order or past the last charged round",
            ));
        }
        after = c.after_round;
        if slot == 2 {
            if sealed || c.old != 0.0 || !(c.new >= 1.0 && c.new.fract() == 0.0) {
                return Err(bad(
                    "a ledger is sealed once, from scheme 0 to a scheme from 1",
                ));
            }
            sealed = true;
            continue;
        }
        if current[slot].is_some_and(|v| v != c.old) {
            return Err(bad("old does not match the previous change's new"));
        }
        let valid = match slot {
            0 => [c.old, c.new].iter().all(|v| v.is_finite() && *v > 0.0),
            _ => [c.old, c.new].iter().all(|v| *v > 0.0 && *v < 1.0),
        };
        if !valid {
            return Err(bad("old or new is out of range"));
        }
        current[slot] = Some(c.new);
    }
    if current[0].is_some_and(|b| b != budget) || current[1].is_some_and(|d| d != delta) {
        return Err(LedgerError::BadChange {
            index: changes.len().saturating_sub(1),
            problem: "the last change does not end at the ledger's budget and delta",
        });
    }
    Ok(())
}

impl From<PrivacyLedger> for LedgerJson {
    fn from(l: PrivacyLedger) -> Self {
        Self {
            version: LEDGER_VERSION,
            budget_epsilon: l.budget_epsilon,
            delta: l.delta,
            entries: l.entries.into_iter().map(EntryJson::from).collect(),
            changes: l.changes,
        }
    }
}

impl TryFrom<LedgerJson> for PrivacyLedger {
    type Error = LedgerError;

    /// Rebuilds the ledger, migrating a version 1 layout, re-validating
    /// every entry and recomputing the accumulated RDP; the stored
    /// `epsilon_spent` values are kept as written (they are the historical
    /// record).
    fn try_from(j: LedgerJson) -> Result<Self, LedgerError> {
        if !(1..=LEDGER_VERSION).contains(&j.version) {
            return Err(LedgerError::UnsupportedVersion(j.version));
        }
        let mut ledger = PrivacyLedger::new(j.budget_epsilon, j.delta)?;
        for e in j.entries {
            let e = e.into_entry(j.version)?;
            ledger.check_entry(e.round, &e.mechanism, e.adversary)?;
            ledger.rdp = ledger.composed_with(&e.mechanism);
            ledger.entries.push(e);
        }
        // The terms now are the last change's: start from the first
        // change's old values and replay them.
        check_changes(&j.changes, ledger.last_round(), (j.budget_epsilon, j.delta))?;
        ledger.changes = j.changes;
        Ok(ledger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accountant::{epsilon, zcdp_to_epsilon};

    /// A minimal self-describing serde data model (a JSON-shaped value tree),
    /// so the serialisation test needs no JSON crate: it checks exactly what
    /// `serde_json` would emit as object keys and values.
    mod tree {
        use serde::de::value::{MapDeserializer, SeqDeserializer};
        use serde::de::{self, IntoDeserializer, Visitor};
        use serde::ser::{self, Impossible, Serialize};
        use std::fmt;

        #[derive(Debug, Clone, PartialEq)]
        pub(super) enum Value {
            U64(u64),
            F64(f64),
            Str(String),
            Seq(Vec<Value>),
            Map(Vec<(String, Value)>),
        }

        impl Value {
            pub(super) fn get(&self, key: &str) -> Option<&Value> {
                match self {
                    Value::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                    _ => None,
                }
            }
            pub(super) fn keys(&self) -> Vec<&str> {
                match self {
                    Value::Map(m) => m.iter().map(|(k, _)| k.as_str()).collect(),
                    _ => Vec::new(),
                }
            }
        }

        #[derive(Debug)]
        pub(super) struct Error(String);
        impl fmt::Display for Error {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for Error {}
        impl ser::Error for Error {
            fn custom<T: fmt::Display>(msg: T) -> Self {
                Error(msg.to_string())
            }
        }
        impl de::Error for Error {
            fn custom<T: fmt::Display>(msg: T) -> Self {
                Error(msg.to_string())
            }
        }

        fn unsupported<T>(what: &str) -> Result<T, Error> {
            Err(Error(format!("unsupported in test tree: {what}")))
        }

        pub(super) struct Ser;
        pub(super) struct SeqSer(Vec<Value>);
        pub(super) struct StructSer(Vec<(String, Value)>);

        impl ser::Serializer for Ser {
            type Ok = Value;
            type Error = Error;
            type SerializeSeq = SeqSer;
            type SerializeTuple = Impossible<Value, Error>;
            type SerializeTupleStruct = Impossible<Value, Error>;
            type SerializeTupleVariant = Impossible<Value, Error>;
            type SerializeMap = Impossible<Value, Error>;
            type SerializeStruct = StructSer;
            type SerializeStructVariant = Impossible<Value, Error>;

            fn serialize_bool(self, _: bool) -> Result<Value, Error> {
                unsupported("bool")
            }
            fn serialize_i8(self, v: i8) -> Result<Value, Error> {
                self.serialize_i64(v.into())
            }
            fn serialize_i16(self, v: i16) -> Result<Value, Error> {
                self.serialize_i64(v.into())
            }
            fn serialize_i32(self, v: i32) -> Result<Value, Error> {
                self.serialize_i64(v.into())
            }
            fn serialize_i64(self, v: i64) -> Result<Value, Error> {
                u64::try_from(v)
                    .map(Value::U64)
                    .map_err(|_| Error("negative".into()))
            }
            fn serialize_u8(self, v: u8) -> Result<Value, Error> {
                Ok(Value::U64(v.into()))
            }
            fn serialize_u16(self, v: u16) -> Result<Value, Error> {
                Ok(Value::U64(v.into()))
            }
            fn serialize_u32(self, v: u32) -> Result<Value, Error> {
                Ok(Value::U64(v.into()))
            }
            fn serialize_u64(self, v: u64) -> Result<Value, Error> {
                Ok(Value::U64(v))
            }
            fn serialize_f32(self, v: f32) -> Result<Value, Error> {
                Ok(Value::F64(v.into()))
            }
            fn serialize_f64(self, v: f64) -> Result<Value, Error> {
                Ok(Value::F64(v))
            }
            fn serialize_char(self, v: char) -> Result<Value, Error> {
                Ok(Value::Str(v.to_string()))
            }
            fn serialize_str(self, v: &str) -> Result<Value, Error> {
                Ok(Value::Str(v.to_owned()))
            }
            fn serialize_bytes(self, _: &[u8]) -> Result<Value, Error> {
                unsupported("bytes")
            }
            fn serialize_none(self) -> Result<Value, Error> {
                unsupported("none")
            }
            fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<Value, Error> {
                v.serialize(self)
            }
            fn serialize_unit(self) -> Result<Value, Error> {
                unsupported("unit")
            }
            fn serialize_unit_struct(self, _: &'static str) -> Result<Value, Error> {
                unsupported("unit struct")
            }
            fn serialize_unit_variant(
                self,
                _: &'static str,
                _: u32,
                v: &'static str,
            ) -> Result<Value, Error> {
                Ok(Value::Str(v.to_owned()))
            }
            fn serialize_newtype_struct<T: ?Sized + Serialize>(
                self,
                _: &'static str,
                v: &T,
            ) -> Result<Value, Error> {
                v.serialize(self)
            }
            fn serialize_newtype_variant<T: ?Sized + Serialize>(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: &T,
            ) -> Result<Value, Error> {
                unsupported("newtype variant")
            }
            fn serialize_seq(self, len: Option<usize>) -> Result<SeqSer, Error> {
                Ok(SeqSer(Vec::with_capacity(len.unwrap_or(0))))
            }
            fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
                unsupported("tuple")
            }
            fn serialize_tuple_struct(
                self,
                _: &'static str,
                _: usize,
            ) -> Result<Self::SerializeTupleStruct, Error> {
                unsupported("tuple struct")
            }
            fn serialize_tuple_variant(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: usize,
            ) -> Result<Self::SerializeTupleVariant, Error> {
                unsupported("tuple variant")
            }
            fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
                unsupported("map")
            }
            fn serialize_struct(self, _: &'static str, len: usize) -> Result<StructSer, Error> {
                Ok(StructSer(Vec::with_capacity(len)))
            }
            fn serialize_struct_variant(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: usize,
            ) -> Result<Self::SerializeStructVariant, Error> {
                unsupported("struct variant")
            }
        }

        impl ser::SerializeSeq for SeqSer {
            type Ok = Value;
            type Error = Error;
            fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Error> {
                self.0.push(v.serialize(Ser)?);
                Ok(())
            }
            fn end(self) -> Result<Value, Error> {
                Ok(Value::Seq(self.0))
            }
        }

        impl ser::SerializeStruct for StructSer {
            type Ok = Value;
            type Error = Error;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), Error> {
                self.0.push((key.to_owned(), v.serialize(Ser)?));
                Ok(())
            }
            fn end(self) -> Result<Value, Error> {
                Ok(Value::Map(self.0))
            }
        }

        impl<'de> de::Deserializer<'de> for Value {
            type Error = Error;
            fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                match self {
                    Value::U64(v) => visitor.visit_u64(v),
                    Value::F64(v) => visitor.visit_f64(v),
                    Value::Str(v) => visitor.visit_string(v),
                    Value::Seq(v) => visitor.visit_seq(SeqDeserializer::new(v.into_iter())),
                    Value::Map(v) => visitor.visit_map(MapDeserializer::new(v.into_iter())),
                }
            }
            // A unit variant is its name, as in JSON.
            fn deserialize_enum<V: Visitor<'de>>(
                self,
                _: &'static str,
                _: &'static [&'static str],
                visitor: V,
            ) -> Result<V::Value, Error> {
                match self {
                    Value::Str(v) => visitor.visit_enum(v.into_deserializer()),
                    other => other.deserialize_any(visitor),
                }
            }
            // A present field is `Some`; absent ones never reach here.
            fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                visitor.visit_some(self)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf unit unit_struct newtype_struct seq tuple
                tuple_struct map struct identifier ignored_any
            }
        }

        impl IntoDeserializer<'_, Error> for Value {
            type Deserializer = Value;
            fn into_deserializer(self) -> Value {
                self
            }
        }
    }

    use tree::Value;

    fn to_tree<T: Serialize>(v: &T) -> Value {
        v.serialize(tree::Ser).expect("serialisable")
    }

    fn from_tree(v: Value) -> Result<PrivacyLedger, tree::Error> {
        PrivacyLedger::deserialize(v)
    }

    fn sample_ledger() -> PrivacyLedger {
        let mut l = PrivacyLedger::new(50.0, 1e-5).unwrap();
        l.record(
            1,
            Mechanism::Gaussian {
                noise_multiplier: 1.1,
                sampling_rate: 0.01,
            },
            Adversary::ModelConsumers,
        )
        .unwrap();
        l.record(
            2,
            Mechanism::DiscreteGaussian {
                sigma: 3.0,
                l2_sensitivity: 1.0,
            },
            Adversary::ModelConsumers,
        )
        .unwrap();
        l.record(
            5,
            Mechanism::Skellam {
                mu: 400.0,
                l1: 30.0,
                l2: 1.0,
            },
            Adversary::Server,
        )
        .unwrap();
        l
    }

    #[test]
    fn gaussian_rounds_match_the_accountant() {
        let m = Mechanism::Gaussian {
            noise_multiplier: 1.1,
            sampling_rate: 0.01,
        };
        let mut l = PrivacyLedger::new(100.0, 1e-5).unwrap();
        for r in 1..=50 {
            let e = l.record(r * 2, m, Adversary::ModelConsumers).unwrap();
            let want = epsilon(1.1, 0.01, r, 1e-5).unwrap().epsilon;
            assert!(
                (e.epsilon_spent - want).abs() <= 1e-12 * want,
                "round {r}: {} vs {want}",
                e.epsilon_spent
            );
        }
        assert_eq!(l.spent(), l.entries().last().unwrap().epsilon_spent);
    }

    #[test]
    fn discrete_gaussian_rounds_compose_as_zcdp() {
        // T rounds of σ = 2: ρ = T / 8, checked against the zCDP conversion.
        let m = Mechanism::DiscreteGaussian {
            sigma: 2.0,
            l2_sensitivity: 1.0,
        };
        let mut l = PrivacyLedger::new(100.0, 1e-6).unwrap();
        for t in 1..=10u32 {
            let e = l
                .record(u64::from(t), m, Adversary::ModelConsumers)
                .unwrap();
            let want = zcdp_to_epsilon(f64::from(t) / 8.0, 1e-6).0;
            assert!((e.epsilon_spent - want).abs() < 1e-9 * want);
        }
        // Reference value (dp_zcdp_discrete_reference.csv: sigma=2, T=10,
        // delta=1e-6, eps_rdp = 8.84687).
        assert!((l.spent() - 8.84687).abs() < 1e-4);
    }

    /// A tree epoch of 5 steps charges a discrete Gaussian's ρ at steps
    /// 1, 2 and 4 (depth 1, 2, 3) and nothing at 3 and 5: depth(5) = 3 of
    /// them in all, as one leaf is in 3 released nodes. Its JSON names the
    /// kind and reads back.
    #[test]
    fn tree_aggregation_charges_one_gaussian_per_new_depth() {
        let tree = |step| Mechanism::TreeAggregation {
            sigma: 2.0,
            l2_sensitivity: 1.0,
            step,
        };
        let gaussian = Mechanism::DiscreteGaussian {
            sigma: 2.0,
            l2_sensitivity: 1.0,
        };
        let mut l = PrivacyLedger::new(100.0, 1e-6).unwrap();
        let mut once = PrivacyLedger::new(100.0, 1e-6).unwrap();
        for step in 1..=5 {
            l.record(step, tree(step), Adversary::ModelConsumers)
                .unwrap();
        }
        for round in 1..=3 {
            once.record(round, gaussian, Adversary::ModelConsumers)
                .unwrap();
        }
        assert_eq!(l.rdp(), once.rdp());
        let spent: Vec<f64> = l.entries().iter().map(|e| e.epsilon_spent).collect();
        assert!(spent[0] < spent[1] && spent[1] == spent[2] && spent[2] < spent[3]);
        assert_eq!(spent[3], spent[4]);
        assert_eq!(tree(1).name(), "tree-aggregation");
        let json = serde_json::to_string(&l).unwrap();
        assert!(json.contains(r#""kind":"tree-aggregation""#), "{json}");
        let back: PrivacyLedger = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l);
        assert!(tree(0).validate().is_err(), "steps are 1-based");
    }

    #[test]
    fn can_spend_stops_before_the_budget() {
        let m = Mechanism::Gaussian {
            noise_multiplier: 1.0,
            sampling_rate: 0.05,
        };
        let mut l = PrivacyLedger::new(2.0, 1e-5).unwrap();
        let mut r = 0;
        while l.can_spend(&m) {
            r += 1;
            l.record(r, m, Adversary::ModelConsumers).unwrap();
        }
        let t = crate::accountant::max_rounds(1.0, 0.05, 2.0, 1e-5).unwrap();
        assert_eq!(r, t, "ledger and max_rounds disagree");
        assert!(l.spent() <= 2.0);
        // Recording past the budget is still recorded (it happened).
        let e = l.record(r + 1, m, Adversary::ModelConsumers).unwrap();
        assert!(e.epsilon_spent > 2.0);
        assert!(!l.can_spend(&Mechanism::Gaussian {
            noise_multiplier: -1.0,
            sampling_rate: 0.01
        }));
    }

    #[test]
    fn rounds_must_increase_and_parameters_be_valid() {
        let mut l = sample_ledger();
        let m = Mechanism::Gaussian {
            noise_multiplier: 1.0,
            sampling_rate: 0.1,
        };
        assert_eq!(
            l.record(5, m, Adversary::ModelConsumers),
            Err(LedgerError::RoundNotIncreasing { round: 5, last: 5 })
        );
        assert_eq!(
            l.record(3, m, Adversary::ModelConsumers),
            Err(LedgerError::RoundNotIncreasing { round: 3, last: 5 })
        );
        let before = l.clone();
        assert!(matches!(
            l.record(
                6,
                Mechanism::Gaussian {
                    noise_multiplier: 1.0,
                    sampling_rate: 1.5
                },
                Adversary::ModelConsumers
            ),
            Err(LedgerError::InvalidMechanism {
                name: "sampling_rate",
                ..
            })
        ));
        assert!(matches!(
            l.record(
                6,
                Mechanism::Skellam {
                    mu: f64::NAN,
                    l1: 1.0,
                    l2: 1.0
                },
                Adversary::Server
            ),
            Err(LedgerError::InvalidMechanism { name: "mu", .. })
        ));
        assert_eq!(l, before, "a refused record must not change the ledger");
        assert_eq!(
            PrivacyLedger::new(0.0, 1e-5),
            Err(LedgerError::InvalidBudget(0.0))
        );
        assert_eq!(
            PrivacyLedger::new(1.0, 1.0),
            Err(LedgerError::InvalidDelta(1.0))
        );
    }

    #[test]
    fn serde_round_trip_with_documented_field_names() {
        let l = sample_ledger();
        let v = to_tree(&l);
        assert_eq!(v.keys(), ["version", "budget_epsilon", "delta", "entries"]);
        assert_eq!(v.get("version"), Some(&Value::U64(2)));
        assert_eq!(v.get("budget_epsilon"), Some(&Value::F64(50.0)));
        assert_eq!(v.get("delta"), Some(&Value::F64(1e-5)));
        let Some(Value::Seq(entries)) = v.get("entries") else {
            panic!("entries is not a list: {v:?}")
        };
        assert_eq!(entries.len(), 3);
        for e in entries {
            assert_eq!(
                e.keys(),
                [
                    "event",
                    "round",
                    "adversary",
                    "neighbouring",
                    "mechanism",
                    "epsilon_spent"
                ]
            );
            assert_eq!(e.get("event"), Some(&Value::Str("round-charge".into())));
            assert_eq!(
                e.get("neighbouring"),
                Some(&Value::Str("zero-out-one".into()))
            );
        }
        assert_eq!(
            entries[1].get("adversary"),
            Some(&Value::Str("model-consumers".into()))
        );
        assert_eq!(
            entries[2].get("adversary"),
            Some(&Value::Str("server".into()))
        );
        let mech: Vec<_> = entries
            .iter()
            .map(|e| e.get("mechanism").unwrap())
            .collect();
        assert_eq!(
            mech[0].keys(),
            ["kind", "noise_multiplier", "sampling_rate"]
        );
        assert_eq!(mech[0].get("kind"), Some(&Value::Str("gaussian".into())));
        assert_eq!(mech[1].keys(), ["kind", "sigma", "l2_sensitivity"]);
        assert_eq!(
            mech[1].get("kind"),
            Some(&Value::Str("discrete-gaussian".into()))
        );
        assert_eq!(mech[2].keys(), ["kind", "mu", "l1", "l2"]);
        assert_eq!(mech[2].get("kind"), Some(&Value::Str("skellam".into())));
        assert_eq!(entries[2].get("round"), Some(&Value::U64(5)));

        let back = from_tree(v).expect("deserialises");
        assert_eq!(back, l);
        assert_eq!(back.rdp(), l.rdp());
    }

    #[test]
    fn json_round_trip_is_stable() {
        let l = sample_ledger();
        let json = serde_json::to_string(&l).unwrap();
        let back: PrivacyLedger = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["version"], 2);
        for key in ["budget_epsilon", "delta", "entries"] {
            assert!(value.get(key).is_some(), "missing {key}: {json}");
        }
        let entry = &value["entries"][0];
        for key in [
            "event",
            "round",
            "adversary",
            "neighbouring",
            "mechanism",
            "epsilon_spent",
        ] {
            assert!(entry.get(key).is_some(), "missing {key}: {json}");
        }
        assert!(entry["mechanism"]["kind"].is_string());
        // Serialising the decoded ledger gives the same bytes.
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    #[test]
    fn deserialisation_rejects_bad_ledgers() {
        let v = to_tree(&sample_ledger());
        let Value::Map(fields) = v else {
            unreachable!()
        };
        let with = |key: &str, val: Value| {
            Value::Map(
                fields
                    .iter()
                    .map(|(k, x)| (k.clone(), if k == key { val.clone() } else { x.clone() }))
                    .collect(),
            )
        };
        let err = from_tree(with("version", Value::U64(3))).unwrap_err();
        assert!(
            err.to_string().contains("unsupported ledger version 3"),
            "{err}"
        );
        // A version 1 file cannot carry version 2 fields.
        let err = from_tree(with("version", Value::U64(1))).unwrap_err();
        assert!(
            err.to_string().contains("a version 1 ledger has no"),
            "{err}"
        );
        let err = from_tree(with("delta", Value::F64(0.0))).unwrap_err();
        assert!(err.to_string().contains("delta"), "{err}");
        // Swap the first two entries: rounds no longer increase.
        let Some((_, Value::Seq(mut entries))) =
            fields.iter().find(|(k, _)| k == "entries").cloned()
        else {
            unreachable!()
        };
        entries.swap(0, 1);
        let err = from_tree(with("entries", Value::Seq(entries))).unwrap_err();
        assert!(err.to_string().contains("not after"), "{err}");
        // Unknown fields are refused rather than silently dropped.
        let mut extra = fields.clone();
        extra.push(("rdp".into(), Value::Seq(vec![])));
        assert!(from_tree(Value::Map(extra)).is_err());
    }

    #[test]
    fn a_delta_recompute_restates_every_entry_with_the_accountant_and_is_recorded() {
        let m = Mechanism::Gaussian {
            noise_multiplier: 1.1,
            sampling_rate: 0.01,
        };
        let mut l = PrivacyLedger::new(100.0, 1e-5).unwrap();
        for r in 1..=5 {
            l.record(r, m, Adversary::ModelConsumers).unwrap();
        }
        assert_eq!(l.recompute_at_delta(1e-5, 7).unwrap(), None);
        let change = l.recompute_at_delta(1e-3, 7).unwrap().unwrap();
        assert_eq!(
            (change.event, change.after_round, change.at_unix),
            (LedgerEvent::DeltaRecompute, 5, 7)
        );
        assert_eq!((change.old, change.new, l.delta()), (1e-5, 1e-3, 1e-3));
        for (r, e) in (1..).zip(l.entries()) {
            let want = epsilon(1.1, 0.01, r, 1e-3).unwrap().epsilon;
            assert!((e.epsilon_spent - want).abs() <= 1e-12 * want, "round {r}");
        }
        // Recording goes on at the new delta, and the file keeps it all.
        l.record(6, m, Adversary::ModelConsumers).unwrap();
        let want = epsilon(1.1, 0.01, 6, 1e-3).unwrap().epsilon;
        assert!((l.spent() - want).abs() <= 1e-12 * want);
        let json = serde_json::to_string(&l).unwrap();
        assert!(json.contains(r#""event":"delta-recompute""#), "{json}");
        let back: PrivacyLedger = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l);
        assert_eq!(back.changes(), [change]);
    }

    #[test]
    fn migrated_entries_are_not_recomputed() {
        let mut l: PrivacyLedger = serde_json::from_str(V1).unwrap();
        let before = l.clone();
        assert_eq!(
            l.recompute_at_delta(1e-3, 0),
            Err(LedgerError::NotRecomputable { round: 1, from: 1 })
        );
        assert_eq!(l, before, "a refused recompute changes nothing");
    }

    #[test]
    fn budget_changes_are_recorded_and_checked_on_load() {
        let mut l = sample_ledger();
        assert_eq!(l.set_budget(50.0, 1).unwrap(), None);
        assert_eq!(l.set_budget(-1.0, 1), Err(LedgerError::InvalidBudget(-1.0)));
        let lower = l.set_budget(10.0, 1).unwrap().unwrap();
        let higher = l.set_budget(20.0, 2).unwrap().unwrap();
        assert_eq!(
            (lower.event, lower.after_round),
            (LedgerEvent::BudgetChange, 5)
        );
        assert_eq!(
            (lower.old, lower.new, higher.old, higher.new),
            (50.0, 10.0, 10.0, 20.0)
        );
        assert_eq!(l.budget_epsilon(), 20.0);
        let json = serde_json::to_string(&l).unwrap();
        let back: PrivacyLedger = serde_json::from_str(&json).unwrap();
        assert_eq!(back.changes(), [lower, higher]);
        // The budget must be where the changes left it.
        let edited = json.replacen(r#""budget_epsilon":20.0"#, r#""budget_epsilon":90.0"#, 1);
        assert_ne!(edited, json);
        let err = serde_json::from_str::<PrivacyLedger>(&edited).unwrap_err();
        assert!(err.to_string().contains("does not end at"), "{err}");
        // A ledger without changes is written as before: no `changes` key.
        let plain = serde_json::to_string(&sample_ledger()).unwrap();
        assert!(!plain.contains("changes"), "{plain}");
    }

    /// Sealing an unauthenticated ledger is recorded once, among the
    /// changes, and a file claiming two seals (or a seal from a scheme
    /// other than none) is refused.
    #[test]
    fn a_sealing_is_recorded_once_and_checked_on_load() {
        let mut l = sample_ledger();
        assert!(l.sealed_at().is_none());
        let seal = l.record_sealing(1, 7).unwrap();
        assert_eq!(
            (seal.event, seal.after_round, seal.old, seal.new),
            (LedgerEvent::Sealed, 5, 0.0, 1.0)
        );
        assert_eq!(l.record_sealing(1, 8), None);
        let lower = l.set_budget(10.0, 9).unwrap().unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert!(json.contains(r#""event":"sealed""#), "{json}");
        let back: PrivacyLedger = serde_json::from_str(&json).unwrap();
        assert_eq!(back.changes(), [seal, lower]);
        assert_eq!(back.sealed_at(), Some(&seal));
        let twice = json.replacen(
            r#""changes":["#,
            r#""changes":[{"event":"sealed","after_round":0,"at_unix":1,"old":0.0,"new":1.0},"#,
            1,
        );
        let err = serde_json::from_str::<PrivacyLedger>(&twice).unwrap_err();
        assert!(err.to_string().contains("sealed once"), "{err}");
    }

    /// The reference rows of `dp_ftrl_reference.csv`: (z, S, E, delta, ε).
    fn ftrl_reference() -> Vec<(f64, u64, u64, f64, f64)> {
        let path = format!(
            "{}/tests/data/dp_ftrl_reference.csv",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<_> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("noise_multiplier"))
            .map(|l| {
                let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
                (v[0], v[1] as u64, v[2] as u64, v[3], v[4])
            })
            .collect();
        assert_eq!(rows.len(), 36, "{path}");
        rows
    }

    fn tree(sigma: f64, l2_sensitivity: f64, step: u64) -> Mechanism {
        Mechanism::TreeAggregation {
            sigma,
            l2_sensitivity,
            step,
        }
    }

    /// Records `rounds` tree steps, restarting the tree every `s` steps.
    fn record_tree(l: &mut PrivacyLedger, from_round: u64, rounds: u64, s: u64, m: (f64, f64)) {
        for t in 0..rounds {
            let step = (from_round - 1 + t) % s + 1;
            l.record(
                from_round + t,
                tree(m.0, m.1, step),
                Adversary::ModelConsumers,
            )
            .unwrap();
        }
    }

    /// E full epochs of per-step entries compose to dp-accounting's
    /// SelfComposedDpEvent(SingleEpochTreeAggregationDpEvent(z, S), E), for
    /// every row of the reference, with σ = z Δ at a Δ that is not 1.
    #[test]
    fn a_full_epoch_of_tree_entries_charges_the_reference() {
        let l2 = 6553.7;
        for (z, s, e, delta, want) in ftrl_reference() {
            let mut l = PrivacyLedger::new(1e6, delta).unwrap();
            record_tree(&mut l, 1, s * e, s, (z * l2, l2));
            let rel = ((l.spent() - want) / want).abs();
            assert!(
                rel < 1e-6,
                "z={z} S={s} E={e} delta={delta}: ledger {}, reference {want}",
                l.spent()
            );
            assert_eq!(l.holds_against(), Some(Adversary::ModelConsumers));
        }
    }

    /// After any number of steps, including a partial last tree, the
    /// ledger's total is the accountant's tree epsilon after that many
    /// rounds: it charges the tree as the tree releases nodes.
    #[test]
    fn partial_epochs_are_charged_as_the_tree_releases_them() {
        let (z, s, delta) = (1.5, 15, 1e-5);
        let mut l = PrivacyLedger::new(1e6, delta).unwrap();
        let mut spent = Vec::new();
        for r in 1..=40u64 {
            let step = (r - 1) % s + 1;
            let e = l
                .record(r, tree(z, 1.0, step), Adversary::ModelConsumers)
                .unwrap();
            let want = crate::accountant::tree_epsilon_after_rounds(z, s, r, delta)
                .unwrap()
                .epsilon;
            assert!(
                (e.epsilon_spent - want).abs() <= 1e-12 * want,
                "round {r}: {} vs {want}",
                e.epsilon_spent
            );
            spent.push(e.epsilon_spent);
        }
        // Only steps 1, 2, 4, 8 of each tree complete a new level.
        let charged: Vec<u64> = (2..=40u64)
            .filter(|&r| spent[r as usize - 1] > spent[r as usize - 2])
            .collect();
        assert_eq!(charged, [2, 4, 8, 16, 17, 19, 23, 31, 32, 34, 38]);
    }

    /// A restart reads the ledger back from its JSON mid-tree: the totals
    /// and the RDP curve are kept, the tree continues where it was, and the
    /// result equals an uninterrupted ledger's.
    #[test]
    fn a_reloaded_ledger_keeps_the_tree_totals_and_continues_it() {
        let m = (4.0 * 17.0, 17.0);
        let mut whole = PrivacyLedger::new(100.0, 1e-5).unwrap();
        record_tree(&mut whole, 1, 26, 16, m);
        let mut first = PrivacyLedger::new(100.0, 1e-5).unwrap();
        record_tree(&mut first, 1, 21, 16, m);
        let json = serde_json::to_string(&first).unwrap();
        assert!(json.contains(r#""kind":"tree-aggregation""#), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["version"], 2);
        let mech = &value["entries"][20]["mechanism"];
        assert_eq!(
            mech.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["kind", "l2_sensitivity", "sigma", "step"]
        );
        assert_eq!(mech["step"], 5);
        let mut reloaded: PrivacyLedger = serde_json::from_str(&json).unwrap();
        assert_eq!(reloaded, first);
        assert_eq!(reloaded.rdp(), first.rdp());
        assert_eq!(reloaded.spent(), first.spent());
        record_tree(&mut reloaded, 22, 5, 16, m);
        assert_eq!(reloaded.spent(), whole.spent());
        assert_eq!(reloaded.rdp(), whole.rdp());
        assert_eq!(
            serde_json::to_string(&reloaded).unwrap(),
            serde_json::to_string(&whole).unwrap()
        );
    }

    /// A tree-aggregation entry claiming `server` is refused when recorded
    /// and when read from a file: the server added the noise, so the ε
    /// says nothing about what the server learnt.
    #[test]
    fn a_tree_entry_cannot_claim_to_hold_against_the_server() {
        let mut l = PrivacyLedger::new(10.0, 1e-5).unwrap();
        let before = l.clone();
        let err = l
            .record(1, tree(3.0, 1.0, 1), Adversary::Server)
            .unwrap_err();
        assert_eq!(
            err,
            LedgerError::WrongAdversary {
                round: 1,
                mechanism: "tree-aggregation",
                claimed: "server",
                holds: "model-consumers"
            }
        );
        assert!(
            err.to_string()
                .contains("holds against model-consumers only"),
            "{err}"
        );
        assert_eq!(l, before, "a refused record changes nothing");
        // A file edited to claim `server` for a tree round.
        l.record(1, tree(3.0, 1.0, 1), Adversary::ModelConsumers)
            .unwrap();
        let json = serde_json::to_string(&l).unwrap();
        let edited = json.replacen(
            r#""adversary":"model-consumers""#,
            r#""adversary":"server""#,
            1,
        );
        assert_ne!(edited, json);
        let err = serde_json::from_str::<PrivacyLedger>(&edited).unwrap_err();
        assert!(err.to_string().contains("not against server"), "{err}");
        // The other mechanisms' adversary is the caller's to state.
        l.record(
            2,
            Mechanism::DiscreteGaussian {
                sigma: 3.0,
                l2_sensitivity: 1.0,
            },
            Adversary::Server,
        )
        .unwrap();
    }

    /// A server that skips charging a tree step (or changes the noise
    /// inside a tree) would release nodes the ledger never charged: the
    /// ledger refuses it, when recording, in `can_spend` and on load.
    #[test]
    fn a_tree_step_must_continue_its_tree() {
        let mut l = PrivacyLedger::new(100.0, 1e-5).unwrap();
        l.record(1, tree(3.0, 1.0, 1), Adversary::ModelConsumers)
            .unwrap();
        // Step 3 after step 1 (step 2 uncharged): it would charge 0 while
        // the released node [1, 2] holds leaf 1 a second time.
        let before = l.clone();
        assert!(!l.can_spend(&tree(3.0, 1.0, 3)));
        let err = l
            .record(2, tree(3.0, 1.0, 3), Adversary::ModelConsumers)
            .unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::TreeStep {
                    round: 2,
                    step: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("skipped step"), "{err}");
        // Less noise inside the tree.
        assert!(!l.can_spend(&tree(2.0, 1.0, 2)));
        let err = l
            .record(2, tree(2.0, 1.0, 2), Adversary::ModelConsumers)
            .unwrap_err();
        assert!(err.to_string().contains("same within a tree"), "{err}");
        assert!(
            l.record(2, tree(3.0, 2.0, 2), Adversary::ModelConsumers)
                .is_err()
        );
        assert_eq!(l, before, "refused records change nothing");
        // A step after another mechanism's round, or a first entry at step 2.
        let mut other = sample_ledger();
        assert!(
            other
                .record(6, tree(3.0, 1.0, 2), Adversary::ModelConsumers)
                .is_err()
        );
        assert!(
            PrivacyLedger::new(10.0, 1e-5)
                .unwrap()
                .record(1, tree(3.0, 1.0, 2), Adversary::ModelConsumers)
                .is_err()
        );
        // Step 0 is not a step; step 1 always starts a new tree.
        assert!(matches!(
            l.record(2, tree(3.0, 1.0, 0), Adversary::ModelConsumers),
            Err(LedgerError::InvalidMechanism { name: "step", .. })
        ));
        assert!(l.can_spend(&tree(5.0, 1.0, 1)));
        l.record(2, tree(3.0, 1.0, 2), Adversary::ModelConsumers)
            .unwrap();
        l.record(3, tree(5.0, 1.0, 1), Adversary::ModelConsumers)
            .unwrap();
        // A file whose steps were edited to skip one is refused on load.
        let json = serde_json::to_string(&l).unwrap();
        let edited = json.replacen(r#""step":2"#, r#""step":3"#, 1);
        assert_ne!(edited, json);
        let err = serde_json::from_str::<PrivacyLedger>(&edited).unwrap_err();
        assert!(err.to_string().contains("tree-aggregation step 3"), "{err}");
    }

    #[test]
    fn a_version_1_ledger_cannot_hold_a_tree_entry() {
        let v1 = V1.replacen(
            r#"{ "kind": "skellam", "mu": 400.0, "l1": 30.0, "l2": 1.0 }"#,
            r#"{ "kind": "tree-aggregation", "sigma": 3.0, "l2_sensitivity": 1.0, "step": 1 }"#,
            1,
        );
        assert_ne!(v1, V1);
        let err = serde_json::from_str::<PrivacyLedger>(&v1).unwrap_err();
        assert!(err.to_string().contains("no tree-aggregation"), "{err}");
    }

    /// A version 1 file (as written before the schema had adversaries),
    /// verbatim.
    const V1: &str = r#"{
  "version": 1,
  "budget_epsilon": 50.0,
  "delta": 1e-5,
  "entries": [
    { "round": 1,
      "mechanism": { "kind": "gaussian", "noise_multiplier": 1.1, "sampling_rate": 0.01 },
      "epsilon_spent": 0.21 },
    { "round": 2,
      "mechanism": { "kind": "discrete-gaussian", "sigma": 3.0, "l2_sensitivity": 1.0 },
      "epsilon_spent": 1.9 },
    { "round": 5,
      "mechanism": { "kind": "skellam", "mu": 400.0, "l1": 30.0, "l2": 1.0 },
      "epsilon_spent": 2.3 }
  ]
}"#;

    #[test]
    fn a_version_1_ledger_is_migrated_visibly_with_the_adversary_its_mechanism_implies() {
        let l: PrivacyLedger = serde_json::from_str(V1).unwrap();
        assert!(l.migrated());
        let adversaries: Vec<_> = l.entries().iter().map(|e| e.adversary).collect();
        assert_eq!(
            adversaries,
            [
                Adversary::ModelConsumers,
                Adversary::Server,
                Adversary::Server
            ]
        );
        for e in l.entries() {
            assert_eq!(e.migrated_from, Some(1));
            assert_eq!(e.event, LedgerEvent::RoundCharge);
            assert_eq!(e.neighbouring, Neighbouring::ZeroOutOne);
        }
        // The historical values are kept; the curve is recomputed.
        assert_eq!(l.spent(), 2.3);
        assert_eq!(l.rdp(), sample_ledger().rdp());
        // One central round: the total holds against the model's
        // consumers only.
        assert_eq!(l.holds_against(), Some(Adversary::ModelConsumers));
        // Written back as version 2, the migration stays on record.
        let json: serde_json::Value = serde_json::to_value(&l).unwrap();
        assert_eq!(json["version"], 2);
        assert_eq!(json["entries"][0]["migrated_from"], 1);
        assert_eq!(json["entries"][1]["adversary"], "server");
        let again: PrivacyLedger = serde_json::from_value(json).unwrap();
        assert_eq!(again, l);
        // A ledger recorded now is not marked migrated.
        assert!(!sample_ledger().migrated());
        let json = serde_json::to_string(&sample_ledger()).unwrap();
        assert!(!json.contains("migrated_from"), "{json}");
    }

    #[test]
    fn version_2_entries_must_state_their_adversary_and_kind() {
        let v2 = serde_json::to_string(&sample_ledger()).unwrap();
        let missing = v2.replacen(r#""adversary":"model-consumers","#, "", 1);
        assert_ne!(missing, v2);
        let err = serde_json::from_str::<PrivacyLedger>(&missing).unwrap_err();
        assert!(err.to_string().contains("no adversary"), "{err}");
        let unknown = v2.replacen("round-charge", "budget-change", 1);
        assert!(serde_json::from_str::<PrivacyLedger>(&unknown).is_err());
    }
}
