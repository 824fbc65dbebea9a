//! The router's neighbour cache: (VLAN interface, IP) -> MAC, filled by ARP (IPv4) and
//! Neighbor Discovery (IPv6), like Linux's `ip neigh` table.
//!
//! Owned by one worker thread, like the [`MacTable`](super::MacTable). Nothing here builds or
//! sends packets: the table tells its caller when to send a probe (an ARP request or a neighbour
//! solicitation), hands back the packets it queued once they can be sent or must be answered
//! with ICMP host unreachable, and is driven by a clock passed in as `now`.
//!
//! # States
//!
//! A simplified version of the Linux neighbour state machine (no DELAY, no PERMANENT):
//!
//! | State        | MAC | Meaning and use                                                   |
//! |--------------|-----|-------------------------------------------------------------------|
//! | `INCOMPLETE` | no  | Resolution in progress. Up to [`QUEUE_MAX`] packets are queued (like Linux `unres_qlen`); more are refused with [`Resolve::QueueFull`]. |
//! | `REACHABLE`  | yes | Confirmed less than [`REACHABLE_MS`] ago. Used without probing.   |
//! | `STALE`      | yes | Known but unconfirmed. Still used; the first use starts probing.  |
//! | `PROBE`      | yes | Being re-confirmed by unicast probes. Still used.                 |
//! | `FAILED`     | no  | Resolution failed. Packets are refused ([`Resolve::Failed`]) for [`FAILED_HOLD_MS`], then the entry is gone and the next packet starts a new resolution. |
//!
//! Transitions (`packet` is a [`resolve`](NeighbourTable::resolve) or
//! [`lookup`](NeighbourTable::lookup) of the key; timers are explained below):
//!
//! | From                  | Event                                 | To         | Caller then              |
//! |-----------------------|---------------------------------------|------------|--------------------------|
//! | (absent)              | packet                                | INCOMPLETE | sends a broadcast (ARP) / multicast (NS) probe |
//! | INCOMPLETE            | `RETRANS_MS` unanswered, probes left  | INCOMPLETE | sends a broadcast/multicast probe |
//! | INCOMPLETE            | `RETRANS_MS` after the last probe     | FAILED     | answers the queued packets (from `tick`) with ICMP host unreachable |
//! | any                   | [`confirm`](NeighbourTable::confirm)  | REACHABLE  | sends the released packets |
//! | absent, INCOMPLETE, FAILED, other MAC | [`observe`](NeighbourTable::observe) | STALE | sends the released packets |
//! | REACHABLE             | `REACHABLE_MS` since confirmation     | STALE      |                          |
//! | STALE                 | packet                                | PROBE      | forwards, sends a unicast probe |
//! | PROBE                 | `RETRANS_MS` unanswered, probes left  | PROBE      | sends a unicast probe    |
//! | PROBE                 | `RETRANS_MS` after the last probe     | FAILED     | (the MAC is forgotten)   |
//! | FAILED                | packet within `FAILED_HOLD_MS`        | FAILED     | answers with ICMP host unreachable |
//! | FAILED                | `FAILED_HOLD_MS` since failure        | absent     |                          |
//!
//! ```text
//!  absent --packet--> INCOMPLETE --confirm--> REACHABLE --REACHABLE_MS--> STALE --packet--> PROBE
//!                      |   |                    ^   ^                      ^                |  |
//!                      |   +------observe-------|---|----------------------+                |  |
//!                      |                        |   +----------confirm----------------------+  |
//!              no answer after MAX_PROBES       +-- confirm (from any state)      no answer after
//!                      v                                                           MAX_PROBES  |
//!                    FAILED <------------------------------------------------------------------+
//!                      |  FAILED_HOLD_MS
//!                      v
//!                    absent
//! ```
//!
//! Evidence updates an entry:
//! - [`NeighbourTable::confirm`] (ARP reply, solicited neighbour advertisement): the entry becomes
//!   `REACHABLE` with the given MAC, whatever its state, and is created if absent.
//! - [`NeighbourTable::observe`] (ARP request for our address, NS with a source link-layer
//!   option, gratuitous ARP): creates a `STALE` entry if absent; a different MAC (or none:
//!   `INCOMPLETE`, `FAILED`) is replaced and the entry becomes `STALE`; the same MAC leaves the
//!   entry alone (state and age).
//!
//! `STALE` entries stay until used, evicted (see below), or removed by configuration.
//!
//! Both release the packets queued on an `INCOMPLETE` entry, in the order they were queued.
//!
//! # Timers
//!
//! | Timer            | Value    | Effect                                                    |
//! |------------------|----------|-----------------------------------------------------------|
//! | [`RETRANS_MS`]   | 1 s      | Interval between probes of an `INCOMPLETE` or `PROBE` entry. |
//! | [`MAX_PROBES`]   | 3        | Probes sent before an entry is `FAILED` (one more interval after the last). |
//! | [`REACHABLE_MS`] | 30 s     | `REACHABLE` -> `STALE` after this long without confirmation. |
//! | [`FAILED_HOLD_MS`] | 3 s    | How long a `FAILED` entry refuses packets before removal. |
//!
//! Timers are checked lazily on use (so a `REACHABLE` entry past its time is treated as `STALE`
//! at once, and an expired `FAILED` entry as absent) and by [`NeighbourTable::tick`], which the
//! worker calls about once a second. A retransmission is due `RETRANS_MS` after the previous
//! probe; the probe is emitted by whichever comes first, a lookup of that entry or a tick, so
//! with a one-second tick the real interval is between `RETRANS_MS` and `RETRANS_MS` plus the
//! tick period. An unresolvable neighbour is thus declared `FAILED` about `MAX_PROBES *
//! RETRANS_MS` after its first probe.
//!
//! # Bound
//!
//! The table holds at most `max_entries` entries. When it is full and a new key must be created
//! (by [`resolve`](NeighbourTable::resolve), [`lookup`](NeighbourTable::lookup),
//! [`confirm`](NeighbourTable::confirm) or [`observe`](NeighbourTable::observe)), the table
//! scans its entries once (only in this case) and evicts the first `FAILED` entry it finds, else
//! the `STALE` entry updated longest ago. `INCOMPLETE`, `REACHABLE` and `PROBE` entries are never
//! evicted. If there is nothing to evict the new key is refused: `resolve` gives the packet back
//! as [`Resolve::TableFull`], `lookup` answers [`NeighLookup::TableFull`], `confirm` and
//! `observe` return `false`. Entries already present keep working normally.

