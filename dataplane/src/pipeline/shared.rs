//! The tables every worker of a switch reads and writes: learned MACs and remote VTEPs, the
//! router's neighbours, connection tracking, and what Service schedulers remember.
//!
//! Why shared: with several workers the kernel decides which worker reads a frame (the TAP
//! queue, the `SO_REUSEPORT` socket, the packet fanout member). A flow usually stays on one
//! worker, but the two directions of a translated connection need not arrive on the same one
//! (NAT changes the tuple that the kernel hashes), an ARP reply may reach another worker than
//! the one whose packet waits for it, and a MAC that moves must move for every worker at once.
//! So these tables are one per switch, each behind its own lock, and every worker sees one
//! truth:
//!
//! - Conntrack: the lookup, the port allocation and the insert of a new connection happen
//!   under one lock, so two workers can never create two entries for one connection or give
//!   one mapping to two; either direction of a connection finds its entry on any worker.
//! - Neighbours: a resolution seen by any worker releases the packets any worker queued.
//! - MACs and remote VTEPs: learned once, looked up by all.
//!
//! Locks are held for one table operation (a learn and a lookup, a neighbour lookup, one
//! connection's NAT step), never across I/O. Nothing else is locked while the MAC, remote VTEP
//! or neighbour table is held; the conntrack lock is held across a new connection's NAT step,
//! which takes the balancer's (and nothing else routes while it is held). So no two workers
//! can wait on each other. With one worker the locks are never contended.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::router::Balancer;
use crate::tables::policy::Flows6;
use crate::tables::{
    Conntrack, CtEntry, FdbKey, MacTable, NeighKey, NeighbourTable, PortId, RemoteTable, Timestamp,
};
use crate::wire::EthernetAddress;

/// One switch's shared tables (see the module docs).
pub struct SharedTables {
    macs: Mutex<MacTable>,
    remotes: Mutex<RemoteTable>,
    neigh: Mutex<NeighbourTable<Vec<u8>>>,
    conntrack: Mutex<Conntrack>,
    /// Entries in `conntrack`, as of the last unlock: lets a packet with no NAT rule in force
    /// skip the lock when nothing is tracked.
    tracked: AtomicUsize,
    balancer: Mutex<Balancer>,
    /// The IPv6 connections network policy allowed.
    policy6: Mutex<Flows6>,
}

impl SharedTables {
    pub fn new(mac_max: usize, neigh_max: usize, conntrack_max: usize) -> SharedTables {
        SharedTables {
            macs: Mutex::new(MacTable::new(mac_max)),
            remotes: Mutex::new(RemoteTable::new(mac_max)),
            neigh: Mutex::new(NeighbourTable::new(neigh_max)),
            conntrack: Mutex::new(Conntrack::new(conntrack_max)),
            tracked: AtomicUsize::new(0),
            balancer: Mutex::new(Balancer::default()),
            policy6: Mutex::new(Flows6::new(conntrack_max)),
        }
    }

    /// A copy of every table, taken one table at a time under its lock (as a dump is): for a
    /// dry run that may learn, track and queue into the copy and leave these untouched.
    pub fn copy(&self) -> SharedTables {
        let conntrack = self.conntrack().clone();
        SharedTables {
            macs: Mutex::new(self.macs().clone()),
            remotes: Mutex::new(self.remotes().clone()),
            neigh: Mutex::new(self.neighbours().clone()),
            tracked: AtomicUsize::new(conntrack.len()),
            conntrack: Mutex::new(conntrack),
            balancer: Mutex::new(self.balancer().clone()),
            policy6: Mutex::new(self.policy6().clone()),
        }
    }

    /// The IPv6 connections network policy allowed.
    pub fn policy6(&self) -> MutexGuard<'_, Flows6> {
        lock(&self.policy6)
    }

    pub fn macs(&self) -> MutexGuard<'_, MacTable> {
        lock(&self.macs)
    }

    pub fn remotes(&self) -> MutexGuard<'_, RemoteTable> {
        lock(&self.remotes)
    }

    pub fn neighbours(&self) -> MutexGuard<'_, NeighbourTable<Vec<u8>>> {
        lock(&self.neigh)
    }

    pub fn conntrack(&self) -> ConntrackGuard<'_> {
        ConntrackGuard {
            table: lock(&self.conntrack),
            tracked: &self.tracked,
        }
    }

    /// Whether some connection is tracked (without taking the lock).
    pub fn tracks_any(&self) -> bool {
        self.tracked.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn balancer(&self) -> MutexGuard<'_, Balancer> {
        lock(&self.balancer)
    }
}

/// Conntrack slots copied (or entries put back) per hold of the lock by
/// [`SharedTables::export`] and [`SharedTables::import`].
const EXPORT_SLICE: usize = 4096;

