//! The learned session table: Qlik session cookie value -> node, idle-expiring and bounded.
//!
//! Sharded by dashmap. A lookup refreshes the entry's last-seen second through an atomic, under
//! the shard's read lock only. Keys that are lowercase GUIDs (what a QPS issues) are stored as
//! 16 bytes; other values as boxed strings. Expiry and eviction run in [`StickyTable::sweep`]
//! (a background task), never on the request path: when the table grows past its bound, the
//! entries seen longest ago go first.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::clock;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionKey {
    /// A GUID's 128 bits as two words: aligned to 8 bytes, not 16, so a key is 24 bytes and a
    /// table slot 40 (48 with a `u128`).
    Guid([u64; 2]),
    Text(Box<[u8]>),
}

impl SessionKey {
    pub fn from_value(v: &[u8]) -> SessionKey {
        match parse_guid(v) {
            Some(words) => SessionKey::Guid(words),
            None => SessionKey::Text(v.into()),
        }
    }
}

/// Hex digit values; 0xff for a byte that is not a lowercase hex digit.
static HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// A lowercase `8-4-4-4-12` GUID as its high and low 64 bits; `None` for anything else.
fn parse_guid(v: &[u8]) -> Option<[u64; 2]> {
    let v: &[u8; 36] = v.try_into().ok()?;
    if v[8] != b'-' || v[13] != b'-' || v[18] != b'-' || v[23] != b'-' {
        return None;
    }
    // Every digit's table entry is or-ed into `bad`: 0xff anywhere marks a non-digit.
    let mut bad = 0u8;
    let mut hex = |acc: u64, digits: &[u8]| {
        digits.iter().fold(acc, |a, &b| {
            let d = HEX[b as usize];
            bad |= d;
            (a << 4) | u64::from(d & 15)
        })
    };
    let hi = hex(0, &v[0..8]);
    let hi = hex(hi, &v[9..13]);
    let hi = hex(hi, &v[14..18]);
    let lo = hex(0, &v[19..23]);
    let lo = hex(lo, &v[24..36]);
    (bad & 0xf0 == 0).then_some([hi, lo])
}

#[derive(Debug)]
struct Entry {
    node: u32,
    last_seen: AtomicU32,
    /// When the entry was last written to the shared store (learned, or refreshed there). Fits
    /// in the padding of the map's slot (24 bytes of key, 12 of entry, aligned to 8).
    stored: AtomicU32,
}

#[derive(Debug)]
pub struct StickyTable {
    /// foldhash, seeded per process: the keys are values the nodes issued, and a lookup's hash
    /// is a tenth of SipHash's cost.
    map: DashMap<SessionKey, Entry, foldhash::fast::RandomState>,
    max: AtomicUsize,
    idle_secs: AtomicU32,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

impl StickyTable {
    pub fn new(max: usize, idle_secs: u32) -> StickyTable {
        StickyTable {
            map: DashMap::default(),
            max: AtomicUsize::new(max),
            idle_secs: AtomicU32::new(idle_secs),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
        }
    }

    /// New limits from a reloaded configuration.
    pub fn set_limits(&self, max: usize, idle_secs: u32) {
        self.max.store(max, Ordering::Relaxed);
        self.idle_secs.store(idle_secs, Ordering::Relaxed);
    }

    /// The node index of a learned session, refreshing it; `None` if unknown or idle too long.
    pub fn lookup(&self, value: &[u8]) -> Option<u32> {
        self.lookup_key(&SessionKey::from_value(value))
    }

    pub fn lookup_key(&self, key: &SessionKey) -> Option<u32> {
        self.lookup_at(key, clock::now_secs())
    }

    fn lookup_at(&self, key: &SessionKey, now: u32) -> Option<u32> {
        let e = self.map.get(key)?;
        let seen = e.last_seen.load(Ordering::Relaxed);
        if now.saturating_sub(seen) > self.idle_secs.load(Ordering::Relaxed) {
            return None;
        }
        if seen != now {
            e.last_seen.store(now, Ordering::Relaxed);
        }
        Some(e.node)
    }

    /// Records (or moves) a session to a node. Returns the node it was on before, if any.
    pub fn learn(&self, value: &[u8], node: u32) -> Option<u32> {
        self.learn_key(SessionKey::from_value(value), node)
    }

