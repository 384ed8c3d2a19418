//! The job's privacy terms at start: the ε budget and δ the operator gives
//! against those the data directory's ledger holds.
//!
//! The ledger's terms never lose silently to the flags, nor the flags to
//! the ledger:
//! - a lower budget applies at once and is recorded; if the ledger has
//!   already spent it, the server refuses to start (the lower budget stays
//!   recorded, so the job cannot run again under the old one without
//!   `--raise-budget`);
//! - a higher budget needs `--raise-budget` and is recorded;
//! - another δ needs `--recompute-delta`: every past ε is recomputed at the
//!   new δ from the ledger's per-round mechanisms (the accountant that
//!   recorded them), and the recompute is recorded. Without it, new models
//!   would carry a δ their ε was not computed at;
//! - DP off on a data directory with a ledger is refused: an un-noised
//!   model would be a release no ε in the ledger bounds.
//!
//! Unchanged terms write nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use tessera_dp::ledger::PrivacyLedger;
use tracing::warn;

use crate::ServeError;
use crate::config::{DpMode, DpSettings};
use crate::store::Store;

/// The ledger the job runs on (`None` without DP): a new one at the
/// configured terms, or the stored one with the configured terms applied
/// and recorded. Refuses, with the reason, what the rules above refuse.
pub(crate) fn ledger_at_start(
    dp: &DpSettings,
    store: &mut Store,
) -> Result<Option<PrivacyLedger>, ServeError> {
    if dp.mode == DpMode::Off {
        return match store.ledger() {
            None => Ok(None),
            // An un-noised model from a job that has spent privacy is an
            // unbounded release the ledger could not record: it would void
            // every epsilon the ledger states (and bypass its budget).
            Some(stored) => Err(ServeError::Privacy(format!(
                "{}: the data directory's ledger records a job with differential privacy (epsilon {:.3} spent of {} at delta {}); --dp off would publish models with no noise and no accounting. Pass --dp central or --dp distributed, or start a new data directory",
                store.dir().join("ledger.json").display(),
                stored.spent(),
                stored.budget_epsilon(),
                stored.delta()
            ))),
        };
    }
    let Some(stored) = store.ledger().cloned() else {
        return PrivacyLedger::new(dp.epsilon_budget, dp.delta)
            .map(Some)
            .map_err(|e| ServeError::Model(format!("privacy ledger: {e}")));
    };
    let file = store.dir().join("ledger.json");
    let refuse = |why: String| ServeError::Privacy(format!("{}: {why}", file.display()));
    let mut ledger = stored.clone();
    let now = unix_now();
    if dp.delta != stored.delta() {
        if !dp.recompute_delta {
            return Err(refuse(format!(
                "every epsilon in the ledger is stated at delta {}; --delta {} would label new models with a delta their epsilon was not computed at. Pass --recompute-delta to recompute the past epsilons at delta {} (recorded in the ledger), or keep --delta {}",
                stored.delta(),
                dp.delta,
                dp.delta,
                stored.delta()
            )));
        }
        ledger
            .recompute_at_delta(dp.delta, now)
            .map_err(|e| refuse(e.to_string()))?;
    }
    if dp.epsilon_budget > stored.budget_epsilon() && !dp.raise_budget {
        return Err(refuse(format!(
            "the ledger's epsilon budget is {}; raising it to {} needs --raise-budget (the raise is recorded in the ledger; epsilon spent so far: {:.3})",
            stored.budget_epsilon(),
            dp.epsilon_budget,
            ledger.spent()
        )));
    }
    ledger
        .set_budget(dp.epsilon_budget, now)
        .map_err(|e| refuse(e.to_string()))?;
    if ledger != stored {
        for c in &ledger.changes()[stored.changes().len()..] {
            warn!(
                event = c.event.name(),
                old = c.old,
                new = c.new,
                "privacy ledger: terms changed and recorded"
            );
        }
        store.amend_terms(&ledger)?;
    }
    // Also when nothing changed: a lowered budget recorded at an earlier
    // start stays spent.
    if ledger.spent() >= ledger.budget_epsilon() {
        return Err(refuse(format!(
            "epsilon {:.3} is already spent (at delta {}), which is at or above the epsilon budget {}: no round can run",
            ledger.spent(),
            ledger.delta(),
            ledger.budget_epsilon()
        )));
    }
    Ok(Some(ledger))
}

