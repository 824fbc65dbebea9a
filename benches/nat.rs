//! Per-packet cost of the NAT stage of the router (connection tracking, masquerade, Service
//! load balancing), sans IO, with 10 to 100k Services configured; the cost of one Service
//! change at the dataplane level; and the memory of a connection tracking entry.
//!
//! The switch has three access ports and two router interfaces:
//!
//! - port 0 (`c`), VLAN 10: 1k client containers, 10.42.0.2 and up;
//! - port 1 (`pods`), VLAN 10 too: 256 Service backends, 10.42.128.10 and up;
//! - port 2 (`up`), VLAN 100: the uplink gateway 10.200.0.254, the default route's next hop.
//!
//! VLAN 10 has the interface 10.42.0.1/16 (MAC 02:aa:00:00:00:0a), VLAN 100 10.200.0.1/24
//! (MAC 02:aa:00:00:01:00). NAT rules: one `[[snat]]` masquerade of 10.42.0.0/16 out of VLAN
//! 100, plus N UDP Services (N = 10, 1k, 10k, 100k): Service `r` is 10.96.0.0 + r + 1 port 53,
//! Maglev, two backends (pods `2r` and `2r + 1` modulo 256, port 8080), so N frontends in the
//! `ShardMap`. Before measuring, every container and pod resolves its gateway and the uplink
//! gateway announces itself (ARP), so every neighbour is `REACHABLE`; the fake clock (`NOW`)
//! never moves, so no connection and no neighbour ever expires.
//!
//! Packets are 64-byte frames (Ethernet, IPv4 TTL 64 with DF, then UDP with 22 bytes of
//! payload or TCP with 10), with valid UDP and TCP checksums (so the incremental checksum
//! updates run). As in `benches/routing.rs` the router rewrites a frame in place, so each
//! packet is copied from one of 16k precomputed templates (one cache line each, cycled
//! through, in shuffled order) into a reused buffer; one iteration is a batch of 1024 packets
//! (throughput = 1024 elements), each through `Pipeline::receive` as the worker calls it:
//! `Pipeline::process`, then the egress stage (each egress port's view of the frame, MTU check,
//! tx counters, one transmit to the bench's output, the drain of the router's generated
//! frames, which stays empty). Batches are timed with `iter_custom`, so work
//! between batches (the table resets below) is not measured.
//!
//! - `nat/hit/{udp,tcp}_{out,in}/N`: packets of established masqueraded connections: 16k UDP
//!   and 16k TCP connections from the containers to 16k outside hosts (198.18.0.0/15, ports 53
//!   and 443) are set up first (UDP: one datagram each way; TCP: SYN, SYN-ACK, ACK and one data
//!   segment each way, so the entries are ESTABLISHED with real window state), 32k entries in
//!   all. `out`: a container's packet: conntrack hit (original direction; TCP state and window
//!   check), source rewritten to 10.200.0.1 and the allocated port, routed to the uplink.
//!   `in`: the outside host's reply to 10.200.0.1:port: conntrack hit (reply direction),
//!   destination rewritten to the container, routed to port 0. The Services are present but
//!   a hit does not look at them: the curve over N must be flat.
//! - `nat/new/udp_service/N`: the first datagram of a new UDP connection from a container to a
//!   Service VIP (16k templates, template `i` to Service `i mod N` in shuffled order):
//!   conntrack miss, frontend lookup, Maglev backend choice, then, because the backend is in
//!   the VLAN the packet came from (hairpin), masquerade behind 10.42.0.1 with a source port
//!   drawn at random and checked free, the insert, the rewrite (DNAT + SNAT) and the routing to
//!   the pod on port 1. To keep the table bounded, the connections these packets made are
//!   removed (`Conntrack::remove_where`, untimed) every time the templates wrap around, i.e.
//!   every 16 batches: the table holds the 32k established entries above plus 0 to 16k new
//!   ones, and every measured packet is a miss and a new connection. At 100k Services the 16k
//!   templates go to 16k different Services, so each packet touches a Service (its `Arc`,
//!   Maglev table and backends) and scheduler state that are not in cache.
//! - `nat/new/udp_service_hot10/N`: the same, but every template goes to one of the same 10
//!   Services (of the N configured): the working set no longer grows with N, so this shows
//!   what the size of the frontend map itself costs.
//! - `nat/frontend_lookup/N`: `NatRules::frontend` hits alone (a VIP's frontend), in shuffled
//!   order, one per iteration.
//! - `nat/baseline/no_nat`: `udp_out` templates on the same switch without any NAT rule and an
//!   empty table (the NAT stage is skipped): plain routing, for the difference.
//! - `nat/service_change/{10,10k,100k}`: what publishing one Service change costs the
//!   dataplane side: clone the published `NatRules` (as a snapshot holds it), build one new
//!   `Arc<Service>` (two backends, its Maglev table), insert its frontend, clone the result
//!   again (the new snapshot's copy), then drop both copies (the published rules stay
//!   shared, so the insert copies the shard array and one shard). One iteration is one change.
//!   `nat/service_build` is the `Arc<Service>` build alone.
//! - `conntrack/insert/1M`: `Conntrack::insert` of masqueraded UDP entries into a table bounded
//!   at 1M entries, filled from empty to 1M, then emptied (untimed) and filled again;
//!   1024 inserts per iteration. Before it, a table filled with 1M entries prints
//!   `memory_bytes() / len` (bytes per tracked connection) to stderr.
//!
//! Run with `cargo bench --bench nat`; add a filter such as `-- nat/hit` for some cases.

