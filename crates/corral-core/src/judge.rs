//! Does a purge cover an entry, and how: the one rule every tier applies to its marks.
//!
//! A purge leaves *marks* (per tag, URL, prefix or everything) holding when it happened; an
//! entry carries when the fetch that produced it *started*. A mark covers the entry when the
//! purge came after that start — so a fill in flight across a purge is covered too and cannot
//! resurrect what was purged. A hard mark makes the entry [`Verdict::Gone`], a soft one
//! [`Verdict::Stale`]; an entry under several marks gets the strongest verdict.
//!
//! Tiers stamp in different time bases ([`Stamp`]): the gateway's store and `corral-cache`'s
//! in-process cache count events (`u64`: a purge takes the next number, so a tie cannot
//! happen and means "before"), the Redis tiers share wall-clock milliseconds between replicas
//! ([`WallMs`]: two events can share a millisecond, so a tie counts as covered). The
//! consequences of clock skew are in `docs/architecture.md`, "Purge judging and time bases".

use crate::invalidation::Mode;

/// How the purges judge an entry, weakest first: `a.max(b)` combines two judgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// No purge since its fetch started covers it.
    Fresh,
    /// A soft purge covers it: serve only after revalidation (or under `stale-if-error`).
    Stale,
    /// A hard purge covers it: never serve it again.
    Gone,
}

impl Verdict {
    /// The verdict of one covering purge in `mode`.
    pub fn of(mode: Mode) -> Verdict {
        match mode {
            Mode::Hard => Verdict::Gone,
            Mode::Soft => Verdict::Stale,
        }
    }
}

/// A time base purges and fetch starts are stamped in.
pub trait Stamp: Ord + Copy {
    /// Whether a purge stamped `mark` came after a fetch that started at `born`.
    fn after(mark: Self, born: Self) -> bool;
}

/// Event counts (the store's purge sequence, `corral-cache`'s tick): every purge takes a number
/// of its own, later than the one a fetch noted when it started, so only a greater mark is
/// later.
impl Stamp for u64 {
    fn after(mark: u64, born: u64) -> bool {
        mark > born
    }
}

/// Wall-clock milliseconds since the Unix epoch, shared between replicas through Redis. A
/// purge and a fetch start in the same millisecond cannot be ordered, so the purge covers the
/// fetch: a needless refetch rather than a resurrected entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallMs(pub u64);

impl WallMs {
    /// `t` in milliseconds since the Unix epoch (0 before it).
    pub fn of(t: std::time::SystemTime) -> WallMs {
        WallMs(
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }
}

impl Stamp for WallMs {
    fn after(mark: WallMs, born: WallMs) -> bool {
        mark >= born
    }
}

/// Judges an entry whose fetch started at `born` by `marks`, each a purge's mode and stamp.
pub fn judge<T: Stamp>(born: T, marks: impl IntoIterator<Item = (Mode, T)>) -> Verdict {
    let mut verdict = Verdict::Fresh;
    for (mode, mark) in marks {
        if T::after(mark, born) {
            verdict = verdict.max(Verdict::of(mode));
            if verdict == Verdict::Gone {
                break; // nothing is stronger
            }
        }
    }
    verdict
}

/// Judges by one mark holding the latest hard and soft purge (`None`: never purged that way).
pub fn judge_mark<T: Stamp>(born: T, hard: Option<T>, soft: Option<T>) -> Verdict {
    judge(
        born,
        [(Mode::Hard, hard), (Mode::Soft, soft)]
            .into_iter()
            .filter_map(|(mode, at)| Some((mode, at?))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A table row: what it shows, when the entry's fetch started, the marks, the verdict.
    type Row = (&'static str, u64, &'static [(Mode, u64)], Verdict);

    #[test]
    fn a_purge_covers_what_started_before_it() {
        use Mode::{Hard, Soft};
        // (time base, entry born, marks, verdict)
        let seq: [Row; 7] = [
            ("no marks", 5, &[], Verdict::Fresh),
            ("a purge before the fetch", 5, &[(Hard, 4)], Verdict::Fresh),
            ("the purge the fetch saw", 5, &[(Hard, 5)], Verdict::Fresh),
            ("a hard purge after", 5, &[(Hard, 6)], Verdict::Gone),
            ("a soft purge after", 5, &[(Soft, 6)], Verdict::Stale),
            (
                "soft after, hard before",
                5,
                &[(Hard, 3), (Soft, 9)],
                Verdict::Stale,
            ),
            (
                "hard wins over soft",
                5,
                &[(Soft, 9), (Hard, 7)],
                Verdict::Gone,
            ),
        ];
        for (name, born, marks, want) in seq {
            assert_eq!(judge(born, marks.iter().copied()), want, "sequence: {name}");
        }
        let ms: [Row; 3] = [
            (
                "a purge a millisecond before",
                100,
                &[(Hard, 99)],
                Verdict::Fresh,
            ),
            ("the same millisecond", 100, &[(Hard, 100)], Verdict::Gone),
            ("soft, later", 100, &[(Soft, 101)], Verdict::Stale),
        ];
        for (name, born, marks, want) in ms {
            let marks = marks.iter().map(|&(m, t)| (m, WallMs(t)));
            assert_eq!(judge(WallMs(born), marks), want, "wall clock: {name}");
        }
        assert_eq!(judge_mark(5u64, None, Some(6)), Verdict::Stale);
        assert_eq!(judge_mark(5u64, Some(6), Some(6)), Verdict::Gone);
        assert_eq!(judge_mark::<u64>(5, None, None), Verdict::Fresh);
    }

    fn marks() -> impl Strategy<Value = Vec<(bool, u64)>> {
        proptest::collection::vec((any::<bool>(), 0u64..50), 0..8)
    }

    fn modes(m: &[(bool, u64)]) -> Vec<(Mode, u64)> {
        m.iter().map(|&(s, t)| (Mode::from_soft(s), t)).collect()
    }

    proptest! {
        /// The verdict is the strongest mark that came after the fetch, whatever the order.
        #[test]
        fn the_strongest_later_mark_decides(born in 0u64..50, m in marks()) {
            let m = modes(&m);
            let want = m
                .iter()
                .filter(|(_, t)| *t > born)
                .map(|(mode, _)| Verdict::of(*mode))
                .max()
                .unwrap_or(Verdict::Fresh);
            prop_assert_eq!(judge(born, m.iter().copied()), want);
            prop_assert_eq!(judge(born, m.iter().rev().copied()), want);
        }

        /// More marks never make an entry fresher, and a later fetch is never judged harder.
        #[test]
        fn marks_only_add_and_later_fetches_only_gain(
            born in 0u64..50, m in marks(), extra in marks(),
        ) {
            let (m, extra) = (modes(&m), modes(&extra));
            let base = judge(born, m.iter().copied());
            prop_assert!(judge(born, m.iter().chain(&extra).copied()) >= base);
            prop_assert!(judge(born + 1, m.iter().copied()) <= base);
            // Wall-clock stamps judge at least as hard as counts: ties count as covered.
            let wall = judge(WallMs(born), m.iter().map(|&(mode, t)| (mode, WallMs(t))));
            prop_assert!(wall >= base);
        }
    }
}
