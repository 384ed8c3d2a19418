//! The CSV files: `rounds.csv` of `tessera demo`, written whole when the
//! job ends, and `rounds.csv` of `tessera simulate`, appended to and
//! flushed as each round ends so an interrupted run keeps its finished
//! rounds. Every cell is a number, a boolean or a kebab-case name, so
//! nothing needs quoting.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tessera_aggregation::Stage;
use tessera_aggregation::sim::RoundReport;

use super::outcome_name;
use crate::demo::{RoundRow, SweepPoint};

/// The header of `sweep.csv`: one line per run of `tessera demo --sweep`.
pub(crate) const SWEEP_CSV_HEADER: &str =
    "arm,epsilon_target,epsilon_spent,adversary,final_accuracy,rounds,seconds,dir";

/// Writes a sweep's points as CSV to `path`, atomically; the sweep
/// rewrites it after every run, so an interrupted sweep keeps its
/// finished runs.
pub(crate) fn write_sweep_csv(
    path: &Path,
    points: &[SweepPoint],
) -> Result<(), tessera_server::files::WriteError> {
    super::write_atomic(path, sweep_csv(points).as_bytes())
}

/// The sweep's CSV text; a run without DP has an empty target epsilon.
fn sweep_csv(points: &[SweepPoint]) -> String {
    let mut text = format!("{SWEEP_CSV_HEADER}\n");
    for p in points {
        writeln!(
            text,
            "{},{},{:.4},{},{:.4},{},{:.1},{}",
            p.arm,
            p.epsilon.map_or(String::new(), |e| e.to_string()),
            p.epsilon_spent,
            p.adversary,
            p.accuracy,
            p.rounds,
            p.seconds,
            p.dir.display(),
        )
        .expect("writing to a String cannot fail");
    }
    text
}

/// The header of the demo's CSV; the first eight columns are the contract
/// scripts rely on.
pub(crate) const DEMO_CSV_HEADER: &str = "round,survivors,dropped,accuracy,loss,epsilon,seconds,bytes_per_client,bytes_received,completed,max_error_vs_plain,lost,federated_accuracy";

/// Writes the demo's `rows` as CSV to `path` (atomically: a reader never
/// sees half a file).
pub(crate) fn write_demo_csv(
    path: &Path,
    rows: &[RoundRow],
) -> Result<(), tessera_server::files::WriteError> {
    super::write_atomic(path, demo_csv(rows).as_bytes())
}

/// The demo's CSV text: the header, then one line per round.
fn demo_csv(rows: &[RoundRow]) -> String {
    let mut text = format!("{DEMO_CSV_HEADER}\n");
    for r in rows {
        writeln!(
            text,
            "{},{},{},{:.4},{:.4},{:.4},{:.3},{},{},{},{},{},{}",
            r.round,
            r.survivors,
            r.dropped,
            r.accuracy,
            r.loss,
            r.epsilon,
            r.seconds,
            r.bytes_per_client,
            r.bytes_received,
            r.completed,
            r.max_error_vs_plain
                .map_or(String::new(), |e| format!("{e:.3e}")),
            r.lost,
            r.federated_accuracy
                .map_or(String::new(), |a| format!("{a:.4}")),
        )
        .expect("writing to a String cannot fail");
    }
    text
}

/// `rounds.csv`: one row per round, written and flushed as each round ends
/// so a long run that is interrupted keeps its finished rounds.
#[derive(Debug)]
pub(crate) struct CsvWriter {
    /// The open file.
    file: BufWriter<File>,
    /// Its path, for error messages.
    path: PathBuf,
}

/// Every stage, in order: the CSV always has a column per stage so files
/// from different threat models line up; a stage a round did not run is an
/// empty cell.
const CSV_STAGES: [Stage; 5] = Stage::ALL;

impl CsvWriter {
    /// Creates `dir` if needed and `dir/rounds.csv` with its header.
    pub(crate) fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output directory {}", dir.display()))?;
        let path = dir.join("rounds.csv");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = CsvWriter {
            file: BufWriter::new(file),
            path,
        };
        let header = csv_header().join(",");
        writer.write_line(&header)?;
        Ok(writer)
    }

    /// Appends one round.
    pub(crate) fn write_row(&mut self, report: &RoundReport) -> anyhow::Result<()> {
        let line = csv_row(report).join(",");
        self.write_line(&line)
    }

    /// Writes and flushes a line.
    fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A stage's name in a CSV column: snake case, like the other columns.
fn csv_stage(stage: Stage) -> String {
    stage.name().replace('-', "_")
}

