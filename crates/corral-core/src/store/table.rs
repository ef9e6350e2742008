//! The table under the store: URLs to their variants, bounded in bytes, evicted by CLOCK.
//!
//! # Layout
//! [`SHARDS`] shards, each behind its own read-write lock. A shard keeps its slots in a slab
//! (`Vec<Option<Slot>>`, vacant slots reused through a free list) and finds them through a
//! hash index of 4-byte slot numbers. A slot is 16 bytes: the newest variant (whose
//! allocation also holds the key, so the slot needs no key of its own), the bytes charged and
//! the latest expiry, so eviction and the expiry sweep never chase a pointer into an entry.
//! The few URLs with several variants keep the whole list in the shard's `many` map. The
//! CLOCK's *referenced* bits live in a bitmap beside the slab. Per stored URL that is ~17
//! bytes of slab and ~10 of index; a general-purpose concurrent cache spends several hundred
//! (nodes, queues, timer wheels, frequency sketches), which for small objects is more than
//! the objects.
//!
//! # Reads
//! A read takes the shard's read lock, finds the slot and sets its *referenced* bit (only when
//! unset, so hot entries do not bounce a cache line between cores). No allocation.
//!
//! # Eviction
//! One byte bound for the whole table, kept in an atomic sum. An insert that takes the sum over
//! the bound evicts from the shards in turn, one shard lock at a time: each runs its CLOCK hand
//! over its slab, evicting expired slots and unreferenced ones, and clearing the bit of
//! referenced ones (they get a second chance). Round-robin over shards plus CLOCK within each
//! approximates one global CLOCK, an LRU approximation that costs one bit per entry.
//!
//! # Admission
//! Recency alone lets a crawl of one-off URLs flush the popular ones. Every read counts its
//! key in a frequency sketch (`sketch.rs`, TinyLFU), and a key stored for the first time
//! must be requested at least as often lately as the victim the hand would drop for it, or it
//! is dropped itself (`Table::make_room`).
//!
//! Invariant: `bytes` is the sum of `charged` over every occupied slot of every shard, and
//! `len` their count, except transiently while a writer holds a shard lock. A slot's `many`
//! bit is set exactly when the shard's `many` map holds its list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use std::hash::BuildHasher;

use hashbrown::HashTable;
use parking_lot::RwLock;

use super::sketch::Sketch;
use crate::clock::Clock;
use crate::entry::Entry;
use crate::key::KeyRef;

/// Shards: enough that two writers rarely meet, few enough that a tiny bound still spreads.
pub(super) const SHARDS: usize = 64;

/// Slots a scan visits per hold of a shard's read lock.
const SCAN_STEP: usize = 1024;

/// The variants stored under one URL, newest first, as they leave the table.
#[derive(Debug, Clone)]
pub(super) enum Variants {
    One(Entry),
    Many(Box<[Entry]>),
}

impl Variants {
    pub(super) fn as_slice(&self) -> &[Entry] {
        match self {
            Variants::One(e) => std::slice::from_ref(e),
            Variants::Many(list) => list,
        }
    }
}

/// Bytes charged for `variants` (each entry's size counts its copy of the key).
fn charge(variants: &[Entry]) -> u64 {
    variants.iter().map(|e| e.size() as u64).sum()
}

/// The latest expiry among `variants`, in whole seconds since the epoch, rounded up.
fn latest_expiry(variants: &[Entry]) -> u32 {
    let latest = variants
        .iter()
        .map(|e| e.expires_at())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let d = latest
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(u32::MAX)
}

/// What a change to one key's variants should be.
pub(super) enum Change {
    /// Leave the slot as it is.
    Keep,
    /// Replace the variants (an empty list removes the key).
    Set(Vec<Entry>),
}

/// Set in `Slot::charged` when the URL has several variants, kept in the shard's `many` map.
const MANY: u32 = 1 << 31;

