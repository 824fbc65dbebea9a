//! The NAT stage of the router: connection tracking, port forwards and Service load
//! balancing (DNAT), source NAT and masquerade, and the ICMP errors about translated
//! connections.
//!
//! It runs on every IPv4 packet the router receives, before the route lookup, while any NAT
//! rule exists or connections are still tracked:
//!
//! - A packet of a tracked connection (either direction, one hash lookup) is checked (TCP
//!   state and window: an invalid segment is dropped, never forwarded untranslated), counted,
//!   and rewritten to the other direction's inverse tuple with checksums patched.
//! - The first packet of a new connection (a TCP SYN, a UDP datagram, an ICMP echo request,
//!   any packet of another protocol) looks up its destination among the frontends: a port
//!   forward or a Service, whose scheduler (and ClientIP affinity) picks a backend; a Service
//!   without backends answers with a TCP RST or an ICMP port unreachable. Then the route to
//!   the (new) destination decides source NAT: a connection that comes back out of the VLAN it
//!   came in on after DNAT (hairpin) is masqueraded behind the interface's address, else the
//!   first `[[snat]]` rule for its source and egress VLAN applies. A translated source gets a
//!   port (or ICMP identifier) drawn at random and checked free in the same step as the entry
//!   is inserted, under the table's lock (the table is shared by all workers, see
//!   [`SharedTables`](super::super::SharedTables)), so no two connections can get one mapping
//!   and no parallel query from one socket can lose its entry, whichever workers read them.
//! - An ICMP error quoting a tracked packet is translated: the quoted header back to what its
//!   sender sent, the outer destination to that sender. The router's own errors about a
//!   translated packet go through the same translation.
//! - Later fragments carry no ports: the translation of the first fragment is remembered for
//!   a few seconds by (source, destination, protocol, identification).

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use hashbrown::HashMap;

use super::super::nat::{self as packet_nat, Parsed, L4};
use super::super::routing::{NextHop, RoutingState};
use super::super::{DropReason, ForwardingState};
use super::L3;
use super::{Icmpv4Error, L2};
use crate::tables::conntrack::{InsertError, ProtoState, NAT_DNAT, NAT_SNAT};
use crate::tables::service::{mix, PROTO_ICMP, PROTO_TCP};
use crate::tables::{
    Backend, Conntrack, CtEntry, Dir, FlowKey, Scheduler, Service, Target, Timestamp,
};
use crate::wire::VlanId;

/// How long the translation of a first fragment is kept for the fragments after it.
const FRAGMENT_MS: u64 = 5_000;
const FRAGMENTS_MAX: usize = 4096;
const AFFINITY_MAX: usize = 1 << 20;
/// Translated source ports are drawn from here (as Linux's masquerade does).
const PORT_MIN: u32 = 1024;
/// The first run of consecutive ports [`allocate_port`] tries, and the shortest; each run
/// after the first is half as long: at most 128 + 64 + 32 + 16 = 240 lookups.
const PORT_RUN: u32 = 128;
const PORT_RUN_MIN: u32 = 16;
/// Slots the once-a-second sweep looks at, at least.
const SWEEP_MIN: usize = 4096;

/// A fragmented packet: (source, destination, protocol, identification) as it arrived.
type FragmentKey = (Ipv4Addr, Ipv4Addr, u8, u16);
/// How its first fragment was translated: new (source, destination), and until when that
/// holds.
type FragmentTranslation = (Ipv4Addr, Ipv4Addr, Timestamp);

/// What Service schedulers and fragment translation remember between packets.
#[derive(Clone)]
pub struct Balancer {
    round_robin: HashMap<u32, u64>,
    affinity: HashMap<(u32, Ipv4Addr), (SocketAddrV4, Timestamp)>,
    fragments: HashMap<FragmentKey, FragmentTranslation>,
    rng: u64,
}

impl Default for Balancer {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Balancer {
            round_robin: HashMap::new(),
            affinity: HashMap::new(),
            fragments: HashMap::new(),
            rng: mix(seed ^ u64::from(std::process::id())) | 1,
        }
    }
}

