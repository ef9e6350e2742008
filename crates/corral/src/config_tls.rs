//! `[server] tls = { ... }` (the TLS listener), an upstream's `tls = { ... }` (HTTPS to it),
//! `[admin] tls` (the admin listener, which peers also call) and `[cluster] tls` (how peers
//! are called).
//!
//! Resolving checks the keys; the files are loaded when `serve` builds the process
//! ([`UpstreamTlsSpec::load`], `ServerTls::new`), so a missing or unreadable file, a key that is
//! not the certificate's, or a CA file with no certificate stops the start (exit 2) with the
//! key and the file named. `check-config` does not read them, as it reads no secret file: it
//! validates a config for another machine (deploy/validate.sh runs it on the manifests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corral_http::tls::metrics::ResultLabel;
use corral_http::tls::{CertPair, ServerTlsSettings, UpstreamTls, UpstreamTlsSettings};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;

use crate::config::{addr, bad, dur, ConfigError};

/// `[server] tls`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub listen: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// More certificates, chosen by the names they hold when the client's SNI asks for one.
    #[serde(default)]
    pub certificates: Vec<RawCertPair>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca_file: Option<PathBuf>,
    pub reload_interval: Option<String>,
    pub handshake_timeout: Option<String>,
    /// Offer h2 by ALPN (default true).
    pub http2: Option<bool>,
    /// https requests get cache entries of their own (default true).
    pub key_scheme: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// An upstream's `tls`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Offer h2 by ALPN (default true: the upstream chooses).
    pub http2: Option<bool>,
    /// How often the CA and client-certificate files are checked for a change.
    pub reload_interval: Option<String>,
}

/// The resolved TLS listener.
#[derive(Debug, Clone)]
pub struct TlsListenerSpec {
    pub listen: SocketAddr,
    pub settings: ServerTlsSettings,
}

/// Resolves `[server] tls`; its files are read when `serve` builds the listener, not here.
pub fn server_tls(
    t: &RawServerTls,
    header_read_timeout: Duration,
) -> Result<TlsListenerSpec, ConfigError> {
    let key = "server.tls";
    let listen = addr(
        &format!("{key}.listen"),
        t.listen.as_deref().unwrap_or("127.0.0.1:8443"),
    )?;
    let (Some(cert_file), Some(key_file)) = (&t.cert_file, &t.key_file) else {
        return Err(bad(
            key,
            "...",
            "a TLS listener needs cert_file and key_file (PEM)",
        ));
    };
    let mut certificates = vec![CertPair {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
    }];
    certificates.extend(t.certificates.iter().map(|c| CertPair {
        cert_file: c.cert_file.clone(),
        key_file: c.key_file.clone(),
    }));
    let (reload_interval, handshake_timeout) = timings(
        key,
        t.reload_interval.as_deref(),
        t.handshake_timeout.as_deref(),
        header_read_timeout,
    )?;
    let settings = ServerTlsSettings {
        certificates,
        client_ca_file: t.client_ca_file.clone(),
        reload_interval,
        http2: t.http2.unwrap_or(true),
        key_scheme: t.key_scheme.unwrap_or(true),
        handshake_timeout,
    };
    Ok(TlsListenerSpec { listen, settings })
}

/// How often certificate files are checked for a change when `reload_interval` is unset.
const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// `reload_interval` (at least 100ms, 10s by default) and `handshake_timeout` of a listener.
fn timings(
    key: &str,
    reload: Option<&str>,
    handshake: Option<&str>,
    header_read_timeout: Duration,
) -> Result<(Duration, Duration), ConfigError> {
    let reload_interval = dur(
        &format!("{key}.reload_interval"),
        reload,
        DEFAULT_RELOAD_INTERVAL,
    )?;
    if reload_interval < Duration::from_millis(100) {
        return Err(bad(
            &format!("{key}.reload_interval"),
            humantime::format_duration(reload_interval),
            "must be at least 100ms",
        ));
    }
    let handshake_timeout = match handshake {
        Some(v) => crate::config::parse_duration(&format!("{key}.handshake_timeout"), v)?,
        None => header_read_timeout,
    };
    Ok((reload_interval, handshake_timeout))
}

