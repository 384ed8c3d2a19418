//! The demo's job from start to end: prepare the data and the federation,
//! then run the rounds. In each, every client trains from the global model
//! on its own partition and takes part with `local - global` (or hangs up
//! at the stage the dropout plan says); the published model is then
//! evaluated, and with DP off checked against the plain FedAvg of the
//! updates the survivors sent.

use std::sync::Arc;
use std::time::Instant;

use tessera_aggregation::Stage;
use tessera_client::{Client, ClientError, Contribution, Participation};
use tessera_dp::mechanism::clip_l2;
use tessera_train::data::Examples;
use tessera_train::local::{self, Architecture, LocalTraining};
use tokio::task::JoinSet;

use super::federation::{self, Deployment};
use super::output::prepare_out;
use super::{DemoConfig, DemoError, DemoEvent, DemoReport, DpMode, RoundRow, Started, calibrate};

/// Runs the demo; `progress` hears every event as it happens.
pub(crate) async fn run_job(
    cfg: &DemoConfig,
    mut progress: impl FnMut(&DemoEvent),
) -> Result<DemoReport, DemoError> {
    cfg.check()?;
    let (dataset, arch) = cfg.training.prepare()?;
    let shares = cfg.training.client_shares(&dataset)?;
    let model = federation::initial_model(&arch, cfg.training.seed)?;
    prepare_out(&cfg.out)?;
    let noise_multiplier = calibrate(cfg)?;
    // With federated evaluation each client keeps a fifth of its examples
    // out of training to evaluate the global model on.
    let (partitions, eval_sets): (Vec<_>, Vec<_>) = shares
        .iter()
        .map(|idx| {
            let examples = dataset.train.select(idx);
            let (train, eval) = if cfg.federated_eval {
                local::held_out(&examples, 0.2)
            } else {
                (
                    examples,
                    Examples {
                        pixels: Vec::new(),
                        labels: Vec::new(),
                    },
                )
            };
            (Arc::new(train), Arc::new(eval))
        })
        .unzip();
    // The server clips each client's counts at `T` examples (a bound on one
    // client's part, for the sensitivity), which would bias the accuracy of
    // a client with more; so each evaluates on at most `T` of its own, the
    // median client's count, keeping `T` (and the noise under DP) small.
    let eval_max_examples = typical_count(&eval_sets);
    let eval_sets: Vec<_> = eval_sets
        .into_iter()
        .map(|eval| Arc::new(at_most(&eval, eval_max_examples)))
        .collect();
    let counts = federation::ExampleBounds {
        max_examples: typical_count(&partitions),
        eval_max_examples,
    };
    let deployment = federation::deploy(cfg, &model, noise_multiplier, counts).await?;
    let job = Job {
        cfg,
        arch,
        clients: deployment.connect_clients()?,
        max_examples: counts.max_examples,
        partitions,
        eval_sets,
        test: dataset.test,
    };
    let dim = model.dim();
    let (initial_accuracy, _) = local::evaluate(&arch, &model.params, &job.test);
    let survivors = (cfg.cohort_size() - cfg.dropouts_per_round()) as u32;
    let expected_noise_norm = super::expected_noise_norm(
        cfg.dp,
        noise_multiplier,
        f64::from(cfg.training.clip_norm),
        dim,
        survivors,
        deployment.min_survivors,
        deployment.corrupt,
    );
    progress(&started(
        &deployment,
        dim,
        noise_multiplier,
        initial_accuracy,
        expected_noise_norm,
    ));
    let (rows, stopped_early) = job.train(model.params, &mut progress).await?;
    deployment.server.shutdown().await?;
    Ok(DemoReport {
        rows,
        initial_accuracy,
        noise_multiplier,
        graph: deployment.graph,
        threshold: deployment.threshold,
        min_survivors: deployment.min_survivors,
        dim,
        stopped_early,
        data_dir: cfg.out.join("data"),
    })
}

