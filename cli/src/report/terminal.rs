//! What the commands print on stdout: the demo's table of rounds, and
//! `tessera simulate`'s header, table or JSON lines, and summary; plus the
//! peak-memory reading the protocol crate cannot do itself (it does no IO).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use tessera_aggregation::Stage;
use tessera_aggregation::sim::{Outcome, RoundReport};

use super::outcome_name;
use crate::demo::RoundRow;
use crate::params::graph_name;
use crate::simulate::Plan;

/// The heading of the demo's table.
pub(crate) const DEMO_TABLE_HEADER: &str =
    "round  survivors/dropped  accuracy    loss  epsilon  seconds  bytes/client  check";

/// One round of the demo as a line of its table.
pub(crate) fn demo_table_row(r: &RoundRow) -> String {
    let who = if r.completed {
        format!("{}/{}", r.survivors, r.dropped)
    } else {
        format!("aborted/{}", r.dropped)
    };
    // Unplanned dropouts are named: the plan did not ask for them.
    let who = if r.lost > 0 {
        format!("{who} ({} lost)", r.lost)
    } else {
        who
    };
    let check = r
        .max_error_vs_plain
        .map_or("-".to_owned(), |e| format!("{e:.1e}"));
    // Only rounds with federated evaluation carry the column, so the
    // default table stays as the README shows it.
    let federated = r
        .federated_accuracy
        .map_or(String::new(), |a| format!("  federated {a:.4}"));
    format!(
        "{:>5}  {:>17}  {:>8.4}  {:>6.3}  {:>7.3}  {:>7.2}  {:>12}  {check}{federated}",
        r.round, who, r.accuracy, r.loss, r.epsilon, r.seconds, r.bytes_per_client
    )
}

/// A byte count for people: binary units with one decimal.
pub(crate) fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A short name for a stage, to keep the dropped column narrow.
fn stage_abbreviation(stage: Stage) -> &'static str {
    match stage {
        Stage::AdvertiseKeys => "adv",
        Stage::ShareKeys => "shr",
        Stage::MaskedInput => "msk",
        Stage::ConsistencyCheck => "chk",
        Stage::Unmasking => "unm",
    }
}

/// The configuration line printed before the table, and where the finder or
/// a flag decided the parameters.
pub(crate) fn write_header(
    out: &mut impl Write,
    plan: &Plan,
    rounds: u32,
    threads: usize,
) -> std::io::Result<()> {
    let sim = &plan.sim;
    let drops = sim
        .drops
        .iter()
        .map(|(stage, fraction)| format!("{stage}={fraction}"))
        .collect::<Vec<_>>()
        .join(" ");
    writeln!(
        out,
        "n={} d={} graph={} k={} t={} bits={} prg={} threat-model={} drops=[{}] rounds={} seed={} threads={}",
        sim.clients,
        sim.dim,
        graph_name(sim.graph),
        plan.k,
        sim.threshold,
        sim.bits,
        sim.prg.name(),
        sim.threat_model,
        drops,
        rounds,
        sim.seed,
        threads
    )?;
    writeln!(out, "  {}", plan.origin)
}

/// One column of the human table.
#[derive(Debug)]
struct Column {
    /// Heading.
    title: String,
    /// Left-aligned (text) or right-aligned (numbers).
    left: bool,
    /// Width of the column: the heading's, or the widest expected cell.
    width: usize,
}

/// The human table: fixed columns, one row per round as it finishes.
#[derive(Debug)]
pub(crate) struct Table {
    /// The stages the rounds run, for the dropped column.
    stages: Vec<Stage>,
    /// Column headings and alignment.
    columns: Vec<Column>,
}

impl Table {
    /// A table for rounds that run `stages`.
    pub(crate) fn new(stages: &[Stage]) -> Self {
        let dropped = format!(
            "dropped {}",
            stages
                .iter()
                .map(|s| stage_abbreviation(*s))
                .collect::<Vec<_>>()
                .join("/")
        );
        // Minimum widths fit the usual cells ("completed", "1023.9 KiB").
        let columns = [
            ("round", false, 0),
            ("outcome", true, 9),
            ("verified", true, 0),
            ("survivors", false, 0),
            (dropped.as_str(), true, 0),
            ("total s", false, 0),
            ("mask ms (median)", false, 0),
            ("unmask ms", false, 0),
            ("sent/client", false, 0),
            ("server received", false, 0),
            ("peak RSS MiB", false, 0),
        ]
        .into_iter()
        .map(|(title, left, min_width)| Column {
            title: title.to_owned(),
            left,
            width: title.len().max(min_width),
        })
        .collect();
        Table {
            stages: stages.to_vec(),
            columns,
        }
    }

    /// Writes the column headings.
    pub(crate) fn write_heading(&self, out: &mut impl Write) -> std::io::Result<()> {
        let titles: Vec<String> = self.columns.iter().map(|c| c.title.clone()).collect();
        self.write_cells(out, &titles)
    }

