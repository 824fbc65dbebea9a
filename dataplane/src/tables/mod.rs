//! Plain, bounded data structures that the pipeline reads and updates.
//!
//! Nothing here knows about threads: the MAC table is owned by one worker; the static FDB is
//! part of the immutable forwarding state that control publishes.

pub mod conntrack;
pub mod fib;
pub mod mac;
pub mod neigh;
pub mod policy;
pub mod service;
pub mod shard_map;
pub mod vtep;

pub use conntrack::{
    Conntrack, ConntrackStats, Dir, Entry as CtEntry, Filter as CtFilter, FlowKey,
};
pub use fib::Fib;
pub use mac::{FdbKey, LearnOutcome, MacEntry, MacTable};
pub use neigh::{
    NeighKey, NeighLookup, NeighRecord, NeighState, NeighTick, NeighbourTable, Resolve,
};
pub use service::{Backend, Frontend, NatRules, Scheduler, Service, SnatRule, Target};
pub use shard_map::ShardMap;
pub use vtep::{RemoteEntry, RemoteLearn, RemoteTable};

/// Index of a port in the forwarding state, stable for the port's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl PortId {
    /// The largest number of ports a switch can have at once: port ids are `0..MAX_PORTS`.
    pub const MAX_PORTS: usize = 1024;

    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A point in time in milliseconds since an arbitrary epoch (the worker's start). The pipeline
/// takes `now` as an argument so tests can drive it with a fake clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    pub const fn from_secs(s: u64) -> Timestamp {
        Timestamp(s * 1000)
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
