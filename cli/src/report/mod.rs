//! Everything the CLI reports, in one place: what `tessera demo` and
//! `tessera simulate` print ([`terminal`]), and the files they write: each
//! command's `rounds.csv` ([`csv`]) and chart ([`chart`]: the demo's
//! `rounds.svg`, the simulator's `stage_times.svg`, with one palette).
//! Files written whole go through [`write_atomic`], so a reader never sees
//! half of one.

mod chart;
mod csv;
mod terminal;

use tessera_aggregation::sim::Outcome;

pub(crate) use chart::{DemoMarks, write_demo_chart, write_stage_chart, write_sweep_chart};
pub(crate) use csv::{CsvWriter, write_demo_csv, write_sweep_csv};
pub(crate) use terminal::{
    DEMO_TABLE_HEADER, Summary, Table, demo_table_row, write_header, write_json_line,
};

/// The workspace's one atomic write: into `NAME.tmp` beside the file,
/// synced, renamed over it, and the directory synced.
pub(crate) use tessera_server::files::write_atomic;

/// A round's outcome as the JSON output and the CSV spell it.
fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "completed",
        Outcome::Aborted => "aborted",
    }
}

#[cfg(test)]
pub(crate) use samples::{sample_report, sample_row};

/// What the writers' tests write.
#[cfg(test)]
mod samples {
    use std::collections::BTreeMap;

    use tessera_aggregation::Stage;
    use tessera_aggregation::messages::AbortReason;
    use tessera_aggregation::sim::{Outcome, RoundReport};

    /// A report with distinct, easily recognised values.
    pub(crate) fn sample_report(outcome: Outcome) -> RoundReport {
        RoundReport {
            round: 3,
            outcome,
            abort_stage: (outcome == Outcome::Aborted).then_some(Stage::ShareKeys),
            abort_reason: (outcome == Outcome::Aborted).then_some(AbortReason::BelowThreshold),
            verified: outcome == Outcome::Completed,
            survivors: 9,
            dropped: BTreeMap::from([(Stage::AdvertiseKeys, 0), (Stage::ShareKeys, 1)]),
            k: 8,
            t: 5,
            secure: true,
            insecure_reasons: Vec::new(),
            stage_seconds: BTreeMap::from([(Stage::AdvertiseKeys, 0.5), (Stage::ShareKeys, 0.25)]),
            client_mask_seconds_median: 0.001,
            server_unmask_seconds: 0.002,
            total_seconds: 1.0,
            bytes_sent_per_client: 1000.0,
            bytes_received_per_client: 2000.0,
            server_bytes_received: 10_000,
            server_bytes_sent: 20_000,
            packed_vector_bytes: 400,
            peak_rss_bytes: Some(1 << 20),
            faults: Default::default(),
        }
    }

    /// A demo row with distinct values.
    pub(crate) fn sample_row(round: u64) -> crate::demo::RoundRow {
        crate::demo::RoundRow {
            round,
            survivors: 18,
            dropped: 2,
            lost: 0,
            completed: true,
            accuracy: 0.5 + round as f32 / 100.0,
            loss: 1.25,
            epsilon: round as f64 * 0.25,
            seconds: 0.5,
            bytes_per_client: 12_345,
            bytes_received: 67_890,
            max_error_vs_plain: Some(1.5e-5),
            federated_accuracy: None,
        }
    }
}
