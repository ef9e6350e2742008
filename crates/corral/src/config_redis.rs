//! `[cache.l2]` (the Redis L2 tier) and `cluster.bus = { kind = "redis", … }` (the Redis
//! Streams bus): parsing and validation. Every error names the key, the value and what is
//! allowed. The Redis password never comes from the command line: `password_file`, else the
//! `CORRAL_REDIS_PASSWORD` environment variable (or inside the URL, discouraged: it is
//! redacted from every log line).

use std::path::PathBuf;
use std::time::Duration;

use corral_redis::{BreakerConfig, L2Config, LeaseConfig, RedisConfig, Target};

use crate::config::{bad, dur, size, ConfigError};

/// The resolved `[cache.l2]`.
#[derive(Debug, Clone)]
pub struct L2Spec {
    pub redis: RedisConfig,
    pub l2: L2Config,
    /// The cluster-wide fill lease (on by default).
    pub lease: Option<LeaseConfig>,
    /// L2 re-fills per second while Redis recovers, and for how long.
    pub refill_rate: u32,
    pub recovery: Duration,
    pub refill_jitter: Duration,
}

/// The resolved `cluster.bus = { kind = "redis", … }`.
#[derive(Debug, Clone)]
pub struct BusSpec {
    pub redis: RedisConfig,
    pub stream: String,
    pub maxlen: u64,
    pub block: Duration,
    pub replay_window: Duration,
}

struct Table<'a> {
    prefix: &'a str,
    t: &'a toml::Table,
}

impl Table<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.prefix)
    }
    fn str(&self, k: &str) -> Result<Option<String>, ConfigError> {
        match self.t.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(bad(&self.key(k), v, "expected a string")),
        }
    }
    fn dur(&self, k: &str, default: Duration) -> Result<Duration, ConfigError> {
        dur(&self.key(k), self.str(k)?.as_deref(), default)
    }
    fn size(&self, k: &str, default: u64) -> Result<u64, ConfigError> {
        size(&self.key(k), self.str(k)?.as_deref(), default)
    }
    fn int(&self, k: &str, default: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
        match self.t.get(k) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) if (min..=max).contains(i) => Ok(*i),
            Some(v) => Err(bad(
                &self.key(k),
                v,
                &format!("expected an integer from {min} to {max}"),
            )),
        }
    }
    fn float(&self, k: &str, default: f64, min: f64, max: f64) -> Result<f64, ConfigError> {
        match self.t.get(k) {
            None => Ok(default),
            Some(toml::Value::Float(f)) if (min..=max).contains(f) => Ok(*f),
            Some(toml::Value::Integer(i)) if (min..=max).contains(&(*i as f64)) => Ok(*i as f64),
            Some(v) => Err(bad(
                &self.key(k),
                v,
                &format!("expected a number from {min} to {max}"),
            )),
        }
    }
    fn bool(&self, k: &str, default: bool) -> Result<bool, ConfigError> {
        match self.t.get(k) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(v) => Err(bad(&self.key(k), v, "expected true or false")),
        }
    }
    fn only(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        for k in self.t.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(
                    &self.key(k),
                    "",
                    &format!("unknown key; allowed: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

fn check_url(key: &str, u: &str) -> Result<(), ConfigError> {
    let ok = (u.starts_with("redis://") || u.starts_with("rediss://"))
        && corral_redis::redis::IntoConnectionInfo::into_connection_info(u).is_ok();
    if ok {
        Ok(())
    } else {
        Err(bad(
            key,
            corral_redis::client::redact(u),
            "expected a Redis URL: redis://host:port[/db] or rediss://host:port (TLS)",
        ))
    }
}

const CONN_KEYS: [&str; 9] = [
    "tls_ca_file",
    "kind",
    "url",
    "nodes",
    "username",
    "password_file",
    "timeout",
    "connect_timeout",
    "connections",
];

/// Connection keys shared by `[cache.l2]` and the Redis bus.
fn connection(t: &Table<'_>, allow_nodes: bool) -> Result<RedisConfig, ConfigError> {
    match t.str("kind")?.as_deref() {
        Some("redis") => {}
        Some(other) => return Err(bad(&t.key("kind"), other, "allowed: \"redis\"")),
        None => return Err(bad(&t.key("kind"), "", "required: kind = \"redis\"")),
    }
    let url = t.str("url")?;
    let nodes = match t.t.get("nodes") {
        None => None,
        Some(toml::Value::Array(a)) if allow_nodes && !a.is_empty() => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                let key = format!("{}[{i}]", t.key("nodes"));
                let toml::Value::String(s) = v else {
                    return Err(bad(&key, v, "expected a Redis URL string"));
                };
                check_url(&key, s)?;
                out.push(s.clone());
            }
            Some(out)
        }
        Some(v) if allow_nodes => {
            return Err(bad(
                &t.key("nodes"),
                v,
                "expected a non-empty list of Redis Cluster node URLs",
            ))
        }
        Some(_) => {
            return Err(bad(
                &t.key("nodes"),
                "[...]",
                "the bus takes one url (any node of a Redis Cluster is not enough: give the node holding the stream, or a standalone Redis)",
            ))
        }
    };
    let target = match (url, nodes) {
        (Some(_), Some(_)) => {
            return Err(bad(&t.key("url"), "", "give url or nodes, not both"));
        }
        (Some(u), None) => {
            check_url(&t.key("url"), &u)?;
            Target::Url(u)
        }
        (None, Some(n)) => Target::Nodes(n),
        (None, None) => {
            return Err(bad(
                &t.key("url"),
                "",
                "required: url = \"redis://host:port\" (or nodes = [...] for Redis Cluster)",
            ))
        }
    };
    let password = match t.str("password_file")? {
        Some(p) => {
            let path = PathBuf::from(&p);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError(format!(
                    "{} = {p:?}: cannot read it: {e}",
                    t.key("password_file")
                ))
            })?;
            let pw = text.trim().to_string();
            if pw.is_empty() {
                return Err(bad(&t.key("password_file"), p, "the file is empty"));
            }
            Some(pw)
        }
        None => std::env::var("CORRAL_REDIS_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
    };
    let timeout = t.dur("timeout", Duration::from_millis(20))?;
    if timeout.is_zero() || timeout > Duration::from_secs(5) {
        return Err(bad(
            &t.key("timeout"),
            t.str("timeout")?.unwrap_or_default(),
            "expected a duration above 0 and at most 5s (every Redis call's bound)",
        ));
    }
    let tls_ca = match t.str("tls_ca_file")? {
        Some(p) => {
            let pem = std::fs::read(&p).map_err(|e| {
                ConfigError(format!(
                    "{} = {p:?}: cannot read it: {e}",
                    t.key("tls_ca_file")
                ))
            })?;
            if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(bad(&t.key("tls_ca_file"), p, "expected PEM certificates"));
            }
            Some(pem)
        }
        None => None,
    };
    Ok(RedisConfig {
        tls_ca,
        target,
        username: t.str("username")?,
        password,
        timeout,
        connect_timeout: t.dur("connect_timeout", Duration::from_secs(1))?,
        connections: t.int("connections", 2, 1, 64)? as usize,
        breaker: BreakerConfig::default(),
    })
}