impl Balancer {
    /// ClientIP affinities: (Service id, client, backend, expiry).
    pub fn affinities(
        &self,
    ) -> impl Iterator<Item = (u32, Ipv4Addr, SocketAddrV4, Timestamp)> + '_ {
        self.affinity
            .iter()
            .map(|(&(svc, client), &(backend, expires))| (svc, client, backend, expires))
    }

    /// Puts back an affinity from a checkpoint, within the table's bound.
    pub fn restore_affinity(
        &mut self,
        service: u32,
        client: Ipv4Addr,
        backend: SocketAddrV4,
        expires: Timestamp,
    ) -> bool {
        if self.affinity.len() >= AFFINITY_MAX {
            return false;
        }
        self.affinity.insert((service, client), (backend, expires));
        true
    }

    /// xorshift64*.
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The backend of a new connection `key` to `svc`: the client's affinity if it has one to
    /// a backend still taking connections, else the scheduler's choice.
    fn pick(
        &mut self,
        ct: &Conntrack,
        svc: &Service,
        key: &FlowKey,
        now: Timestamp,
    ) -> Option<SocketAddrV4> {
        if let Some(ms) = svc.affinity_ms {
            if let Some((b, expires)) = self.affinity.get_mut(&(svc.id, key.src)) {
                let alive = svc.backends.iter().any(|x| x.addr == *b && x.weight > 0);
                if *expires > now && alive {
                    *expires = Timestamp::from_millis(now.millis() + ms);
                    return Some(*b);
                }
            }
        }
        // Only round robin keeps a position, only random draws: the others touch no state.
        let counter = if svc.scheduler == Scheduler::RoundRobin {
            let c = self.round_robin.entry(svc.id).or_insert(0);
            let turn = *c;
            *c = c.wrapping_add(1);
            turn
        } else {
            0
        };
        let random = if svc.scheduler == Scheduler::Random {
            self.random()
        } else {
            0
        };
        let client = mix(u64::from(u32::from(key.src)));
        let chosen = svc.choose(key.hash64(), client, counter, random, |backends| {
            least_connections(ct, svc.id, backends)
        })?;
        if let Some(ms) = svc.affinity_ms {
            if self.affinity.len() >= AFFINITY_MAX {
                self.affinity.retain(|_, (_, e)| *e > now);
            }
            if self.affinity.len() < AFFINITY_MAX {
                self.affinity.insert(
                    (svc.id, key.src),
                    (chosen, Timestamp::from_millis(now.millis() + ms)),
                );
            }
        }
        Some(chosen)
    }
}

/// The active backend with the fewest tracked connections per unit of weight.
fn least_connections(ct: &Conntrack, service: u32, backends: &[Backend]) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for (i, b) in backends.iter().enumerate() {
        if b.weight == 0 {
            continue;
        }
        let conns = u64::from(ct.backend_connections(service, b.addr));
        let w = u64::from(b.weight);
        // conns / w < best_conns / best_w, without division.
        if best.is_none_or(|(_, bc, bw)| conns * bw < bc * w) {
            best = Some((i, conns, w));
        }
    }
    best.map(|(i, _, _)| i)
}

/// The VLAN a packet to `dst` leaves through, and its next hop there: where source NAT is
/// decided. `None` for the router's own addresses and for routes that leave no VLAN.
fn egress_of(routing: &RoutingState, dst: Ipv4Addr) -> Option<(VlanId, IpAddr)> {
    if routing.local.contains_key(&IpAddr::V4(dst)) {
        return None;
    }
    match routing.lookup(IpAddr::V4(dst))?.next_hop {
        NextHop::Connected { vlan } => Some((vlan, IpAddr::V4(dst))),
        NextHop::Gateway { vlan, via } => Some((vlan, via)),
        _ => None,
    }
}

/// The address masquerade uses on `vlan`: the interface address on the next hop's subnet,
/// else its first IPv4 address.
fn masquerade_addr(routing: &RoutingState, vlan: VlanId, next_hop: IpAddr) -> Option<Ipv4Addr> {
    let iface = routing.interface(vlan)?;
    let IpAddr::V4(hop) = next_hop else {
        return iface.v4.first().map(|(a, _)| *a);
    };
    iface
        .v4
        .iter()
        .find(|(a, len)| super::super::routing::same_subnet_v4(*a, hop, *len))
        .or(iface.v4.first())
        .map(|(a, _)| *a)
}

