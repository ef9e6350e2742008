//! `[admin]`: the token file, who may PURGE on the proxy listener, the admin API's body limit
//! and the subscribe feed. Its `tls` is resolved with `[cluster] tls` (the admin listener
//! serves the peers' certificate when `[admin] tls` is absent), so `RawConfig::resolve` does
//! that step, not this table.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{bad, parse_duration, size, ConfigError};
use crate::feed::FeedConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub token_file: Option<PathBuf>,
    pub purge_allow: Option<Vec<String>>,
    pub max_body_size: Option<String>,
    /// Events the subscribe feed keeps for `Last-Event-ID` resumption.
    pub feed_replay: Option<usize>,
    pub feed_keepalive: Option<String>,
    pub tls: Option<crate::config_tls::RawAdminTls>,
}

/// The largest admin request body when `admin.max_body_size` is unset: purge batches are
/// small, and the admin listener is the one place an unauthenticated body is read.
const DEFAULT_MAX_BODY: u64 = 1 << 20;

/// Who may PURGE without the token when `admin.purge_allow` is unset: this host only.
const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// `[admin]` resolved: the `Config` fields it fills (all but `admin_tls`).
#[derive(Debug)]
pub(crate) struct AdminTable {
    pub token_file: Option<PathBuf>,
    pub purge_allow: Vec<ipnet::IpNet>,
    pub max_body: usize,
    pub feed: FeedConfig,
}

pub(crate) fn resolve(a: &RawAdmin) -> Result<AdminTable, ConfigError> {
    let loopback: Vec<String> = LOOPBACK.iter().map(|s| s.to_string()).collect();
    let purge_allow = crate::config_ingress::cidrs(
        "admin.purge_allow",
        a.purge_allow.as_ref().unwrap_or(&loopback),
    )?;
    let max_body = size(
        "admin.max_body_size",
        a.max_body_size.as_deref(),
        DEFAULT_MAX_BODY,
    )? as usize;
    Ok(AdminTable {
        token_file: a.token_file.clone(),
        purge_allow,
        max_body,
        feed: feed_config(a)?,
    })
}

/// `[admin] feed_replay` (1 to 1,000,000 events) and `feed_keepalive` (100ms to 10m), each
/// unset one at `FeedConfig::default()`.
fn feed_config(a: &RawAdmin) -> Result<FeedConfig, ConfigError> {
    let d = FeedConfig::default();
    let replay = a.feed_replay.unwrap_or(d.replay);
    if !(1..=1_000_000).contains(&replay) {
        return Err(bad("admin.feed_replay", replay, "1 to 1000000 events"));
    }
    let keepalive = match &a.feed_keepalive {
        Some(v) => parse_duration("admin.feed_keepalive", v)?,
        None => d.keepalive,
    };
    if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&keepalive) {
        return Err(bad(
            "admin.feed_keepalive",
            a.feed_keepalive.as_deref().unwrap_or_default(),
            "a duration from \"100ms\" to \"10m\"",
        ));
    }
    Ok(FeedConfig { replay, keepalive })
}
