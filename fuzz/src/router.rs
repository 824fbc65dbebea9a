//! The fixed switch + router the `routing` and `ipip_decap` targets drive, the fix-ups that
//! let arbitrary bytes reach the router's deeper paths, and the checks on everything it
//! decides and generates.
//!
//! Ports: 0 `a` access VLAN 10, 1 `b` access VLAN 20, 2 `t` trunk (VLANs 20 and 100 tagged,
//! native 10), 3 `up` access VLAN 100. Router interfaces:
//!
//! - VLAN 10: 10.42.0.1/24 and 10.42.10.1/24, fd42::1/64, MTU 1500;
//! - VLAN 20: 10.42.1.1/24, fd42:1::1/64, MTU 1280 (so that forwarding into it fragments or
//!   answers "fragmentation needed" / "packet too big");
//! - VLAN 100: 10.200.0.1/24, MTU 1500.
//!
//! Routes: default via 10.200.0.254 (VLAN 100), `::/0` via fd42:1::fe (VLAN 20), 10.50.0.0/16
//! via 10.42.1.254 (VLAN 20), 10.60.0.0/16 via an off-link 10.77.0.1 (VLAN 10), 10.70.0.0/16
//! connected to VLAN 30 (which has no interface), 10.42.2.0/24 IPIP to 192.168.205.5 (MTU
//! 1480), 10.42.3.0/24 IPIP to 192.168.205.6 (MTU 576, outer TTL 1, local 192.168.205.2),
//! 10.99.0.0/16 and fd99::/16 unreachable. The neighbour table holds 8 entries at most, so
//! eviction and "table full" are reached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Generated, Interface, NextHop, Pipeline, PortMode, PortState, Route,
    RoutingState, VlanSet, WorkerCounters,
};
use tapswitch_dataplane::tables::{PortId, Timestamp};
use tapswitch_dataplane::wire::ipip::OUTER_LEN;
use tapswitch_dataplane::wire::{
    EthernetAddress, EthernetFrame, Icmpv4Packet, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    VlanId,
};

pub const R10: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 0, 10]);
pub const R20: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 0, 20]);
pub const R100: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 1, 0]);
/// The hosts IPIP is accepted from (the remotes of the IPIP routes).
pub const PEERS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 205, 5),
    Ipv4Addr::new(192, 168, 205, 6),
];
/// Ports that exist (ids 0..PORTS); a fuzzer-chosen id may be past them.
pub const PORTS: u16 = 4;
pub const NEIGH_MAX: usize = 8;
/// The largest packet an IPIP route lets through (its MTU).
const IPIP_MTU_MAX: usize = 1480;

pub fn vlan(v: u16) -> VlanId {
    VlanId::new(v).expect("valid vlan")
}

/// The router MAC a frame arriving untagged on `port` is for.
pub fn router_mac_of_port(port: u16) -> EthernetAddress {
    match port {
        1 => R20,
        3 => R100,
        _ => R10,
    }
}