/// `[admin] tls`: the admin listener over TLS, optionally requiring client certificates.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS) from every admin client, peers
    /// included.
    pub client_ca_file: Option<PathBuf>,
    pub reload_interval: Option<String>,
    pub handshake_timeout: Option<String>,
}

/// `[cluster] tls`: peers are called over TLS.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeerTls {
    /// The CA peers' certificates are verified against (else the system roots).
    pub ca_file: Option<PathBuf>,
    /// The name verified in every peer's certificate and sent as SNI (else the peer's IP).
    pub server_name: Option<String>,
    /// This replica's certificate: served on the admin listener when `[admin] tls` is not
    /// set, and presented to peers as a client certificate.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How often the files are checked for changes (the peer client's, and the admin
    /// listener's when it serves this certificate).
    pub reload_interval: Option<String>,
}

/// The admin listener's TLS: `[admin] tls`, else the certificate of `[cluster] tls`. Peers
/// call each other's admin listener, so `[cluster] tls` with neither is refused: every
/// delivery would fail.
pub fn admin_tls(
    admin: Option<&RawAdminTls>,
    peers: Option<&RawPeerTls>,
    header_read_timeout: Duration,
) -> Result<Option<ServerTlsSettings>, ConfigError> {
    let (key, cert, pkey, client_ca, reload, handshake) = match (admin, peers) {
        (Some(a), _) => (
            "admin.tls",
            &a.cert_file,
            &a.key_file,
            a.client_ca_file.clone(),
            a.reload_interval.as_deref(),
            a.handshake_timeout.as_deref(),
        ),
        (None, Some(p)) if p.cert_file.is_some() || p.key_file.is_some() => {
            (
                "cluster.tls",
                &p.cert_file,
                &p.key_file,
                None,
                p.reload_interval.as_deref(),
                None,
            )
        }
        (None, Some(_)) => {
            return Err(bad(
                "cluster.tls",
                "...",
                "peers are called over TLS, so the admin listener must serve it: set admin.tls or cluster.tls.cert_file and key_file",
            ))
        }
        (None, None) => return Ok(None),
    };
    let (Some(cert_file), Some(key_file)) = (cert, pkey) else {
        return Err(bad(
            key,
            "...",
            "TLS on the admin listener needs cert_file and key_file (PEM)",
        ));
    };
    let (reload_interval, handshake_timeout) =
        timings(key, reload, handshake, header_read_timeout)?;
    Ok(Some(ServerTlsSettings {
        certificates: vec![CertPair {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        }],
        client_ca_file: client_ca,
        reload_interval,
        // The admin API and the peer protocol are HTTP/1.1 (server-sent events included).
        http2: false,
        key_scheme: true,
        handshake_timeout,
    }))
}

/// `[cluster] tls` resolved: what the peer client verifies and presents.
#[derive(Debug, Clone)]
pub struct PeerTlsSpec {
    pub settings: UpstreamTlsSettings,
    /// How often the CA and certificate files are checked for changes.
    pub reload_interval: Duration,
}

/// Resolves `[cluster] tls` (its files are read at start, by [`PeerTlsSpec::load`], and
/// again whenever they change).
pub fn peer_tls(t: Option<&RawPeerTls>) -> Result<Option<PeerTlsSpec>, ConfigError> {
    let Some(t) = t else { return Ok(None) };
    if t.cert_file.is_some() != t.key_file.is_some() {
        return Err(bad(
            "cluster.tls",
            "...",
            "cert_file and key_file go together",
        ));
    }
    if let Some(name) = &t.server_name {
        if rustls_name(name).is_err() {
            return Err(bad(
                "cluster.tls.server_name",
                name,
                "expected a DNS name or an IP address",
            ));
        }
    }
    let (reload_interval, _) = timings(
        "cluster.tls",
        t.reload_interval.as_deref(),
        None,
        Duration::ZERO,
    )?;
    Ok(Some(PeerTlsSpec {
        reload_interval,
        settings: UpstreamTlsSettings {
            ca_file: t.ca_file.clone(),
            server_name: t.server_name.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            insecure_skip_verify: false,
            http2: false,
        },
    }))
}

