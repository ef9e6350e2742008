//! `[cluster]` resolved: this replica's advertised address, the bus, how peers are found.

use std::net::SocketAddr;

use crate::config::{addr, bad, dur, positive, ClusterSpec, ConfigError, RawCluster};

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
    Ok(ClusterSpec {
        secret_file: c.secret_file.clone(),
        advertise,
        discovery,
        heartbeat: dur("cluster.heartbeat", c.heartbeat.as_deref(), "2s")?,
        replay_window: dur("cluster.replay_window", c.replay_window.as_deref(), "30s")?,
        wait_timeout: dur("cluster.wait_timeout", c.wait_timeout.as_deref(), "5s")?,
        queue_capacity: positive("cluster.queue_capacity", c.queue_capacity.unwrap_or(10_000))?,
        fanout: fanout(c.fanout)?,
        relay_budget: dur("cluster.relay_budget", c.relay_budget.as_deref(), "4s")?,
        bus,
        tls: crate::config_tls::peer_tls(c.tls.as_ref())?,
    })
}

/// `fanout`: 0 (a mesh) or at least 2 (a relay tree; 1 would be a chain as long as the fleet).
fn fanout(v: Option<usize>) -> Result<usize, ConfigError> {
    match v.unwrap_or(corral_cluster::DEFAULT_FANOUT) {
        1 => Err(bad(
            "cluster.fanout",
            1,
            "0 sends every event to every peer; a relay tree needs at least 2",
        )),
        n => Ok(n),
    }
}
