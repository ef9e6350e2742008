//! `[cluster]` resolved: this replica's advertised address, the bus, how peers are found.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corral_cluster::shard::ShardConfig;
use corral_cluster::warmup::WarmupConfig;
use serde::Deserialize;

use crate::config::{addr, bad, dur, parse_duration, parse_size, positive, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub secret_file: Option<PathBuf>,
    pub advertise: Option<String>,
    pub discovery: Option<toml::Table>,
    pub bus: Option<toml::Value>,
    pub heartbeat: Option<String>,
    pub replay_window: Option<String>,
    pub wait_timeout: Option<String>,
    pub queue_capacity: Option<usize>,
    pub log_capacity: Option<usize>,
    pub fanout: Option<usize>,
    pub relay_budget: Option<String>,
    pub tls: Option<crate::config_tls::RawPeerTls>,
    pub warmup: Option<RawWarmup>,
    pub shard: Option<RawShard>,
}

/// How long a purge with `wait` waits for peers' acknowledgements when `cluster.wait_timeout`
/// is unset. The binary's alone (the cluster crate does not wait), so its default is here.
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How peers are found: the discovery spec shared with upstreams.
pub type PeerDiscovery = corral_discovery::Spec;

/// The resolved `[cluster]` section.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub secret_file: Option<PathBuf>,
    pub advertise: SocketAddr,
    pub discovery: PeerDiscovery,
    pub heartbeat: Duration,
    pub replay_window: Duration,
    pub wait_timeout: Duration,
    pub queue_capacity: usize,
    /// This replica's own events kept for peers that fell behind (gap recovery).
    pub log_capacity: usize,
    /// The most peers one event is sent to; relays carry it on (`0`: a direct mesh).
    pub fanout: usize,
    /// How long a relayed round may take to be acknowledged through the tree.
    pub relay_budget: Duration,
    /// `bus = { kind = "redis", … }`: the Redis Streams bus (beside the HTTP fan-out).
    pub bus: Option<crate::config_redis::BusSpec>,
    /// `[cluster] tls`: peers are called over verified TLS.
    pub tls: Option<crate::config_tls::PeerTlsSpec>,
    /// `warmup = { … }`: warm-up from peers at start, and what this replica donates.
    pub warmup: corral_cluster::warmup::WarmupConfig,
    /// `shard = { … }`: owner routing of misses, when set.
    pub shard: Option<corral_cluster::shard::ShardConfig>,
}

/// `[cluster] warmup = { … }` as written. `budget` and `timeout` are the names the contract
/// gave first; they mean `max_bytes` and `deadline`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWarmup {
    pub enabled: Option<bool>,
    #[serde(alias = "budget")]
    pub max_bytes: Option<String>,
    pub max_entries: Option<usize>,
    #[serde(alias = "timeout")]
    pub deadline: Option<String>,
    pub rate: Option<String>,
}

/// `[cluster] shard = { … }` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    pub replicas_per_key: Option<usize>,
    pub timeout: Option<String>,
}

/// `shard`: owner routing, off when absent.
fn shard(s: Option<&RawShard>) -> Result<Option<ShardConfig>, ConfigError> {
    let Some(s) = s else { return Ok(None) };
    let d = ShardConfig::default();
    let replicas_per_key = s.replicas_per_key.unwrap_or(d.replicas_per_key);
    if replicas_per_key != 1 {
        return Err(bad(
            "cluster.shard.replicas_per_key",
            replicas_per_key,
            "only 1 is supported (one owner per key)",
        ));
    }
    let timeout = match &s.timeout {
        Some(v) => parse_duration("cluster.shard.timeout", v)?,
        None => d.timeout,
    };
    if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&timeout) {
        return Err(bad(
            "cluster.shard.timeout",
            s.timeout.as_deref().unwrap_or_default(),
            "a duration from \"10ms\" to \"1m\"",
        ));
    }
    Ok(Some(ShardConfig {
        replicas_per_key,
        timeout,
    }))
}

/// `warmup`: absent, the defaults (off; what this replica donates is still bounded by them).
/// Written, it is on unless it says `enabled = false`.
fn warmup(w: Option<&RawWarmup>) -> Result<WarmupConfig, ConfigError> {
    let d = WarmupConfig::default();
    let Some(w) = w else { return Ok(d) };
    let size = |key: &str, v: &Option<String>, default: u64| match v {
        Some(v) => parse_size(key, v),
        None => Ok(default),
    };
    let deadline = match &w.deadline {
        Some(v) => parse_duration("cluster.warmup.deadline", v)?,
        None => d.deadline,
    };
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&deadline) {
        return Err(bad(
            "cluster.warmup.deadline",
            w.deadline.as_deref().unwrap_or_default(),
            "a duration from \"100ms\" to \"1h\"",
        ));
    }
    let rate = size("cluster.warmup.rate", &w.rate, d.rate)?;
    if rate < 1024 {
        return Err(bad(
            "cluster.warmup.rate",
            w.rate.as_deref().unwrap_or_default(),
            "at least \"1KiB\" (bytes per second donated)",
        ));
    }
    Ok(WarmupConfig {
        enabled: w.enabled.unwrap_or(true),
        max_bytes: size("cluster.warmup.max_bytes", &w.max_bytes, d.max_bytes)?,
        max_entries: positive(
            "cluster.warmup.max_entries",
            w.max_entries.unwrap_or(d.max_entries),
        )?,
        deadline,
        rate,
    })
}