mod common;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tapswitch_dataplane::pipeline::routing::NEIGH_MAX_DEFAULT;
use tapswitch_dataplane::pipeline::Targets;
use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Interface, NextHop, Pipeline, PortMode, PortState, Route,
    RoutingState, RxMeta, WorkerCounters,
};
use tapswitch_dataplane::tables::conntrack::{ProtoState, TcpState, DEFAULT_MAX};
use tapswitch_dataplane::tables::service::PROTO_UDP;
use tapswitch_dataplane::tables::{
    Backend, Conntrack, CtEntry, FlowKey, NatRules, PortId, Scheduler, Service, ShardMap, SnatRule,
    Target, Timestamp,
};
use tapswitch_dataplane::wire::builder::ethernet_frame;
use tapswitch_dataplane::wire::checksum;
use tapswitch_dataplane::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use tapswitch_dataplane::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, IpProtocol, Ipv4Packet, VlanId,
};

use common::{shuffled, Discard};

/// Every measured frame: 14 Ethernet + 20 IPv4 + 8 UDP + 22 payload, or 20 TCP + 10 payload.
const FRAME_LEN: usize = 64;
const UDP_PAYLOAD: usize = FRAME_LEN - ETHERNET_HEADER_LEN - 20 - 8;
const TCP_PAYLOAD: usize = FRAME_LEN - ETHERNET_HEADER_LEN - 20 - 20;
/// Packets per iteration.
const BATCH: usize = 1024;
/// Precomputed packets the benches cycle through (a multiple of `BATCH`); also the number of
/// established UDP and of established TCP connections.
const TEMPLATES: usize = 16 * BATCH;
const CONTAINERS: usize = 1_000;
const PODS: usize = 256;
/// Services configured.
const SERVICE_SIZES: [(&str, usize); 4] = [
    ("10", 10),
    ("1k", 1_000),
    ("10k", 10_000),
    ("100k", 100_000),
];
/// Services present for `nat/service_change`.
const CHANGE_SIZES: [(&str, usize); 3] = [("10", 10), ("10k", 10_000), ("100k", 100_000)];
/// Entries of the conntrack memory measurement and of `conntrack/insert`.
const CT_FILL: usize = 1_000_000;
/// The fake clock: every packet, in setup or measured, is seen at this instant.
const NOW: Timestamp = Timestamp::from_secs(1);

const CLIENT_PORT: PortId = PortId(0);
const POD_PORT: PortId = PortId(1);
const UP_PORT: PortId = PortId(2);
const R10: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 0, 10]);
const R100: EthernetAddress = EthernetAddress([2, 0xaa, 0, 0, 1, 0]);
const GW10: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
const GW100: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const UPLINK: Host = Host {
    mac: EthernetAddress([2, 0, 0, 0, 0xfe, 0xfe]),
    ip: Ipv4Addr::new(10, 200, 0, 254),
};
const BACKEND_PORT: u16 = 8080;

const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn vlan(id: u16) -> VlanId {
    VlanId::new(id).expect("a VLAN id")
}

/// One frame in its own cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Frame([u8; FRAME_LEN]);

/// A host: MAC and IPv4 address.
#[derive(Clone, Copy, Debug)]
struct Host {
    mac: EthernetAddress,
    ip: Ipv4Addr,
}

fn add(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + i as u32)
}

/// Client container `i`, on port 0.
fn container(i: usize) -> Host {
    Host {
        mac: EthernetAddress::from_u64(0x02_00_00_00_00_00 | i as u64),
        ip: add(Ipv4Addr::new(10, 42, 0, 2), i),
    }
}

/// Backend pod `j`, on port 1.
fn pod(j: usize) -> Host {
    Host {
        mac: EthernetAddress::from_u64(0x02_00_00_01_00_00 | j as u64),
        ip: add(Ipv4Addr::new(10, 42, 128, 10), j),
    }
}

