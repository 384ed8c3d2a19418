//! DP-FTRL in the server (`--dp ftrl`; Kairouz, McMahan, Song, Thakkar,
//! Thakurta, Xu, ICML 2021): the server update and the once-per-tree rule.
//!
//! Each completed round's unmasked sum (ring elements) is added as the next
//! leaf of the epoch's tree ([`tessera_dp::tree`]), its noise added in the
//! ring before anything is decoded; the tree releases the noisy prefix sum
//! `S_t`, and the model becomes
//!
//! ```text
//! v_t = γ v_{t-1} + (S_t - S_{t-1})          (γ = ftrl_momentum; 0: v_t = S_t - S_{t-1})
//! θ_t = θ_epoch + η 2^-f / n · Σ_{i<=t} v_i   (η = server_lr, n = cohort_size, else min_clients)
//! ```
//!
//! which with `γ = 0` is FTRL's `θ_t = θ_epoch + η S_t / n`, and with
//! `γ > 0` DP-FTRLM (momentum on the noisy per-round steps, post-processing
//! of the released prefix sums). `n` is the planned cohort size, a public
//! constant (`cohort_size` if set, else `min_clients`), never the round's count of contributors, which
//! would be an un-noised statistic. After `ftrl_epoch_rounds` released
//! steps the tree restarts: `θ_epoch` becomes the current model, the
//! velocity and the prefix sum restart from zero.
//!
//! **Once per tree.** The tree's guarantee holds for a client in at most
//! one leaf per tree. The server enforces it by authenticated identity
//! (token name, certificate subject or enrolled identity): the identities
//! of every round of the epoch are written to the store before the round
//! starts, and a client that already took part is turned away
//! (`NOT_ELIGIBLE`) until the tree restarts. A round that aborts before its sum is released gives its
//! identities back (nothing of theirs entered the tree); a crash keeps
//! them (the server cannot tell what was released).
//!
//! Against whom: the server sees each round's un-noised sum, so the epsilon
//! holds against the consumers of the published models only
//! (`model-consumers` in the ledger), as central DP's.

use std::collections::HashSet;

use tessera_dp::encoding::FixedPoint;
use tessera_dp::ledger::Mechanism;
use tessera_dp::tree::{TreeNoise, TreeState};
use tracing::warn;

use crate::ServeError;
use crate::config::ServerConfig;
use crate::model::Model;
use crate::store::{FtrlRecord, Store, TreeStep, fresh_salt};

/// DP-FTRL's server state: the durable record (as the store holds it), the
/// tree noise of its epoch and the epoch's starting model.
#[derive(Debug)]
pub(crate) struct Ftrl {
    record: FtrlRecord,
    tree: TreeNoise,
    epoch_start: Model,
    used: HashSet<String>,
    /// A step was charged but its release could not be made durable: the
    /// ledger is then a step ahead of this tree, so the tree is over and
    /// the next round starts a new one ([`Ftrl::close`]).
    closed: bool,
    /// How this server names its clients ([`identity_scheme`]).
    scheme: &'static str,
}

/// What a released round changes, written durably before the model is
/// published.
#[derive(Debug)]
pub(crate) struct Released {
    /// The new durable state.
    pub(crate) record: FtrlRecord,
    /// The model the FTRL update gives.
    pub(crate) model: Model,
}

fn round_error(e: &dyn std::fmt::Display) -> ServeError {
    ServeError::Round(e.to_string())
}

/// How a server with `config` names the clients it admits, as the
/// service does: by enrolled name in malicious-server rounds, else by
/// token name, else by certificate subject (mTLS, named so since
/// 2026-12-02). A tree's once-per-tree rule compares names, so names
/// from two schemes cannot be compared: the same client could be `alice`
/// by token and `cert:CN=alice` by certificate.
fn identity_scheme(config: &ServerConfig) -> &'static str {
    let network = &config.network;
    if network.identities_file.is_some() {
        "enrolled"
    } else if network.tokens_file.is_some() {
        "tokens"
    } else if network.tls_client_ca.is_some() {
        "mtls-subject"
    } else {
        "insecure-dev"
    }
}

