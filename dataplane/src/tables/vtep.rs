//! The remote VTEP table of the VXLAN ports: (VLAN, inner MAC) -> the remote tunnel endpoint
//! that MAC sits behind, like the Linux vxlan device's own FDB (`bridge fdb ... dst IP`).
//!
//! A VNI is a bridge port mapped to one VLAN, so the bridge's [`MacTable`](super::MacTable)
//! says "behind the VXLAN port" and this table says "behind which remote". Static entries come
//! from configuration (in the published state); this table holds only what was learned from
//! decapsulated frames (inner source MAC -> outer source IP). Owned by one worker thread;
//! memory for `max_entries` is reserved up front; when full, new remotes are not learned
//! (frames to them go to the flood list) and the caller counts it.

use std::net::Ipv4Addr;

use hashbrown::HashMap;

use super::{FdbKey, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEntry {
    pub remote: Ipv4Addr,
    pub last_seen: Timestamp,
}

/// What [`RemoteTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteLearn {
    Learned,
    Refreshed,
    Moved,
    TableFull,
}

#[derive(Clone)]
pub struct RemoteTable {
    entries: HashMap<FdbKey, RemoteEntry>,
    max_entries: usize,
}

impl RemoteTable {
    pub fn new(max_entries: usize) -> RemoteTable {
        RemoteTable {
            entries: HashMap::with_capacity(max_entries.min(1 << 16)),
            max_entries,
        }
    }

    pub fn set_max_entries(&mut self, max_entries: usize) {
        self.max_entries = max_entries;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The remote of a live entry; entries idle for `aging_ms` or more are absent.
    #[inline]
    pub fn lookup(&self, key: FdbKey, now: Timestamp, aging_ms: u64) -> Option<Ipv4Addr> {
        match self.entries.get(&key) {
            Some(e) if now.millis_since(e.last_seen) < aging_ms => Some(e.remote),
            _ => None,
        }
    }

    #[inline]
    pub fn learn(&mut self, key: FdbKey, remote: Ipv4Addr, now: Timestamp) -> RemoteLearn {
        if let Some(e) = self.entries.get_mut(&key) {
            let moved = e.remote != remote;
            e.remote = remote;
            e.last_seen = now;
            return if moved {
                RemoteLearn::Moved
            } else {
                RemoteLearn::Refreshed
            };
        }
        if self.entries.len() >= self.max_entries {
            return RemoteLearn::TableFull;
        }
        self.entries.insert(
            key,
            RemoteEntry {
                remote,
                last_seen: now,
            },
        );
        RemoteLearn::Learned
    }

    pub fn age(&mut self, now: Timestamp, aging_ms: u64) -> usize {
        self.retain(|_, e| now.millis_since(e.last_seen) < aging_ms)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(FdbKey, &RemoteEntry) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|k, e| keep(*k, e));
        before - self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (FdbKey, &RemoteEntry)> {
        self.entries.iter().map(|(k, e)| (*k, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetAddress, VlanId};

    #[test]
    fn learn_move_age_and_bound() {
        let key = |m| {
            FdbKey::new(
                VlanId::new(10).unwrap(),
                EthernetAddress([2, 0, 0, 0, 0, m]),
            )
        };
        let (a, b) = (
            Ipv4Addr::new(192, 168, 77, 2),
            Ipv4Addr::new(192, 168, 77, 3),
        );
        let mut t = RemoteTable::new(2);
        let t0 = Timestamp::from_secs(1);
        assert_eq!(t.learn(key(1), a, t0), RemoteLearn::Learned);
        assert_eq!(t.learn(key(1), a, t0), RemoteLearn::Refreshed);
        assert_eq!(t.learn(key(1), b, t0), RemoteLearn::Moved);
        assert_eq!(t.lookup(key(1), t0, 1000), Some(b));
        assert_eq!(t.learn(key(2), a, t0), RemoteLearn::Learned);
        assert_eq!(t.learn(key(3), a, t0), RemoteLearn::TableFull);
        assert_eq!(t.lookup(key(1), Timestamp::from_secs(2), 1000), None);
        assert_eq!(t.age(Timestamp::from_secs(2), 1000), 2);
    }
}
