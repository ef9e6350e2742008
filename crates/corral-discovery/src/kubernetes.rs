//! Kubernetes discovery: the EndpointSlices of a Service, through the API server's list/watch
//! protocol (the same one kubectl and controllers use).
//!
//! LIST gives the slices and a `resourceVersion`; WATCH from it streams `ADDED`, `MODIFIED`,
//! `DELETED` and `BOOKMARK` events as JSON lines. A watch that ends normally resumes from the
//! last version seen; `410 Gone` (an HTTP status or an `ERROR` event) means that version is too
//! old, so the source lists again. Errors back off exponentially, keeping the last known set.
//! Every endpoint is reported — ready, not ready or terminating — with its `ready` and
//! `serving` conditions (absent means true, as the API documents): cluster peers use all of
//! them, because a pod that fails readiness still holds a cache that purges must reach, while
//! upstream pools send new requests to ready endpoints only.

use corral_core::Backoff;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::client::{self, HttpClient};
use crate::{publish, Endpoint, Health};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What to watch.
pub struct Spec {
    pub namespace: String,
    pub service: String,
    pub port_name: Option<String>,
    pub port: Option<u16>,
    pub api_server: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

#[derive(Debug, Deserialize)]
struct SliceList {
    metadata: ObjectMeta,
    #[serde(default)]
    items: Vec<EndpointSlice>,
}

#[derive(Debug, Deserialize)]
struct EndpointSlice {
    metadata: ObjectMeta,
    #[serde(default)]
    endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    ports: Vec<Port>,
}

#[derive(Debug, Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
}

