//! How often each key was asked for, approximately and recently: the frequency filter of
//! TinyLFU (Einziger, Friedman & Manes, 2017), which decides whether a newcomer is worth the
//! entry eviction would drop for it.
//!
//! A count-min sketch: every lookup adds one to four 4-bit counters picked by the key's hash,
//! and a key's frequency is the least of its four (collisions only ever inflate a count).
//! After `10 × counters` additions every counter is halved, so the sketch forgets old
//! popularity and a formerly hot key cannot squat forever. Counters are packed sixteen to an
//! atomic word; an addition is a compare-and-swap per counter, skipped once it saturates at 15
//! (the hottest keys, whose words would otherwise bounce between cores, cost loads only).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Mixes `x` thoroughly (the SplitMix64 finaliser): every output bit depends on every input
/// bit, so the four counters of a key are independent of each other and of the store's own
/// use of the hash (shard and index bits). Without it, keys whose hashes are alike collide on
/// all four counters at once, and a key asked for once can read as popular.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(super) struct Sketch {
    words: Box<[AtomicU64]>,
    /// log2 of the number of counters.
    bits: u32,
    additions: AtomicUsize,
    /// Additions between two halvings.
    period: usize,
}

impl Sketch {
    /// A sketch of about `counters` counters: rounded up to a power of two, between 4,096
    /// (2 KiB) and 2^26 (32 MiB).
    pub(super) fn new(counters: usize) -> Sketch {
        let counters = counters.clamp(4096, 1 << 26).next_power_of_two();
        Sketch {
            words: (0..counters / 16).map(|_| AtomicU64::new(0)).collect(),
            bits: counters.trailing_zeros(),
            additions: AtomicUsize::new(0),
            period: counters * 10,
        }
    }

    /// The word and bit offset of each of `hash`'s four counters.
    fn counters(&self, hash: u64) -> [(usize, u32); 4] {
        [1u64, 2, 3, 4].map(|k| {
            let i = (mix(hash.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                >> (64 - self.bits)) as usize;
            (i / 16, (i % 16) as u32 * 4)
        })
    }

    /// Counts one more request for the key hashed to `hash`.
    pub(super) fn increment(&self, hash: u64) {
        for (word, shift) in self.counters(hash) {
            let w = &self.words[word];
            let mut old = w.load(Ordering::Relaxed);
            while (old >> shift) & 0xF < 15 {
                match w.compare_exchange_weak(
                    old,
                    old + (1 << shift),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => old = now,
                }
            }
        }
        if self.additions.fetch_add(1, Ordering::Relaxed) + 1 == self.period {
            self.halve();
        }
    }

    /// How often the key hashed to `hash` was requested lately (0..=15).
    pub(super) fn frequency(&self, hash: u64) -> u8 {
        self.counters(hash)
            .iter()
            .map(|&(word, shift)| ((self.words[word].load(Ordering::Relaxed) >> shift) & 0xF) as u8)
            .min()
            .unwrap_or(0)
    }

    /// Halves every counter: the sketch ages. Concurrent additions may land on either side.
    fn halve(&self) {
        for w in self.words.iter() {
            let _ = w.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v >> 1) & 0x7777_7777_7777_7777)
            });
        }
        self.additions.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_and_age() {
        let s = Sketch::new(4096);
        let (hot, cold) = (0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321);
        for _ in 0..20 {
            s.increment(hot);
        }
        s.increment(cold);
        assert_eq!(s.frequency(hot), 15, "saturates at 15");
        assert!((1..=2).contains(&s.frequency(cold)));
        assert_eq!(s.frequency(0x5555_5555_5555_5555), 0);
        // Fill the period with other keys: the hot key's count halves.
        for i in 0..(s.period as u64 - 21) {
            s.increment(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!(s.frequency(hot) <= 8, "{}", s.frequency(hot));
    }

    #[test]
    fn the_frequent_outrank_the_rare() {
        let s = Sketch::new(1 << 14);
        let key = |i: u64| i.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        for round in 0..8 {
            for i in 0..100 {
                s.increment(key(i)); // 100 keys asked 8 times each
            }
            for i in 0..1000 {
                s.increment(key(1_000 + round * 1000 + i)); // 8,000 keys asked once
            }
        }
        let hot = (0..100).filter(|&i| s.frequency(key(i)) >= 8).count();
        let rare = (1_000..9_000).filter(|&i| s.frequency(key(i)) >= 8).count();
        assert_eq!(hot, 100);
        assert!(rare < 80, "{rare} of 8,000 rare keys look frequent");
    }
}
