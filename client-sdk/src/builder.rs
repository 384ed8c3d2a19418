//! Configuring a [`Client`]: the server's URL, credentials, TLS, limits,
//! the rounds it accepts ([`Policy`]) and the retry policy, all checked once in [`ClientBuilder::build`] so a
//! misconfigured client fails at start-up rather than at its first round.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::identity::{IdentityKey, IdentityPublicKey};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};
use zeroize::Zeroizing;

use crate::error::{ClientError, source_chain};
use crate::progress::{Progress, ProgressSink};
use crate::{Client, ClientInner, Policy};

/// How often to retry when the server cannot be reached.
///
/// Only [`ClientError::Unreachable`] is retried, and only before a round
/// starts: a client never rejoins a round it may have partly run (its
/// masked input could then be counted twice, or its shares revealed to two
/// different requests).
///
/// ```
/// use std::time::Duration;
/// use tessera_client::RetryPolicy;
///
/// let policy = RetryPolicy {
///     max_attempts: 5,
///     initial_backoff: Duration::from_millis(200),
///     max_backoff: Duration::from_secs(5),
/// };
/// // Waits double after each failed attempt, up to max_backoff.
/// assert_eq!(policy.backoff(1), Some(Duration::from_millis(200)));
/// assert_eq!(policy.backoff(2), Some(Duration::from_millis(400)));
/// assert_eq!(policy.backoff(4), Some(Duration::from_millis(1600)));
/// // No wait after the last attempt: the error is returned.
/// assert_eq!(policy.backoff(5), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Connection attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failed attempt.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// One attempt, no retry: for callers that run their own retry loop.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// The wait after failed attempt number `attempt` (1-based), or `None`
    /// if that was the last attempt.
    pub fn backoff(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let doublings = attempt.saturating_sub(1).min(30);
        let wait = self.initial_backoff.saturating_mul(1 << doublings);
        Some(wait.min(self.max_backoff))
    }
}

