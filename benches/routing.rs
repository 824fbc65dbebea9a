//! Per-packet cost of the L3 stage (the router), sans IO, and of the FIB lookup at scale.
//!
//! The switch has three access ports, each in a VLAN with a router interface:
//!
//! - port 0 (`c`), VLAN 10, interface 10.42.0.1/16 (MAC 02:aa:00:00:00:0a): 1k containers,
//!   10.42.0.2 and up;
//! - port 1 (`core`), VLAN 20, interface 10.43.0.1/24: four gateways, 10.43.0.10 to .13;
//! - port 2 (`up`), VLAN 100, interface 10.200.0.1/24: four gateways, 10.200.0.10 to .13.
//!
//! MTU 1500 everywhere, the default neighbour table bound. Before measuring, every container
//! resolves its gateway the way a host does (an ARP request for 10.42.0.1, then an ARP reply
//! to the router) and every gateway sends the router an ARP reply: so the MAC table knows all
//! of them on their ports and every neighbour entry is `REACHABLE`. The clock is fake and
//! fixed (`NOW`), so nothing ages and no neighbour ever needs re-confirming: the steady state
//! routes every packet in place, without probes, queues or generated frames (checked before
//! and after each bench).
//!
//! Packets are 64-byte frames (Ethernet, IPv4 with TTL 64, UDP, 22 bytes of payload) from a
//! container to the router's MAC on VLAN 10. The router rewrites a frame in place (MACs, TTL,
//! checksum), so each packet is copied from a precomputed template (16k templates, cycled
//! through, each in its own cache line) into one reused buffer before it goes in: a 64-byte
//! copy per packet, measured alone as `routing/template_copy` so it can be subtracted.
//! Sources and destinations are drawn in shuffled order. One iteration is a batch of 1024
//! packets (throughput = 1024 elements), each going through what the worker does for it minus
//! the syscalls: `Pipeline::receive` (or `Pipeline::receive_ipip`), that is `Pipeline::process`
//! (L2 classification and source refresh, the router's header checks, FIB lookup, neighbour
//! lookup, TTL decrement, MAC rewrite, egress MAC lookup), then the egress stage: for a
//! forwarded frame its view per egress port, the MTU check and the tx counters, for an IPIP
//! route the IPIP counters, one transmit to the bench's output, and the drain of the router's
//! generated frames (empty).
//!
//! - `routing/forward/{10,100k}`: to a destination behind a gateway route. The FIB holds the
//!   three connected routes plus 10 or 100k /24 routes (11.0.0.0/24, 11.0.1.0/24, ... up to
//!   12.134.159.0/24 for 100k), route `i` via gateway `i % 8` (on VLAN 20 or 100). The 16k
//!   templates go to 16k distinct routes in shuffled order (all 10 in the small case), so at
//!   100k the lookups are spread over every FIB node.
//! - `routing/ipip_encap/64_nodes`: to a pod of another node: the FIB holds the connected
//!   routes plus 64 `encap = ipip` routes (10.244.j.0/24 via node 192.168.1.(10 + j), local
//!   192.168.1.1, MTU 1480), as Calico's IPIP mode sets them up. The decision is a `Tunnel`
//!   with its outer header built (DF, TOS copied, ident, checksum).
//! - `routing/ipip_decap/64_nodes`: the other way: a 70-byte outer packet (20-byte outer
//!   header + the 50-byte inner IPv4/UDP packet) from a peer node to a container, as the IPIP
//!   socket hands it over: `Pipeline::ipip_in` (peer check, outer and inner header checks, the
//!   same routing as above to the container's connected route, Ethernet header written in
//!   front of the inner packet) and the egress. Here the template copy is 70 bytes.
//! - `routing/template_copy`: only the copy of 1024 templates into the buffer.
//!
//! `fib/lookup_v4/*` measures `Fib::lookup_v4` hits alone, with 10, 1k, 100k and 1M /24
//! routes (11.0.0.0/24 upward), looking addresses up in shuffled order, one per iteration.
//!
//! Run with `cargo bench --bench routing`; add a filter such as `-- ipip` for some cases.