impl PeerTlsSpec {
    /// Reads the CA and certificate files into the peer client's TLS, and watches them: a
    /// change that loads is used by new peer connections, one that does not keeps the
    /// previous config, each counted in `reloads` (`corral_peer_tls_reloads_total`).
    pub fn load(
        &self,
        reloads: Family<ResultLabel, Counter>,
    ) -> Result<corral_cluster::PeerTls, String> {
        let s = &self.settings;
        let watched = corral_http::tls::client::reloading_client_config(
            "peer TLS (cluster.tls)",
            s,
            vec![corral_http::tls::ALPN_HTTP1.to_vec()],
            reloads,
        )
        .map_err(|e| format!("cluster.tls: {e}"))?;
        let server_name = match &s.server_name {
            Some(n) => Some(
                corral_http::tls::client::server_name(n)
                    .map_err(|e| format!("cluster.tls.server_name: {e}"))?,
            ),
            None => None,
        };
        // Subscribed first: the reloader lives as long as a peer client holds a receiver.
        let config = watched.subscribe();
        watched.spawn_reloader(self.reload_interval);
        Ok(corral_cluster::PeerTls {
            config,
            server_name,
            classify: corral_http::tls::client::failure_reason,
        })
    }
}

/// An upstream's TLS settings, loaded at start and reloaded when their files change.
#[derive(Debug, Clone)]
pub struct UpstreamTlsSpec {
    /// `upstream.tls` or `upstreams[i].tls`, for errors.
    pub key: String,
    pub settings: UpstreamTlsSettings,
    /// The name verified and sent as SNI when `server_name` is not set.
    pub host: String,
    /// How often the files are checked (`reload_interval`, 10s by default).
    pub reload_interval: Duration,
}

impl UpstreamTlsSpec {
    /// Reads the CA and client-certificate files, and watches them: a change that loads is
    /// used by new connections to the upstream, one that does not keeps the previous config,
    /// each counted in `reloads` (`corral_upstream_tls_reloads_total`).
    pub fn load(&self, reloads: Family<ResultLabel, Counter>) -> Result<UpstreamTls, String> {
        UpstreamTls::load_reloading(&self.settings, &self.host, self.reload_interval, reloads)
            .map_err(|e| format!("{}: {e}", self.key))
    }
}

/// Resolves an upstream's TLS: `https` is whether its URL says so, or a `tls` table with
/// discovery; `host` is the URL's host (the default name to verify and send as SNI).
pub fn upstream_tls(
    key: &str,
    https: bool,
    host: Option<&str>,
    t: Option<&RawUpstreamTls>,
) -> Result<Option<UpstreamTlsSpec>, ConfigError> {
    let key = format!("{key}.tls");
    let t = match (https, t) {
        (false, None) => return Ok(None),
        (false, Some(_)) if host.is_some() => {
            return Err(bad(&key, "...", "tls needs an https:// url"));
        }
        (_, t) => t.cloned().unwrap_or_default(),
    };
    let Some(host) = t.server_name.as_deref().or(host) else {
        return Err(bad(
            &format!("{key}.server_name"),
            "",
            "required with discovery: the name the upstream's certificate holds (sent as SNI)",
        ));
    };
    if t.insecure_skip_verify && t.ca_file.is_some() {
        return Err(bad(
            &format!("{key}.insecure_skip_verify"),
            true,
            "contradicts ca_file: give one",
        ));
    }
    let settings = UpstreamTlsSettings {
        ca_file: t.ca_file.clone(),
        server_name: t.server_name.clone(),
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
        insecure_skip_verify: t.insecure_skip_verify,
        http2: t.http2.unwrap_or(true),
    };
    if settings.cert_file.is_some() != settings.key_file.is_some() {
        return Err(bad(&key, "...", "cert_file and key_file go together"));
    }
    if rustls_name(host).is_err() {
        return Err(bad(
            &format!("{key}.server_name"),
            host,
            "expected a DNS name or an IP address",
        ));
    }
    let (reload_interval, _) = timings(&key, t.reload_interval.as_deref(), None, Duration::ZERO)?;
    Ok(Some(UpstreamTlsSpec {
        key,
        settings,
        host: host.to_string(),
        reload_interval,
    }))
}

