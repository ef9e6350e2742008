//! Load-balancing policies: which of the usable endpoints gets the next request.
//!
//! * `round_robin`: weighted round robin over the usable endpoints (an endpoint of weight 3 gets
//!   three turns in a cycle of the total weight).
//! * `least_request`: power of two choices — two random endpoints, the one with fewer requests
//!   in flight per unit of weight wins. Nearly as good as a full scan, O(1), and it avoids the
//!   herd a pure least-loaded pick causes when many gateways see the same counts.
//! * `consistent_hash`: a ring of virtual nodes (64 per unit of weight) over every endpoint,
//!   keyed by a stable hash of the request's host, path and query — the cache key — so every
//!   gateway of a fleet sends a key to the same origin instance, and an endpoint leaving moves
//!   only its own keys. Unusable endpoints are skipped along the ring.

use std::sync::Arc;

use super::endpoint::EndpointState;

/// The policy, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

impl Balance {
    /// Parses the configured name.
    pub fn parse(s: &str) -> Option<Balance> {
        match s {
            "round_robin" => Some(Balance::RoundRobin),
            "least_request" => Some(Balance::LeastRequest),
            "consistent_hash" => Some(Balance::ConsistentHash),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::ConsistentHash => "consistent_hash",
        }
    }
}

/// Virtual nodes per unit of weight.
const VNODES: u32 = 64;

/// The hash ring of one endpoint set: `(point, index into the set)`, sorted by point.
#[derive(Debug, Default)]
pub struct Ring(Vec<(u64, u32)>);

impl Ring {
    pub fn build(endpoints: &[Arc<EndpointState>]) -> Ring {
        let mut points = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let key = e.addr.to_string();
            for v in 0..VNODES * e.weight.min(100) {
                points.push((stable_hash(&[key.as_bytes(), &v.to_le_bytes()]), i as u32));
            }
        }
        points.sort_unstable();
        Ring(points)
    }

    /// The first endpoint at or after `hash` on the ring for which `usable` holds.
    pub fn pick(&self, hash: u64, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        if self.0.is_empty() {
            return None;
        }
        let start = self.0.partition_point(|(p, _)| *p < hash);
        let n = self.0.len();
        (0..n)
            .map(|k| self.0[(start + k) % n].1 as usize)
            .find(|&i| usable(i))
    }
}

/// A hash that is the same in every process and build (FNV-1a, then a 64-bit finaliser for
/// avalanche), so a fleet of gateways agrees on where a key goes.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Weighted round robin: the `turn`-th slot of a cycle of the candidates' total weight.
pub fn round_robin(candidates: &[&Arc<EndpointState>], turn: usize) -> usize {
    let total: usize = candidates.iter().map(|e| e.weight as usize).sum();
    let mut slot = turn % total.max(1);
    for (i, e) in candidates.iter().enumerate() {
        if slot < e.weight as usize {
            return i;
        }
        slot -= e.weight as usize;
    }
    0
}

/// Power of two choices over the candidates.
pub fn least_request(candidates: &[&Arc<EndpointState>]) -> usize {
    use rand::Rng;
    let n = candidates.len();
    if n < 2 {
        return 0;
    }
    let mut rng = rand::thread_rng();
    let a = rng.gen_range(0..n);
    let mut b = rng.gen_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    // Compare in-flight per unit of weight without dividing: a/wa <= b/wb.
    let load = |i: usize| candidates[i].in_flight() as u128;
    let w = |i: usize| u128::from(candidates[i].weight);
    if load(a) * w(b) <= load(b) * w(a) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(ports: &[u16]) -> Vec<Arc<EndpointState>> {
        ports
            .iter()
            .map(|p| {
                let e = corral_discovery::Endpoint::new(([10, 0, 0, 1], *p).into());
                Arc::new(EndpointState::new(&e, Default::default()))
            })
            .collect()
    }

    #[test]
    fn an_endpoint_leaving_the_ring_moves_only_its_own_keys() {
        let all = endpoints(&[1, 2, 3]);
        let ring = Ring::build(&all);
        let owner = |ring: &Ring, set: &[Arc<EndpointState>], k: u32| {
            set[ring
                .pick(stable_hash(&[&k.to_le_bytes()]), |_| true)
                .unwrap()]
            .addr
        };
        let before: Vec<_> = (0..3000).map(|k| owner(&ring, &all, k)).collect();
        let shares: Vec<usize> = all
            .iter()
            .map(|e| before.iter().filter(|a| **a == e.addr).count())
            .collect();
        assert!(
            shares.iter().all(|&n| n > 600),
            "balanced enough: {shares:?}"
        );
        let rest = vec![all[0].clone(), all[2].clone()];
        let ring2 = Ring::build(&rest);
        for (k, was) in before.iter().enumerate() {
            let now = owner(&ring2, &rest, k as u32);
            if *was != all[1].addr {
                assert_eq!(now, *was, "key {k} moved although its endpoint stayed");
            }
        }
        // Skipping an unusable endpoint is the same as the ring without it.
        for k in 0..3000u32 {
            let h = stable_hash(&[&k.to_le_bytes()]);
            let skip = ring.pick(h, |i| i != 1).unwrap();
            assert_eq!(all[skip].addr, owner(&ring2, &rest, k));
        }
    }

    #[test]
    fn weighted_round_robin_cycle() {
        let set = endpoints(&[1, 2]);
        let heavy = Arc::new(EndpointState::new(
            &corral_discovery::Endpoint::weighted(([10, 0, 0, 1], 3).into(), 3),
            Default::default(),
        ));
        let c: Vec<&Arc<EndpointState>> = vec![&set[0], &heavy, &set[1]];
        let picks: Vec<usize> = (0..10).map(|t| round_robin(&c, t)).collect();
        assert_eq!(picks, [0, 1, 1, 1, 2, 0, 1, 1, 1, 2]);
    }

    #[test]
    fn hash_is_stable_and_spreads() {
        // Fixed value: the ring must agree across processes and releases.
        assert_eq!(stable_hash(&[b"a"]), stable_hash(&[b"a"]));
        assert_ne!(stable_hash(&[b"a", b"b"]), stable_hash(&[b"ab"]));
        let buckets = (0..10_000u32)
            .map(|i| stable_hash(&[&i.to_le_bytes()]) % 4)
            .fold([0u32; 4], |mut acc, b| {
                acc[b as usize] += 1;
                acc
            });
        assert!(buckets.iter().all(|&c| c > 2000), "{buckets:?}");
    }
}
