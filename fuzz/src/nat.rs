//! The switch, router and NAT rules of the `nat` fuzz target, how its inputs become frames,
//! and the checks NAT adds to those of [`crate::router::check`].
//!
//! The ports and router interfaces are those of [`crate::router`] (so its checks and
//! `router_mac_of_port` apply): port 0 access VLAN 10 (10.42.0.1/24, 10.42.10.1/24), port 1
//! access VLAN 20 (10.42.1.1/24, MTU 1280), port 2 a trunk (VLANs 20 and 100, native 10),
//! port 3 access VLAN 100, the uplink (10.200.0.1/24). Routes: default via 10.200.0.254,
//! 10.60.0.0/16 via 10.42.1.254, 10.42.2.0/24 into IPIP to `PEERS[0]`, 10.99.0.0/16
//! unreachable. At most `NEIGH_MAX` neighbours and 64 tracked connections, so eviction and a
//! full table are reached.
//!
//! NAT rules:
//! - `[[snat]]` masquerade of 10.42.0.0/16 out of VLAN 100, and 10.60.0.0/16 out of VLAN 100
//!   to 10.200.0.9;
//! - port forwards 10.200.0.1:2222/tcp -> 10.42.0.5:22 and 10.200.0.1:5353/udp ->
//!   10.42.1.7:53;
//! - Service `web` 10.96.0.10:80/tcp, NodePort 30080, Maglev over 10.42.0.2:8080 and
//!   10.42.1.2:8080;
//! - Service `dns` 10.96.0.11:53/udp, NodePort 30053, round robin with ClientIP affinity
//!   (10 s) over 10.42.0.3:53 (weight 2), 10.42.0.4:53 (1) and 10.42.0.6:53 (0: draining);
//! - Service `lc` 10.96.0.12:443/tcp, least connections over 10.42.0.7:443 and 10.42.1.8:443;
//! - Services without backends: `empty` 10.96.0.20:80/tcp (none at all) and `drained`
//!   10.96.0.21:53/udp, NodePort 30054 (one backend, weight 0).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use tapswitch_dataplane::pipeline::nat::{self as packet_nat, L4};
use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Interface, NextHop, Pipeline, PortMode, PortState, Route,
    RoutingState, VlanSet, WorkerCounters,
};
use tapswitch_dataplane::tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use tapswitch_dataplane::tables::{
    Backend, FlowKey, Frontend, NatRules, PortId, Scheduler, Service, ShardMap, SnatRule, Target,
};
use tapswitch_dataplane::wire::{checksum, IpProtocol, Ipv4Packet};

use crate::router::{fix_ipv4, router_mac_of_port, vlan, Sim, NEIGH_MAX, PEERS, R10, R100, R20};

/// Ports that exist (ids 0..PORTS); a fuzzer-chosen id may be past them.
pub const PORTS: u16 = 4;
/// Bound of the connection tracking table.
pub const CONNTRACK_MAX: usize = 64;

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// The uplink's address of the router (port forwards and NodePorts listen there).
pub const UPLINK_ADDR: Ipv4Addr = ip(10, 200, 0, 1);

/// Sources the rule-directed mode writes into packets: containers on VLANs 10 and 20, hosts
/// behind the uplink and behind 10.60.0.0/16, a backend, a router address (martian).
const SOURCES: [Ipv4Addr; 8] = [
    ip(10, 42, 0, 9),
    ip(10, 42, 1, 9),
    ip(198, 51, 100, 7),
    ip(203, 0, 113, 50),
    ip(10, 60, 3, 4),
    ip(10, 42, 0, 2),
    ip(10, 42, 0, 3),
    ip(10, 200, 0, 1),
];

