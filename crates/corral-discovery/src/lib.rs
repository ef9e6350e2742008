//! # corral-discovery
//!
//! Where things are: the endpoint sets of cluster peers and of upstream services, found by one
//! of five sources and delivered as a stream (a `tokio::sync::watch` channel whose value is
//! always the latest complete set).
//!
//! | source | how | module |
//! | --- | --- | --- |
//! | `static` | a fixed list, with weights | [`spawn`] |
//! | `dns` | A/AAAA of a name, or SRV records (weights, ports), re-resolved honouring TTLs | [`dns`] |
//! | `kubernetes` | EndpointSlices of a Service through list/watch, with ready/serving conditions | [`kubernetes`] |
//! | `consul` | `/v1/health/service/NAME?passing=true` followed with blocking queries | [`consul`] |
//! | `file` | a JSON or TOML list, re-read when it changes | [`mod@file`] |
//!
//! Invariant: **a source that fails keeps its last known set.** A resolver, API server or file
//! that blinks never empties a pool or a cluster; the failure is counted in
//! `corral_discovery_failures_total{name, kind}` and shown by [`Health::json`]. Only an
//! authoritative answer ("this name has no records", "this Service has no endpoints") empties a
//! set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;

mod client;
pub mod consul;
pub mod dns;
pub mod file;
pub mod kubernetes;

/// One discovered endpoint.
///
/// Sets are published sorted and without duplicate addresses, so two sets compare equal exactly
/// when they hold the same endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Relative share of traffic (at least 1). Static lists, files and SRV records carry
    /// weights; other sources give 1.
    pub weight: u32,
    /// Ready for new traffic (Kubernetes `ready`; every other source only reports ready
    /// endpoints).
    pub ready: bool,
    /// Still able to serve (Kubernetes `serving`: true for a terminating pod that is draining).
    /// A pool uses serving-but-not-ready endpoints only when no endpoint is ready.
    pub serving: bool,
}

impl Endpoint {
    /// A ready endpoint of weight 1.
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint::weighted(addr, 1)
    }

    /// A ready endpoint of the given weight (0 counts as 1).
    pub fn weighted(addr: SocketAddr, weight: u32) -> Endpoint {
        Endpoint {
            addr,
            weight: weight.max(1),
            ready: true,
            serving: true,
        }
    }
}

/// How to find a set of endpoints. The same spec serves cluster peers and upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// A fixed list of addresses with weights.
    Static(Vec<(SocketAddr, u32)>),
    /// DNS: the A/AAAA records of `name` with `port`, or (when `srv`) the SRV records of
    /// `name` (targets resolved to addresses, ports and weights from the records).
    Dns {
        name: String,
        port: u16,
        srv: bool,
        nameserver: Option<SocketAddr>,
        /// Re-resolve at least this often (sooner when the records' TTL is shorter);
        /// [`DEFAULT_DNS_REFRESH`] unless configured.
        refresh: Duration,
    },
    /// EndpointSlices of a Service, watched through the API server.
    Kubernetes {
        namespace: String,
        service: String,
        port_name: Option<String>,
        port: Option<u16>,
        /// Default: in-cluster (`KUBERNETES_SERVICE_HOST`, service-account token and CA).
        api_server: Option<String>,
    },
    /// Passing instances of a Consul service, followed with blocking queries.
    Consul { address: String, service: String },
    /// A JSON or TOML list of addresses, reloaded when it changes.
    File { path: PathBuf },
}

/// How often a DNS source re-resolves when `refresh` is not given (a `dns` discovery table
/// without it, or an upstream URL naming a host).
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

impl Spec {
    /// The source's kind, as configured.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Static(_) => "static",
            Spec::Dns { .. } => "dns",
            Spec::Kubernetes { .. } => "kubernetes",
            Spec::Consul { .. } => "consul",
            Spec::File { .. } => "file",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// What the set is for: `peers` or `upstream:NAME`.
    name: String,
    kind: String,
}

/// Discovery metrics, registered once and shared by every source.
#[derive(Clone, Default)]
pub struct DiscoveryMetrics {
    failures: Family<SourceLabels, Counter>,
}