impl Ftrl {
    /// Loads the store's DP-FTRL state, or starts epoch 0 from the current
    /// model (`version`). A stored epoch whose noise parameters (noise
    /// multiplier, clip norm, fixed point, dimension) differ from the
    /// configuration's is closed and a new tree starts, with a warning: a
    /// node released under one scale is never redrawn under another.
    pub(crate) fn open(
        config: &ServerConfig,
        store: &mut Store,
        model: &Model,
        version: u64,
    ) -> Result<Ftrl, ServeError> {
        let dim = model.dim();
        let central = config.central_dp(config.round.min_clients, dim as u32)?;
        let params = (central.sigma(), central.l2_sensitivity());
        // A version published after the epoch began that is not one of its
        // steps was published by another DP mode: the tree no longer
        // describes the model.
        let moved_without = |r: &FtrlRecord| {
            store
                .models()
                .iter()
                .any(|m| m.version > r.epoch_start_version && !r.rounds.contains(&m.round))
        };
        // The ledger's last charge is a tree step this tree never recorded
        // as released (the release failed, or the server stopped, after
        // the charge; or an older copy of the file was put back): that
        // step's nodes may have been computed over a sum, so the tree is
        // over and a new one starts, never the same step again.
        let charged_without = |r: &FtrlRecord| {
            store
                .ledger()
                .and_then(|l| l.entries().last())
                .is_some_and(|e| {
                    matches!(e.mechanism, Mechanism::TreeAggregation { .. })
                        && e.round > r.rounds.last().copied().unwrap_or(0)
                        && !r.rounds.contains(&e.round)
                })
        };
        // A tree recorded under another identity scheme than this
        // server's ends: its names cannot be compared with this server's.
        // So does one recorded under none: files from before 2026-12-02,
        // which include every tree whose mTLS clients were named by their
        // certificate's digest (`cert:` and 16 hex digits) rather than
        // their subject, under which a renewed certificate was a new client.
        let scheme = identity_scheme(config);
        let old_names = |r: &FtrlRecord| r.identity_scheme.as_deref() != Some(scheme);
        let record = match store.ftrl().cloned() {
            Some(r)
                if (r.sigma, r.l2_sensitivity) == params
                    && r.noisy_prefix.len() == dim
                    && !moved_without(&r)
                    && !charged_without(&r)
                    && !old_names(&r) =>
            {
                r
            }
            Some(r) => {
                warn!(
                    epoch = r.epoch,
                    recorded_scheme = r.identity_scheme.as_deref().unwrap_or("unrecorded"),
                    scheme,
                    "the DP-FTRL tree's noise parameters changed (noise_multiplier, clip_norm, frac_bits or the model's dimension), another DP mode published since, or its participants were named under another identity scheme (tokens, mTLS subjects, enrolled identities): its epoch is closed and tree {} starts from version {version}",
                    r.epoch + 1
                );
                let next = FtrlRecord::new_epoch(r.salt, r.epoch + 1, version, params, dim, scheme);
                store.write_ftrl(&next)?;
                next
            }
            None => {
                let first = FtrlRecord::new_epoch(fresh_salt(), 0, version, params, dim, scheme);
                store.write_ftrl(&first)?;
                first
            }
        };
        let epoch_start = match store.model(record.epoch_start_version)? {
            Some((_, m)) => m,
            None => {
                return Err(ServeError::Round(format!(
                    "the DP-FTRL epoch starts from model version {}, which the data directory does not hold",
                    record.epoch_start_version
                )));
            }
        };
        let tree = TreeNoise::new(store.ftrl_seed(&record.salt), central);
        Ok(Ftrl {
            used: record.participants.iter().cloned().collect(),
            record,
            tree,
            epoch_start,
            closed: false,
            scheme,
        })
    }

    /// Whether the epoch's tree is full: the next round starts a new one.
    fn epoch_over(&self, config: &ServerConfig) -> bool {
        self.closed || self.record.step >= config.dp.ftrl_epoch_rounds
    }

    /// The most rounds the current tree has left (0 once it is over: the
    /// next round starts a new one).
    pub(crate) fn rounds_left(&self, config: &ServerConfig) -> u64 {
        if self.epoch_over(config) {
            0
        } else {
            config.dp.ftrl_epoch_rounds - self.record.step
        }
    }

