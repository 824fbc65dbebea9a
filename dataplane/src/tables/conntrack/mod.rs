//! The connection tracking table: one entry per connection, found from either direction.
//!
//! An entry holds the connection's tuple as its first packet had it (`orig`) and the tuple
//! its replies will have after translation (`reply`); both go into one hash index, so a packet
//! of either direction is one lookup. Translating a packet means rewriting its tuple to the
//! inverse of the other direction's tuple ([`Entry::translated`]).
//!
//! The table is bounded. When it is full an insert first takes the place of an expired entry,
//! then of one that never saw a reply (a half-open connection, a scan), looking at a bounded
//! number of slots from a moving hand; when neither is found the insert fails and is counted.
//! [`Conntrack::tick`] sweeps a slice of the table each call so that expired entries go within
//! about a minute even when nothing looks them up.
//!
//! Threads: a table belongs to one worker. Every port of a switch is served by that one
//! worker, so both directions of a connection meet the same table; a second worker would need
//! the two directions steered to it by the flow's symmetric hash.

pub mod tcp;

use std::net::{Ipv4Addr, SocketAddrV4};

use hashbrown::HashMap;

pub use tcp::{Segment as TcpSegment, Side as TcpSide, TcpInvalid, TcpState, TcpTrack};

use super::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use super::Timestamp;

/// UDP timeout before a reply is seen (`nf_conntrack_udp_timeout`).
pub const UDP_TIMEOUT_MS: u64 = 30_000;
/// UDP timeout once both directions were seen (`nf_conntrack_udp_timeout_stream`).
pub const UDP_STREAM_TIMEOUT_MS: u64 = 120_000;
/// ICMP echo (`nf_conntrack_icmp_timeout`).
pub const ICMP_TIMEOUT_MS: u64 = 30_000;
/// Other protocols (`nf_conntrack_generic_timeout`).
pub const GENERIC_TIMEOUT_MS: u64 = 600_000;
/// Default bound of a table.
pub const DEFAULT_MAX: usize = 1 << 20;
/// Slots an insert into a full table looks at for one to take.
const EVICT_SCAN: usize = 64;

/// A connection's tuple in one direction. For ICMP echo `sport` is the identifier and `dport`
/// is 0; for protocols without ports both are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// `tcp 10.42.0.2:40000 > 10.96.0.10:80`, as a trace or a log names a connection; ICMP
/// shows its identifier as the port.
impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            1 => "icmp".to_string(),
            132 => "sctp".to_string(),
            p => format!("proto {p}"),
        };
        write!(
            f,
            "{proto} {}:{} > {}:{}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

impl FlowKey {
    /// The tuple of a packet going the other way.
    pub fn reversed(&self) -> FlowKey {
        match self.proto {
            PROTO_ICMP => FlowKey {
                src: self.dst,
                dst: self.src,
                ..*self
            },
            _ => FlowKey {
                src: self.dst,
                dst: self.src,
                sport: self.dport,
                dport: self.sport,
                proto: self.proto,
            },
        }
    }

    /// A hash of the tuple (fixed, for backend choice).
    pub fn hash64(&self) -> u64 {
        let a = u64::from(u32::from(self.src)) << 32 | u64::from(u32::from(self.dst));
        let b = u64::from(self.sport) << 24 | u64::from(self.dport) << 8 | u64::from(self.proto);
        super::service::mix(a ^ super::service::mix(b))
    }
}

/// A direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Original = 0,
    Reply = 1,
}

/// Protocol state of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoState {
    Tcp(TcpTrack),
    Udp,
    Icmp,
    Other,
}

/// Which translations an entry does.
pub const NAT_SNAT: u8 = 1;
pub const NAT_DNAT: u8 = 2;

