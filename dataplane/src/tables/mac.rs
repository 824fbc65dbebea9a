//! The learned MAC table: (VLAN, MAC) -> port, with aging and two bounds.
//!
//! Owned and mutated by exactly one worker thread; control reads it only through messages to
//! that worker. Memory is reserved up front for `max_entries` so learning never allocates on
//! the forwarding path.
//!
//! Bounds: the whole table holds at most `max_entries` (the config's `mac_table_max`); each port
//! holds at most its own limit (`max_macs`). When either is reached a new MAC is not learned
//! (frames to it keep flooding) and [`LearnOutcome::TableFull`] or [`LearnOutcome::PortLimit`]
//! tells the caller to count it. Expired entries are treated as absent at once and removed by
//! [`MacTable::age`].

use hashbrown::HashMap;

use super::{PortId, Timestamp};
use crate::wire::{EthernetAddress, VlanId};

/// A (VLAN, MAC) pair packed into one integer: VLAN in bits 48..60, MAC in bits 0..48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbKey(u64);

impl FdbKey {
    pub const fn new(vlan: VlanId, mac: EthernetAddress) -> FdbKey {
        FdbKey((vlan.get() as u64) << 48 | mac.to_u64())
    }

    pub fn vlan(self) -> VlanId {
        // Only built from a valid VlanId, so the id is in range.
        VlanId::new((self.0 >> 48) as u16).unwrap_or(VlanId::DEFAULT)
    }

    pub const fn mac(self) -> EthernetAddress {
        EthernetAddress::from_u64(self.0 & 0xffff_ffff_ffff)
    }
}

/// One learned entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacEntry {
    pub port: PortId,
    pub last_seen: Timestamp,
}

/// What [`MacTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnOutcome {
    /// A new entry.
    Learned,
    /// Known on the same port; its age was reset.
    Refreshed,
    /// Known on another port: the station moved and the entry now points at the new port.
    Moved { from: PortId },
    /// Not learned: the whole table is full.
    TableFull,
    /// Not learned: the port holds its limit of MACs. If the station was known on another port,
    /// that stale entry was removed (frames to it flood until it can be learned).
    PortLimit,
}

#[derive(Clone)]
pub struct MacTable {
    entries: HashMap<FdbKey, MacEntry>,
    per_port: Box<[u32]>,
    max_entries: usize,
}

