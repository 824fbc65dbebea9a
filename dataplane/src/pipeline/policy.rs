//! The policy stage: network policy between ports, stateful.
//!
//! A packet from port `from` to port `to` must be allowed by the sender's egress rules and
//! by the receiver's ingress rules (each a [`Classifier`] compiled by control; a port with
//! none in a direction is not restricted in it). The sender's rules see the packet's
//! destination as the peer, the receiver's its source; both match its destination port.
//!
//! When it runs. For a frame to one port, once the L2 and L3 stages decided where it goes
//! (after NAT: a Service's backend, not its virtual IP, is the destination a sender's rules
//! see; a masqueraded packet's receiver sees the router's address). For a flood, for each
//! member. For a routed packet waiting on its next hop, the sender's rules before it waits
//! and the receiver's when it is sent.
//!
//! State. An IPv4 connection whose first packet was allowed is marked allowed in conntrack
//! (the NAT entry of a translated connection, else an entry of its own, not translated):
//! its later packets, and its replies, pass on that one lookup. A reply is allowed because
//! its connection was, whatever the rules would say of it alone. Cached verdicts stay
//! while the connection lives: a policy change applies to new connections (`conntrack
//! flush` ends old ones). IPv6 connections, which conntrack does not track (it is IPv4
//! only, for NAT), are kept the same way in a table of their own ([`Flows6`]): allowed
//! connections by tuple, expiring when idle (TCP after an hour, UDP after two minutes,
//! anything else after 30 s).
//!
//! [`Flows6`]: crate::tables::policy::Flows6
//!
//! What is never restricted: packets from or to the router's own addresses (the host's
//! node traffic, like a kubelet's probes); neighbour discovery and MLD; a DHCP client's
//! request; anything that is not IP (ARP). ICMP is a protocol without ports: only rules
//! without `ports` match it; an ICMP error about a connection the policy allowed passes as
//! related to it. A later IPv4 fragment (no ports) is matched as if its port were any port
//! of its protocol: it is useless without the first fragment, which was matched fully.

use std::net::{IpAddr, Ipv6Addr};

use super::nat::{self as packet_nat, L4};
use super::security::{upper, Upper};
use super::shared::SharedTables;
use super::trace::{record, Stage, Trace};
use super::{DropReason, ForwardingState};
use crate::tables::conntrack::{Dir, ProtoState, TcpTrack};
use crate::tables::policy::{Classifier, Direction, Flow6, Flow6Dir, Outcome, PROTO_SCTP};
use crate::tables::service::{PROTO_TCP, PROTO_UDP};
use crate::tables::{CtEntry, FlowKey, PortId, Timestamp};

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const PROTO_ICMPV6: u8 = 58;

/// Where a packet goes, as the policy stage sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Path {
    /// The port it came in on (`None`: from the router, a packet released after its next
    /// hop resolved).
    pub from: Option<PortId>,
    /// The port it goes out of (`None`: not a port with policy, such as an IPIP tunnel).
    pub to: Option<PortId>,
    /// A cached verdict may be used (not for one member of a flood: the cached verdict is
    /// for the connection's one receiver).
    pub shortcut: bool,
    /// The verdict, when it allows, is to be cached: both sides were checked.
    pub cache: bool,
    /// Switched, not routed: no other stage tracks the connection's state, so this one
    /// counts its packets and follows its TCP state.
    pub bridged: bool,
}

impl Path {
    /// A frame from `from` to `to` (a port, or `None`: a tunnel), decided in one place: both
    /// sides checked, the verdict cached.
    pub fn between(from: PortId, to: Option<PortId>, bridged: bool) -> Path {
        Path {
            from: Some(from),
            to,
            shortcut: true,
            cache: true,
            bridged,
        }
    }

    /// One member `to` of a flood from `from`: decided on its own, nothing cached.
    pub fn flood_member(from: Option<PortId>, to: PortId) -> Path {
        Path {
            from,
            to: Some(to),
            shortcut: false,
            cache: false,
            bridged: false,
        }
    }

    /// A routed packet from `from` that waits for its next hop or is cut into fragments: the
    /// sender's side only, now.
    pub fn sender(from: PortId) -> Path {
        Path {
            from: Some(from),
            to: None,
            shortcut: true,
            cache: false,
            bridged: false,
        }
    }

    /// A routed packet the router sends on later, to `to`: the receiver's side (the
    /// sender's was checked before it waited); the verdict cached.
    pub fn released(to: PortId) -> Path {
        Path {
            from: None,
            to: Some(to),
            shortcut: true,
            cache: true,
            bridged: false,
        }
    }
}

/// Whether the policy stage has to look at a packet from `from` to `to`: when either port
/// has rules in either direction. (Rules for the reply's direction count too: the
/// connection must be known allowed when its replies come.)
#[inline]
pub(super) fn applies(state: &ForwardingState, from: Option<PortId>, to: Option<PortId>) -> bool {
    let t = &*state.policy;
    let restricted = |p: Option<PortId>| {
        p.and_then(|p| t.ports.get(p.index()))
            .is_some_and(|p| p.ingress.is_some() || p.egress.is_some())
    };
    t.active && (restricted(from) || restricted(to))
}

