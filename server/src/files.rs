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

/// A file or directory operation failed; names the path it failed on (the
/// temporary file, the target or the directory, whichever it was).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}", path = path.display())]
pub struct WriteError {
    /// The path the operation failed on.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl WriteError {
    fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
        move |source| WriteError {
            path: path.to_owned(),
            source,
        }
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
    write_atomic_with(path, bytes, false)
}

/// [`write_atomic`] for a secret: the file is owner-only (mode 0600 on
/// unix) before any byte is written, even if a leftover temporary file had
/// wider permissions, and the rename replaces whatever permissions an
/// older `NAME` had.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, bytes, true)
}

fn write_atomic_with(path: &Path, bytes: &[u8], private: bool) -> Result<(), WriteError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        // A leftover NAME.tmp (a crash's, or a symlink someone planted) is
        // removed, not opened: opening follows a symlink, and would write
        // the bytes (a key) into whatever file it points to. A new file
        // (O_EXCL) never follows one; a symlink planted again in between
        // fails the write instead.
        remove_if_present(&tmp)?;
        let mut file = if private {
            create_private(&tmp)?
        } else {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?
        };
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(WriteError::at(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(WriteError::at(path))?;
    sync_dir(parent(path))
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

/// Makes a rename, creation or removal in `dir` durable. Only Unix can
/// open a directory to sync it, and some Unix file systems answer EINVAL;
/// only that failure is ignored.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    if cfg!(unix) {
        match fs::File::open(dir).and_then(|d| d.sync_all()) {
            Err(e) if e.kind() != std::io::ErrorKind::InvalidInput => {
                return Err(WriteError::at(dir)(e));
            }
            _ => {}
        }
    }
    Ok(())
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
            write_atomic_with(&path, b"secret", private).unwrap();
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