/// What a switch learned and tracks, as plain records with times relative to the moment of
/// [`SharedTables::export`] (what a checkpoint keeps, so that another process, with another
/// clock, can put it back with [`SharedTables::import`]). Port ids and Service ids are this
/// switch's: whoever keeps the records names them.
#[derive(Debug, Clone, Default)]
pub struct LearnedState {
    pub macs: Vec<LearnedMac>,
    pub remotes: Vec<LearnedRemote>,
    pub neighbours: Vec<LearnedNeighbour>,
    pub connections: Vec<SavedConnection>,
    pub affinities: Vec<SavedAffinity>,
}

/// A learned MAC: last seen `age_ms` ago on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedMac {
    pub key: FdbKey,
    pub port: PortId,
    pub age_ms: u64,
}

/// A MAC learned behind a remote VTEP, last seen `age_ms` ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedRemote {
    pub key: FdbKey,
    pub remote: Ipv4Addr,
    pub age_ms: u64,
}

/// A resolved neighbour, confirmed or updated `age_ms` ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedNeighbour {
    pub key: NeighKey,
    pub mac: EthernetAddress,
    pub age_ms: u64,
}

/// A tracked connection (its `created` and `expires` are replaced on import by the two ages).
#[derive(Debug, Clone)]
pub struct SavedConnection {
    pub entry: CtEntry,
    /// Since the connection's first packet.
    pub age_ms: u64,
    /// Until it times out, unless a packet refreshes it.
    pub expires_in_ms: u64,
}

/// A Service's ClientIP affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedAffinity {
    pub service: u32,
    pub client: Ipv4Addr,
    pub backend: SocketAddrV4,
    pub expires_in_ms: u64,
}

/// What [`SharedTables::import`] put back, and what it could not (a full table, a clash).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub macs: usize,
    pub remotes: usize,
    pub neighbours: usize,
    pub connections: usize,
    pub affinities: usize,
    pub refused: usize,
}

impl SharedTables {
    /// Every learned MAC and remote that has not aged out (`aging_ms`), every resolved
    /// neighbour, every tracked connection and affinity that has not expired, at `now`.
    /// Locks one table at a time.
    pub fn export(&self, now: Timestamp, aging_ms: u64) -> LearnedState {
        let live = |seen: Timestamp| now.millis_since(seen) < aging_ms;
        let macs = self
            .macs()
            .iter()
            .filter(|(_, e)| live(e.last_seen))
            .map(|(key, e)| LearnedMac {
                key,
                port: e.port,
                age_ms: now.millis_since(e.last_seen),
            })
            .collect();
        let remotes = self
            .remotes()
            .iter()
            .filter(|(_, e)| live(e.last_seen))
            .map(|(key, e)| LearnedRemote {
                key,
                remote: e.remote,
                age_ms: now.millis_since(e.last_seen),
            })
            .collect();
        let neighbours = self
            .neighbours()
            .records(now)
            .filter_map(|r| {
                r.mac.map(|mac| LearnedNeighbour {
                    key: r.key,
                    mac,
                    age_ms: r.age_ms,
                })
            })
            .collect();
        // A slice of the table at a time, so that workers wait at most for one slice: a
        // connection made meanwhile in a slice already copied waits for the next checkpoint.
        let mut connections = Vec::new();
        let mut at = 0;
        loop {
            let ct = self.conntrack();
            let end = at + EXPORT_SLICE;
            connections.extend(
                ct.entries_in(at..end)
                    .filter(|e| !e.is_expired(now))
                    .map(|e| SavedConnection {
                        entry: e.clone(),
                        age_ms: now.millis_since(e.created),
                        expires_in_ms: e.expires.millis_since(now),
                    }),
            );
            if end >= ct.slot_count() {
                break;
            }
            at = end;
        }
        let affinities = self
            .balancer()
            .affinities()
            .filter(|a| a.3 > now)
            .map(|(service, client, backend, expires)| SavedAffinity {
                service,
                client,
                backend,
                expires_in_ms: expires.millis_since(now),
            })
            .collect();
        LearnedState {
            macs,
            remotes,
            neighbours,
            connections,
            affinities,
        }
    }