/// Parses `[cache.l2]`.
pub fn l2(prefix: &str, t: &toml::Table) -> Result<L2Spec, ConfigError> {
    let t = Table { prefix, t };
    let mut allowed = CONN_KEYS.to_vec();
    allowed.extend([
        "prefix",
        "max_object_size",
        "max_variants",
        "max_ttl",
        "lease",
        "lease_ttl",
        "lease_wait",
        "breaker_error_rate",
        "breaker_latency_p99",
        "breaker_window",
        "breaker_min_calls",
        "breaker_open_for",
        "breaker_consecutive",
        "refill_rate",
        "recovery",
        "refill_jitter",
    ]);
    t.only(&allowed)?;
    let mut redis = connection(&t, true)?;
    // Unset keys take the library types' defaults (`BreakerConfig`, `LeaseConfig`, `L2Config`).
    let b = BreakerConfig::default();
    redis.breaker = BreakerConfig {
        window: t
            .dur("breaker_window", b.window)?
            .max(Duration::from_secs(1)),
        min_calls: t.int("breaker_min_calls", b.min_calls.into(), 1, 1_000_000)? as u32,
        error_rate: t.float("breaker_error_rate", b.error_rate, 0.001, 1.0)?,
        latency_p99: t.dur("breaker_latency_p99", b.latency_p99)?,
        open_for: t.dur("breaker_open_for", b.open_for)?,
        consecutive: t.int("breaker_consecutive", b.consecutive.into(), 1, 1_000_000)? as u32,
    };
    let d = L2Config::default();
    let prefix_s = t.str("prefix")?.unwrap_or(d.prefix);
    if prefix_s.is_empty() || prefix_s.contains(['{', '}', ' ']) {
        return Err(bad(
            &t.key("prefix"),
            prefix_s,
            "expected a non-empty key prefix without braces or spaces",
        ));
    }
    let lease = if t.bool("lease", true)? {
        let l = LeaseConfig::default();
        Some(LeaseConfig {
            ttl: t.dur("lease_ttl", l.ttl)?,
            wait: t.dur("lease_wait", l.wait)?,
        })
    } else {
        None
    };
    Ok(L2Spec {
        redis,
        l2: L2Config {
            prefix: prefix_s,
            max_object_size: t.size("max_object_size", d.max_object_size as u64)? as usize,
            max_ttl: t.dur("max_ttl", d.max_ttl)?,
            max_variants: t.int("max_variants", d.max_variants as i64, 1, 1024)? as usize,
        },
        lease,
        refill_rate: t.int("refill_rate", 500, 1, 10_000_000)? as u32,
        recovery: t.dur("recovery", Duration::from_secs(30))?,
        refill_jitter: t.dur("refill_jitter", Duration::from_millis(200))?,
    })
}