pub(crate) fn cluster_spec(
    c: &RawCluster,
    admin_listen: SocketAddr,
) -> Result<ClusterSpec, ConfigError> {
    let advertise = match &c.advertise {
        Some(a) => addr("cluster.advertise", a)?,
        None => match std::env::var("POD_IP") {
            Ok(ip) => {
                let ip: std::net::IpAddr = ip.parse().map_err(|_| bad("POD_IP", &ip, "expected an IP address (cluster.advertise defaults from it)"))?;
                SocketAddr::new(ip, admin_listen.port())
            }
            Err(_) if !admin_listen.ip().is_unspecified() => admin_listen,
            // Redis bus only, no peers to reach this replica: the address is only a name.
            Err(_) if c.discovery.is_none() && matches!(c.bus, Some(toml::Value::Table(_))) => {
                admin_listen
            }
            Err(_) => {
                return Err(bad(
                    "cluster.advertise",
                    "",
                    "set it (or POD_IP) when server.admin_listen is a wildcard address: peers need an address to reach this replica",
                ))
            }
        },
    };
    let bus = match &c.bus {
        None => None,
        Some(toml::Value::String(s)) if s == "http" => None,
        Some(toml::Value::Table(t)) => Some(crate::config_redis::bus("cluster.bus", t)?),
        Some(other) => {
            return Err(bad(
                "cluster.bus",
                other,
                "allowed: \"http\" or { kind = \"redis\", url = \"redis://host:port\", stream = \"corral:events\" }",
            ))
        }
    };
    // With the Redis bus, peers need not be discovered (the HTTP fan-out then has no peers).
    let discovery = match (&c.discovery, &bus) {
        (Some(d), _) => crate::discovery_config::parse("cluster.discovery", d)?,
        (None, Some(_)) => corral_discovery::Spec::Static(Vec::new()),
        (None, None) => {
            return Err(bad(
                "cluster.discovery",
                "",
                "needs a discovery spec, e.g. { kind = \"static\", addresses = [...] } (or use bus = { kind = \"redis\", ... })",
            ))
        }
    };
    let d = corral_cluster::ClusterTunables::default();
    Ok(ClusterSpec {
        secret_file: c.secret_file.clone(),
        advertise,
        discovery,
        heartbeat: dur("cluster.heartbeat", c.heartbeat.as_deref(), d.heartbeat)?,
        replay_window: dur(
            "cluster.replay_window",
            c.replay_window.as_deref(),
            d.replay_window,
        )?,
        wait_timeout: dur(
            "cluster.wait_timeout",
            c.wait_timeout.as_deref(),
            DEFAULT_WAIT_TIMEOUT,
        )?,
        queue_capacity: positive(
            "cluster.queue_capacity",
            c.queue_capacity.unwrap_or(d.queue_capacity),
        )?,
        log_capacity: positive(
            "cluster.log_capacity",
            c.log_capacity.unwrap_or(d.log_capacity),
        )?,
        fanout: fanout(c.fanout.unwrap_or(d.fanout))?,
        relay_budget: dur(
            "cluster.relay_budget",
            c.relay_budget.as_deref(),
            d.relay_budget,
        )?,
        warmup: warmup(c.warmup.as_ref())?,
        shard: shard(c.shard.as_ref())?,
        bus,
        tls: crate::config_tls::peer_tls(c.tls.as_ref())?,
    })
}

/// `fanout`: 0 (a mesh) or at least 2 (a relay tree; 1 would be a chain as long as the fleet).
fn fanout(v: usize) -> Result<usize, ConfigError> {
    match v {
        1 => Err(bad(
            "cluster.fanout",
            1,
            "0 sends every event to every peer; a relay tree needs at least 2",
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WarmupConfig, ConfigError> {
        let raw: RawWarmup = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        warmup(Some(&raw))
    }

    #[test]
    fn warmup_is_off_without_the_table_and_on_with_it() {
        assert_eq!(warmup(None).unwrap(), WarmupConfig::default());
        assert!(!WarmupConfig::default().enabled);
        let on = parse("").unwrap();
        assert!(on.enabled);
        assert_eq!((on.max_bytes, on.rate), (256 << 20, 32 << 20));
        assert!(!parse("enabled = false").unwrap().enabled);
        // The contract's names.
        let c = parse("budget = \"1MiB\"\ntimeout = \"5s\"").unwrap();
        assert_eq!((c.max_bytes, c.deadline), (1 << 20, Duration::from_secs(5)));
        for (bad_value, key) in [
            ("rate = \"10B\"", "cluster.warmup.rate"),
            ("deadline = \"0s\"", "cluster.warmup.deadline"),
            ("max_entries = 0", "cluster.warmup.max_entries"),
            ("max_bytes = \"lots\"", "cluster.warmup.max_bytes"),
        ] {
            let e = parse(bad_value).unwrap_err().0;
            assert!(e.starts_with(key), "{bad_value}: {e}");
        }
        assert!(parse("colour = 1").is_err(), "unknown keys are errors");
    }

    #[test]
    fn shard_is_off_unless_written_and_checked() {
        assert_eq!(shard(None).unwrap(), None);
        let raw = |t: &str| toml::from_str::<RawShard>(t).unwrap();
        assert_eq!(
            shard(Some(&raw("replicas_per_key = 1\ntimeout = \"500ms\""))).unwrap(),
            Some(ShardConfig {
                replicas_per_key: 1,
                timeout: Duration::from_millis(500)
            })
        );
        assert_eq!(shard(Some(&raw(""))).unwrap(), Some(ShardConfig::default()));
        for (text, key) in [
            ("replicas_per_key = 2", "cluster.shard.replicas_per_key"),
            ("timeout = \"0s\"", "cluster.shard.timeout"),
            ("timeout = \"soon\"", "cluster.shard.timeout"),
        ] {
            let e = shard(Some(&raw(text))).unwrap_err().0;
            assert!(e.starts_with(key), "{text}: {e}");
        }
        assert!(toml::from_str::<RawShard>("owners = 1").is_err());
    }
}