    /// Ends the tree after a step was charged whose release could not be
    /// made durable: the ledger is a step ahead of the tree, and the step
    /// must never be released again over another sum, so the next round
    /// starts a new tree (whose step 1 the ledger accepts).
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// The identities the next round may not take: those already in this
    /// tree (none when the tree restarts with that round).
    pub(crate) fn excluded(&self, config: &ServerConfig) -> HashSet<String> {
        if self.epoch_over(config) {
            HashSet::new()
        } else {
            self.used.clone()
        }
    }

    /// The step the next release will be (a new tree's first when this
    /// one is full).
    fn next_step(&self, config: &ServerConfig) -> u64 {
        if self.epoch_over(config) {
            1
        } else {
            self.record.step + 1
        }
    }

    /// What the next round's release will cost, for the budget check.
    pub(crate) fn planned(&self, config: &ServerConfig) -> Mechanism {
        self.tree.mechanism(self.next_step(config))
    }

    /// The durable state with a round's `identities` recorded as taking
    /// part, first restarting the tree from (`version`, `model`) if it is
    /// full. Write it, then [`Ftrl::commit_start`], before the round starts.
    pub(crate) fn begin_round(
        &self,
        config: &ServerConfig,
        identities: &[String],
        version: u64,
    ) -> FtrlRecord {
        let mut record = if self.epoch_over(config) {
            FtrlRecord::new_epoch(
                self.record.salt.clone(),
                self.record.epoch + 1,
                version,
                (self.record.sigma, self.record.l2_sensitivity),
                self.record.noisy_prefix.len(),
                self.scheme,
            )
        } else {
            self.record.clone()
        };
        record.participants.extend(identities.iter().cloned());
        record
    }

    /// Adopts a record written by [`Ftrl::begin_round`] (or by an abort's
    /// [`Ftrl::give_back`]); `model` is the current one, which a new epoch
    /// starts from.
    pub(crate) fn commit_start(&mut self, record: FtrlRecord, model: &Model) {
        if record.epoch != self.record.epoch {
            self.epoch_start = model.clone();
            self.closed = false;
        }
        self.used = record.participants.iter().cloned().collect();
        self.record = record;
    }

    /// The durable state without `identities`, for a round that aborted
    /// before its sum was released.
    pub(crate) fn give_back(&self, identities: &[String]) -> FtrlRecord {
        let mut record = self.record.clone();
        let gone: HashSet<&String> = identities.iter().collect();
        record.participants.retain(|id| !gone.contains(id));
        record
    }

    /// The next step's mechanism, to charge before anything else.
    pub(crate) fn mechanism(&self) -> Mechanism {
        self.tree.mechanism(self.record.step + 1)
    }

    /// Adds a completed round's `sum` (ring elements of `fixed_point`) as
    /// the next leaf and computes the FTRL model; nothing changes until
    /// [`Ftrl::commit_release`], after the record is durable.
    pub(crate) fn release(
        &self,
        config: &ServerConfig,
        fixed_point: &FixedPoint,
        sum: &[u32],
        round: u64,
    ) -> Result<Released, ServeError> {
        let before = TreeState {
            epoch: self.record.epoch,
            step: self.record.step,
            noisy_prefix: self.record.noisy_prefix.clone(),
        };
        let after = self
            .tree
            .add_leaf(&before, fixed_point, sum)
            .map_err(|e| round_error(&e))?;
        let gamma = config.dp.ftrl_momentum;
        let mut record = self.record.clone();
        for i in 0..sum.len() {
            let step = (after.noisy_prefix[i] - before.noisy_prefix[i]) as f64;
            record.velocity[i] = gamma * record.velocity[i] + step;
            record.moved[i] += record.velocity[i];
        }
        record.step = after.step;
        record.noisy_prefix = after.noisy_prefix;
        record.rounds.push(round);
        let model = self.model_of(config, fixed_point, &record.moved)?;
        Ok(Released { record, model })
    }

    /// `θ_epoch + η 2^-f / n · moved`.
    fn model_of(
        &self,
        config: &ServerConfig,
        fixed_point: &FixedPoint,
        moved: &[f64],
    ) -> Result<Model, ServeError> {
        let scale = f64::from(config.aggregation.server_lr)
            / f64::from(1u32 << fixed_point.frac_bits)
            / f64::from(config.round.cohort_size.unwrap_or(config.round.min_clients));
        let params: Vec<f32> = self
            .epoch_start
            .params
            .iter()
            .zip(moved)
            .map(|(&p, &m)| (f64::from(p) + scale * m) as f32)
            .collect();
        if params.iter().any(|p| !p.is_finite()) {
            return Err(ServeError::Round(
                "the DP-FTRL update overflows the model (lower server_lr)".into(),
            ));
        }
        Ok(Model {
            tensors: self.epoch_start.tensors.clone(),
            params,
        })
    }