mod common;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tapswitch_dataplane::pipeline::routing::NEIGH_MAX_DEFAULT;
use tapswitch_dataplane::pipeline::Targets;
use tapswitch_dataplane::pipeline::{
    Decision, DhcpServer, ForwardingState, Interface, NextHop, Pipeline, PortMode, PortState,
    Route, RoutingState, RxMeta, WorkerCounters,
};
use tapswitch_dataplane::tables::{Fib, NeighKey, NeighState, PortId, Timestamp};
use tapswitch_dataplane::wire::builder::ethernet_frame;
use tapswitch_dataplane::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use tapswitch_dataplane::wire::ipip::{self, OUTER_LEN};
use tapswitch_dataplane::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, IpProtocol, Ipv4Packet, VlanId,
};

use common::{shuffled, Discard};

/// A routed frame: 14 Ethernet + 20 IPv4 + 8 UDP + 22 payload.
const FRAME_LEN: usize = 64;
const IP_LEN: usize = FRAME_LEN - ETHERNET_HEADER_LEN;
/// An IPIP packet as the IPIP socket receives it: outer header + inner packet.
const OUTER_PACKET_LEN: usize = OUTER_LEN + IP_LEN;
/// Packets per iteration.
const BATCH: usize = 1024;
/// Precomputed packets the benches cycle through (a multiple of `BATCH`).
const TEMPLATES: usize = 16 * BATCH;
const CONTAINERS: usize = 1_000;
const GATEWAYS: usize = 8;
const IPIP_NODES: usize = 64;
const IPIP_LABEL: &str = "64_nodes";
/// Sizes of the `routing/forward` FIBs (configured routes, besides the 3 connected ones).
const FORWARD_SIZES: [(&str, usize); 2] = [("10", 10), ("100k", 100_000)];
/// Sizes of the `Fib::lookup_v4` bench.
const FIB_SIZES: [(&str, usize); 4] = [
    ("10", 10),
    ("1k", 1_000),
    ("100k", 100_000),
    ("1M", 1_000_000),
];
/// The fake clock: every packet, in setup or measured, is seen at this instant.
const NOW: Timestamp = Timestamp::from_secs(1);

const CONTAINER_PORT: PortId = PortId(0);
const CORE_PORT: PortId = PortId(1);
const UP_PORT: PortId = PortId(2);
const R10: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 0, 10]);
const R20: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 0, 20]);
const R100: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 1, 0]);
const GW10: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
const GW20: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);
const GW100: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// This host's underlay address (the IPIP routes' `local`).
const LOCAL_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

fn vlan(id: u16) -> VlanId {
    VlanId::new(id).expect("a VLAN id")
}

/// One frame in its own cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Frame([u8; FRAME_LEN]);

/// One received IPIP packet, cache-line aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct OuterPacket([u8; OUTER_PACKET_LEN]);

/// A host: MAC and IPv4 address.
#[derive(Clone, Copy, Debug)]
struct Host {
    mac: EthernetAddress,
    ip: Ipv4Addr,
}

/// Container `i`, on port 0 (VLAN 10).
fn container(i: usize) -> Host {
    Host {
        mac: EthernetAddress::from_u64(0x02_00_00_00_00_00 | i as u64),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 42, 0, 2)) + i as u32),
    }
}

/// Gateway `g` (0..8): the first four on VLAN 20 (port 1), the others on VLAN 100 (port 2).
fn gateway(g: usize) -> (VlanId, PortId, Host) {
    let mac = EthernetAddress::from_u64(0x02_00_00_00_fe_00 | g as u64);
    if g < GATEWAYS / 2 {
        let ip = Ipv4Addr::new(10, 43, 0, 10 + g as u8);
        (vlan(20), CORE_PORT, Host { mac, ip })
    } else {
        let ip = Ipv4Addr::new(10, 200, 0, 10 + (g - GATEWAYS / 2) as u8);
        (vlan(100), UP_PORT, Host { mac, ip })
    }
}