/// What the stage reads of a packet.
#[derive(Debug, Clone, Copy)]
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: Option<u16>,
    dport: Option<u16>,
    /// Its IPv4 connection tuple, when it has one to track.
    key: Option<FlowKey>,
    /// Its TCP segment, for the state of a connection the stage tracks itself.
    l4: Option<L4>,
    /// An ICMP error: the tuple of the packet it quotes.
    related: Option<FlowKey>,
    /// Its IPv6 connection tuple, when it has one to track.
    key6: Option<Flow6>,
    /// Never restricted: neighbour discovery, MLD, a DHCP client's request.
    infrastructure: bool,
    len: usize,
}

/// Checks the packet of `frame` (its EtherType at `inner_offset`) on `path`; `Err` to drop
/// it, counted by the caller.
#[inline(never)]
pub(super) fn check(
    shared: &SharedTables,
    trace: &mut Option<Box<Trace>>,
    state: &ForwardingState,
    path: Path,
    frame: &[u8],
    inner_offset: usize,
    now: Timestamp,
) -> Result<(), DropReason> {
    let Some(ethertype) = frame.get(inner_offset..inner_offset + 2) else {
        return Ok(());
    };
    let ip = &frame[inner_offset + 2..];
    let packet = match [ethertype[0], ethertype[1]] {
        ETHERTYPE_IPV4 => parse_v4(ip),
        ETHERTYPE_IPV6 => parse_v6(ip),
        _ => return Ok(()),
    };
    let Some(p) = packet else {
        // An IP packet the stage cannot read the addresses of: nothing could allow it.
        record(trace, Stage::Policy, "malformed", |_| {});
        return Err(DropReason::PolicyDenied);
    };
    let routing = &*state.routing;
    if p.infrastructure || routing.local.contains_key(&p.src) || routing.local.contains_key(&p.dst)
    {
        record(trace, Stage::Policy, "not_restricted", move |s| {
            s.with("src", p.src).with("dst", p.dst);
        });
        return Ok(());
    }
    if let Some(key) = p.related.or(p.key) {
        let mut ct = shared.conntrack();
        // A packet's tuple as it leaves (translated) is the reverse of the other direction's
        // tuple of its entry, for a translated connection and for one that is not.
        if let Some((slot, other)) = ct.lookup(&key.reversed(), now) {
            let dir = match other {
                Dir::Original => Dir::Reply,
                Dir::Reply => Dir::Original,
            };
            let e = ct.entry_mut(slot);
            let related = p.related.is_some();
            if e.policy_allowed && (path.shortcut || dir == Dir::Reply || related) {
                if path.bridged && !related {
                    follow(e, dir, &p, now);
                }
                let flow = e.orig;
                record(trace, Stage::Policy, "established", move |s| {
                    s.with("flow", flow)
                        .with("direction", if related { "related" } else { dir_name(dir) });
                });
                return Ok(());
            }
        }
    }
    if let Some(k6) = p.key6 {
        let dir = shared.policy6().lookup(&k6, now.millis());
        if let Some(dir) = dir.filter(|d| *d == Flow6Dir::Reply || path.shortcut) {
            record(trace, Stage::Policy, "established", move |s| {
                s.with(
                    "flow",
                    format_args!(
                        "{} {}:{} > {}:{}",
                        k6.proto, k6.src, k6.sport, k6.dst, k6.dport
                    ),
                )
                .with(
                    "direction",
                    if dir == Flow6Dir::Reply {
                        "reply"
                    } else {
                        "original"
                    },
                );
            });
            return Ok(());
        }
    }
    decide(trace, state, &path, &p)?;
    if let (true, Some(k6)) = (path.cache, p.key6) {
        shared.policy6().insert(k6, now.millis());
    }
    if let (true, Some(key)) = (path.cache, p.key) {
        let mut ct = shared.conntrack();
        if let Some((slot, _)) = ct.lookup(&key.reversed(), now) {
            ct.entry_mut(slot).policy_allowed = true;
        } else {
            let proto = match p.l4 {
                Some(L4::Tcp(seg)) => {
                    TcpTrack::new(&seg).map_or(ProtoState::Other, ProtoState::Tcp)
                }
                Some(L4::Udp) => ProtoState::Udp,
                Some(L4::Echo { .. }) => ProtoState::Icmp,
                _ => ProtoState::Other,
            };
            let mut e = CtEntry::new(key, key.reversed(), proto, now);
            e.policy_allowed = true;
            e.seen(Dir::Original, p.len, now);
            // A full table or a clash leaves the connection untracked: its packets are
            // decided one by one.
            let _ = ct.insert(e, now);
        }
    }
    Ok(())
}

/// Counts a packet of a connection this stage tracks and follows its TCP state (an
/// out-of-window segment is not dropped here: the endpoints judge it).
fn follow(e: &mut CtEntry, dir: Dir, p: &Packet, now: Timestamp) {
    if let (Some(L4::Tcp(seg)), ProtoState::Tcp(track)) = (p.l4, &mut e.proto) {
        let _ = track.update(dir, &seg);
    }
    e.seen(dir, p.len, now);
}

