//! Peer discovery for the cluster: the peer set as a stream (a `watch` channel).
//!
//! Every source keeps its last known set when it fails: a resolver, API server or file that
//! blinks never empties the cluster.
//!
//! * `static`: a fixed list.
//! * `kubernetes`: EndpointSlices through list/watch ([`kubernetes`]).
//! * `consul`: blocking queries ([`consul`]).
//! * `file`: a watched list ([`file`]).
//! * `dns`: the A/AAAA records of a headless-service name, re-resolved every `refresh` or
//!   sooner when the records' TTL is shorter (never more often than once a second). A failed
//!   lookup keeps the last known set: a resolver that blinks never empties the cluster.

use std::net::SocketAddr;
use std::time::Duration;

use corral_cluster::PeerAddr;
use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
use hickory_resolver::TokioAsyncResolver;
use tokio::sync::watch;

use crate::config::PeerDiscovery;

mod client;
pub mod consul;
pub mod file;
pub mod kubernetes;

/// How discovery is doing, for `/peers` and metrics: a source that fails keeps the last known
/// peers, and this is where an operator sees that it does.
pub struct Health {
    pub kind: &'static str,
    failures: prometheus_client::metrics::counter::Counter,
    last_error: parking_lot::Mutex<Option<(String, std::time::SystemTime)>>,
    last_success: parking_lot::Mutex<Option<std::time::SystemTime>>,
}

impl Health {
    pub fn new(
        kind: &'static str,
        registry: &mut prometheus_client::registry::Registry,
    ) -> std::sync::Arc<Health> {
        let failures = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "corral_discovery_failures",
            "Failed peer discovery attempts (the last known peers are kept)",
            failures.clone(),
        );
        std::sync::Arc::new(Health {
            kind,
            failures,
            last_error: Default::default(),
            last_success: Default::default(),
        })
    }

    fn ok(&self) {
        *self.last_success.lock() = Some(std::time::SystemTime::now());
    }

    fn failed(&self, error: &str) {
        self.failures.inc();
        *self.last_error.lock() = Some((error.to_string(), std::time::SystemTime::now()));
        tracing::warn!(
            source = self.kind,
            error,
            "peer discovery failed; keeping the last known peers"
        );
    }

    /// The `discovery` section of `/peers`.
    pub fn json(&self) -> serde_json::Value {
        let ago = |t: std::time::SystemTime| t.elapsed().map_or(0, |d| d.as_millis() as u64);
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

/// Publishes a new peer set if it differs from the current one.
fn publish(tx: &watch::Sender<Vec<PeerAddr>>, set: Vec<PeerAddr>, source: &str) {
    tx.send_if_modified(|cur| {
        let changed = *cur != set;
        if changed {
            tracing::info!(source, peers = set.len(), "peer set changed");
            *cur = set;
        }
        changed
    });
}

/// Starts discovery; the receiver always holds the latest peer set.
pub fn spawn(
    spec: &PeerDiscovery,
    health: std::sync::Arc<Health>,
) -> watch::Receiver<Vec<PeerAddr>> {
    match spec.clone() {
        PeerDiscovery::Static(addrs) => {
            let mut set: Vec<PeerAddr> = addrs
                .into_iter()
                .map(|addr| PeerAddr {
                    addr,
                    source: "static".into(),
                })
                .collect();
            set.sort();
            set.dedup();
            // The sender must outlive the receiver or the cluster sees the stream end.
            let (tx, rx) = watch::channel(set);
            tokio::spawn(async move { tx.closed().await });
            rx
        }
        PeerDiscovery::Dns {
            name,
            port,
            nameserver,
            refresh,
        } => {
            let (tx, rx) = watch::channel(Vec::new());
            tokio::spawn(follow_dns(tx, name, port, nameserver, refresh, health));
            rx
        }
        PeerDiscovery::Kubernetes {
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
        PeerDiscovery::Consul { address, service } => {
            let (tx, rx) = watch::channel(Vec::new());
            tokio::spawn(consul::follow(tx, address, service, health));
            rx
        }
        PeerDiscovery::File { path } => {
            let (tx, rx) = watch::channel(Vec::new());
            tokio::spawn(file::follow(tx, path, health));
            rx
        }
    }
}

fn resolver(nameserver: Option<SocketAddr>) -> TokioAsyncResolver {
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0; // we honour TTLs ourselves and want every refresh to ask
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    match nameserver {
        Some(ns) => {
            let mut cfg = ResolverConfig::new();
            cfg.add_name_server(NameServerConfig::new(ns, Protocol::Udp));
            cfg.add_name_server(NameServerConfig::new(ns, Protocol::Tcp));
            TokioAsyncResolver::tokio(cfg, opts)
        }
        None => TokioAsyncResolver::tokio_from_system_conf()
            .unwrap_or_else(|_| TokioAsyncResolver::tokio(ResolverConfig::default(), opts)),
    }
}

async fn follow_dns(
    tx: watch::Sender<Vec<PeerAddr>>,
    name: String,
    port: u16,
    nameserver: Option<SocketAddr>,
    refresh: Duration,
    health: std::sync::Arc<Health>,
) {
    let resolver = resolver(nameserver);
    let mut failures = 0u32;
    loop {
        let wait = match resolver.lookup_ip(name.as_str()).await {
            Ok(lookup) => {
                failures = 0;
                health.ok();
                let mut set: Vec<PeerAddr> = lookup
                    .iter()
                    .map(|ip| PeerAddr {
                        addr: SocketAddr::new(ip, port),
                        source: "dns".into(),
                    })
                    .collect();
                set.sort();
                set.dedup();
                publish(&tx, set, "dns");
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                refresh.min(ttl).max(Duration::from_secs(1))
            }
            Err(e) => {
                failures += 1;
                // NXDOMAIN / no records is an answer: the service has no endpoints now.
                if matches!(
                    e.kind(),
                    hickory_resolver::error::ResolveErrorKind::NoRecordsFound { .. }
                ) {
                    tx.send_if_modified(|cur| {
                        let changed = !cur.is_empty();
                        cur.clear();
                        changed
                    });
                } else {
                    let _ = failures;
                    health.failed(&format!("{name}: {e}"));
                }
                Duration::from_secs(1).max(refresh.min(Duration::from_secs(5)))
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = tx.closed() => return,
        }
    }
}
