//! DNS discovery: the A/AAAA records of a name (a headless Service), or its SRV records, asked
//! again every `refresh` or sooner when the records' TTL is shorter (never more often than once
//! a second).
//!
//! SRV: only the records of the best (lowest) priority are used; each target is resolved to its
//! addresses, which take the record's port and weight. A failed lookup keeps the last known
//! set; "no such records" is an answer and empties it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
use hickory_resolver::error::{ResolveError, ResolveErrorKind};
use hickory_resolver::TokioAsyncResolver;
use tokio::sync::watch;

use crate::{publish, Endpoint, Health};

/// What to resolve.
pub struct Spec {
    pub name: String,
    /// The port of A/AAAA answers (SRV records carry their own).
    pub port: u16,
    pub srv: bool,
    pub nameserver: Option<SocketAddr>,
    pub refresh: Duration,
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

/// One resolution: the set and how long it is valid.
async fn resolve(
    resolver: &TokioAsyncResolver,
    spec: &Spec,
) -> Result<(Vec<Endpoint>, Instant), ResolveError> {
    if !spec.srv {
        let lookup = resolver.lookup_ip(spec.name.as_str()).await?;
        let set = lookup
            .iter()
            .map(|ip| Endpoint::new(SocketAddr::new(ip, spec.port)))
            .collect();
        return Ok((set, lookup.valid_until()));
    }
    let srv = resolver.srv_lookup(spec.name.as_str()).await?;
    let mut valid_until = srv.as_lookup().valid_until();
    let best = srv.iter().map(|r| r.priority()).min();
    let mut set = Vec::new();
    for rec in srv.iter().filter(|r| Some(r.priority()) == best) {
        let target = rec.target().to_utf8();
        // A target without addresses is skipped; the other records still stand.
        let ips = match resolver.lookup_ip(target.as_str()).await {
            Ok(ips) => ips,
            Err(e) if matches!(e.kind(), ResolveErrorKind::NoRecordsFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        valid_until = valid_until.min(ips.valid_until());
        set.extend(ips.iter().map(|ip| {
            Endpoint::weighted(SocketAddr::new(ip, rec.port()), u32::from(rec.weight()))
        }));
    }
    Ok((set, valid_until))
}

/// Follows `spec` until every receiver is dropped.
pub async fn follow(tx: watch::Sender<Vec<Endpoint>>, spec: Spec, health: Arc<Health>) {
    let resolver = resolver(spec.nameserver);
    loop {
        let wait = match resolve(&resolver, &spec).await {
            Ok((set, valid_until)) => {
                health.ok();
                publish(&tx, set, &health);
                let ttl = valid_until.saturating_duration_since(Instant::now());
                spec.refresh.min(ttl).max(Duration::from_secs(1))
            }
            Err(e) => {
                // NXDOMAIN / no records is an answer: the service has no endpoints now.
                if matches!(e.kind(), ResolveErrorKind::NoRecordsFound { .. }) {
                    health.ok();
                    publish(&tx, Vec::new(), &health);
                } else {
                    health.failed(&format!("{}: {e}", spec.name));
                }
                Duration::from_secs(1).max(spec.refresh.min(Duration::from_secs(5)))
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = tx.closed() => return,
        }
    }
}