/// The event that opens the job's report.
fn started(
    deployment: &Deployment,
    dim: usize,
    noise_multiplier: f64,
    accuracy: f32,
    expected_noise_norm: f64,
) -> DemoEvent {
    DemoEvent::Started(Started {
        url: deployment.url.clone(),
        dim,
        noise_multiplier,
        graph: deployment.graph,
        threshold: deployment.threshold,
        min_survivors: deployment.min_survivors,
        accuracy,
        expected_noise_norm,
    })
}

/// What stays fixed over the rounds once the server listens.
struct Job<'a> {
    /// The settings.
    cfg: &'a DemoConfig,
    /// The model's shape.
    arch: Architecture,
    /// One connected client per participant.
    clients: Vec<Arc<Client>>,
    /// Each client's training examples.
    partitions: Vec<Arc<Examples>>,
    /// `N`, the training examples that earn a full weight.
    max_examples: u32,
    /// Each client's own held-out examples (empty without federated
    /// evaluation).
    eval_sets: Vec<Arc<Examples>>,
    /// The held-out split every published model is evaluated on.
    test: Examples,
}

/// The global model between rounds.
struct GlobalModel {
    /// Its parameters.
    params: Vec<f32>,
    /// The server's last applied step, lr * velocity, for the momentum term
    /// of the plain-FedAvg check.
    last_step: Vec<f32>,
}

impl GlobalModel {
    /// Moves to the model published after a round (the same one, if the
    /// round aborted).
    fn advance(&mut self, next: Vec<f32>, completed: bool) {
        if completed {
            self.last_step = next.iter().zip(&self.params).map(|(n, g)| n - g).collect();
        }
        self.params = next;
    }
}

/// What one client did in a round.
enum ClientRound {
    /// Its update is in the sum (it completed, or dropped at Unmasking
    /// after its masked input was in).
    Counted {
        update: Vec<f32>,
        num_examples: u64,
        bytes: Option<(u64, u64)>,
        survivors: Option<u32>,
    },
    /// It dropped before its masked input was in.
    Dropped,
    /// Its connection broke, or the server went silent, during the round
    /// though the plan kept it in: a real dropout, which the server
    /// handles as any other (whether its masked input was in is not
    /// known here).
    Lost,
    /// The server refused to run the round (budget spent, round limit).
    Refused(String),
}

/// The counted clients of a round, summed up for its row.
struct Tally<'a> {
    /// Their updates, unclipped, with the example counts they sent.
    updates: Vec<(&'a Vec<f32>, u64)>,
    /// Survivors as the server announced them (0 if no client heard).
    survivors: u32,
    /// Mean bytes sent by the clients that completed.
    bytes_per_client: u64,
    /// Mean bytes they received.
    bytes_received: u64,
}

impl Tally<'_> {
    /// Sums up the counted clients among `results`.
    fn of(results: &[Option<ClientRound>]) -> Tally<'_> {
        let mut updates = Vec::new();
        let mut survivors = None;
        let (mut sent, mut received, mut completed) = (0u64, 0u64, 0u64);
        for result in results.iter().flatten() {
            if let ClientRound::Counted {
                update,
                num_examples,
                bytes,
                survivors: announced,
            } = result
            {
                updates.push((update, *num_examples));
                survivors = survivors.or(*announced);
                if let Some((s, r)) = bytes {
                    (sent, received, completed) = (sent + s, received + r, completed + 1);
                }
            }
        }
        Tally {
            updates,
            survivors: survivors.unwrap_or(0),
            bytes_per_client: sent / completed.max(1),
            bytes_received: received / completed.max(1),
        }
    }
}

/// What a round came to.
enum RoundEnd {
    /// The server ran it (completed or aborted).
    Ran(RoundRow),
    /// The server refused to run it, for this reason.
    Refused(String),
}