/// Outside host `i`, behind the uplink gateway.
fn outside(i: usize) -> Ipv4Addr {
    add(Ipv4Addr::new(198, 18, 0, 1), i)
}

/// The VIP of Service `r`.
fn vip(r: usize) -> Ipv4Addr {
    add(Ipv4Addr::new(10, 96, 0, 1), r)
}

/// Service `r`: UDP, `vip(r):53`, Maglev over two pods.
fn service(r: usize) -> Service {
    let backends = [2 * r % PODS, (2 * r + 1) % PODS]
        .into_iter()
        .map(|j| Backend {
            addr: SocketAddrV4::new(pod(j).ip, BACKEND_PORT),
            weight: 1,
        })
        .collect();
    Service::new(
        r as u32 + 1,
        format!("svc-{r}"),
        PROTO_UDP,
        vip(r),
        53,
        None,
        backends,
        Scheduler::Maglev,
        None,
    )
}

/// The NAT rules: masquerade of 10.42.0.0/16 out of VLAN 100 and `services` Services (none of
/// either when `services` is `None`).
fn nat_rules(services: Option<usize>) -> NatRules {
    let Some(n) = services else {
        return NatRules::default();
    };
    let mut frontends = ShardMap::new();
    for r in 0..n {
        let svc = Arc::new(service(r));
        frontends.insert(svc.frontend(), Target::Service(svc));
    }
    assert_eq!(frontends.len(), n);
    NatRules {
        snat: Arc::from(vec![SnatRule {
            source: Ipv4Addr::new(10, 42, 0, 0),
            source_len: 16,
            out_vlan: vlan(100),
            to: None,
            except: None,
        }]),
        frontends,
        conntrack_max: DEFAULT_MAX,
    }
}

fn routing_state() -> RoutingState {
    let iface = |id, mac, addr, len| Interface {
        vlan: vlan(id),
        mac,
        mtu: 1500,
        v4: vec![(addr, len)],
        v6: vec![],
        dhcp: None,
    };
    let interfaces = vec![iface(10, R10, GW10, 16), iface(100, R100, GW100, 24)];
    let routes = vec![Route {
        prefix: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        len: 0,
        next_hop: NextHop::Gateway {
            vlan: vlan(100),
            via: IpAddr::V4(UPLINK.ip),
        },
        connected: false,
    }];
    RoutingState::build(interfaces, routes, NEIGH_MAX_DEFAULT).expect("valid routes")
}

/// An IPv4 header (TTL 64, DF) for a `total`-byte packet into `p[..20]`.
fn ipv4_header(p: &mut [u8], proto: IpProtocol, src: Ipv4Addr, dst: Ipv4Addr) {
    let total = p.len() as u16;
    let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len(total);
    ip.set_ident(1);
    ip.set_frag(true, false, 0);
    ip.set_ttl(64);
    ip.set_protocol(proto);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
}

/// Where the checksum of the TCP or UDP packet `p` (20-byte IPv4 header) is, and the sum of
/// its pseudo header.
fn l4_sum_parts(p: &[u8]) -> (usize, IpProtocol, u16) {
    let ip = Ipv4Packet::new_unchecked(p);
    let (at, proto) = match ip.protocol() {
        IpProtocol::Tcp => (20 + 16, IpProtocol::Tcp),
        IpProtocol::Udp => (20 + 6, IpProtocol::Udp),
        p => panic!("not TCP or UDP: {p:?}"),
    };
    let len = (p.len() - 20) as u32;
    let pseudo = checksum::pseudo_header_v4(&ip.src_addr(), &ip.dst_addr(), proto, len);
    (at, proto, pseudo)
}

fn fill_l4_checksum(p: &mut [u8]) {
    let (at, proto, pseudo) = l4_sum_parts(p);
    p[at..at + 2].fill(0);
    let mut s = !checksum::combine(&[pseudo, checksum::sum(&p[20..])]);
    if proto == IpProtocol::Udp && s == 0 {
        s = 0xffff;
    }
    p[at..at + 2].copy_from_slice(&s.to_be_bytes());
}

fn l4_checksum_ok(p: &[u8]) -> bool {
    let (_, _, pseudo) = l4_sum_parts(p);
    checksum::combine(&[pseudo, checksum::sum(&p[20..])]) == 0xffff
}

/// An IPv4/UDP packet with 22 bytes of payload, checksummed.
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + UDP_PAYLOAD];
    ipv4_header(&mut p, IpProtocol::Udp, *src.ip(), *dst.ip());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + UDP_PAYLOAD) as u16).to_be_bytes());
    p[28..].fill(0x5a);
    fill_l4_checksum(&mut p);
    p
}

