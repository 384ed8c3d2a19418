//! TLS for the gRPC service: rustls (with the `ring` provider) through tonic.
//!
//! The server reads its certificate chain and key from PEM files
//! ([`server_tls_config`]); with a client CA configured it requires every
//! client to present a certificate signed by that CA (mutual TLS), the
//! alternative to per-client bearer tokens. Files are parsed and checked here,
//! before the server starts, so an operator sees which file is wrong instead
//! of a handshake failure on the first connection.
//!
//! [`generate_self_signed`] and [`write_self_signed`] make a fresh
//! certificate for demos and tests on one machine; [`CertificateAuthority`]
//! mints a CA and certificates signed by it, for mutual-TLS tests.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use zeroize::Zeroizing;

use crate::files;

/// Why TLS material could not be loaded or made. Messages name the file at
/// fault; none carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read {
        /// Which file this is: "certificate", "private key" or "client CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A certificate or client-CA file holds no usable certificate.
    #[error("{what} file {} holds no valid PEM certificate: {reason}", path.display())]
    BadCertificate {
        /// "certificate" or "client CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no private key that rustls can use. The reason is
    /// deliberately vague: parser details could quote key bytes.
    #[error(
        "private key file {} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1, ECDSA/Ed25519/RSA)",
        path.display()
    )]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key does not belong to the certificate.
    #[error("private key {} does not match certificate {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls reported.
        reason: String,
    },
    /// rcgen could not make a key or certificate (for example an invalid host
    /// name).
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused to build a server configuration.
    #[error("cannot set up TLS: {0}")]
    Setup(String),
    /// A generated file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A client certificate that passed the chain check cannot name a
    /// client ([`client_identity`]).
    #[error("unusable client certificate: {0}")]
    ClientCertificate(String),
}

/// Where the server's TLS material lives, as an operator configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key for the leaf certificate.
    pub key: PathBuf,
    /// PEM CA certificate(s) that sign client certificates. When set, every
    /// client must present a certificate signed by one of them (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Makes sure rustls has a process-wide crypto provider (ring), so that no
/// other crate in the build enabling rustls' `aws-lc-rs` feature can turn
/// tonic's server setup into a panic ("could not automatically determine the
/// process-level CryptoProvider"). Idempotent; safe to call from any thread.
///
/// With only `ring` enabled in rustls (the case in this workspace) rustls
/// installs ring by itself, so calling this is cheap insurance rather than a
/// requirement. Call it once at startup, before building TLS configurations.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: some provider is set.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no `BEGIN CERTIFICATE` section found".to_owned()));
    }
    Ok(certs)
}

/// The server's PEM files, read and checked.
struct ServerMaterial {
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The client CA's PEM and its certificates, for mutual TLS.
    client_ca: Option<(Vec<u8>, RootCertStore)>,
}

/// Reads the server's PEM files and checks them: the certificate chain
/// parses, the key is one rustls can sign with, the key belongs to the leaf
/// certificate, and the client CA (if any) holds certificates.
fn load_server_material(files: &TlsFiles) -> Result<ServerMaterial, TlsError> {
    install_crypto_provider();
    let cert_pem = read_file("certificate", &files.cert)?;
    let key_pem = Zeroizing::new(read_file("private key", &files.key)?);
    let chain = parse_certificates("certificate", &files.cert, &cert_pem)?;
    let bad_key = || TlsError::BadKey {
        path: files.key.clone(),
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| bad_key())?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| match e {
        rustls::Error::General(_) => bad_key(),
        other => TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: other.to_string(),
        },
    })?;
    let client_ca = match &files.client_ca {
        None => None,
        Some(ca_path) => {
            let ca_pem = read_file("client CA", ca_path)?;
            let mut roots = RootCertStore::empty();
            for cert in parse_certificates("client CA", ca_path, &ca_pem)? {
                roots.add(cert).map_err(|e| TlsError::BadCertificate {
                    what: "client CA",
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            }
            Some((ca_pem, roots))
        }
    };
    Ok(ServerMaterial {
        cert_pem,
        key_pem,
        chain,
        key,
        client_ca,
    })
}

/// Reads and checks the server's PEM files and turns them into tonic's
/// configuration: the certificate chain parses, the key is one rustls can sign
/// with, and the key belongs to the leaf certificate. With
/// [`TlsFiles::client_ca`] set, client certificates become mandatory.
/// Calls [`install_crypto_provider`] first.
///
/// The server itself uses [`server_rustls_config`], whose handshakes it
/// runs under a deadline; this is for embedders that serve through tonic's
/// own TLS.
pub fn server_tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let material = load_server_material(files)?;
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(&material.cert_pem, &*material.key_pem));
    if let Some((ca_pem, _)) = material.client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(ca_pem))
            .client_auth_optional(false);
    }
    Ok(config)
}