/// The CSV column names: the JSON keys, with the per-stage objects spread
/// into `dropped_<stage>` and `seconds_<stage>` columns.
pub(crate) fn csv_header() -> Vec<String> {
    let mut header: Vec<String> = ["round", "outcome", "verified", "survivors", "k", "t"]
        .map(str::to_owned)
        .into();
    header.extend(CSV_STAGES.map(|s| format!("dropped_{}", csv_stage(s))));
    header.extend(CSV_STAGES.map(|s| format!("seconds_{}", csv_stage(s))));
    header.extend(
        [
            "client_mask_seconds_median",
            "server_unmask_seconds",
            "total_seconds",
            "bytes_sent_per_client",
            "bytes_received_per_client",
            "server_bytes_received",
            "server_bytes_sent",
            "packed_vector_bytes",
            "peak_rss_bytes",
            "abort_stage",
            "abort_reason",
        ]
        .map(str::to_owned),
    );
    header
}

/// One round's CSV cells, in [`csv_header`] order. Every cell is a number, a
/// boolean or a kebab-case name, so nothing needs quoting.
fn csv_row(report: &RoundReport) -> Vec<String> {
    let mut row = vec![
        report.round.to_string(),
        outcome_name(report.outcome).to_owned(),
        report.verified.to_string(),
        report.survivors.to_string(),
        report.k.to_string(),
        report.t.to_string(),
    ];
    row.extend(CSV_STAGES.map(|s| {
        report
            .dropped
            .get(&s)
            .map_or_else(String::new, u32::to_string)
    }));
    row.extend(CSV_STAGES.map(|s| {
        report
            .stage_seconds
            .get(&s)
            .map_or_else(String::new, f64::to_string)
    }));
    row.extend([
        report.client_mask_seconds_median.to_string(),
        report.server_unmask_seconds.to_string(),
        report.total_seconds.to_string(),
        report.bytes_sent_per_client.to_string(),
        report.bytes_received_per_client.to_string(),
        report.server_bytes_received.to_string(),
        report.server_bytes_sent.to_string(),
        report.packed_vector_bytes.to_string(),
        report
            .peak_rss_bytes
            .map_or_else(String::new, |b| b.to_string()),
        report
            .abort_stage
            .map_or_else(String::new, |s| s.name().to_owned()),
        report.abort_reason.map_or_else(String::new, |r| {
            // The kebab-case name the JSON output uses, not the sentence.
            serde_json::to_value(r)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        }),
    ]);
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_report as sample;
    use crate::report::sample_row as row;
    use tessera_aggregation::sim::Outcome;

    #[test]
    fn sweep_csv_has_one_line_per_run_and_leaves_no_dp_targets_empty() {
        let point = |arm: &str, epsilon: Option<f64>| SweepPoint {
            arm: arm.into(),
            epsilon,
            epsilon_spent: 7.9,
            adversary: "server",
            accuracy: 0.875,
            rounds: 20,
            seconds: 61.25,
            dir: PathBuf::from("runs").join(arm),
        };
        let text = sweep_csv(&[point("no-dp", None), point("dp-fedavg", Some(8.0))]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], SWEEP_CSV_HEADER);
        assert_eq!(lines[1], "no-dp,,7.9000,server,0.8750,20,61.2,runs/no-dp");
        assert_eq!(
            lines[2],
            "dp-fedavg,8,7.9000,server,0.8750,20,61.2,runs/dp-fedavg"
        );
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn demo_csv_has_the_contract_columns_and_one_line_per_round() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounds.csv");
        let mut evaluated = row(2);
        evaluated.federated_accuracy = Some(0.8125);
        write_demo_csv(&path, &[row(1), evaluated]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(
                "round,survivors,dropped,accuracy,loss,epsilon,seconds,bytes_per_client"
            )
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            "2,18,2,0.5200,1.2500,0.5000,0.500,12345,67890,true,1.500e-5,0,0.8125"
        );
        // Without federated evaluation the column is empty.
        assert!(lines[1].ends_with(",0,"), "{}", lines[1]);
        assert!(!dir.path().join("rounds.csv.tmp").exists());
    }

    #[test]
    fn csv_rows_match_the_header_and_leave_unrun_stages_empty() {
        let header = csv_header();
        for outcome in [Outcome::Completed, Outcome::Aborted] {
            let row = csv_row(&sample(outcome));
            assert_eq!(row.len(), header.len());
            assert!(row.iter().all(|cell| !cell.contains(',')));
            let cell = |name: &str| &row[header.iter().position(|h| h == name).unwrap()];
            assert_eq!(cell("dropped_share_keys"), "1");
            assert_eq!(cell("dropped_unmasking"), "");
            assert_eq!(cell("seconds_advertise_keys"), "0.5");
            assert_eq!(cell("peak_rss_bytes"), "1048576");
        }
        let aborted = csv_row(&sample(Outcome::Aborted));
        assert_eq!(aborted[header.len() - 2], "share-keys");
        assert_eq!(aborted[header.len() - 1], "below-threshold");
        let completed = csv_row(&sample(Outcome::Completed));
        assert_eq!(completed[header.len() - 1], "");
    }
}