/// One tracked connection.
#[derive(Debug, Clone)]
pub struct Entry {
    pub orig: FlowKey,
    pub reply: FlowKey,
    pub proto: ProtoState,
    /// A packet of the reply direction was seen.
    pub replied: bool,
    pub created: Timestamp,
    pub expires: Timestamp,
    /// `NAT_SNAT | NAT_DNAT`.
    pub nat: u8,
    /// The Service and backend this connection was balanced to.
    pub backend: Option<(u32, SocketAddrV4)>,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// The network policy allowed its original direction (see the pipeline's policy stage):
    /// its packets pass without another look, its replies as replies.
    pub policy_allowed: bool,
}

impl Entry {
    /// A new entry for a first packet with tuple `orig`, translated to reply tuple `reply`.
    pub fn new(orig: FlowKey, reply: FlowKey, proto: ProtoState, now: Timestamp) -> Entry {
        let mut e = Entry {
            orig,
            reply,
            proto,
            replied: false,
            created: now,
            expires: now,
            nat: 0,
            backend: None,
            packets: [0; 2],
            bytes: [0; 2],
            policy_allowed: false,
        };
        e.refresh(now);
        e
    }

    /// The tuple a packet of direction `dir` leaves with.
    #[inline]
    pub fn translated(&self, dir: Dir) -> FlowKey {
        match dir {
            Dir::Original => self.reply.reversed(),
            Dir::Reply => self.orig.reversed(),
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        match self.proto {
            ProtoState::Tcp(t) => t.state.timeout_ms(),
            ProtoState::Udp if self.replied => UDP_STREAM_TIMEOUT_MS,
            ProtoState::Udp => UDP_TIMEOUT_MS,
            ProtoState::Icmp => ICMP_TIMEOUT_MS,
            ProtoState::Other => GENERIC_TIMEOUT_MS,
        }
    }

    /// Restarts the entry's timer for its current state.
    pub fn refresh(&mut self, now: Timestamp) {
        self.expires = Timestamp::from_millis(now.millis() + self.timeout_ms());
    }

    /// Counts a packet and restarts the timer.
    #[inline]
    pub fn seen(&mut self, dir: Dir, len: usize, now: Timestamp) {
        self.packets[dir as usize] += 1;
        self.bytes[dir as usize] += len as u64;
        if dir == Dir::Reply {
            self.replied = true;
        }
        self.refresh(now);
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }

    /// Whether the connection is settled: a reply was seen and, for TCP, it is established
    /// or closing normally. Unsettled entries are evicted first.
    pub fn is_assured(&self) -> bool {
        self.replied
            && !matches!(
                self.proto,
                ProtoState::Tcp(TcpTrack {
                    state: TcpState::SynSent | TcpState::SynRecv | TcpState::SynSent2,
                    ..
                })
            )
    }

    pub fn proto_name(&self) -> &'static str {
        match self.orig.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            PROTO_ICMP => "icmp",
            _ => "ip",
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.proto {
            ProtoState::Tcp(t) => t.state.name(),
            _ if self.replied => "REPLIED",
            _ => "UNREPLIED",
        }
    }
}

/// Which entries a flush removes: every field given must match (an address or port matches
/// any of the entry's four addresses or ports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<u8>,
    pub addr: Option<Ipv4Addr>,
    pub port: Option<u16>,
    /// Connections balanced by this Service (its id) ...
    pub service: Option<u32>,
    /// ... to this backend.
    pub backend: Option<SocketAddrV4>,
    /// Connections whose first packet was addressed to this destination (a port forward's
    /// address and port; the protocol is `proto`).
    pub orig_dst: Option<SocketAddrV4>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        let addr_ok = self
            .addr
            .is_none_or(|a| [e.orig.src, e.orig.dst, e.reply.src, e.reply.dst].contains(&a));
        let port_ok = self.port.is_none_or(|p| {
            [e.orig.sport, e.orig.dport, e.reply.sport, e.reply.dport].contains(&p)
        });
        self.proto.is_none_or(|p| p == e.orig.proto)
            && addr_ok
            && port_ok
            && self
                .service
                .is_none_or(|s| e.backend.is_some_and(|(id, _)| id == s))
            && self
                .backend
                .is_none_or(|b| e.backend.is_some_and(|(_, a)| a == b))
            && self
                .orig_dst
                .is_none_or(|d| e.orig.dst == *d.ip() && e.orig.dport == d.port())
    }
}

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The table is full of live, settled connections.
    Full,
    /// A tuple is already tracked.
    Clash,
}