/// The fields of a TCP segment to build.
#[derive(Clone, Copy)]
struct Seg {
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    payload: usize,
}

/// An IPv4/TCP packet, checksummed; a SYN carries a window scale option (7).
fn tcp_packet(src: SocketAddrV4, dst: SocketAddrV4, s: Seg) -> Vec<u8> {
    let opt = if s.flags & SYN != 0 { 4 } else { 0 };
    let mut p = vec![0u8; 20 + 20 + opt + s.payload];
    ipv4_header(&mut p, IpProtocol::Tcp, *src.ip(), *dst.ip());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&s.seq.to_be_bytes());
    t[8..12].copy_from_slice(&s.ack.to_be_bytes());
    t[12] = (((20 + opt) / 4) as u8) << 4;
    t[13] = s.flags;
    t[14..16].copy_from_slice(&s.window.to_be_bytes());
    if opt != 0 {
        // NOP, window scale 7.
        t[20..24].copy_from_slice(&[1, 3, 3, 7]);
    }
    t[20 + opt..].fill(0x5a);
    fill_l4_checksum(&mut p);
    p
}

/// `ip` in an untagged Ethernet frame, padded to at least 64 bytes.
fn frame(dst: EthernetAddress, src: EthernetAddress, ip: &[u8]) -> Vec<u8> {
    let mut f = ethernet_frame(dst, src, None, EtherType::Ipv4, ip);
    if f.len() < FRAME_LEN {
        f.resize(FRAME_LEN, 0);
    }
    f
}

fn template(f: Vec<u8>) -> Frame {
    Frame(f.try_into().expect("a 64-byte frame"))
}

