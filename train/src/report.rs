//! The demo's files: `rounds.csv` (one row per round) and `rounds.svg`
//! (accuracy and epsilon spent per round), written from the rows the demo
//! returned, so the files say exactly what the table said.

use std::io::Write;
use std::path::Path;

use plotters::prelude::*;

use crate::demo::RoundRow;

/// The CSV header; the first eight columns are the contract scripts rely
/// on.
pub const CSV_HEADER: &str = "round,survivors,dropped,accuracy,loss,epsilon,seconds,bytes_per_client,bytes_received,completed,max_error_vs_plain";

/// Writes `rows` as CSV to `path` (atomically: a temp file renamed over
/// it, so a reader never sees half a file).
pub fn write_csv(path: &Path, rows: &[RoundRow]) -> std::io::Result<()> {
    let tmp = path.with_extension("csv.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(f, "{CSV_HEADER}")?;
        for r in rows {
            writeln!(
                f,
                "{},{},{},{:.4},{:.4},{:.4},{:.3},{},{},{},{}",
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
            )?;
        }
        f.flush()?;
        f.get_ref().sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// Draws accuracy (left axis) and epsilon spent (right axis) per round to
/// an SVG at `path`; `initial_accuracy` is plotted at round 0 and
/// `title` heads the chart.
pub fn write_svg(
    path: &Path,
    rows: &[RoundRow],
    initial_accuracy: f32,
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = rows.last().map_or(1, |r| r.round).max(1);
    let eps_max = rows.iter().map(|r| r.epsilon).fold(0.0, f64::max).max(1e-9) * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .right_y_label_area_size(56)
        .build_cartesian_2d(0u64..rounds, 0f64..1.0)?
        .set_secondary_coord(0u64..rounds, 0f64..eps_max);
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("test accuracy")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("epsilon spent")
        .draw()?;
    let blue = RGBColor(0x4e, 0x79, 0xa7);
    let orange = RGBColor(0xf2, 0x8e, 0x2b);
    let accuracy = std::iter::once((0, f64::from(initial_accuracy)))
        .chain(rows.iter().map(|r| (r.round, f64::from(r.accuracy))));
    chart
        .draw_series(LineSeries::new(accuracy, blue.stroke_width(2)))?
        .label("accuracy")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], blue.stroke_width(2)));
    let epsilon = std::iter::once((0, 0.0)).chain(rows.iter().map(|r| (r.round, r.epsilon)));
    chart
        .draw_secondary_series(LineSeries::new(epsilon, orange.stroke_width(2)))?
        .label("epsilon")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], orange.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(round: u64) -> RoundRow {
        RoundRow {
            round,
            survivors: 18,
            dropped: 2,
            completed: true,
            accuracy: 0.5 + round as f32 / 100.0,
            loss: 1.25,
            epsilon: round as f64 * 0.25,
            seconds: 0.5,
            bytes_per_client: 12_345,
            bytes_received: 67_890,
            max_error_vs_plain: Some(1.5e-5),
        }
    }

    #[test]
    fn csv_has_the_contract_columns_and_one_line_per_round() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounds.csv");
        write_csv(&path, &[row(1), row(2)]).unwrap();
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
            "2,18,2,0.5200,1.2500,0.5000,0.500,12345,67890,true,1.500e-5"
        );
        assert!(!dir.path().join("rounds.csv.tmp").exists());
    }

    #[test]
    fn svg_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounds.svg");
        write_svg(&path, &[row(1), row(2), row(3)], 0.1, "demo").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("epsilon spent"));
    }
}