use core::fmt;
use std::net::IpAddr;

use hashbrown::HashMap;

use super::Timestamp;
use crate::wire::{EthernetAddress, VlanId};

/// Packets queued on one `INCOMPLETE` entry at most (Linux `unres_qlen`).
pub const QUEUE_MAX: usize = 3;
/// How long a confirmation keeps an entry `REACHABLE`.
pub const REACHABLE_MS: u64 = 30_000;
/// Interval between probes of an entry being resolved or re-confirmed.
pub const RETRANS_MS: u64 = 1_000;
/// Unanswered probes after which an entry is `FAILED`.
pub const MAX_PROBES: u8 = 3;
/// How long a `FAILED` entry refuses packets before it is removed.
pub const FAILED_HOLD_MS: u64 = 3_000;

/// A neighbour: an IP address on the router interface of a VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighKey {
    /// The VLAN whose router interface the neighbour is reached through.
    pub vlan: VlanId,
    /// The neighbour's IPv4 or IPv6 address.
    pub ip: IpAddr,
}

impl NeighKey {
    /// The neighbour `ip` on the interface of `vlan`.
    pub const fn new(vlan: VlanId, ip: IpAddr) -> NeighKey {
        NeighKey { vlan, ip }
    }
}

/// The state of an entry, as `ip neigh` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighState {
    /// Resolution in progress; packets are queued.
    Incomplete,
    /// Confirmed less than [`REACHABLE_MS`] ago.
    Reachable,
    /// MAC known but unconfirmed; the next use starts probing.
    Stale,
    /// MAC in use while unicast probes re-confirm it.
    Probe,
    /// Resolution failed; packets are refused until the entry is removed.
    Failed,
}

impl NeighState {
    /// The upper-case name `ip neigh` prints: `INCOMPLETE`, `REACHABLE`, `STALE`, `PROBE`,
    /// `FAILED`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NeighState::Incomplete => "INCOMPLETE",
            NeighState::Reachable => "REACHABLE",
            NeighState::Stale => "STALE",
            NeighState::Probe => "PROBE",
            NeighState::Failed => "FAILED",
        }
    }
}

impl fmt::Display for NeighState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`NeighbourTable::resolve`] did with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolve<P> {
    /// Forward `packet` to `mac` now. `probe`: also send a unicast probe to `mac` (a `STALE`
    /// entry is being used, or the next probe of a `PROBE` entry is due).
    Known {
        mac: EthernetAddress,
        probe: bool,
        packet: P,
    },
    /// The packet is queued until the neighbour answers. `probe`: send a broadcast (ARP) or
    /// multicast (NS) probe now (new resolution, or retransmission due).
    Queued { probe: bool },
    /// Not queued: this entry's queue already holds [`QUEUE_MAX`] packets. The caller counts the
    /// drop. Gives the packet back.
    QueueFull(P),
    /// Resolution failed recently: the caller drops the packet or answers it with ICMP host
    /// unreachable. Gives the packet back.
    Failed(P),
    /// The table holds `max_entries` and nothing could be evicted: the neighbour is not being
    /// resolved. Gives the packet back.
    TableFull(P),
}

/// What [`NeighbourTable::lookup`] found: [`Resolve`] without a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighLookup {
    /// Usable MAC. `probe`: also send a unicast probe to `mac`.
    Known { mac: EthernetAddress, probe: bool },
    /// Resolution in progress (started now if the entry is new); nothing was queued (see
    /// [`NeighbourTable::enqueue`]). `probe`: send a broadcast/multicast probe now.
    Pending { probe: bool },
    /// Resolution failed recently.
    Failed,
    /// The table is full and the neighbour is not being resolved.
    TableFull,
}

/// One entry, for `neigh show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighRecord {
    pub key: NeighKey,
    pub state: NeighState,
    /// The MAC, for `REACHABLE`, `STALE` and `PROBE` entries.
    pub mac: Option<EthernetAddress>,
    /// Milliseconds since the entry was last confirmed or updated (created, MAC changed,
    /// failed).
    pub age_ms: u64,
    /// Probes sent in the current (or, for `FAILED`, the last) resolution or re-confirmation.
    pub probes: u8,
    /// Packets queued (only `INCOMPLETE` entries queue).
    pub queued: usize,
}

/// What one [`NeighbourTable::tick`] did, for counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NeighTick {
    /// Probes due and pushed to `probes`.
    pub probes: usize,
    /// Entries that ran out of probes and became `FAILED`.
    pub failed: usize,
    /// `REACHABLE` entries that became `STALE`.
    pub stale: usize,
    /// `FAILED` entries removed after their hold time.
    pub removed: usize,
}

/// The state of an entry with the MAC where the state has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Incomplete,
    Reachable(EthernetAddress),
    Stale(EthernetAddress),
    Probe(EthernetAddress),
    Failed,
}

#[derive(Clone)]
struct Entry<P> {
    phase: Phase,
    /// Last confirmation or update: starts the REACHABLE and FAILED timers.
    updated: Timestamp,
    /// When the last probe was sent (meaningful in INCOMPLETE and PROBE).
    probed: Timestamp,
    /// Probes sent in the current round.
    probes: u8,
    /// Packets waiting for resolution (only in INCOMPLETE; at most QUEUE_MAX).
    queue: Vec<P>,
}

impl<P> Entry<P> {
    /// A new resolution whose first probe is being sent at `now`.
    fn incomplete(now: Timestamp) -> Entry<P> {
        Entry {
            phase: Phase::Incomplete,
            updated: now,
            probed: now,
            probes: 1,
            queue: Vec::new(),
        }
    }

    fn with_mac(phase: Phase, now: Timestamp) -> Entry<P> {
        Entry {
            phase,
            updated: now,
            probed: now,
            probes: 0,
            queue: Vec::new(),
        }
    }

    /// The phase as the timers make it at `now`: REACHABLE past its time is STALE.
    fn effective(&self, now: Timestamp) -> Phase {
        match self.phase {
            Phase::Reachable(mac) if now.millis_since(self.updated) >= REACHABLE_MS => {
                Phase::Stale(mac)
            }
            phase => phase,
        }
    }