/// The prefix of forward route `i`: a /24 from 11.0.0.0 upward.
fn route_prefix(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(11, 0, 0, 0)) + ((i as u32) << 8))
}

/// A host address inside forward route `i`.
fn route_host(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(route_prefix(i)) + 1 + (i as u32 * 7) % 254)
}

/// The underlay address of IPIP node `j`.
fn node(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 10 + j as u8)
}

/// A pod address on IPIP node `j`.
fn pod(j: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, j as u8, 2 + (k % 250) as u8)
}

/// A 50-byte IPv4/UDP packet, TTL 64, DF, checksummed (UDP checksum 0).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> [u8; IP_LEN] {
    let mut ip = [0u8; IP_LEN];
    {
        let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_total_len(IP_LEN as u16);
        p.set_ident(1);
        p.set_frag(true, false, 0);
        p.set_ttl(64);
        p.set_protocol(IpProtocol::Udp);
        p.set_src_addr(src);
        p.set_dst_addr(dst);
        p.fill_checksum();
    }
    ip[20..22].copy_from_slice(&sport.to_be_bytes());
    ip[22..24].copy_from_slice(&dport.to_be_bytes());
    ip[24..26].copy_from_slice(&((IP_LEN - 20) as u16).to_be_bytes());
    ip[28..].fill(0x5a);
    ip
}

/// A 64-byte frame from container `src` to the router on VLAN 10, for `dst`.
fn routed_frame(src: usize, dst: Ipv4Addr, sport: u16, dport: u16) -> Frame {
    let from = container(src);
    let ip = udp_packet(from.ip, dst, sport, dport);
    let bytes = ethernet_frame(R10, from.mac, None, EtherType::Ipv4, &ip);
    Frame(bytes.try_into().expect("a 64-byte frame"))
}

/// An IPIP packet from node `j` (pod `k` on it) to container `dst`.
fn ipip_packet(j: usize, k: usize, dst: usize) -> OuterPacket {
    let inner = udp_packet(pod(j, k), container(dst).ip, 40_000 + k as u16, 5_000);
    let outer = ipip::outer_header(node(j), LOCAL_NODE, IP_LEN, 0, k as u16, 64);
    let mut p = [0u8; OUTER_PACKET_LEN];
    p[..OUTER_LEN].copy_from_slice(&outer);
    p[OUTER_LEN..].copy_from_slice(&inner);
    OuterPacket(p)
}

/// An ARP frame from `from`, asking for or confirming the router's address `target`.
fn arp(op: ArpOperation, from: Host, target: Ipv4Addr, router: EthernetAddress) -> Vec<u8> {
    let repr = ArpRepr {
        operation: op,
        source_hardware_addr: from.mac,
        source_protocol_addr: from.ip,
        target_hardware_addr: if op == ArpOperation::Reply {
            router
        } else {
            EthernetAddress([0; 6])
        },
        target_protocol_addr: target,
    };
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut p[..]));
    let dst = if op == ArpOperation::Request {
        EthernetAddress::BROADCAST
    } else {
        router
    };
    ethernet_frame(dst, from.mac, None, EtherType::Arp, &p)
}

fn routing_state(forward_routes: usize, ipip_nodes: usize) -> RoutingState {
    let iface = |id, mac, addr, len| Interface {
        vlan: vlan(id),
        mac,
        mtu: 1500,
        v4: vec![(addr, len)],
        v6: vec![],
        // As configured by default: an interface with IPv4 serves DHCP, which the router
        // checks for on every frame to its MAC.
        dhcp: Some(DhcpServer {
            dns: vec![],
            domain: None,
            lease_secs: 86_400,
        }),
    };
    let interfaces = vec![
        iface(10, R10, GW10, 16),
        iface(20, R20, GW20, 24),
        iface(100, R100, GW100, 24),
    ];
    let mut routes = Vec::with_capacity(forward_routes + ipip_nodes);
    for i in 0..forward_routes {
        let (vlan, _, gw) = gateway(i % GATEWAYS);
        routes.push(Route {
            prefix: IpAddr::V4(route_prefix(i)),
            len: 24,
            next_hop: NextHop::Gateway {
                vlan,
                via: IpAddr::V4(gw.ip),
            },
            connected: false,
        });
    }
    for j in 0..ipip_nodes {
        routes.push(Route {
            prefix: IpAddr::V4(Ipv4Addr::new(10, 244, j as u8, 0)),
            len: 24,
            next_hop: NextHop::Ipip {
                remote: node(j),
                local: Some(LOCAL_NODE),
                mtu: 1480,
                ttl: 64,
            },
            connected: false,
        });
    }
    RoutingState::build(interfaces, routes, NEIGH_MAX_DEFAULT).expect("valid routes")
}

