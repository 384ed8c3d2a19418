//! Writing a file so that a crash never leaves a torn one.
//!
//! [`write_atomic`] writes `NAME.tmp` in the same directory, fsyncs it,
//! renames it over `NAME` and fsyncs the directory: whatever instant the
//! process or the machine dies, a reader finds either the old file or the
//! new one, and once the call returns the new one survives a power cut.
//! The temporary file lives in the same directory because a rename is
//! atomic only within one file system. The data directory's manifest,
//! models, momentum, ledger and round records, and the self-signed TLS
//! certificate and key go through it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A file or directory operation failed; names the path it failed on (the
/// temporary file, the target or the directory, whichever it was) and the
/// operation.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}", path = path.display())]
pub struct WriteError {
    /// The path the operation failed on.
    pub path: PathBuf,
    /// The operation that failed.
    pub op: Op,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The operations a write to disk is made of, as [`Disk`] counts them and a
/// [`FaultPlan`] fails them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Creating a file (or directory) and writing its bytes.
    Write,
    /// Flushing a file or a directory to stable storage.
    Fsync,
    /// Renaming a temporary file over its target.
    Rename,
    /// Removing a file.
    Remove,
}

impl Op {
    /// The operation's name, as the storage-error metric labels it.
    pub fn label(self) -> &'static str {
        match self {
            Op::Write => "write",
            Op::Fsync => "fsync",
            Op::Rename => "rename",
            Op::Remove => "remove",
        }
    }
}

/// The error an injected fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// An I/O error (EIO), as a failing device gives.
    Io,
    /// No space left on the device (ENOSPC, [`std::io::ErrorKind::StorageFull`]).
    StorageFull,
    /// A read-only file system (EROFS).
    ReadOnly,
}

impl Failure {
    fn error(self) -> std::io::Error {
        let errno = match self {
            Failure::Io => 5,
            Failure::StorageFull => 28,
            Failure::ReadOnly => 30,
        };
        std::io::Error::from_raw_os_error(errno)
    }
}

/// Which operations a [`FaultPlan`] fails.
#[derive(Clone, Debug)]
enum Rule {
    /// Operation number `n` (1-based, counted since the plan was made).
    Nth { n: u64, failure: Failure },
    /// Every operation from number `n` on: the process died there, and
    /// nothing after it (not even a cleanup) reaches the disk.
    From { n: u64 },
    /// Every operation of kind `op` (any, if `None`) on a path containing
    /// `file`, until [`FaultPlan::clear`].
    Matching {
        op: Option<Op>,
        file: String,
        failure: Failure,
    },
}

#[derive(Debug, Default)]
struct PlanState {
    ops: Vec<(Op, PathBuf)>,
    rules: Vec<Rule>,
}

/// Faults to inject into a [`Disk`]: write, fsync, rename and remove
/// errors, and ENOSPC, at the Nth operation or on a named file. A handle:
/// clones share one plan, so a test keeps one and changes it while a
/// server runs. Tests run as root, where `chmod` stops nothing; this is how
/// they make a disk fail.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan(Arc<Mutex<PlanState>>);

impl FaultPlan {
    /// A plan that fails nothing yet.
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Operations attempted so far (failed ones included).
    pub fn ops(&self) -> u64 {
        self.state().ops.len() as u64
    }

    /// Every operation attempted so far, in order, with its path.
    pub fn log(&self) -> Vec<(Op, PathBuf)> {
        self.state().ops.clone()
    }

    /// Fails operation number `n` (1-based, counted since the plan was
    /// made; see [`FaultPlan::ops`]) once.
    pub fn fail_nth(&self, n: u64, failure: Failure) {
        self.state().rules.push(Rule::Nth { n, failure });
    }

    /// Simulates a crash before operation number `n`: it and every later
    /// operation fail (EIO), so what is on disk is what the process had
    /// done when it died.
    pub fn crash_at(&self, n: u64) {
        self.state().rules.push(Rule::From { n });
    }

    /// Fails every operation of kind `op` (any kind, if `None`) on a path
    /// containing `file`, until [`FaultPlan::clear`]. An empty `file`
    /// matches every path: a full or read-only disk.
    pub fn fail_matching(&self, op: Option<Op>, file: &str, failure: Failure) {
        self.state().rules.push(Rule::Matching {
            op,
            file: file.to_owned(),
            failure,
        });
    }

    /// Removes every fault: the disk has recovered.
    pub fn clear(&self) {
        self.state().rules.clear();
    }

