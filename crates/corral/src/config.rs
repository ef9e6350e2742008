//! The configuration file (TOML) and its validation.
//!
//! Two steps: serde reads the file into [`RawConfig`] (unknown keys are errors, so typos do not
//! pass silently), then [`RawConfig::resolve`] turns strings into typed values, naming the key,
//! the value and what is allowed whenever one is wrong. Command-line flags are applied to the raw
//! form before resolving, so they are checked by the same code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_core::tags::TagPolicy;
use corral_core::CachePolicy;
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub shutdown_grace: Option<String>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub max_header_size: Option<String>,
    pub max_headers: Option<usize>,
    pub h2c: Option<bool>,
    pub access_log: Option<bool>,
    pub log_format: Option<String>,
    /// "preserve" (default), "upstream", or a fixed host.
    pub host_header: Option<String>,
    /// CIDRs whose `X-Forwarded-*` / `Forwarded` headers are kept (and keyed).
    pub trusted_proxies: Option<Vec<String>>,
    /// "pass" (default) or "reject": a GET/HEAD with a body.
    pub get_body: Option<String>,
    /// Header names that ask the origin for another URL or method.
    pub override_headers: Option<Vec<String>>,
    /// The TLS listener (beside the plain one, or instead of it with `listen = "none"`).
    pub tls: Option<crate::config_tls::RawServerTls>,
    /// HTTP/2 requests in flight on one connection.
    pub h2_max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamShortcut {
    pub url: Option<String>,
    pub discovery: Option<toml::Table>,
    pub tls: Option<crate::config_tls::RawUpstreamTls>,
    pub protocol: Option<String>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub total_timeout: Option<String>,
    pub keepalive: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub url: Option<String>,
    pub discovery: Option<toml::Table>,
    pub tls: Option<crate::config_tls::RawUpstreamTls>,
    pub protocol: Option<String>,
    pub balance: Option<String>,
    pub health: Option<toml::Table>,
    pub outlier: Option<toml::Table>,
    pub retries: Option<u32>,
    pub retry_budget: Option<f64>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub total_timeout: Option<String>,
    pub keepalive: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
    #[serde(default)]
    pub cache: RawCache,
    /// Methods whose responses may be cached (a subset of GET, HEAD).
    pub cache_methods: Option<Vec<String>>,
}

/// `[cache]`, and a route's `cache = { ... }` overrides (same keys; unset = inherited).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub max_size: Option<String>,
    pub max_object_size: Option<String>,
    pub max_ttl: Option<String>,
    pub default_ttl: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub keep: Option<String>,
    pub heuristic_fraction: Option<f64>,
    pub heuristic_max: Option<String>,
    pub ignore_query: Option<Vec<String>>,
    pub allow_query: Option<Vec<String>>,
    pub key_headers: Option<Vec<String>>,
    pub strip_set_cookie: Option<bool>,
    pub ignore_client_no_cache: Option<bool>,
    pub cacheable_statuses: Option<Vec<u16>>,
    pub cacheable_content_types: Option<Vec<String>>,
    pub max_variants: Option<usize>,
    pub default_ttl_statuses: Option<Vec<u16>>,
    pub unkeyed_headers: Option<Vec<String>>,
    pub forward_override_headers: Option<bool>,
    pub max_key_length: Option<usize>,
    pub targeted_fields: Option<Vec<String>>,
    pub expose_targeted_fields: Option<bool>,
    pub coalesce_timeout: Option<String>,
    pub hit_for_miss: Option<String>,
    pub tag_headers: Option<Vec<String>>,
    pub tag_headers_comma: Option<Vec<String>>,
    pub max_tags: Option<usize>,
    pub max_tag_length: Option<usize>,
    pub expose_tags: Option<bool>,
    pub l2: Option<toml::Table>,
}

pub use crate::config_cluster::{ClusterSpec, RawCluster};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub token_file: Option<PathBuf>,
    pub purge_allow: Option<Vec<String>>,
    pub max_body_size: Option<String>,
    /// Events the subscribe feed keeps for `Last-Event-ID` resumption.
    pub feed_replay: Option<usize>,
    pub feed_keepalive: Option<String>,
    pub tls: Option<crate::config_tls::RawAdminTls>,
}

/// Command-line overrides.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
}

pub use crate::upstream_config::UpstreamSpec;