/// The router interfaces and routes of the module documentation (also used by the
/// `scenario` target).
pub fn routing() -> RoutingState {
    let v4 = |a: [u8; 4], len| (Ipv4Addr::from(a), len);
    let v6 = |s: &str, len| (s.parse::<Ipv6Addr>().expect("ipv6"), len);
    let interfaces = vec![
        Interface {
            vlan: vlan(10),
            mac: R10,
            mtu: 1500,
            v4: vec![v4([10, 42, 0, 1], 24), v4([10, 42, 10, 1], 24)],
            v6: vec![v6("fd42::1", 64)],
            dhcp: None,
        },
        Interface {
            vlan: vlan(20),
            mac: R20,
            mtu: 1280,
            v4: vec![v4([10, 42, 1, 1], 24)],
            v6: vec![v6("fd42:1::1", 64)],
            dhcp: None,
        },
        Interface {
            vlan: vlan(100),
            mac: R100,
            mtu: 1500,
            v4: vec![v4([10, 200, 0, 1], 24)],
            v6: vec![],
            dhcp: None,
        },
    ];
    let route = |prefix: IpAddr, len, next_hop| Route {
        prefix,
        len,
        next_hop,
        connected: false,
    };
    let ip4 = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
    let ip6 = |s: &str| IpAddr::V6(s.parse().expect("ipv6"));
    let routes = vec![
        route(
            ip4([0, 0, 0, 0]),
            0,
            NextHop::Gateway {
                vlan: vlan(100),
                via: ip4([10, 200, 0, 254]),
            },
        ),
        route(
            ip6("::"),
            0,
            NextHop::Gateway {
                vlan: vlan(20),
                via: ip6("fd42:1::fe"),
            },
        ),
        route(
            ip4([10, 50, 0, 0]),
            16,
            NextHop::Gateway {
                vlan: vlan(20),
                via: ip4([10, 42, 1, 254]),
            },
        ),
        route(
            ip4([10, 60, 0, 0]),
            16,
            NextHop::Gateway {
                vlan: vlan(10),
                via: ip4([10, 77, 0, 1]),
            },
        ),
        route(
            ip4([10, 70, 0, 0]),
            16,
            NextHop::Connected { vlan: vlan(30) },
        ),
        route(
            ip4([10, 42, 2, 0]),
            24,
            NextHop::Ipip {
                remote: PEERS[0],
                local: None,
                mtu: IPIP_MTU_MAX as u16,
                ttl: 64,
            },
        ),
        route(
            ip4([10, 42, 3, 0]),
            24,
            NextHop::Ipip {
                remote: PEERS[1],
                local: Some(Ipv4Addr::new(192, 168, 205, 2)),
                mtu: 576,
                ttl: 1,
            },
        ),
        route(ip4([10, 99, 0, 0]), 16, NextHop::Unreachable),
        route(ip6("fd99::"), 16, NextHop::Unreachable),
    ];
    RoutingState::build(interfaces, routes, NEIGH_MAX).expect("valid routes")
}

/// The switch and router described above.
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
    s
}

/// The switch, its router, and a fake clock that only moves forward.
pub struct Sim {
    pub state: ForwardingState,
    pub pipeline: Pipeline,
    pub clock_ms: u64,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

impl Sim {
    pub fn new() -> Sim {
        let state = state();
        let pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
        Sim {
            state,
            pipeline,
            clock_ms: 1_000,
        }
    }