    /// Counts the operation and returns the error a rule injects, if any.
    fn before(&self, op: Op, path: &Path) -> Option<std::io::Error> {
        let mut state = self.state();
        state.ops.push((op, path.to_owned()));
        let n = state.ops.len() as u64;
        let shown = path.to_string_lossy();
        state.rules.iter().find_map(|rule| match rule {
            Rule::Nth { n: at, failure } if *at == n => Some(failure.error()),
            Rule::From { n: at } if n >= *at => Some(Failure::Io.error()),
            Rule::Matching {
                op: kind,
                file,
                failure,
            } if kind.is_none_or(|k| k == op) && shown.contains(file.as_str()) => {
                Some(failure.error())
            }
            _ => None,
        })
    }
}

/// The storage seam: every write, fsync, rename and remove of the data
/// directory goes through a `Disk`. [`Disk::real`] is the file system
/// (checking for a fault plan is one branch per operation, nothing beside a
/// system call); [`Disk::with_faults`] makes operations fail as a
/// [`FaultPlan`] says, so tests can play a full, read-only or failing disk
/// and a crash at any step. A failed operation is counted in the
/// `tessera_storage_write_errors_total` metric, by operation.
#[derive(Clone, Debug)]
pub struct Disk {
    faults: Option<FaultPlan>,
    /// Whether failures count in the data directory's error metric (the
    /// free functions below serve the CLI and TLS files, which do not).
    metered: bool,
}

impl Default for Disk {
    fn default() -> Self {
        Disk::real()
    }
}

impl Disk {
    /// The real file system.
    pub fn real() -> Disk {
        Disk {
            faults: None,
            metered: true,
        }
    }

    /// The real file system, with the faults `plan` injects.
    pub fn with_faults(plan: FaultPlan) -> Disk {
        Disk {
            faults: Some(plan),
            metered: true,
        }
    }

    fn unmetered() -> Disk {
        Disk {
            faults: None,
            metered: false,
        }
    }

    /// Runs `op` on `path` unless the fault plan fails it; a failure is
    /// counted and named.
    fn run<T>(
        &self,
        op: Op,
        path: &Path,
        real: impl FnOnce() -> std::io::Result<T>,
    ) -> Result<T, WriteError> {
        let result = match self.inject(op, path) {
            Some(e) => Err(e),
            None => real(),
        };
        self.outcome(op, path, result)
    }

    /// The error the fault plan injects into this operation, if any.
    fn inject(&self, op: Op, path: &Path) -> Option<std::io::Error> {
        self.faults.as_ref().and_then(|plan| plan.before(op, path))
    }

    /// Counts a failure in the metric and names its path and operation.
    fn outcome<T>(&self, op: Op, path: &Path, result: std::io::Result<T>) -> Result<T, WriteError> {
        result.map_err(|source| {
            if self.metered {
                crate::metrics::storage_write_failed(op.label());
            }
            WriteError {
                path: path.to_owned(),
                op,
                source,
            }
        })
    }

    /// Writes `bytes` to `path` atomically and durably; see
    /// [`write_atomic`].
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
        self.write_atomic_with(path, bytes, false)
    }

    /// [`write_atomic_private`] through this disk.
    pub fn write_atomic_private(&self, path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
        self.write_atomic_with(path, bytes, true)
    }

    fn write_atomic_with(
        &self,
        path: &Path,
        bytes: &[u8],
        private: bool,
    ) -> Result<(), WriteError> {
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        if let Err(e) = self.write_synced(&tmp, bytes, private) {
            let _ = self.remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = self.run(Op::Rename, path, || fs::rename(&tmp, path)) {
            let _ = self.remove_file(&tmp);
            return Err(e);
        }
        self.sync_dir(parent(path))
    }

    /// Creates `path`, writes `bytes` and fsyncs it. An injected write
    /// fault leaves half the bytes, as a disk that fills up mid-write does.
    fn write_synced(&self, path: &Path, bytes: &[u8], private: bool) -> Result<(), WriteError> {
        // A leftover NAME.tmp (a crash's, or a symlink someone planted) is
        // removed, not opened: opening follows a symlink, and would write
        // the bytes (a key) into whatever file it points to. A new file
        // (O_EXCL) never follows one; a symlink planted again in between
        // fails the write instead.
        let open = || {
            remove_if_present(path)?;
            if private {
                create_private(path)
            } else {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
            }
        };
        let written = match self.inject(Op::Write, path) {
            Some(e) => {
                if let Ok(mut torn) = open() {
                    let _ = torn.write_all(&bytes[..bytes.len() / 2]);
                }
                Err(e)
            }
            None => open().and_then(|mut file| file.write_all(bytes).map(|()| file)),
        };
        let file = self.outcome(Op::Write, path, written)?;
        self.run(Op::Fsync, path, || file.sync_all())
    }

    /// Removes a file and makes the removal durable.
    pub fn remove_durably(&self, path: &Path) -> Result<(), WriteError> {
        self.remove_file(path)?;
        self.sync_dir(parent(path))
    }

    /// Removes a file (not durable until its directory is synced).
    pub fn remove_file(&self, path: &Path) -> Result<(), WriteError> {
        self.run(Op::Remove, path, || fs::remove_file(path))
    }

    /// Creates a directory and its missing parents, durably.
    pub fn create_dir_all(&self, dir: &Path) -> Result<(), WriteError> {
        self.run(Op::Write, dir, || fs::create_dir_all(dir))?;
        self.sync_dir(parent(dir))
    }

    /// Creates an empty file and removes it: whether the directory takes
    /// writes at all. The probe is a new file (O_EXCL): a leftover of its
    /// name, a symlink included, is removed first, never opened, so a
    /// symlink planted in the data directory cannot make the start
    /// truncate the file it points to.
    pub fn probe(&self, path: &Path) -> Result<(), WriteError> {
        self.run(Op::Write, path, || {
            remove_if_present(path)?;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map(drop)
        })?;
        self.remove_file(path)
    }

    /// Makes a rename, creation or removal in `dir` durable. Only Unix can
    /// open a directory to sync it, and some Unix file systems answer
    /// EINVAL; only that failure is ignored.
    pub fn sync_dir(&self, dir: &Path) -> Result<(), WriteError> {
        if !cfg!(unix) {
            return Ok(());
        }
        self.run(Op::Fsync, dir, || {
            match fs::File::open(dir).and_then(|d| d.sync_all()) {
                Err(e) if e.kind() != std::io::ErrorKind::InvalidInput => Err(e),
                _ => Ok(()),
            }
        })
    }
}