fn rustls_name(host: &str) -> Result<(), ()> {
    corral_http::tls::client::server_name(host)
        .map(|_| ())
        .map_err(|_| ())
}

/// The TLS lines of `check-config`'s summary: listener, certificates, upstreams over TLS.
pub fn describe(cfg: &crate::config::Config) -> String {
    let mut out = String::new();
    if let Some(t) = &cfg.tls {
        let s = &t.settings;
        out += &format!(
            "tls listener {}: {} certificate pair(s) (files read at start, re-read every {}), ALPN {}, client certificates {}, https keyed {}\n",
            t.listen,
            s.certificates.len(),
            humantime::format_duration(s.reload_interval),
            if s.http2 { "h2, http/1.1" } else { "http/1.1" },
            if s.client_ca_file.is_some() { "required" } else { "not asked for" },
            if s.key_scheme { "apart from http" } else { "together with http" },
        );
    }
    if let Some(s) = &cfg.admin_tls {
        out += &format!(
            "admin listener {}: TLS ({}), client certificates {}\n",
            cfg.admin_listen,
            s.certificates[0].cert_file.display(),
            if s.client_ca_file.is_some() {
                "required"
            } else {
                "not asked for"
            },
        );
    }
    if let Some(t) = cfg.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
        let s = &t.settings;
        out += &format!(
            "peers: called over TLS, verified against {} as {}\n",
            s.ca_file
                .as_ref()
                .map_or("the system roots".to_string(), |c| c.display().to_string()),
            s.server_name.as_deref().unwrap_or("their IP addresses"),
        );
    }
    for u in &cfg.upstreams {
        if let Some(t) = &u.tls {
            let s = &t.settings;
            let trust = match (&s.ca_file, s.insecure_skip_verify) {
                (_, true) => "NOT VERIFIED (insecure_skip_verify)".to_string(),
                (Some(ca), _) => format!("verified against {}", ca.display()),
                (None, _) => "verified against the system roots".to_string(),
            };
            out += &format!(
                "upstream {:?}: https, name {:?}, {trust}\n",
                u.name,
                s.server_name.as_deref().unwrap_or(&t.host)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::{Overrides, RawConfig};

    fn resolve(text: &str) -> Result<crate::config::Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.resolve(&Overrides::default()).map_err(|e| e.0)
    }

    #[test]
    fn tls_keys_are_checked_with_the_key_named() {
        let tls = r#"tls = { listen = "127.0.0.1:8443", cert_file = "c.pem", key_file = "k.pem" }"#;
        let peers = "[cluster]\nsecret_file = \"s\"\ndiscovery = { kind = \"static\", addresses = [\"127.0.0.2:9090\"] }";
        let cases: &[(&str, Result<(), &str>)] = &[
            (&format!("[server]\n{tls}"), Ok(())),
            (&format!("[server]\nlisten = \"none\"\n{tls}"), Ok(())),
            ("[server]\nlisten = \"none\"", Err("server.listen")),
            ("[server]\ntls = { cert_file = \"c.pem\" }", Err("cert_file and key_file")),
            (&format!("[server]\nlisten = \"127.0.0.1:8443\"\n{tls}"), Err("server.tls.listen")),
            ("[server]\ntls = { cert_file = \"c\", key_file = \"k\", bogus = 1 }", Err("unknown field")),
            ("[server]\nh2_max_concurrent_streams = 0", Err("h2_max_concurrent_streams")),
            ("[upstream]\nurl = \"https://api.example:8443\"", Ok(())),
            ("[upstream]\nurl = \"http://127.0.0.1:1\"\ntls = { ca_file = \"ca.pem\" }", Err("tls needs an https:// url")),
            ("[upstream]\ndiscovery = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }\ntls = {}", Err("server_name")),
            ("[upstream]\nurl = \"https://127.0.0.1:1\"\ntls = { cert_file = \"c.pem\" }", Err("go together")),
            ("[upstream]\nurl = \"https://a.example\"\ntls = { insecure_skip_verify = true, ca_file = \"x\" }", Err("contradicts ca_file")),
            ("[admin]\ntls = { cert_file = \"c.pem\", key_file = \"k.pem\", client_ca_file = \"ca.pem\" }", Ok(())),
            ("[admin]\ntls = { cert_file = \"c.pem\" }", Err("admin.tls")),
            ("[admin]\ntls = { cert_file = \"c\", key_file = \"k\", reload_interval = \"1ms\" }", Err("admin.tls.reload_interval")),
            (&format!("{peers}\ntls = {{ ca_file = \"ca.pem\", server_name = \"p.test\", cert_file = \"c\", key_file = \"k\" }}"), Ok(())),
            (&format!("[admin]\ntls = {{ cert_file = \"c\", key_file = \"k\" }}\n{peers}\ntls = {{ ca_file = \"ca.pem\" }}"), Ok(())),
            (&format!("{peers}\ntls = {{ ca_file = \"ca.pem\" }}"), Err("the admin listener must serve it")),
            (&format!("{peers}\ntls = {{ cert_file = \"c\" }}"), Err("go together")),
            (&format!("{peers}\ntls = {{ cert_file = \"c\", key_file = \"k\", server_name = \"a b\" }}"), Err("cluster.tls.server_name")),
            (&format!("{peers}\ntls = {{ cert_file = \"c\", key_file = \"k\", reload_interval = \"500ms\" }}"), Ok(())),
            (&format!("{peers}\ntls = {{ cert_file = \"c\", key_file = \"k\", reload_interval = \"1ms\" }}"), Err("cluster.tls.reload_interval")),
            (&format!("{peers}\ntls = {{ cert_file = \"c\", key_file = \"k\", reload_interval = \"soon\" }}"), Err("cluster.tls.reload_interval")),
        ];
        for (text, want) in cases {
            match (resolve(text), want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(part)) => assert!(e.contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: got {:?}, want {want:?}", got.map(|_| ())),
            }
        }
    }

    #[test]
    fn an_https_url_means_tls_to_port_443_verifying_its_host() {
        let c = resolve("[upstream]\nurl = \"https://api.example\"").unwrap();
        let u = &c.upstreams[0];
        let tls = u.tls.as_ref().expect("https is TLS");
        assert_eq!(tls.host, "api.example");
        assert!(!tls.settings.insecure_skip_verify && tls.settings.http2);
        assert!(matches!(
            &u.discovery,
            corral_discovery::Spec::Dns { port: 443, .. }
        ));
        let plain = resolve("[upstream]\nurl = \"http://127.0.0.1:3000\"").unwrap();
        assert!(plain.upstreams[0].tls.is_none());
    }

    #[test]
    fn the_peer_tls_reload_interval_also_paces_the_admin_listener_serving_its_certificate() {
        let peers = "[cluster]\nsecret_file = \"s\"\ndiscovery = { kind = \"static\", addresses = [\"127.0.0.2:9090\"] }";
        let c = resolve(&format!(
            "{peers}\ntls = {{ cert_file = \"c\", key_file = \"k\", reload_interval = \"2s\" }}"
        ))
        .unwrap();
        let every = std::time::Duration::from_secs(2);
        let spec = c.cluster.as_ref().and_then(|c| c.tls.as_ref()).unwrap();
        assert_eq!(spec.reload_interval, every);
        assert_eq!(c.admin_tls.as_ref().unwrap().reload_interval, every);
        let default = resolve(&format!(
            "{peers}\ntls = {{ cert_file = \"c\", key_file = \"k\" }}"
        ))
        .unwrap();
        let spec = default
            .cluster
            .as_ref()
            .and_then(|c| c.tls.as_ref())
            .unwrap();
        assert_eq!(spec.reload_interval, std::time::Duration::from_secs(10));
    }
}