fn dir_name(d: Dir) -> &'static str {
    match d {
        Dir::Original => "original",
        Dir::Reply => "reply",
    }
}

/// The sender's egress rules, then the receiver's ingress rules, for `p`. Counts the
/// deciding rule of a new connection or a denial.
fn decide(
    trace: &mut Option<Box<Trace>>,
    state: &ForwardingState,
    path: &Path,
    p: &Packet,
) -> Result<(), DropReason> {
    let table = &*state.policy;
    let (from, to, src, dst, port) = (path.from, path.to, p.src, p.dst, p.dport);
    let sides = [
        (from, Direction::Egress, dst),
        (to, Direction::Ingress, src),
    ];
    for (port_id, direction, peer) in sides {
        let Some(port_id) = port_id else { continue };
        let Some(c) = table.classifier(port_id.index(), direction) else {
            continue;
        };
        let outcome = c.classify(peer, p.proto, port);
        c.hit(outcome);
        trace_outcome(trace, state, c, outcome, port_id, direction, p);
        if !outcome.allowed() {
            return Err(DropReason::PolicyDenied);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn trace_outcome(
    trace: &mut Option<Box<Trace>>,
    state: &ForwardingState,
    c: &Classifier,
    outcome: Outcome,
    port: PortId,
    direction: Direction,
    p: &Packet,
) {
    record(
        trace,
        Stage::Policy,
        if outcome.allowed() {
            "allowed"
        } else {
            "denied"
        },
        move |s| {
            let d = c.describe(outcome);
            s.with("port", state.port(port).map_or("?", |p| p.name.as_str()))
                .with("direction", direction.name())
                .with("tier", d.tier);
            if !d.policy.is_empty() {
                s.with("policy", d.policy);
            }
            if let Some(rule) = d.rule {
                s.with("rule", rule);
            }
            s.with("rule_action", d.action)
                .with("src", p.src)
                .with("dst", p.dst)
                .with("protocol", p.proto);
            if let Some(port) = p.dport {
                s.with("dport", port);
            }
        },
    );
}

fn get16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads an IPv4 packet (`None`: not one).
fn parse_v4(ip: &[u8]) -> Option<Packet> {
    let parsed = packet_nat::parse(ip).ok()?;
    let key = parsed.key;
    let l4 = &ip[parsed.l4_offset..];
    let len = usize::from(get16(ip, 2)?);
    let mut p = Packet {
        src: key.src.into(),
        dst: key.dst.into(),
        proto: key.proto,
        sport: None,
        dport: None,
        key: Some(key),
        l4: Some(parsed.l4),
        related: None,
        key6: None,
        infrastructure: false,
        len,
    };
    match parsed.l4 {
        L4::Tcp(_) | L4::Udp => {
            p.sport = Some(key.sport);
            p.dport = Some(key.dport);
            p.infrastructure = key.proto == PROTO_UDP && key.sport == 68 && key.dport == 67;
        }
        L4::IcmpError => {
            p.key = None;
            p.related = packet_nat::quoted(ip, parsed.l4_offset).map(|q| q.key);
        }
        L4::LaterFragment => p.key = None,
        L4::Echo { .. } => {}
        L4::Other if key.proto == PROTO_SCTP => {
            p.sport = get16(l4, 0);
            p.dport = get16(l4, 2);
        }
        L4::Other => {}
    }
    Some(p)
}

/// Reads an IPv6 packet, through its extension headers (`None`: not one).
fn parse_v6(ip: &[u8]) -> Option<Packet> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
    let (next, l4, later_fragment) = match upper(ip[6], &ip[40..]) {
        Upper::Found(proto, rest) => (proto, rest, false),
        Upper::LaterFragment(proto) => (proto, &[][..], true),
        // Cut short, or hidden behind more extension headers than are walked.
        Upper::Unknown => return None,
    };
    let mut p = Packet {
        src: src.into(),
        dst: dst.into(),
        proto: next,
        sport: None,
        dport: None,
        key: None,
        l4: None,
        related: None,
        key6: None,
        infrastructure: false,
        len: ip.len(),
    };
    if later_fragment {
        return Some(p);
    }
    let (mut sport, mut dport) = (0, 0);
    match next {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            sport = get16(l4, 0)?;
            dport = get16(l4, 2)?;
            p.sport = Some(sport);
            p.dport = Some(dport);
            p.infrastructure = next == PROTO_UDP && sport == 546 && dport == 547;
        }
        // Router and neighbour solicitation and advertisement, redirect; MLD.
        PROTO_ICMPV6 => match l4.first() {
            Some(130..=137 | 143) => p.infrastructure = true,
            // Echo request and reply: tracked by identifier.
            Some(128 | 129) => sport = get16(l4, 4)?,
            _ => {}
        },
        _ => {}
    }
    p.key6 = Some(Flow6 {
        src,
        dst,
        sport,
        dport,
        proto: next,
    });
    Some(p)
}