    /// Puts `state` back at `now`, within every table's bound (`port_limit` gives a port's
    /// bound on learned MACs); what does not fit, or clashes with what is there, is counted
    /// as refused. Records that expired meanwhile should be left out by the caller.
    pub fn import(
        &self,
        state: LearnedState,
        now: Timestamp,
        port_limit: impl Fn(PortId) -> u32,
    ) -> ImportCounts {
        use crate::tables::{LearnOutcome, RemoteLearn};
        let mut n = ImportCounts::default();
        let ago = |age: u64| Timestamp::from_millis(now.millis().saturating_sub(age));
        let ahead = |ms: u64| Timestamp::from_millis(now.millis().saturating_add(ms));
        {
            let mut macs = self.macs();
            for m in state.macs {
                match macs.learn(m.key, m.port, ago(m.age_ms), port_limit(m.port)) {
                    LearnOutcome::Learned => n.macs += 1,
                    _ => n.refused += 1,
                }
            }
        }
        {
            let mut remotes = self.remotes();
            for r in state.remotes {
                match remotes.learn(r.key, r.remote, ago(r.age_ms)) {
                    RemoteLearn::Learned => n.remotes += 1,
                    _ => n.refused += 1,
                }
            }
        }
        {
            let mut neigh = self.neighbours();
            for r in state.neighbours {
                if neigh.restore(r.key, r.mac, ago(r.age_ms), now) {
                    n.neighbours += 1;
                } else {
                    n.refused += 1;
                }
            }
        }
        // A slice at a time, as in `export`: workers forward between slices.
        self.conntrack().reserve(state.connections.len());
        let mut connections = state.connections.into_iter().peekable();
        while connections.peek().is_some() {
            let mut ct = self.conntrack();
            for c in connections.by_ref().take(EXPORT_SLICE) {
                let mut entry = c.entry;
                entry.created = ago(c.age_ms);
                entry.expires = ahead(c.expires_in_ms);
                match ct.insert(entry, now) {
                    Ok(_) => n.connections += 1,
                    Err(_) => n.refused += 1,
                }
            }
        }
        let mut balancer = self.balancer();
        for a in state.affinities {
            if balancer.restore_affinity(a.service, a.client, a.backend, ahead(a.expires_in_ms)) {
                n.affinities += 1;
            } else {
                n.refused += 1;
            }
        }
        n
    }
}

/// The locked conntrack table; unlocking records its size for
/// [`SharedTables::tracks_any`].
pub struct ConntrackGuard<'a> {
    table: MutexGuard<'a, Conntrack>,
    tracked: &'a AtomicUsize,
}

impl Deref for ConntrackGuard<'_> {
    type Target = Conntrack;
    fn deref(&self) -> &Conntrack {
        &self.table
    }
}

impl DerefMut for ConntrackGuard<'_> {
    fn deref_mut(&mut self) -> &mut Conntrack {
        &mut self.table
    }
}

impl Drop for ConntrackGuard<'_> {
    fn drop(&mut self) {
        self.tracked.store(self.table.len(), Ordering::Relaxed);
    }
}

/// Locks `m`. A worker never panics holding a table, but if one did the table is still
/// consistent between operations, so the others go on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::conntrack::{Entry, FlowKey, ProtoState};
    use crate::wire::VlanId;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::from(0x0a00_0000 | i),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            sport: 40000,
            dport: 80,
            proto: 17,
        }
    }

    #[test]
    fn export_then_import_keeps_every_entry_and_its_age() {
        let tables = SharedTables::new(1000, 100, 20_000);
        let t0 = Timestamp::from_secs(1000);
        let vlan = VlanId::new(10).unwrap();
        let mac = |i: u64| EthernetAddress::from_u64(0x0200_0000_0000 | i);
        for i in 0..10 {
            tables
                .macs()
                .learn(FdbKey::new(vlan, mac(i)), PortId(1), t0, u32::MAX);
        }
        let neigh = NeighKey::new(vlan, "10.0.0.9".parse().unwrap());
        assert!(tables.neighbours().restore(neigh, mac(99), t0, t0));
        // More connections than one export slice holds.
        for i in 0..10_000 {
            let mut reply = key(i).reversed();
            reply.dport = 1000 + (i % 50_000) as u16;
            tables
                .conntrack()
                .insert(Entry::new(key(i), reply, ProtoState::Udp, t0), t0)
                .unwrap();
        }
        let later = Timestamp::from_millis(t0.millis() + 5_000);
        let saved = tables.export(later, 300_000);
        assert_eq!(saved.macs.len(), 10);
        assert!(saved.macs.iter().all(|m| m.age_ms == 5_000));
        assert_eq!(saved.neighbours.len(), 1);
        assert_eq!(saved.connections.len(), 10_000);
        assert!(saved.connections.iter().all(|c| c.age_ms == 5_000));
        let restored = SharedTables::new(1000, 100, 20_000);
        let now = Timestamp::from_secs(50);
        let n = restored.import(saved, now, |_| u32::MAX);
        assert_eq!(
            (n.macs, n.neighbours, n.connections, n.refused),
            (10, 1, 10_000, 0)
        );
        let ct = restored.conntrack();
        let e = ct.iter().next().unwrap();
        assert_eq!(now.millis_since(e.created), 5_000, "the age is kept");
        assert!(e.expires > now, "not expired");
    }
}