/// Takes what the router generated; returns how many there were.
fn drain(pipeline: &mut Pipeline) -> usize {
    let mut n = 0;
    while let Some(g) = pipeline.take_generated() {
        pipeline.recycle(g);
        n += 1;
    }
    n
}

/// What the worker does with one frame received on the containers' port, minus the I/O:
/// [`Pipeline::receive`] into an output that counts each transmit (the egress stage's view
/// of the frame per egress port, MTU check and tx counters; for an IPIP route the outer
/// header and the IPIP counters; then the drain of the router's generated frames, none in
/// these benches' steady state, checked after each bench). Returns the number of transmits.
#[inline(always)]
fn receive(pipeline: &mut Pipeline, state: &ForwardingState, frame: &mut [u8]) -> usize {
    let mut out = Discard::default();
    pipeline.receive(
        state,
        CONTAINER_PORT,
        frame,
        &RxMeta::default(),
        NOW,
        &mut out,
    );
    out.sent
}

/// The same for a packet the IPIP socket received from `src`: [`Pipeline::receive_ipip`].
#[inline(always)]
fn receive_ipip(
    pipeline: &mut Pipeline,
    state: &ForwardingState,
    src: Ipv4Addr,
    packet: &mut [u8],
) -> usize {
    let mut out = Discard::default();
    pipeline.receive_ipip(state, src, packet, false, NOW, &mut out);
    out.sent
}

/// A switch with three routed VLANs, its containers and gateways resolved.
struct Setup {
    state: ForwardingState,
    pipeline: Pipeline,
}

