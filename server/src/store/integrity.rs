//! Authenticating the data directory: the state key and the MAC chains.
//!
//! A hash chain alone does not stop someone who can edit the data
//! directory: they edit a record and recompute the chain. So every record
//! that decides what the server publishes or claims (the ledger's entries
//! and terms, the manifest's entries, the round records, the audit log's
//! lines) carries an HMAC-SHA256 tag under a key derived from the **state
//! key**, a 32-byte secret kept in a file outside the data directory (see
//! [`StateKey`]). Each tag covers the record's canonical bytes (compact
//! JSON of every field the record has, in declaration order) and the tag
//! of the record before it, so a record cannot be edited, removed from the
//! middle or reordered without the key; a **head** tag over the file's own
//! fields and its last entry's tag makes a truncated or re-headed file
//! fail too. Which record binds to which:
//!
//! ```text
//! ledger entry  <- manifest entry (its round's charge, the model file's SHA-256)
//!                    <- round record (the SHA-256 of the model it published)
//! ```
//!
//! Each purpose has its own key ([`StateKey::subkey`]), so a tag of one
//! kind of record is never accepted for another. Tags are compared in
//! constant time ([`hmac::Mac::verify_slice`]).
//!
//! What this does not stop: an operator holding the state key can rewrite
//! history and re-tag it; and replacing a whole file with an older,
//! authentic copy of itself (a rollback) is caught only where another file
//! refers to what it lost (the manifest to the ledger's charges, the round
//! records to the manifest's models, the audit log's `charged` events to
//! the ledger's charges and its round events to the round records). The
//! audit log has no head tag (it is appended line by line), so a log cut
//! back by whole lines, together with the files that refer past the cut,
//! is an earlier authentic state: keep a copy of the log off the machine.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use rand::SeedableRng as _;
use rand_core::Rng as _;
use serde::Serialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::files;

type HmacSha256 = hmac::Hmac<Sha256>;

/// A tag: HMAC-SHA256 output.
pub(crate) type Tag = [u8; 32];

/// The tag before the first record of a chain.
pub(crate) const GENESIS: Tag = [0; 32];

/// The file name of the state key when it is generated beside the TLS
/// key.
pub const STATE_KEY_FILE: &str = "state.key";

/// Why the state key could not be read or made. Messages name the file;
/// none carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateKeyError {
    /// The file could not be read or created.
    #[error("state key {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file does not hold 64 hexadecimal digits.
    #[error("state key {} does not hold a key (64 hexadecimal digits on one line)", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// The server's state key: 32 secret bytes that authenticate the data
/// directory. Kept in a file outside the data directory (mode 0600, 64 hex
/// digits), zeroized in memory when dropped, never logged (its `Debug`
/// prints nothing of it).
///
/// ```
/// use tessera_server::store::StateKey;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state.key");
/// let (key, created) = StateKey::load_or_create(&path)?;
/// assert!(created);
/// let (again, created) = StateKey::load_or_create(&path)?;
/// assert!(!created && again == key);
/// assert_eq!(format!("{key:?}"), "StateKey(..)");
/// // A file that is not a key is refused, naming the file.
/// std::fs::write(&path, "not a key")?;
/// assert!(StateKey::load(&path).unwrap_err().to_string().contains("state.key"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StateKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey(..)")
    }
}

impl PartialEq for StateKey {
    /// Constant time: a key is a secret.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.ct_eq(&*other.0).into()
    }
}

impl StateKey {
    /// A key from its bytes (for tests and tools that hold one already).
    pub fn from_bytes(bytes: [u8; 32]) -> StateKey {
        StateKey(Zeroizing::new(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> StateKey {
        let mut rng = rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)
            .expect("the operating system's random number generator works");
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut bytes[..]);
        StateKey(bytes)
    }

    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<StateKey, StateKeyError> {
        let text =
            Zeroizing::new(
                fs::read_to_string(path).map_err(|source| StateKeyError::Io {
                    path: path.to_owned(),
                    source,
                })?,
            );
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut bytes[..]).map_err(|_| {
            StateKeyError::Malformed {
                path: path.to_owned(),
            }
        })?;
        Ok(StateKey(bytes))
    }

