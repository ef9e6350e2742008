//! The proxy's TLS listener: certificates chosen by SNI, reloaded when their files change,
//! optional client-certificate verification (mTLS), and the handshake with its failures named.
//!
//! Reload ([`super::reload`], the mechanism the peer client shares): every `reload_interval`
//! the files (every certificate and key, and the client CA) are hashed; when they changed, the
//! whole rustls config is built again and, only if every file loads and every key matches,
//! swapped in at once. New handshakes get the new certificates and verify clients against the
//! new CA; connections already open keep what they agreed (a TLS session never changes
//! certificate), so rotation drops nothing; resumption state is new with every reload, so a
//! client of a rotated-out CA cannot resume its way past verification. A failed reload (a half-written Secret, a mismatched key, an unreadable CA) keeps
//! the old config, logs why and counts `corral_tls_certificate_reloads_total{result="error"}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::metrics::{HandshakeLabel, ReasonLabel, TlsMetrics};
use super::reload::Watched;

/// One certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// What `[server] tls = { ... }` says.
#[derive(Debug, Clone)]
pub struct ServerTlsSettings {
    /// The first pair is the default (a client without SNI, or naming no certificate's host,
    /// gets it); the others are chosen by the names in their certificates.
    pub certificates: Vec<CertPair>,
    /// Verify client certificates against this CA file (mTLS): required when set.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
    /// Offer `h2` by ALPN (else `http/1.1` only).
    pub http2: bool,
    /// Whether https requests get keys of their own (the default) or share plain HTTP's.
    pub key_scheme: bool,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
}

/// Loaded certificates: each with the DNS names it is valid for.
#[derive(Debug)]
struct Loaded {
    keys: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

/// The certificate resolver behind one built config: the certificates loaded with it.
#[derive(Debug)]
struct Certificates(Loaded);

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let keys = &self.0.keys;
        let chosen = hello.server_name().and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            keys.iter()
                .find(|(names, _)| names.iter().any(|n| name_matches(n, &sni)))
        });
        chosen.or(keys.first()).map(|(_, k)| k.clone())
    }
}

/// A certificate name (`host` or `*.domain`) against an SNI host name; a wildcard covers one
/// label, as RFC 6125 §6.4.3 allows.
fn name_matches(name: &str, sni: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(domain) => sni
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
        None => name == sni,
    }
}

fn load(pairs: &[CertPair]) -> Result<Loaded, String> {
    let mut keys = Vec::new();
    for p in pairs {
        let ck = super::certified_key(&p.cert_file, &p.key_file)?;
        let leaf = webpki::EndEntityCert::try_from(&ck.cert[0]).map_err(|e| {
            format!(
                "{}: cannot parse the certificate: {e:?}",
                p.cert_file.display()
            )
        })?;
        let names = leaf
            .valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        keys.push((names, Arc::new(ck)));
    }
    Ok(Loaded { keys })
}

/// Builds the listener's whole rustls config from its files: every certificate pair and,
/// with `client_ca_file`, the CA that client certificates must chain to. All of it is
/// reloaded together, so a rotated client CA is honoured like a rotated certificate.
///
/// Each build has resumption state of its own (a session cache and a ticket key): a session
/// resumed skips client-certificate verification, so a client of a CA just rotated out must
/// not resume a session from before. After a reload every client does one full handshake.
fn build(settings: &ServerTlsSettings) -> Result<ServerConfig, String> {
    let certificates = load(&settings.certificates)?;
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::VERSIONS)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &settings.client_ca_file {
        Some(ca) => {
            let roots = Arc::new(super::read_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, super::provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Certificates(certificates)));
    config.alpn_protocols = if settings.http2 {
        vec![super::ALPN_H2.to_vec(), super::ALPN_HTTP1.to_vec()]
    } else {
        vec![super::ALPN_HTTP1.to_vec()]
    };
    // Resumption spares returning clients a full handshake (stateless tickets and a
    // bounded session cache).
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    if let Ok(t) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = t;
    }
    Ok(config)
}

