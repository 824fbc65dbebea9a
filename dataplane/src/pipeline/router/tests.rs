//! Router simulations: frames in, frames out (decisions plus everything the router generated),
//! on a fake clock.

mod dhcp;
mod nat;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::super::routing::{Interface, NextHop, Route, RoutingState};
use super::super::{
    Decision, DropReason, ForwardingState, Pipeline, PortMode, PortState, WorkerCounters,
};
use super::Generated;
use crate::tables::{NeighKey, PortId, Timestamp};
use crate::wire::builder::ethernet_frame;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, HeaderOptions, Icmpv4Packet,
    Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, VlanId,
};

fn vlan(id: u16) -> VlanId {
    VlanId::new(id).unwrap()
}

fn mac(last: u8) -> EthernetAddress {
    EthernetAddress([2, 0, 0, 0, 0, last])
}

const R10: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 0, 10]);
const R20: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 0, 20]);
const R100: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 1, 0]);
/// Host A on port 0 (VLAN 10), B on port 1 (VLAN 20), the outside gateway on port 2.
const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xb]);
const GW: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xfe]);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, 2);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd42, 1, 0, 0, 0, 0, 0, 2);
const REMOTE_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 205, 5);

fn port(name: &str, v: u16) -> Option<PortState> {
    Some(PortState {
        name: name.into(),
        mode: PortMode::Access(vlan(v)),
        mtu: 9000,
        max_macs: u32::MAX,
    })
}

fn routing(vlan20_mtu: u16) -> RoutingState {
    let (interfaces, routes) = routing_parts(vlan20_mtu);
    RoutingState::build(interfaces, routes, 1024).unwrap()
}

/// The interfaces and static routes of [`routing`].
fn routing_parts(vlan20_mtu: u16) -> (Vec<Interface>, Vec<Route>) {
    let interfaces = vec![
        Interface {
            vlan: vlan(10),
            mac: R10,
            mtu: 1500,
            v4: vec![(Ipv4Addr::new(10, 42, 0, 1), 24)],
            v6: vec![("fd42::1".parse().unwrap(), 64)],
            dhcp: None,
        },
        Interface {
            vlan: vlan(20),
            mac: R20,
            mtu: vlan20_mtu,
            v4: vec![(Ipv4Addr::new(10, 42, 1, 1), 24)],
            v6: vec![("fd42:1::1".parse().unwrap(), 64)],
            dhcp: None,
        },
        Interface {
            vlan: vlan(100),
            mac: R100,
            mtu: 1500,
            v4: vec![(Ipv4Addr::new(10, 200, 0, 1), 24)],
            v6: vec![],
            dhcp: None,
        },
    ];
    let routes = vec![
        Route {
            prefix: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            len: 0,
            next_hop: NextHop::Gateway {
                vlan: vlan(100),
                via: IpAddr::V4(Ipv4Addr::new(10, 200, 0, 254)),
            },
            connected: false,
        },
        Route {
            prefix: IpAddr::V4(Ipv4Addr::new(10, 42, 2, 0)),
            len: 24,
            next_hop: NextHop::Ipip {
                remote: REMOTE_HOST,
                local: None,
                mtu: 1480,
                ttl: 64,
            },
            connected: false,
        },
        Route {
            prefix: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 0)),
            len: 16,
            next_hop: NextHop::Unreachable,
            connected: false,
        },
    ];
    (interfaces, routes)
}

/// What one frame caused: the decision's own output plus generated frames, as (port, bytes),
/// and IPIP packets as (remote, outer + inner).
#[derive(Debug, Default)]
struct Out {
    drop: Option<DropReason>,
    frames: Vec<(u16, Vec<u8>)>,
    ipip: Vec<(Ipv4Addr, Vec<u8>)>,
}

/// Whether a frame is a neighbour probe (ARP request or neighbour solicitation).
fn is_probe(f: &[u8]) -> bool {
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0806 => f[21] == 1,
        0x86dd => f.len() > 54 && f[20] == 58 && f[54] == 135,
        _ => false,
    }
}

