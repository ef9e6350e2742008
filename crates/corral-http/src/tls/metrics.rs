//! TLS metrics: handshakes by negotiated protocol and version, failures by reason, certificate
//! reloads. Every name starts with `corral_tls_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabel {
    /// The ALPN protocol agreed (`h2`, `http/1.1`, or `none`).
    pub protocol: &'static str,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The TLS listener's counters (registered once, cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    pub handshakes: Family<HandshakeLabel, Counter>,
    pub failures: Family<ReasonLabel, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
}

impl TlsMetrics {
    pub fn register(r: &mut Registry) -> TlsMetrics {
        let m = TlsMetrics::default();
        r.register(
            "corral_tls_handshakes",
            "Completed TLS handshakes on the proxy's TLS listener, by ALPN protocol and TLS version",
            m.handshakes.clone(),
        );
        r.register(
            "corral_tls_handshake_failures",
            "Failed TLS handshakes on the proxy's TLS listener, by reason",
            m.failures.clone(),
        );
        r.register(
            "corral_tls_certificate_reloads",
            "Certificate reloads after the files changed (result: ok, or error: the old ones stay)",
            m.reloads.clone(),
        );
        m
    }
}