/// Counters of a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    pub inserted: u64,
    pub insert_failed: u64,
    pub clashes: u64,
    /// Entries removed when they timed out.
    pub expired: u64,
    /// Live entries that never saw a reply, evicted to make room.
    pub early_drops: u64,
    /// Entries removed by flush, backend removal or a reopened connection.
    pub deleted: u64,
}

/// See the module documentation.
#[derive(Clone)]
pub struct Conntrack {
    index: HashMap<FlowKey, u32>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    len: usize,
    max: usize,
    hand: usize,
    per_backend: HashMap<(u32, SocketAddrV4), u32>,
    pub stats: ConntrackStats,
}

impl Conntrack {
    pub fn new(max: usize) -> Conntrack {
        Conntrack {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            max: max.max(1),
            hand: 0,
            per_backend: HashMap::new(),
            stats: ConntrackStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_entries(&self) -> usize {
        self.max
    }

    pub fn set_max_entries(&mut self, max: usize) {
        self.max = max.max(1);
    }

    /// The live entry a packet with tuple `key` belongs to, and the packet's direction. An
    /// expired entry found on the way is removed.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: Timestamp) -> Option<(u32, Dir)> {
        let v = *self.index.get(key)?;
        let slot = v >> 1;
        let dir = if v & 1 == 0 {
            Dir::Original
        } else {
            Dir::Reply
        };
        if self.entry(slot).is_expired(now) {
            self.remove(slot);
            self.stats.expired += 1;
            return None;
        }
        Some((slot, dir))
    }

    /// Whether a live (or not yet swept) entry has the tuple `key` in either direction.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.index.contains_key(key)
    }

    pub fn entry(&self, slot: u32) -> &Entry {
        self.slots[slot as usize]
            .as_ref()
            .expect("a slot from the index")
    }

