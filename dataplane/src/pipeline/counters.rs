//! Per-worker counters, readable from any thread while the worker writes them.
//!
//! Ownership: each [`WorkerCounters`] is written by exactly one worker thread and read by the
//! control thread, which sums all workers on demand. Because there is a single writer, an
//! increment is a relaxed load and store (no locked read-modify-write on the hot path); a
//! reader sees each counter's latest or a slightly older value, never a torn one.

use std::sync::atomic::{AtomicU64, Ordering};

use super::DropReason;
use crate::tables::PortId;
use crate::wire::VlanId;

/// A monotonically increasing counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counter per [`DropReason`] (indexed by [`DropReason::index`]).
#[derive(Debug)]
pub struct DropCounters([Counter; DropReason::COUNT]);

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters(std::array::from_fn(|_| Counter::default()))
    }
}

impl std::ops::Deref for DropCounters {
    type Target = [Counter; DropReason::COUNT];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Counters of one port on one worker.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Frames the egress device refused (queue full, device down).
    pub tx_errors: Counter,
    /// Frames not sent because they exceed this port's MTU.
    pub tx_oversized: Counter,
    pub drops: DropCounters,
}

impl PortCounters {
    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason.index()].add(1);
    }
}

/// Counters of the learning stage on one worker.
#[derive(Debug, Default)]
pub struct LearnCounters {
    pub learned: Counter,
    pub moved: Counter,
    pub aged: Counter,
    /// New MACs not learned because the table held `mac_table_max` entries.
    pub table_full: Counter,
    /// New MACs not learned because the port held its `max_macs`.
    pub port_limit: Counter,
    /// Remote VTEP entries learned from decapsulated frames.
    pub remote_learned: Counter,
    /// Remote entries that now point at another VTEP.
    pub remote_moved: Counter,
    /// Remote entries not learned because the table was full.
    pub remote_table_full: Counter,
    /// ARP requests and neighbour solicitations answered by the switch (suppression).
    pub neigh_suppressed: Counter,
}

/// Counters of one router interface on one worker (indexed by its VLAN).
#[derive(Debug, Default)]
pub struct InterfaceCounters {
    /// Packets routed in through this interface (to its MAC), and their bytes.
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Packets routed out of this interface, and their bytes.
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// ARP requests and neighbour solicitations for the interface's addresses answered.
    pub neigh_replies: Counter,
    /// ARP requests and neighbour solicitations sent to resolve next hops.
    pub neigh_probes: Counter,
    /// ICMP echo requests to the router's addresses answered.
    pub echo_replies: Counter,
    /// DHCP offers, acks and naks sent; declines received (a client found its address in
    /// use).
    pub dhcp_offers: Counter,
    pub dhcp_acks: Counter,
    pub dhcp_naks: Counter,
    pub dhcp_declines: Counter,
    /// ICMP errors sent: time exceeded, unreachable, fragmentation needed / packet too big.
    pub icmp_errors: Counter,
    /// ICMP errors not sent because of the rate limit.
    pub icmp_rate_limited: Counter,
    /// IPv4 packets fragmented to fit this interface's MTU (counted once per packet).
    pub fragmented: Counter,
    /// Packets dropped on the way in through this interface, by reason.
    pub drops: DropCounters,
}

impl InterfaceCounters {
    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason.index()].add(1);
    }
}

/// Counters of connection tracking and NAT on one worker.
#[derive(Debug, Default)]
pub struct NatCounters {
    /// Connections tracked (each first packet that made an entry).
    pub connections: Counter,
    /// Packets whose addresses or ports were rewritten.
    pub translated: Counter,
    /// ICMP errors about a translated connection, translated too.
    pub icmp_translated: Counter,
    /// Connections to a Service without backends answered with a TCP RST or ICMP port
    /// unreachable.
    pub rejected: Counter,
    /// Segments refused by the TCP state machine or window check.
    pub invalid: Counter,
    /// New connections not tracked because the table was full.
    pub insert_failed: Counter,
}

/// Upper bounds of the batch-size buckets of [`LoopCounters`] (frames per round of one port or
/// socket); the last bucket takes everything above.
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// How one worker's poll loop spends its time.
#[derive(Debug, Default)]
pub struct LoopCounters {
    /// Rounds that read something: one port's or socket's batch.
    pub batches: Counter,
    /// Frames (or datagrams) read in those rounds.
    pub batch_frames: Counter,
    /// Rounds by frames read: bucket `i` counts rounds of at most `BATCH_BUCKETS[i]` frames
    /// (and more than the bucket before); the last, rounds of more.
    pub batch_sizes: [Counter; BATCH_BUCKETS.len() + 1],
    /// Nanoseconds spent on frames (reading, the pipeline, writing), not waiting for them.
    pub busy_ns: Counter,
    /// Wake-ups of the poll loop (polls that found something, or slept first).
    pub wakeups: Counter,
    /// Nanoseconds spent polling on after traffic and finding nothing (adaptive polling).
    pub busy_poll_ns: Counter,
    /// Polls on after traffic that found frames: wake-ups saved.
    pub busy_poll_hits: Counter,
}

impl LoopCounters {
    /// Counts one round that read `frames` frames.
    #[inline]
    pub fn batch(&self, frames: u64) {
        if frames == 0 {
            return;
        }
        self.batches.add(1);
        self.batch_frames.add(frames);
        let i = BATCH_BUCKETS
            .iter()
            .position(|&b| frames <= b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.batch_sizes[i].add(1);
    }
}

/// Everything one worker counts.
#[derive(Debug)]
pub struct WorkerCounters {
    ports: Box<[PortCounters]>,
    /// Indexed by VLAN id: the router interface of that VLAN.
    interfaces: Box<[InterfaceCounters]>,
    pub learn: LearnCounters,
    /// The VXLAN tunnel sockets, all endpoints together: rx/tx of outer packets, drops before
    /// a frame reaches a VXLAN port, and `tx_oversized` for frames too large for the underlay.
    pub tunnel: PortCounters,
    /// The IPIP socket: rx/tx of outer packets, drops of what it received, and `tx_oversized`
    /// / `tx_errors` for what the host refused to send.
    pub ipip: PortCounters,
    pub nat: NatCounters,
    /// The poll loop: batches and busy time.
    pub poll: LoopCounters,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            ports: (0..PortId::MAX_PORTS)
                .map(|_| PortCounters::default())
                .collect(),
            interfaces: (0..4096).map(|_| InterfaceCounters::default()).collect(),
            learn: LearnCounters::default(),
            tunnel: PortCounters::default(),
            ipip: PortCounters::default(),
            nat: NatCounters::default(),
            poll: LoopCounters::default(),
        }
    }
}

impl WorkerCounters {
    #[inline]
    pub fn port(&self, port: PortId) -> &PortCounters {
        &self.ports[port.index() % PortId::MAX_PORTS]
    }

    /// The counters of the router interface on `vlan`.
    #[inline]
    pub fn interface(&self, vlan: VlanId) -> &InterfaceCounters {
        &self.interfaces[vlan.get() as usize % 4096]
    }
}
