//! `[upstream]` and `[[upstreams]]`: where an upstream's endpoints come from and how its pool
//! behaves (balance, health checks, outlier ejection, retries), resolved with errors that name
//! the key, the value and what is allowed.

use std::time::Duration;

use corral_discovery::Spec;
use corral_http::pool::{Balance, HealthCheck, Keepalive, Outlier, Protocol, RetryPolicy};
use corral_http::UpstreamConfig;

use serde::Deserialize;

use crate::config::{bad, dur, parse_duration, ConfigError};

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

/// A resolved upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub discovery: Spec,
    pub config: UpstreamConfig,
    /// `https`: loaded into `config.tls` at start.
    pub tls: Option<crate::config_tls::UpstreamTlsSpec>,
}

/// The pool keys of an upstream table (all but `protocol` absent in the `[upstream]`
/// shortcut).
#[derive(Default)]
pub struct PoolKeys<'a> {
    pub protocol: Option<&'a str>,
    pub balance: Option<&'a str>,
    pub health: Option<&'a toml::Table>,
    pub outlier: Option<&'a toml::Table>,
    pub retries: Option<u32>,
    pub retry_budget: Option<f64>,
    pub keepalive: Option<&'a toml::Table>,
}

/// Resolves `[upstream]` (the shortcut, named `default`) and then every `[[upstreams]]`, whose
/// names must be unique.
pub(crate) fn resolve_all(
    shortcut: Option<&RawUpstreamShortcut>,
    upstreams: &[RawUpstream],
) -> Result<Vec<UpstreamSpec>, ConfigError> {
    let mut out = Vec::new();
    if let Some(u) = shortcut {
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
    for (i, u) in upstreams.iter().enumerate() {
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

/// Resolves one upstream at `key` (`upstream` or `upstreams[i]`).
pub fn resolve(
    key: &str,
    name: &str,
    url: Option<&str>,
    discovery: Option<&toml::Table>,
    tls: Option<&crate::config_tls::RawUpstreamTls>,
    timeouts: [&Option<String>; 3],
    pool: PoolKeys<'_>,
) -> Result<UpstreamSpec, ConfigError> {
    let mut config = UpstreamConfig::new(name);
    let tls_spec;
    let discovery =
        match (url, discovery) {
            (Some(u), None) => {
                let (spec, host, https) = from_url(&format!("{key}.url"), u)?;
                let name = host.host().trim_start_matches('[').trim_end_matches(']');
                tls_spec = crate::config_tls::upstream_tls(key, https, Some(name), tls)?;
                config.host = Some(host);
                spec
            }
            (None, Some(d)) => {
                let spec = crate::discovery_config::parse(&format!("{key}.discovery"), d)?;
                tls_spec = crate::config_tls::upstream_tls(key, tls.is_some(), None, tls)?;
                if matches!(&spec, Spec::Static(list) if list.is_empty()) {
                    return Err(bad(
                        &format!("{key}.discovery.addresses"),
                        "[]",
                        "needs at least one address",
                    ));
                }
                spec
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    key,
                    "url and discovery",
                    "give one of url or discovery, not both",
                ))
            }
            (None, None) => return Err(bad(
                &format!("{key}.url"),
                "",
                "an upstream needs url = \"http://host:port\" (or https://) or discovery = {...}",
            )),
        };
    let [c, f, t] = timeouts;
    let d = |k: &str, v: &Option<String>, default: Duration| {
        dur(&format!("{key}.{k}"), v.as_deref(), default)
    };
    let defaults = corral_http::Timeouts::default();
    config.timeouts = corral_http::Timeouts {
        connect: d("connect_timeout", c, defaults.connect)?,
        first_byte: d("first_byte_timeout", f, defaults.first_byte)?,
        total: d("total_timeout", t, defaults.total)?,
    };
    if let Some(b) = pool.balance {
        config.balance = Balance::parse(b).ok_or_else(|| {
            bad(
                &format!("{key}.balance"),
                b,
                "allowed: \"round_robin\", \"least_request\", \"consistent_hash\"",
            )
        })?;
    }
    if let Some(h) = pool.health {
        config.health = Some(health(&format!("{key}.health"), h)?);
    }
    if let Some(o) = pool.outlier {
        config.outlier = outlier(&format!("{key}.outlier"), o)?;
    }
    let mut retry = RetryPolicy::default();
    if let Some(r) = pool.retries {
        if r > 10 {
            return Err(bad(&format!("{key}.retries"), r, "allowed: 0 to 10"));
        }
        retry.retries = r;
    }
    if let Some(b) = pool.retry_budget {
        if !(0.0..=1.0).contains(&b) {
            return Err(bad(
                &format!("{key}.retry_budget"),
                b,
                "a fraction of live requests, 0.0 to 1.0",
            ));
        }
        retry.budget = b;
    }
    config.retry = retry;
    config.protocol = protocol(key, pool.protocol, tls.and_then(|t| t.http2))?;
    if let Some(k) = pool.keepalive {
        config.keepalive = keepalive(&format!("{key}.keepalive"), k)?;
    }
    Ok(UpstreamSpec {
        name: name.to_string(),
        discovery,
        config,
        tls: tls_spec,
    })
}

/// `protocol`: `"http1"`, `"h2"` or `"auto"` (the default). The older `tls.http2 = false`
/// means `"http1"`, and contradicting it is an error.
fn protocol(
    key: &str,
    value: Option<&str>,
    tls_http2: Option<bool>,
) -> Result<Protocol, ConfigError> {
    let k = format!("{key}.protocol");
    let chosen = match value {
        None if tls_http2 == Some(false) => return Ok(Protocol::Http1),
        None => return Ok(Protocol::Auto),
        Some(v) => {
            Protocol::parse(v).ok_or_else(|| bad(&k, v, "allowed: \"http1\", \"h2\", \"auto\""))?
        }
    };
    if tls_http2 == Some(false) && chosen != Protocol::Http1 {
        return Err(bad(
            &k,
            chosen.name(),
            "contradicts tls.http2 = false (which means \"http1\"): give one",
        ));
    }
    Ok(chosen)
}

/// `http://ip:port` is a static endpoint; `http://name:port` is resolved through DNS (system
/// resolver, every 5 s or the records' TTL). `https://` alike, and says TLS.
fn from_url(key: &str, u: &str) -> Result<(Spec, http::uri::Authority, bool), ConfigError> {
    let err = || {
        bad(
            key,
            u,
            "expected an http:// or https:// URL with a host, like \"http://127.0.0.1:3000\"",
        )
    };
    let uri: http::Uri = u.parse().map_err(|_| err())?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(err()),
    };
    let auth = uri.authority().cloned().ok_or_else(err)?;
    let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    let spec = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Spec::Static(vec![(std::net::SocketAddr::new(ip, port), 1)]),
        Err(_) => Spec::Dns {
            name: host.to_string(),
            port,
            srv: false,
            nameserver: None,
            refresh: corral_discovery::DEFAULT_DNS_REFRESH,
        },
    };
    Ok((spec, auth, https))
}