    /// A FAILED entry past its hold time, as good as absent.
    fn expired(&self, now: Timestamp) -> bool {
        self.phase == Phase::Failed && now.millis_since(self.updated) >= FAILED_HOLD_MS
    }

    /// Whether the next probe is due at `now` (counts a probe as sent if so).
    fn take_probe(&mut self, now: Timestamp) -> bool {
        if self.probes < MAX_PROBES && now.millis_since(self.probed) >= RETRANS_MS {
            self.probes += 1;
            self.probed = now;
            true
        } else {
            false
        }
    }

    /// Moves the queued packets to `released`, in order, and frees the queue.
    fn release(&mut self, released: &mut Vec<P>) {
        if !self.queue.is_empty() {
            released.append(&mut self.queue);
        }
        self.queue = Vec::new();
    }

    fn record(&self, key: NeighKey, now: Timestamp) -> NeighRecord {
        let (state, mac) = match self.effective(now) {
            Phase::Incomplete => (NeighState::Incomplete, None),
            Phase::Reachable(mac) => (NeighState::Reachable, Some(mac)),
            Phase::Stale(mac) => (NeighState::Stale, Some(mac)),
            Phase::Probe(mac) => (NeighState::Probe, Some(mac)),
            Phase::Failed => (NeighState::Failed, None),
        };
        NeighRecord {
            key,
            state,
            mac,
            age_ms: now.millis_since(self.updated),
            probes: self.probes,
            queued: self.queue.len(),
        }
    }
}

/// The outcome of looking a key up for forwarding, before any packet is queued.
enum Step {
    Known { mac: EthernetAddress, probe: bool },
    Pending { probe: bool },
    QueueFull,
    Failed,
    TableFull,
}

/// The neighbour cache of one worker. `P` is the type of a queued packet (an owned frame),
/// `Vec<u8>` by default; a default type parameter is not used for inference, so write
/// `NeighbourTable::<Vec<u8>>::new(n)` or annotate the binding. At most
/// `max_entries * QUEUE_MAX` packets are held at once.
#[derive(Clone)]
pub struct NeighbourTable<P = Vec<u8>> {
    entries: HashMap<NeighKey, Entry<P>>,
    max_entries: usize,
}

impl<P> NeighbourTable<P> {
    /// An empty table bounded to `max_entries`.
    pub fn new(max_entries: usize) -> NeighbourTable<P> {
        NeighbourTable {
            entries: HashMap::with_capacity(max_entries.min(1 << 16)),
            max_entries,
        }
    }

    /// The bound.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Changes the bound. Shrinking below the current size keeps the entries that are there;
    /// each new key then evicts at most one entry and is refused while the table is still at or
    /// over the bound.
    pub fn set_max_entries(&mut self, max_entries: usize) {
        self.max_entries = max_entries;
    }

    /// Entries held, including `FAILED` ones not yet removed by [`tick`](Self::tick).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks `key` up to forward `packet` at `now`, creating an `INCOMPLETE` entry (and asking
    /// for a first probe) if there is none. See [`Resolve`] for what to do with the answer.
    pub fn resolve(&mut self, key: NeighKey, packet: P, now: Timestamp) -> Resolve<P> {
        match self.step(key, now, true) {
            Step::Known { mac, probe } => Resolve::Known { mac, probe, packet },
            Step::Pending { probe } => match self.enqueue(&key, packet) {
                Ok(()) => Resolve::Queued { probe },
                Err(packet) => Resolve::QueueFull(packet),
            },
            Step::QueueFull => Resolve::QueueFull(packet),
            Step::Failed => Resolve::Failed(packet),
            Step::TableFull => Resolve::TableFull(packet),
        }
    }

    /// Like [`resolve`](Self::resolve) without a packet: for packets that must not be queued,
    /// or to avoid copying a frame when its neighbour is known. Starts resolution and probing
    /// exactly as `resolve` does; a packet may then be queued with [`enqueue`](Self::enqueue).
    pub fn lookup(&mut self, key: NeighKey, now: Timestamp) -> NeighLookup {
        match self.step(key, now, false) {
            Step::Known { mac, probe } => NeighLookup::Known { mac, probe },
            Step::Pending { probe } => NeighLookup::Pending { probe },
            // Only returned when room in the queue is required.
            Step::QueueFull => NeighLookup::Pending { probe: false },
            Step::Failed => NeighLookup::Failed,
            Step::TableFull => NeighLookup::TableFull,
        }
    }

    /// Queues `packet` on the `INCOMPLETE` entry of `key` (after [`lookup`](Self::lookup)
    /// answered [`NeighLookup::Pending`]). Gives the packet back if there is no such entry or
    /// its queue is full.
    pub fn enqueue(&mut self, key: &NeighKey, packet: P) -> Result<(), P> {
        match self.entries.get_mut(key) {
            Some(e) if e.phase == Phase::Incomplete && e.queue.len() < QUEUE_MAX => {
                e.queue.push(packet);
                Ok(())
            }
            _ => Err(packet),
        }
    }

    /// A confirmation (ARP reply, solicited neighbour advertisement to us): the entry becomes
    /// `REACHABLE` with `mac`, and is created if absent (subject to the bound). Packets that were
    /// queued on it are appended to `released`, in order, for the caller to send to `mac` now.
    /// Returns `false` if the entry was absent and the table is full.
    pub fn confirm(
        &mut self,
        key: NeighKey,
        mac: EthernetAddress,
        now: Timestamp,
        released: &mut Vec<P>,
    ) -> bool {
        if let Some(e) = self.entries.get_mut(&key) {
            e.phase = Phase::Reachable(mac);
            e.updated = now;
            e.probes = 0;
            e.release(released);
            return true;
        }
        if !self.make_room(now) {
            return false;
        }
        self.entries
            .insert(key, Entry::with_mac(Phase::Reachable(mac), now));
        true
    }

