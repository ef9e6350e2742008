//! TLS with rustls on ring (no OpenSSL): the proxy's TLS listener ([`server`]) and HTTPS
//! upstreams and peers ([`client`]), sharing how PEM files are read, how a failure is named,
//! and how files are reloaded when they change ([`reload`]: the listeners' certificates and
//! the peer client's CA and certificate).
//!
//! Both sides offer TLS 1.3 and 1.2 with rustls's default cipher suites for ring (AES-GCM and
//! ChaCha20-Poly1305, ECDHE only), and ALPN `h2` then `http/1.1`.

pub mod client;
pub mod metrics;
pub mod reload;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{classify as classify_upstream_error, UpstreamTls, UpstreamTlsSettings};
pub use metrics::TlsMetrics;
pub use reload::Watched;
pub use server::{CertPair, ServerTls, ServerTlsSettings};

/// ALPN identifiers, most preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The one crypto provider (ring), shared by every TLS config in the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions offered: TLS 1.3 and 1.2.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads a PEM certificate chain, leaf first.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read(path)?;
    let certs = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read(path)?;
    rustls_pemfile::private_key(&mut text.as_slice())
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PEM private key in it", path.display()))
}

/// Reads PEM certificates into a root store (trust anchors for a CA file).
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Loads a certificate chain and its key, checking that the key is the certificate's.
pub fn certified_key(
    cert_file: &Path,
    key_file: &Path,
) -> Result<rustls::sign::CertifiedKey, String> {
    let chain = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key: {e}", key_file.display()))?;
    let ck = rustls::sign::CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(_) => Err(format!(
            "{}: the private key does not match the certificate in {}",
            key_file.display(),
            cert_file.display()
        )),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The `rustls::Error` behind an I/O or hyper error, if TLS is what failed. An `io::Error`
/// hides its payload from `source()`, so each link is unwrapped by hand.
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = rustls_error(inner) {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}