fn sock(ip: &[u8], src: bool) -> SocketAddrV4 {
    let p = Ipv4Packet::new_unchecked(ip);
    let at = if src { 20 } else { 22 };
    let port = u16::from_be_bytes([ip[at], ip[at + 1]]);
    SocketAddrV4::new(if src { p.src_addr() } else { p.dst_addr() }, port)
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

/// Takes what the router generated; returns how many there were.
fn drain(pipeline: &mut Pipeline) -> usize {
    let mut n = 0;
    while let Some(g) = pipeline.take_generated() {
        pipeline.recycle(g);
        n += 1;
    }
    n
}

/// What the worker does with one frame received on `port`, minus the I/O (as in
/// `benches/routing.rs`): [`Pipeline::receive`] into an output that counts each transmit (the
/// egress stage's view of the frame per egress port, the MTU check and the tx counters; then
/// the drain of the router's generated frames, none in these benches' steady state, checked
/// after each bench). Returns the number of transmits.
#[inline(always)]
fn receive(
    pipeline: &mut Pipeline,
    state: &ForwardingState,
    port: PortId,
    frame: &mut [u8],
) -> usize {
    let mut out = Discard::default();
    pipeline.receive(state, port, frame, &RxMeta::default(), NOW, &mut out);
    out.sent
}

/// The switch with its NAT rules, every host resolved.
struct Setup {
    state: ForwardingState,
    pipeline: Pipeline,
}

impl Setup {
    /// `services`: how many Services, or `None` for no NAT rule at all.
    fn new(services: Option<usize>) -> Setup {
        let port = |name: &str, v| {
            Some(PortState {
                name: name.to_string(),
                mode: PortMode::Access(vlan(v)),
                mtu: 1500,
                max_macs: u32::MAX,
            })
        };
        let mut state =
            ForwardingState::with_ports(vec![port("c", 10), port("pods", 10), port("up", 100)]);
        state.routing = Arc::new(routing_state());
        state.nat = nat_rules(services);
        let mut pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
        pipeline.adopt(&state);

        // Containers and pods ask for their gateway (answered: one generated ARP reply), then
        // confirm it with a reply of their own, which makes them REACHABLE neighbours.
        let hosts = (0..CONTAINERS)
            .map(|i| (CLIENT_PORT, container(i)))
            .chain((0..PODS).map(|j| (POD_PORT, pod(j))));
        for (port, h) in hosts {
            let mut req = arp(ArpOperation::Request, h, GW10, R10);
            let d = pipeline.decide(&state, port, &mut req, NOW);
            assert!(matches!(d, Decision::Local), "ARP request: {d:?}");
            assert_eq!(
                drain(&mut pipeline),
                1,
                "the router answers the ARP request"
            );
            let mut rep = arp(ArpOperation::Reply, h, GW10, R10);
            let d = pipeline.decide(&state, port, &mut rep, NOW);
            assert!(matches!(d, Decision::Local), "ARP reply: {d:?}");
            assert_eq!(drain(&mut pipeline), 0);
        }
        let mut rep = arp(ArpOperation::Reply, UPLINK, GW100, R100);
        let d = pipeline.decide(&state, UP_PORT, &mut rep, NOW);
        assert!(matches!(d, Decision::Local), "gateway ARP reply: {d:?}");
        assert_eq!(drain(&mut pipeline), 0);
        assert_eq!(
            pipeline.shared().neighbours().len(),
            CONTAINERS + PODS + 1,
            "every host is a neighbour"
        );
        let setup = Setup { state, pipeline };
        setup.check_clean();
        setup
    }

    /// No drop, probe, ICMP error, rejected or invalid packet, failed insert, nothing queued.
    fn check_clean(&self) {
        let c = self.pipeline.counters();
        for v in [10, 100] {
            let i = c.interface(vlan(v));
            assert_eq!(i.drops.iter().map(|d| d.get()).sum::<u64>(), 0, "VLAN {v}");
            assert_eq!(i.neigh_probes.get(), 0, "no probe");
            assert_eq!(i.icmp_errors.get() + i.icmp_rate_limited.get(), 0);
        }
        for p in [CLIENT_PORT, POD_PORT, UP_PORT] {
            let counters = c.port(p);
            assert_eq!(counters.drops.iter().map(|d| d.get()).sum::<u64>(), 0);
            assert_eq!(counters.tx_oversized.get(), 0);
        }
        let nat = &c.nat;
        assert_eq!(
            nat.invalid.get() + nat.rejected.get() + nat.insert_failed.get(),
            0
        );
        assert_eq!(self.pipeline.conntrack().stats.insert_failed, 0);
        assert_eq!(self.pipeline.conntrack().stats.early_drops, 0);
    }

    /// Runs one frame through from `port_in` and checks that it was routed, untagged, to
    /// `port_out` from `router`: TTL 63, IPv4 and transport checksums valid. Returns the IP
    /// packet as it leaves and the destination MAC.
    fn route_one(
        &mut self,
        port_in: PortId,
        frame: &[u8],
        port_out: PortId,
        router: EthernetAddress,
    ) -> (Vec<u8>, EthernetAddress) {
        let mut f = frame.to_vec();
        let d = self.pipeline.decide(&self.state, port_in, &mut f, NOW);
        let Decision::Forward(e) = d else {
            panic!("not forwarded: {d:?}")
        };
        let Targets::One(m) = e.targets else {
            panic!("not to one port: {:?}", e.targets)
        };
        assert_eq!((m.port, m.tagged), (port_out, false));
        let out = e.frame_for(m, &f).to_vec();
        assert_eq!(drain(&mut self.pipeline), 0, "nothing generated");
        assert_eq!(out.len(), FRAME_LEN);
        assert_eq!(&out[6..12], router.as_bytes());
        let ip = out[ETHERNET_HEADER_LEN..].to_vec();
        let total = usize::from(Ipv4Packet::new_checked(&ip[..]).expect("IPv4").total_len());
        let ip = ip[..total].to_vec();
        let p = Ipv4Packet::new_unchecked(&ip[..]);
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum(), "IPv4 checksum");
        assert!(l4_checksum_ok(&ip), "transport checksum after translation");
        let dst_mac = EthernetAddress::from_bytes(&out[..6]);
        (ip, dst_mac)
    }

    /// A container's packet to the outside: masqueraded behind 10.200.0.1 and routed to the
    /// uplink. Returns the translated source.
    fn out(&mut self, frame: &[u8], remote: SocketAddrV4) -> SocketAddrV4 {
        let (ip, mac) = self.route_one(CLIENT_PORT, frame, UP_PORT, R100);
        assert_eq!(mac, UPLINK.mac);
        assert_eq!(sock(&ip, false), remote);
        let masq = sock(&ip, true);
        assert_eq!(*masq.ip(), GW100, "masqueraded");
        masq
    }

    /// An outside host's reply: translated back to `local` (container `c`) and routed to it.
    fn back(&mut self, frame: &[u8], c: Host, local: SocketAddrV4) {
        let (ip, mac) = self.route_one(UP_PORT, frame, CLIENT_PORT, R10);
        assert_eq!(mac, c.mac);
        assert_eq!(sock(&ip, false), local, "translated back");
    }
}

/// Templates of the established connections, in shuffled order.
struct Established {
    udp_out: Vec<Frame>,
    udp_in: Vec<Frame>,
    tcp_out: Vec<Frame>,
    tcp_in: Vec<Frame>,
}