impl Out {
    /// The frames that are not probes.
    fn data(&self) -> Vec<(u16, Vec<u8>)> {
        self.frames
            .iter()
            .filter(|(_, f)| !is_probe(f))
            .cloned()
            .collect()
    }
}

struct Sim {
    state: ForwardingState,
    pipeline: Pipeline,
    now: Timestamp,
}

impl Sim {
    fn new(vlan20_mtu: u16) -> Sim {
        let mut state =
            ForwardingState::with_ports(vec![port("a", 10), port("b", 20), port("up", 100)]);
        state.routing = Arc::new(routing(vlan20_mtu));
        let pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
        Sim {
            state,
            pipeline,
            now: Timestamp::from_secs(1),
        }
    }

    fn send(&mut self, port: u16, frame: &[u8]) -> Out {
        let mut frame = frame.to_vec();
        let mut out = Out::default();
        let d = self
            .pipeline
            .decide(&self.state, PortId(port), &mut frame, self.now);
        match d {
            Decision::Drop(r) => out.drop = Some(r),
            Decision::Forward(e) => {
                for m in e.ports() {
                    out.frames.push((m.port.0, e.frame_for(m, &frame).to_vec()));
                }
            }
            Decision::Reply(e, r) => {
                for m in e.ports() {
                    out.frames
                        .push((m.port.0, e.frame_for(m, r.as_bytes()).to_vec()));
                }
            }
            Decision::Tunnel(t) => {
                let mut p = t.outer.to_vec();
                p.extend_from_slice(&frame[t.start..t.start + t.len]);
                out.ipip.push((t.remote, p));
            }
            Decision::Local => {}
        }
        self.drain(&mut out);
        out
    }

    fn drain(&mut self, out: &mut Out) {
        while let Some(g) = self.pipeline.take_generated() {
            match &g {
                Generated::Frame { bytes, .. } | Generated::Reply { bytes, .. } => {
                    let e = self
                        .pipeline
                        .generated_egress(&self.state, &g, self.now)
                        .expect("a frame");
                    for m in e.ports() {
                        out.frames.push((m.port.0, e.frame_for(m, bytes).to_vec()));
                    }
                }
                Generated::Ipip {
                    remote,
                    outer,
                    bytes,
                    start,
                } => {
                    let mut p = outer.to_vec();
                    p.extend_from_slice(&bytes[*start..]);
                    out.ipip.push((*remote, p));
                }
            }
            self.pipeline.recycle(g);
        }
    }

    fn tick(&mut self, secs: u64) -> Out {
        self.now = Timestamp::from_millis(self.now.millis() + secs * 1000);
        let mut out = Out::default();
        self.pipeline.timers(&self.state, self.now);
        self.drain(&mut out);
        out
    }

    fn ipip_in(&mut self, src: Ipv4Addr, packet: &[u8]) -> Out {
        let mut packet = packet.to_vec();
        let mut out = Out::default();
        let (start, d) = self
            .pipeline
            .ipip_in(&self.state, src, &mut packet, self.now);
        match d {
            Decision::Drop(r) => out.drop = Some(r),
            Decision::Forward(e) => {
                for m in e.ports() {
                    out.frames
                        .push((m.port.0, e.frame_for(m, &packet[start..]).to_vec()));
                }
            }
            _ => {}
        }
        self.drain(&mut out);
        out
    }

    /// Teaches the router A's and B's MACs the way hosts do: ARP for their gateway.
    fn resolve_hosts(&mut self) {
        self.send(
            0,
            &arp(ArpOperation::Request, A, A_IP, Ipv4Addr::new(10, 42, 0, 1)),
        );
        let b = arp(ArpOperation::Request, B, B_IP, Ipv4Addr::new(10, 42, 1, 1));
        self.send(1, &b);
    }