    /// Unsolicited evidence that `key` has `mac` (ARP request for our address, NS with a source
    /// link-layer option, gratuitous ARP): creates a `STALE` entry if absent (subject to the
    /// bound). An entry with a different MAC or none (`INCOMPLETE`, `FAILED`) takes `mac` and
    /// becomes `STALE`; packets queued on it are appended to `released` as by
    /// [`confirm`](Self::confirm). An entry with the same MAC is left alone. Returns `false` if
    /// the entry was absent and the table is full.
    pub fn observe(
        &mut self,
        key: NeighKey,
        mac: EthernetAddress,
        now: Timestamp,
        released: &mut Vec<P>,
    ) -> bool {
        if let Some(e) = self.entries.get_mut(&key) {
            match e.phase {
                Phase::Reachable(m) | Phase::Stale(m) | Phase::Probe(m) if m == mac => {}
                _ => {
                    e.phase = Phase::Stale(mac);
                    e.updated = now;
                    e.probes = 0;
                    e.release(released);
                }
            }
            return true;
        }
        if !self.make_room(now) {
            return false;
        }
        self.entries
            .insert(key, Entry::with_mac(Phase::Stale(mac), now));
        true
    }

    /// Timer work, called about once a second. Pushes the probes that are due to `probes` as
    /// `(key, None)` for a broadcast/multicast probe (`INCOMPLETE`) or `(key, Some(mac))` for a
    /// unicast one (`PROBE`); turns entries out of probes into `FAILED`, pushing the packets
    /// queued on them to `failed` (in order) for the caller to answer with ICMP host
    /// unreachable; removes `FAILED` entries past [`FAILED_HOLD_MS`]; turns `REACHABLE` entries
    /// past [`REACHABLE_MS`] into `STALE`.
    pub fn tick(
        &mut self,
        now: Timestamp,
        probes: &mut Vec<(NeighKey, Option<EthernetAddress>)>,
        failed: &mut Vec<(NeighKey, P)>,
    ) -> NeighTick {
        let mut done = NeighTick::default();
        self.entries.retain(|key, e| {
            match e.phase {
                Phase::Incomplete | Phase::Probe(_) => {
                    if e.take_probe(now) {
                        let mac = match e.phase {
                            Phase::Probe(mac) => Some(mac),
                            _ => None,
                        };
                        probes.push((*key, mac));
                        done.probes += 1;
                    } else if e.probes >= MAX_PROBES && now.millis_since(e.probed) >= RETRANS_MS {
                        e.phase = Phase::Failed;
                        e.updated = now;
                        failed.extend(e.queue.drain(..).map(|p| (*key, p)));
                        e.queue = Vec::new();
                        done.failed += 1;
                    }
                }
                Phase::Reachable(mac) => {
                    if now.millis_since(e.updated) >= REACHABLE_MS {
                        e.phase = Phase::Stale(mac);
                        done.stale += 1;
                    }
                }
                Phase::Stale(_) => {}
                Phase::Failed => {
                    if e.expired(now) {
                        done.removed += 1;
                        return false;
                    }
                }
            }
            true
        });
        done
    }