/// Sets up `TEMPLATES` masqueraded UDP and as many TCP connections, ESTABLISHED, from the
/// containers to outside hosts; returns a data packet of each direction of each connection.
/// With `nat` false (no NAT rule) only the outgoing UDP packets are routed and returned.
fn establish(setup: &mut Setup, nat: bool) -> Established {
    let srcs = shuffled(CONTAINERS, 0x9e37_79b9_7f4a_7c15);
    let order = shuffled(TEMPLATES, 0xd1b5_4a32_d192_ed03);
    let mut e = Established {
        udp_out: Vec::with_capacity(TEMPLATES),
        udp_in: Vec::with_capacity(TEMPLATES),
        tcp_out: Vec::with_capacity(TEMPLATES),
        tcp_in: Vec::with_capacity(TEMPLATES),
    };
    for &i in &order {
        let c = container(srcs[i % CONTAINERS]);
        let local = SocketAddrV4::new(c.ip, 30_000 + i as u16);
        let to_router = |ip: Vec<u8>| frame(R10, c.mac, &ip);
        let from_uplink = |ip: Vec<u8>| frame(R100, UPLINK.mac, &ip);

        let remote = SocketAddrV4::new(outside(i), 53);
        let out = to_router(udp_packet(local, remote));
        if !nat {
            let (ip, mac) = setup.route_one(CLIENT_PORT, &out, UP_PORT, R100);
            assert_eq!(
                (mac, sock(&ip, true)),
                (UPLINK.mac, local),
                "not translated"
            );
            e.udp_out.push(template(out));
            continue;
        }
        let masq = setup.out(&out, remote);
        let back = from_uplink(udp_packet(remote, masq));
        setup.back(&back, c, local);
        e.udp_out.push(template(out));
        e.udp_in.push(template(back));

        let remote = SocketAddrV4::new(outside(i), 443);
        let c_isn = 1_000_000u32.wrapping_add(i as u32 * 7_919);
        let s_isn = 3_000_000_000u32.wrapping_add(i as u32 * 104_729);
        let seg = |flags, seq, ack, window, payload| Seg {
            flags,
            seq,
            ack,
            window,
            payload,
        };
        let syn = to_router(tcp_packet(local, remote, seg(SYN, c_isn, 0, 64_240, 0)));
        let masq = setup.out(&syn, remote);
        let syn_ack = seg(SYN | ACK, s_isn, c_isn + 1, 65_160, 0);
        setup.back(&from_uplink(tcp_packet(remote, masq, syn_ack)), c, local);
        let ack = seg(ACK, c_isn + 1, s_isn + 1, 502, 0);
        assert_eq!(
            setup.out(&to_router(tcp_packet(local, remote, ack)), remote),
            masq
        );
        let data = seg(PSH | ACK, c_isn + 1, s_isn + 1, 502, TCP_PAYLOAD);
        let out = to_router(tcp_packet(local, remote, data));
        assert_eq!(setup.out(&out, remote), masq);
        let data = seg(
            PSH | ACK,
            s_isn + 1,
            c_isn + 1 + TCP_PAYLOAD as u32,
            509,
            TCP_PAYLOAD,
        );
        let back = from_uplink(tcp_packet(remote, masq, data));
        setup.back(&back, c, local);
        e.tcp_out.push(template(out));
        e.tcp_in.push(template(back));
    }
    let ct = setup.pipeline.conntrack();
    if nat {
        assert_eq!(ct.len(), 2 * TEMPLATES);
        for entry in ct.iter() {
            assert!(entry.replied);
            if let ProtoState::Tcp(t) = entry.proto {
                assert_eq!(t.state, TcpState::Established);
            }
        }
    } else {
        assert!(ct.is_empty(), "nothing tracked without NAT rules");
    }
    // The table's lock goes before the checks take it again.
    drop(ct);
    setup.check_clean();
    e
}

/// Runs `BATCH` packets per iteration from `port`, cycling through `templates`, each through
/// `Pipeline::receive`. `on_wrap` runs, untimed, before each pass over the templates.
/// Returns (packets, sent).
fn bench_batches(
    c: &mut Criterion,
    group: &str,
    id: BenchmarkId,
    setup: &mut Setup,
    port: PortId,
    templates: &[Frame],
    mut on_wrap: impl FnMut(&mut Pipeline),
) -> (usize, usize) {
    assert_eq!(templates.len() % BATCH, 0);
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(BATCH as u64));
    let (mut packets, mut sent) = (0usize, 0usize);
    {
        let Setup { state, pipeline } = setup;
        let mut buf = templates[0];
        let mut next = 0;
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    if next == 0 {
                        on_wrap(pipeline);
                    }
                    let start = Instant::now();
                    let mut n = 0;
                    for t in &templates[next..next + BATCH] {
                        // The router rewrites the packet in place: start from a fresh copy.
                        buf = *t;
                        let f = black_box(&mut buf.0);
                        n += receive(pipeline, state, port, f);
                    }
                    elapsed += start.elapsed();
                    next = (next + BATCH) % templates.len();
                    packets += BATCH;
                    sent += n;
                }
                elapsed
            })
        });
    }
    group.finish();
    assert_eq!(sent, packets, "every packet was sent");
    setup.check_clean();
    (packets, sent)
}

