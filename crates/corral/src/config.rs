//! The configuration file (TOML) and its validation.
//!
//! Two steps: serde reads the file into [`RawConfig`] (unknown keys are errors, so typos do not
//! pass silently), then [`RawConfig::resolve`] turns strings into typed values, naming the key,
//! the value and what is allowed whenever one is wrong. Command-line flags are applied to the raw
//! form before resolving, so they are checked by the same code.
//!
//! Each table is resolved by a function beside its raw type (`config_server`, `config_cache`,
//! `config_admin`, `upstream_config`, `route_config`, `config_cluster`, ...); `resolve` calls
//! them in turn and holds only what spans tables. An unset key takes the `Default` of the
//! settings type its value ends up in (`ServerLimits`, `CachePolicy`, `GatewayConfig`, ...), so
//! a default is written once; the tests below check that empty tables resolve to those.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_core::tags::TagPolicy;
use serde::Deserialize;

/// A configuration error: what is wrong, where.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn bad(key: &str, value: impl std::fmt::Display, allowed: &str) -> ConfigError {
    ConfigError(format!(
        "{key} = {value:?}: {allowed}",
        value = value.to_string()
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: Option<RawUpstreamShortcut>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub cluster: Option<RawCluster>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub forward: Vec<crate::forward::RawForward>,
    #[serde(default)]
    pub telemetry: Option<crate::config_telemetry::RawTelemetry>,
    #[serde(default)]
    pub sources: Vec<crate::config_sources::RawSource>,
}

pub use crate::config_admin::RawAdmin;
pub use crate::config_cache::RawCache;
pub use crate::config_cluster::{ClusterSpec, RawCluster};
pub use crate::config_server::RawServer;
pub use crate::route_config::{RawRoute, RouteSpec};
pub use crate::upstream_config::{RawUpstream, RawUpstreamShortcut};

/// Command-line overrides.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
}

pub use crate::upstream_config::UpstreamSpec;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The plain listener; `None` under `listen = "none"` (TLS only).
    pub listen: Option<SocketAddr>,
    /// `[server] tls`: the TLS listener.
    pub tls: Option<crate::config_tls::TlsListenerSpec>,
    pub admin_listen: SocketAddr,
    /// `[admin] tls` (or `[cluster] tls`'s certificate): the admin listener serves TLS.
    pub admin_tls: Option<corral_http::tls::ServerTlsSettings>,
    pub shutdown_grace: Duration,
    pub limits: corral_http::ServerLimits,
    pub access_log: bool,
    pub log_json: bool,
    pub host_header: corral_http::HostHeader,
    /// Trusted proxies, bodies on GET, override headers (see `config_ingress`).
    pub ingress: corral_http::IngressPolicy,
    pub max_size: u64,
    pub tags: TagPolicy,
    pub coalesce_timeout: Duration,
    pub hit_for_miss: Duration,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    pub admin_token_file: Option<PathBuf>,
    pub purge_allow: Vec<ipnet::IpNet>,
    pub admin_max_body: usize,
    /// `[admin] feed_replay`, `feed_keepalive`.
    pub feed: crate::feed::FeedConfig,
    pub cluster: Option<ClusterSpec>,
    /// `[cache.l2]`: the Redis L2 tier.
    pub l2: Option<crate::config_redis::L2Spec>,
    pub forward: Vec<crate::forward::ForwardSpec>,
    /// `[telemetry]`: OTLP trace export, when `otlp_endpoint` is set.
    pub telemetry: Option<crate::config_telemetry::TelemetrySpec>,
    /// `[[sources]]`: database change streams purged from.
    pub sources: Vec<crate::config_sources::SourceSpec>,
}