    /// The epoch and step of the last release.
    pub(crate) fn position(&self) -> TreeStep {
        TreeStep {
            epoch: self.record.epoch,
            step: self.record.step,
        }
    }

    /// Adopts a release whose record is durable.
    pub(crate) fn commit_release(&mut self, record: FtrlRecord) {
        self.record = record;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tessera_dp::ledger::{Adversary, PrivacyLedger};
    use tessera_dp::tree::nodes;

    use super::*;
    use crate::config::{DpMode, DpSettings};
    use crate::store::StateKey;

    const DIM: usize = 6;

    fn config(epoch_rounds: u64, momentum: f64) -> ServerConfig {
        ServerConfig {
            dp: DpSettings {
                mode: DpMode::Ftrl,
                noise_multiplier: 0.8,
                ftrl_epoch_rounds: epoch_rounds,
                ftrl_momentum: momentum,
                ..Default::default()
            },
            ..ServerConfig::default()
        }
    }

    fn key() -> StateKey {
        StateKey::from_bytes([5; 32])
    }

    /// A data directory holding the initial model (version 1).
    fn new_store(dir: &Path) -> (Store, Model) {
        let mut store = Store::open(dir, &key()).unwrap();
        let model = Model::zeros_flat(DIM);
        store.init_model(&model).unwrap();
        (store, model)
    }

    /// A restarted server: the store reopened, the tree loaded from it.
    fn reopen(dir: &Path, config: &ServerConfig) -> (Store, Ftrl) {
        let mut store = Store::open(dir, &key()).unwrap();
        let (entry, model) = store.latest_model().unwrap();
        let ftrl = Ftrl::open(config, &mut store, &model, entry.version).unwrap();
        (store, ftrl)
    }

    fn fixed_point(config: &ServerConfig) -> FixedPoint {
        config.round_encoding(3, 3, DIM as u32).unwrap().0
    }

    /// A ring sum whose signed value is `leaf`.
    fn ring(fp: &FixedPoint, leaf: &[i64]) -> Vec<u32> {
        leaf.iter().map(|&v| (v as u32) & fp.value_mask()).collect()
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Publishes `model` from `round` with the ledger so far, as the
    /// scheduler does for a round of 3 survivors.
    fn publish(store: &mut Store, model: &Model, round: u64, ledger: &PrivacyLedger) {
        store
            .publish(&crate::store::Publication {
                model,
                round,
                survivors: 3,
                dropped: 0,
                epsilon: ledger.spent(),
                delta: 1e-5,
                ledger: Some(ledger),
                velocity: None,
                optimizer: None,
            })
            .unwrap();
    }

    /// Starts a round for `who`, releases `leaf` and publishes the model,
    /// as the scheduler does.
    fn round(
        config: &ServerConfig,
        store: &mut Store,
        ftrl: &mut Ftrl,
        who: &[&str],
        leaf: &[i64],
    ) -> Model {
        let (entry, model) = store.latest_model().unwrap();
        let started = ftrl.begin_round(config, &ids(who), entry.version);
        store.write_ftrl(&started).unwrap();
        ftrl.commit_start(started, &model);
        let round = store.next_round_id();
        // Charged as the scheduler does, before the release.
        let mut ledger = store
            .ledger()
            .cloned()
            .unwrap_or_else(|| PrivacyLedger::new(1e9, 1e-5).unwrap());
        ledger
            .record(round, ftrl.mechanism(), Adversary::ModelConsumers)
            .unwrap();
        store.charge(&ledger).unwrap();
        let fp = fixed_point(config);
        let released = ftrl.release(config, &fp, &ring(&fp, leaf), round).unwrap();
        store.write_ftrl(&released.record).unwrap();
        ftrl.commit_release(released.record);
        publish(store, &released.model, round, &ledger);
        released.model
    }

    /// The published model is `θ_epoch + η 2^-f / n` times the exact
    /// prefix sum plus the noise of exactly the step's nodes, whose noise
    /// is recomputed here from the store's seed.
    #[test]
    fn the_model_follows_the_noisy_prefix_sum_of_the_listed_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(8, 0.0);
        let (mut store, model) = new_store(tmp.path());
        let mut ftrl = Ftrl::open(&cfg, &mut store, &model, 1).unwrap();
        let fp = fixed_point(&cfg);
        let central = cfg.central_dp(cfg.round.min_clients, DIM as u32).unwrap();
        let salt = store.ftrl().unwrap().salt.clone();
        let tree = TreeNoise::new(store.ftrl_seed(&salt), central);
        let mut exact = [0i64; DIM];
        for step in 1..=5u64 {
            let leaf: Vec<i64> = (0..DIM as i64)
                .map(|i| 4000 * i - 900 * step as i64)
                .collect();
            let who = format!("c{step}");
            let published = round(&cfg, &mut store, &mut ftrl, &[&who], &leaf);
            for (e, l) in exact.iter_mut().zip(&leaf) {
                *e += l;
            }
            let mut noisy = exact;
            for node in nodes(step) {
                for (v, n) in noisy.iter_mut().zip(tree.node_noise(0, node).unwrap()) {
                    *v += n;
                }
            }
            assert_eq!(store.ftrl().unwrap().noisy_prefix, noisy, "step {step}");
            let scale = 1.0 / f64::from(1u32 << fp.frac_bits) / f64::from(cfg.round.min_clients);
            let want: Vec<f32> = noisy.iter().map(|&s| (s as f64 * scale) as f32).collect();
            assert_eq!(published.params, want, "step {step}");
        }
    }

    /// The issue's "tree noise survives a restart unchanged": a server
    /// restarted mid-epoch releases the next step exactly as one that
    /// never stopped (same nodes' noise, same prefix sum, same model), and
    /// the seed is not in the data directory.
    #[test]
    fn tree_noise_survives_a_restart_unchanged() {
        let cfg = config(8, 0.5);
        let leaf = |s: i64| -> Vec<i64> { (0..DIM as i64).map(|i| 1000 * i + 77 * s).collect() };
        let mut models = Vec::new();
        let mut prefixes = Vec::new();
        for restart in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let (mut store, model) = new_store(tmp.path());
            let mut ftrl = Ftrl::open(&cfg, &mut store, &model, 1).unwrap();
            // Both runs use one salt, so the seeds agree.
            let mut record = store.ftrl().unwrap().clone();
            record.salt = "ab".repeat(32);
            store.write_ftrl(&record).unwrap();
            ftrl = Ftrl {
                tree: TreeNoise::new(
                    store.ftrl_seed(&record.salt),
                    cfg.central_dp(3, DIM as u32).unwrap(),
                ),
                record,
                ..ftrl
            };
            round(&cfg, &mut store, &mut ftrl, &["a"], &leaf(1));
            round(&cfg, &mut store, &mut ftrl, &["b"], &leaf(2));
            let before = store.ftrl().unwrap().noisy_prefix.clone();
            if restart {
                drop((store, ftrl));
                (store, ftrl) = reopen(tmp.path(), &cfg);
                assert_eq!(
                    store.ftrl().unwrap().noisy_prefix,
                    before,
                    "released prefix kept"
                );
                let on_disk = std::fs::read_to_string(tmp.path().join("ftrl.json")).unwrap();
                let seed = store.ftrl_seed(&store.ftrl().unwrap().salt.clone());
                assert_eq!(format!("{seed:?}"), "TreeSeed(..)");
                assert!(!on_disk.contains("seed"), "only the salt is stored");
            }
            models.push(round(&cfg, &mut store, &mut ftrl, &["c"], &leaf(3)).params);
            prefixes.push(store.ftrl().unwrap().noisy_prefix.clone());
        }
        assert_eq!(prefixes[0], prefixes[1]);
        assert_eq!(models[0], models[1]);
    }