    /// Reads the key file at `path`, or, if there is none, generates a key
    /// and writes it there (owner-only, atomically). The flag says whether
    /// it was created now: a data directory cannot have been authenticated
    /// under a key that did not exist.
    pub fn load_or_create(path: &Path) -> Result<(StateKey, bool), StateKeyError> {
        match fs::metadata(path) {
            Ok(_) => Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                let text = Zeroizing::new(format!("{}\n", hex::encode(*key.0)));
                let failed = |e: files::WriteError| StateKeyError::Io {
                    path: e.path,
                    source: e.source,
                };
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(dir).map_err(|source| StateKeyError::Io {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                files::write_atomic_private(path, text.as_bytes()).map_err(failed)?;
                Ok((key, true))
            }
            Err(source) => Err(StateKeyError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The key for one kind of record: HMAC(state key, purpose), so a tag
    /// made for one purpose never verifies for another.
    pub(crate) fn subkey(&self, purpose: Purpose) -> MacKey {
        let mut mac = HmacSha256::new_from_slice(&*self.0).expect("HMAC takes any key length");
        mac.update(b"tessera state key v1: ");
        mac.update(purpose.label().as_bytes());
        MacKey(Zeroizing::new(mac.finalize().into_bytes().into()))
    }
}

/// What a derived key authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// `ledger.json`.
    Ledger,
    /// `manifest.json`.
    Manifest,
    /// `rounds/round-*.json`.
    Rounds,
    /// `audit.jsonl`.
    Audit,
    /// `ftrl.json`, DP-FTRL's state.
    Ftrl,
    /// DP-FTRL's tree seed (not a MAC key: the seed is derived with it).
    FtrlSeed,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::Ledger => "ledger",
            Purpose::Manifest => "manifest",
            Purpose::Rounds => "round records",
            Purpose::Audit => "audit log",
            Purpose::Ftrl => "dp-ftrl state",
            Purpose::FtrlSeed => "dp-ftrl tree seed",
        }
    }
}

/// A key derived for one [`Purpose`]; zeroized on drop.
pub(crate) struct MacKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// The MAC over `prev` and `parts`, each part length-prefixed so that
    /// no two different inputs are fed as the same bytes.
    fn mac(&self, prev: &Tag, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&*self.0).expect("HMAC takes any key length");
        mac.update(prev);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The tag of a record whose predecessor's tag is `prev`.
    pub(crate) fn tag(&self, prev: &Tag, parts: &[&[u8]]) -> Tag {
        self.mac(prev, parts).finalize().into_bytes().into()
    }

    /// Whether `tag` (hex, as stored) is the tag of `parts` after `prev`;
    /// the comparison is constant-time.
    pub(crate) fn verify(&self, prev: &Tag, parts: &[&[u8]], tag: &str) -> Option<Tag> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(tag, &mut bytes).ok()?;
        self.mac(prev, parts)
            .verify_slice(&bytes)
            .ok()
            .map(|()| bytes)
    }
}

/// The canonical bytes of a record: compact JSON of every field, in the
/// declaration order of its type (what is written is what is tagged, and a
/// field added to the type later is covered without a change here).
pub(crate) fn canonical<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise")
}

/// Hex of a tag, as stored.
pub(crate) fn hex_tag(tag: &Tag) -> String {
    hex::encode(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_depend_on_key_purpose_predecessor_and_every_byte() {
        let key = StateKey::from_bytes([7; 32]);
        let ledger = key.subkey(Purpose::Ledger);
        let t = ledger.tag(&GENESIS, &[b"ab", b"c"]);
        assert_eq!(
            ledger.verify(&GENESIS, &[b"ab", b"c"], &hex_tag(&t)),
            Some(t)
        );
        // Moving a byte across the part boundary changes the input.
        assert!(
            ledger
                .verify(&GENESIS, &[b"a", b"bc"], &hex_tag(&t))
                .is_none()
        );
        assert!(ledger.verify(&t, &[b"ab", b"c"], &hex_tag(&t)).is_none());
        let other = key.subkey(Purpose::Manifest);
        assert!(
            other
                .verify(&GENESIS, &[b"ab", b"c"], &hex_tag(&t))
                .is_none()
        );
        let stranger = StateKey::from_bytes([8; 32]).subkey(Purpose::Ledger);
        assert!(
            stranger
                .verify(&GENESIS, &[b"ab", b"c"], &hex_tag(&t))
                .is_none()
        );
        assert!(ledger.verify(&GENESIS, &[b"ab", b"c"], "zz").is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_generated_key_is_owner_only_and_reads_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keys").join(STATE_KEY_FILE);
        let (key, created) = StateKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(StateKey::load(&path).unwrap(), key);
        assert!(StateKey::generate() != key);
    }
}