/// The largest charge a slot records: a URL whose variants weigh more is not stored.
pub(super) const MAX_CHARGE: u64 = (MANY - 1) as u64;

/// One stored URL. The hash is not kept: the index's own tag byte already rules out almost
/// every wrong candidate, and a rehash can hash the key again.
struct Slot {
    /// The newest variant; it holds the key.
    first: Entry,
    /// Bytes charged (below [`MANY`]), and the [`MANY`] bit.
    charged: u32,
    /// Seconds since the epoch after which no variant is usable.
    expires: u32,
}

impl Slot {
    fn charged(&self) -> u64 {
        u64::from(self.charged & !MANY)
    }
}

#[derive(Default)]
struct Shard {
    index: HashTable<u32>,
    slots: Vec<Option<Slot>>,
    /// One referenced bit per slot, set by readers under the read lock.
    referenced: Vec<AtomicU64>,
    /// The variant lists of the URLs that have several, by slot.
    many: HashMap<u32, Box<[Entry]>, foldhash::fast::RandomState>,
    free: Vec<u32>,
    hand: usize,
}

impl Shard {
    fn find(&self, hash: u64, key: KeyRef<'_>) -> Option<u32> {
        self.index
            .find(hash, |&i| {
                self.slots[i as usize]
                    .as_ref()
                    .is_some_and(|s| s.first.has_key(key))
            })
            .copied()
    }

    fn slot(&self, i: u32) -> &Slot {
        self.slots[i as usize]
            .as_ref()
            .expect("the index only names occupied slots")
    }

    /// The variants of occupied slot `i`, newest first.
    fn variants(&self, i: u32) -> &[Entry] {
        let slot = self.slot(i);
        if slot.charged & MANY == 0 {
            return std::slice::from_ref(&slot.first);
        }
        self.many.get(&i).map_or(&[], |list| &list[..])
    }

    fn mark_referenced(&self, i: u32) {
        let (word, bit) = (i as usize / 64, 1u64 << (i % 64));
        if self.referenced[word].load(Ordering::Relaxed) & bit == 0 {
            self.referenced[word].fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Clears slot `i`'s referenced bit; returns whether it was set.
    fn take_referenced(&self, i: u32) -> bool {
        let (word, bit) = (i as usize / 64, 1u64 << (i % 64));
        self.referenced[word].fetch_and(!bit, Ordering::Relaxed) & bit != 0
    }

    /// Stores `variants` (not empty), which weigh `charged` (at most [`MAX_CHARGE`]), in a
    /// free slot.
    fn occupy(
        &mut self,
        hash: u64,
        mut variants: Vec<Entry>,
        charged: u64,
        referenced: bool,
        hasher: &foldhash::fast::RandomState,
    ) {
        let mut slot = Slot {
            first: variants[0].clone(),
            charged: charged as u32,
            expires: latest_expiry(&variants),
        };
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                if self.slots.len() > self.referenced.len() * 64 {
                    self.referenced.push(AtomicU64::new(0));
                }
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^31 slots per shard")
            }
        };
        if variants.len() > 1 {
            slot.charged |= MANY;
            variants.shrink_to_fit();
            self.many.insert(i, variants.into_boxed_slice());
        }
        self.slots[i as usize] = Some(slot);
        if referenced {
            self.mark_referenced(i);
        }
        let Shard { index, slots, .. } = self;
        index.insert_unique(hash, i, |&j| {
            slots[j as usize]
                .as_ref()
                .map_or(0, |s| hasher.hash_one(s.first.key()))
        });
    }