    fn iface_drops(&self, v: u16, r: DropReason) -> u64 {
        self.pipeline.counters().interface(vlan(v)).drops[r.index()].get()
    }
}

fn arp(op: ArpOperation, from: EthernetAddress, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr {
        operation: op,
        source_hardware_addr: from,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress::ZERO,
        target_protocol_addr: target,
    };
    let mut p = vec![0u8; 28];
    repr.emit(&mut ArpPacket::new_unchecked(&mut p[..]));
    let dst = if op == ArpOperation::Request {
        EthernetAddress::BROADCAST
    } else {
        R20
    };
    ethernet_frame(dst, from, None, EtherType::Arp, &p)
}

fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    df: bool,
    payload: &[u8],
    proto: IpProtocol,
) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: proto,
        payload_len: payload.len(),
        ttl,
        dscp: 0,
        ecn: 0,
        ident: 0x1234,
        dont_frag: df,
        more_frags: false,
        frag_offset: 0,
        options: HeaderOptions::default(),
    };
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut p[..]));
    p[20..].copy_from_slice(payload);
    p
}

fn echo_request(len: usize) -> Vec<u8> {
    let mut icmp = vec![0u8; 8 + len];
    icmp[0] = 8;
    icmp[4..8].copy_from_slice(&[0x12, 0x34, 0, 1]);
    for (i, b) in icmp[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    Icmpv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
    icmp
}

fn ping(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, df: bool, len: usize) -> Vec<u8> {
    ipv4(src, dst, ttl, df, &echo_request(len), IpProtocol::Icmp)
}

fn to_router(router: EthernetAddress, from: EthernetAddress, packet: &[u8]) -> Vec<u8> {
    ethernet_frame(router, from, None, EtherType::Ipv4, packet)
}

fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
    Ipv4Packet::new_checked(&frame[14..]).unwrap()
}

#[test]
fn answers_arp_for_its_address_and_learns_the_asker() {
    let mut sim = Sim::new(1500);
    let out = sim.send(
        0,
        &arp(ArpOperation::Request, A, A_IP, Ipv4Addr::new(10, 42, 0, 1)),
    );
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let (p, f) = &out.frames[0];
    assert_eq!(*p, 0);
    assert_eq!(&f[..6], A.as_bytes());
    assert_eq!(&f[6..12], R10.as_bytes());
    let reply = ArpRepr::parse(&ArpPacket::new_checked(&f[14..]).unwrap()).unwrap();
    assert_eq!(reply.operation, ArpOperation::Reply);
    assert_eq!(reply.source_hardware_addr, R10);
    assert_eq!(reply.source_protocol_addr, Ipv4Addr::new(10, 42, 0, 1));
    assert_eq!(reply.target_protocol_addr, A_IP);
    let key = NeighKey {
        vlan: vlan(10),
        ip: IpAddr::V4(A_IP),
    };
    let rec = sim
        .pipeline
        .shared()
        .neighbours()
        .record(&key, sim.now)
        .unwrap();
    assert_eq!(rec.mac, Some(A));
    // ARP for someone else is switched, not answered.
    let other = sim.send(
        0,
        &arp(ArpOperation::Request, A, A_IP, Ipv4Addr::new(10, 42, 0, 9)),
    );
    assert!(other.frames.iter().all(|(_, f)| f[..6] == [0xff; 6]));
}

#[test]
fn answers_ping_to_its_addresses() {
    let mut sim = Sim::new(1500);
    sim.resolve_hosts();
    // The uplink address too, from VLAN 10.
    for target in [Ipv4Addr::new(10, 42, 0, 1), Ipv4Addr::new(10, 200, 0, 1)] {
        let out = sim
            .send(0, &to_router(R10, A, &ping(A_IP, target, 64, true, 56)))
            .data();
        assert_eq!(out.len(), 1, "{out:?}");
        let (p, f) = &out[0];
        assert_eq!(*p, 0);
        assert_eq!(&f[..6], A.as_bytes());
        let ip = ip_of(f);
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (target, A_IP));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), crate::wire::Icmpv4Message::EchoReply);
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.data(), &echo_request(56)[8..]);
    }
}