    pub fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        self.slots[slot as usize]
            .as_mut()
            .expect("a slot from the index")
    }

    /// Inserts an entry; its two tuples must be free.
    pub fn insert(&mut self, entry: Entry, now: Timestamp) -> Result<u32, InsertError> {
        if self.index.contains_key(&entry.orig) || self.index.contains_key(&entry.reply) {
            self.stats.clashes += 1;
            return Err(InsertError::Clash);
        }
        if self.len >= self.max && !self.make_room(now) {
            self.stats.insert_failed += 1;
            return Err(InsertError::Full);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(entry.orig, slot << 1);
        if entry.reply != entry.orig {
            self.index.insert(entry.reply, slot << 1 | 1);
        }
        if let Some(b) = entry.backend {
            *self.per_backend.entry(b).or_insert(0) += 1;
        }
        self.slots[slot as usize] = Some(entry);
        self.len += 1;
        self.stats.inserted += 1;
        Ok(slot)
    }

    /// Frees one slot of a full table: an expired entry, else one without a reply.
    fn make_room(&mut self, now: Timestamp) -> bool {
        let n = self.slots.len();
        if n == 0 {
            return false;
        }
        let mut unassured = None;
        for _ in 0..EVICT_SCAN.min(n) {
            self.hand = (self.hand + 1) % n;
            if let Some(e) = &self.slots[self.hand] {
                if e.is_expired(now) {
                    self.remove(self.hand as u32);
                    self.stats.expired += 1;
                    return true;
                }
                if unassured.is_none() && !e.is_assured() {
                    unassured = Some(self.hand as u32);
                }
            }
        }
        match unassured {
            Some(s) => {
                self.remove(s);
                self.stats.early_drops += 1;
                true
            }
            None => false,
        }
    }

    /// Removes an entry, returning it.
    pub fn remove(&mut self, slot: u32) -> Entry {
        let e = self.slots[slot as usize]
            .take()
            .expect("a slot from the index");
        self.index.remove(&e.orig);
        if e.reply != e.orig {
            self.index.remove(&e.reply);
        }
        if let Some(b) = e.backend {
            if let Some(c) = self.per_backend.get_mut(&b) {
                *c -= 1;
                if *c == 0 {
                    self.per_backend.remove(&b);
                }
            }
        }
        self.free.push(slot);
        self.len -= 1;
        e
    }

    /// Connections tracked to a Service's backend.
    pub fn backend_connections(&self, service: u32, backend: SocketAddrV4) -> u32 {
        self.per_backend
            .get(&(service, backend))
            .copied()
            .unwrap_or(0)
    }

    /// Sweeps up to `budget` slots from where the last sweep stopped, removing expired
    /// entries; returns how many went.
    pub fn tick(&mut self, now: Timestamp, budget: usize) -> usize {
        let n = self.slots.len();
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            self.hand = (self.hand + 1) % n;
            if self.slots[self.hand]
                .as_ref()
                .is_some_and(|e| e.is_expired(now))
            {
                self.remove(self.hand as u32);
                removed += 1;
            }
        }
        self.stats.expired += removed as u64;
        if self.len == 0 && !self.slots.is_empty() {
            // Give the memory of a burst back.
            self.slots = Vec::new();
            self.free = Vec::new();
            self.index = HashMap::new();
            self.hand = 0;
        }
        removed
    }

    /// Removes the entries `remove` picks; returns how many.
    pub fn remove_where(&mut self, mut remove: impl FnMut(&Entry) -> bool) -> usize {
        let mut n = 0;
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(&mut remove) {
                self.remove(slot as u32);
                n += 1;
            }
        }
        self.stats.deleted += n as u64;
        n
    }

    /// The live entries.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.slots.iter().flatten()
    }

    /// Makes room for `additional` more entries (within the bound) without growing the table
    /// one step at a time.
    pub fn reserve(&mut self, additional: usize) {
        let n = additional.min(self.max.saturating_sub(self.len));
        self.index.reserve(n * 2);
        self.slots.reserve(n.saturating_sub(self.free.len()));
    }

    /// Slots in use or free (the bound of [`entries_in`](Self::entries_in)).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The entries in slots `range` (clipped to [`slot_count`](Self::slot_count)): for
    /// walking the table a slice at a time, letting go of it in between.
    pub fn entries_in(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = &Entry> + '_ {
        let end = range.end.min(self.slots.len());
        let start = range.start.min(end);
        self.slots[start..end].iter().flatten()
    }

    /// Bytes the table takes: the slots and the index.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<Entry>>()
            + self.free.capacity() * 4
            + self.index.capacity() * (std::mem::size_of::<(FlowKey, u32)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::new(10, 42, 0, 2),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            sport,
            dport: 53,
            proto: PROTO_UDP,
        }
    }

    fn masq(k: FlowKey, port: u16) -> FlowKey {
        FlowKey {
            src: k.dst,
            dst: Ipv4Addr::new(10, 200, 0, 1),
            sport: k.dport,
            dport: port,
            proto: k.proto,
        }
    }

    #[test]
    fn both_directions_find_the_entry_and_translate() {
        let mut ct = Conntrack::new(10);
        let now = Timestamp::from_secs(1);
        let k = key(5000);
        let slot = ct
            .insert(Entry::new(k, masq(k, 40000), ProtoState::Udp, now), now)
            .unwrap();
        assert_eq!(ct.lookup(&k, now), Some((slot, Dir::Original)));
        let r = masq(k, 40000);
        assert_eq!(ct.lookup(&r, now), Some((slot, Dir::Reply)));
        let e = ct.entry(slot);
        let out = e.translated(Dir::Original);
        assert_eq!(out.src, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(out.sport, 40000);
        assert_eq!(out.dst, k.dst);
        let back = e.translated(Dir::Reply);
        assert_eq!(back.dst, k.src);
        assert_eq!(back.dport, 5000);
    }

    #[test]
    fn icmp_reverse_keeps_the_identifier() {
        let k = FlowKey {
            src: Ipv4Addr::new(1, 1, 1, 1),
            dst: Ipv4Addr::new(2, 2, 2, 2),
            sport: 77,
            dport: 0,
            proto: PROTO_ICMP,
        };
        let r = k.reversed();
        assert_eq!((r.src, r.dst, r.sport, r.dport), (k.dst, k.src, 77, 0));
    }

    #[test]
    fn udp_timeouts_and_expiry() {
        let mut ct = Conntrack::new(10);
        let t0 = Timestamp::from_secs(0);
        let k = key(1);
        let slot = ct
            .insert(Entry::new(k, k.reversed(), ProtoState::Udp, t0), t0)
            .unwrap();
        assert_eq!(ct.entry(slot).expires, Timestamp::from_secs(30));
        ct.entry_mut(slot)
            .seen(Dir::Reply, 100, Timestamp::from_secs(10));
        assert_eq!(ct.entry(slot).expires, Timestamp::from_secs(130));
        assert!(ct.lookup(&k, Timestamp::from_secs(129)).is_some());
        assert!(ct.lookup(&k, Timestamp::from_secs(130)).is_none());
        assert!(ct.is_empty());
        assert_eq!(ct.stats.expired, 1);
    }

    #[test]
    fn clash_is_refused() {
        let mut ct = Conntrack::new(10);
        let now = Timestamp::from_secs(0);
        let a = key(1);
        let b = key(2);
        ct.insert(Entry::new(a, masq(a, 40000), ProtoState::Udp, now), now)
            .unwrap();
        // b would get the same reply tuple.
        assert_eq!(
            ct.insert(Entry::new(b, masq(a, 40000), ProtoState::Udp, now), now),
            Err(InsertError::Clash)
        );
        assert!(ct.contains(&masq(a, 40000)));
        assert!(!ct.contains(&masq(a, 40001)));
    }

    #[test]
    fn a_full_table_evicts_expired_then_unreplied_then_refuses() {
        let mut ct = Conntrack::new(3);
        let t0 = Timestamp::from_secs(0);
        for p in 1..=3 {
            let k = key(p);
            ct.insert(Entry::new(k, k.reversed(), ProtoState::Udp, t0), t0)
                .unwrap();
        }
        // All three unreplied and live: one is evicted early.
        let k = key(4);
        ct.insert(Entry::new(k, k.reversed(), ProtoState::Udp, t0), t0)
            .unwrap();
        assert_eq!(ct.len(), 3);
        assert_eq!(ct.stats.early_drops, 1);
        // Make every entry replied: nothing can go.
        let slots: Vec<u32> = ct.index.values().map(|v| v >> 1).collect();
        for s in slots {
            ct.entry_mut(s).seen(Dir::Reply, 1, t0);
        }
        let k = key(5);
        assert_eq!(
            ct.insert(Entry::new(k, k.reversed(), ProtoState::Udp, t0), t0),
            Err(InsertError::Full)
        );
        assert_eq!(ct.stats.insert_failed, 1);
        // Later they expire, and an insert takes an expired slot.
        let later = Timestamp::from_secs(200);
        ct.insert(Entry::new(k, k.reversed(), ProtoState::Udp, later), later)
            .unwrap();
        assert_eq!(ct.stats.expired, 1);
    }

    #[test]
    fn tick_sweeps_and_backend_counts_follow() {
        let mut ct = Conntrack::new(100);
        let t0 = Timestamp::from_secs(0);
        let be = SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, 9), 80);
        for p in 1..=10 {
            let k = key(p);
            let mut e = Entry::new(k, k.reversed(), ProtoState::Udp, t0);
            e.backend = Some((7, be));
            ct.insert(e, t0).unwrap();
        }
        assert_eq!(ct.backend_connections(7, be), 10);
        assert_eq!(ct.remove_where(|e| e.orig.sport <= 4), 4);
        assert_eq!(ct.backend_connections(7, be), 6);
        assert_eq!(ct.tick(Timestamp::from_secs(31), 1000), 6);
        assert!(ct.is_empty());
        assert_eq!(ct.backend_connections(7, be), 0);
    }
}