/// Destinations the rule-directed mode writes into packets: every frontend, the router's
/// addresses (NodePorts), backends, and places that are routed without NAT.
const DESTINATIONS: [(u8, Ipv4Addr, u16); 16] = [
    (PROTO_TCP, ip(10, 96, 0, 10), 80),
    (PROTO_UDP, ip(10, 96, 0, 11), 53),
    (PROTO_TCP, ip(10, 96, 0, 12), 443),
    (PROTO_TCP, ip(10, 96, 0, 20), 80),
    (PROTO_UDP, ip(10, 96, 0, 21), 53),
    (PROTO_TCP, UPLINK_ADDR, 2222),
    (PROTO_UDP, UPLINK_ADDR, 5353),
    (PROTO_TCP, UPLINK_ADDR, 30080),
    (PROTO_UDP, ip(10, 42, 0, 1), 30053),
    (PROTO_UDP, ip(10, 42, 1, 1), 30054),
    (PROTO_TCP, ip(198, 51, 100, 7), 443),
    (PROTO_UDP, ip(8, 8, 8, 8), 53),
    (PROTO_TCP, ip(10, 42, 0, 2), 8080),
    (PROTO_ICMP, ip(198, 51, 100, 7), 0),
    (PROTO_UDP, ip(10, 42, 2, 7), 4789),
    (PROTO_TCP, ip(10, 60, 3, 4), 22),
];

/// The router interfaces and routes of the module documentation (also used by the
/// `scenario` target, with [`nat_rules`]).
pub fn routing() -> RoutingState {
    let iface = |id, mac, mtu, v4: Vec<(Ipv4Addr, u8)>| Interface {
        vlan: vlan(id),
        mac,
        mtu,
        v4,
        v6: vec![],
        dhcp: None,
    };
    let interfaces = vec![
        iface(
            10,
            R10,
            1500,
            vec![(ip(10, 42, 0, 1), 24), (ip(10, 42, 10, 1), 24)],
        ),
        iface(20, R20, 1280, vec![(ip(10, 42, 1, 1), 24)]),
        iface(100, R100, 1500, vec![(UPLINK_ADDR, 24)]),
    ];
    let route = |prefix: Ipv4Addr, len, next_hop| Route {
        prefix: prefix.into(),
        len,
        next_hop,
        connected: false,
    };
    let routes = vec![
        route(
            ip(0, 0, 0, 0),
            0,
            NextHop::Gateway {
                vlan: vlan(100),
                via: ip(10, 200, 0, 254).into(),
            },
        ),
        route(
            ip(10, 60, 0, 0),
            16,
            NextHop::Gateway {
                vlan: vlan(20),
                via: ip(10, 42, 1, 254).into(),
            },
        ),
        route(
            ip(10, 42, 2, 0),
            24,
            NextHop::Ipip {
                remote: PEERS[0],
                local: None,
                mtu: 1480,
                ttl: 64,
            },
        ),
        route(ip(10, 99, 0, 0), 16, NextHop::Unreachable),
    ];
    RoutingState::build(interfaces, routes, NEIGH_MAX).expect("valid routes")
}

fn backend(a: Ipv4Addr, port: u16, weight: u16) -> Backend {
    Backend {
        addr: SocketAddrV4::new(a, port),
        weight,
    }
}

/// A Service of the rules, before compilation.
struct Svc {
    name: &'static str,
    proto: u8,
    vip: Ipv4Addr,
    port: u16,
    node_port: Option<u16>,
    backends: Vec<Backend>,
    scheduler: Scheduler,
    affinity_ms: Option<u64>,
}