#[test]
fn routes_between_vlans_after_resolving_the_next_hop() {
    let mut sim = Sim::new(1500);
    sim.send(
        0,
        &arp(ArpOperation::Request, A, A_IP, Ipv4Addr::new(10, 42, 0, 1)),
    );
    let packet = ping(A_IP, B_IP, 64, true, 32);
    // First packet: queued, ARP request into VLAN 20.
    let out = sim.send(0, &to_router(R10, A, &packet));
    assert_eq!(out.drop, None);
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let (p, req) = &out.frames[0];
    assert_eq!(*p, 1);
    assert_eq!(&req[..6], &[0xff; 6]);
    let req = ArpRepr::parse(&ArpPacket::new_checked(&req[14..]).unwrap()).unwrap();
    assert_eq!(req.source_protocol_addr, Ipv4Addr::new(10, 42, 1, 1));
    assert_eq!(req.source_hardware_addr, R20);
    assert_eq!(req.target_protocol_addr, B_IP);
    // The answer releases it.
    let out = sim.send(
        1,
        &arp(ArpOperation::Reply, B, B_IP, Ipv4Addr::new(10, 42, 1, 1)),
    );
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let (p, f) = &out.frames[0];
    assert_eq!(*p, 1);
    assert_eq!(&f[..6], B.as_bytes());
    assert_eq!(&f[6..12], R20.as_bytes());
    let ip = ip_of(f);
    assert_eq!(ip.ttl(), 63);
    assert!(ip.verify_checksum());
    // The next one is rewritten in place, no queue.
    let out = sim.send(0, &to_router(R10, A, &packet));
    assert_eq!(out.frames.len(), 1);
    assert_eq!(out.frames[0].0, 1);
    assert_eq!(ip_of(&out.frames[0].1).ttl(), 63);
    assert!(ip_of(&out.frames[0].1).verify_checksum());
    let c = sim.pipeline.counters().interface(vlan(20));
    assert_eq!(c.tx_packets.get(), 2);
}

#[test]
fn ttl_expiry_answers_time_exceeded_from_the_ingress_side() {
    let mut sim = Sim::new(1500);
    sim.resolve_hosts();
    let packet = ping(A_IP, B_IP, 1, true, 32);
    let out = sim.send(0, &to_router(R10, A, &packet));
    assert_eq!(out.drop, Some(DropReason::TtlExceeded));
    let data = out.data();
    assert_eq!(data.len(), 1, "{out:?}");
    let ip = ip_of(&data[0].1);
    assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 42, 0, 1));
    assert_eq!(ip.dst_addr(), A_IP);
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(icmp.msg_type(), crate::wire::Icmpv4Message::TimeExceeded);
    // The quoted header is the original, TTL 1.
    assert_eq!(&icmp.data()[..20], &packet[..20]);
    assert_eq!(sim.iface_drops(10, DropReason::TtlExceeded), 1);
}

#[test]
fn unreachable_routes_and_fragmentation_needed() {
    let mut sim = Sim::new(1400);
    sim.resolve_hosts();
    let out = sim.send(
        0,
        &to_router(
            R10,
            A,
            &ping(A_IP, Ipv4Addr::new(10, 99, 1, 1), 64, true, 8),
        ),
    );
    assert_eq!(out.drop, Some(DropReason::NoRoute));
    let icmp_of = |out: &Out| {
        let f = &out.data()[0].1;
        let ip = ip_of(f);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        (
            u8::from(icmp.msg_type()),
            icmp.msg_code(),
            icmp.next_hop_mtu(),
        )
    };
    assert_eq!(icmp_of(&out), (3, 1, 0));
    // Too big for VLAN 20's MTU of 1400 with DF.
    let big = ping(A_IP, B_IP, 64, true, 1440);
    let out = sim.send(0, &to_router(R10, A, &big));
    assert_eq!(out.drop, Some(DropReason::FragNeeded));
    assert_eq!(icmp_of(&out), (3, 4, 1400));
}