    /// Empties slot `i`, which must be occupied. Returns its charge, its variants and whether
    /// it was referenced.
    fn vacate(&mut self, i: u32, hasher: &foldhash::fast::RandomState) -> (u64, Variants, bool) {
        let slot = self.slots[i as usize]
            .take()
            .expect("only occupied slots are vacated");
        if let Ok(found) = self
            .index
            .find_entry(hasher.hash_one(slot.first.key()), |&j| j == i)
        {
            found.remove();
        }
        let referenced = self.take_referenced(i);
        self.free.push(i);
        let variants = match self.many.remove(&i) {
            Some(list) if slot.charged & MANY != 0 => Variants::Many(list),
            _ => Variants::One(slot.first.clone()),
        };
        (slot.charged(), variants, referenced)
    }

    /// Runs the CLOCK hand for at most one turn, until `want` bytes are freed. Returns the
    /// bytes and slots freed; evicted variants go to `out`. One turn, not two: a referenced
    /// slot whose bit this call clears must get the time other shards take to be referenced
    /// again, or a sparse shard would evict its only, hot, slot straight after clearing it.
    ///
    /// `refuse` is asked about each live victim's key hash before it goes: `true` stops the
    /// hand there, keeping the victim, and the third value returned is `true` (the newcomer
    /// that needed the room is worth less than the victim: see `Table::make_room`).
    fn clock(
        &mut self,
        want: u64,
        now: u32,
        hasher: &foldhash::fast::RandomState,
        out: &mut Vec<Variants>,
        refuse: &dyn Fn(u64) -> bool,
    ) -> (u64, u64, bool) {
        let (mut freed, mut count) = (0u64, 0u64);
        for _ in 0..self.slots.len() {
            if freed >= want || self.slots.is_empty() {
                break;
            }
            self.hand = (self.hand + 1) % self.slots.len();
            let i = self.hand as u32;
            let evict = match &self.slots[self.hand] {
                None => false,
                Some(s) if s.expires <= now => true,
                Some(_) if self.take_referenced(i) => false,
                Some(s) => {
                    if refuse(hasher.hash_one(s.first.key())) {
                        return (freed, count, true);
                    }
                    true
                }
            };
            if evict {
                let (charged, variants, _) = self.vacate(i, hasher);
                freed += charged;
                count += 1;
                out.push(variants);
            }
        }
        (freed, count, false)
    }
}

// A slot is paid once per stored URL.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Option<Slot>>() <= 16);

#[repr(align(128))]
struct Padded<T>(T);

/// The sharded, byte-bounded table. See the module documentation.
pub(super) struct Table {
    shards: Box<[Padded<RwLock<Shard>>]>,
    hasher: foldhash::fast::RandomState,
    bytes: AtomicU64,
    len: AtomicU64,
    max_bytes: u64,
    /// The next shard to evict from.
    cursor: AtomicUsize,
    /// Where the expiry sweep goes on: shard and slot.
    sweep: parking_lot::Mutex<(usize, usize)>,
    /// Recent request frequency per key, for admission.
    sketch: Sketch,
    /// New keys admission turned away (for the operator: a high rate means the bound is
    /// too small for the working set, or a crawl is passing through).
    refused: AtomicU64,
    /// The store's clock: expiry in `make_room` and the sweep.
    clock: Arc<dyn Clock>,
}

