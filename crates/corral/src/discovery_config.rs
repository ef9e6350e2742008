//! The `discovery = { kind = ..., ... }` table, shared by `[cluster]` and `[[upstreams]]`:
//! one parser so peers and upstreams accept exactly the same specs.

use std::path::PathBuf;

use corral_discovery::Spec;

use crate::config::{addr, bad, parse_duration, ConfigError};

const KINDS: &str = "allowed: \"static\", \"dns\", \"kubernetes\", \"consul\", \"file\"";

/// Parses the table at `key` (e.g. `cluster.discovery`, `upstreams[0].discovery`).
pub fn parse(key: &str, d: &toml::Table) -> Result<Spec, ConfigError> {
    let k = |name: &str| format!("{key}.{name}");
    let kind = d.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let allowed: &[&str] = match kind {
        "static" => &["addresses"],
        "dns" => &["name", "port", "srv", "nameserver", "refresh"],
        "kubernetes" => &["namespace", "service", "port_name", "port", "api_server"],
        "consul" => &["address", "service"],
        "file" => &["path"],
        other => return Err(bad(&k("kind"), other, KINDS)),
    };
    if let Some(extra) = d
        .keys()
        .find(|name| *name != "kind" && !allowed.contains(&name.as_str()))
    {
        return Err(bad(
            &k(extra),
            "...",
            &format!("not a key of {kind} discovery; allowed: {allowed:?}"),
        ));
    }
    let text = |name: &str| d.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let required = |name: &str, what: &str| -> Result<String, ConfigError> {
        text(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(&k(name), "", what))
    };
    let port = |name: &str| -> Result<Option<u16>, ConfigError> {
        match d.get(name) {
            None => Ok(None),
            Some(v) => match v.as_integer() {
                Some(p) if (1..=65535).contains(&p) => Ok(Some(p as u16)),
                _ => Err(bad(&k(name), v, "expected a port number (1-65535)")),
            },
        }
    };
    Ok(match kind {
        "static" => {
            let list = d
                .get("addresses")
                .and_then(|a| a.as_array())
                .ok_or_else(|| {
                    bad(
                        &k("addresses"),
                        "",
                        "expected a list of \"ip:port\" strings or { address = \"ip:port\", weight = N } tables",
                    )
                })?;
            let mut out = Vec::new();
            for (i, a) in list.iter().enumerate() {
                let at = format!("{key}.addresses[{i}]");
                let (s, weight) = match a {
                    toml::Value::String(s) => (s.as_str(), 1),
                    toml::Value::Table(t) => {
                        let w = match t.get("weight") {
                            None => 1,
                            Some(w) => w
                                .as_integer()
                                .filter(|w| (1..=10_000).contains(w))
                                .ok_or_else(|| {
                                    bad(&format!("{at}.weight"), w, "expected 1 to 10000")
                                })? as u32,
                        };
                        let s = t.get("address").and_then(|v| v.as_str()).unwrap_or("");
                        (s, w)
                    }
                    other => {
                        return Err(bad(
                            &at,
                            other,
                            "expected \"ip:port\" or { address = \"ip:port\", weight = N }",
                        ))
                    }
                };
                out.push((addr(&at, s)?, weight));
            }
            Spec::Static(out)
        }
        "dns" => {
            let name = required("name", "expected the name to resolve")?;
            let srv = match d.get("srv") {
                None => false,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(&k("srv"), v, "expected true or false"))?,
            };
            let port = match (port("port")?, srv) {
                (Some(p), _) => p,
                (None, true) => 0, // SRV records carry the port
                (None, false) => {
                    return Err(bad(
                        &k("port"),
                        "",
                        "expected a port number (1-65535); A/AAAA records have none (or set srv = true)",
                    ))
                }
            };
            let nameserver = match text("nameserver") {
                Some(ns) => Some(addr(&k("nameserver"), &ns)?),
                None => None,
            };
            let refresh = match text("refresh") {
                Some(r) => parse_duration(&k("refresh"), &r)?,
                None => corral_discovery::DEFAULT_DNS_REFRESH,
            };
            Spec::Dns {
                name,
                port,
                srv,
                nameserver,
                refresh,
            }
        }
        "kubernetes" => {
            let namespace = required("namespace", "expected the namespace of the Service")?;
            let service = required("service", "expected the name of the Service")?;
            if let Some(api) = text("api_server") {
                if !(api.starts_with("http://") || api.starts_with("https://")) {
                    return Err(bad(
                        &k("api_server"),
                        api,
                        "expected an http:// or https:// URL",
                    ));
                }
            }
            Spec::Kubernetes {
                namespace,
                service,
                port_name: text("port_name"),
                port: port("port")?,
                api_server: text("api_server"),
            }
        }
        "consul" => {
            let address = text("address")
                .filter(|a| a.starts_with("http://"))
                .ok_or_else(|| bad(&k("address"), "", "expected the Consul agent's http:// URL"))?;
            Spec::Consul {
                address: address.trim_end_matches('/').to_string(),
                service: required("service", "expected the Consul service name")?,
            }
        }
        _ => Spec::File {
            path: PathBuf::from(required(
                "path",
                "expected the path of a JSON or TOML list of addresses",
            )?),
        },
    })
}