impl DiscoveryMetrics {
    /// Registers `corral_discovery_failures_total{name, kind}`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> DiscoveryMetrics {
        let m = DiscoveryMetrics::default();
        registry.register(
            "corral_discovery_failures",
            "Failed discovery attempts (the last known endpoints are kept)",
            m.failures.clone(),
        );
        m
    }

    /// The health record of one source.
    pub fn source(&self, name: &str, kind: &'static str) -> Arc<Health> {
        let failures = self
            .failures
            .get_or_create(&SourceLabels {
                name: name.to_string(),
                kind: kind.to_string(),
            })
            .clone();
        Arc::new(Health {
            name: name.to_string(),
            kind,
            failures,
            last_error: Default::default(),
            last_success: Default::default(),
        })
    }
}

/// How one source is doing: a source that fails keeps the last known set, and this is where an
/// operator sees that it does.
pub struct Health {
    pub name: String,
    pub kind: &'static str,
    failures: Counter,
    last_error: parking_lot::Mutex<Option<(String, SystemTime)>>,
    last_success: parking_lot::Mutex<Option<SystemTime>>,
}

impl Health {
    pub(crate) fn ok(&self) {
        *self.last_success.lock() = Some(SystemTime::now());
    }

    pub(crate) fn failed(&self, error: &str) {
        self.failures.inc();
        *self.last_error.lock() = Some((error.to_string(), SystemTime::now()));
        tracing::warn!(
            name = %self.name,
            source = self.kind,
            error,
            "discovery failed; keeping the last known endpoints"
        );
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u64 {
        self.failures.get()
    }

    /// `{kind, failures, last_error, last_error_ms_ago, last_success_ms_ago}`.
    pub fn json(&self) -> serde_json::Value {
        let ago = |t: SystemTime| t.elapsed().map_or(0, |d| d.as_millis() as u64);
        let err = self.last_error.lock().clone();
        serde_json::json!({
            "kind": self.kind,
            "failures": self.failures.get(),
            "last_error": err.as_ref().map(|(e, _)| e.clone()),
            "last_error_ms_ago": err.map(|(_, t)| ago(t)),
            "last_success_ms_ago": self.last_success.lock().map(ago),
        })
    }
}

/// Sorts and dedups a set (by address; the first wins) and publishes it if it changed.
pub(crate) fn publish(tx: &watch::Sender<Vec<Endpoint>>, mut set: Vec<Endpoint>, health: &Health) {
    set.sort();
    set.dedup_by(|a, b| a.addr == b.addr);
    tx.send_if_modified(|cur| {
        let changed = *cur != set;
        if changed {
            tracing::info!(name = %health.name, source = health.kind, endpoints = set.len(), "endpoint set changed");
            *cur = set;
        }
        changed
    });
}

/// Starts discovery; the receiver always holds the latest set. The source runs until every
/// receiver is dropped.
pub fn spawn(spec: &Spec, health: Arc<Health>) -> watch::Receiver<Vec<Endpoint>> {
    match spec.clone() {
        Spec::Static(addrs) => {
            let (tx, rx) = watch::channel(Vec::new());
            let set = addrs
                .into_iter()
                .map(|(a, w)| Endpoint::weighted(a, w))
                .collect();
            publish(&tx, set, &health);
            // The sender must outlive the receivers or they see the stream end.
            tokio::spawn(async move { tx.closed().await });
            rx
        }
        Spec::Dns {
            name,
            port,
            srv,
            nameserver,
            refresh,
        } => {
            let (tx, rx) = watch::channel(Vec::new());
            let spec = dns::Spec {
                name,
                port,
                srv,
                nameserver,
                refresh,
            };
            tokio::spawn(dns::follow(tx, spec, health));
            rx
        }
        Spec::Kubernetes {
            namespace,
            service,
            port_name,
            port,
            api_server,
        } => {
            let (tx, rx) = watch::channel(Vec::new());
            let spec = kubernetes::Spec {
                namespace,
                service,
                port_name,
                port,
                api_server,
            };
            tokio::spawn(kubernetes::follow(tx, spec, health));
            rx
        }
        Spec::Consul { address, service } => {
            let (tx, rx) = watch::channel(Vec::new());
            tokio::spawn(consul::follow(tx, address, service, health));
            rx
        }
        Spec::File { path } => {
            let (tx, rx) = watch::channel(Vec::new());
            tokio::spawn(file::follow(tx, path, health));
            rx
        }
    }
}

/// Waits up to `timeout` for the first non-empty set (static sets are there at once).
pub async fn first_set(rx: &mut watch::Receiver<Vec<Endpoint>>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, rx.wait_for(|s| !s.is_empty()))
        .await
        .is_ok_and(|r| r.is_ok())
}