fn secs_of(now: SystemTime) -> u32 {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl Table {
    pub(super) fn new(max_bytes: u64, clock: Arc<dyn Clock>) -> Table {
        Table {
            shards: (0..SHARDS)
                .map(|_| Padded(RwLock::new(Shard::default())))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            bytes: AtomicU64::new(0),
            len: AtomicU64::new(0),
            max_bytes,
            cursor: AtomicUsize::new(0),
            sweep: parking_lot::Mutex::new((0, 0)),
            // Eight 4-bit counters per entry the bound could hold at ~512 B each (4 B per
            // entry, ~0.8 % of the bound): few enough collisions that a one-off key rarely
            // looks popular.
            sketch: Sketch::new(usize::try_from(max_bytes / 64).unwrap_or(usize::MAX)),
            refused: AtomicU64::new(0),
            clock,
        }
    }

    fn locate(&self, key: KeyRef<'_>) -> (u64, &RwLock<Shard>) {
        let hash = self.hasher.hash_one(key);
        // The index uses the low bits (bucket) and the top seven (tag); the shard takes bits
        // the index does not look at, so keys spread evenly within a shard too.
        let shard = (hash >> 32) as usize % SHARDS;
        (hash, &self.shards[shard].0)
    }

    /// How many variants `key` holds (0 if absent), without marking it used.
    pub(super) fn variants_of(&self, key: KeyRef<'_>) -> usize {
        let (hash, shard) = self.locate(key);
        let shard = shard.read();
        shard.find(hash, key).map_or(0, |i| shard.variants(i).len())
    }

    /// How often `key` was asked for lately (the admission sketch's estimate, 0 to 15),
    /// without counting this as a request.
    pub(super) fn frequency(&self, key: KeyRef<'_>) -> u8 {
        self.sketch.frequency(self.hasher.hash_one(key))
    }

    /// Runs `read` on the variants of `key` under the shard's read lock, and marks the key
    /// recently used.
    pub(super) fn read<R>(&self, key: KeyRef<'_>, read: impl FnOnce(&[Entry]) -> R) -> Option<R> {
        let (hash, shard) = self.locate(key);
        self.sketch.increment(hash);
        let shard = shard.read();
        let i = shard.find(hash, key)?;
        shard.mark_referenced(i);
        Some(read(shard.variants(i)))
    }

    /// Changes the variants of `key` (absent: an empty slice) as `change` decides. Every
    /// entry set must be stored under `key`. Returns the variant lists that left the table
    /// (replaced, removed or evicted to make room); drop them after any lock is released. A
    /// list weighing more than [`MAX_CHARGE`] is not stored.
    pub(super) fn update(
        &self,
        key: KeyRef<'_>,
        change: impl FnOnce(&[Entry]) -> Change,
    ) -> Vec<Variants> {
        let (hash, shard) = self.locate(key);
        let mut gone = Vec::new();
        // Set when a list was stored: whether its key is new.
        let mut stored_new = None;
        {
            let mut shard = shard.write();
            let found = shard.find(hash, key);
            let current = found.map_or(&[][..], |i| shard.variants(i));
            let Change::Set(list) = change(current) else {
                return gone;
            };
            debug_assert!(list.iter().all(|e| e.has_key(key)));
            let mut referenced = false;
            if let Some(i) = found {
                let (charged, variants, was_referenced) = shard.vacate(i, &self.hasher);
                referenced = was_referenced;
                self.bytes.fetch_sub(charged, Ordering::Relaxed);
                self.len.fetch_sub(1, Ordering::Relaxed);
                gone.push(variants);
            }
            let charged = charge(&list);
            if !list.is_empty() && charged <= MAX_CHARGE {
                shard.occupy(hash, list, charged, referenced, &self.hasher);
                self.bytes.fetch_add(charged, Ordering::Relaxed);
                self.len.fetch_add(1, Ordering::Relaxed);
                stored_new = Some(found.is_none());
            }
        }
        if let Some(new_key) = stored_new {
            self.make_room(&mut gone, new_key.then_some((hash, key)));
        }
        gone
    }

    /// Evicts until the table is within its bound, one shard at a time. Two rounds over the
    /// shards at most: the first may only clear referenced bits.
    ///
    /// A `newcomer` (a key just stored for the first time: its hash and key) must earn its
    /// place (TinyLFU admission): when the hand reaches a live victim that was requested more
    /// often lately than the newcomer, the newcomer goes instead and the victim stays. Ties
    /// admit, so a cache of equally cold keys still behaves as an LRU approximation.
    fn make_room(&self, gone: &mut Vec<Variants>, mut newcomer: Option<(u64, KeyRef<'_>)>) {
        let now = secs_of(self.clock.now());
        for _ in 0..SHARDS * 2 {
            let over = self
                .bytes
                .load(Ordering::Relaxed)
                .saturating_sub(self.max_bytes);
            if over == 0 {
                return;
            }
            let worth = newcomer.map(|(hash, _)| self.sketch.frequency(hash));
            let refuse = |victim: u64| worth.is_some_and(|w| self.sketch.frequency(victim) > w);
            let s = self.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let (freed, count, refused) =
                self.shards[s]
                    .0
                    .write()
                    .clock(over, now, &self.hasher, gone, &refuse);
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
            self.len.fetch_sub(count, Ordering::Relaxed);
            if refused {
                if let Some((hash, key)) = newcomer.take() {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    self.remove_newcomer(hash, key, gone);
                }
            }
        }
    }

    /// Takes a refused newcomer back out (if still there).
    fn remove_newcomer(&self, hash: u64, key: KeyRef<'_>, gone: &mut Vec<Variants>) {
        let (_, shard) = self.locate(key);
        let mut shard = shard.write();
        if let Some(i) = shard.find(hash, key) {
            let (charged, variants, _) = shard.vacate(i, &self.hasher);
            self.bytes.fetch_sub(charged, Ordering::Relaxed);
            self.len.fetch_sub(1, Ordering::Relaxed);
            gone.push(variants);
        }
    }

    /// Removes the keys whose variants have all expired among the next `budget` slots after
    /// the sweep cursor, which then moves on (wrapping round the shards). A shard's write lock
    /// is held for at most [`SCAN_STEP`] slots. Moving past a shard's last slot counts as a slot,
    /// so that every call makes progress, and `capacity() + SHARDS` covers one lap.
    pub(super) fn sweep_expired(&self, budget: usize) -> Vec<Variants> {
        let now = secs_of(self.clock.now());
        let mut gone = Vec::new();
        let mut cursor = self.sweep.lock();
        let mut left = budget;
        while left > 0 {
            let (s, from) = *cursor;
            let mut shard = self.shards[s].0.write();
            let to = shard.slots.len().min(from + left.min(SCAN_STEP));
            for i in from..to {
                if shard.slots[i]
                    .as_ref()
                    .is_some_and(|slot| slot.expires <= now)
                {
                    let (charged, variants, _) = shard.vacate(i as u32, &self.hasher);
                    self.bytes.fetch_sub(charged, Ordering::Relaxed);
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    gone.push(variants);
                }
            }
            left -= (to - from).max(1).min(left);
            *cursor = if to < shard.slots.len() {
                (s, to)
            } else {
                ((s + 1) % SHARDS, 0)
            };
        }
        gone
    }

    /// Slots in use or free (vacant ones are reused): what a full sweep walks.
    pub(super) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.0.read().slots.len()).sum()
    }

    /// Visits every stored key, [`SCAN_STEP`] slots per hold of a shard's read lock, calling
    /// `pause` between holds. A long read hold would make a writer wait, and the requests
    /// queued behind that writer with it; `pause` lets a caller pace a scan of millions of
    /// keys so that it does not starve request threads sharing its core. Keys stored or
    /// removed during the scan may be visited or not.
    pub(super) fn for_each(
        &self,
        mut visit: impl FnMut(KeyRef<'_>, &[Entry]),
        pause: &mut dyn FnMut(),
    ) {
        for shard in self.shards.iter() {
            let mut from = 0;
            loop {
                {
                    let shard = shard.0.read();
                    let to = shard.slots.len().min(from + SCAN_STEP);
                    for i in from.min(to)..to {
                        if let Some(slot) = &shard.slots[i] {
                            visit(slot.first.key(), shard.variants(i as u32));
                        }
                    }
                    from = to;
                    if to >= shard.slots.len() {
                        break;
                    }
                }
                pause();
            }
            pause();
        }
    }

    /// Stored keys.
    pub(super) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// Bytes charged.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(super) fn admissions_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