/// The NAT rules of the module documentation.
pub fn nat_rules() -> NatRules {
    let mut frontends = ShardMap::new();
    let mut forward = |proto, port, to: SocketAddrV4| {
        let f = Frontend {
            proto,
            addr: UPLINK_ADDR,
            port,
        };
        frontends.insert(f, Target::Dnat(to));
    };
    forward(PROTO_TCP, 2222, SocketAddrV4::new(ip(10, 42, 0, 5), 22));
    forward(PROTO_UDP, 5353, SocketAddrV4::new(ip(10, 42, 1, 7), 53));
    let services = [
        Svc {
            name: "web",
            proto: PROTO_TCP,
            vip: ip(10, 96, 0, 10),
            port: 80,
            node_port: Some(30080),
            backends: vec![
                backend(ip(10, 42, 0, 2), 8080, 1),
                backend(ip(10, 42, 1, 2), 8080, 1),
            ],
            scheduler: Scheduler::Maglev,
            affinity_ms: None,
        },
        Svc {
            name: "dns",
            proto: PROTO_UDP,
            vip: ip(10, 96, 0, 11),
            port: 53,
            node_port: Some(30053),
            backends: vec![
                backend(ip(10, 42, 0, 3), 53, 2),
                backend(ip(10, 42, 0, 4), 53, 1),
                backend(ip(10, 42, 0, 6), 53, 0),
            ],
            scheduler: Scheduler::RoundRobin,
            affinity_ms: Some(10_000),
        },
        Svc {
            name: "lc",
            proto: PROTO_TCP,
            vip: ip(10, 96, 0, 12),
            port: 443,
            node_port: None,
            backends: vec![
                backend(ip(10, 42, 0, 7), 443, 1),
                backend(ip(10, 42, 1, 8), 443, 1),
            ],
            scheduler: Scheduler::LeastConn,
            affinity_ms: None,
        },
        Svc {
            name: "empty",
            proto: PROTO_TCP,
            vip: ip(10, 96, 0, 20),
            port: 80,
            node_port: None,
            backends: vec![],
            scheduler: Scheduler::Maglev,
            affinity_ms: None,
        },
        Svc {
            name: "drained",
            proto: PROTO_UDP,
            vip: ip(10, 96, 0, 21),
            port: 53,
            node_port: Some(30054),
            backends: vec![backend(ip(10, 42, 0, 8), 53, 0)],
            scheduler: Scheduler::Random,
            affinity_ms: None,
        },
    ];
    for (id, s) in services.into_iter().enumerate() {
        let svc = Arc::new(Service::new(
            id as u32 + 1,
            s.name.to_string(),
            s.proto,
            s.vip,
            s.port,
            s.node_port,
            s.backends,
            s.scheduler,
            s.affinity_ms,
        ));
        frontends.insert(svc.frontend(), Target::Service(Arc::clone(&svc)));
        if let Some(np) = s.node_port {
            frontends.insert(Frontend::node_port(s.proto, np), Target::Service(svc));
        }
    }
    NatRules {
        snat: Arc::from(vec![
            SnatRule {
                source: ip(10, 42, 0, 0),
                source_len: 16,
                out_vlan: vlan(100),
                to: None,
                except: None,
            },
            SnatRule {
                source: ip(10, 60, 0, 0),
                source_len: 16,
                out_vlan: vlan(100),
                to: Some(ip(10, 200, 0, 9)),
                except: None,
            },
        ]),
        frontends,
        conntrack_max: CONNTRACK_MAX,
    }
}

pub fn state() -> ForwardingState {
    let port = |name: &str, mode| {
        Some(PortState {
            name: name.into(),
            mode,
            mtu: 1500,
            max_macs: 16,
        })
    };
    let mut s = ForwardingState::with_ports(vec![
        port("a", PortMode::Access(vlan(10))),
        port("b", PortMode::Access(vlan(20))),
        port(
            "t",
            PortMode::Trunk {
                allowed: [vlan(20), vlan(100)].into_iter().collect::<VlanSet>(),
                native: Some(vlan(10)),
            },
        ),
        port("up", PortMode::Access(vlan(100))),
    ]);
    s.mac_table_max = 64;
    s.mac_aging_ms = 5_000;
    s.routing = Arc::new(routing());
    s.nat = nat_rules();
    s
}

/// The switch of this module with its router and NAT, in a [`Sim`] (fake clock).
pub fn sim() -> Sim {
    let state = state();
    let mut pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
    // Takes the state's conntrack bound.
    pipeline.adopt(&state);
    Sim {
        state,
        pipeline,
        clock_ms: 1_000,
    }
}

/// A frame built from an input, and what is known about it for [`check_nat`].
pub struct Input {
    pub port: PortId,
    pub frame: Vec<u8>,
    /// The transport (TCP, UDP or ICMP) checksum of the IPv4 packet was made valid.
    pub l4_valid: bool,
}

impl Input {
    /// A frame from `port` as it is: `l4_valid` says whether it carries an IPv4 packet (after
    /// at most one tag) whose transport checksum verifies.
    pub fn new(port: PortId, frame: Vec<u8>) -> Input {
        let ip = match frame.get(12..14) {
            Some([0x81, 0x00] | [0x88, 0xa8]) if frame.get(16..18) == Some(&[0x08, 0x00]) => {
                frame.get(18..)
            }
            Some([0x08, 0x00]) => frame.get(14..),
            _ => None,
        };
        let l4_valid = ip
            .and_then(|p| {
                let packet = Ipv4Packet::new_checked(p).ok()?;
                let ihl = usize::from(packet.header_len());
                let p = &p[..usize::from(packet.total_len())];
                Some(!is_later_fragment(p) && l4_checksum_at(p, ihl).is_some() && l4_checksum_ok(p))
            })
            .unwrap_or(false);
        Input {
            port,
            frame,
            l4_valid,
        }
    }
}