#[derive(Debug, Default, Deserialize)]
struct Conditions {
    ready: Option<bool>,
    serving: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Port {
    name: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

enum WatchEnd {
    /// The server closed the watch normally: resume from this version.
    Closed(String),
    /// 410 Gone: list again.
    Expired,
    Failed(String),
}

struct Source {
    spec: Spec,
    api: String,
    client: HttpClient,
    slices: HashMap<String, Vec<Endpoint>>,
    tx: watch::Sender<Vec<Endpoint>>,
    health: std::sync::Arc<Health>,
}

/// Follows the Service's EndpointSlices until the receiver is dropped.
pub async fn follow(tx: watch::Sender<Vec<Endpoint>>, spec: Spec, health: std::sync::Arc<Health>) {
    let api = spec.api_server.clone().unwrap_or_else(|| {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .unwrap_or_else(|_| "kubernetes.default.svc".into());
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        format!("https://{host}:{port}")
    });
    let ca = std::fs::read(format!("{SA_DIR}/ca.crt")).ok();
    let client = match client::build(ca.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            health.failed(&format!("cannot start: {e}"));
            return;
        }
    };
    let mut src = Source {
        spec,
        api: api.trim_end_matches('/').to_string(),
        client,
        slices: HashMap::new(),
        tx,
        health: health.clone(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        if src.tx.is_closed() {
            return;
        }
        let mut version = match src.list().await {
            Ok(v) => v,
            Err(e) => {
                health.failed(&format!("list: {e}"));
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        health.ok();
        loop {
            match src.watch(&version).await {
                WatchEnd::Closed(v) => version = v,
                WatchEnd::Expired => {
                    tracing::info!("EndpointSlice watch expired (410 Gone); listing again");
                    break;
                }
                WatchEnd::Failed(e) => {
                    health.failed(&format!("watch: {e}"));
                    backoff.wait().await;
                }
            }
            if src.tx.is_closed() {
                return;
            }
        }
    }
}

impl Source {
    fn path(&self) -> String {
        format!(
            "{}/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{}",
            self.api, self.spec.namespace, self.spec.service
        )
    }

    fn token() -> Option<String> {
        // Re-read every time: projected service-account tokens rotate.
        std::fs::read_to_string(format!("{SA_DIR}/token"))
            .ok()
            .map(|t| t.trim().to_string())
    }

    async fn list(&mut self) -> Result<String, String> {
        let resp = client::get(
            &self.client,
            &self.path(),
            Self::token().as_deref(),
            Duration::from_secs(10),
        )
        .await?;
        if !resp.status().is_success() {
            return Err(format!("list answered {}", resp.status()));
        }
        let body = client::body(resp, 32 << 20).await?;
        let list: SliceList =
            serde_json::from_slice(&body).map_err(|e| format!("bad EndpointSliceList: {e}"))?;
        self.slices = list
            .items
            .iter()
            .map(|s| (s.metadata.name.clone(), self.addresses(s)))
            .collect();
        self.publish();
        Ok(list.metadata.resource_version)
    }

    async fn watch(&mut self, version: &str) -> WatchEnd {
        use http_body_util::BodyExt;
        let url = format!(
            "{}&watch=true&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion={version}",
            self.path()
        );
        let resp = match client::get(
            &self.client,
            &url,
            Self::token().as_deref(),
            Duration::from_secs(10),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return WatchEnd::Failed(e),
        };
        if resp.status() == http::StatusCode::GONE {
            return WatchEnd::Expired;
        }
        if !resp.status().is_success() {
            return WatchEnd::Failed(format!("watch answered {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let mut version = version.to_string();
        loop {
            // Bookmarks arrive at least every minute or so; silence longer than this is a dead
            // connection.
            let frame = match tokio::time::timeout(Duration::from_secs(330), body.frame()).await {
                Err(_) => return WatchEnd::Failed("watch went silent".into()),
                Ok(None) => return WatchEnd::Closed(version),
                Ok(Some(Err(e))) => return WatchEnd::Failed(e.to_string()),
                Ok(Some(Ok(f))) => f,
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            if buf.len() > 32 << 20 {
                return WatchEnd::Failed("watch event larger than 32 MiB".into());
            }
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match self.event(&line, &mut version) {
                    Ok(()) => {}
                    Err(end) => return end,
                }
            }
        }
    }

    fn event(&mut self, line: &[u8], version: &mut String) -> Result<(), WatchEnd> {
        let ev: WatchEvent = serde_json::from_slice(line)
            .map_err(|e| WatchEnd::Failed(format!("bad watch event: {e}")))?;
        if ev.kind == "ERROR" {
            let code = ev.object.get("code").and_then(|c| c.as_u64());
            return Err(if code == Some(410) {
                WatchEnd::Expired
            } else {
                WatchEnd::Failed(format!("watch error: {}", ev.object))
            });
        }
        let meta: ObjectMeta =
            serde_json::from_value(ev.object.get("metadata").cloned().unwrap_or_default())
                .map_err(|e| WatchEnd::Failed(format!("bad object metadata: {e}")))?;
        if !meta.resource_version.is_empty() {
            *version = meta.resource_version.clone();
        }
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                let slice: EndpointSlice = serde_json::from_value(ev.object)
                    .map_err(|e| WatchEnd::Failed(format!("bad EndpointSlice: {e}")))?;
                let addrs = self.addresses(&slice);
                self.slices.insert(slice.metadata.name, addrs);
                self.publish();
            }
            "DELETED" => {
                self.slices.remove(&meta.name);
                self.publish();
            }
            _ => {} // BOOKMARK: only the version matters
        }
        Ok(())
    }

    /// Every endpoint address of a slice, with the port (by name, else the configured port,
    /// else the slice's only port) and its conditions.
    fn addresses(&self, slice: &EndpointSlice) -> Vec<Endpoint> {
        let port = match (&self.spec.port_name, self.spec.port) {
            (Some(name), _) => slice
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| p.port),
            (None, Some(p)) => Some(p),
            (None, None) if slice.ports.len() == 1 => slice.ports[0].port,
            _ => None,
        };
        let Some(port) = port else {
            tracing::warn!(slice = %slice.metadata.name, "no matching port in EndpointSlice; set port_name or port");
            return Vec::new();
        };
        slice
            .endpoints
            .iter()
            .flat_map(|e| {
                let ready = e.conditions.ready.unwrap_or(true);
                let serving = e.conditions.serving.unwrap_or(ready);
                e.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(move |ip| Endpoint {
                        addr: SocketAddr::new(ip, port),
                        weight: 1,
                        ready,
                        serving,
                    })
            })
            .collect()
    }

    fn publish(&self) {
        let set: Vec<Endpoint> = self.slices.values().flatten().cloned().collect();
        publish(&self.tx, set, &self.health);
    }
}