fn check_keys(key: &str, t: &toml::Table, allowed: &[&str]) -> Result<(), ConfigError> {
    match t.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(
            &format!("{key}.{k}"),
            "...",
            &format!("unknown key; allowed: {allowed:?}"),
        )),
        None => Ok(()),
    }
}

fn duration(
    key: &str,
    t: &toml::Table,
    name: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let k = format!("{key}.{name}");
    match t.get(name) {
        None => Ok(default),
        Some(toml::Value::String(s)) => {
            let d = parse_duration(&k, s)?;
            if d.is_zero() {
                return Err(bad(&k, s, "must be more than 0s"));
            }
            Ok(d)
        }
        Some(v) => Err(bad(&k, v, "expected a duration like \"5s\"")),
    }
}

fn count(
    key: &str,
    t: &toml::Table,
    name: &str,
    default: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let k = format!("{key}.{name}");
    match t.get(name) {
        None => Ok(default),
        Some(v) => v
            .as_integer()
            .filter(|n| (1..=i64::from(max)).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| bad(&k, v, &format!("expected a whole number from 1 to {max}"))),
    }
}

/// `keepalive = { idle_timeout = "60s", max_idle_per_endpoint = 256, max_requests = 1000 }`.
fn keepalive(key: &str, t: &toml::Table) -> Result<Keepalive, ConfigError> {
    check_keys(
        key,
        t,
        &["idle_timeout", "max_idle_per_endpoint", "max_requests"],
    )?;
    let def = Keepalive::default();
    let idle = match t.get("max_idle_per_endpoint") {
        None => def.max_idle_per_endpoint,
        // 0 is allowed: no connection is reused, each request opens its own.
        Some(v) => v
            .as_integer()
            .filter(|n| (0..=MAX_IDLE).contains(n))
            .map(|n| n as usize)
            .ok_or_else(|| {
                bad(
                    &format!("{key}.max_idle_per_endpoint"),
                    v,
                    &format!("expected a whole number from 0 to {MAX_IDLE}"),
                )
            })?,
    };
    let max_requests = match t.get("max_requests") {
        None => def.max_requests,
        // 0 is allowed: no limit, a connection lasts until the origin or idle_timeout ends it.
        Some(v) => v
            .as_integer()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                bad(
                    &format!("{key}.max_requests"),
                    v,
                    &format!("expected a whole number from 0 to {}", u32::MAX),
                )
            })?,
    };
    Ok(Keepalive {
        idle_timeout: duration(key, t, "idle_timeout", def.idle_timeout)?,
        max_idle_per_endpoint: idle,
        max_requests,
    })
}