impl Setup {
    fn new(forward_routes: usize, ipip_nodes: usize) -> Setup {
        let port = |name: &str, v| {
            Some(PortState {
                name: name.to_string(),
                mode: PortMode::Access(vlan(v)),
                mtu: 1500,
                max_macs: u32::MAX,
            })
        };
        let mut state =
            ForwardingState::with_ports(vec![port("c", 10), port("core", 20), port("up", 100)]);
        state.routing = Arc::new(routing_state(forward_routes, ipip_nodes));
        assert_eq!(state.routing.fib.len(), 3 + forward_routes + ipip_nodes);
        let mut pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));

        // Containers ask for their gateway (answered: one generated ARP reply), then confirm
        // it with a reply of their own, which makes them REACHABLE neighbours.
        for i in 0..CONTAINERS {
            let h = container(i);
            let mut req = arp(ArpOperation::Request, h, GW10, R10);
            let d = pipeline.decide(&state, CONTAINER_PORT, &mut req, NOW);
            assert!(matches!(d, Decision::Local), "ARP request: {d:?}");
            assert_eq!(
                drain(&mut pipeline),
                1,
                "the router answers the ARP request"
            );
            let mut rep = arp(ArpOperation::Reply, h, GW10, R10);
            let d = pipeline.decide(&state, CONTAINER_PORT, &mut rep, NOW);
            assert!(matches!(d, Decision::Local), "ARP reply: {d:?}");
            assert_eq!(drain(&mut pipeline), 0);
        }
        for g in 0..GATEWAYS {
            let (v, port, h) = gateway(g);
            let (router_ip, router_mac) = if v == vlan(20) {
                (GW20, R20)
            } else {
                (GW100, R100)
            };
            let mut rep = arp(ArpOperation::Reply, h, router_ip, router_mac);
            let d = pipeline.decide(&state, port, &mut rep, NOW);
            assert!(matches!(d, Decision::Local), "gateway ARP reply: {d:?}");
            assert_eq!(drain(&mut pipeline), 0);
        }
        let setup = Setup { state, pipeline };
        setup.check_steady();
        setup
    }

    /// Every container and gateway is learned and a REACHABLE neighbour; nothing was dropped,
    /// probed, queued or answered with an ICMP error.
    fn check_steady(&self) {
        let pipeline = &self.pipeline;
        let c = pipeline.counters();
        assert_eq!(pipeline.mac_table().len(), CONTAINERS + GATEWAYS);
        assert_eq!(c.learn.learned.get(), (CONTAINERS + GATEWAYS) as u64);
        assert_eq!(c.learn.moved.get() + c.learn.table_full.get(), 0);
        let neigh = pipeline.shared().neighbours();
        assert_eq!(neigh.len(), CONTAINERS + GATEWAYS);
        let hosts = (0..CONTAINERS)
            .map(|i| (vlan(10), container(i)))
            .chain((0..GATEWAYS).map(|g| (gateway(g).0, gateway(g).2)));
        for (v, h) in hosts {
            let key = NeighKey::new(v, IpAddr::V4(h.ip));
            let rec = neigh.record(&key, NOW).expect("a neighbour entry");
            assert_eq!((rec.state, rec.mac), (NeighState::Reachable, Some(h.mac)));
            assert_eq!(rec.queued, 0);
        }
        for v in [10, 20, 100] {
            let i = c.interface(vlan(v));
            assert_eq!(i.drops.iter().map(|d| d.get()).sum::<u64>(), 0);
            assert_eq!(i.neigh_probes.get(), 0, "no probe");
            assert_eq!(i.icmp_errors.get() + i.icmp_rate_limited.get(), 0);
            assert_eq!(i.fragmented.get(), 0);
        }
        for counters in [
            c.port(CONTAINER_PORT),
            c.port(CORE_PORT),
            c.port(UP_PORT),
            &c.ipip,
        ] {
            assert_eq!(counters.drops.iter().map(|d| d.get()).sum::<u64>(), 0);
            assert_eq!(counters.tx_oversized.get(), 0);
        }
    }
}

/// Checks a frame the router forwarded: to `port` in `out_vlan`, rewritten for `next_hop`
/// from `router`, TTL decremented, checksum still valid, destination `dst`.
fn check_routed(
    decision: Decision<'_>,
    frame: &[u8],
    (out_vlan, port): (VlanId, PortId),
    next_hop: EthernetAddress,
    router: EthernetAddress,
    dst: Ipv4Addr,
) {
    let Decision::Forward(e) = decision else {
        panic!("not forwarded: {decision:?}")
    };
    assert_eq!(e.vlan, out_vlan);
    let Targets::One(m) = e.targets else {
        panic!("not to one port: {:?}", e.targets)
    };
    assert_eq!((m.port, m.tagged), (port, false));
    let out = e.frame_for(m, frame).to_vec();
    assert_eq!(out.len(), FRAME_LEN);
    assert_eq!(&out[..6], next_hop.as_bytes());
    assert_eq!(&out[6..12], router.as_bytes());
    let ip = Ipv4Packet::new_checked(&out[14..]).expect("IPv4");
    assert_eq!(ip.ttl(), 63);
    assert!(ip.verify_checksum());
    assert_eq!(ip.dst_addr(), dst);
}