/// The first UDP datagrams of connections to the Services: 16k templates, template `i` from a
/// container to Service `picks[i % spread]`, `picks` a shuffle of the `services` Services.
fn new_flows(services: usize, spread: usize) -> (Vec<Frame>, Vec<usize>) {
    let srcs = shuffled(CONTAINERS, 0x2545_f491_4f6c_dd1d);
    let picks = shuffled(services, 0x9e37_79b9_7f4a_7c15);
    let spread = spread.min(services);
    let svc: Vec<usize> = (0..TEMPLATES).map(|i| picks[i % spread]).collect();
    let frames = (0..TEMPLATES)
        .map(|i| {
            let c = container(srcs[i % CONTAINERS]);
            let local = SocketAddrV4::new(c.ip, 10_000 + i as u16);
            let dst = SocketAddrV4::new(vip(svc[i]), 53);
            template(frame(R10, c.mac, &udp_packet(local, dst)))
        })
        .collect();
    (frames, svc)
}

/// Removes the connections made by `nat/new` (those balanced to a Service).
fn forget_service_flows(pipeline: &mut Pipeline) {
    pipeline.conntrack().remove_where(|e| e.backend.is_some());
}

/// `nat/new/*`: first datagrams to `spread` of the `services` Services. One pass first,
/// checked: every datagram goes to one of its Service's backends, masqueraded behind the
/// VLAN 10 address (hairpin); then the connections are forgotten and the bench runs, every
/// measured packet a new connection.
fn new_connections(
    c: &mut Criterion,
    group: &str,
    id: BenchmarkId,
    setup: &mut Setup,
    services: usize,
    spread: usize,
) {
    let tracked = setup.pipeline.conntrack().len();
    let (templates, svc) = new_flows(services, spread);
    for (t, &r) in templates.iter().zip(&svc) {
        let (ip, mac) = setup.route_one(CLIENT_PORT, &t.0, POD_PORT, R10);
        let dst = sock(&ip, false);
        let backends = service(r).backends;
        let b = backends
            .iter()
            .position(|b| b.addr == dst)
            .expect("to a backend");
        assert_eq!(mac, pod((2 * r + b) % PODS).mac);
        assert_eq!(*sock(&ip, true).ip(), GW10, "hairpin masquerade");
    }
    assert_eq!(setup.pipeline.conntrack().len(), tracked + TEMPLATES);
    forget_service_flows(&mut setup.pipeline);
    assert_eq!(setup.pipeline.conntrack().len(), tracked);
    let before = setup.pipeline.counters().nat.connections.get();
    let (packets, _) = bench_batches(
        c,
        group,
        id,
        setup,
        CLIENT_PORT,
        &templates,
        forget_service_flows,
    );
    let made = setup.pipeline.counters().nat.connections.get() - before;
    assert_eq!(
        made, packets as u64,
        "every measured packet made a connection"
    );
    assert!(setup.pipeline.conntrack().len() <= tracked + TEMPLATES);
    forget_service_flows(&mut setup.pipeline);
}

fn per_size(c: &mut Criterion) {
    for (label, n) in SERVICE_SIZES {
        let mut setup = Setup::new(Some(n));
        let est = establish(&mut setup, true);
        let tracked = setup.pipeline.conntrack().len();
        let connections = setup.pipeline.counters().nat.connections.get();

        // (a) Conntrack hits.
        let cases = [
            ("nat/hit/udp_out", CLIENT_PORT, &est.udp_out),
            ("nat/hit/udp_in", UP_PORT, &est.udp_in),
            ("nat/hit/tcp_out", CLIENT_PORT, &est.tcp_out),
            ("nat/hit/tcp_in", UP_PORT, &est.tcp_in),
        ];
        for (group, port, templates) in cases {
            let id = BenchmarkId::from_parameter(label);
            bench_batches(c, group, id, &mut setup, port, templates, |_| {});
            assert_eq!(setup.pipeline.conntrack().len(), tracked);
            let counters = setup.pipeline.counters();
            assert_eq!(counters.nat.connections.get(), connections, "hits only");
        }

        // (b) New connections to Services: spread over every Service (up to 16k distinct ones),
        // then all to the same 10 of them (the working set of Services stays the same at
        // every N, so what is left of a difference is the size of the tables themselves).
        let label_id = BenchmarkId::from_parameter(label);
        new_connections(c, "nat/new/udp_service", label_id.clone(), &mut setup, n, n);
        new_connections(c, "nat/new/udp_service_hot10", label_id, &mut setup, n, 10);
        assert_eq!(setup.pipeline.conntrack().len(), tracked);

        // (c) The frontend lookup alone.
        let rules = &setup.state.nat;
        let vips: Vec<Ipv4Addr> = shuffled(n, 0x2545_f491_4f6c_dd1d)
            .into_iter()
            .map(vip)
            .collect();
        for &v in &vips {
            match rules.frontend(PROTO_UDP, v, 53, false) {
                Some(Target::Service(s)) => assert_eq!(s.vip, v),
                other => panic!("no Service for {v}: {other:?}"),
            }
        }
        let mut group = c.benchmark_group("nat/frontend_lookup");
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            let mut i = 0;
            b.iter(|| {
                let t = rules.frontend(PROTO_UDP, black_box(vips[i]), 53, false);
                i += 1;
                if i == vips.len() {
                    i = 0;
                }
                t.is_some()
            })
        });
        group.finish();
    }
}