    /// Once per tree, by identity: who took part is excluded for the rest
    /// of the epoch, also after a restart, and eligible again in the next
    /// tree, which starts from the current model.
    #[test]
    fn an_identity_takes_part_once_per_tree_across_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(2, 0.0);
        let (mut store, model) = new_store(tmp.path());
        let mut ftrl = Ftrl::open(&cfg, &mut store, &model, 1).unwrap();
        assert!(ftrl.excluded(&cfg).is_empty());
        let leaf = [300i64; DIM];
        round(
            &cfg,
            &mut store,
            &mut ftrl,
            &["alice", "bob", "carol"],
            &leaf,
        );
        let excluded = ftrl.excluded(&cfg);
        assert!(excluded.contains("alice") && excluded.contains("carol"));
        assert!(!excluded.contains("dave"));
        drop((store, ftrl));
        let (mut store, mut ftrl) = reopen(tmp.path(), &cfg);
        assert_eq!(ftrl.excluded(&cfg), excluded, "a restart remembers");
        assert_eq!(ftrl.planned(&cfg), ftrl.tree.mechanism(2));
        let end_of_tree = round(
            &cfg,
            &mut store,
            &mut ftrl,
            &["dave", "erin", "frank"],
            &leaf,
        );
        // The tree is full: everyone may take the next round, tree 1.
        assert!(ftrl.excluded(&cfg).is_empty());
        assert_eq!(ftrl.planned(&cfg), ftrl.tree.mechanism(1));
        drop((store, ftrl));
        let (mut store, mut ftrl) = reopen(tmp.path(), &cfg);
        assert!(ftrl.excluded(&cfg).is_empty());
        round(
            &cfg,
            &mut store,
            &mut ftrl,
            &["alice", "dave", "gina"],
            &leaf,
        );
        let r = store.ftrl().unwrap();
        assert_eq!((r.epoch, r.step), (1, 1));
        assert_eq!(r.participants, ids(&["alice", "dave", "gina"]));
        assert_eq!(
            r.epoch_start_version, 3,
            "the tree restarts from the model then"
        );
        assert_eq!(ftrl.epoch_start.params, end_of_tree.params);
    }

    /// A step charged to the ledger whose release never reached
    /// `ftrl.json` (the server stopped, or the write failed, between the
    /// two): on restart the tree is closed and a new one starts at step 1,
    /// which the ledger accepts; the charged step is never released again
    /// and the server does not stop as if its budget were spent (red team,
    /// issue 15).
    #[test]
    fn a_charged_but_unreleased_step_closes_the_tree_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(4, 0.0);
        let (mut store, model) = new_store(dir.path());
        let mut ftrl = Ftrl::open(&config, &mut store, &model, 1).unwrap();
        round(&config, &mut store, &mut ftrl, &["a", "b", "c"], &[1; DIM]);
        // Round 2 starts and is charged as step 2; the server stops there.
        let (entry, model) = store.latest_model().unwrap();
        let started = ftrl.begin_round(&config, &ids(&["d", "e", "f"]), entry.version);
        store.write_ftrl(&started).unwrap();
        ftrl.commit_start(started, &model);
        let round2 = store.next_round_id();
        let mut ledger = store.ledger().cloned().unwrap();
        ledger
            .record(round2, ftrl.mechanism(), Adversary::ModelConsumers)
            .unwrap();
        store.charge(&ledger).unwrap();
        drop((store, ftrl));

        let (mut store, mut ftrl) = reopen(dir.path(), &config);
        assert_eq!(ftrl.position(), TreeStep { epoch: 1, step: 0 });
        assert!(
            ftrl.excluded(&config).is_empty(),
            "a new tree: all eligible"
        );
        let ledger = store.ledger().cloned().unwrap();
        assert!(
            ledger.can_spend(&ftrl.planned(&config)),
            "the server goes on"
        );
        round(&config, &mut store, &mut ftrl, &["a", "d", "g"], &[2; DIM]);
        assert_eq!(ftrl.position(), TreeStep { epoch: 1, step: 1 });
    }

    /// A tree whose mTLS participants were recorded under the old names
    /// (the certificate's digest, in a file from before the scheme was
    /// recorded) ends on restart: under the new names (the subject) the
    /// same clients would not be recognised and could take part twice in
    /// it. Under a recorded scheme a name that merely looks like an old
    /// digest (a token so named) does not end the tree on every restart.
    #[test]
    fn a_tree_recorded_under_certificate_digest_names_ends_on_restart() {
        let mut by_certificate = config(4, 0.0);
        by_certificate.network.tls_client_ca = Some("ca.pem".into());
        let dir = tempfile::tempdir().unwrap();
        let (mut store, model) = new_store(dir.path());
        let mut ftrl = Ftrl::open(&by_certificate, &mut store, &model, 1).unwrap();
        let who = ["cert:0123456789abcdef", "cert:fedcba9876543210"];
        round(&by_certificate, &mut store, &mut ftrl, &who, &[1; DIM]);
        let mut old = store.ftrl().unwrap().clone();
        old.identity_scheme = None;
        store.write_ftrl(&old).unwrap();
        drop((store, ftrl));
        let (_store, ftrl) = reopen(dir.path(), &by_certificate);
        assert_eq!(ftrl.position(), TreeStep { epoch: 1, step: 0 });
        assert!(ftrl.excluded(&by_certificate).is_empty());
        // A token named like an old digest, under a recorded scheme.
        let mut by_token = config(4, 0.0);
        by_token.network.tokens_file = Some("tokens.txt".into());
        let dir = tempfile::tempdir().unwrap();
        let (mut store, model) = new_store(dir.path());
        let mut ftrl = Ftrl::open(&by_token, &mut store, &model, 1).unwrap();
        let who = ["cert:0123456789abcdef", "carol"];
        round(&by_token, &mut store, &mut ftrl, &who, &[1; DIM]);
        drop((store, ftrl));
        let (_store, ftrl) = reopen(dir.path(), &by_token);
        assert_eq!(ftrl.position(), TreeStep { epoch: 0, step: 1 });
        assert!(ftrl.excluded(&by_token).contains("cert:0123456789abcdef"));
    }

    /// A tree whose participants were named under one identity scheme
    /// ends when the server restarts under another: `alice` by token and
    /// `cert:CN=alice` by certificate may be one client, who would
    /// otherwise take part twice in the tree. A file from before the
    /// scheme was recorded (no `identity_scheme`) still verifies, and its
    /// tree ends too.
    #[test]
    fn a_tree_recorded_under_another_identity_scheme_ends_on_restart() {
        let mut by_token = config(4, 0.0);
        by_token.network.tokens_file = Some("tokens.txt".into());
        let mut by_certificate = config(4, 0.0);
        by_certificate.network.tls_client_ca = Some("ca.pem".into());
        let dir = tempfile::tempdir().unwrap();
        let (mut store, model) = new_store(dir.path());
        let mut ftrl = Ftrl::open(&by_token, &mut store, &model, 1).unwrap();
        round(
            &by_token,
            &mut store,
            &mut ftrl,
            &["alice", "bob"],
            &[1; DIM],
        );
        assert_eq!(
            store.ftrl().unwrap().identity_scheme.as_deref(),
            Some("tokens")
        );
        drop((store, ftrl));
        // The same scheme: the tree goes on, alice is still excluded.
        let (store, ftrl) = reopen(dir.path(), &by_token);
        assert_eq!(ftrl.position(), TreeStep { epoch: 0, step: 1 });
        assert!(ftrl.excluded(&by_token).contains("alice"));
        drop((store, ftrl));
        // Another scheme: a new tree, recorded under the new scheme.
        let (store, ftrl) = reopen(dir.path(), &by_certificate);
        assert_eq!(ftrl.position(), TreeStep { epoch: 1, step: 0 });
        assert!(ftrl.excluded(&by_certificate).is_empty());
        assert_eq!(
            store.ftrl().unwrap().identity_scheme.as_deref(),
            Some("mtls-subject")
        );
        drop((store, ftrl));

        // A file written before the scheme was recorded.
        let dir = tempfile::tempdir().unwrap();
        let (mut store, model) = new_store(dir.path());
        let mut ftrl = Ftrl::open(&by_token, &mut store, &model, 1).unwrap();
        round(&by_token, &mut store, &mut ftrl, &["alice"], &[1; DIM]);
        let mut unrecorded = store.ftrl().unwrap().clone();
        unrecorded.identity_scheme = None;
        store.write_ftrl(&unrecorded).unwrap();
        let text = std::fs::read_to_string(dir.path().join("ftrl.json")).unwrap();
        assert!(!text.contains("identity_scheme"), "{text}");
        drop((store, ftrl));
        let (_store, ftrl) = reopen(dir.path(), &by_token);
        assert_eq!(ftrl.position(), TreeStep { epoch: 1, step: 0 });
        assert!(ftrl.excluded(&by_token).is_empty());
    }

    /// An aborted round gives its identities back; the rest stay.
    #[test]
    fn an_aborted_round_gives_its_identities_back() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(4, 0.0);
        let (mut store, model) = new_store(tmp.path());
        let mut ftrl = Ftrl::open(&cfg, &mut store, &model, 1).unwrap();
        round(&cfg, &mut store, &mut ftrl, &["a", "b", "c"], &[1; DIM]);
        let started = ftrl.begin_round(&cfg, &ids(&["d", "e", "f"]), 2);
        store.write_ftrl(&started).unwrap();
        ftrl.commit_start(started, &model);
        assert!(ftrl.excluded(&cfg).contains("e"));
        let back = ftrl.give_back(&ids(&["d", "e", "f"]));
        store.write_ftrl(&back).unwrap();
        ftrl.commit_start(back, &model);
        let excluded = ftrl.excluded(&cfg);
        assert!(!excluded.contains("e") && excluded.contains("a"));
    }

    /// The file is authenticated: an edited one (a participation removed)
    /// and an older authentic copy put back after a release are refused.
    #[test]
    fn an_edited_or_rolled_back_ftrl_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(4, 0.0);
        let (mut store, model) = new_store(tmp.path());
        let mut ftrl = Ftrl::open(&cfg, &mut store, &model, 1).unwrap();
        let path = tmp.path().join("ftrl.json");
        let old = std::fs::read(&path).unwrap();
        round(
            &cfg,
            &mut store,
            &mut ftrl,
            &["alice", "bob", "carol"],
            &[9; DIM],
        );
        drop((store, ftrl));
        let current = std::fs::read_to_string(&path).unwrap();
        let edited = current.replacen("\"alice\"", "\"zed\"", 1);
        assert_ne!(edited, current);
        std::fs::write(&path, edited).unwrap();
        let err = Store::open(tmp.path(), &key()).unwrap_err().to_string();
        assert!(err.contains("ftrl.json") && err.contains("MAC"), "{err}");
        std::fs::write(&path, &old).unwrap();
        let err = Store::open(tmp.path(), &key()).unwrap_err().to_string();
        assert!(err.contains("older copy"), "{err}");
        std::fs::write(&path, current).unwrap();
        Store::open(tmp.path(), &key()).unwrap();
    }

    /// A change of the noise scale mid-epoch closes the tree rather than
    /// drawing its released nodes again at another scale.
    #[test]
    fn new_noise_parameters_start_a_new_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(4, 0.0);
        let (mut store, model) = new_store(tmp.path());
        let mut ftrl = Ftrl::open(&cfg, &mut store, &model, 1).unwrap();
        round(&cfg, &mut store, &mut ftrl, &["a", "b", "c"], &[9; DIM]);
        drop((store, ftrl));
        let mut louder = cfg.clone();
        louder.dp.noise_multiplier = 1.6;
        let (store, ftrl) = reopen(tmp.path(), &louder);
        let r = store.ftrl().unwrap();
        assert_eq!((r.epoch, r.step, r.epoch_start_version), (1, 0, 2));
        assert!(ftrl.excluded(&louder).is_empty());
    }

    /// A version another DP mode published after the tree began is not a
    /// rollback (the ledger charged it as something else): the store opens
    /// and the tree, which no longer describes the model, is closed.
    #[test]
    fn a_version_published_by_another_mode_closes_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(4, 0.0);
        let (mut store, model) = new_store(tmp.path());
        let mut ftrl = Ftrl::open(&cfg, &mut store, &model, 1).unwrap();
        round(&cfg, &mut store, &mut ftrl, &["a", "b", "c"], &[9; DIM]);
        let mut ledger = store.ledger().cloned().unwrap();
        let central = cfg.central_dp(3, DIM as u32).unwrap().mechanism();
        ledger
            .record(2, central, Adversary::ModelConsumers)
            .unwrap();
        store.charge(&ledger).unwrap();
        publish(&mut store, &model, 2, &ledger);
        drop((store, ftrl));
        let (store, ftrl) = reopen(tmp.path(), &cfg);
        let r = store.ftrl().unwrap();
        assert_eq!((r.epoch, r.step, r.epoch_start_version), (1, 0, 3));
        assert!(ftrl.excluded(&cfg).is_empty());
    }
}