/// Reads and checks the server's PEM files as [`server_tls_config`] does,
/// and builds the rustls configuration the server accepts TLS with: HTTP/2
/// by ALPN, TLS 1.2 and 1.3 with ring's safe defaults, and with
/// [`TlsFiles::client_ca`] set a client certificate signed by that CA
/// required of every client.
pub fn server_rustls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let material = load_server_material(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match material.client_ca {
        None => builder.with_no_client_auth(),
        Some((_, roots)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::BadCertificate {
                what: "client CA",
                path: files.client_ca.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(material.chain, material.key)
        .map_err(|e| TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Builds a client's TLS configuration: trust only `ca_pem` (the server's
/// CA, or its self-signed certificate), expect the server to be `domain`,
/// and present `client_identity` (certificate PEM, key PEM) when the server
/// wants mutual TLS.
///
/// tonic checks the PEM only when connecting; an invalid one fails then.
/// Calls [`install_crypto_provider`] first.
pub fn client_tls_config(
    ca_pem: &[u8],
    domain: &str,
    client_identity: Option<(&[u8], &[u8])>,
) -> ClientTlsConfig {
    install_crypto_provider();
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(domain);
    match client_identity {
        Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        None => config,
    }
}

/// A certificate and its private key in PEM form. `Debug` redacts the key,
/// and the key text is wiped from memory when dropped.
pub struct SelfSigned {
    /// The certificate, which is also the trust anchor clients must use.
    pub cert_pem: String,
    /// The PKCS#8 private key, wiped from memory on drop.
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSigned")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Makes a fresh self-signed server certificate (ECDSA P-256) valid for
/// `hosts` (DNS names or IP addresses), for demos and tests where no CA
/// exists. Clients trust it by using its certificate as their CA.
///
/// ```
/// let pair = tessera_server::tls::generate_self_signed(&["localhost".into()]).unwrap();
/// assert!(pair.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
/// ```
pub fn generate_self_signed(hosts: &[String]) -> Result<SelfSigned, TlsError> {
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tessera self-signed server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Writes a fresh self-signed certificate to `dir/cert.pem` and
/// `dir/key.pem` (the key with mode 0600 on unix), creating `dir` if needed
/// and replacing older files atomically ([`files::write_atomic`]), and
/// returns their paths with no client CA.
pub fn write_self_signed(dir: &Path, hosts: &[String]) -> Result<TlsFiles, TlsError> {
    let pair = generate_self_signed(hosts)?;
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    };
    let failed = |e: files::WriteError| TlsError::Write {
        path: e.path,
        source: e.source,
    };
    files::write_atomic(&files.cert, pair.cert_pem.as_bytes()).map_err(failed)?;
    files::write_atomic_private(&files.key, pair.key_pem.as_bytes()).map_err(failed)?;
    Ok(files)
}

/// A throwaway certificate authority that signs server and client
/// certificates, for mutual-TLS tests and demos. Its key lives only in memory.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Makes a new CA (ECDSA P-256) with the given common name.
    pub fn new(common_name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate: what servers use as `client_ca` and clients as
    /// their trust anchor.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a server certificate valid for `hosts`.
    pub fn issue_server(&self, hosts: &[String]) -> Result<SelfSigned, TlsError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tessera server");
        self.issue(params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Signs a client certificate whose common name is `client_name`.
    pub fn issue_client(&self, client_name: &str) -> Result<SelfSigned, TlsError> {
        let mut params = CertificateParams::new(Vec::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, client_name);
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<SelfSigned, TlsError> {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(SelfSigned {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// The most characters of a certificate subject used as a client's name
/// as is; a longer subject is named by its digest (logs and the DP-FTRL
/// participant list stay small).
const MAX_SUBJECT_NAME: usize = 200;

/// The name a mutual-TLS client goes by: `cert:` and the subject of its
/// leaf certificate (`cert:CN=alice`; several attributes in the
/// certificate's order, `cert:C=US,O=Acme,CN=alice`), or, for a
/// certificate with an empty subject, its URI, DNS and e-mail subject
/// alternative names (`cert:URI:spiffe://example.org/w1`). The TLS layer
/// has already checked the chain against the client CA, so this is what
/// the CA vouches for.
///
/// Why the subject and not the certificate's digest: the once-per-tree
/// rule of DP-FTRL (and every per-client limit) counts clients, and a
/// client that renews its certificate (routine rotation, or a second one
/// its CA issues) is still the same client. Named by digest it would be a
/// new one and take part twice in one tree (red-team finding of
/// 2026-12-02). The flip side: two certificates with the same subject are
/// one client, so the CA must fix each client's *whole* subject (or, with
/// empty subjects, its whole list of alternative names), not let the
/// client choose any part of it.
///
/// The rendering is injective, so two different subjects never share a
/// name: RDNs are joined by `,`, the attributes of a multi-valued RDN by
/// `+`, and in every value the characters `, + " \ < > ; =`, a leading `#`
/// or space, a trailing space and every control or non-ASCII byte are
/// escaped as in RFC 4514 (`\,`, `\0a`). A value that is not a string is
/// written `#TAG:HEX`. The same text in two string types (PrintableString,
/// UTF8String) is the same name. A name longer than 200 characters is
/// `cert-sha256:` and the first 16 bytes of the SHA-256 of that rendering.
/// Refused: a certificate that does not parse, or that names no one.
///
/// ```
/// use tessera_server::tls::{CertificateAuthority, client_identity};
/// use rustls::pki_types::{CertificateDer, pem::PemObject as _};
/// let ca = CertificateAuthority::new("clients")?;
/// let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
/// let first = ca.issue_client("alice")?;
/// let renewed = ca.issue_client("alice")?;
/// assert_eq!(client_identity(&der(&first.cert_pem))?, "cert:CN=alice");
/// assert_eq!(client_identity(&der(&renewed.cert_pem))?, "cert:CN=alice");
/// let tricky = ca.issue_client("alice,O=Acme")?;
/// assert_eq!(client_identity(&der(&tricky.cert_pem))?, "cert:CN=alice\\,O\\=Acme");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn client_identity(leaf: &[u8]) -> Result<String, TlsError> {
    use sha2::{Digest as _, Sha256};
    use x509_parser::extensions::GeneralName;

    let unusable = |why: &str| TlsError::ClientCertificate(why.to_owned());
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| unusable("the client certificate does not parse as X.509"))?;
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = cert
        .subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type();
                    let kind = x509_parser::objects::oid2abbrev(oid, registry)
                        .map_or_else(|_| oid.to_id_string(), str::to_owned);
                    let value = match attr.as_str() {
                        Ok(text) => escape_name_value(text),
                        Err(_) => format!(
                            "#{}:{}",
                            attr.attr_value().tag().0,
                            hex::encode(attr.as_slice())
                        ),
                    };
                    format!("{kind}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    let name = if rdns.is_empty() {
        let alternatives = cert.subject_alternative_name().map_err(|_| {
            unusable("the client certificate's subject alternative names do not parse")
        })?;
        let names: Vec<String> = alternatives
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(v) => Some(format!("URI:{}", escape_name_value(v))),
                        GeneralName::DNSName(v) => Some(format!("DNS:{}", escape_name_value(v))),
                        GeneralName::RFC822Name(v) => {
                            Some(format!("email:{}", escape_name_value(v)))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            return Err(unusable(
                "the client certificate names no one: its subject is empty and it has no URI, DNS or e-mail subject alternative name",
            ));
        }
        names.join(",")
    } else {
        rdns.join(",")
    };
    if name.len() > MAX_SUBJECT_NAME {
        let digest = Sha256::digest(name.as_bytes());
        return Ok(format!("cert-sha256:{}", hex::encode(&digest[..16])));
    }
    Ok(format!("cert:{name}"))
}

/// A name's value with RFC 4514's special characters, a leading `#` or
/// space, a trailing space and every control or non-ASCII byte escaped,
/// so the joined name reads back one way only (and prints safely in logs).
fn escape_name_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.len().saturating_sub(1);
    for (i, b) in value.bytes().enumerate() {
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' | b'=' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic::codegen::Service as _;
    use tonic::codegen::http;
    use tonic::transport::{Endpoint, Server};

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-tls-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn localhost() -> Vec<String> {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    }

    /// The mTLS name of a certificate the test CA issues from `params`.
    fn name_of(ca: &CertificateAuthority, params: CertificateParams) -> Result<String, TlsError> {
        let issued = ca
            .issue(params, ExtendedKeyUsagePurpose::ClientAuth)
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        client_identity(&der)
    }

    fn subject(parts: &[(DnType, &str)]) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        for (kind, value) in parts {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params
    }

    /// Different subjects never share a name (the red team's collisions:
    /// a value holding the separators, a control byte against `?`, long
    /// SAN-only certificates), and the same subject always has one.
    #[test]
    fn client_names_are_injective_in_the_subject() {
        let ca = CertificateAuthority::new("clients").unwrap();
        let one_rdn = name_of(&ca, subject(&[(DnType::CommonName, "alice, O=Acme")])).unwrap();
        let two_rdns = name_of(
            &ca,
            subject(&[
                (DnType::CommonName, "alice"),
                (DnType::OrganizationName, "Acme"),
            ]),
        )
        .unwrap();
        assert_eq!(two_rdns, "cert:CN=alice,O=Acme");
        assert_ne!(one_rdn, two_rdns);
        let control = name_of(&ca, subject(&[(DnType::CommonName, "a\u{1}")])).unwrap();
        let question = name_of(&ca, subject(&[(DnType::CommonName, "a?")])).unwrap();
        assert_eq!(control, "cert:CN=a\\01");
        assert_ne!(control, question);
        // Renewal: the same subject, a new key and serial, the same name.
        assert_eq!(
            name_of(&ca, subject(&[(DnType::CommonName, "alice, O=Acme")])).unwrap(),
            one_rdn
        );
        // SAN-only certificates are named by their SANs, typed; long ones
        // by the digest of that name, so two long ones differ.
        let san = |uris: &[String]| {
            let mut params = CertificateParams::new(Vec::new()).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = uris
                .iter()
                .map(|u| rcgen::SanType::URI(u.as_str().try_into().unwrap()))
                .collect();
            name_of(&ca, params)
        };
        assert_eq!(
            san(&["spiffe://td/w1".to_owned()]).unwrap(),
            "cert:URI:spiffe://td/w1"
        );
        let long = |tag: &str| san(&[format!("spiffe://td/{tag}/{}", "x".repeat(250))]).unwrap();
        let (a, b) = (long("a"), long("b"));
        assert!(a.starts_with("cert-sha256:"), "{a}");
        assert_ne!(a, b, "two long SAN-only certificates are two clients");
        // No subject and no usable SAN: refused, saying why.
        let mut nameless = CertificateParams::new(Vec::new()).unwrap();
        nameless.distinguished_name = rcgen::DistinguishedName::new();
        let err = name_of(&ca, nameless).unwrap_err();
        assert!(err.to_string().contains("names no one"), "{err}");
    }

    #[test]
    fn generated_pems_load_into_both_configs() {
        let dir = scratch_dir("load");
        let files = write_self_signed(&dir, &localhost()).unwrap();
        server_tls_config(&files).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let ca = fs::read(&files.cert).unwrap();
        let _client = client_tls_config(&ca, "localhost", None);

        // Rewriting over an existing, world-readable key file tightens it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&files.key, fs::Permissions::from_mode(0o644)).unwrap();
            let again = write_self_signed(&dir, &localhost()).unwrap();
            let mode = fs::metadata(&again.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_garbage_files_are_named() {
        let dir = scratch_dir("bad");
        let good = write_self_signed(&dir, &localhost()).unwrap();
        let garbage = dir.join("garbage.pem");
        fs::write(&garbage, b"this is not PEM\n").unwrap();
        let missing = dir.join("missing.pem");

        let case = |cert: &Path, key: &Path, ca: Option<&Path>| {
            server_tls_config(&TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: ca.map(Path::to_path_buf),
            })
            .unwrap_err()
        };
        let err = case(&missing, &good.key, None);
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = case(&good.cert, &missing, None);
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: "private key",
                    ..
                }
            ),
            "{err}"
        );

        let err = case(&garbage, &good.key, None);
        assert!(
            matches!(
                err,
                TlsError::BadCertificate {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let err = case(&good.cert, &garbage, None);
        assert!(matches!(err, TlsError::BadKey { .. }), "{err}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        // A certificate passed as the key file is not a key.
        let err = case(&good.cert, &good.cert, None);
        assert!(matches!(err, TlsError::BadKey { .. }), "{err}");

        let err = case(&good.cert, &good.key, Some(&garbage));
        assert!(
            matches!(
                err,
                TlsError::BadCertificate {
                    what: "client CA",
                    ..
                }
            ),
            "{err}"
        );
        let err = case(&good.cert, &good.key, Some(&missing));
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: "client CA",
                    ..
                }
            ),
            "{err}"
        );

        // Someone else's key with our certificate.
        let other = generate_self_signed(&localhost()).unwrap();
        let other_key = dir.join("other-key.pem");
        fs::write(&other_key, other.key_pem.as_bytes()).unwrap();
        let err = case(&good.cert, &other_key, None);
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

        assert!(matches!(
            generate_self_signed(&["bücher.example".to_owned()]),
            Err(TlsError::Generate(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Serves an empty router over TLS on 127.0.0.1:0 until the returned
    /// sender is dropped.
    async fn serve(config: ServerTlsConfig) -> (u16, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(config)
            .unwrap()
            .add_routes(tonic::service::Routes::default());
        tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        (port, stop)
    }

    /// Connects and sends one gRPC request to a method nobody serves: a
    /// completed TLS handshake shows as the gRPC status `12` (unimplemented);
    /// a refused one as an error.
    async fn probe(port: u16, config: ClientTlsConfig) -> Result<String, String> {
        let endpoint = Endpoint::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .tls_config(config)
            .map_err(|e| e.to_string())?;
        let mut channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost:{port}/tessera.Nothing/Here"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::empty())
            .unwrap();
        let response = channel.call(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_else(|| format!("http {}", response.status()));
        Ok(status)
    }

    #[tokio::test]
    async fn tls_handshake_succeeds_only_with_the_right_ca() {
        let dir = scratch_dir("e2e");
        let files = write_self_signed(&dir, &localhost()).unwrap();
        let (port, _stop) = serve(server_tls_config(&files).unwrap()).await;
        let right_ca = fs::read(&files.cert).unwrap();
        let wrong_ca = generate_self_signed(&localhost()).unwrap().cert_pem;

        let ok = probe(port, client_tls_config(&right_ca, "localhost", None)).await;
        assert_eq!(ok.as_deref(), Ok("12"));
        let refused = probe(
            port,
            client_tls_config(wrong_ca.as_bytes(), "localhost", None),
        )
        .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("InvalidCertificate")),
            "{refused:?}"
        );
        let wrong_name = probe(port, client_tls_config(&right_ca, "example.org", None)).await;
        assert!(
            wrong_name
                .as_ref()
                .is_err_and(|e| e.contains("NotValidForName")),
            "{wrong_name:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
        let dir = scratch_dir("mtls");
        let ca = CertificateAuthority::new("tessera test CA").unwrap();
        let server = ca.issue_server(&localhost()).unwrap();
        let files = TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            client_ca: Some(dir.join("ca.pem")),
        };
        fs::write(&files.cert, &server.cert_pem).unwrap();
        fs::write(&files.key, server.key_pem.as_bytes()).unwrap();
        fs::write(files.client_ca.as_ref().unwrap(), ca.cert_pem()).unwrap();
        let (port, _stop) = serve(server_tls_config(&files).unwrap()).await;
        let trust = ca.cert_pem().as_bytes();

        let alice = ca.issue_client("alice").unwrap();
        let ok = probe(
            port,
            client_tls_config(
                trust,
                "localhost",
                Some((alice.cert_pem.as_bytes(), alice.key_pem.as_bytes())),
            ),
        )
        .await;
        assert_eq!(ok.as_deref(), Ok("12"));

        let anonymous = probe(port, client_tls_config(trust, "localhost", None)).await;
        assert!(
            anonymous
                .as_ref()
                .is_err_and(|e| e.contains("CertificateRequired")),
            "{anonymous:?}"
        );

        let stranger_ca = CertificateAuthority::new("someone else").unwrap();
        let mallory = stranger_ca.issue_client("mallory").unwrap();
        let forged = probe(
            port,
            client_tls_config(
                trust,
                "localhost",
                Some((mallory.cert_pem.as_bytes(), mallory.key_pem.as_bytes())),
            ),
        )
        .await;
        assert!(
            forged.as_ref().is_err_and(|e| e.contains("UnknownCA")),
            "{forged:?}"
        );
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
