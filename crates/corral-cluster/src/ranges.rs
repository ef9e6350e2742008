//! How a relayed event is split across the fleet: pure, so it can be property-tested.
//!
//! A sender with members `m` and fan-out `k` cuts `m` into at most `k` contiguous ranges of
//! near-equal size and sends to one member of each range (its *head*), making the head
//! responsible for the rest of its range. Every relay does the same with its range, so each
//! member is reached exactly once, through a tree of depth about `log_k(N)`, and no replica
//! sends to more than `k` others per event.

use std::net::SocketAddr;

/// One branch of a split: who is sent to, and whom it passes the event on to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub head: SocketAddr,
    pub rest: Vec<SocketAddr>,
}

/// Splits `members` into at most `k` (≥ 1) branches. Within each range the head is its first
/// member that `usable_head` accepts (a member that recently failed makes a poor relay), or its
/// first member when none does; the order of the rest is kept.
pub fn split(
    members: &[SocketAddr],
    k: usize,
    usable_head: impl Fn(&SocketAddr) -> bool,
) -> Vec<Branch> {
    let k = k.max(1).min(members.len());
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for i in 0..k {
        // The first `len % k` ranges take one extra member.
        let size = members.len() / k + usize::from(i < members.len() % k);
        let range = &members[start..start + size];
        start += size;
        let at = range.iter().position(&usable_head).unwrap_or(0);
        let mut rest = range.to_vec();
        let head = rest.remove(at);
        out.push(Branch { head, rest });
    }
    out
}

/// The members in the order a sender splits them: sorted, starting after the sender, so that
/// different senders lead with different relays and no replica relays for everyone.
pub fn ring_order(mut members: Vec<SocketAddr>, me: SocketAddr) -> Vec<SocketAddr> {
    members.sort_unstable();
    members.dedup();
    members.retain(|m| *m != me);
    let after = members.partition_point(|m| *m < me);
    members.rotate_left(after);
    members
}

/// The depth of the relay tree `split` builds for `n` members (1 = every member is a head).
pub fn depth(n: usize, k: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let k = k.max(1);
    // The largest range has ceil(n / k) members: its head, then a tree over the others.
    1 + depth(n.div_ceil(k).saturating_sub(1), k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from(([127, (i >> 16) as u8, (i >> 8) as u8, i as u8], 9090))
    }

    /// Delivers as the cluster does: every head applies, then splits its own rest.
    fn reach(
        members: &[SocketAddr],
        k: usize,
        bad: &dyn Fn(&SocketAddr) -> bool,
        level: usize,
        seen: &mut HashMap<SocketAddr, usize>,
        deepest: &mut usize,
    ) {
        for b in split(members, k, |a| !bad(a)) {
            *seen.entry(b.head).or_default() += 1;
            *deepest = (*deepest).max(level);
            assert!(
                !b.rest.contains(&b.head),
                "a head is never in its own range"
            );
            reach(&b.rest, k, bad, level + 1, seen, deepest);
        }
    }

    proptest! {
        #[test]
        fn every_member_is_reached_exactly_once(
            ids in proptest::collection::btree_set(0u32..5_000, 0..400),
            me in 0u32..5_000,
            k in 1usize..12,
            bad_mod in 1u32..7,
        ) {
            let members = ring_order(ids.iter().map(|&i| addr(i)).collect(), addr(me));
            let bad = |a: &SocketAddr| u32::from(a.port()) % bad_mod == 0 || a.ip().to_string().ends_with('3');
            let mut seen = HashMap::new();
            let mut deepest = 0;
            reach(&members, k, &bad, 1, &mut seen, &mut deepest);
            prop_assert_eq!(seen.len(), members.len());
            prop_assert!(seen.values().all(|&n| n == 1));
            prop_assert!(!seen.contains_key(&addr(me)), "the sender is never sent to");
            prop_assert!(deepest <= depth(members.len(), k));
            for b in split(&members, k, |_| true) {
                prop_assert!(b.rest.len() < members.len().div_ceil(k.max(1)));
            }
        }
    }

    #[test]
    fn ring_order_starts_after_the_sender() {
        let m: Vec<_> = (1..=5).map(addr).collect();
        assert_eq!(
            ring_order(m.clone(), addr(3)),
            [addr(4), addr(5), addr(1), addr(2)]
        );
        assert_eq!(
            ring_order(m, addr(9)),
            (1..=5).map(addr).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_poor_relay_is_not_made_head_when_another_will_do() {
        let m: Vec<_> = (1..=6).map(addr).collect();
        let b = split(&m, 2, |a| *a != addr(1));
        assert_eq!(b[0].head, addr(2));
        assert_eq!(b[0].rest, [addr(1), addr(3)]);
        assert_eq!(b[1].head, addr(4));
        // A range with no good head still gets one.
        assert_eq!(split(&m[..1], 3, |_| false)[0].head, addr(1));
    }

    #[test]
    fn depth_grows_with_log_k() {
        assert_eq!(depth(8, 8), 1);
        assert_eq!(depth(9, 8), 2);
        assert_eq!(depth(30, 3), 3);
        assert_eq!(depth(300, 8), 3);
        assert_eq!(depth(0, 8), 0);
    }
}
