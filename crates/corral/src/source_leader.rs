//! Who follows a change-stream source: the holder of a lease in Redis when Redis is
//! configured, else the lowest address among this replica and its live peers.
//!
//! * **Redis lease.** One key per source, `corral:source:<name>:leader`, holding the
//!   holder's admin address and a token of this process. Every tick each replica runs one
//!   script: the holder extends the key's expiry, anyone else takes it only if it is gone
//!   (`SET NX PX`), and all learn who holds it. A holder that dies stops renewing and the key
//!   expires after `LEASE_TTL`; a replica that comes back does not take the source back from
//!   a live holder (unlike the lowest-address rule, which moves it on every restart of the
//!   lowest replica).
//! * **Peers.** Without Redis, or once Redis has not answered for longer than a lease lives
//!   (any lease there would have expired by then), the lowest address among the replicas the
//!   cluster's heartbeats call live leads. Until then a replica keeps doing what it did: a
//!   replica just started whose client is still connecting does not take a source from a
//!   live holder. Two replicas that briefly both think
//!   they lead cannot both stream: the database lets one session read a slot at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_cluster::Cluster;
use corral_redis::{redis, RedisClient};
use parking_lot::Mutex;

/// How long a lease outlives its holder's last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// Renew if ours, take if free, and in any case say who holds it.
const HOLD: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return ARGV[1]
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
";

/// How a source's leader is chosen.
pub enum Election {
    Peers,
    Lease {
        redis: Arc<RedisClient>,
        key: String,
        /// This process's claim: `<admin address> <random token>`.
        claim: String,
        /// Since when Redis has not answered (or since start, until it first does).
        unanswered: Mutex<Option<Instant>>,
    },
}

impl Election {
    pub fn new(redis: Option<Arc<RedisClient>>, source: &str, me: SocketAddr) -> Election {
        match redis {
            None => Election::Peers,
            Some(redis) => Election::Lease {
                redis,
                key: format!("corral:source:{source}:leader"),
                claim: format!("{me} {:016x}", rand::random::<u64>()),
                unanswered: Mutex::new(Some(Instant::now())),
            },
        }
    }

    /// The replica that should follow now; `None`: not known yet (Redis has not answered for
    /// less than a lease's lifetime), so nothing should change.
    pub async fn leader(
        &self,
        cluster: Option<&Arc<Cluster>>,
        me: SocketAddr,
    ) -> Option<SocketAddr> {
        let Election::Lease {
            redis,
            key,
            claim,
            unanswered,
        } = self
        else {
            return Some(lowest_live(cluster, me));
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(HOLD)
            .arg(1)
            .arg(key)
            .arg(claim)
            .arg(LEASE_TTL.as_millis() as u64);
        // An error and a missing key (expired between the script's steps) both leave it unknown.
        let holder: Option<String> = redis.call(&cmd).await.unwrap_or_default();
        let holder = holder.and_then(|h| h.split_once(' ').and_then(|(a, _)| a.parse().ok()));
        let mut since = unanswered.lock();
        match holder {
            Some(addr) => {
                *since = None;
                Some(addr)
            }
            None => {
                let since = *since.get_or_insert_with(Instant::now);
                (since.elapsed() > LEASE_TTL).then(|| lowest_live(cluster, me))
            }
        }
    }
}

/// The lowest address among this replica and its live peers.
pub fn lowest_live(cluster: Option<&Arc<Cluster>>, me: SocketAddr) -> SocketAddr {
    let Some(c) = cluster else { return me };
    c.live_members().into_iter().min().unwrap_or(me)
}
