//! HTTPS upstreams: the rustls client config an upstream's pool connects with, and what a
//! failed handshake is called in a 502.
//!
//! Verification is on unless `insecure_skip_verify` says otherwise: against `ca_file` when
//! given, else the system's roots (rustls-native-certs). The name verified and sent as SNI is
//! `server_name`, else the configured URL's host — never the endpoint's IP, which discovery
//! found and the certificate does not name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::sync::watch;

use super::metrics::ResultLabel;
use super::reload::Watched;

/// What `tls = { ... }` on an upstream says.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsSettings {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    /// A client certificate (mTLS to the upstream): both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any certificate. An explicit, logged opt-in for test rigs only.
    pub insecure_skip_verify: bool,
    /// Offer `h2` by ALPN beside `http/1.1` (the upstream chooses).
    pub http2: bool,
}

/// A loaded upstream TLS configuration.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The config new connections take (without ALPN: the pool sets it per connection). A
    /// receiver, so that a reloaded CA or client certificate reaches the next connection.
    pub config: watch::Receiver<Arc<rustls::ClientConfig>>,
    /// Sent as SNI and verified against the certificate.
    pub server_name: ServerName<'static>,
    pub insecure: bool,
    /// Offer `h2` by ALPN.
    pub http2: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Loads the files `s` names once; `host` is the configured URL's host, the default name.
    pub fn load(s: &UpstreamTlsSettings, host: &str) -> Result<UpstreamTls, String> {
        let config = client_config(s)?;
        // The sender goes: the receiver keeps the one value.
        let (_, config) = watch::channel(Arc::new(config));
        UpstreamTls::with(s, host, config)
    }

    /// Like [`UpstreamTls::load`], and watches the CA and client-certificate files every
    /// `every`: a change that loads is taken by the next new connection (open ones keep
    /// theirs), one that does not keeps the previous config; each counted in `reloads`.
    pub fn load_reloading(
        s: &UpstreamTlsSettings,
        host: &str,
        every: Duration,
        reloads: Family<ResultLabel, Counter>,
    ) -> Result<UpstreamTls, String> {
        // ALPN is set per connection by the pool (pool/conn.rs), from its protocol.
        let watched = reloading_client_config("upstream TLS", s, Vec::new(), reloads)?;
        // Subscribed first: the reloader lives as long as a pool holds a receiver.
        let config = watched.subscribe();
        watched.spawn_reloader(every);
        UpstreamTls::with(s, host, config)
    }

    fn with(
        s: &UpstreamTlsSettings,
        host: &str,
        config: watch::Receiver<Arc<rustls::ClientConfig>>,
    ) -> Result<UpstreamTls, String> {
        Ok(UpstreamTls {
            config,
            server_name: server_name(s.server_name.as_deref().unwrap_or(host))?,
            insecure: s.insecure_skip_verify,
            http2: s.http2,
        })
    }
}

impl UpstreamTls {
    /// The config of a plain-HTTP pool's connector, which never starts TLS (no roots: it
    /// could verify nothing).
    pub fn unused() -> UpstreamTls {
        let config = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(super::VERSIONS)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        UpstreamTls {
            config: watch::channel(Arc::new(config)).1,
            server_name: ServerName::try_from("invalid").expect("a DNS name"),
            insecure: false,
            http2: false,
        }
    }
}