impl RawConfig {
    /// Reads a file.
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Applies flags and checks every value: each table by its own resolver (next to its raw
    /// type, taking its defaults from the settings type it fills), then what spans tables.
    pub fn resolve(mut self, o: &Overrides) -> Result<Config, ConfigError> {
        self.apply(o);
        let server = crate::config_server::resolve(&self.server)?;
        let cache = crate::config_cache::resolve(&self.cache)?;
        let upstreams =
            crate::upstream_config::resolve_all(self.upstream.as_ref(), &self.upstreams)?;
        // Routes name upstreams and inherit [cache]; the shortcut adds the catch-all route.
        let routes = crate::route_config::resolve_all(
            &self.routes,
            self.upstream.is_some(),
            &cache.base,
            &upstreams,
        )?;
        // A replica advertises its admin listener to peers unless told otherwise.
        let cluster = match &self.cluster {
            Some(c) => Some(crate::config_cluster::cluster_spec(c, server.admin_listen)?),
            None => None,
        };
        let forward = crate::forward::resolve(&self.forward)?;
        let telemetry = crate::config_telemetry::resolve(self.telemetry.as_ref())?;
        let sources = crate::config_sources::resolve(&self.sources)?;
        let admin = crate::config_admin::resolve(&self.admin)?;
        // The admin listener serves [cluster] tls's certificate when [admin] tls is absent (peers
        // call it), and its handshake defaults to [server] header_read_timeout.
        let admin_tls = crate::config_tls::admin_tls(
            self.admin.tls.as_ref(),
            self.cluster.as_ref().and_then(|c| c.tls.as_ref()),
            server.limits.header_read_timeout,
        )?;
        Ok(Config {
            listen: server.listen,
            tls: server.tls,
            admin_listen: server.admin_listen,
            admin_tls,
            shutdown_grace: server.shutdown_grace,
            limits: server.limits,
            access_log: server.access_log,
            log_json: server.log_json,
            host_header: server.host_header,
            ingress: server.ingress,
            max_size: cache.max_size,
            tags: cache.tags,
            coalesce_timeout: cache.coalesce_timeout,
            hit_for_miss: cache.hit_for_miss,
            upstreams,
            routes,
            admin_token_file: admin.token_file,
            purge_allow: admin.purge_allow,
            admin_max_body: admin.max_body,
            feed: admin.feed,
            cluster,
            l2: cache.l2,
            forward,
            telemetry,
            sources,
        })
    }

    /// Command-line flags replace what the file says, before anything is checked, so a flag
    /// is checked (and named in errors) by the key it stands for.
    fn apply(&mut self, o: &Overrides) {
        if let Some(l) = &o.listen {
            self.server.listen = Some(l.clone());
        }
        if let Some(l) = &o.admin_listen {
            self.server.admin_listen = Some(l.clone());
        }
        if let Some(u) = &o.upstream {
            let s = self.upstream.get_or_insert_with(Default::default);
            s.url = Some(u.clone());
            s.discovery = None;
        }
    }
}

pub(crate) fn positive(key: &str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        Err(bad(key, v, "must be at least 1"))
    } else {
        Ok(v)
    }
}

pub(crate) fn addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        bad(
            key,
            v,
            "expected an address like \"127.0.0.1:8080\" or \"[::]:8080\"",
        )
    })
}

/// A duration key: `default` (the settings type's own) when unset.
pub(crate) fn dur(key: &str, v: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => parse_duration(key, v),
    }
}

/// Parses a humantime duration ("30s", "5m", "1h30m").
pub fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.trim())
        .map_err(|_| bad(key, v, "expected a duration like \"30s\", \"5m\" or \"1h\""))
}

/// A size key: `default` (the settings type's own, in bytes) when unset.
pub(crate) fn size(key: &str, v: Option<&str>, default: u64) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => parse_size(key, v),
    }
}