/// The transport checksum of the IPv4 packet `p` (header length `ihl`): where it is and
/// whether the pseudo header is part of it. `None` for other protocols and packets too short.
fn l4_checksum_at(p: &[u8], ihl: usize) -> Option<(usize, Option<u16>)> {
    let proto = p[9];
    let len = p.len().checked_sub(ihl)?;
    let (at, pseudo) = match proto {
        PROTO_TCP if len >= 20 => (16, true),
        PROTO_UDP if len >= 8 => (6, true),
        PROTO_ICMP if len >= 8 => (2, false),
        _ => return None,
    };
    let pseudo = pseudo.then(|| {
        let ip = Ipv4Packet::new_unchecked(p);
        checksum::pseudo_header_v4(
            &ip.src_addr(),
            &ip.dst_addr(),
            IpProtocol::from(proto),
            len as u32,
        )
    });
    Some((ihl + at, pseudo))
}

/// Fills the transport checksum of the IPv4 packet `p`; returns whether there was one.
fn fill_l4_checksum(p: &mut [u8]) -> bool {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let Some((at, pseudo)) = l4_checksum_at(p, ihl) else {
        return false;
    };
    p[at..at + 2].fill(0);
    let s = checksum::sum(&p[ihl..]);
    let mut sum = !checksum::combine(&[pseudo.unwrap_or(0), s]);
    if p[9] == PROTO_UDP && sum == 0 {
        sum = 0xffff;
    }
    p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// Whether the transport checksum of the IPv4 packet `p` verifies.
fn l4_checksum_ok(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let Some((_, pseudo)) = l4_checksum_at(p, ihl) else {
        return true;
    };
    checksum::combine(&[pseudo.unwrap_or(0), checksum::sum(&p[ihl..])]) == 0xffff
}

fn is_later_fragment(p: &[u8]) -> bool {
    u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0
}

fn put_tuple(p: &mut [u8], ihl: usize, key: &FlowKey) {
    p[9] = key.proto;
    p[12..16].copy_from_slice(&key.src.octets());
    p[16..20].copy_from_slice(&key.dst.octets());
    match key.proto {
        PROTO_TCP | PROTO_UDP => {
            p[ihl..ihl + 2].copy_from_slice(&key.sport.to_be_bytes());
            p[ihl + 2..ihl + 4].copy_from_slice(&key.dport.to_be_bytes());
        }
        PROTO_ICMP => {
            // An echo request or reply with the identifier.
            if !matches!(p[ihl], 0 | 8) {
                p[ihl] = 8;
            }
            p[ihl + 1] = 0;
            p[ihl + 4..ihl + 6].copy_from_slice(&key.sport.to_be_bytes());
        }
        _ => {}
    }
}

/// ICMP error types NAT translates.
const ICMP_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];