impl Default for RetryPolicy {
    /// Three attempts, waiting 500 ms then 1 s: rides out a server restart
    /// without hiding a wrong address for long.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// The bearer token, wiped from memory when dropped and never shown.
#[derive(Clone)]
pub(crate) struct Token(Zeroizing<String>);

impl Token {
    /// The `authorization` header value, marked sensitive so HTTP/2 header
    /// compression does not index it.
    pub(crate) fn header(&self) -> Result<tonic::metadata::AsciiMetadataValue, ClientError> {
        let text = Zeroizing::new(format!("Bearer {}", self.0.as_str()));
        let mut value = tonic::metadata::AsciiMetadataValue::try_from(text.as_str())
            .map_err(|_| ClientError::InvalidToken)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Collects a client's settings; [`ClientBuilder::build`] checks them.
///
/// Made by [`Client::builder`].
pub struct ClientBuilder {
    url: String,
    token: Option<Token>,
    tls_ca_pem: Option<Vec<u8>>,
    tls_system_roots: bool,
    tls_domain: Option<String>,
    tls_identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    connect_timeout: Duration,
    round_timeout: Duration,
    retry: RetryPolicy,
    max_message_bytes: usize,
    rng_seed: Option<Zeroizing<[u8; 32]>>,
    identity: Option<IdentityKey>,
    trusted: Vec<IdentityPublicKey>,
    policy: Policy,
    insecure_loopback: bool,
    progress: ProgressSink,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .field("tls_system_roots", &self.tls_system_roots)
            .field("tls_domain", &self.tls_domain)
            .field(
                "tls_identity",
                &self.tls_identity.as_ref().map(|_| "[redacted]"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("round_timeout", &self.round_timeout)
            .field("retry", &self.retry)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("rng_seed", &self.rng_seed.as_ref().map(|_| "[redacted]"))
            .field(
                "identity",
                &self.identity.as_ref().map(|k| k.verifying_key()),
            )
            .field("trusted", &self.trusted.len())
            .field("policy", &self.policy)
            .field("insecure_loopback", &self.insecure_loopback)
            .field("on_progress", &self.progress)
            .finish()
    }
}

/// Default [`ClientBuilder::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientBuilder::round_timeout`].
pub const DEFAULT_ROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// Default [`ClientBuilder::max_message_bytes`]: room for a packed
/// 32-bit vector of 16 million values.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

impl ClientBuilder {
    pub(crate) fn new(url: String) -> Self {
        ClientBuilder {
            url,
            token: None,
            tls_ca_pem: None,
            tls_system_roots: false,
            tls_domain: None,
            tls_identity: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            round_timeout: DEFAULT_ROUND_TIMEOUT,
            retry: RetryPolicy::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            rng_seed: None,
            identity: None,
            trusted: Vec::new(),
            policy: Policy::default(),
            insecure_loopback: false,
            progress: ProgressSink::none(),
        }
    }

    /// The rounds this client accepts (see [`Policy`] for the rules and
    /// their defaults). A round outside it is refused with
    /// [`ClientError::PolicyRefused`] before any key is generated or sent.
    /// The setters below change one field each.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The weakest threat model the client takes part in ([`Policy::threat_model`]).
    pub fn min_threat_model(mut self, model: ThreatModel) -> Self {
        self.policy.threat_model = Some(model);
        self
    }

    /// The fraction of every round's clients this client assumes collude
    /// with the server, whatever the server states ([`Policy::assume_corrupt`]).
    pub fn assume_corrupt(mut self, fraction: f64) -> Self {
        self.policy.assume_corrupt = fraction;
        self
    }

    /// The fewest and the most clients a round may have
    /// ([`Policy::min_clients`], [`Policy::max_clients`]).
    pub fn clients_per_round(mut self, min: u32, max: u32) -> Self {
        self.policy.min_clients = min;
        self.policy.max_clients = max;
        self
    }

    /// Take part only in rounds with distributed DP whose per-client noise
    /// multiplier is at least `min_noise_multiplier` (0 accepts any
    /// positive noise); see [`Policy::require_dp`].
    pub fn require_dp(mut self, min_noise_multiplier: f64) -> Self {
        self.policy.require_dp = true;
        self.policy.min_noise_multiplier = min_noise_multiplier;
        self
    }

    /// The client's long-term Ed25519 identity, for servers that run the
    /// malicious-server threat model: it signs the client's keys and the
    /// survivor set. Needs [`ClientBuilder::trusted_identities`]. A client
    /// with an identity takes part only in malicious-server rounds (it
    /// refuses a server that offers a weaker model).
    pub fn identity(mut self, key: IdentityKey) -> Self {
        self.identity = Some(key);
        self
    }

    /// The enrolled identities this client trusts (the operator's
    /// allow-list, which holds public keys only): every identity the server
    /// puts in a round must be one of them, so the server cannot take part
    /// under identities it made up.
    pub fn trusted_identities(mut self, keys: Vec<IdentityPublicKey>) -> Self {
        self.trusted = keys;
        self
    }

    /// The per-client token the server checks (sent as
    /// `authorization: Bearer <token>`). It is wiped from memory when the
    /// client is dropped and never appears in `Debug` output, logs or errors.
    pub fn token(mut self, token: String) -> Self {
        self.token = Some(Token(Zeroizing::new(token)));
        self
    }

    /// Allows a [`ClientBuilder::token`] over a plain `http://` URL, for a
    /// server on this machine only (a `--insecure-dev` server in a local
    /// experiment or a test). Without it [`ClientBuilder::build`] refuses a
    /// token over `http://`, since anyone on the path could read and replay
    /// it; with it the URL's host must still be a loopback address
    /// (`127.0.0.0/8`, `::1`) or `localhost` (which is then not resolved:
    /// the client connects to `127.0.0.1`), where the token never leaves
    /// the machine. `https://` URLs and `http://` URLs without a token are
    /// unaffected.
    pub fn insecure_loopback(mut self) -> Self {
        self.insecure_loopback = true;
        self
    }

    /// The PEM certificate(s) of the authority that signed the server's
    /// certificate. An `https` URL needs this or
    /// [`ClientBuilder::tls_system_roots`]: by default the SDK trusts no
    /// system root store, only the deployment's own authority.
    pub fn tls_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.tls_ca_pem = Some(pem);
        self
    }

    /// Also trusts the operating system's certificate store, for a server
    /// whose certificate a public authority signed, so the app need not
    /// ship a CA file. Off by default: then only
    /// [`ClientBuilder::tls_ca_pem`] is trusted, and no authority of the
    /// system store (a corporate proxy's, say) can stand in for the
    /// server. With both, either may sign the server's certificate.
    ///
    /// The store is read when [`ClientBuilder::build`] runs (on Linux the
    /// distribution's bundle, or the `SSL_CERT_FILE` / `SSL_CERT_DIR` the
    /// environment names); a store that holds no certificate fails the
    /// build with [`ClientError::InvalidTls`].
    pub fn tls_system_roots(mut self) -> Self {
        self.tls_system_roots = true;
        self
    }

    /// Calls `callback` with each [`Progress`] report of a round (waiting
    /// in the lobby, round started, stage reached), so an app can show its
    /// state; see [`crate::progress`]. The callback runs on the task that
    /// drives the round: it should return quickly (hand the report to the
    /// app's UI rather than draw it there).
    pub fn on_progress(mut self, callback: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = ProgressSink::new(callback);
        self
    }

    /// The name the server's certificate must carry, when it is not the
    /// URL's host (e.g. connecting by IP address).
    pub fn tls_domain(mut self, domain: String) -> Self {
        self.tls_domain = Some(domain);
        self
    }

    /// A client certificate and its private key (PEM), for servers that
    /// authenticate clients by mutual TLS. The key is wiped from the
    /// builder's memory when it is dropped.
    pub fn tls_identity(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        self.tls_identity = Some((cert_pem, Zeroizing::new(key_pem)));
        self
    }

    /// How long one connection attempt (TCP and TLS) may take. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long [`Client::participate`] may take: connecting and retries,
    /// the lobby and the round, with the clock restarted by every
    /// keep-alive (Lobby frame) the server sends while the client waits in
    /// its lobby, so a long wait the server keeps alive never times out
    /// (the server sends one every `lobby_keepalive`, 15 s by default;
    /// keep this longer). Default 10 minutes.
    pub fn round_timeout(mut self, timeout: Duration) -> Self {
        self.round_timeout = timeout;
        self
    }

    /// Retries of connection failures; see [`RetryPolicy`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The largest gRPC message sent or accepted. Default 64 MiB; a masked
    /// input of `d` values at `bits` bits is about `d * bits / 8` bytes.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Seeds the client's random generator, for tests only: it makes runs
    /// reproducible, and makes the client's keys and masks predictable to
    /// anyone who knows the seed. Without it (the default) the generator is
    /// seeded from the operating system.
    pub fn rng_seed(mut self, seed: [u8; 32]) -> Self {
        self.rng_seed = Some(Zeroizing::new(seed));
        self
    }

    /// Checks the settings and makes the client. Nothing is sent over the
    /// network until the first call.
    ///
    /// ```
    /// use tessera_client::{Client, ClientError};
    ///
    /// assert!(Client::builder("http://127.0.0.1:7000").build().is_ok());
    /// // A token travels over https, or over loopback on request.
    /// assert!(Client::builder("http://127.0.0.1:7000").token("t".into()).build().is_err());
    /// assert!(Client::builder("http://127.0.0.1:7000")
    ///     .token("t".into())
    ///     .insecure_loopback()
    ///     .build()
    ///     .is_ok());
    /// // A CA certificate only makes sense with https.
    /// let err = Client::builder("http://127.0.0.1:7000")
    ///     .tls_ca_pem(b"-----BEGIN CERTIFICATE-----".to_vec())
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, ClientError::InvalidTls(_)));
    /// // https needs the deployment's CA.
    /// assert!(Client::builder("https://fl.example.org").build().is_err());
    /// assert!(matches!(
    ///     Client::builder("ftp://x").build(),
    ///     Err(ClientError::InvalidUrl { .. })
    /// ));
    /// ```
    pub fn build(self) -> Result<Client, ClientError> {
        let target = self.check_url()?;
        self.check_limits()?;
        self.check_credentials()?;
        self.check_token_transport(&target)?;
        let endpoint = self.endpoint(&target)?;
        let rng = self.rng()?;
        Ok(Client {
            inner: ClientInner {
                url: self.url,
                endpoint,
                token: self.token,
                round_timeout: self.round_timeout,
                retry: self.retry,
                max_message_bytes: self.max_message_bytes,
                rng: std::sync::Mutex::new(rng),
                identity: self.identity,
                trusted: self.trusted,
                policy: self.policy,
                progress: self.progress,
            },
        })
    }