#[test]
fn fragments_without_df_to_the_egress_mtu() {
    let mut sim = Sim::new(1400);
    sim.resolve_hosts();
    // B is resolved through its ARP request for the gateway (stale, usable).
    let big = ping(A_IP, B_IP, 64, false, 2000);
    let out = sim.send(0, &to_router(R10, A, &big));
    assert_eq!(out.drop, None, "{out:?}");
    let data = out.data();
    let frags: Vec<_> = data.iter().filter(|(p, _)| *p == 1).collect();
    assert_eq!(frags.len(), 2, "{out:?}");
    let mut payload = Vec::new();
    for (_, f) in &frags {
        let ip = ip_of(f);
        assert!(ip.verify_checksum());
        assert!(usize::from(ip.total_len()) <= 1400);
        assert_eq!(ip.ttl(), 63);
        payload.extend_from_slice(ip.payload());
    }
    assert_eq!(payload, &big[20..]);
    assert_eq!(
        sim.pipeline.counters().interface(vlan(20)).fragmented.get(),
        1
    );
}

#[test]
fn ipip_encapsulates_towards_the_route_host_and_decapsulates_from_peers_only() {
    let mut sim = Sim::new(1500);
    sim.resolve_hosts();
    let remote_pod = Ipv4Addr::new(10, 42, 2, 7);
    let packet = ping(A_IP, remote_pod, 64, true, 32);
    let out = sim.send(0, &to_router(R10, A, &packet));
    assert_eq!(out.ipip.len(), 1, "{out:?}");
    let (remote, p) = &out.ipip[0];
    assert_eq!(*remote, REMOTE_HOST);
    let outer = Ipv4Packet::new_checked(&p[..]).unwrap();
    assert_eq!(outer.protocol(), IpProtocol::IpIp);
    assert_eq!(outer.dst_addr(), REMOTE_HOST);
    assert!(outer.dont_frag());
    assert_eq!(usize::from(outer.total_len()), 20 + packet.len());
    let inner = Ipv4Packet::new_checked(outer.payload()).unwrap();
    assert_eq!(inner.ttl(), 63);
    assert!(inner.verify_checksum());
    // Too big for the tunnel's 1480 with DF.
    let out = sim.send(
        0,
        &to_router(R10, A, &ping(A_IP, remote_pod, 64, true, 1460)),
    );
    assert_eq!(out.drop, Some(DropReason::FragNeeded));

    // Coming back: an IPIP packet from the peer, for A.
    let reply = ping(remote_pod, A_IP, 63, true, 32);
    let mut wrapped = crate::wire::ipip::outer_header(
        REMOTE_HOST,
        Ipv4Addr::new(192, 168, 205, 2),
        reply.len(),
        0,
        1,
        64,
    )
    .to_vec();
    wrapped.extend_from_slice(&reply);
    let out = sim.ipip_in(Ipv4Addr::new(192, 168, 205, 99), &wrapped);
    assert_eq!(out.drop, Some(DropReason::IpipSourceNotAllowed));
    let out = sim.ipip_in(REMOTE_HOST, &wrapped);
    assert_eq!(out.drop, None);
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let (p, f) = &out.frames[0];
    assert_eq!(*p, 0);
    assert_eq!(&f[..6], A.as_bytes());
    assert_eq!(&f[6..12], R10.as_bytes());
    assert_eq!(ip_of(f).ttl(), 62);
    assert!(ip_of(f).verify_checksum());
    // Garbage inside.
    let mut bad = wrapped.clone();
    bad[20] = 0x60;
    assert_eq!(
        sim.ipip_in(REMOTE_HOST, &bad).drop,
        Some(DropReason::IpipMalformed)
    );
    let ipip = &sim.pipeline.counters().ipip;
    assert_eq!(
        ipip.drops[DropReason::IpipSourceNotAllowed.index()].get(),
        1
    );
    assert_eq!(ipip.drops[DropReason::IpipMalformed.index()].get(), 1);
}