/// Makes `p` an ICMP error from `from` to `quoted.src` quoting a packet with tuple `quoted`
/// (its IPv4 header and 8 bytes of transport header, then whatever the input had).
fn icmp_error(p: &mut Vec<u8>, select: u8, from: Ipv4Addr, quoted: &FlowKey) {
    if p.len() < 56 {
        p.resize(56, 0);
    }
    p[0] = 0x45;
    p[6] &= 0x40;
    p[7] = 0;
    p[9] = PROTO_ICMP;
    p[12..16].copy_from_slice(&from.octets());
    p[16..20].copy_from_slice(&quoted.src.octets());
    p[20] = ICMP_ERRORS[usize::from(select >> 5) % ICMP_ERRORS.len()];
    let q = &mut p[28..];
    q[0] = 0x45;
    // Quoted packets are never later fragments (NAT does not translate those).
    q[6] &= 0x60;
    q[7] = 0;
    q[10] = 0;
    q[11] = 0;
    put_tuple(q, 20, quoted);
    let sum = checksum::checksum(&q[..20]);
    q[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Builds the frame of an input (see the `nat` fuzz target for the format); `None` when the
/// input is too short.
pub fn input(sim: &Sim, data: &[u8]) -> Option<Input> {
    if data.len() < 3 {
        return None;
    }
    let control = data[0];
    let port = u16::from((control >> 2) & 7) % (PORTS + 1);
    let mode = control & 3;
    if mode == 0 {
        return Some(Input {
            port: PortId(port),
            frame: data[2..].to_vec(),
            l4_valid: false,
        });
    }
    let select = data[2];
    let mut p = data[3..].to_vec();
    if p.len() < 28 {
        p.resize(28, 0);
    }
    // Version, header length, total length, checksums: the header is then past the router's
    // checks, and its length known.
    fix_ipv4(&mut p);
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if p.len() < ihl + 8 {
        p.resize(ihl + 8, 0);
    }
    match mode {
        2 => {
            let ct = sim.pipeline.conntrack();
            if !ct.is_empty() {
                let i = usize::from(select & 0x3f) % ct.len();
                let e = ct.iter().nth(i).expect("within len");
                let translated_orig = e.reply.reversed();
                match (select >> 6) & 3 {
                    // The initiator's next packet, as it sends it.
                    0 => put_tuple(&mut p, ihl, &e.orig),
                    // A reply, as it arrives.
                    1 => put_tuple(&mut p, ihl, &e.reply),
                    // An error about a packet of the original direction as it left, from its
                    // destination or from a router on the way.
                    2 => {
                        let from = if data.len() > 3 && data[3] & 1 != 0 {
                            translated_orig.dst
                        } else {
                            ip(198, 51, 100, 254)
                        };
                        icmp_error(
                            &mut p,
                            data.get(4).copied().unwrap_or(0),
                            from,
                            &translated_orig,
                        );
                    }
                    // An error about a reply as it left, from the initiator.
                    _ => {
                        let quoted = e.orig.reversed();
                        icmp_error(
                            &mut p,
                            data.get(4).copied().unwrap_or(0),
                            quoted.dst,
                            &quoted,
                        );
                    }
                }
            }
        }
        3 => {
            let (proto, dst, dport) = DESTINATIONS[usize::from(select & 0x0f)];
            let key = FlowKey {
                src: SOURCES[usize::from(select >> 5)],
                dst,
                sport: u16::from_be_bytes([p[ihl], p[ihl + 1]]),
                dport,
                proto,
            };
            if proto == PROTO_TCP && select & 0x10 != 0 && p.len() >= ihl + 20 {
                // A plausible SYN: data offset 5 or more, SYN alone.
                p[ihl + 12] = (p[ihl + 12] & 0xf0).max(0x50);
                p[ihl + 13] = 0x02;
            }
            put_tuple(&mut p, ihl, &key);
        }
        _ => {}
    }
    let mut l4_valid = false;
    if control & 0x20 != 0 && !is_later_fragment(&p) {
        l4_valid = fill_l4_checksum(&mut p);
    }
    // Total length and the IPv4 checksum again, and the ICMP checksum whatever bit 5 says.
    fix_ipv4(&mut p);
    if p[9] == PROTO_ICMP {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        l4_valid = !is_later_fragment(&p) && p.len() >= ihl + 8;
    }
    let port = PortId(port);
    let mut frame = Vec::with_capacity(18 + p.len());
    frame.extend_from_slice(router_mac_of_port(port.0).as_bytes());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0x42, select]);
    if control & 0x40 != 0 {
        let vid: u16 = if control & 0x80 != 0 { 100 } else { 20 };
        frame.extend_from_slice(&[0x81, 0x00]);
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&p);
    Some(Input {
        port,
        frame,
        l4_valid,
    })
}