    /// Advances the clock by `step` × 20 ms (up to 5.1 s); a step with the top bit set also
    /// runs the router's timer work first, as the worker does about once a second.
    pub fn advance(&mut self, step: u8) -> Timestamp {
        self.clock_ms += u64::from(step) * 20;
        let now = Timestamp::from_millis(self.clock_ms);
        if step & 0x80 != 0 {
            self.pipeline.timers(&self.state, now);
            drain(&self.state, &mut self.pipeline, now);
        }
        if step == 0xff {
            self.pipeline.age(&self.state, now);
        }
        now
    }
}

/// Checks a decision about `frame` (as it is after the decision: routed frames are rewritten
/// in place) that arrived on `ingress` (`None` for the IPIP socket), then sends (checks and
/// recycles) what the router generated, and checks the tables' bounds.
pub fn check(
    state: &ForwardingState,
    pipeline: &mut Pipeline,
    decision: Decision<'_>,
    ingress: Option<PortId>,
    frame: &[u8],
    now: Timestamp,
) {
    match decision {
        Decision::Drop(reason) => assert!(!reason.as_str().is_empty()),
        Decision::Reply(egress, reply) => {
            let back: Vec<_> = egress.ports().collect();
            assert_eq!(back.len(), 1);
            assert_eq!(
                Some(back[0].port),
                ingress,
                "a suppression reply goes back where asked"
            );
            assert!(EthernetFrame::new_checked(reply.as_bytes()).is_ok());
        }
        Decision::Forward(egress) => {
            for member in egress.ports() {
                let p = state.port(member.port).expect("egress to a real port");
                assert!(p.mode.is_member(egress.vlan), "egress stays in the VLAN");
                let out = egress.frame_for(member, frame).to_vec();
                assert!(EthernetFrame::new_checked(&out[..]).is_ok());
                assert!(out.len() <= frame.len() + 4);
            }
        }
        Decision::Tunnel(t) => {
            let inner = frame
                .get(t.start..t.start + t.len)
                .expect("the tunnelled packet is in the frame");
            assert!(t.len <= IPIP_MTU_MAX, "within the tunnel's MTU");
            assert!(PEERS.contains(&t.remote));
            check_outer(&t.outer, t.len);
            let ip = Ipv4Packet::new_checked(inner).expect("the inner packet is IPv4");
            assert!(
                ip.verify_checksum(),
                "TTL decremented with the checksum updated"
            );
        }
        Decision::Local => {}
    }
    drain(state, pipeline, now);
    assert!(pipeline.mac_table().len() <= state.mac_table_max);
    assert!(pipeline.shared().neighbours().len() <= NEIGH_MAX);
}

/// Takes every generated frame, checks it and recycles it, as the worker sends them.
pub fn drain(state: &ForwardingState, pipeline: &mut Pipeline, now: Timestamp) {
    while let Some(g) = pipeline.take_generated() {
        check_generated(state, pipeline, &g, now);
        pipeline.recycle(g);
    }
}

/// The checks on one generated frame or packet: from the interface's MAC, staying in its
/// VLAN, well-formed; an IPIP packet's outer header.
pub fn check_generated(
    state: &ForwardingState,
    pipeline: &Pipeline,
    g: &Generated,
    now: Timestamp,
) {
    match g {
        Generated::Frame { vlan, bytes } | Generated::Reply { vlan, bytes, .. } => {
            let eth =
                EthernetFrame::new_checked(&bytes[..]).expect("a generated frame is Ethernet");
            let iface = state
                .routing
                .interface(*vlan)
                .expect("generated into a routed VLAN");
            assert_eq!(eth.src_addr(), iface.mac, "sent from the interface's MAC");
            let egress = pipeline
                .generated_egress(state, g, now)
                .expect("a frame has an egress");
            for member in egress.ports() {
                let p = state.port(member.port).expect("egress to a real port");
                assert!(
                    p.mode.is_member(*vlan),
                    "generated frames stay in their VLAN"
                );
                let out = egress.frame_for(member, bytes).to_vec();
                assert!(EthernetFrame::new_checked(&out[..]).is_ok());
            }
        }
        Generated::Ipip {
            remote,
            outer,
            bytes,
            start,
        } => {
            assert!(PEERS.contains(remote));
            let inner = bytes.get(*start..).expect("start within the buffer");
            // No MTU check here: what the router originates itself (echo replies, ICMP
            // errors) is sent into a tunnel whatever the route's MTU; only forwarded
            // packets are held to it (fragmented, or refused with DF).
            check_outer(outer, inner.len());
        }
    }
}

/// An outer IPIP header for `inner_len` bytes: valid checksum, protocol 4, the right length.
fn check_outer(outer: &[u8; OUTER_LEN], inner_len: usize) {
    let ip = Ipv4Packet::new_unchecked(&outer[..]);
    assert_eq!(ip.version(), 4);
    assert_eq!(usize::from(ip.header_len()), OUTER_LEN);
    assert!(ip.verify_checksum());
    assert_eq!(ip.protocol(), IpProtocol::IpIp);
    assert_eq!(usize::from(ip.total_len()), OUTER_LEN + inner_len);
}

/// Makes the IPv4 packet at `p` plausible: version 4, a header length of at least 20 that
/// fits, the total length of the buffer, then the header checksum, and the ICMP checksum when
/// the packet is ICMP.
pub fn fix_ipv4(p: &mut [u8]) {
    if p.len() < 20 {
        return;
    }
    let ihl = (usize::from(p[0] & 0x0f) * 4).clamp(20, p.len().min(60) & !3);
    p[0] = 0x40 | (ihl / 4) as u8;
    let total = p.len().min(usize::from(u16::MAX));
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    if p[9] == u8::from(IpProtocol::Icmp) && total >= ihl + 8 {
        Icmpv4Packet::new_unchecked(&mut p[ihl..total]).fill_checksum();
    }
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
}

/// Makes the IPv6 packet at `p` plausible: version 6, the payload length of the buffer, and
/// the ICMPv6 checksum when the next header is ICMPv6 (with hop limit 255 when `nd`, as
/// neighbour discovery requires).
pub fn fix_ipv6(p: &mut [u8], nd: bool) {
    if p.len() < 40 {
        return;
    }
    p[0] = 0x60 | (p[0] & 0x0f);
    let payload = (p.len() - 40).min(usize::from(u16::MAX));
    p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    if nd {
        p[7] = 255;
    }
    if p[6] == u8::from(IpProtocol::Icmpv6) && payload >= 8 {
        let (src, dst) = {
            let ip = Ipv6Packet::new_unchecked(&p[..]);
            (ip.src_addr(), ip.dst_addr())
        };
        Icmpv6Packet::new_unchecked(&mut p[40..40 + payload]).fill_checksum(&src, &dst);
    }
}