/// Most idle connections per endpoint: each holds a socket and its buffers.
const MAX_IDLE: i64 = 100_000;

fn health(key: &str, t: &toml::Table) -> Result<HealthCheck, ConfigError> {
    check_keys(
        key,
        t,
        &[
            "path",
            "interval",
            "unhealthy_interval",
            "timeout",
            "healthy_after",
            "unhealthy_after",
            "statuses",
        ],
    )?;
    let def = HealthCheck::default();
    let path = match t.get("path") {
        None => def.path,
        Some(toml::Value::String(p))
            if p.starts_with('/') && http::uri::PathAndQuery::try_from(p.as_str()).is_ok() =>
        {
            p.clone()
        }
        Some(v) => {
            return Err(bad(
                &format!("{key}.path"),
                v,
                "expected a path starting with '/'",
            ))
        }
    };
    let interval = duration(key, t, "interval", def.interval)?;
    let statuses = match t.get("statuses") {
        None => Vec::new(),
        Some(toml::Value::Array(list)) => list
            .iter()
            .map(|s| {
                s.as_integer()
                    .filter(|s| (100..600).contains(s))
                    .map(|s| s as u16)
                    .ok_or_else(|| {
                        bad(
                            &format!("{key}.statuses"),
                            s,
                            "expected HTTP statuses (100-599)",
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(bad(
                &format!("{key}.statuses"),
                v,
                "expected a list of HTTP statuses",
            ))
        }
    };
    let h = HealthCheck {
        path,
        interval,
        unhealthy_interval: duration(
            key,
            t,
            "unhealthy_interval",
            def.unhealthy_interval.min(interval),
        )?,
        timeout: duration(key, t, "timeout", def.timeout.min(interval))?,
        healthy_after: count(key, t, "healthy_after", def.healthy_after, 100)?,
        unhealthy_after: count(key, t, "unhealthy_after", def.unhealthy_after, 100)?,
        statuses,
    };
    if h.timeout > h.interval {
        return Err(bad(
            &format!("{key}.timeout"),
            humantime::format_duration(h.timeout),
            "must not exceed the interval",
        ));
    }
    Ok(h)
}

fn outlier(key: &str, t: &toml::Table) -> Result<Outlier, ConfigError> {
    check_keys(
        key,
        t,
        &[
            "consecutive_failures",
            "failure_rate",
            "min_requests",
            "window",
            "ejection_time",
            "max_ejection_time",
            "max_ejected_percent",
        ],
    )?;
    let def = Outlier::default();
    let consecutive_failures = match t.get("consecutive_failures") {
        Some(v) if v.as_integer() == Some(0) => 0,
        _ => count(
            key,
            t,
            "consecutive_failures",
            def.consecutive_failures,
            1000,
        )?,
    };
    let failure_rate = match t.get("failure_rate") {
        None => def.failure_rate,
        Some(v) => v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .filter(|f| (0.0..=1.0).contains(f))
            .ok_or_else(|| {
                bad(
                    &format!("{key}.failure_rate"),
                    v,
                    "a fraction from 0.0 (off) to 1.0",
                )
            })?,
    };
    let o = Outlier {
        consecutive_failures,
        failure_rate,
        min_requests: count(key, t, "min_requests", def.min_requests, 1_000_000)?,
        window: duration(key, t, "window", def.window)?,
        ejection_time: duration(key, t, "ejection_time", def.ejection_time)?,
        max_ejection_time: duration(key, t, "max_ejection_time", def.max_ejection_time)?,
        max_ejected_percent: count(key, t, "max_ejected_percent", def.max_ejected_percent, 100)?,
    };
    if o.max_ejection_time < o.ejection_time {
        return Err(bad(
            &format!("{key}.max_ejection_time"),
            humantime::format_duration(o.max_ejection_time),
            "must be at least ejection_time",
        ));
    }
    Ok(o)
}