#[test]
fn unanswered_resolution_gives_host_unreachable() {
    let mut sim = Sim::new(1500);
    sim.resolve_hosts();
    let ghost = Ipv4Addr::new(10, 42, 1, 9);
    let out = sim.send(0, &to_router(R10, A, &ping(A_IP, ghost, 64, true, 8)));
    assert_eq!(out.frames.len(), 1, "one ARP request");
    let mut probes = 0;
    let mut unreachable = Vec::new();
    for _ in 0..5 {
        let out = sim.tick(1);
        for (p, f) in out.frames {
            if p == 1 && is_probe(&f) {
                probes += 1;
            } else if p == 0 && !is_probe(&f) {
                unreachable.push(f);
            }
        }
    }
    assert_eq!(probes, 2, "two retransmissions");
    assert_eq!(unreachable.len(), 1);
    let ip = ip_of(&unreachable[0]);
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (3, 1));
    // While failed, new packets are refused at once.
    let out = sim.send(0, &to_router(R10, A, &ping(A_IP, ghost, 64, true, 8)));
    assert_eq!(out.drop, Some(DropReason::NeighbourFailed));
}

#[test]
fn default_route_through_the_uplink_gateway() {
    let mut sim = Sim::new(1500);
    sim.resolve_hosts();
    let outside = Ipv4Addr::new(198, 51, 100, 7);
    let out = sim.send(0, &to_router(R10, A, &ping(A_IP, outside, 64, true, 8)));
    let req = &out.frames[0];
    assert_eq!(req.0, 2);
    let arp_req = ArpRepr::parse(&ArpPacket::new_checked(&req.1[14..]).unwrap()).unwrap();
    assert_eq!(arp_req.target_protocol_addr, Ipv4Addr::new(10, 200, 0, 254));
    let mut reply = arp(
        ArpOperation::Reply,
        GW,
        Ipv4Addr::new(10, 200, 0, 254),
        Ipv4Addr::new(10, 200, 0, 1),
    );
    reply[..6].copy_from_slice(R100.as_bytes());
    let out = sim.send(2, &reply);
    assert_eq!(out.frames.len(), 1, "{out:?}");
    assert_eq!(&out.frames[0].1[..6], GW.as_bytes());
    assert_eq!(ip_of(&out.frames[0].1).dst_addr(), outside);
}

#[test]
fn martians_and_bad_headers_are_counted() {
    let mut sim = Sim::new(1500);
    sim.resolve_hosts();
    let out = sim.send(
        0,
        &to_router(R10, A, &ping(Ipv4Addr::LOCALHOST, B_IP, 64, true, 8)),
    );
    assert_eq!(out.drop, Some(DropReason::Martian));
    let mut bad = ping(A_IP, B_IP, 64, true, 8);
    bad[10] ^= 0xff;
    let out = sim.send(0, &to_router(R10, A, &bad));
    assert_eq!(out.drop, Some(DropReason::IpHeaderBad));
    // Truncated: total length beyond the frame.
    let mut short = ping(A_IP, B_IP, 64, true, 8);
    short.truncate(24);
    assert_eq!(
        sim.send(0, &to_router(R10, A, &short)).drop,
        Some(DropReason::IpHeaderBad)
    );
    let mut other = to_router(R10, A, &bad);
    other[12..14].copy_from_slice(&[0x88, 0xb5]);
    assert_eq!(sim.send(0, &other).drop, Some(DropReason::L3Unsupported));
    assert_eq!(
        sim.pipeline.counters().port(PortId(0)).drops[DropReason::IpHeaderBad.index()].get(),
        2
    );
}