/// Runs `BATCH` packets per iteration through `one`, cycling through `templates`, and checks
/// afterwards that every packet was sent and the router stayed in its steady state.
fn bench_batches<T: Copy>(
    c: &mut Criterion,
    group: &str,
    id: BenchmarkId,
    setup: &mut Setup,
    templates: &[T],
    mut one: impl FnMut(&mut Pipeline, &ForwardingState, usize, &mut T) -> usize,
) {
    assert_eq!(templates.len() % BATCH, 0);
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(BATCH as u64));
    let (mut packets, mut sent) = (0usize, 0usize);
    {
        let Setup { state, pipeline } = setup;
        let mut buf = templates[0];
        let mut next = 0;
        group.bench_function(id, |b| {
            b.iter(|| {
                let mut n = 0;
                for (i, t) in templates.iter().enumerate().skip(next).take(BATCH) {
                    // The router rewrites the packet in place: start from a fresh copy.
                    buf = *t;
                    n += one(pipeline, state, i, black_box(&mut buf));
                }
                next = (next + BATCH) % templates.len();
                packets += BATCH;
                sent += n;
                n
            })
        });
    }
    group.finish();
    assert_eq!(sent, packets, "every packet was sent");
    setup.check_steady();
}

fn forward(c: &mut Criterion) {
    for (label, n) in FORWARD_SIZES {
        let mut setup = Setup::new(n, 0);
        // Container s -> a host in route r, in shuffled order.
        let srcs = shuffled(CONTAINERS, 0x9e37_79b9_7f4a_7c15);
        let routes = shuffled(n, 0xd1b5_4a32_d192_ed03);
        let picks: Vec<(usize, usize)> = (0..TEMPLATES)
            .map(|i| (srcs[i % CONTAINERS], routes[i % n]))
            .collect();
        let templates: Vec<Frame> = picks
            .iter()
            .map(|&(s, r)| routed_frame(s, route_host(r), 40_000 + s as u16, 5_000 + r as u16))
            .collect();
        {
            let Setup { state, pipeline } = &mut setup;
            for (t, &(_, r)) in templates.iter().zip(&picks) {
                let mut f = *t;
                let d = pipeline.decide(state, CONTAINER_PORT, &mut f.0, NOW);
                let (v, port, gw) = gateway(r % GATEWAYS);
                let router = if v == vlan(20) { R20 } else { R100 };
                check_routed(d, &f.0, (v, port), gw.mac, router, route_host(r));
                assert_eq!(drain(pipeline), 0, "nothing generated");
            }
        }
        setup.check_steady();
        bench_batches(
            c,
            "routing/forward",
            BenchmarkId::from_parameter(label),
            &mut setup,
            &templates,
            |pipeline, state, _, f| receive(pipeline, state, &mut f.0),
        );
    }
}

fn ipip_encap(c: &mut Criterion) {
    let mut setup = Setup::new(0, IPIP_NODES);
    // Container s -> pod k on node j, in shuffled order.
    let srcs = shuffled(CONTAINERS, 0x2545_f491_4f6c_dd1d);
    let nodes = shuffled(IPIP_NODES, 0x9e37_79b9_7f4a_7c15);
    let picks: Vec<(usize, usize)> = (0..TEMPLATES)
        .map(|i| (srcs[i % CONTAINERS], nodes[i % IPIP_NODES]))
        .collect();
    let templates: Vec<Frame> = picks
        .iter()
        .enumerate()
        .map(|(i, &(s, j))| routed_frame(s, pod(j, i), 40_000 + s as u16, 5_000 + j as u16))
        .collect();
    {
        let Setup { state, pipeline } = &mut setup;
        for (i, (t, &(_, j))) in templates.iter().zip(&picks).enumerate() {
            let mut f = *t;
            let d = pipeline.decide(state, CONTAINER_PORT, &mut f.0, NOW);
            let Decision::Tunnel(t) = d else {
                panic!("not tunnelled: {d:?}")
            };
            assert_eq!(t.remote, node(j));
            assert_eq!((t.start, t.len), (ETHERNET_HEADER_LEN, IP_LEN));
            // The outer header alone (its total length counts the inner packet too).
            let outer = Ipv4Packet::new_unchecked(&t.outer[..]);
            assert_eq!(usize::from(outer.header_len()), OUTER_LEN);
            assert!(outer.verify_checksum());
            assert_eq!(outer.protocol(), IpProtocol::IpIp);
            assert_eq!((outer.src_addr(), outer.dst_addr()), (LOCAL_NODE, node(j)));
            assert_eq!(usize::from(outer.total_len()), OUTER_PACKET_LEN);
            assert!(outer.dont_frag());
            let inner = Ipv4Packet::new_checked(&f.0[t.start..t.start + t.len]).expect("inner");
            assert_eq!((inner.ttl(), inner.dst_addr()), (63, pod(j, i)));
            assert!(inner.verify_checksum());
            assert_eq!(drain(pipeline), 0, "nothing generated");
        }
    }
    setup.check_steady();
    bench_batches(
        c,
        "routing/ipip_encap",
        BenchmarkId::from_parameter(IPIP_LABEL),
        &mut setup,
        &templates,
        |pipeline, state, _, f| receive(pipeline, state, &mut f.0),
    );
}