impl Job<'_> {
    /// Runs the rounds from the `initial` global model; returns their rows
    /// and why the server stopped the job early, if it did.
    async fn train(
        &self,
        initial: Vec<f32>,
        progress: &mut impl FnMut(&DemoEvent),
    ) -> Result<(Vec<RoundRow>, Option<String>), DemoError> {
        let mut global = GlobalModel {
            last_step: vec![0f32; initial.len()],
            params: initial,
        };
        let mut rows = Vec::new();
        for round in 1..=self.cfg.training.rounds {
            match self.round(round, &mut global, progress).await? {
                RoundEnd::Ran(row) => {
                    progress(&DemoEvent::Round(row.clone()));
                    rows.push(row);
                }
                RoundEnd::Refused(why) => return Ok((rows, Some(why))),
            }
        }
        Ok((rows, None))
    }

    /// Runs `round` and moves `global` to the model it published.
    async fn round(
        &self,
        round: u64,
        global: &mut GlobalModel,
        progress: &mut impl FnMut(&DemoEvent),
    ) -> Result<RoundEnd, DemoError> {
        let started = Instant::now();
        let drop_before = self.cfg.dropout_plan(round);
        let results = self
            .run_clients(round, &global.params, &drop_before, progress)
            .await?;
        if let Some(why) = results.iter().find_map(|r| match r {
            Some(ClientRound::Refused(why)) => Some(why.clone()),
            _ => None,
        }) {
            return Ok(RoundEnd::Refused(why));
        }
        let published = self.clients[0]
            .latest_model()
            .await
            .map_err(|error| DemoError::Client { client: 0, error })?;
        // The data directory is fresh, so demo round r is the server's
        // round r; the latest model comes from it only if it completed.
        let completed = published.round == round;
        let next = published.flatten();
        let tally = Tally::of(&results);
        let lost = results
            .iter()
            .filter(|r| matches!(r, Some(ClientRound::Lost)))
            .count() as u32;
        // Adaptive clipping moves the clip norm the check would use, and
        // the adaptive strategies divide by moments it does not track; a
        // lost client's update may or may not be in the sum.
        let checkable = self.cfg.dp == DpMode::Off
            && !self.cfg.adaptive_clip
            && !self.cfg.effective_strategy().is_adaptive()
            && completed
            && lost == 0;
        let max_error_vs_plain =
            checkable.then(|| self.plain_fedavg_error(global, &next, &tally.updates));
        let federated_accuracy = if self.cfg.federated_eval && completed {
            federated_accuracy(&self.cfg.out.join("data"), round)?
        } else {
            None
        };
        let (accuracy, loss) = local::evaluate(&self.arch, &next, &self.test);
        let row = RoundRow {
            round,
            survivors: if completed { tally.survivors } else { 0 },
            dropped: drop_before.iter().filter(|d| d.is_some()).count() as u32 + lost,
            lost,
            completed,
            accuracy,
            loss,
            epsilon: published.epsilon,
            seconds: started.elapsed().as_secs_f64(),
            bytes_per_client: tally.bytes_per_client,
            bytes_received: tally.bytes_received,
            max_error_vs_plain,
            federated_accuracy,
        };
        global.advance(next, completed);
        Ok(RoundEnd::Ran(row))
    }

    /// Every client's part of `round`, concurrently; `None` for a client
    /// whose round aborted (below the threshold: it aborts for every
    /// client alike and is reported as an aborted row, not an error).
    async fn run_clients(
        &self,
        round: u64,
        global: &[f32],
        drop_before: &[Option<Stage>],
        progress: &mut impl FnMut(&DemoEvent),
    ) -> Result<Vec<Option<ClientRound>>, DemoError> {
        let global = Arc::new(global.to_vec());
        let mut tasks = JoinSet::new();
        for c in self.cfg.cohort_of(round) {
            let client = &self.clients[c];
            let fut = client_round(
                Arc::clone(client),
                self.arch,
                Arc::clone(&global),
                Arc::clone(&self.partitions[c]),
                Extras {
                    weighting: self.cfg.weighting,
                    evaluate_on: self
                        .cfg
                        .federated_eval
                        .then(|| Arc::clone(&self.eval_sets[c])),
                },
                self.cfg.training.local,
                self.cfg.training.client_seed(round, c),
                drop_before[c],
            );
            tasks.spawn(async move { (c, fut.await) });
        }
        let mut results: Vec<Option<ClientRound>> = (0..self.clients.len()).map(|_| None).collect();
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            let (c, result) = joined.expect("client task does not panic");
            progress(&DemoEvent::ClientDone { round });
            match result {
                Ok(r) => results[c] = Some(r),
                Err(ClientError::RoundAborted { .. }) => {}
                Err(error) => failure = failure.or(Some(DemoError::Client { client: c, error })),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    /// The plain-FedAvg check of one round with this job's clip, server
    /// learning rate, momentum and weighting.
    fn plain_fedavg_error(
        &self,
        global: &GlobalModel,
        next: &[f32],
        updates: &[(&Vec<f32>, u64)],
    ) -> f32 {
        let training = &self.cfg.training;
        let max_examples = self.max_examples;
        let weighted: Vec<(&Vec<f32>, f64)> = updates
            .iter()
            .map(|&(u, n)| {
                let w = if self.cfg.weighting {
                    n.min(u64::from(max_examples)) as f64 / f64::from(max_examples)
                } else {
                    1.0
                };
                (u, w)
            })
            .collect();
        plain_fedavg_error(
            &global.params,
            &global.last_step,
            next,
            &weighted,
            training.clip_norm,
            training.server_lr,
            training.server_momentum.unwrap_or(0.0),
        )
    }
}

/// The example count that earns a full weight: the median client's
/// number of training examples (at least 1), so a typical client weighs
/// about 1 and the weights' sum stays well above the server's floor of 1.
pub(super) fn typical_count(partitions: &[Arc<Examples>]) -> u32 {
    let mut counts: Vec<usize> = partitions.iter().map(|p| p.len()).collect();
    counts.sort_unstable();
    let median = counts.get(counts.len() / 2).copied().unwrap_or(1);
    u32::try_from(median.max(1)).unwrap_or(u32::MAX)
}

/// The first `limit` of `examples` (a client's partition is shuffled
/// already, so they are a uniform sample of it).
pub(super) fn at_most(examples: &Examples, limit: u32) -> Examples {
    let n = examples.len().min(limit as usize);
    examples.select(&(0..n).collect::<Vec<_>>())
}

/// The federated accuracy the server recorded for `round`, read back from
/// its data directory (`tessera inspect` shows the same record).
fn federated_accuracy(data_dir: &std::path::Path, round: u64) -> Result<Option<f64>, DemoError> {
    let state = tessera_server::store::inspect(data_dir).map_err(|e| DemoError::Output {
        path: data_dir.to_owned(),
        problem: e.to_string(),
    })?;
    Ok(state
        .rounds
        .iter()
        .find(|r| r.round == round)
        .and_then(|r| r.extras.as_ref())
        .and_then(|e| e.federated.as_ref())
        .and_then(|f| f.accuracy))
}

/// What a client sends besides its update.
struct Extras {
    /// Its number of training examples, for weighted averaging.
    weighting: bool,
    /// Its own held-out examples, to evaluate the global model on.
    evaluate_on: Option<Arc<Examples>>,
}

/// One client's part of a round: train from `global`, then take part with
/// `local - global`, or hang up before `drop_before`.
#[allow(clippy::too_many_arguments)] // one client's round, spelled out
async fn client_round(
    client: Arc<Client>,
    arch: Architecture,
    global: Arc<Vec<f32>>,
    examples: Arc<Examples>,
    extras: Extras,
    local: LocalTraining,
    seed: u64,
    drop_before: Option<Stage>,
) -> Result<ClientRound, ClientError> {
    let num_examples = examples.len() as u64;
    let (update, evaluation) = tokio::task::spawn_blocking(move || {
        // The base model is evaluated before training moves away from it.
        let evaluation = extras
            .evaluate_on
            .map(|eval| local::evaluation_counts(&arch, &global, &eval));
        let update = local::update(&arch, &global, &examples, &local, seed);
        (update, evaluation)
    })
    .await
    .expect("local training does not panic");
    let mut contribution = Contribution::new(&update);
    if extras.weighting {
        contribution = contribution.num_examples(num_examples);
    }
    if let Some(evaluation) = evaluation {
        contribution = contribution.evaluation(evaluation);
    }
    let result = match drop_before {
        None => client
            .contribute(contribution)
            .await
            .map(Participation::Completed),
        Some(stage) => client.contribute_or_drop(contribution, stage).await,
    };
    client_outcome(update, num_examples, result)
}

/// What `result`, the SDK's answer to a client that sent `update`, means
/// for the demo's round.
fn client_outcome(
    update: Vec<f32>,
    num_examples: u64,
    result: Result<Participation, ClientError>,
) -> Result<ClientRound, ClientError> {
    match result {
        Ok(Participation::Completed(o)) => Ok(ClientRound::Counted {
            update,
            num_examples,
            bytes: Some((o.bytes_sent, o.bytes_received)),
            survivors: Some(o.survivors),
        }),
        Ok(Participation::Dropped {
            stage: Stage::Unmasking,
            ..
        }) => Ok(ClientRound::Counted {
            update,
            num_examples,
            bytes: None,
            survivors: None,
        }),
        Ok(Participation::Dropped { .. }) => Ok(ClientRound::Dropped),
        Err(ClientError::ServerUnavailable(why)) => Ok(ClientRound::Refused(why)),
        // A connection that breaks mid-round (on a loaded machine, a
        // client starved past the server's keepalive timeout) is a
        // dropout like any other: the round goes on without it, and so
        // does the demo. Any other error is a bug the demo must show.
        Err(
            ClientError::ConnectionLost { .. }
            | ClientError::ServerSilent { .. }
            | ClientError::LeftOut { .. },
        ) => Ok(ClientRound::Lost),
        Err(e) => Err(e),
    }
}

/// `max_i |next_i - (global_i + beta last_step_i + lr mean_i(clip(u)))|`,
/// the plain-FedAvg check of one round (FedAvgM: the step is `lr v` with
/// `v = beta v_prev + mean`, and `lr v_prev` is the last step taken). The
/// mean is weighted, `Σ w_i clip(u_i) / Σ w_i` with the denominator kept
/// within `[1, n]` as the server keeps it; weights of 1 give the plain mean.
fn plain_fedavg_error(
    global: &[f32],
    last_step: &[f32],
    next: &[f32],
    updates: &[(&Vec<f32>, f64)],
    clip_norm: f32,
    server_lr: f32,
    beta: f32,
) -> f32 {
    let mut mean = vec![0f64; global.len()];
    let mut weight_sum = 0f64;
    for &(u, w) in updates {
        let mut clipped = u.clone();
        clip_l2(&mut clipped, clip_norm);
        for (m, v) in mean.iter_mut().zip(&clipped) {
            *m += w * f64::from(*v);
        }
        weight_sum += w;
    }
    let n = weight_sum.clamp(1.0, updates.len().max(1) as f64);
    global
        .iter()
        .zip(last_step)
        .zip(next)
        .zip(&mean)
        .map(|(((g, s), x), m)| {
            let expected =
                f64::from(*g) + f64::from(beta) * f64::from(*s) + f64::from(server_lr) * m / n;
            (f64::from(*x) - expected).abs() as f32
        })
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose connection breaks mid-round is a dropout the round
    /// survives, named in the row; an error that means a bug (a server
    /// breaking the protocol, credentials refused) still fails the demo.
    #[test]
    fn a_broken_connection_is_a_dropout_and_other_errors_fail_the_demo() {
        let lost = [
            ClientError::ConnectionLost {
                round_id: Some(4),
                message: "h2 protocol error: stream closed because of a broken pipe".into(),
            },
            ClientError::ServerSilent {
                round_id: 4,
                stage: "masked-input",
            },
            ClientError::LeftOut { round_id: 4 },
        ];
        for error in lost {
            assert!(matches!(
                client_outcome(vec![0.5], 1, Err(error)),
                Ok(ClientRound::Lost)
            ));
        }
        let fatal = [
            ClientError::ServerMisbehaved {
                round_id: Some(4),
                problem: "a share for a client that is not a neighbour".into(),
            },
            ClientError::AuthRefused {
                message: "unknown token".into(),
            },
        ];
        for error in fatal {
            assert!(client_outcome(vec![0.5], 1, Err(error)).is_err());
        }
        let mut row = crate::report::sample_row(4);
        row.lost = 2;
        let line = crate::report::demo_table_row(&row);
        assert!(line.contains("18/2 (2 lost)"), "{line}");
    }
}