/// Writes `bytes` to `path` atomically and durably: `NAME.tmp`, fsync,
/// rename over `NAME`, fsync of the directory. A failed write removes its
/// temporary file.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state.json");
/// tessera_server::files::write_atomic(&path, b"{}")?;
/// assert_eq!(std::fs::read(&path)?, b"{}");
/// assert!(!dir.path().join("state.json.tmp").exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    Disk::unmetered().write_atomic(path, bytes)
}

/// [`write_atomic`] for a secret: the file is owner-only (mode 0600 on
/// unix) before any byte is written, even if a leftover temporary file had
/// wider permissions, and the rename replaces whatever permissions an
/// older `NAME` had.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    Disk::unmetered().write_atomic_private(path, bytes)
}

/// Creates the new file `path` for writing a secret: owner-only (mode
/// 0600 on unix) before any byte is written.
fn create_private(path: &Path) -> std::io::Result<fs::File> {
    let mut options = private_options();
    options.write(true).create_new(true);
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Removes `path` itself (a symlink, not what it points to), if present.
pub fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Open options that create a file owner-only (mode 0600 on unix); the
/// caller adds how to open it (`create_new`, `append`, ...). The mode only
/// applies to a file the call creates.
pub fn private_options() -> fs::OpenOptions {
    #[allow(unused_mut)] // the mode is unix-only
    let mut options = fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
}

/// Makes a rename, creation or removal in `dir` durable (see
/// [`Disk::sync_dir`]).
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    Disk::unmetered().sync_dir(dir)
}

