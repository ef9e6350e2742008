//! Consul discovery: the passing instances of a service, followed with blocking queries
//! (`index` from `X-Consul-Index`, `wait`), so changes arrive as they happen without polling.

use corral_core::Backoff;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::{client, publish, Endpoint, Health};

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Debug, Deserialize)]
struct Service {
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: u32,
}

/// Follows `service` on the Consul agent at `address` until the receiver is dropped.
pub async fn follow(
    tx: watch::Sender<Vec<Endpoint>>,
    address: String,
    service: String,
    health: std::sync::Arc<Health>,
) {
    let client = match client::build(None) {
        Ok(c) => c,
        Err(e) => {
            health.failed(&format!("cannot start: {e}"));
            return;
        }
    };
    let mut index: u64 = 0;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while !tx.is_closed() {
        let url =
            format!("{address}/v1/health/service/{service}?passing=true&index={index}&wait=30s");
        let result = async {
            let resp = client::get(&client, &url, None, Duration::from_secs(40)).await?;
            if !resp.status().is_success() {
                return Err(format!("{url} answered {}", resp.status()));
            }
            let new_index = resp
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = client::body(resp, 16 << 20).await?;
            let entries: Vec<Entry> =
                serde_json::from_slice(&body).map_err(|e| format!("bad answer: {e}"))?;
            Ok((new_index, entries))
        }
        .await;
        match result {
            Ok((new_index, entries)) => {
                backoff.reset();
                health.ok();
                let set: Vec<Endpoint> = entries
                    .iter()
                    .filter_map(|e| {
                        let host = if e.service.address.is_empty() {
                            &e.node.address
                        } else {
                            &e.service.address
                        };
                        let ip: IpAddr = host.parse().ok()?;
                        let weight = e.service.weights.as_ref().map_or(1, |w| w.passing);
                        Some(Endpoint::weighted(
                            SocketAddr::new(ip, e.service.port),
                            weight,
                        ))
                    })
                    .collect();
                publish(&tx, set, &health);
                // An index that goes backwards (Consul restarted) starts over (Consul's advice).
                index = match new_index {
                    Some(i) if i >= index => i,
                    _ => 0,
                };
            }
            Err(e) => {
                health.failed(&e);
                backoff.wait().await;
            }
        }
    }
}
