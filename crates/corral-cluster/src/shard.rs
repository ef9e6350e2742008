//! Owner routing: one fill per key in the whole cluster without a shared lease.
//!
//! Every key has an *owner* among this replica and its live peers, chosen by rendezvous
//! hashing on the cache key ([`owner`]): each member scores `hash(member, key)` and the highest
//! wins, so a membership change moves only the keys of the member that came or went. On a miss
//! the coalescing leader of a replica that does not own the key asks the owner
//! (`POST /_corral/v1/fill`, signed), which runs the request through its own gateway — its own
//! coalescing, one origin fetch — and answers with the stored entry as a `wire` record; both
//! then hold it. The owner's request carries a signed marker ([`MARKER`]) and a request that
//! carries a valid one is never forwarded again, so routing cannot loop even when two replicas
//! disagree about the membership. An owner that is slow or gone costs the asking replica at
//! most `timeout`; it then goes to the origin itself: ownership is an optimisation, never a
//! dependency.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use corral_core::key::KeyRef;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::sign::{SIGNATURE, TIMESTAMP};
use crate::Cluster;

/// The owner's endpoint, on the peer (admin) listener.
pub const FILL_PATH: &str = "/_corral/v1/fill";
/// The request header marking a fill the owner runs for a peer: `<ms>.<hex HMAC>` over the key.
pub const MARKER: &str = "x-corral-forwarded";
/// What the marker's signature covers besides the key (so no other signed message can be
/// replayed as one).
const MARKER_METHOD: &str = "FILL";

/// `[cluster] shard`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardConfig {
    /// Owners per key (1: one fill per key in the cluster).
    pub replicas_per_key: usize,
    /// How long a replica waits for the owner before fetching from the origin itself.
    pub timeout: Duration,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            replicas_per_key: 1,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What a replica asks the owner for.
#[derive(Debug, Serialize, Deserialize)]
pub struct FillRequest {
    /// The cache key (its host and path are what the owner fetches).
    pub key: String,
    /// The client's request headers, as the asking replica admitted them.
    pub headers: Vec<(String, String)>,
}

/// FNV-1a, 64 bits: the same on every replica and every build (a process-seeded hasher would
/// give each replica its own owners).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // A final mix: FNV's low bits alone separate similar inputs poorly.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The owner of `key` among `members` (rendezvous hashing); `None` when there are none.
/// The key is hashed as encoded, so every replica and build agrees.
pub fn owner(key: KeyRef<'_>, members: &[SocketAddr]) -> Option<SocketAddr> {
    let key = key.as_str().as_bytes();
    members
        .iter()
        .max_by_key(|m| (fnv(&[m.to_string().as_bytes(), key]), **m))
        .copied()
}

impl Cluster {
    /// The owner of `key` among this replica and its peers not reported silent.
    pub fn owner_of(&self, key: KeyRef<'_>) -> Option<SocketAddr> {
        owner(key, &self.live_members())
    }

    /// The replicas taken to be live: the peers not silent past the limit, and this one.
    /// Everything that elects a replica by membership (key owners, a source's leader) uses
    /// this one view, so they agree on who is there.
    pub fn live_members(&self) -> Vec<SocketAddr> {
        let silent = self.silent_peers();
        let mut members: Vec<SocketAddr> = self
            .peer_addrs()
            .into_iter()
            .filter(|p| !silent.contains(p))
            .collect();
        members.push(self.config.advertise);
        members
    }

    /// This replica's own address as peers see it.
    pub fn advertise(&self) -> SocketAddr {
        self.config.advertise
    }

    /// The marker for the owner's own fill of `key`.
    pub fn marker(&self, key: KeyRef<'_>) -> HeaderValue {
        let [(_, ts), (_, sig)] = self.config.secret.sign(MARKER_METHOD, key.as_str(), b"");
        HeaderValue::from_str(&format!("{ts}.{sig}")).unwrap_or(HeaderValue::from_static("0.0"))
    }

    /// True when `request` carries a valid marker for `key` (signed, within the replay
    /// window): this fill runs for a peer and must not be forwarded again.
    pub fn is_forwarded(&self, request: &HeaderMap, key: KeyRef<'_>) -> bool {
        let Some((ts, sig)) = request
            .get(MARKER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('.'))
        else {
            return false;
        };
        let mut h = HeaderMap::new();
        match (HeaderValue::from_str(ts), HeaderValue::from_str(sig)) {
            (Ok(ts), Ok(sig)) => {
                h.insert(TIMESTAMP, ts);
                h.insert(SIGNATURE, sig);
            }
            _ => return false,
        }
        self.config
            .secret
            .verify(
                &h,
                MARKER_METHOD,
                key.as_str(),
                b"",
                self.config.replay_window,
            )
            .is_ok()
    }

    /// Asks `owner` to fill `key`: its entry as a `wire` record, `None` when it has nothing to
    /// share (not storable), an error when it did not answer within `timeout`.
    pub async fn fill_from(
        &self,
        owner: SocketAddr,
        fill: &FillRequest,
        timeout: Duration,
    ) -> Result<Option<Bytes>, String> {
        let body = serde_json::to_vec(fill).map_err(|e| e.to_string())?;
        let (status, bytes) = self
            .request(owner, "POST", FILL_PATH, body, timeout, "fill", None)
            .await?;
        match status {
            StatusCode::OK => Ok(Some(bytes)),
            StatusCode::NO_CONTENT => Ok(None),
            s => Err(format!("{owner}: answered {s}")),
        }
    }

    /// Checks a fill request's signature (the owner's side).
    pub fn verify_fill(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), crate::Refusal> {
        self.verify(headers, "POST", FILL_PATH, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| format!("10.0.0.{}:9090", i + 1).parse().unwrap())
            .collect()
    }

    #[test]
    fn owners_spread_and_a_departure_moves_only_its_own_keys() {
        let all = members(5);
        let keys: Vec<corral_core::Key> = (0..5000)
            .map(|i| corral_core::Key::parse(&format!("G|h|/k{i}")).unwrap())
            .collect();
        let before: Vec<SocketAddr> = keys
            .iter()
            .map(|k| owner(k.view(), &all).unwrap())
            .collect();
        for m in &all {
            let n = before.iter().filter(|o| *o == m).count();
            assert!((700..1300).contains(&n), "{m} owns {n} of 5000");
        }
        let gone = all[2];
        let rest: Vec<SocketAddr> = all.iter().copied().filter(|m| *m != gone).collect();
        for (k, was) in keys.iter().zip(&before) {
            let now = owner(k.view(), &rest).unwrap();
            if *was != gone {
                assert_eq!(now, *was, "{k} moved though its owner stayed");
            }
        }
        // Order of the member list does not matter.
        let mut reversed = all.clone();
        reversed.reverse();
        let x = KeyRef::parse("G|h|/x").unwrap();
        assert_eq!(owner(x, &all), owner(x, &reversed));
        assert_eq!(owner(x, &[]), None);
    }
}
