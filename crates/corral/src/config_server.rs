//! `[server]`: the listeners, their limits, logging, the `Host` sent upstream and the ingress
//! keys (see `config_ingress`). Defaults come from the library types the values end up in
//! (`ServerLimits`, `GatewayConfig`), so each is written once.

use std::net::SocketAddr;
use std::time::Duration;

use corral_http::{GatewayConfig, HostHeader, ServerLimits};
use serde::Deserialize;

use crate::config::{addr, bad, dur, positive, size, ConfigError};
use crate::config_tls::TlsListenerSpec;

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

/// The proxy listener when `server.listen` is unset (the contract's default).
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The admin listener when `server.admin_listen` is unset (the contract's default). Corral's
/// own knowledge, not a library's: no settings type holds the address.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// How long draining waits for connections when `server.shutdown_grace` is unset.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Headers smaller than this could not hold an ordinary request's.
const MIN_HEADER_BYTES: usize = 1024;

/// `[server]` resolved: the `Config` fields it fills.
#[derive(Debug)]
pub(crate) struct ServerTable {
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsListenerSpec>,
    pub admin_listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub limits: ServerLimits,
    pub access_log: bool,
    pub log_json: bool,
    pub host_header: HostHeader,
    pub ingress: corral_http::IngressPolicy,
}

/// Resolves `[server]`.
pub(crate) fn resolve(s: &RawServer) -> Result<ServerTable, ConfigError> {
    let listen = plain_listen(s)?;
    let admin_listen = addr(
        "server.admin_listen",
        s.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    )?;
    let limits = limits(s)?;
    let tls = match &s.tls {
        Some(t) => Some(crate::config_tls::server_tls(
            t,
            limits.header_read_timeout,
        )?),
        None => None,
    };
    distinct_listeners(listen, tls.as_ref(), admin_listen)?;
    let gateway = GatewayConfig::default();
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
    let host_header = match s.host_header.as_deref() {
        None => gateway.host_header,
        Some("preserve") => HostHeader::Preserve,
        Some("upstream") => HostHeader::Upstream,
        Some(h) if http::HeaderValue::from_str(h).is_ok() && !h.is_empty() => {
            HostHeader::Fixed(h.to_string())
        }
        Some(h) => {
            return Err(bad(
                "server.host_header",
                h,
                "allowed: \"preserve\", \"upstream\" or a host name",
            ))
        }
    };
    let shutdown_grace = dur(
        "server.shutdown_grace",
        s.shutdown_grace.as_deref(),
        DEFAULT_SHUTDOWN_GRACE,
    )?;
    // X-Forwarded-Port names the plain listener's port, or the TLS one's without it.
    let port = listen
        .or(tls.as_ref().map(|t| t.listen))
        .map_or(0, |a| a.port());
    let ingress = crate::config_ingress::ingress(s, port)?;
    Ok(ServerTable {
        listen,
        tls,
        admin_listen,
        shutdown_grace,
        limits,
        access_log: s.access_log.unwrap_or(gateway.access_log),
        log_json,
        host_header,
        ingress,
    })
}

/// `[server] listen`: an address, or `"none"` when a TLS listener serves alone.
fn plain_listen(s: &RawServer) -> Result<Option<SocketAddr>, ConfigError> {
    match s.listen.as_deref().unwrap_or(DEFAULT_LISTEN) {
        "none" if s.tls.is_some() => Ok(None),
        "none" => Err(bad(
            "server.listen",
            "none",
            "only with a TLS listener ([server] tls): there must be one listener",
        )),
        l => Ok(Some(addr("server.listen", l)?)),
    }
}

/// The plain, TLS and admin listeners bind addresses of their own: two on one address would
/// fail at start with a bind error that names no key. Checked here, once, for all three.
fn distinct_listeners(
    plain: Option<SocketAddr>,
    tls: Option<&TlsListenerSpec>,
    admin: SocketAddr,
) -> Result<(), ConfigError> {
    if plain == Some(admin) {
        return Err(bad(
            "server.admin_listen",
            admin,
            "must differ from server.listen",
        ));
    }
    if let Some(t) = tls {
        if plain == Some(t.listen) || t.listen == admin {
            return Err(bad(
                "server.tls.listen",
                t.listen,
                "must differ from server.listen and server.admin_listen",
            ));
        }
    }
    Ok(())
}

/// The connection limits, each unset one at `ServerLimits::default()`.
fn limits(s: &RawServer) -> Result<ServerLimits, ConfigError> {
    let d = ServerLimits::default();
    let limits = ServerLimits {
        max_connections: positive(
            "server.max_connections",
            s.max_connections.unwrap_or(d.max_connections),
        )?,
        header_read_timeout: dur(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref(),
            d.header_read_timeout,
        )?,
        max_header_bytes: size(
            "server.max_header_size",
            s.max_header_size.as_deref(),
            d.max_header_bytes as u64,
        )? as usize,
        max_headers: positive("server.max_headers", s.max_headers.unwrap_or(d.max_headers))?,
        h2c: s.h2c.unwrap_or(d.h2c),
        h2_max_concurrent_streams: h2_streams(
            s.h2_max_concurrent_streams,
            d.h2_max_concurrent_streams,
        )?,
        ..d
    };
    if limits.max_header_bytes < MIN_HEADER_BYTES {
        return Err(bad(
            "server.max_header_size",
            limits.max_header_bytes,
            "must be at least 1KiB",
        ));
    }
    Ok(limits)
}

/// `[server] h2_max_concurrent_streams`: 1 to 10,000.
fn h2_streams(v: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    match v {
        Some(n @ 1..=10_000) => Ok(n),
        Some(n) => Err(bad(
            "server.h2_max_concurrent_streams",
            n,
            "allowed: 1 to 10000",
        )),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Overrides, RawConfig};

    fn error(toml_text: &str) -> String {
        let raw: RawConfig = toml::from_str(toml_text).unwrap();
        raw.resolve(&Overrides::default()).unwrap_err().0
    }

    #[test]
    fn listeners_on_one_address_are_refused_naming_the_later_key() {
        let tls = "tls = { cert_file = \"c.pem\", key_file = \"k.pem\"";
        for (server, says) in [
            (
                "admin_listen = \"127.0.0.1:8080\"".to_string(),
                "server.admin_listen = \"127.0.0.1:8080\": must differ from server.listen",
            ),
            (
                format!("{tls}, listen = \"127.0.0.1:8080\" }}"),
                "server.tls.listen = \"127.0.0.1:8080\": must differ from server.listen and server.admin_listen",
            ),
            (
                format!("{tls}, listen = \"127.0.0.1:9090\" }}"),
                "server.tls.listen = \"127.0.0.1:9090\": must differ",
            ),
            (
                "listen = \"none\"".to_string(),
                "server.listen = \"none\": only with a TLS listener",
            ),
        ] {
            let e = error(&format!("[server]\n{server}"));
            assert!(e.contains(says), "{server}: {e}");
        }
    }
}