    pub fn learn_key(&self, key: SessionKey, node: u32) -> Option<u32> {
        let now = clock::now_secs();
        let e = Entry {
            node,
            last_seen: AtomicU32::new(now),
            stored: AtomicU32::new(now),
        };
        self.map.insert(key, e).map(|old| old.node)
    }

    /// True (once) when the entry was last written to the shared store more than `every`
    /// seconds ago: the caller writes it again, so that the store's TTL follows use here.
    pub fn store_refresh_due(&self, key: &SessionKey, every: u32) -> bool {
        self.store_refresh_due_at(key, every, clock::now_secs())
    }

    fn store_refresh_due_at(&self, key: &SessionKey, every: u32, now: u32) -> bool {
        let Some(e) = self.map.get(key) else {
            return false;
        };
        let stored = e.stored.load(Ordering::Relaxed);
        now.saturating_sub(stored) > every
            && e.stored
                .compare_exchange(stored, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Forgets a session (the node removed its cookie). Returns its node.
    pub fn forget(&self, value: &[u8]) -> Option<u32> {
        self.forget_key(&SessionKey::from_value(value))
    }

    pub fn forget_key(&self, key: &SessionKey) -> Option<u32> {
        self.map.remove(key).map(|(_, e)| e.node)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn expirations(&self) -> u64 {
        self.expirations.load(Ordering::Relaxed)
    }

    /// True when the table holds more entries than its bound.
    pub fn over_limit(&self) -> bool {
        self.map.len() > self.max.load(Ordering::Relaxed)
    }

    /// Counts learned sessions per node index.
    pub fn count_by_node(&self) -> std::collections::HashMap<u32, usize> {
        let mut m = std::collections::HashMap::new();
        for e in self.map.iter() {
            *m.entry(e.node).or_default() += 1;
        }
        m
    }

    /// Counts learned sessions per node index: all of them, and those seen at or after
    /// `since` (clock seconds).
    pub fn count_by_node_since(
        &self,
        since: u32,
    ) -> std::collections::HashMap<u32, (usize, usize)> {
        let mut m: std::collections::HashMap<u32, (usize, usize)> =
            std::collections::HashMap::new();
        for e in self.map.iter() {
            let c = m.entry(e.node).or_default();
            c.0 += 1;
            if e.last_seen.load(Ordering::Relaxed) >= since {
                c.1 += 1;
            }
        }
        m
    }

    /// Drops idle entries, then, if still over the bound, the least recently seen ones down to
    /// 98% of the bound. Returns (expired, evicted).
    pub fn sweep(&self) -> (u64, u64) {
        self.sweep_at(clock::now_secs())
    }

    fn sweep_at(&self, now: u32) -> (u64, u64) {
        let idle = self.idle_secs.load(Ordering::Relaxed);
        let before = self.map.len();
        self.map
            .retain(|_, e| now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) <= idle);
        let expired = before.saturating_sub(self.map.len()) as u64;
        self.expirations.fetch_add(expired, Ordering::Relaxed);

        let max = self.max.load(Ordering::Relaxed);
        let len = self.map.len();
        let mut evicted = 0u64;
        if len > max {
            let target = max - max / 50;
            let excess = len - target;
            let mut seen: Vec<u32> = self
                .map
                .iter()
                .map(|e| e.last_seen.load(Ordering::Relaxed))
                .collect();
            let nth = excess.min(seen.len() - 1);
            let (_, &mut cutoff, _) = seen.select_nth_unstable(nth);
            drop(seen);
            let mut budget = excess;
            // Strictly older than the cutoff first, then ties at the cutoff until the budget
            // is spent.
            self.map.retain(|_, e| {
                if budget > 0 && e.last_seen.load(Ordering::Relaxed) < cutoff {
                    budget -= 1;
                    false
                } else {
                    true
                }
            });
            self.map.retain(|_, e| {
                if budget > 0 && e.last_seen.load(Ordering::Relaxed) == cutoff {
                    budget -= 1;
                    false
                } else {
                    true
                }
            });
            evicted = (excess - budget) as u64;
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        (expired, evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_keys_are_compact_and_exact() {
        let g = b"f2b68d0c-e0f0-47fb-8fd6-60a95237db78";
        assert_eq!(
            SessionKey::from_value(g),
            SessionKey::Guid([0xf2b6_8d0c_e0f0_47fb, 0x8fd6_60a9_5237_db78])
        );
        for bad in [
            &b"f2b68d0c-e0f0-47fb-8fd6-60a95237db7g"[..],
            b"f2b68d0c-e0f0-47fb-8fd6_60a95237db78",
            b"f2b68d0ce-0f0-47fb-8fd6-60a95237db78",
            b"f2b68d0c-e0f0-47fb-8fd6-60a95237db780",
        ] {
            assert!(matches!(SessionKey::from_value(bad), SessionKey::Text(_)));
        }
        assert!(matches!(
            SessionKey::from_value(b"F2B68D0C-E0F0-47FB-8FD6-60A95237DB78"),
            SessionKey::Text(_)
        ));
        assert!(matches!(
            SessionKey::from_value(b"abc"),
            SessionKey::Text(_)
        ));
        assert_ne!(
            SessionKey::from_value(g),
            SessionKey::from_value(b"f2b68d0c-e0f0-47fb-8fd6-60a95237db79")
        );
    }

    #[test]
    fn learn_lookup_forget() {
        let t = StickyTable::new(100, 60);
        assert_eq!(t.lookup(b"s1"), None);
        assert_eq!(t.learn(b"s1", 2), None);
        assert_eq!(t.lookup(b"s1"), Some(2));
        assert_eq!(t.learn(b"s1", 3), Some(2));
        assert_eq!(t.lookup(b"s1"), Some(3));
        assert_eq!(t.forget(b"s1"), Some(3));
        assert_eq!(t.lookup(b"s1"), None);
    }

    #[test]
    fn bounded_with_oldest_evicted_first() {
        let t = StickyTable::new(100, 3600);
        for i in 0..100u32 {
            t.learn(format!("old{i}").as_bytes(), 0);
        }
        // Age the first hundred by rewriting their last-seen second.
        for e in t.map.iter() {
            e.last_seen.store(0, Ordering::Relaxed);
        }
        for i in 0..50u32 {
            t.learn(format!("new{i}").as_bytes(), 1);
            // Seen later than the old ones, whatever the clock says now.
            let key = SessionKey::from_value(format!("new{i}").as_bytes());
            t.map
                .get(&key)
                .unwrap()
                .last_seen
                .store(10, Ordering::Relaxed);
        }
        assert!(t.over_limit());
        let (_, evicted) = t.sweep_at(20);
        assert_eq!(t.len(), 98);
        assert_eq!(evicted, 52);
        assert_eq!(t.evictions(), 52);
        for i in 0..50u32 {
            assert_eq!(
                t.lookup(format!("new{i}").as_bytes()),
                Some(1),
                "new{i} evicted"
            );
        }
    }

    #[test]
    fn store_refresh_is_due_once_per_period() {
        let t = StickyTable::new(100, 60);
        t.learn(b"s", 1);
        let k = SessionKey::from_value(b"s");
        let now = clock::now_secs();
        assert!(!t.store_refresh_due_at(&k, 10, now), "just learned");
        assert!(!t.store_refresh_due_at(&k, 10, now + 10));
        assert!(t.store_refresh_due_at(&k, 10, now + 11));
        assert!(
            !t.store_refresh_due_at(&k, 10, now + 12),
            "due once a period"
        );
        assert!(t.store_refresh_due_at(&k, 10, now + 22));
        assert!(!t.store_refresh_due_at(&SessionKey::from_value(b"x"), 10, now + 99));
    }

    #[test]
    fn idle_entries_expire() {
        let t = StickyTable::new(100, 10);
        t.learn(b"a", 1);
        t.learn(b"b", 1);
        let now = clock::now_secs();
        let a = SessionKey::from_value(b"a");
        let b = SessionKey::from_value(b"b");
        // Seen at `now`: alive 10 s later, gone 11 s later.
        assert_eq!(t.lookup_at(&a, now + 10), Some(1));
        assert_eq!(t.lookup_at(&b, now + 5), Some(1));
        assert_eq!(t.lookup_at(&a, now + 10 + 11), None);
        // `a` was last refreshed at now + 10 and `b` at now + 5: a sweep at now + 16 drops `b`.
        let (expired, evicted) = t.sweep_at(now + 16);
        assert_eq!((expired, evicted), (1, 0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup_at(&a, now + 16), Some(1));
        assert_eq!(t.lookup_at(&b, now + 16), None);
    }
}
