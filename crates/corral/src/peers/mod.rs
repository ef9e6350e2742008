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
pub fn spawn(spec: &PeerDiscovery) -> watch::Receiver<Vec<PeerAddr>> {
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
            tokio::spawn(follow_dns(tx, name, port, nameserver, refresh));
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
            tokio::spawn(kubernetes::follow(tx, spec));
            rx
        }
        PeerDiscovery::Consul { address, service } => {
            let (tx, rx) = watch::channel(Vec::new());
            tokio::spawn(consul::follow(tx, address, service));
            rx
        }
        PeerDiscovery::File { path } => {
            let (tx, rx) = watch::channel(Vec::new());
            tokio::spawn(file::follow(tx, path));
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
) {
    let resolver = resolver(nameserver);
    let mut failures = 0u32;
    loop {
        let wait = match resolver.lookup_ip(name.as_str()).await {
            Ok(lookup) => {
                failures = 0;
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
                    tracing::warn!(%name, error = %e, failures, "peer lookup failed; keeping the last known peers");
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