/// Parses `cluster.bus = { kind = "redis", … }`.
pub fn bus(prefix: &str, t: &toml::Table) -> Result<BusSpec, ConfigError> {
    let t = Table { prefix, t };
    let mut allowed = CONN_KEYS.to_vec();
    allowed.extend(["stream", "maxlen", "block", "replay_window"]);
    t.only(&allowed)?;
    let mut redis = connection(&t, true)?;
    redis.timeout = redis.timeout.max(Duration::from_millis(500));
    let stream = t.str("stream")?.unwrap_or_else(|| "corral:events".into());
    if stream.is_empty() {
        return Err(bad(&t.key("stream"), "", "expected a stream key name"));
    }
    Ok(BusSpec {
        redis,
        stream,
        maxlen: t.int("maxlen", 100_000, 100, i64::MAX)? as u64,
        block: t
            .dur("block", Duration::from_secs(1))?
            .max(Duration::from_millis(10)),
        replay_window: t.dur("replay_window", Duration::from_secs(24 * 3600))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn l2_defaults_and_cluster_nodes() {
        let s = l2(
            "cache.l2",
            &table("kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\""),
        )
        .unwrap();
        assert_eq!(s.l2.prefix, "corral");
        assert!(s.lease.is_some());
        let s = l2(
            "cache.l2",
            &table("kind = \"redis\"\nnodes = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]"),
        )
        .unwrap();
        assert!(matches!(s.redis.target, Target::Nodes(ref n) if n.len() == 2));
    }

    #[test]
    fn bad_input_names_the_key() {
        let e = |s: &str| l2("cache.l2", &table(s)).unwrap_err().0;
        assert!(e("url = \"redis://x:1\"").contains("cache.l2.kind"));
        assert!(e("kind = \"memcached\"\nurl = \"redis://x:1\"").contains("cache.l2.kind"));
        assert!(e("kind = \"redis\"").contains("cache.l2.url"));
        assert!(e("kind = \"redis\"\nurl = \"http://x\"").contains("cache.l2.url"));
        assert!(
            e("kind = \"redis\"\nurl = \"redis://x:1\"\ntimeout = \"soon\"")
                .contains("cache.l2.timeout")
        );
        assert!(
            e("kind = \"redis\"\nurl = \"redis://x:1\"\ncolour = 1").contains("cache.l2.colour")
        );
        assert!(
            e("kind = \"redis\"\nurl = \"redis://x:1\"\npassword_file = \"/nonexistent/pw\"")
                .contains("password_file")
        );
        // The bus runs on a Redis Cluster too (the stream is one key, in one slot).
        let b = bus(
            "cluster.bus",
            &table("kind = \"redis\"\nnodes = [\"redis://x:1\", \"redis://y:2\"]"),
        )
        .unwrap();
        assert!(
            matches!(b.redis.target, corral_redis::client::Target::Nodes(ref n) if n.len() == 2)
        );
    }

    #[test]
    fn passwords_are_redacted() {
        let e = l2(
            "cache.l2",
            &table("kind = \"redis\"\nurl = \"ftp://u:hunter2@x\""),
        )
        .unwrap_err()
        .0;
        assert!(!e.contains("hunter2"), "{e}");
        let s = l2(
            "cache.l2",
            &table("kind = \"redis\"\nurl = \"redis://:hunter2@x:1\""),
        )
        .unwrap();
        assert!(!format!("{:?}", s.redis).contains("hunter2"));
    }
}