/// Parses a size: a whole number and a unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB).
pub fn parse_size(key: &str, v: &str) -> Result<u64, ConfigError> {
    let err = || {
        bad(
            key,
            v,
            "expected a size like \"256MiB\", \"8MiB\" or \"1GiB\"",
        )
    };
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml_text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(toml_text).map_err(|e| ConfigError(e.to_string()))?;
        raw.resolve(&Overrides::default())
    }

    #[test]
    fn defaults() {
        let c = resolve("").unwrap();
        assert_eq!(c.listen.unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.max_size, 256 << 20);
        assert!(c.routes.is_empty());
    }

    /// The same value, as `Debug` shows it: the settings types do not all implement
    /// `PartialEq`, and `Debug` shows every field.
    fn same(what: &str, resolved: impl std::fmt::Debug, default: impl std::fmt::Debug) {
        assert_eq!(
            format!("{resolved:?}"),
            format!("{default:?}"),
            "{what}: an empty table must resolve to the settings type's Default"
        );
    }

    /// Each table left empty resolves to the `Default` of the type it fills: a default
    /// written a second time in the resolver, and then changed in one place only, fails here.
    #[test]
    fn empty_tables_resolve_to_the_settings_types_defaults() {
        use corral_http::{GatewayConfig, IngressPolicy, ServerLimits, Timeouts};
        let c = resolve("[upstream]\nurl = \"http://127.0.0.1:3000\"").unwrap();
        let gateway = GatewayConfig::default();
        // [server]
        same("server limits", &c.limits, ServerLimits::default());
        same("server.access_log", c.access_log, gateway.access_log);
        same("server.host_header", &c.host_header, &gateway.host_header);
        same(
            "server ingress",
            &c.ingress,
            IngressPolicy {
                listen_port: 8080,
                ..IngressPolicy::default()
            },
        );
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert!(!c.log_json && c.tls.is_none() && c.admin_tls.is_none());
        // [cache]
        same(
            "cache.max_size",
            c.max_size,
            corral_core::StoreConfig::default().max_bytes,
        );
        same("cache tags", &c.tags, &gateway.tags);
        same(
            "cache.coalesce_timeout",
            c.coalesce_timeout,
            gateway.coalesce_timeout,
        );
        same("cache.hit_for_miss", c.hit_for_miss, gateway.hit_for_miss);
        same(
            "cache policy (the shortcut's route)",
            &c.routes[0].policy,
            corral_core::CachePolicy::default(),
        );
        // [upstream]
        same(
            "upstream timeouts",
            c.upstreams[0].config.timeouts,
            Timeouts::default(),
        );
        // [admin]
        same("admin feed", c.feed, crate::feed::FeedConfig::default());
        assert_eq!(c.admin_max_body, 1 << 20);
        assert_eq!(
            c.purge_allow,
            ["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
        );
        assert!(c.cluster.is_none() && c.l2.is_none() && c.telemetry.is_none());
    }

    #[test]
    fn empty_cluster_and_l2_tables_resolve_to_the_settings_types_defaults() {
        let c = resolve(
            r#"
            [cluster]
            advertise = "127.0.0.1:9090"
            discovery = { kind = "static", addresses = ["127.0.0.2:9090"] }
            [cache.l2]
            kind = "redis"
            url = "redis://127.0.0.1:6379"
            "#,
        )
        .unwrap();
        let cluster = c.cluster.unwrap();
        let d = corral_cluster::ClusterTunables::default();
        same(
            "cluster tunables",
            corral_cluster::ClusterTunables {
                replay_window: cluster.replay_window,
                heartbeat: cluster.heartbeat,
                log_capacity: cluster.log_capacity,
                queue_capacity: cluster.queue_capacity,
                fanout: cluster.fanout,
                relay_budget: cluster.relay_budget,
            },
            d,
        );
        assert_eq!(
            cluster.wait_timeout,
            crate::config_cluster::DEFAULT_WAIT_TIMEOUT
        );
        same(
            "cluster warmup",
            &cluster.warmup,
            corral_cluster::warmup::WarmupConfig::default(),
        );
        assert!(cluster.shard.is_none() && cluster.bus.is_none() && cluster.tls.is_none());
        let l2 = c.l2.unwrap();
        same("cache.l2", &l2.l2, corral_redis::L2Config::default());
        same(
            "cache.l2 breaker",
            &l2.redis.breaker,
            corral_redis::BreakerConfig::default(),
        );
        same(
            "cache.l2 lease",
            l2.lease.as_ref(),
            Some(&corral_redis::LeaseConfig::default()),
        );
    }

    #[test]
    fn errors_name_key_value_and_allowed() {
        let e = resolve("[cache]\nmax_size = \"12XB\"").unwrap_err().0;
        assert!(
            e.contains("cache.max_size") && e.contains("12XB") && e.contains("256MiB"),
            "{e}"
        );
        let e = resolve("[server]\nshutdown_grace = \"soon\"")
            .unwrap_err()
            .0;
        assert!(
            e.contains("server.shutdown_grace") && e.contains("soon"),
            "{e}"
        );
        let e = resolve("[upstream]\nurl = \"ftp://x\"").unwrap_err().0;
        assert!(e.contains("upstream.url"), "{e}");
        let e = resolve("[cache]\nmax_sise = \"1MiB\"").unwrap_err().0;
        assert!(e.contains("max_sise"), "{e}");
        let e = resolve("[[upstreams]]\nname='a'\nurl='http://x:1'\n[[routes]]\nupstream='b'")
            .unwrap_err()
            .0;
        assert!(
            e.contains("routes[0].upstream") && e.contains("\"b\""),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("k", "8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("k", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("k", "100").unwrap(), 100);
        assert!(parse_size("k", "-1MiB").is_err());
        assert!(parse_size("k", "99999999999999TiB").is_err());
    }

    #[test]
    fn routes_inherit_and_override() {
        let c = resolve(
            r#"
            [upstream]
            url = "http://127.0.0.1:3000"
            [cache]
            max_ttl = "1h"
            [[upstreams]]
            name = "catalog"
            discovery = { kind = "static", addresses = ["127.0.0.1:3001", "127.0.0.1:3002"] }
            [[routes]]
            path_prefix = "/api/catalog/"
            upstream = "catalog"
            cache = { default_ttl = "5s" }
            "#,
        )
        .unwrap();
        assert_eq!(c.routes.len(), 2);
        let r = &c.routes[0];
        assert_eq!(r.policy.default_ttl, Some(Duration::from_secs(5)));
        assert_eq!(r.policy.max_ttl, Duration::from_secs(3600));
        assert!(
            matches!(&c.upstreams[1].discovery, corral_discovery::Spec::Static(l) if l.len() == 2)
        );
        assert_eq!(c.routes[1].path_prefix, "/");
    }
}
