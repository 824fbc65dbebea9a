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

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::router::Balancer;
use crate::tables::{Conntrack, MacTable, NeighbourTable, RemoteTable};

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
        }
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