/// What NAT must guarantee of a decision about `input` (`frame` is the frame after the
/// decision: routed frames are rewritten in place), on top of [`crate::router::check`]:
///
/// - a routed IPv4 packet leaves with a valid header checksum and, when its transport checksum
///   was valid on arrival (and it is not a later fragment), a valid transport checksum: the
///   incremental updates of every translation are right;
/// - no packet from a source network with a source NAT rule (10.42.0.0/16, 10.60.0.0/16)
///   leaves through the uplink VLAN untranslated unless it belongs to a tracked connection
///   (one that an outside host opened to it, which is not translated, or the reply of one,
///   translated back); ICMP errors that quote
///   no tracked connection and later fragments are routed as they are and are left out.
pub fn check_nat(pipeline: &Pipeline, decision: Decision<'_>, input: &Input, frame: &[u8]) {
    let Decision::Forward(egress) = decision else {
        return;
    };
    if frame.len() < 14 || input.frame.len() < 14 || frame[6..12] == input.frame[6..12] {
        // Switched, not routed.
        return;
    }
    let Some(member) = egress.ports().next() else {
        return;
    };
    let rest = egress.frame_for(member, frame).rest;
    if rest.len() < 2 || rest[..2] != [0x08, 0x00] {
        return;
    }
    let hdr = Ipv4Packet::new_checked(&rest[2..]).expect("a routed IPv4 packet is whole");
    assert!(hdr.verify_checksum(), "routed with a valid IPv4 checksum");
    let total = usize::from(hdr.total_len());
    let p = &rest[2..2 + total];
    if input.l4_valid && !is_later_fragment(p) {
        assert!(
            l4_checksum_ok(p),
            "transport checksum valid after translation: {p:02x?}"
        );
    }
    if egress.vlan != vlan(100) || is_later_fragment(p) {
        return;
    }
    let src = hdr.src_addr();
    let snat_source = [(ip(10, 42, 0, 0), 16), (ip(10, 60, 0, 0), 16)]
        .iter()
        .any(|&(net, len)| u32::from(src) >> (32 - len) == u32::from(net) >> (32 - len));
    if !snat_source {
        return;
    }
    let Ok(parsed) = packet_nat::parse(p) else {
        panic!("an untranslated packet from {src} left through the uplink: {p:02x?}")
    };
    if parsed.l4 == L4::IcmpError {
        return;
    }
    // Tracked: the tuple is an entry's (either direction), or it is a reply translated back
    // to the reverse of the entry's original tuple (the reply of a masqueraded connection
    // from an outside host with an inside-looking source, hairpinned out of the uplink).
    let ct = pipeline.conntrack();
    assert!(
        ct.contains(&parsed.key) || ct.contains(&parsed.key.reversed()),
        "an untranslated packet from {src} left through the uplink without a tracked \
         connection: {:?}",
        parsed.key
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::check;
    use tapswitch_dataplane::tables::Timestamp;
    use tapswitch_dataplane::wire::builder::{arp_request, ethernet_frame};
    use tapswitch_dataplane::wire::{EtherType, EthernetAddress};

    /// An IPv4 packet of protocol 64 (tracked by addresses alone) from `src` to `dst`, in a
    /// frame to the router's MAC of `port`.
    fn other(port: u16, src: Ipv4Addr, dst: Ipv4Addr) -> Input {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[8] = 64;
        p[9] = 64;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        fix_ipv4(&mut p);
        let mac = EthernetAddress([2, 0, 0, 0, 0, 0x30 + port as u8]);
        Input {
            port: PortId(port),
            frame: ethernet_frame(router_mac_of_port(port), mac, None, EtherType::Ipv4, &p),
            l4_valid: false,
        }
    }

    /// The case the fuzzer found: an outside host with an inside-looking source (in a source
    /// NAT rule's prefix) opens a connection that is routed back out of the uplink, so it is
    /// masqueraded; its reply comes back to the masquerade address and is translated back to
    /// the reverse of the original tuple, leaving through the uplink with that source. It is
    /// tracked (its reverse is the entry's original tuple), and the check must say so.
    #[test]
    fn a_hairpinned_masqueraded_reply_is_tracked() {
        let mut sim = sim();
        let now = Timestamp::from_millis(2_000);
        // The outside gateway (the default route's next hop) makes itself known first.
        let gw_mac = EthernetAddress([2, 0, 0, 0, 0, 0xfe]);
        let mut arp = arp_request(gw_mac, ip(10, 200, 0, 254), UPLINK_ADDR, None);
        let d = sim.pipeline.decide(&sim.state, PortId(3), &mut arp, now);
        crate::router::drain(&sim.state, &mut sim.pipeline, now);
        assert!(!matches!(d, Decision::Drop(_)), "{d:?}");
        let (a, b) = (ip(10, 42, 3, 0), ip(10, 42, 255, 255));
        for input in [other(3, a, b), other(1, b, UPLINK_ADDR)] {
            let Sim {
                state, pipeline, ..
            } = &mut sim;
            let mut frame = input.frame.clone();
            let decision = pipeline.decide(state, input.port, &mut frame, now);
            assert!(matches!(decision, Decision::Forward(_)), "{decision:?}");
            check_nat(pipeline, decision, &input, &frame);
            check(state, pipeline, decision, Some(input.port), &frame, now);
        }
    }
}