    /// Writes one round's row.
    pub(crate) fn write_row(
        &self,
        out: &mut impl Write,
        report: &RoundReport,
    ) -> std::io::Result<()> {
        let dropped = self
            .stages
            .iter()
            .map(|s| match report.dropped.get(s) {
                Some(count) => count.to_string(),
                None => "-".to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        let completed = report.outcome == Outcome::Completed;
        let cells = [
            report.round.to_string(),
            outcome_name(report.outcome).to_owned(),
            if report.verified { "yes" } else { "no" }.to_owned(),
            report.survivors.to_string(),
            dropped,
            format!("{:.3}", report.total_seconds),
            if report.dropped.contains_key(&Stage::MaskedInput) {
                format!("{:.2}", report.client_mask_seconds_median * 1e3)
            } else {
                "-".to_owned()
            },
            if completed {
                format!("{:.2}", report.server_unmask_seconds * 1e3)
            } else {
                "-".to_owned()
            },
            if completed {
                format_bytes(report.bytes_sent_per_client)
            } else {
                "-".to_owned()
            },
            format_bytes(report.server_bytes_received as f64),
            match report.peak_rss_bytes {
                Some(bytes) => format!("{:.1}", bytes as f64 / (1024.0 * 1024.0)),
                None => "-".to_owned(),
            },
        ];
        self.write_cells(out, &cells)
    }

    /// Writes cells padded to the headings' widths, two spaces apart.
    fn write_cells(&self, out: &mut impl Write, cells: &[String]) -> std::io::Result<()> {
        let mut line = String::new();
        for (i, (column, cell)) in self.columns.iter().zip(cells).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let width = column.width;
            if column.left {
                line.push_str(&format!("{cell:<width$}"));
            } else {
                line.push_str(&format!("{cell:>width$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())
    }
}

/// Writes one round as a single JSON line (the `--json` output).
pub(crate) fn write_json_line(out: &mut impl Write, report: &RoundReport) -> anyhow::Result<()> {
    let line = serde_json::to_string(report).context("serialising a round report")?;
    writeln!(out, "{line}")?;
    Ok(())
}

/// Totals over the run, printed after the table.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Rounds run.
    rounds: u32,
    /// Rounds that produced a sum.
    completed: u32,
    /// Completed rounds whose sum matched the plain sum.
    verified: u32,
    /// Wall time of the completed rounds.
    completed_seconds: f64,
    /// Aborted rounds by stage and reason.
    aborts: BTreeMap<(String, String), Vec<u32>>,
    /// What a faulty network did over all rounds (`--faults`).
    faults: tessera_aggregation::sim::FaultCounts,
}

impl Summary {
    /// Counts one round.
    pub(crate) fn add(&mut self, report: &RoundReport) {
        self.rounds += 1;
        self.faults.lost += report.faults.lost;
        self.faults.duplicated += report.faults.duplicated;
        self.faults.delayed += report.faults.delayed;
        self.faults.refused += report.faults.refused;
        match report.outcome {
            Outcome::Completed => {
                self.completed += 1;
                self.completed_seconds += report.total_seconds;
                if report.verified {
                    self.verified += 1;
                }
            }
            Outcome::Aborted => {
                let stage = report
                    .abort_stage
                    .map_or_else(|| "an unknown stage".to_owned(), |s| s.to_string());
                let reason = report
                    .abort_reason
                    .map_or_else(|| "no reason given".to_owned(), |r| r.to_string());
                self.aborts
                    .entry((stage, reason))
                    .or_default()
                    .push(report.round);
            }
        }
    }

    /// Writes the summary lines.
    pub(crate) fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let aborted = self.rounds - self.completed;
        write!(
            out,
            "{} round{}: {} completed ({} verified), {} aborted",
            self.rounds,
            if self.rounds == 1 { "" } else { "s" },
            self.completed,
            self.verified,
            aborted
        )?;
        if self.completed > 0 {
            write!(
                out,
                "; mean completed round {:.3} s",
                self.completed_seconds / f64::from(self.completed)
            )?;
        }
        writeln!(out)?;
        for ((stage, reason), rounds) in &self.aborts {
            let list = rounds
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(out, "  aborted at {stage} ({reason}): round {list}")?;
        }
        let f = &self.faults;
        if f.lost + f.duplicated + f.delayed > 0 {
            writeln!(
                out,
                "  network faults: {} lost, {} duplicated, {} delayed; {} messages refused",
                f.lost, f.duplicated, f.delayed, f.refused
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_report as sample;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(format_bytes(0.0), "0 B");
        assert_eq!(format_bytes(1023.0), "1023 B");
        assert_eq!(format_bytes(1536.0), "1.5 KiB");
        assert_eq!(format_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }

    #[test]
    fn json_uses_the_documented_keys_and_stage_names() {
        let mut buffer = Vec::new();
        write_json_line(&mut buffer, &sample(Outcome::Aborted)).unwrap();
        let text = String::from_utf8(buffer).unwrap();
        assert_eq!(text.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["outcome"], "aborted");
        assert_eq!(value["abort_stage"], "share-keys");
        assert_eq!(value["abort_reason"], "below-threshold");
        assert_eq!(value["dropped"]["share-keys"], 1);
        assert_eq!(value["stage_seconds"]["advertise-keys"], 0.5);
        assert_eq!(value["peak_rss_bytes"], 1 << 20);
    }

    #[test]
    fn table_rows_line_up_with_the_heading() {
        let stages = [
            Stage::AdvertiseKeys,
            Stage::ShareKeys,
            Stage::MaskedInput,
            Stage::Unmasking,
        ];
        let table = Table::new(&stages);
        let mut buffer = Vec::new();
        table.write_heading(&mut buffer).unwrap();
        table
            .write_row(&mut buffer, &sample(Outcome::Completed))
            .unwrap();
        let text = String::from_utf8(buffer).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("dropped adv/shr/msk/unm"));
        // The right edge of the round column and the verified cell line up.
        assert_eq!(
            lines[0].find("round").unwrap() + 5,
            lines[1].find('3').unwrap() + 1
        );
        assert!(lines[1].contains("0/1/-/-"));
        assert_eq!(lines[0].find("verified"), lines[1].find("yes"));
    }
}