/// Seconds since the Unix epoch, for the change's record.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use tessera_dp::accountant::epsilon;
    use tessera_dp::ledger::{Adversary, LedgerEvent, Mechanism};

    use super::*;
    use crate::ServerConfig;
    use crate::config::{DpMode, NetworkSettings};
    use crate::model::Model;

    const Z: f64 = 2.0;
    const Q: f64 = 1.0;

    /// A data directory whose ledger (budget 8, δ 1e-5) charged three
    /// central rounds of z = 2; returns the ε they spent.
    fn three_charged_rounds(dir: &Path) -> f64 {
        let mut store = Store::open(dir, &dir_key(dir)).unwrap();
        store.init_model(&Model::zeros_flat(4)).unwrap();
        let mut ledger = PrivacyLedger::new(8.0, 1e-5).unwrap();
        let m = Mechanism::Gaussian {
            noise_multiplier: Z,
            sampling_rate: Q,
        };
        for r in 1..=3 {
            ledger.record(r, m, Adversary::ModelConsumers).unwrap();
        }
        store.charge(&ledger).unwrap();
        ledger.spent()
    }

    /// The state key the server started on `dir` uses (its default).
    fn dir_key(dir: &Path) -> crate::store::StateKey {
        let path = config(dir, 8.0, 1e-5).state_key_path();
        crate::store::StateKey::load_or_create(&path).unwrap().0
    }

    fn config(dir: &Path, budget: f64, delta: f64) -> ServerConfig {
        let mut c = ServerConfig {
            data_dir: dir.to_owned(),
            dim: None,
            network: NetworkSettings {
                insecure_dev: true,
                ..Default::default()
            },
            ..ServerConfig::default()
        };
        c.network.listen = "127.0.0.1:0".parse().unwrap();
        c.dp.mode = DpMode::Central;
        c.dp.epsilon_budget = budget;
        c.dp.delta = delta;
        c
    }

    fn stored(dir: &Path) -> PrivacyLedger {
        crate::store::inspect(dir).unwrap().ledger.unwrap()
    }

    fn ledger_bytes(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join("ledger.json")).unwrap()
    }

    async fn refused(c: ServerConfig) -> String {
        match crate::start(c).await {
            Ok(server) => {
                let _ = server.shutdown().await;
                panic!("the server started")
            }
            Err(e) => e.to_string(),
        }
    }

    /// The job must stop by itself (the budget), not wait for clients.
    async fn stops_by_itself(c: ServerConfig) {
        let server = crate::start(c).await.expect("starts");
        tokio::time::timeout(Duration::from_secs(10), server.wait())
            .await
            .expect("the job stops at the budget without running a round")
            .unwrap();
    }

    #[tokio::test]
    async fn a_lower_budget_already_spent_refuses_to_start_and_is_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let spent = three_charged_rounds(tmp.path());
        let budget = spent / 2.0;
        let err = refused(config(tmp.path(), budget, 1e-5)).await;
        assert!(
            err.contains(&format!("{spent:.3}")) && err.contains(&format!("{budget}")),
            "{err}"
        );
        let ledger = stored(tmp.path());
        assert_eq!(ledger.budget_epsilon(), budget);
        let change = ledger.changes()[0];
        assert_eq!(change.event, LedgerEvent::BudgetChange);
        assert_eq!(
            (change.old, change.new, change.after_round),
            (8.0, budget, 3)
        );
        assert!(change.at_unix > 0);
        // The same settings again: refused again, nothing new recorded.
        let before = ledger_bytes(tmp.path());
        refused(config(tmp.path(), budget, 1e-5)).await;
        assert_eq!(ledger_bytes(tmp.path()), before);
    }

    #[tokio::test]
    async fn a_lower_budget_above_the_spent_epsilon_applies_and_stops_the_job() {
        let tmp = tempfile::tempdir().unwrap();
        let spent = three_charged_rounds(tmp.path());
        // Room for no further round of the configured noise.
        let budget = spent + 1e-6;
        stops_by_itself(config(tmp.path(), budget, 1e-5)).await;
        let ledger = stored(tmp.path());
        assert_eq!(ledger.budget_epsilon(), budget);
        assert_eq!(ledger.entries().len(), 3, "no round ran");
        assert_eq!(ledger.changes().len(), 1);
        assert_eq!(ledger.changes()[0].new, budget);
    }

    #[tokio::test]
    async fn a_higher_budget_needs_raise_budget_and_is_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        three_charged_rounds(tmp.path());
        let before = ledger_bytes(tmp.path());
        let err = refused(config(tmp.path(), 20.0, 1e-5)).await;
        assert!(
            err.contains("--raise-budget") && err.contains("20"),
            "{err}"
        );
        assert_eq!(ledger_bytes(tmp.path()), before, "a refusal writes nothing");

        let mut raise = config(tmp.path(), 20.0, 1e-5);
        raise.dp.raise_budget = true;
        raise.rounds = Some(0);
        stops_by_itself(raise.clone()).await;
        let ledger = stored(tmp.path());
        assert_eq!(ledger.budget_epsilon(), 20.0);
        let change = ledger.changes()[0];
        assert_eq!(
            (change.event, change.old, change.new),
            (LedgerEvent::BudgetChange, 8.0, 20.0)
        );
        // Restarting with the same settings, with or without the flag,
        // records nothing new.
        let after = ledger_bytes(tmp.path());
        stops_by_itself(raise.clone()).await;
        raise.dp.raise_budget = false;
        stops_by_itself(raise).await;
        assert_eq!(ledger_bytes(tmp.path()), after);
    }

    #[tokio::test]
    async fn another_delta_needs_recompute_delta_which_restates_every_epsilon() {
        let tmp = tempfile::tempdir().unwrap();
        three_charged_rounds(tmp.path());
        let before = ledger_bytes(tmp.path());
        let err = refused(config(tmp.path(), 100.0, 1e-3)).await;
        assert!(
            err.contains("--recompute-delta") && err.contains("0.001"),
            "{err}"
        );
        assert_eq!(ledger_bytes(tmp.path()), before, "a refusal writes nothing");

        let mut recompute = config(tmp.path(), 8.0, 1e-3);
        recompute.dp.recompute_delta = true;
        recompute.rounds = Some(0);
        stops_by_itself(recompute.clone()).await;
        let ledger = stored(tmp.path());
        assert_eq!(ledger.delta(), 1e-3);
        for (r, e) in (1..).zip(ledger.entries()) {
            let want = epsilon(Z, Q, r, 1e-3).unwrap().epsilon;
            assert!((e.epsilon_spent - want).abs() <= 1e-12 * want, "round {r}");
        }
        let change = ledger.changes()[0];
        assert_eq!(
            (change.event, change.old, change.new),
            (LedgerEvent::DeltaRecompute, 1e-5, 1e-3)
        );
        let after = ledger_bytes(tmp.path());
        stops_by_itself(recompute).await;
        assert_eq!(ledger_bytes(tmp.path()), after, "nothing new recorded");
    }

    /// An operator's adversary who lowered the budget (or whose lowering
    /// someone wants undone) restarts with the old flags: the lowered
    /// budget is the ledger's now, so the old one is a raise and needs
    /// `--raise-budget`; nothing is written.
    #[tokio::test]
    async fn a_lowered_budget_does_not_come_back_with_the_old_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let spent = three_charged_rounds(tmp.path());
        stops_by_itself(config(tmp.path(), spent + 1e-6, 1e-5)).await;
        let before = ledger_bytes(tmp.path());
        let err = refused(config(tmp.path(), 8.0, 1e-5)).await;
        assert!(err.contains("--raise-budget"), "{err}");
        assert_eq!(ledger_bytes(tmp.path()), before);
    }

    /// `--recompute-delta` with a budget raise but no `--raise-budget`:
    /// the start is refused as a whole, and the recompute it came with is
    /// not recorded either (no half-applied terms).
    #[tokio::test]
    async fn an_unflagged_raise_voids_the_recompute_it_came_with() {
        let tmp = tempfile::tempdir().unwrap();
        three_charged_rounds(tmp.path());
        let before = ledger_bytes(tmp.path());
        let mut c = config(tmp.path(), 20.0, 1e-3);
        c.dp.recompute_delta = true;
        let err = refused(c).await;
        assert!(err.contains("--raise-budget"), "{err}");
        assert_eq!(ledger_bytes(tmp.path()), before);
        assert_eq!(stored(tmp.path()).delta(), 1e-5);
    }

    /// Entries migrated from a version 1 ledger were accounted differently:
    /// they are not recomputed, and the start is refused.
    #[tokio::test]
    async fn a_migrated_ledger_refuses_another_delta() {
        let tmp = tempfile::tempdir().unwrap();
        let spent = three_charged_rounds(tmp.path());
        let v1 = format!(
            r#"{{"version": 1, "budget_epsilon": 8.0, "delta": 1e-5, "entries": [
                {{"round": 1, "mechanism": {{"kind": "gaussian", "noise_multiplier": 1.0, "sampling_rate": 1.0}},
                  "epsilon_spent": {spent}}},
                {{"round": 2, "mechanism": {{"kind": "gaussian", "noise_multiplier": 1.0, "sampling_rate": 1.0}},
                  "epsilon_spent": {spent}}},
                {{"round": 3, "mechanism": {{"kind": "gaussian", "noise_multiplier": 1.0, "sampling_rate": 1.0}},
                  "epsilon_spent": {spent}}}]}}"#
        );
        // Only the key's holder can put such a ledger in place now (with
        // every charge the audit log records).
        let v1: PrivacyLedger = serde_json::from_str(&v1).unwrap();
        crate::store::hazmat::rewrite_ledger(tmp.path(), &dir_key(tmp.path()), &v1).unwrap();
        let mut c = config(tmp.path(), 8.0, 1e-3);
        c.dp.recompute_delta = true;
        let err = refused(c).await;
        assert!(err.contains("round 1") && err.contains("migrated"), "{err}");
    }
}