fn ipip_decap(c: &mut Criterion) {
    let mut setup = Setup::new(0, IPIP_NODES);
    // Pod on node j -> container d, in shuffled order.
    let nodes = shuffled(IPIP_NODES, 0xd1b5_4a32_d192_ed03);
    let dsts = shuffled(CONTAINERS, 0x9e37_79b9_7f4a_7c15);
    let picks: Vec<(usize, usize)> = (0..TEMPLATES)
        .map(|i| (nodes[i % IPIP_NODES], dsts[i % CONTAINERS]))
        .collect();
    let templates: Vec<OuterPacket> = picks
        .iter()
        .enumerate()
        .map(|(i, &(j, d))| ipip_packet(j, i, d))
        .collect();
    let from: Vec<Ipv4Addr> = picks.iter().map(|&(j, _)| node(j)).collect();
    {
        let Setup { state, pipeline } = &mut setup;
        for (t, &(j, d)) in templates.iter().zip(&picks) {
            let mut p = *t;
            let (start, decision) = pipeline.ipip_in(state, node(j), &mut p.0, NOW);
            assert_eq!(start, OUTER_LEN - ETHERNET_HEADER_LEN);
            let h = container(d);
            check_routed(
                decision,
                &p.0[start..],
                (vlan(10), CONTAINER_PORT),
                h.mac,
                R10,
                h.ip,
            );
            assert_eq!(drain(pipeline), 0, "nothing generated");
        }
    }
    setup.check_steady();
    bench_batches(
        c,
        "routing/ipip_decap",
        BenchmarkId::from_parameter(IPIP_LABEL),
        &mut setup,
        &templates,
        |pipeline, state, i, p| receive_ipip(pipeline, state, from[i], &mut p.0),
    );
}

fn template_copy(c: &mut Criterion) {
    let templates: Vec<Frame> = (0..TEMPLATES)
        .map(|i| routed_frame(i % CONTAINERS, route_host(i), 40_000, 5_000))
        .collect();
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut buf = templates[0];
    let mut next = 0;
    group.bench_function("template_copy", |b| {
        b.iter(|| {
            for t in &templates[next..next + BATCH] {
                buf = *t;
                black_box(&mut buf);
            }
            next = (next + BATCH) % templates.len();
        })
    });
    group.finish();
}

fn fib_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("fib/lookup_v4");
    group.throughput(Throughput::Elements(1));
    for (label, n) in FIB_SIZES {
        let mut fib = Fib::new();
        for i in 0..n {
            fib.insert(IpAddr::V4(route_prefix(i)), 24, i as u32)
                .expect("a /24");
        }
        assert_eq!(fib.len(), n);
        let keys: Vec<(Ipv4Addr, u32)> = shuffled(n, 0x2545_f491_4f6c_dd1d)
            .into_iter()
            .map(|i| (route_host(i), i as u32))
            .collect();
        assert!(keys.iter().all(|&(a, v)| fib.lookup_v4(a) == Some(v)));
        let addrs: Vec<Ipv4Addr> = keys.iter().map(|&(a, _)| a).collect();
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            let mut i = 0;
            b.iter(|| {
                let v = fib.lookup_v4(black_box(addrs[i]));
                i += 1;
                if i == addrs.len() {
                    i = 0;
                }
                v
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = forward, ipip_encap, ipip_decap, template_copy, fib_lookup
}
criterion_main!(benches);
