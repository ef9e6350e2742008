//! Cluster peers from `corral-discovery`: every discovered endpoint is a peer, ready or not,
//! because a pod that fails readiness still holds a cache that purges must reach.

use std::sync::Arc;

use crate::PeerAddr;
use corral_discovery::{Endpoint, Health, Spec};
use tokio::sync::watch;

/// Starts discovery; the receiver always holds the latest peer set. Used by the gateway and by
/// library members alike, so both see the same peers for the same spec.
pub fn discovered(spec: &Spec, health: Arc<Health>) -> watch::Receiver<Vec<PeerAddr>> {
    let mut endpoints = corral_discovery::spawn(spec, health);
    let source = spec.kind();
    let to_peers = move |set: &[Endpoint]| -> Vec<PeerAddr> {
        set.iter()
            .map(|e| PeerAddr {
                addr: e.addr,
                source: source.into(),
            })
            .collect()
    };
    let (tx, rx) = watch::channel(to_peers(&endpoints.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = endpoints.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let peers = to_peers(&endpoints.borrow_and_update());
                    tx.send_replace(peers);
                }
                () = tx.closed() => return,
            }
        }
    });
    rx
}