    fn invalid_url(&self, reason: &str) -> ClientError {
        ClientError::InvalidUrl {
            url: self.url.clone(),
            reason: reason.to_owned(),
        }
    }

    /// The URL must be `http` or `https` with a host and nothing after the
    /// port: the SDK adds the gRPC paths itself.
    fn check_url(&self) -> Result<Target, ClientError> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e: tonic::codegen::http::uri::InvalidUri| self.invalid_url(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => {
                return Err(self.invalid_url(&format!(
                    "scheme '{other}' is not supported (use http or https)"
                )));
            }
            None => return Err(self.invalid_url("no scheme (use http:// or https://)")),
        };
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
            return Err(self.invalid_url("no host"));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(
                self.invalid_url("a path or query is not supported; give scheme://host:port")
            );
        }
        Ok(Target {
            https,
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }

    /// Timeouts, limits and attempts of zero would make a client that can
    /// never finish a round.
    fn check_limits(&self) -> Result<(), ClientError> {
        for (setting, zero) in [
            ("connect_timeout", self.connect_timeout.is_zero()),
            ("round_timeout", self.round_timeout.is_zero()),
            ("max_message_bytes", self.max_message_bytes == 0),
            ("retry", self.retry.max_attempts == 0),
        ] {
            if zero {
                return Err(ClientError::InvalidSetting {
                    setting,
                    problem: "must be above zero".into(),
                });
            }
        }
        Ok(())
    }

    /// The token must fit a header; the policy must hold; an identity and
    /// the allow-list come together, the identity inside the list.
    fn check_credentials(&self) -> Result<(), ClientError> {
        if let Some(token) = &self.token {
            token.header()?;
        }
        self.policy.validate(self.identity.is_some())?;
        match (&self.identity, self.trusted.is_empty()) {
            (Some(_), true) => Err(ClientError::InvalidSetting {
                setting: "trusted_identities",
                problem: "an identity needs the allow-list of enrolled identities to check its peers against".into(),
            }),
            (None, false) => Err(ClientError::InvalidSetting {
                setting: "identity",
                problem: "trusted identities were given but no identity of this client's own"
                    .into(),
            }),
            (Some(key), false) if !self.trusted.contains(&key.verifying_key()) => {
                Err(ClientError::InvalidSetting {
                    setting: "identity",
                    problem: format!(
                        "this client's identity {} is not in the trusted allow-list",
                        key.verifying_key()
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// A token travels only encrypted, or over loopback when the caller
    /// opted in with [`ClientBuilder::insecure_loopback`]: a bearer token
    /// in plain text can be read and replayed by anyone on the path.
    fn check_token_transport(&self, target: &Target) -> Result<(), ClientError> {
        if target.https || self.token.is_none() {
            return Ok(());
        }
        let problem = if !self.insecure_loopback {
            format!(
                "refusing to send the token in plain text to '{}': use an https:// URL, or, \
                 for a server on this machine, opt in with insecure_loopback() \
                 (`tessera join --insecure-dev`)",
                self.url
            )
        } else if !is_loopback(&target.host) {
            format!(
                "insecure_loopback() allows a token over http:// to a loopback host only \
                 (127.0.0.0/8, ::1, localhost), not '{}': use an https:// URL",
                target.host
            )
        } else {
            return Ok(());
        };
        Err(ClientError::InvalidSetting {
            setting: "insecure_loopback",
            problem,
        })
    }

    /// The gRPC endpoint, with TLS for an `https` URL; TLS settings on a
    /// plain-text URL are refused rather than silently unused.
    fn endpoint(&self, target: &Target) -> Result<Endpoint, ClientError> {
        let endpoint = Endpoint::from_shared(self.connect_url(target))
            .map_err(|e| self.invalid_url(&source_chain(&e)))?
            .connect_timeout(self.connect_timeout);
        if target.https {
            let tls = self.tls_config(&target.host)?;
            return endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::InvalidTls(source_chain(&e)));
        }
        if self.tls_ca_pem.is_some()
            || self.tls_system_roots
            || self.tls_domain.is_some()
            || self.tls_identity.is_some()
        {
            return Err(ClientError::InvalidTls(format!(
                "TLS settings were given for the plain-text URL '{}'; use https://",
                self.url
            )));
        }
        Ok(endpoint)
    }

    /// The URL to connect to: the one given, except that a token over
    /// plain http to `localhost` goes to `127.0.0.1` without resolving the
    /// name. A resolver can send the name elsewhere (a hosts file without
    /// the entry and a search domain, a spoofed DNS answer), and the token
    /// with it in plain text; RFC 6761 reserves the name for loopback.
    fn connect_url(&self, target: &Target) -> String {
        let pinned =
            !target.https && self.token.is_some() && target.host.eq_ignore_ascii_case("localhost");
        if pinned {
            format!("http://127.0.0.1:{}", target.port)
        } else {
            self.url.clone()
        }
    }

    /// TLS trusting the deployment's CA (and the system's roots when asked
    /// for), the CA checked to hold PEM (rustls skips text that is not PEM,
    /// so a wrong file would otherwise give a client that trusts nothing
    /// and fails every handshake with a puzzling error).
    fn tls_config(&self, host: &str) -> Result<ClientTlsConfig, ClientError> {
        if self.tls_ca_pem.is_none() && !self.tls_system_roots {
            return Err(ClientError::InvalidTls(
                "an https URL needs tls_ca_pem (the deployment's certificate authority) \
                 or tls_system_roots (the operating system's trusted roots, for a server \
                 with a publicly signed certificate): by default the SDK trusts no one"
                    .into(),
            ));
        }
        if let Some(ca) = &self.tls_ca_pem
            && !contains(ca, b"-----BEGIN CERTIFICATE-----")
        {
            return Err(ClientError::InvalidTls(
                "tls_ca_pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        if let Some((cert, key)) = &self.tls_identity {
            if !contains(cert, b"-----BEGIN CERTIFICATE-----") {
                return Err(ClientError::InvalidTls(
                    "tls_identity's certificate holds no PEM certificate".into(),
                ));
            }
            if !contains(key, b"PRIVATE KEY-----") {
                return Err(ClientError::InvalidTls(
                    "tls_identity's key holds no PEM private key".into(),
                ));
            }
        }
        let domain = self.tls_domain.clone().unwrap_or_else(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
        let mut tls = ClientTlsConfig::new()
            .domain_name(domain)
            .timeout(self.connect_timeout);
        if let Some(ca) = &self.tls_ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if self.tls_system_roots {
            tls = tls.with_native_roots();
        }
        if let Some((cert, key)) = &self.tls_identity {
            tls = tls.identity(Identity::from_pem(cert, key.as_slice()));
        }
        Ok(tls)
    }

    /// The client's generator: from the test seed if one was given,
    /// otherwise from the operating system.
    fn rng(&self) -> Result<StdRng, ClientError> {
        match &self.rng_seed {
            Some(seed) => Ok(StdRng::from_seed(**seed)),
            None => StdRng::try_from_rng(&mut rand::rngs::SysRng)
                .map_err(|e| ClientError::OsRandomness(e.to_string())),
        }
    }
}

/// Where [`ClientBuilder::build`] connects, as read from the URL.
struct Target {
    https: bool,
    /// The URL's host, the TLS name by default.
    host: String,
    /// The URL's port, or the scheme's default.
    port: u16,
}

/// Whether `host` (a URL's host, IPv6 in brackets) names this machine:
/// `localhost`, or an address in `127.0.0.0/8` or `::1` (also as an
/// IPv4-mapped IPv6 address).
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let waits: Vec<_> = (1..=10).map(|a| p.backoff(a)).collect();
        assert_eq!(waits[0], Some(Duration::from_millis(100)));
        assert_eq!(waits[1], Some(Duration::from_millis(200)));
        assert_eq!(waits[2], Some(Duration::from_millis(350)));
        assert_eq!(waits[8], Some(Duration::from_millis(350)));
        assert_eq!(waits[9], None);
        assert_eq!(RetryPolicy::NONE.backoff(1), None);
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let builder = Client::builder("http://127.0.0.1:1")
            .token("hunter2-secret".into())
            .insecure_loopback()
            .rng_seed([9; 32]);
        let text = format!("{builder:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        let client = builder.build().unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let err = Client::builder("http://127.0.0.1:1")
            .round_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("round_timeout"), "{err}");
        let err = Client::builder("127.0.0.1:7000").build().unwrap_err();
        assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err}");
        let err = Client::builder("http://127.0.0.1:1/v1/x")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("path"), "{err}");
        let err = Client::builder("http://127.0.0.1:1")
            .tls_domain("fl.example.org".into())
            .build()
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidTls(_)), "{err}");
        let err = Client::builder("http://127.0.0.1:1")
            .token("two\nlines".into())
            .build()
            .unwrap_err();
        assert_eq!(err, ClientError::InvalidToken);
        assert!(!err.to_string().contains("lines"));
    }

    #[test]
    fn a_token_over_plain_http_is_refused_with_the_fix_named() {
        for url in ["http://127.0.0.1:1", "http://fl.example.org:7443"] {
            let err = Client::builder(url)
                .token("hunter2-secret".into())
                .build()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ClientError::InvalidSetting {
                        setting: "insecure_loopback",
                        ..
                    }
                ),
                "{err:?}"
            );
            let text = err.to_string();
            for fix in ["https://", "insecure_loopback()", "--insecure-dev"] {
                assert!(text.contains(fix), "{text}");
            }
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn the_loopback_opt_in_does_not_cover_other_hosts() {
        for url in [
            "http://fl.example.org:7443",
            "http://10.0.0.7:7443",
            "http://[2001:db8::1]:7443",
            "http://localhost.example.org:7443",
            "http://128.0.0.1:7443",
        ] {
            let err = Client::builder(url)
                .token("t".into())
                .insecure_loopback()
                .build()
                .unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("loopback") && text.contains("https://"),
                "{url}: {text}"
            );
        }
    }

    #[test]
    fn the_loopback_opt_in_allows_a_token_to_this_machine() {
        for url in [
            "http://127.0.0.1:7443",
            "http://127.8.9.10:7443",
            "http://[::1]:7443",
            "http://localhost:7443",
            "http://LOCALHOST:7443",
            "http://[::ffff:127.0.0.1]:7443",
        ] {
            let built = Client::builder(url)
                .token("t".into())
                .insecure_loopback()
                .build();
            assert!(built.is_ok(), "{url}: {built:?}");
        }
    }

    /// URL spellings that dress a remote host up as this machine: an
    /// upper-case scheme, userinfo before the real host, a loopback-looking
    /// name under someone else's domain, the unspecified and IPv4-mapped
    /// addresses, short and trailing-dot forms. Each is refused (the
    /// token would leave the machine, or the check cannot tell).
    #[test]
    fn no_spelling_of_a_remote_url_passes_for_loopback() {
        for url in [
            "HTTP://fl.example.org:7443",
            "Http://10.0.0.7:7443",
            "http://127.0.0.1@fl.example.org:7443",
            "http://localhost:pw@fl.example.org:7443",
            "http://127.0.0.1.nip.io:7443",
            "http://localhost.:7443",
            "http://0.0.0.0:7443",
            "http://[::]:7443",
            "http://[::ffff:10.0.0.7]:7443",
            "http://127.1:7443",
            "http://2130706433:7443",
        ] {
            let built = Client::builder(url)
                .token("t".into())
                .insecure_loopback()
                .build();
            assert!(built.is_err(), "{url}: a token would go in plain text");
        }
    }

    /// `localhost` is a name, and a resolver may send it elsewhere (a
    /// hosts file without the entry and a search domain, a spoofed DNS
    /// answer): the token must go to the loopback address itself, never
    /// to whatever the name resolves to.
    #[test]
    fn a_token_to_localhost_goes_to_the_loopback_address_unresolved() {
        for (url, port) in [
            ("http://localhost:7443", 7443),
            ("http://LocalHost:7443", 7443),
            ("http://localhost", 80),
        ] {
            let client = Client::builder(url)
                .token("t".into())
                .insecure_loopback()
                .build()
                .unwrap();
            let uri = client.inner.endpoint.uri();
            assert_eq!(uri.host(), Some("127.0.0.1"), "{url}");
            assert_eq!(uri.port_u16().unwrap_or(80), port, "{url}");
        }
        // Without a token nothing secret travels: the name is kept.
        let client = Client::builder("http://localhost:7443").build().unwrap();
        assert_eq!(client.inner.endpoint.uri().host(), Some("localhost"));
    }

    #[test]
    fn plain_http_without_a_token_needs_no_opt_in() {
        // Nothing secret is sent, so nothing changes from before.
        for url in ["http://127.0.0.1:7443", "http://fl.example.org:7443"] {
            assert!(Client::builder(url).build().is_ok(), "{url}");
        }
    }

    #[test]
    fn a_pem_that_does_not_parse_fails_the_build() {
        let err = Client::builder("https://127.0.0.1:1")
            .tls_ca_pem(b"not a certificate".to_vec())
            .build();
        assert!(matches!(err, Err(ClientError::InvalidTls(_))), "{err:?}");
        let err = Client::builder("https://127.0.0.1:1")
            .tls_ca_pem(b"-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n".to_vec())
            .build();
        assert!(matches!(err, Err(ClientError::InvalidTls(_))), "{err:?}");
    }
}