/// A resolved route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: String,
    pub policy: CachePolicy,
    pub cache_methods: Vec<http::Method>,
}

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

    /// Applies flags and checks every value.
    pub fn resolve(mut self, o: &Overrides) -> Result<Config, ConfigError> {
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
        let s = &self.server;
        let listen = crate::config_tls::plain_listen(s)?;
        let admin_listen = addr(
            "server.admin_listen",
            s.admin_listen.as_deref().unwrap_or("127.0.0.1:9090"),
        )?;
        if listen == Some(admin_listen) {
            return Err(bad(
                "server.admin_listen",
                admin_listen,
                "must differ from server.listen",
            ));
        }
        let limits = corral_http::ServerLimits {
            max_connections: positive(
                "server.max_connections",
                s.max_connections.unwrap_or(10_000),
            )?,
            header_read_timeout: dur(
                "server.header_read_timeout",
                s.header_read_timeout.as_deref(),
                "10s",
            )?,
            max_header_bytes: size(
                "server.max_header_size",
                s.max_header_size.as_deref(),
                "64KiB",
            )? as usize,
            max_headers: positive("server.max_headers", s.max_headers.unwrap_or(100))?,
            h2c: s.h2c.unwrap_or(true),
            h2_max_concurrent_streams: crate::config_tls::h2_streams(s.h2_max_concurrent_streams)?,
            ..corral_http::ServerLimits::default()
        };
        let tls = crate::config_tls::tls_listener(s, &limits, listen, admin_listen)?;
        if limits.max_header_bytes < 1024 {
            return Err(bad(
                "server.max_header_size",
                limits.max_header_bytes,
                "must be at least 1KiB",
            ));
        }
        let log_json = match s.log_format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                return Err(bad(
                    "server.log_format",
                    other,
                    "allowed: \"text\", \"json\"",
                ))
            }
        };
        let host_header = match s.host_header.as_deref().unwrap_or("preserve") {
            "preserve" => corral_http::HostHeader::Preserve,
            "upstream" => corral_http::HostHeader::Upstream,
            h if http::HeaderValue::from_str(h).is_ok() && !h.is_empty() => {
                corral_http::HostHeader::Fixed(h.to_string())
            }
            h => {
                return Err(bad(
                    "server.host_header",
                    h,
                    "allowed: \"preserve\", \"upstream\" or a host name",
                ))
            }
        };
        let shutdown_grace = dur("server.shutdown_grace", s.shutdown_grace.as_deref(), "30s")?;
        // X-Forwarded-Port names the plain listener's port, or the TLS one's without it.
        let port = listen
            .or(tls.as_ref().map(|t| t.listen))
            .map_or(0, |a| a.port());
        let ingress = crate::config_ingress::ingress(s, port)?;

        let c = &self.cache;
        let max_size = size("cache.max_size", c.max_size.as_deref(), "256MiB")?;
        if max_size < 1 << 20 {
            return Err(bad(
                "cache.max_size",
                c.max_size.as_deref().unwrap_or(""),
                "must be at least 1MiB",
            ));
        }
        let base = crate::config_cache::policy("cache", c, &CachePolicy::default())?;
        if base.max_object_size as u64 > max_size {
            return Err(bad(
                "cache.max_object_size",
                c.max_object_size.as_deref().unwrap_or(""),
                "must not exceed cache.max_size",
            ));
        }
        let tags = crate::config_cache::tag_policy(c)?;
        let coalesce_timeout = dur(
            "cache.coalesce_timeout",
            c.coalesce_timeout.as_deref(),
            "30s",
        )?;
        let hit_for_miss = dur("cache.hit_for_miss", c.hit_for_miss.as_deref(), "10s")?;

        let upstreams = self.resolve_upstreams()?;
        let routes = self.resolve_routes(&base, &upstreams)?;
        let l2 = match &c.l2 {
            Some(t) => Some(crate::config_redis::l2("cache.l2", t)?),
            None => None,
        };
        let cluster = match &self.cluster {
            Some(c) => Some(crate::config_cluster::cluster_spec(c, admin_listen)?),
            None => None,
        };
        let forward = crate::forward::resolve(&self.forward)?;
        let telemetry = crate::config_telemetry::resolve(self.telemetry.as_ref())?;
        let sources = crate::config_sources::resolve(&self.sources)?;

        let a = &self.admin;
        let loopback = vec!["127.0.0.0/8".into(), "::1/128".into()];
        let purge_allow = crate::config_ingress::cidrs(
            "admin.purge_allow",
            a.purge_allow.as_ref().unwrap_or(&loopback),
        )?;
        let admin_max_body =
            size("admin.max_body_size", a.max_body_size.as_deref(), "1MiB")? as usize;
        let feed = feed_config(a)?;
        let peer_tls = self.cluster.as_ref().and_then(|c| c.tls.as_ref());
        let admin_tls =
            crate::config_tls::admin_tls(a.tls.as_ref(), peer_tls, limits.header_read_timeout)?;
        Ok(Config {
            listen,
            tls,
            admin_listen,
            admin_tls,
            shutdown_grace,
            limits,
            access_log: s.access_log.unwrap_or(false),
            log_json,
            host_header,
            ingress,
            max_size,
            tags,
            coalesce_timeout,
            hit_for_miss,
            upstreams,
            routes,
            admin_token_file: a.token_file.clone(),
            purge_allow,
            admin_max_body,
            feed,
            cluster,
            l2,
            forward,
            telemetry,
            sources,
        })
    }

    fn resolve_upstreams(&self) -> Result<Vec<UpstreamSpec>, ConfigError> {
        use crate::upstream_config::{resolve, PoolKeys};
        let mut out = Vec::new();
        if let Some(u) = &self.upstream {
            out.push(resolve(
                "upstream",
                "default",
                u.url.as_deref(),
                u.discovery.as_ref(),
                u.tls.as_ref(),
                [&u.connect_timeout, &u.first_byte_timeout, &u.total_timeout],
                PoolKeys {
                    protocol: u.protocol.as_deref(),
                    keepalive: u.keepalive.as_ref(),
                    ..PoolKeys::default()
                },
            )?);
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = format!("upstreams[{i}]");
            if u.name.is_empty() || out.iter().any(|o: &UpstreamSpec| o.name == u.name) {
                return Err(bad(
                    &format!("{key}.name"),
                    &u.name,
                    "must be non-empty and unique",
                ));
            }
            out.push(resolve(
                &key,
                &u.name,
                u.url.as_deref(),
                u.discovery.as_ref(),
                u.tls.as_ref(),
                [&u.connect_timeout, &u.first_byte_timeout, &u.total_timeout],
                PoolKeys {
                    protocol: u.protocol.as_deref(),
                    balance: u.balance.as_deref(),
                    health: u.health.as_ref(),
                    outlier: u.outlier.as_ref(),
                    retries: u.retries,
                    retry_budget: u.retry_budget,
                    keepalive: u.keepalive.as_ref(),
                },
            )?);
        }
        Ok(out)
    }

    fn resolve_routes(
        &self,
        base: &CachePolicy,
        upstreams: &[UpstreamSpec],
    ) -> Result<Vec<RouteSpec>, ConfigError> {
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let name = r.name.clone().unwrap_or_else(|| key.clone());
            if !upstreams.iter().any(|u| u.name == r.upstream) {
                let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                return Err(bad(
                    &format!("{key}.upstream"),
                    &r.upstream,
                    &format!("no such upstream; defined: {names:?}"),
                ));
            }
            let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
            if !path_prefix.starts_with('/') {
                return Err(bad(
                    &format!("{key}.path_prefix"),
                    &path_prefix,
                    "must start with '/'",
                ));
            }
            if r.cache.max_size.is_some() || r.cache.l2.is_some() {
                return Err(bad(
                    &format!("{key}.cache.max_size"),
                    "...",
                    "the store is shared: set max_size in [cache] only",
                ));
            }
            let policy = crate::config_cache::policy(&format!("{key}.cache"), &r.cache, base)?;
            let cache_methods = crate::route_config::check(&key, &name, r, &policy, &out)?;
            out.push(RouteSpec {
                name,
                host: r.host.clone(),
                path_prefix,
                upstream: r.upstream.clone(),
                policy,
                cache_methods,
            });
        }
        // The [upstream] shortcut is the catch-all route.
        if let Some(default) = upstreams.iter().find(|u| u.name == "default") {
            if self.upstream.is_some()
                && !out.iter().any(|r| r.path_prefix == "/" && r.host.is_none())
            {
                out.push(RouteSpec {
                    name: "default".into(),
                    host: None,
                    path_prefix: "/".into(),
                    upstream: default.name.clone(),
                    policy: base.clone(),
                    cache_methods: vec![http::Method::GET, http::Method::HEAD],
                });
            }
        }
        Ok(out)
    }
}