/// A verifying rustls client config from `s`'s files (roots, client certificate), without
/// ALPN: HTTPS upstreams, peers over TLS (`[cluster] tls`) and `corral purge --ca-file` all
/// build theirs here, so they trust and present certificates the same way.
pub fn client_config(s: &UpstreamTlsSettings) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::VERSIONS)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if s.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(super::provider())))
    } else {
        builder.with_root_certificates(roots(s)?)
    };
    match (&s.cert_file, &s.key_file) {
        (Some(c), Some(k)) => {
            let ck = super::certified_key(c, k)?;
            builder
                .with_client_auth_cert(ck.cert.clone(), super::read_key(k)?)
                .map_err(|e| format!("{}: {e}", c.display()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("cert_file and key_file go together".into()),
    }
}

/// [`client_config`] from `s`'s files with `alpn`, rebuilt when the files change (the peer
/// client's `[cluster] tls`): the CA file and, with mTLS, the certificate and key, by the same
/// mechanism and checks as the listeners' certificates. The system roots are not watched.
pub fn reloading_client_config(
    what: &'static str,
    s: &UpstreamTlsSettings,
    alpn: Vec<Vec<u8>>,
    reloads: Family<ResultLabel, Counter>,
) -> Result<Arc<Watched<rustls::ClientConfig>>, String> {
    let files = [&s.ca_file, &s.cert_file, &s.key_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let settings = s.clone();
    let load = move || {
        let mut config = client_config(&settings)?;
        config.alpn_protocols = alpn.clone();
        Ok(config)
    };
    Watched::new(what, files, Box::new(load), reloads)
}

/// The name to verify and send as SNI.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a DNS name or an IP address"))
}

fn roots(s: &UpstreamTlsSettings) -> Result<rustls::RootCertStore, String> {
    if let Some(ca) = &s.ca_file {
        return super::read_roots(ca);
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no system CA certificates found ({} errors); set ca_file",
            found.errors.len()
        ));
    }
    Ok(roots)
}

/// Why TLS to an upstream failed: a token for the 502 and the log, and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub reason: &'static str,
    pub detail: String,
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.reason)
    }
}

/// Names a TLS failure found in `e`'s chain; `None` when TLS is not what failed.
pub fn classify(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    use rustls::Error as E;
    use CertificateError as C;
    let err = super::rustls_error(e)?;
    let (reason, detail) = match err {
        E::InvalidCertificate(C::UnknownIssuer) => (
            "unknown_ca",
            "the upstream's certificate is not signed by a trusted CA".to_string(),
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => (
            "expired",
            "the upstream's certificate has expired".to_string(),
        ),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => (
            "not_yet_valid",
            "the upstream's certificate is not valid yet".to_string(),
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => (
            "wrong_name",
            format!("the upstream's certificate does not name the host it was asked for: {err}"),
        ),
        E::InvalidCertificate(_) => (
            "bad_certificate",
            format!("the upstream's certificate is invalid: {err}"),
        ),
        E::AlertReceived(alert) => (
            "refused",
            format!("the upstream refused the handshake (alert: {alert:?})"),
        ),
        E::NoApplicationProtocol => (
            "no_common_alpn",
            "the upstream accepts no protocol Corral offers".to_string(),
        ),
        other => ("handshake", format!("TLS handshake failed: {other}")),
    };
    Some(TlsFailure { reason, detail })
}

/// The `reason` token of a failed client handshake (`io` when TLS is not what failed): the
/// label of `corral_peer_tls_failures_total`, the same words an upstream's 502 uses.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    classify(e).map_or("io", |f| f.reason)
}

/// `insecure_skip_verify`: accepts any certificate, still checking that the handshake is
/// signed by the key the certificate holds (so it is at least the same peer throughout).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies `config`'s server certificate chain against `s`'s roots but not the name it is
/// for: PostgreSQL's `sslmode=verify-ca`, for a server reached by an address its certificate
/// does not list. The chain, its validity dates and the handshake signature are all checked
/// as before; only a certificate whose one fault is its name is accepted.
pub fn verify_chain_only(
    config: &mut rustls::ClientConfig,
    s: &UpstreamTlsSettings,
) -> Result<(), String> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(s)?),
        super::provider(),
    )
    .build()
    .map_err(|e| format!("TLS roots: {e}"))?;
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(ChainOnly(inner)));
    Ok(())
}

#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name last, after the chain and the dates: a name error means
        // everything before it held.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