    /// Removes the entries for which `keep` is false (on configuration change); packets queued
    /// on them are dropped. Returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&NeighKey) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|k, _| keep(k));
        before - self.entries.len()
    }

    /// Removes one entry, dropping packets queued on it; returns whether it was there.
    pub fn remove(&mut self, key: &NeighKey) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Removes the entry of `key` unless it holds `mac` (`REACHABLE`, `STALE` or `PROBE`):
    /// for a static neighbour that changed, or one whose resolution is pending or failed, so
    /// that the next use resolves it afresh. Returns whether an entry was removed.
    pub fn forget_unless(&mut self, key: &NeighKey, mac: EthernetAddress) -> bool {
        let holds = self.entries.get(key).map(|e| match e.phase {
            Phase::Reachable(m) | Phase::Stale(m) | Phase::Probe(m) => m == mac,
            Phase::Incomplete | Phase::Failed => false,
        });
        match holds {
            Some(false) => self.entries.remove(key).is_some(),
            _ => false,
        }
    }

    /// The entry of `key` as `neigh show` would print it, if present.
    pub fn record(&self, key: &NeighKey, now: Timestamp) -> Option<NeighRecord> {
        match self.entries.get(key) {
            Some(e) if !e.expired(now) => Some(e.record(*key, now)),
            _ => None,
        }
    }

    /// Every entry with its state at `now`, in no particular order (sort by `key` for display).
    /// `FAILED` entries past their hold time are left out: they are as good as absent.
    pub fn records(&self, now: Timestamp) -> impl Iterator<Item = NeighRecord> + '_ {
        self.entries
            .iter()
            .filter(move |(_, e)| !e.expired(now))
            .map(move |(k, e)| e.record(*k, now))
    }

    /// Looks `key` up for forwarding, running the lazy state transitions and creating an
    /// INCOMPLETE entry if absent. `need_room`: the caller wants to queue a packet, so an
    /// INCOMPLETE entry with a full queue answers `QueueFull` (without spending a due probe).
    fn step(&mut self, key: NeighKey, now: Timestamp, need_room: bool) -> Step {
        if let Some(e) = self.entries.get_mut(&key) {
            match e.effective(now) {
                Phase::Reachable(mac) => return Step::Known { mac, probe: false },
                Phase::Stale(mac) => {
                    e.phase = Phase::Probe(mac);
                    e.probes = 1;
                    e.probed = now;
                    return Step::Known { mac, probe: true };
                }
                Phase::Probe(mac) => {
                    let probe = e.take_probe(now);
                    return Step::Known { mac, probe };
                }
                Phase::Incomplete => {
                    if need_room && e.queue.len() >= QUEUE_MAX {
                        return Step::QueueFull;
                    }
                    let probe = e.take_probe(now);
                    return Step::Pending { probe };
                }
                Phase::Failed if !e.expired(now) => return Step::Failed,
                Phase::Failed => {
                    *e = Entry::incomplete(now);
                    return Step::Pending { probe: true };
                }
            }
        }
        if !self.make_room(now) {
            return Step::TableFull;
        }
        self.entries.insert(key, Entry::incomplete(now));
        Step::Pending { probe: true }
    }

    /// Puts back a resolved neighbour from a checkpoint: `REACHABLE` with `mac`, confirmed at
    /// `updated` (so it turns `STALE` when that is more than `REACHABLE_MS` before `now`).
    /// Returns false (and changes nothing) when the key is known already or the table is full.
    pub fn restore(
        &mut self,
        key: NeighKey,
        mac: EthernetAddress,
        updated: Timestamp,
        now: Timestamp,
    ) -> bool {
        if self.entries.contains_key(&key) || !self.make_room(now) {
            return false;
        }
        self.entries
            .insert(key, Entry::with_mac(Phase::Reachable(mac), updated));
        true
    }

    /// Makes room for one new entry if the table is full, by evicting the first FAILED entry
    /// found, else the STALE entry updated longest ago. Scans the table, but only when full.
    /// Returns whether there is room.
    fn make_room(&mut self, now: Timestamp) -> bool {
        if self.entries.len() < self.max_entries {
            return true;
        }
        let mut victim: Option<NeighKey> = None;
        let mut oldest_stale: Option<(NeighKey, Timestamp)> = None;
        for (key, e) in &self.entries {
            match e.effective(now) {
                Phase::Failed => {
                    victim = Some(*key);
                    break;
                }
                Phase::Stale(_) if oldest_stale.is_none_or(|(_, t)| e.updated < t) => {
                    oldest_stale = Some((*key, e.updated));
                }
                _ => {}
            }
        }
        if let Some(key) = victim.or(oldest_stale.map(|(k, _)| k)) {
            self.entries.remove(&key);
        }
        self.entries.len() < self.max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn vlan(id: u16) -> VlanId {
        VlanId::new(id).unwrap()
    }

    fn key(n: u8) -> NeighKey {
        NeighKey::new(vlan(10), IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
    }

    fn mac(n: u8) -> EthernetAddress {
        EthernetAddress([2, 0, 0, 0, 0, n])
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn pkt(n: u8) -> Vec<u8> {
        vec![n; 4]
    }

    type Table = NeighbourTable<Vec<u8>>;
    type Probes = Vec<(NeighKey, Option<EthernetAddress>)>;
    type FailedPkts = Vec<(NeighKey, Vec<u8>)>;

    /// Runs one tick and returns what it emitted.
    fn tick(table: &mut NeighbourTable, now: u64) -> (NeighTick, Probes, FailedPkts) {
        let (mut probes, mut failed) = (Vec::new(), Vec::new());
        let done = table.tick(t(now), &mut probes, &mut failed);
        probes.sort();
        (done, probes, failed)
    }

    fn state(table: &NeighbourTable, k: NeighKey, now: u64) -> Option<NeighState> {
        table.record(&k, t(now)).map(|r| r.state)
    }

    /// A table with `key(1)` INCOMPLETE since 0 holding packets 1, 2, 3.
    fn incomplete_with_three() -> NeighbourTable {
        let mut table = Table::new(16);
        assert_eq!(
            table.resolve(key(1), pkt(1), t(0)),
            Resolve::Queued { probe: true }
        );
        assert_eq!(
            table.resolve(key(1), pkt(2), t(100)),
            Resolve::Queued { probe: false }
        );
        assert_eq!(
            table.resolve(key(1), pkt(3), t(200)),
            Resolve::Queued { probe: false }
        );
        table
    }

    /// A table with `key(1)` STALE on `mac(1)`, updated at 0.
    fn stale() -> NeighbourTable {
        let mut table = Table::new(16);
        let mut released = Vec::new();
        assert!(table.observe(key(1), mac(1), t(0), &mut released));
        assert!(released.is_empty());
        table
    }

    #[test]
    fn first_packet_queues_and_probes_fourth_is_refused() {
        let mut table = incomplete_with_three();
        assert_eq!(
            table.resolve(key(1), pkt(4), t(300)),
            Resolve::QueueFull(pkt(4))
        );
        let r = table.record(&key(1), t(300)).unwrap();
        assert_eq!(r.state, NeighState::Incomplete);
        assert_eq!(r.mac, None);
        assert_eq!(r.queued, QUEUE_MAX);
        assert_eq!(r.probes, 1);
        assert_eq!(r.age_ms, 300);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn incomplete_retransmits_every_second_then_fails_with_its_packets() {
        let mut table = incomplete_with_three();
        let (done, probes, failed) = tick(&mut table, 500);
        assert_eq!(done, NeighTick::default());
        assert!(probes.is_empty() && failed.is_empty());

        let (done, probes, _) = tick(&mut table, 1000);
        assert_eq!(done.probes, 1);
        assert_eq!(probes, vec![(key(1), None)]);
        assert!(tick(&mut table, 1500).1.is_empty());
        assert_eq!(tick(&mut table, 2000).1, vec![(key(1), None)]);
        assert_eq!(table.record(&key(1), t(2000)).unwrap().probes, MAX_PROBES);

        // Three probes unanswered: one more interval, then FAILED with the queue handed back.
        assert_eq!(tick(&mut table, 2999).0, NeighTick::default());
        let (done, probes, failed) = tick(&mut table, 3000);
        assert!(probes.is_empty());
        assert_eq!(
            done,
            NeighTick {
                failed: 1,
                ..NeighTick::default()
            }
        );
        assert_eq!(
            failed,
            vec![(key(1), pkt(1)), (key(1), pkt(2)), (key(1), pkt(3))]
        );
        let r = table.record(&key(1), t(3000)).unwrap();
        assert_eq!(r.state, NeighState::Failed);
        assert_eq!((r.mac, r.queued, r.age_ms), (None, 0, 0));
        // Nothing more happens to a FAILED entry until its hold ends.
        assert_eq!(tick(&mut table, 4000).0, NeighTick::default());
    }

    #[test]
    fn resolve_drives_retransmission_too() {
        let mut table = Table::new(16);
        assert_eq!(
            table.resolve(key(1), pkt(1), t(0)),
            Resolve::Queued { probe: true }
        );
        assert_eq!(
            table.resolve(key(1), pkt(2), t(1000)),
            Resolve::Queued { probe: true }
        );
        // Already sent by resolve: the tick has nothing to do.
        assert!(tick(&mut table, 1500).1.is_empty());
        assert_eq!(
            table.lookup(key(1), t(2000)),
            NeighLookup::Pending { probe: true }
        );
        // Out of probes: no more, and the tick fails it.
        assert_eq!(
            table.resolve(key(1), pkt(3), t(3000)),
            Resolve::Queued { probe: false }
        );
        let (done, probes, failed) = tick(&mut table, 3000);
        assert_eq!((done.failed, probes.len(), failed.len()), (1, 0, 3));
    }

    #[test]
    fn full_queue_does_not_spend_a_due_probe() {
        let mut table = incomplete_with_three();
        assert_eq!(
            table.resolve(key(1), pkt(4), t(1000)),
            Resolve::QueueFull(pkt(4))
        );
        assert_eq!(tick(&mut table, 1000).1, vec![(key(1), None)]);
    }

    #[test]
    fn failed_refuses_during_hold_then_resolution_restarts() {
        let mut table = incomplete_with_three();
        for now in [1000, 2000, 3000] {
            tick(&mut table, now);
        }
        assert_eq!(state(&table, key(1), 3000), Some(NeighState::Failed));
        assert_eq!(
            table.resolve(key(1), pkt(5), t(3000)),
            Resolve::Failed(pkt(5))
        );
        assert_eq!(
            table.resolve(key(1), pkt(6), t(5999)),
            Resolve::Failed(pkt(6))
        );
        assert_eq!(table.lookup(key(1), t(5999)), NeighLookup::Failed);

        // Hold over, no tick yet: the next packet starts a new resolution.
        assert_eq!(state(&table, key(1), 6000), None);
        assert_eq!(table.records(t(6000)).count(), 0);
        assert_eq!(
            table.resolve(key(1), pkt(7), t(6000)),
            Resolve::Queued { probe: true }
        );
        let r = table.record(&key(1), t(6000)).unwrap();
        assert_eq!(
            (r.state, r.probes, r.queued),
            (NeighState::Incomplete, 1, 1)
        );
    }

    #[test]
    fn failed_entry_is_removed_by_tick_after_hold() {
        let mut table = incomplete_with_three();
        for now in [1000, 2000, 3000] {
            tick(&mut table, now);
        }
        assert_eq!(tick(&mut table, 5000).0.removed, 0);
        assert_eq!(table.len(), 1);
        assert_eq!(tick(&mut table, 6000).0.removed, 1);
        assert!(table.is_empty());
        assert_eq!(
            table.resolve(key(1), pkt(1), t(6100)),
            Resolve::Queued { probe: true }
        );
    }

    #[test]
    fn confirm_releases_queue_in_order() {
        let mut table = incomplete_with_three();
        let mut released = vec![pkt(9)];
        assert!(table.confirm(key(1), mac(1), t(500), &mut released));
        assert_eq!(released, vec![pkt(9), pkt(1), pkt(2), pkt(3)]);
        let r = table.record(&key(1), t(500)).unwrap();
        assert_eq!(r.state, NeighState::Reachable);
        assert_eq!((r.mac, r.probes, r.queued), (Some(mac(1)), 0, 0));
        assert_eq!(
            table.resolve(key(1), pkt(4), t(600)),
            Resolve::Known {
                mac: mac(1),
                probe: false,
                packet: pkt(4)
            }
        );
        // No more probes for it.
        assert!(tick(&mut table, 1500).1.is_empty());

        // A confirmation for an unknown key creates a REACHABLE entry.
        released.clear();
        assert!(table.confirm(key(2), mac(2), t(700), &mut released));
        assert!(released.is_empty());
        assert_eq!(state(&table, key(2), 700), Some(NeighState::Reachable));
        // And one for a FAILED entry revives it.
        let mut table = incomplete_with_three();
        for now in [1000, 2000, 3000] {
            tick(&mut table, now);
        }
        assert!(table.confirm(key(1), mac(1), t(3500), &mut released));
        assert!(released.is_empty());
        assert_eq!(
            table.lookup(key(1), t(3500)),
            NeighLookup::Known {
                mac: mac(1),
                probe: false
            }
        );
    }

    #[test]
    fn reachable_becomes_stale_after_reachable_time() {
        let mut table = Table::new(16);
        let mut released = Vec::new();
        table.confirm(key(1), mac(1), t(1000), &mut released);
        assert_eq!(tick(&mut table, 30_999).0, NeighTick::default());
        assert_eq!(state(&table, key(1), 30_999), Some(NeighState::Reachable));
        // Lazily STALE at once, even before the tick.
        assert_eq!(state(&table, key(1), 31_000), Some(NeighState::Stale));
        let (done, probes, _) = tick(&mut table, 31_000);
        assert_eq!(done.stale, 1);
        assert!(probes.is_empty());
        let r = table.record(&key(1), t(31_000)).unwrap();
        assert_eq!(
            (r.state, r.mac, r.age_ms),
            (NeighState::Stale, Some(mac(1)), 30_000)
        );
        // STALE stays STALE while unused.
        assert_eq!(tick(&mut table, 100_000).0, NeighTick::default());
        assert_eq!(state(&table, key(1), 100_000), Some(NeighState::Stale));
    }

    #[test]
    fn expired_reachable_used_before_tick_starts_probing() {
        let mut table = Table::new(16);
        table.confirm(key(1), mac(1), t(0), &mut Vec::new());
        assert_eq!(
            table.lookup(key(1), t(30_000)),
            NeighLookup::Known {
                mac: mac(1),
                probe: true
            }
        );
        assert_eq!(state(&table, key(1), 30_000), Some(NeighState::Probe));
    }

    #[test]
    fn stale_use_probes_unicast_until_confirmed() {
        let mut table = stale();
        assert_eq!(
            table.resolve(key(1), pkt(1), t(10_000)),
            Resolve::Known {
                mac: mac(1),
                probe: true,
                packet: pkt(1)
            }
        );
        let r = table.record(&key(1), t(10_000)).unwrap();
        assert_eq!((r.state, r.probes), (NeighState::Probe, 1));
        // Still used, no new probe before RETRANS_MS.
        assert_eq!(
            table.resolve(key(1), pkt(2), t(10_500)),
            Resolve::Known {
                mac: mac(1),
                probe: false,
                packet: pkt(2)
            }
        );
        let (done, probes, _) = tick(&mut table, 11_000);
        assert_eq!(done.probes, 1);
        assert_eq!(probes, vec![(key(1), Some(mac(1)))]);

        let mut released = Vec::new();
        assert!(table.confirm(key(1), mac(1), t(11_200), &mut released));
        assert!(released.is_empty());
        assert_eq!(state(&table, key(1), 11_200), Some(NeighState::Reachable));
        assert!(tick(&mut table, 12_000).1.is_empty());
        assert!(tick(&mut table, 20_000).1.is_empty());
        assert_eq!(
            table.lookup(key(1), t(20_000)),
            NeighLookup::Known {
                mac: mac(1),
                probe: false
            }
        );
    }

    #[test]
    fn stale_use_unanswered_fails_and_forgets_mac() {
        let mut table = stale();
        assert_eq!(
            table.lookup(key(1), t(10_000)),
            NeighLookup::Known {
                mac: mac(1),
                probe: true
            }
        );
        // Retransmission driven by use...
        assert_eq!(
            table.lookup(key(1), t(11_000)),
            NeighLookup::Known {
                mac: mac(1),
                probe: true
            }
        );
        // ...or by the tick.
        assert_eq!(tick(&mut table, 12_000).1, vec![(key(1), Some(mac(1)))]);
        assert_eq!(table.record(&key(1), t(12_000)).unwrap().probes, 3);
        // Out of probes: still used until the tick fails it.
        assert_eq!(
            table.lookup(key(1), t(12_500)),
            NeighLookup::Known {
                mac: mac(1),
                probe: false
            }
        );
        let (done, probes, failed) = tick(&mut table, 13_000);
        assert_eq!((done.failed, probes.len(), failed.len()), (1, 0, 0));
        let r = table.record(&key(1), t(13_000)).unwrap();
        assert_eq!((r.state, r.mac), (NeighState::Failed, None));
        assert_eq!(
            table.resolve(key(1), pkt(1), t(13_000)),
            Resolve::Failed(pkt(1))
        );
        // After the hold, resolution starts from scratch with a broadcast probe.
        assert_eq!(
            table.resolve(key(1), pkt(2), t(16_000)),
            Resolve::Queued { probe: true }
        );
    }

    #[test]
    fn observe_creates_updates_and_releases() {
        let mut table = Table::new(16);
        let mut released = Vec::new();
        // Creates STALE.
        assert!(table.observe(key(1), mac(1), t(0), &mut released));
        let r = table.record(&key(1), t(0)).unwrap();
        assert_eq!((r.state, r.mac), (NeighState::Stale, Some(mac(1))));

        // Same MAC leaves a REACHABLE entry alone.
        table.confirm(key(1), mac(1), t(1000), &mut released);
        assert!(table.observe(key(1), mac(1), t(2000), &mut released));
        let r = table.record(&key(1), t(2000)).unwrap();
        assert_eq!((r.state, r.age_ms), (NeighState::Reachable, 1000));

        // A different MAC replaces it and makes it STALE.
        assert!(table.observe(key(1), mac(7), t(3000), &mut released));
        let r = table.record(&key(1), t(3000)).unwrap();
        assert_eq!(
            (r.state, r.mac, r.age_ms),
            (NeighState::Stale, Some(mac(7)), 0)
        );

        // Same for a PROBE entry: it stops probing.
        table.lookup(key(1), t(4000));
        assert_eq!(state(&table, key(1), 4000), Some(NeighState::Probe));
        assert!(table.observe(key(1), mac(8), t(4100), &mut released));
        let r = table.record(&key(1), t(4100)).unwrap();
        assert_eq!(
            (r.state, r.mac, r.probes),
            (NeighState::Stale, Some(mac(8)), 0)
        );
        assert!(tick(&mut table, 6000).1.is_empty());
        assert!(released.is_empty());

        // An INCOMPLETE entry becomes STALE and releases its queue in order.
        let mut table = incomplete_with_three();
        assert!(table.observe(key(1), mac(1), t(500), &mut released));
        assert_eq!(released, vec![pkt(1), pkt(2), pkt(3)]);
        let r = table.record(&key(1), t(500)).unwrap();
        assert_eq!(
            (r.state, r.mac, r.queued),
            (NeighState::Stale, Some(mac(1)), 0)
        );
        // Its first use then probes it.
        assert_eq!(
            table.lookup(key(1), t(600)),
            NeighLookup::Known {
                mac: mac(1),
                probe: true
            }
        );
    }

    #[test]
    fn lookup_and_enqueue() {
        let mut table = Table::new(16);
        assert_eq!(
            table.lookup(key(1), t(0)),
            NeighLookup::Pending { probe: true }
        );
        assert_eq!(
            table.lookup(key(1), t(10)),
            NeighLookup::Pending { probe: false }
        );
        assert_eq!(table.record(&key(1), t(10)).unwrap().queued, 0);
        for n in 1..=3 {
            assert_eq!(table.enqueue(&key(1), pkt(n)), Ok(()));
        }
        assert_eq!(table.enqueue(&key(1), pkt(4)), Err(pkt(4)));
        // Pending even with a full queue (nothing would be queued).
        assert_eq!(
            table.lookup(key(1), t(20)),
            NeighLookup::Pending { probe: false }
        );
        assert_eq!(table.enqueue(&key(2), pkt(5)), Err(pkt(5)));
        let mut released = Vec::new();
        table.confirm(key(1), mac(1), t(30), &mut released);
        assert_eq!(released, vec![pkt(1), pkt(2), pkt(3)]);
        assert_eq!(table.enqueue(&key(1), pkt(6)), Err(pkt(6)));
    }

    #[test]
    fn table_bound_evicts_failed_then_oldest_stale_else_refuses() {
        let mut table = Table::new(3);
        let mut released = Vec::new();
        // Incomplete, reachable and probe entries are never evicted.
        table.resolve(key(1), pkt(1), t(0));
        table.confirm(key(2), mac(2), t(0), &mut released);
        table.observe(key(3), mac(3), t(0), &mut released);
        table.lookup(key(3), t(0));
        assert_eq!(state(&table, key(3), 0), Some(NeighState::Probe));
        assert_eq!(
            table.resolve(key(4), pkt(4), t(10)),
            Resolve::TableFull(pkt(4))
        );
        assert_eq!(table.lookup(key(4), t(10)), NeighLookup::TableFull);
        assert!(!table.confirm(key(4), mac(4), t(10), &mut released));
        assert!(!table.observe(key(4), mac(4), t(10), &mut released));
        assert_eq!(table.len(), 3);
        // Existing entries keep working.
        assert_eq!(
            table.resolve(key(1), pkt(2), t(10)),
            Resolve::Queued { probe: false }
        );
        assert!(table.observe(key(2), mac(2), t(10), &mut released));

        // key(1) and key(3) fail; key(2) is still REACHABLE.
        for now in [1000, 2000, 3000] {
            tick(&mut table, now);
        }
        assert_eq!(state(&table, key(1), 3000), Some(NeighState::Failed));
        assert_eq!(state(&table, key(3), 3000), Some(NeighState::Failed));
        // A FAILED entry is evicted, even during its hold.
        assert_eq!(
            table.resolve(key(4), pkt(4), t(3100)),
            Resolve::Queued { probe: true }
        );
        assert!(table.observe(key(5), mac(5), t(3200), &mut released));
        assert_eq!(table.len(), 3);
        let failed = [key(1), key(3)]
            .iter()
            .filter(|k| table.record(k, t(3200)).is_some())
            .count();
        assert_eq!(failed, 0);
        assert!(released.is_empty());

        // Now: key(2) REACHABLE (confirmed at 0), key(4) INCOMPLETE, key(5) STALE.
        // key(2) goes STALE at 30 s and is then older than key(5): it is evicted first.
        let mut table2 = Table::new(2);
        table2.confirm(key(1), mac(1), t(0), &mut released);
        table2.observe(key(2), mac(2), t(20_000), &mut released);
        assert!(table2.observe(key(3), mac(3), t(30_000), &mut released));
        assert_eq!(state(&table2, key(1), 30_000), None);
        assert!(table2.observe(key(4), mac(4), t(30_001), &mut released));
        assert_eq!(state(&table2, key(2), 30_001), None);
        assert_eq!(state(&table2, key(3), 30_001), Some(NeighState::Stale));
        assert_eq!(state(&table2, key(4), 30_001), Some(NeighState::Stale));
    }

    #[test]
    fn shrinking_and_zero_bound() {
        let mut table = Table::new(0);
        assert_eq!(
            table.resolve(key(1), pkt(1), t(0)),
            Resolve::TableFull(pkt(1))
        );
        assert!(!table.confirm(key(1), mac(1), t(0), &mut Vec::new()));
        assert!(table.is_empty());

        let mut table = Table::new(4);
        let mut released = Vec::new();
        for n in 1..=4 {
            table.observe(key(n), mac(n), t(u64::from(n)), &mut released);
        }
        table.set_max_entries(2);
        assert_eq!(table.max_entries(), 2);
        assert_eq!(table.len(), 4);
        // Each new key evicts one stale entry but is refused while still over the bound.
        assert!(!table.observe(key(5), mac(5), t(10), &mut released));
        assert!(!table.observe(key(5), mac(5), t(10), &mut released));
        assert_eq!(table.len(), 2);
        assert!(table.observe(key(5), mac(5), t(10), &mut released));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn retain_remove_and_clear() {
        let mut table = Table::new(16);
        let other = NeighKey::new(vlan(20), IpAddr::V6(Ipv6Addr::LOCALHOST));
        table.resolve(key(1), pkt(1), t(0));
        table.resolve(key(2), pkt(2), t(0));
        table.observe(other, mac(9), t(0), &mut Vec::new());
        assert_eq!(table.retain(|k| k.vlan == vlan(20)), 2);
        assert_eq!(table.len(), 1);
        // Dropped with their queues: nothing comes back from the ticks.
        let (_, probes, failed) = tick(&mut table, 5000);
        assert!(probes.is_empty() && failed.is_empty());
        assert!(table.remove(&other));
        assert!(!table.remove(&other));
        assert!(table.is_empty());
        table.resolve(key(1), pkt(1), t(0));
        table.clear();
        assert!(table.is_empty());
    }

    #[test]
    fn records_report_every_state() {
        let mut table = Table::new(16);
        let mut released = Vec::new();
        table.resolve(key(1), pkt(1), t(0)); // -> FAILED at 3 s
        table.resolve(key(2), pkt(2), t(0)); // -> FAILED at 3 s
        table.confirm(key(3), mac(3), t(2500), &mut released); // REACHABLE
        table.observe(key(4), mac(4), t(0), &mut released); // STALE
        table.observe(key(5), mac(5), t(0), &mut released); // -> PROBE
        for now in [1000, 2000, 3000] {
            tick(&mut table, now);
        }
        table.resolve(key(6), pkt(6), t(3000)); // INCOMPLETE
        table.lookup(key(5), t(3000)); // STALE -> PROBE

        let mut records: Vec<NeighRecord> = table.records(t(3500)).collect();
        records.sort_by_key(|r| r.key);
        let states: Vec<(NeighKey, &str, Option<EthernetAddress>)> = records
            .iter()
            .map(|r| (r.key, r.state.as_str(), r.mac))
            .collect();
        assert_eq!(
            states,
            vec![
                (key(1), "FAILED", None),
                (key(2), "FAILED", None),
                (key(3), "REACHABLE", Some(mac(3))),
                (key(4), "STALE", Some(mac(4))),
                (key(5), "PROBE", Some(mac(5))),
                (key(6), "INCOMPLETE", None),
            ]
        );
        let by_key = |k: NeighKey| records.iter().find(|r| r.key == k).copied().unwrap();
        assert_eq!(by_key(key(2)).age_ms, 500);
        assert_eq!(by_key(key(2)).probes, MAX_PROBES);
        assert_eq!(by_key(key(3)).age_ms, 1000);
        assert_eq!(by_key(key(5)).probes, 1);
        assert_eq!(by_key(key(6)).queued, 1);
        assert_eq!(by_key(key(4)).age_ms, 3500);
        assert_eq!(NeighState::Probe.to_string(), "PROBE");

        // FAILED entries past their hold are left out.
        assert_eq!(
            table.records(t(6000)).filter(|r| r.key == key(2)).count(),
            0
        );
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let mut table = Table::new(4);
        table.resolve(key(1), pkt(1), t(10_000));
        table.confirm(key(2), mac(2), t(10_000), &mut Vec::new());
        assert_eq!(
            table.resolve(key(1), pkt(2), t(0)),
            Resolve::Queued { probe: false }
        );
        assert_eq!(
            table.lookup(key(2), t(0)),
            NeighLookup::Known {
                mac: mac(2),
                probe: false
            }
        );
        let (done, _, _) = tick(&mut table, 0);
        assert_eq!(done, NeighTick::default());
        assert_eq!(table.record(&key(1), t(0)).unwrap().age_ms, 0);
        tick(&mut table, u64::MAX);
        tick(&mut table, u64::MAX);
        tick(&mut table, u64::MAX);
        assert!(table.records(t(u64::MAX)).count() <= 2);
    }
}