fn ipv6_frame(
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    msg: Icmpv6Repr,
    data: &[u8],
) -> Vec<u8> {
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: msg.buffer_len(),
        hop_limit: hop,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut p = vec![0u8; ip.buffer_len()];
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut p[..]));
    let mut icmp = Icmpv6Packet::new_unchecked(&mut p[40..]);
    icmp.data_mut()[..data.len()].copy_from_slice(data);
    msg.emit(&src, &dst, &mut icmp);
    ethernet_frame(dst_mac, src_mac, None, EtherType::Ipv6, &p)
}

fn solicit(from: EthernetAddress, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let dst_mac = EthernetAddress([0x33, 0x33, 0xff, t[13], t[14], t[15]]);
    let ns = Icmpv6Repr::NeighborSolicit {
        target_addr: target,
        source_lladdr: Some(from),
    };
    ipv6_frame(dst_mac, from, src, group, 255, ns, &[])
}

#[test]
fn ipv6_neighbour_discovery_and_routing_between_vlans() {
    let mut sim = Sim::new(1500);
    let gw10: Ipv6Addr = "fd42::1".parse().unwrap();
    let gw20: Ipv6Addr = "fd42:1::1".parse().unwrap();
    // A solicits its gateway: a router advertisement comes back.
    let out = sim.send(0, &solicit(A, A6, gw10));
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let (p, f) = &out.frames[0];
    assert_eq!(*p, 0);
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
        (gw10, A6, 255)
    );
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(&gw10, &A6));
    assert!(icmp.router_flag() && icmp.solicited_flag());
    match Icmpv6Repr::parse(&icmp).unwrap() {
        Icmpv6Repr::NeighborAdvert { target_lladdr, .. } => assert_eq!(target_lladdr, Some(R10)),
        other => panic!("{other:?}"),
    }
    // A pings B through the router: a solicitation for B goes into VLAN 20.
    let echo = Icmpv6Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data_len: 4,
    };
    let to_b = ipv6_frame(R10, A, A6, B6, 64, echo, &[1, 2, 3, 4]);
    let out = sim.send(0, &to_b);
    assert_eq!(out.drop, None);
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let (p, ns) = &out.frames[0];
    assert_eq!(*p, 1);
    assert_eq!(&ns[..3], &[0x33, 0x33, 0xff]);
    // B answers; the queued ping comes out with hop limit 63.
    let na = Icmpv6Repr::NeighborAdvert {
        router_flag: false,
        solicited_flag: true,
        override_flag: true,
        target_addr: B6,
        target_lladdr: Some(B),
    };
    let out = sim.send(1, &ipv6_frame(R20, B, B6, gw20, 255, na, &[]));
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let (p, f) = &out.frames[0];
    assert_eq!(*p, 1);
    assert_eq!(&f[..6], B.as_bytes());
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.hop_limit()), (A6, B6, 63));
    // Hop limit 1: time exceeded back to A.
    let expiring = ipv6_frame(R10, A, A6, B6, 1, echo, &[1, 2, 3, 4]);
    let out = sim.send(0, &expiring);
    assert_eq!(out.drop, Some(DropReason::TtlExceeded));
    let data = out.data();
    let ip = Ipv6Packet::new_checked(&data[0].1[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (gw10, A6));
    assert_eq!(ip.payload()[0], 3);
    // Ping to the gateway itself.
    let out = sim.send(0, &ipv6_frame(R10, A, A6, gw10, 64, echo, &[1, 2, 3, 4]));
    let data = out.data();
    let ip = Ipv6Packet::new_checked(&data[0].1[14..]).unwrap();
    assert_eq!(ip.payload()[0], 129);
}

