//! The gateway's way into the invalidation hub ([`corral_cluster::hub::Hub`], which makes,
//! applies, counts, logs and fans out every purge). The gateway only produces invalidations
//! (`PURGE`, unsafe methods) through `corral_http::InvalidationSink`; this adapter is that sink,
//! since neither crate may depend on the other. The hub's subscribers — the journal
//! (`ui::journal`) and the feed (`feed`) — are wired in `main.rs`.

use std::sync::Arc;

use corral_cluster::hub::{Hub, Invalidated};
use corral_core::{Cause, Purge};
use corral_http::PurgeReport;

/// The hub as the gateway's `InvalidationSink`.
pub struct GatewaySink(pub Arc<Hub>);

impl corral_http::InvalidationSink for GatewaySink {
    fn invalidate(&self, purge: Purge, cause: Cause, who: &str) -> PurgeReport {
        report(&self.0.invalidate(purge, cause, who))
    }
}

/// What a purge did, as the gateway and the admin API report it.
pub fn report(done: &Invalidated) -> PurgeReport {
    PurgeReport {
        purged: done.purged,
        event: done.event.id.clone(),
        seq: done.event.seq,
    }
}
