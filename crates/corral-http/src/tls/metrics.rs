//! TLS metrics: handshakes by negotiated protocol and version, failures by reason, certificate
//! reloads. The listeners' names start with `corral_tls_` or `corral_admin_tls_`; the peer
//! client's reloads are `corral_peer_tls_reloads_total` ([`register_peer_reloads`]).

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
    /// The proxy's TLS listener: `corral_tls_*`.
    pub fn register(r: &mut Registry) -> TlsMetrics {
        Self::register_as(r, "corral_tls", "the proxy's TLS listener")
    }

    /// The admin listener over TLS (`[admin] tls`): `corral_admin_tls_*`, apart from the
    /// proxy's so a peer or operator handshake never counts as client traffic.
    pub fn register_admin(r: &mut Registry) -> TlsMetrics {
        Self::register_as(r, "corral_admin_tls", "the admin listener")
    }

    fn register_as(r: &mut Registry, prefix: &str, what: &str) -> TlsMetrics {
        let m = TlsMetrics::default();
        r.register(
            format!("{prefix}_handshakes"),
            format!("Completed TLS handshakes on {what}, by ALPN protocol and TLS version"),
            m.handshakes.clone(),
        );
        r.register(
            format!("{prefix}_handshake_failures"),
            format!("Failed TLS handshakes on {what}, by reason"),
            m.failures.clone(),
        );
        r.register(
            format!("{prefix}_certificate_reloads"),
            format!("Certificate reloads of {what} after the files changed (result: ok, or error: the old ones stay)"),
            m.reloads.clone(),
        );
        m
    }
}

/// `corral_peer_tls_reloads_total{result}`: the peer client's `[cluster] tls` files (CA,
/// client certificate and key) reloaded after they changed.
pub fn register_peer_reloads(r: &mut Registry) -> Family<ResultLabel, Counter> {
    register_reloads(
        r,
        "corral_peer_tls_reloads",
        "Reloads of the peer client's TLS files (cluster.tls) after they changed (result: ok, or error: the previous ones stay)",
    )
}

/// `corral_upstream_tls_reloads_total{result}`: HTTPS upstreams' `tls` files (CA, client
/// certificate and key) reloaded after they changed, all upstreams together.
pub fn register_upstream_reloads(r: &mut Registry) -> Family<ResultLabel, Counter> {
    register_reloads(
        r,
        "corral_upstream_tls_reloads",
        "Reloads of HTTPS upstreams' TLS files (upstream tls) after they changed (result: ok, or error: the previous ones stay)",
    )
}

fn register_reloads(r: &mut Registry, name: &str, help: &str) -> Family<ResultLabel, Counter> {
    let reloads = Family::default();
    r.register(name, help, reloads.clone());
    reloads
}