#[test]
fn frames_to_the_router_mac_on_a_vlan_without_interface_are_switched() {
    let mut sim = Sim::new(1500);
    let mut state = sim.state.clone();
    state.ports.push(port("d", 30));
    state.ports.push(port("e", 30));
    state.rebuild_vlan_members();
    sim.state = state;
    sim.pipeline.adopt(&sim.state);
    let out = sim.send(3, &to_router(R10, mac(3), &ping(A_IP, B_IP, 64, true, 8)));
    assert_eq!(out.drop, None);
    assert_eq!(out.frames.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [4]);
}

/// flannel's vxlan layout: the overlay interface holds only subnet.0/32, a remote subnet is
/// routed via the remote's subnet.0 on that VLAN (onlink), and a static neighbour entry
/// gives that address's MAC: no ARP is ever sent, and a changed entry takes over at once.
#[test]
fn static_neighbours_resolve_onlink_next_hops_without_probes() {
    let overlay = vlan(4094);
    let mut state = ForwardingState::with_ports(vec![port("a", 10), port("vx", 4094)]);
    let mut r = routing(1500);
    let mut interfaces = r.interfaces.clone();
    interfaces.push(Interface {
        vlan: overlay,
        mac: mac(0x40),
        mtu: 1450,
        v4: vec![(Ipv4Addr::new(10, 42, 0, 0), 32)],
        v6: vec![],
        dhcp: None,
    });
    let mut routes: Vec<Route> = r.routes.iter().filter(|r| !r.connected).cloned().collect();
    let gw = Ipv4Addr::new(10, 42, 7, 0);
    routes.push(Route {
        prefix: IpAddr::V4(Ipv4Addr::new(10, 42, 7, 0)),
        len: 24,
        next_hop: NextHop::Gateway {
            vlan: overlay,
            via: IpAddr::V4(gw),
        },
        connected: false,
    });
    r = RoutingState::build(interfaces, routes, 1024).unwrap();
    state.routing = Arc::new(r);
    let vtep = mac(0x77);
    state.neighbours.insert((overlay, IpAddr::V4(gw)), vtep);
    let pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
    let mut sim = Sim {
        state,
        pipeline,
        now: Timestamp::from_secs(1),
    };
    sim.send(
        0,
        &arp(ArpOperation::Request, A, A_IP, Ipv4Addr::new(10, 42, 0, 1)),
    );
    let far = Ipv4Addr::new(10, 42, 7, 5);
    let out = sim.send(0, &to_router(R10, A, &ping(A_IP, far, 64, true, 8)));
    assert_eq!(out.drop, None);
    assert_eq!(out.frames.len(), 1, "no probe, the packet itself: {out:?}");
    let (p, f) = &out.frames[0];
    assert_eq!(*p, 1);
    assert_eq!(&f[..6], vtep.as_bytes());
    assert_eq!(&f[6..12], mac(0x40).as_bytes());
    assert_eq!(ip_of(f).dst_addr(), far);
    // Long past REACHABLE: the re-confirmation is the static entry again, not an ARP.
    let out = sim.tick(40);
    assert!(out.frames.is_empty(), "{out:?}");
    let out = sim.send(0, &to_router(R10, A, &ping(A_IP, far, 64, true, 8)));
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let out = sim.tick(6);
    assert!(out.frames.iter().all(|(_, f)| !is_probe(f)), "{out:?}");
    // The peer came back with another MAC: the next packet takes it.
    let vtep2 = mac(0x78);
    sim.state
        .neighbours
        .insert((overlay, IpAddr::V4(gw)), vtep2);
    sim.pipeline.adopt(&sim.state);
    let out = sim.send(0, &to_router(R10, A, &ping(A_IP, far, 64, true, 8)));
    assert_eq!(out.frames.len(), 1, "{out:?}");
    assert_eq!(&out.frames[0].1[..6], vtep2.as_bytes());
    assert_eq!(
        sim.pipeline
            .counters()
            .interface(overlay)
            .neigh_probes
            .get(),
        0
    );
}