fn baseline(c: &mut Criterion) {
    let mut setup = Setup::new(None);
    let est = establish(&mut setup, false);
    let id = BenchmarkId::from_parameter("no_nat");
    bench_batches(
        c,
        "nat/baseline",
        id,
        &mut setup,
        CLIENT_PORT,
        &est.udp_out,
        |_| {},
    );
    assert!(setup.pipeline.conntrack().is_empty());
}

fn service_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("nat/service_change");
    for (label, n) in CHANGE_SIZES {
        let published = nat_rules(Some(n));
        let mut k = 0;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                // The control thread's copy of what the workers run with.
                let mut next = published.clone();
                // One new Service (256 different ones in turn, so different shards).
                let svc = Arc::new(service(n + k));
                next.frontends.insert(svc.frontend(), Target::Service(svc));
                k = (k + 1) % 256;
                // The new snapshot's copy; both are dropped (timed) when this returns.
                let snapshot = next.clone();
                (next, snapshot)
            })
        });
        assert_eq!(
            published.frontends.len(),
            n,
            "the published rules are untouched"
        );
    }
    group.finish();

    let mut group = c.benchmark_group("nat/service_build");
    let mut k = 0;
    group.bench_function("2_backends", |b| {
        b.iter(|| {
            k = (k + 1) % 256;
            Arc::new(service(black_box(k)))
        })
    });
    group.finish();
}

/// A masqueraded UDP connection `i` (distinct tuples for `i` below 64M).
fn ct_entry(i: usize) -> CtEntry {
    let orig = FlowKey {
        src: container(i % CONTAINERS).ip,
        dst: outside(i / 64_512),
        sport: 1024 + (i / CONTAINERS) as u16,
        dport: 53,
        proto: PROTO_UDP,
    };
    let reply = FlowKey {
        src: orig.dst,
        dst: GW100,
        sport: 53,
        dport: 1024 + (i % 64_512) as u16,
        proto: PROTO_UDP,
    };
    CtEntry::new(orig, reply, ProtoState::Udp, NOW)
}

fn conntrack(c: &mut Criterion) {
    // Memory of a full table.
    let mut ct = Conntrack::new(CT_FILL);
    for i in 0..CT_FILL {
        ct.insert(ct_entry(i), NOW).expect("a free tuple");
    }
    assert_eq!(ct.len(), CT_FILL);
    let bytes = ct.memory_bytes();
    eprintln!(
        "conntrack memory: {} entries, memory_bytes() = {} ({:.1} MiB), {:.1} bytes per entry \
         (size_of::<Option<Entry>>() = {}, index: 2 tuples per entry)",
        ct.len(),
        bytes,
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / ct.len() as f64,
        std::mem::size_of::<Option<CtEntry>>(),
    );

    // Inserts into that table, emptied (untimed) each time it is full.
    ct.remove_where(|_| true);
    assert!(ct.is_empty());
    let mut group = c.benchmark_group("conntrack/insert");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut next = 0;
    group.bench_function("1M", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                if next + BATCH > CT_FILL {
                    ct.remove_where(|_| true);
                    next = 0;
                }
                let start = Instant::now();
                for i in next..next + BATCH {
                    let slot = ct.insert(ct_entry(i), NOW).expect("a free tuple");
                    black_box(slot);
                }
                elapsed += start.elapsed();
                next += BATCH;
            }
            elapsed
        })
    });
    group.finish();
    assert_eq!(ct.stats.insert_failed + ct.stats.clashes, 0);
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
    targets = per_size, baseline, service_change, conntrack
}
criterion_main!(benches);