/// The TLS side of the proxy listener.
pub struct ServerTls {
    /// The config new handshakes use, rebuilt when any of its files changes.
    config: Arc<Watched<Arc<ServerConfig>>>,
    settings: ServerTlsSettings,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a handshake failed, as the `reason` label says it.
fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match super::rustls_error(e) {
        Some(E::NoCertificatesPresented) => "no_client_certificate",
        Some(E::InvalidCertificate(_)) => "bad_client_certificate",
        Some(E::AlertReceived(_)) => "client_refused_certificate",
        Some(E::NoApplicationProtocol) => "no_common_alpn",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::InvalidMessage(_) | E::InappropriateMessage { .. }) => "malformed",
        Some(_) => "protocol",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

impl ServerTls {
    /// Loads the certificates and the client CA (an error names the file and what is wrong
    /// with it) and builds the rustls config.
    pub fn new(settings: ServerTlsSettings, metrics: TlsMetrics) -> Result<Arc<ServerTls>, String> {
        if settings.certificates.is_empty() {
            return Err("a TLS listener needs cert_file and key_file".into());
        }
        let files = settings
            .certificates
            .iter()
            .flat_map(|p| [p.cert_file.clone(), p.key_file.clone()])
            .chain(settings.client_ca_file.clone())
            .collect();
        let for_loader = settings.clone();
        let config = Watched::new(
            "TLS listener certificates",
            files,
            Box::new(move || build(&for_loader).map(Arc::new)),
            metrics.reloads.clone(),
        )?;
        Ok(Arc::new(ServerTls {
            config,
            settings,
            metrics,
        }))
    }

    /// Whether https requests are keyed apart from plain ones.
    pub fn key_scheme(&self) -> bool {
        self.settings.key_scheme
    }

    /// The handshake, within the timeout; counts it either way. `Some` with the stream and
    /// whether `h2` was agreed.
    pub async fn accept(&self, tcp: TcpStream) -> Option<(TlsStream<TcpStream>, bool)> {
        let acceptor = tokio_rustls::TlsAcceptor::from((*self.config.current()).clone());
        let result =
            tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(tcp)).await;
        let stream = match result {
            Err(_) => {
                self.fail("timeout");
                return None;
            }
            Ok(Err(e)) => {
                let reason = failure_reason(&e);
                tracing::debug!(error = %e, reason, "TLS handshake failed");
                self.fail(reason);
                return None;
            }
            Ok(Ok(s)) => s,
        };
        let (_, conn) = stream.get_ref();
        let h2 = conn.alpn_protocol() == Some(super::ALPN_H2);
        let protocol = match conn.alpn_protocol() {
            Some(p) if p == super::ALPN_H2 => "h2",
            Some(_) => "http/1.1",
            None => "none",
        };
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "other",
        };
        self.metrics
            .handshakes
            .get_or_create(&HandshakeLabel { protocol, version })
            .inc();
        Some((stream, h2))
    }

    fn fail(&self, reason: &'static str) {
        self.metrics
            .failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Watches the files and reloads on change, until the listener is dropped.
    pub fn spawn_reloader(self: &Arc<Self>) {
        self.config.spawn_reloader(self.settings.reload_interval);
    }

    /// One check: reloads when the files' contents changed. Returns whether it swapped.
    pub fn reload_if_changed(&self) -> bool {
        self.config.reload_if_changed()
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn certificate_names_match_sni_as_rfc_6125_allows() {
        assert!(name_matches("a.example", "a.example"));
        assert!(!name_matches("a.example", "b.example"));
        assert!(name_matches("*.example", "a.example"));
        assert!(!name_matches("*.example", "a.b.example"), "one label only");
        assert!(!name_matches("*.example", "example"));
        assert!(!name_matches("*.example", ".example"));
    }
}
