//! The demo's output directory: what it may hold, and emptying it before a
//! run so no file of an earlier run is mistaken for this one's.

use std::path::Path;

use super::DemoError;
use super::sweep::SWEEP_OUTPUTS;

/// Files the demo writes in its output directory; anything else there
/// means the directory is someone else's, and the demo refuses it.
const OUTPUTS: [&str; 6] = [
    "data",
    "tls",
    "tokens.txt",
    "enrolled.txt",
    "rounds.csv",
    "rounds.svg",
];

/// Empties the demo's own outputs from `out`, creating it if missing.
pub(super) fn prepare_out(out: &Path) -> Result<(), DemoError> {
    prepare(out, &OUTPUTS)
}

/// Empties a sweep's outputs (`sweep.csv`, `sweep.svg` and the `runs`
/// directory of its demo runs) from `out`, creating it if missing.
pub(super) fn prepare_sweep_out(out: &Path) -> Result<(), DemoError> {
    prepare(out, &SWEEP_OUTPUTS)
}

/// Refuses `out` if it holds anything but `outputs`, then removes those.
fn prepare(out: &Path, outputs: &[&str]) -> Result<(), DemoError> {
    let err = |problem: String| DemoError::Output {
        path: out.to_owned(),
        problem,
    };
    if out.exists() {
        refuse_foreign_files(out, outputs)?;
        for &name in outputs {
            remove(&out.join(name)).map_err(|e| err(format!("cannot replace {name}: {e}")))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| err(e.to_string()))
}

/// Refuses `out` if it holds anything the demo did not write, before
/// anything in it is removed.
fn refuse_foreign_files(out: &Path, outputs: &[&str]) -> Result<(), DemoError> {
    let err = |problem: String| DemoError::Output {
        path: out.to_owned(),
        problem,
    };
    let entries = std::fs::read_dir(out).map_err(|e| err(e.to_string()))?;
    for entry in entries {
        let name = entry.map_err(|e| err(e.to_string()))?.file_name();
        let name = name.to_string_lossy();
        if !outputs.contains(&name.as_ref()) {
            return Err(err(format!(
                "holds {name:?}, which the demo did not write; pass --out with a new or empty directory"
            )));
        }
    }
    Ok(())
}

/// Removes the file or directory at `path`, if there is one.
fn remove(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else if path.exists() {
        std::fs::remove_file(path)
    } else {
        Ok(())
    }
}