/// `[admin] feed_replay` (1 to 1,000,000 events) and `feed_keepalive` (100ms to 10m).
fn feed_config(a: &RawAdmin) -> Result<crate::feed::FeedConfig, ConfigError> {
    let d = crate::feed::FeedConfig::default();
    let replay = a.feed_replay.unwrap_or(d.replay);
    if !(1..=1_000_000).contains(&replay) {
        return Err(bad("admin.feed_replay", replay, "1 to 1000000 events"));
    }
    let keepalive = match &a.feed_keepalive {
        Some(v) => parse_duration("admin.feed_keepalive", v)?,
        None => d.keepalive,
    };
    if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&keepalive) {
        return Err(bad(
            "admin.feed_keepalive",
            a.feed_keepalive.as_deref().unwrap_or_default(),
            "a duration from \"100ms\" to \"10m\"",
        ));
    }
    Ok(crate::feed::FeedConfig { replay, keepalive })
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

pub(crate) fn dur(key: &str, v: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    parse_duration(key, v.unwrap_or(default))
}

/// Parses a humantime duration ("30s", "5m", "1h30m").
pub fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.trim())
        .map_err(|_| bad(key, v, "expected a duration like \"30s\", \"5m\" or \"1h\""))
}

fn size(key: &str, v: Option<&str>, default: &str) -> Result<u64, ConfigError> {
    parse_size(key, v.unwrap_or(default))
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