/// The directory holding `path`, as a path `File::open` accepts (a bare
/// file name's parent is the empty path).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A warning for each secret file (a TLS private key, a tokens file) that
/// group or other users may read or write (unix mode `& 0o077 != 0`):
/// anyone who can read it can impersonate the server or its clients. The
/// server warns rather than refuses, so a deployment that relies on group
/// access keeps running. Files that cannot be inspected are skipped (the
/// load that follows reports them).
pub fn exposed_secret_warnings(paths: &[&Path]) -> Vec<String> {
    let mut warnings = Vec::new();
    #[cfg(unix)]
    for path in paths {
        use std::os::unix::fs::PermissionsExt as _;
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "{} holds a secret but has mode {mode:04o} (group or others can access it); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = paths;
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_names_the_temporary_file_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        // The target's directory does not exist: creating NAME.tmp fails.
        let path = dir.path().join("missing").join("a.json");
        let e = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(e.path, dir.path().join("missing").join("a.json.tmp"));
        assert!(e.to_string().starts_with(&e.path.display().to_string()));
    }

    /// The seam fails what the plan names, counts what it attempts, and
    /// leaves what a crash leaves.
    #[test]
    fn a_fault_plan_fails_the_nth_operation_a_named_file_or_everything_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let disk = Disk::with_faults(plan.clone());
        let path = dir.path().join("a.json");
        disk.write_atomic(&path, b"one").unwrap();
        // write, fsync, rename, directory fsync.
        let ops: Vec<Op> = plan.log().into_iter().map(|(op, _)| op).collect();
        assert_eq!(ops, [Op::Write, Op::Fsync, Op::Rename, Op::Fsync]);

        // ENOSPC at the next write: the old file stays, no temporary.
        plan.fail_nth(plan.ops() + 1, Failure::StorageFull);
        let e = disk.write_atomic(&path, b"two").unwrap_err();
        assert_eq!(
            (e.op, e.source.kind()),
            (Op::Write, std::io::ErrorKind::StorageFull)
        );
        assert_eq!(e.path, dir.path().join("a.json.tmp"));
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert!(!dir.path().join("a.json.tmp").exists());

        // A rename error on the named file, until cleared.
        plan.fail_matching(Some(Op::Rename), "a.json", Failure::Io);
        for _ in 0..2 {
            let e = disk.write_atomic(&path, b"three").unwrap_err();
            assert_eq!((e.op, e.path.clone()), (Op::Rename, path.clone()));
        }
        disk.write_atomic(&dir.path().join("b.json"), b"b").unwrap();
        plan.clear();
        disk.write_atomic(&path, b"three").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");

        // A crash at the write: a torn temporary file stays behind, as
        // nothing after the crash (not even the cleanup) happens.
        plan.crash_at(plan.ops() + 1);
        disk.write_atomic(&path, b"four-four").unwrap_err();
        assert_eq!(fs::read(dir.path().join("a.json.tmp")).unwrap(), b"four");
        assert_eq!(fs::read(&path).unwrap(), b"three");
        let e = disk.remove_file(&path).unwrap_err();
        assert_eq!(e.op, Op::Remove);
        assert!(path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_owner_only_even_over_a_wider_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(dir.path().join("key.pem.tmp"), b"left").unwrap();
        fs::set_permissions(
            dir.path().join("key.pem.tmp"),
            fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        write_atomic_private(&path, b"secret").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
    }

    /// A `NAME.tmp` planted as a symlink (in a shared directory, say)
    /// must not receive the bytes: a private write would otherwise put the
    /// key in a file the planter owns and can read whatever its mode, and
    /// any write would truncate the file it points to.
    #[cfg(unix)]
    #[test]
    fn a_temporary_planted_as_a_symlink_receives_nothing() {
        for private in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let planted = dir.path().join("planted.txt");
            fs::write(&planted, b"mine").unwrap();
            let path = dir.path().join("key.pem");
            std::os::unix::fs::symlink(&planted, dir.path().join("key.pem.tmp")).unwrap();
            if private {
                write_atomic_private(&path, b"secret").unwrap();
            } else {
                write_atomic(&path, b"secret").unwrap();
            }
            assert_eq!(fs::read(&planted).unwrap(), b"mine", "private {private}");
            let meta = fs::symlink_metadata(&path).unwrap();
            assert!(meta.file_type().is_file(), "private {private}");
            assert_eq!(fs::read(&path).unwrap(), b"secret");
        }
    }

    /// A key given through a symlink (whose own mode is always 0777) is
    /// judged by the file it names: an exposed key behind an owner-only
    /// looking link is warned about, an owner-only key behind a link is
    /// not; the warning holds the path and mode, never the content.
    #[cfg(unix)]
    #[test]
    fn a_secret_behind_a_symlink_is_judged_by_its_target() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        for (mode, warned) in [(0o640, true), (0o600, false)] {
            let key = dir.path().join(format!("key-{mode:o}.pem"));
            fs::write(&key, b"PRIVATE KEY material").unwrap();
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let link = dir.path().join(format!("link-{mode:o}.pem"));
            std::os::unix::fs::symlink(&key, &link).unwrap();
            let warnings = exposed_secret_warnings(&[&link]);
            assert_eq!(
                warnings.len(),
                usize::from(warned),
                "{mode:o}: {warnings:?}"
            );
            assert!(warnings.iter().all(|w| !w.contains("material")));
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_can_read_is_warned_about_and_an_owner_only_one_is_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("key.pem");
        let closed = dir.path().join("tokens.txt");
        fs::write(&open, b"k").unwrap();
        fs::write(&closed, b"t").unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o600)).unwrap();
        let warnings = exposed_secret_warnings(&[&open, &closed, &dir.path().join("missing")]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let shown = open.display().to_string();
        assert!(warnings[0].contains(&shown), "{}", warnings[0]);
        assert!(warnings[0].contains("0644"), "{}", warnings[0]);
        assert!(
            warnings[0].contains(&format!("chmod 600 {shown}")),
            "{}",
            warnings[0]
        );
    }
}