/// Draws a free value for the translated source port (or ICMP identifier) of `reply` (the
/// reply tuple: the port is its destination port, the identifier its `sport`): a run of
/// consecutive values from a random start, then shorter runs from new random starts (as
/// Linux's `nf_nat_l4proto_unique_tuple`). The search is bounded so that a nearly exhausted
/// range costs a failed connection, not a stalled worker.
pub(super) fn allocate_port(
    ct: &Conntrack,
    reply: &mut FlowKey,
    mut random: impl FnMut() -> u64,
) -> bool {
    let (min, span) = if reply.proto == PROTO_ICMP {
        (0u32, 65536u32)
    } else {
        (PORT_MIN, 65536 - PORT_MIN)
    };
    let mut run = PORT_RUN;
    while run >= PORT_RUN_MIN {
        let start = (random() % u64::from(span)) as u32;
        for i in 0..run.min(span) {
            let port = (min + (start + i) % span) as u16;
            if reply.proto == PROTO_ICMP {
                reply.sport = port;
            } else {
                reply.dport = port;
            }
            if !ct.contains(reply) {
                return true;
            }
        }
        run /= 2;
    }
    false
}

impl L3<'_> {
    /// NAT for the IPv4 packet at `frame[l3..l3 + total]` (its header already checked), before
    /// routing. `Ok` to route it on, rewritten or not.
    pub(super) fn nat_in(
        &mut self,
        state: &ForwardingState,
        in_vlan: Option<VlanId>,
        l3: usize,
        total: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Result<(), DropReason> {
        let packet = &mut frame[l3..l3 + total];
        let p = packet_nat::parse(packet).map_err(|_| DropReason::NatMalformed)?;
        match p.l4 {
            L4::LaterFragment => return self.nat_fragment(state, packet, &p, now),
            L4::IcmpError => {
                if self.translate_icmp_error(packet, p.l4_offset, now) {
                    self.counters.nat.icmp_translated.add(1);
                }
                return Ok(());
            }
            _ => {}
        }
        // The lock is held from the lookup to the insert of a new entry: no other worker can
        // create the same connection in between.
        let shared = self.shared;
        let mut ct = shared.conntrack();
        let found = ct.lookup(&p.key, now).filter(|&(slot, dir)| {
            // An echo request where the entry expects replies (or the other way round) is
            // another ping that happens to use a mapped identifier, such as a ping of the
            // router's own address: translated, it would reach the inside host.
            let other_ping =
                matches!(p.l4, L4::Echo { request } if request != (dir == Dir::Original));
            !(other_ping && ct.entry(slot).translated(dir) != p.key)
        });
        if let Some((slot, dir)) = found {
            let e = ct.entry_mut(slot);
            if let (L4::Tcp(seg), ProtoState::Tcp(track)) = (p.l4, &mut e.proto) {
                if track.update(dir, &seg).is_err() {
                    self.counters.nat.invalid.add(1);
                    return Err(DropReason::ConntrackInvalid);
                }
            }
            e.seen(dir, total, now);
            let to = e.translated(dir);
            crate::pipeline::trace::record(
                self.trace,
                crate::pipeline::Stage::Nat,
                "conntrack_hit",
                move |s| {
                    s.with("flow", e.orig)
                        .with(
                            "direction",
                            if dir == Dir::Original {
                                "original"
                            } else {
                                "reply"
                            },
                        )
                        .with("state", e.state_name());
                    if to != p.key {
                        s.with("translated", to);
                    }
                    if let Some((id, b)) = e.backend {
                        s.with("service", state.nat.service_name(id).unwrap_or("?"))
                            .with("backend", b);
                    }
                },
            );
            drop(ct);
            if to != p.key {
                self.rewrite(packet, p.l4_offset, &p.key, &to);
                self.counters.nat.translated.add(1);
                if p.first_fragment {
                    self.remember_fragment(packet, &p.key, &to, now);
                }
            }
            return Ok(());
        }
        let result = self.nat_new(state, &mut ct, in_vlan, l3, total, frame, p, now);
        // Answered without the lock: the answer is routed, and routing may look at conntrack.
        drop(ct);
        if result == Err(DropReason::ServiceNoBackend) {
            self.reject(state, &p.key, &p, &frame[l3..l3 + total], now);
        }
        result
    }

    /// The first packet of a connection.
    #[allow(clippy::too_many_arguments)]
    fn nat_new(
        &mut self,
        state: &ForwardingState,
        ct: &mut Conntrack,
        in_vlan: Option<VlanId>,
        l3: usize,
        total: usize,
        frame: &mut [u8],
        p: Parsed,
        now: Timestamp,
    ) -> Result<(), DropReason> {
        if !state.nat.is_active() {
            // No rule (the last one just went; tracked connections still drain): nothing
            // would be translated, so nothing is tracked and the table empties.
            return Ok(());
        }
        let key = p.key;
        let routing = &*state.routing;
        let dst_local = routing.local.contains_key(&IpAddr::V4(key.dst));
        let opens = match p.l4 {
            L4::Tcp(seg) => seg.is_initial_syn(),
            L4::Echo { request } => request,
            L4::Udp | L4::Other => true,
            L4::IcmpError | L4::LaterFragment => false,
        };
        let mut to = key;
        let mut nat = 0;
        let mut backend = None;
        if matches!(p.l4, L4::Tcp(_) | L4::Udp) {
            match state.nat.frontend(key.proto, key.dst, key.dport, dst_local) {
                Some(Target::Dnat(sa)) => {
                    to.dst = *sa.ip();
                    to.dport = sa.port();
                    nat |= NAT_DNAT;
                    crate::pipeline::trace::record(
                        self.trace,
                        crate::pipeline::Stage::Nat,
                        "dnat",
                        move |s| {
                            s.with("rule", "port_forward").with("to", sa);
                        },
                    );
                }
                Some(Target::Service(svc)) => {
                    let chosen = if opens {
                        self.shared.balancer().pick(ct, svc, &key, now)
                    } else {
                        None
                    };
                    crate::pipeline::trace::record(
                        self.trace,
                        crate::pipeline::Stage::Nat,
                        "service",
                        move |s| {
                            s.with("service", &svc.name)
                                .with("vip", std::net::SocketAddrV4::new(svc.vip, svc.port))
                                .with(
                                    "scheduler",
                                    format_args!("{:?}", svc.scheduler)
                                        .to_string()
                                        .to_lowercase(),
                                );
                            match chosen {
                                Some(b) => s.with("backend", b),
                                None => s.with("backend", "none"),
                            };
                        },
                    );
                    let Some(b) = chosen else {
                        if !opens {
                            self.counters.nat.invalid.add(1);
                            return Err(DropReason::ConntrackInvalid);
                        }
                        return Err(DropReason::ServiceNoBackend);
                    };
                    to.dst = *b.ip();
                    to.dport = b.port();
                    nat |= NAT_DNAT;
                    backend = Some((svc.id, b));
                }
                None => {}
            }
        }
        let mut snat_to = None;
        if let Some((out_vlan, hop)) = egress_of(routing, to.dst) {
            if nat & NAT_DNAT != 0 && Some(out_vlan) == in_vlan {
                // Hairpin: the answer must come back through the router.
                snat_to = masquerade_addr(routing, out_vlan, hop);
            } else if let Some(rule) = state
                .nat
                .snat
                .iter()
                .find(|r| r.matches(key.src, key.dst, out_vlan))
            {
                snat_to = rule.to.or_else(|| masquerade_addr(routing, out_vlan, hop));
            }
        }
        if !opens {
            if nat != 0 || snat_to.is_some() {
                // Mid-stream TCP (or an echo reply) that would need translating: no entry
                // to translate it with, so it must not leave untranslated.
                self.counters.nat.invalid.add(1);
                return Err(DropReason::ConntrackInvalid);
            }
            return Ok(());
        }
        if dst_local && nat == 0 {
            // To the router itself: nothing to track.
            return Ok(());
        }
        if let Some(a) = snat_to {
            to.src = a;
            nat |= NAT_SNAT;
        }
        let proto = match p.l4 {
            L4::Tcp(seg) => match crate::tables::conntrack::TcpTrack::new(&seg) {
                Some(t) => ProtoState::Tcp(t),
                None => return Err(DropReason::ConntrackInvalid),
            },
            L4::Udp => ProtoState::Udp,
            L4::Echo { .. } => ProtoState::Icmp,
            _ => ProtoState::Other,
        };
        let mut reply = to.reversed();
        if nat & NAT_SNAT != 0 || ct.contains(&reply) {
            if matches!(p.l4, L4::Tcp(_) | L4::Udp | L4::Echo { .. }) {
                let mut balancer = self.shared.balancer();
                if !allocate_port(ct, &mut reply, || balancer.random()) {
                    return Err(DropReason::NatNoPort);
                }
            } else if ct.contains(&reply) {
                // Tracked by addresses alone, and that pair is taken.
                return Err(DropReason::NatNoPort);
            }
            if reply != to.reversed() {
                nat |= NAT_SNAT;
            }
        }
        let mut entry = CtEntry::new(key, reply, proto, now);
        entry.nat = nat;
        entry.backend = backend;
        let slot = match ct.insert(entry, now) {
            Ok(slot) => {
                crate::pipeline::trace::record(
                    self.trace,
                    crate::pipeline::Stage::Nat,
                    "new_connection",
                    move |s| {
                        let original = reply.reversed();
                        s.with("flow", key).with("translated", original);
                        if nat & NAT_SNAT != 0 {
                            s.with("snat", format_args!("{}:{}", reply.dst, reply.dport));
                        }
                        s.with("table", "conntrack");
                    },
                );
                slot
            }
            Err(InsertError::Full) => {
                self.counters.nat.insert_failed.add(1);
                return Err(DropReason::ConntrackFull);
            }
            Err(InsertError::Clash) => return Err(DropReason::NatNoPort),
        };
        self.counters.nat.connections.add(1);
        let e = ct.entry_mut(slot);
        e.seen(Dir::Original, total, now);
        let to = e.translated(Dir::Original);
        if to != key {
            let packet = &mut frame[l3..l3 + total];
            self.rewrite(packet, p.l4_offset, &key, &to);
            self.counters.nat.translated.add(1);
            if p.first_fragment {
                self.remember_fragment(packet, &key, &to, now);
            }
        }
        Ok(())
    }

    /// Answers a new connection to a Service without backends: TCP RST, else ICMP port
    /// unreachable, from the Service's address; rate limited like ICMP errors.
    fn reject(
        &mut self,
        state: &ForwardingState,
        key: &FlowKey,
        p: &Parsed,
        offending: &[u8],
        now: Timestamp,
    ) {
        if !self.r.icmp_limit.allow(now) {
            return;
        }
        let ident = self.next_ip_ident();
        let mut buf = self.r.buffer();
        buf.resize(L2 + 576, 0);
        let n = match p.l4 {
            L4::Tcp(seg) if key.proto == PROTO_TCP => {
                packet_nat::tcp_reset(&mut buf[L2..], key, &seg, ident)
            }
            _ => super::icmp::icmpv4_error(
                &mut buf[L2..],
                key.dst,
                ident,
                offending,
                Icmpv4Error::PortUnreachable,
            ),
        };
        match n {
            Some(n) => {
                buf.truncate(L2 + n);
                self.counters.nat.rejected.add(1);
                self.send_ip(state, buf, now);
            }
            None => self.r.recycle(buf),
        }
    }

    /// Translates an ICMP error (the IPv4 packet `packet`) that quotes a packet of a tracked
    /// connection; returns whether it did.
    pub(super) fn translate_icmp_error(
        &mut self,
        packet: &mut [u8],
        l4_offset: usize,
        now: Timestamp,
    ) -> bool {
        if !self.shared.tracks_any() {
            return false;
        }
        let Some(q) = packet_nat::quoted(packet, l4_offset) else {
            return false;
        };
        let look = q.key.reversed();
        let mut ct = self.shared.conntrack();
        let Some((slot, dir)) = ct.lookup(&look, now) else {
            return false;
        };
        let to = ct.entry(slot).translated(dir);
        drop(ct);
        if to == look {
            return false;
        }
        packet_nat::translate_error(packet, l4_offset, &q, &to.reversed());
        true
    }

    /// Rewrites a packet from tuple `from` to `to`; a partial transport checksum (the frame
    /// being routed has its checksum left to offload) is updated as such.
    fn rewrite(&self, packet: &mut [u8], l4_offset: usize, from: &FlowKey, to: &FlowKey) {
        if self.r.offload.is_some_and(|o| o.csum.is_some()) {
            packet_nat::rewrite_partial(packet, l4_offset, from, to);
        } else {
            packet_nat::rewrite(packet, l4_offset, from, to, true);
        }
    }

    /// Whether an IPv4 packet the router forwarded was translated (its reply tuple is
    /// tracked).
    pub(super) fn is_translated(&self, packet: &[u8]) -> bool {
        self.shared.tracks_any()
            && packet_nat::parse(packet)
                .is_ok_and(|p| self.shared.conntrack().contains(&p.key.reversed()))
    }

    /// Remembers how the first fragment of a packet was translated, for its later fragments.
    fn remember_fragment(&mut self, packet: &[u8], from: &FlowKey, to: &FlowKey, now: Timestamp) {
        let ident = u16::from_be_bytes([packet[4], packet[5]]);
        let mut balancer = self.shared.balancer();
        let frags = &mut balancer.fragments;
        if frags.len() >= FRAGMENTS_MAX {
            frags.retain(|_, (_, _, e)| *e > now);
            if frags.len() >= FRAGMENTS_MAX {
                return;
            }
        }
        frags.insert(
            (from.src, from.dst, from.proto, ident),
            (
                to.src,
                to.dst,
                Timestamp::from_millis(now.millis() + FRAGMENT_MS),
            ),
        );
    }

    /// A fragment after the first: translated as its first fragment was; dropped if that is
    /// not known and a source NAT rule would apply to it (its first fragment was lost,
    /// reordered, or is too old): it must not leave with the inside address.
    fn nat_fragment(
        &mut self,
        state: &ForwardingState,
        packet: &mut [u8],
        p: &Parsed,
        now: Timestamp,
    ) -> Result<(), DropReason> {
        let ident = u16::from_be_bytes([packet[4], packet[5]]);
        let k = (p.key.src, p.key.dst, p.key.proto, ident);
        let known = self.shared.balancer().fragments.get(&k).copied();
        if let Some((src, dst, expires)) = known {
            if expires > now {
                let to = FlowKey { src, dst, ..p.key };
                packet_nat::rewrite(packet, p.l4_offset, &p.key, &to, false);
                self.counters.nat.translated.add(1);
                return Ok(());
            }
        }
        // As `nat_new` decides: a rule for the source and the VLAN the fragment leaves by.
        let would_snat = egress_of(&state.routing, p.key.dst).is_some_and(|(out_vlan, _)| {
            state
                .nat
                .snat
                .iter()
                .any(|r| r.matches(p.key.src, p.key.dst, out_vlan))
        });
        if would_snat {
            return Err(DropReason::NatFragment);
        }
        Ok(())
    }

    /// Timer work (about once a second): a slice of the conntrack table swept for expired
    /// entries, expired affinities and fragment translations forgotten.
    pub(super) fn nat_tick(&mut self, now: Timestamp) {
        let mut ct = self.shared.conntrack();
        if !ct.is_empty() {
            let budget = (ct.len() / 30).max(SWEEP_MIN);
            ct.tick(now, budget);
        }
        drop(ct);
        let mut b = self.shared.balancer();
        if !b.affinity.is_empty() {
            b.affinity.retain(|_, (_, e)| *e > now);
        }
        if !b.fragments.is_empty() {
            b.fragments.retain(|_, (_, _, e)| *e > now);
        }
    }
}