impl MacTable {
    /// A table bounded to `max_entries`, with room reserved for all of them.
    pub fn new(max_entries: usize) -> MacTable {
        MacTable {
            entries: HashMap::with_capacity(max_entries),
            per_port: vec![0; PortId::MAX_PORTS].into_boxed_slice(),
            max_entries,
        }
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Changes the bound. Shrinking below the current size keeps the entries that are there
    /// (they age out) and refuses new ones until the table is under the bound.
    pub fn set_max_entries(&mut self, max_entries: usize) {
        if max_entries > self.entries.capacity() {
            self.entries.reserve(max_entries - self.entries.len());
        }
        self.max_entries = max_entries;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Learned entries on `port`.
    pub fn port_count(&self, port: PortId) -> u32 {
        self.per_port.get(port.index()).copied().unwrap_or(0)
    }

    /// The port a live entry points at. Entries idle for `aging_ms` or more are absent.
    #[inline]
    pub fn lookup(&self, key: FdbKey, now: Timestamp, aging_ms: u64) -> Option<PortId> {
        match self.entries.get(&key) {
            Some(e) if now.millis_since(e.last_seen) < aging_ms => Some(e.port),
            _ => None,
        }
    }

    /// Records that `key` was seen as a source on `port` at `now`. `port_limit` is the port's
    /// `max_macs`.
    #[inline]
    pub fn learn(
        &mut self,
        key: FdbKey,
        port: PortId,
        now: Timestamp,
        port_limit: u32,
    ) -> LearnOutcome {
        if let Some(entry) = self.entries.get_mut(&key) {
            if entry.port == port {
                entry.last_seen = now;
                return LearnOutcome::Refreshed;
            }
            let from = entry.port;
            if self.per_port[port.index()] >= port_limit {
                self.entries.remove(&key);
                self.per_port[from.index()] -= 1;
                return LearnOutcome::PortLimit;
            }
            entry.port = port;
            entry.last_seen = now;
            self.per_port[from.index()] -= 1;
            self.per_port[port.index()] += 1;
            return LearnOutcome::Moved { from };
        }
        if self.entries.len() >= self.max_entries {
            return LearnOutcome::TableFull;
        }
        if self.per_port[port.index()] >= port_limit {
            return LearnOutcome::PortLimit;
        }
        self.entries.insert(
            key,
            MacEntry {
                port,
                last_seen: now,
            },
        );
        self.per_port[port.index()] += 1;
        LearnOutcome::Learned
    }

    /// Removes one entry; returns whether it was there.
    pub fn remove(&mut self, key: FdbKey) -> bool {
        match self.entries.remove(&key) {
            Some(e) => {
                self.per_port[e.port.index()] -= 1;
                true
            }
            None => false,
        }
    }

    /// Removes entries idle for `aging_ms` or more; returns how many.
    pub fn age(&mut self, now: Timestamp, aging_ms: u64) -> usize {
        self.retain(|_, e| now.millis_since(e.last_seen) < aging_ms)
    }

    /// Keeps the entries for which `keep` is true; returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(FdbKey, &MacEntry) -> bool) -> usize {
        let per_port = &mut self.per_port;
        let before = self.entries.len();
        self.entries.retain(|k, e| {
            let kept = keep(*k, e);
            if !kept {
                per_port[e.port.index()] -= 1;
            }
            kept
        });
        before - self.entries.len()
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.per_port.fill(0);
    }

    pub fn iter(&self) -> impl Iterator<Item = (FdbKey, &MacEntry)> {
        self.entries.iter().map(|(k, e)| (*k, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(vlan: u16, last: u8) -> FdbKey {
        FdbKey::new(
            VlanId::new(vlan).unwrap(),
            EthernetAddress([2, 0, 0, 0, 0, last]),
        )
    }

    const AGING: u64 = 300_000;

    #[test]
    fn key_packs_vlan_and_mac() {
        let k = key(4094, 7);
        assert_eq!(k.vlan().get(), 4094);
        assert_eq!(k.mac(), EthernetAddress([2, 0, 0, 0, 0, 7]));
        assert_ne!(key(1, 7), key(2, 7));
    }

    #[test]
    fn learn_lookup_move_and_age() {
        let mut t = MacTable::new(16);
        let t0 = Timestamp::from_secs(1);
        assert_eq!(
            t.learn(key(1, 1), PortId(0), t0, u32::MAX),
            LearnOutcome::Learned
        );
        assert_eq!(t.lookup(key(1, 1), t0, AGING), Some(PortId(0)));
        assert_eq!(t.lookup(key(2, 1), t0, AGING), None, "VLANs are separate");
        assert_eq!(
            t.learn(key(1, 1), PortId(0), t0, u32::MAX),
            LearnOutcome::Refreshed
        );
        assert_eq!(
            t.learn(key(1, 1), PortId(3), t0, u32::MAX),
            LearnOutcome::Moved { from: PortId(0) }
        );
        assert_eq!(t.port_count(PortId(0)), 0);
        assert_eq!(t.port_count(PortId(3)), 1);
        let later = Timestamp::from_millis(t0.millis() + AGING);
        assert_eq!(
            t.lookup(key(1, 1), later, AGING),
            None,
            "expired entries are absent"
        );
        assert_eq!(t.age(later, AGING), 1);
        assert!(t.is_empty());
        assert_eq!(t.port_count(PortId(3)), 0);
    }

    #[test]
    fn bounds_refuse_new_entries() {
        let mut t = MacTable::new(2);
        let now = Timestamp::from_secs(1);
        assert_eq!(t.learn(key(1, 1), PortId(0), now, 1), LearnOutcome::Learned);
        assert_eq!(
            t.learn(key(1, 2), PortId(0), now, 1),
            LearnOutcome::PortLimit
        );
        assert_eq!(t.learn(key(1, 2), PortId(1), now, 1), LearnOutcome::Learned);
        assert_eq!(
            t.learn(key(1, 3), PortId(2), now, 1),
            LearnOutcome::TableFull
        );
        // A move onto a full port drops the stale entry.
        assert_eq!(
            t.learn(key(1, 2), PortId(0), now, 1),
            LearnOutcome::PortLimit
        );
        assert_eq!(t.lookup(key(1, 2), now, AGING), None);
        assert_eq!(t.len(), 1);
    }
}
