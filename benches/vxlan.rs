//! Per-frame cost of the VXLAN stage, sans IO: what the worker does for one packet that comes
//! in from, or goes out to, a VXLAN port, minus the syscalls.
//!
//! The switch has two ports in VLAN 10: an access port (`PortId(0)`, MTU 1500) with the local
//! hosts, and a VXLAN port (`PortId(1)`, VNI 42, local VTEP 192.168.200.1:4789, MTU 1450)
//! whose flood list has four remote VTEPs (192.168.200.2 to .5), learning on, no `allow` list.
//!
//! Before measuring, 1k local hosts are learned on the access port (one broadcast from each)
//! and 1k remote hosts are learned behind the VXLAN port, as the worker learns them: one
//! VXLAN packet from each (remote host `i` behind VTEP `i % 4`) goes through `Pipeline::decap`
//! (which learns inner source MAC -> outer source IP in the remote table) and then
//! `Pipeline::process` on the VXLAN port (which learns the MAC on that port). So the MAC table
//! holds 2k entries and the remote table 1k.
//!
//! Inner frames are 64 bytes (no FCS): Ethernet, IPv4 (20 bytes, checksummed) and UDP
//! (8 bytes) with 22 bytes of payload; every local/remote host pair is its own flow (own
//! addresses and ports), so `inner_flow_hash` walks a whole IPv4/UDP header. Sources and
//! destinations are drawn in shuffled order from the whole learned set; each frame is a
//! precomputed cache-line-aligned buffer that the bench cycles through, and every measured
//! frame only refreshes what was learned (checked before and after).
//!
//! - `vxlan/decap/1k`: a VXLAN payload (8-byte header + the 64-byte inner frame, 72 bytes)
//!   from a remote host's VTEP to a local host, through `Pipeline::receive_vxlan` and
//!   `Pipeline::flush` as the worker calls them: `Pipeline::decap` (VNI lookup, checks, remote
//!   refresh), the receive coalescer (a UDP frame goes on alone), `Pipeline::process` on the
//!   VXLAN port (one learned-source refresh, one destination lookup) and the egress stage
//!   for the one egress port: its view of the frame, the MTU check, the tx counters, one
//!   transmit to the bench's output (no `writev`).
//! - `vxlan/encap/known_unicast/1k`: a frame from a local host to a remote host, on the access
//!   port, through `Pipeline::receive`: `Pipeline::process` (to the VXLAN port), then the egress
//!   stage's encapsulation: `inner_flow_hash`, `Pipeline::remotes_for` (a learned remote: one
//!   VTEP), `outer_headers` with `Pipeline::next_ip_ident`, the port and tunnel tx counters, one
//!   transmit (no `sendmsg`).
//! - `vxlan/encap/flood_4/1k`: the same from a local host to the broadcast address:
//!   `remotes_for` returns the flood list, so four outer headers are built and counted
//!   (head-end replication) for one inner frame.
//!
//! The clock is fake and fixed (`NOW`), far from the 300 s aging time, so nothing expires.
//! Throughput is one inner frame per iteration.
//!
//! Run with `cargo bench --bench vxlan`; add a filter such as `-- encap` for one group.

mod common;

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tapswitch_dataplane::pipeline::tunnel::Remotes;
use tapswitch_dataplane::pipeline::Targets;
use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Pipeline, PortMode, PortState, RxMeta, Tunnel, TunnelEndpoint,
    VxlanPort, WorkerCounters,
};
use tapswitch_dataplane::tables::{PortId, Timestamp};
use tapswitch_dataplane::wire::builder::ethernet_frame;
use tapswitch_dataplane::wire::vxlan;
use tapswitch_dataplane::wire::{
    EtherType, EthernetAddress, IpProtocol, Ipv4Packet, VlanId, Vni, VxlanHeader, VxlanRepr,
};

use common::{shuffled, Discard};

/// The inner frame: 14 Ethernet + 20 IPv4 + 8 UDP + 22 payload.
const FRAME_LEN: usize = 64;
const IP_LEN: usize = FRAME_LEN - 14;
/// A VXLAN payload as the tunnel socket receives it: header + inner frame.
const PAYLOAD_LEN: usize = vxlan::HEADER_LEN + FRAME_LEN;
const VNI: u32 = 42;
const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
const REMOTE_VTEPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(192, 168, 200, 2),
    Ipv4Addr::new(192, 168, 200, 3),
    Ipv4Addr::new(192, 168, 200, 4),
    Ipv4Addr::new(192, 168, 200, 5),
];
const ENDPOINT: TunnelEndpoint = TunnelEndpoint {
    local: LOCAL_VTEP,
    port: vxlan::IANA_PORT,
};
const ACCESS: PortId = PortId(0);
const VXLAN: PortId = PortId(1);
/// Learned hosts on each side (local hosts on the access port, remote hosts behind the VTEPs).
const HOSTS: usize = 1_000;
const LABEL: &str = "1k";
/// The fake clock: every frame, learned or measured, is seen at this instant.
const NOW: Timestamp = Timestamp::from_secs(1);
const AGING_MS: u64 = 300_000;

fn vlan() -> VlanId {
    VlanId::new(10).expect("VLAN 10")
}

/// One inner frame in its own cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Frame([u8; FRAME_LEN]);

/// One VXLAN payload (header + inner frame), cache-line aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Payload([u8; PAYLOAD_LEN]);

/// A host: its MAC and IPv4 address. Local hosts are 10.42.0.0/16 with 02:.. MACs, remote
/// hosts 10.43.0.0/16 with 06:.. MACs (both locally administered unicast).
#[derive(Clone, Copy)]
struct Host {
    mac: EthernetAddress,
    ip: Ipv4Addr,
}

fn local_host(i: usize) -> Host {
    Host {
        mac: EthernetAddress::from_u64(0x02_00_00_00_00_00 | i as u64),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 42, 0, 0)) + 1 + i as u32),
    }
}

fn remote_host(i: usize) -> Host {
    Host {
        mac: EthernetAddress::from_u64(0x06_00_00_00_00_00 | i as u64),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 0, 0)) + 1 + i as u32),
    }
}

/// The VTEP remote host `i` sits behind.
fn remote_vtep(i: usize) -> Ipv4Addr {
    REMOTE_VTEPS[i % REMOTE_VTEPS.len()]
}

/// A 64-byte IPv4/UDP frame from `src` to `dst_mac` (`dst_ip` in the IP header), with UDP
/// ports that make the flow its own.
fn frame(dst_mac: EthernetAddress, dst_ip: Ipv4Addr, src: Host, sport: u16, dport: u16) -> Frame {
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
        p.set_src_addr(src.ip);
        p.set_dst_addr(dst_ip);
        p.fill_checksum();
    }
    ip[20..22].copy_from_slice(&sport.to_be_bytes());
    ip[22..24].copy_from_slice(&dport.to_be_bytes());
    ip[24..26].copy_from_slice(&((IP_LEN - 20) as u16).to_be_bytes());
    // ip[26..28]: UDP checksum 0 (none).
    ip[28..].fill(0x5a);
    let bytes = ethernet_frame(dst_mac, src.mac, None, EtherType::Ipv4, &ip);
    Frame(bytes.try_into().expect("a 64-byte frame"))
}

/// `inner` behind a VXLAN header for VNI 42.
fn vxlan_payload(inner: &Frame) -> Payload {
    let mut p = [0u8; PAYLOAD_LEN];
    let mut header = VxlanHeader::new_unchecked(&mut p[..]);
    VxlanRepr {
        vni: Vni::new(VNI).expect("a 24-bit VNI"),
    }
    .emit(&mut header);
    header.payload_mut().copy_from_slice(&inner.0);
    Payload(p)
}

/// A pipeline with an access port and a VXLAN port in VLAN 10, `HOSTS` local hosts learned on
/// the access port and `HOSTS` remote hosts learned behind the VXLAN port.
struct Setup {
    state: ForwardingState,
    pipeline: Pipeline,
}

impl Setup {
    fn new() -> Setup {
        let port = |name: &str, mtu| {
            Some(PortState {
                name: name.to_string(),
                mode: PortMode::Access(vlan()),
                mtu,
                max_macs: u32::MAX,
            })
        };
        let mut state = ForwardingState::with_ports(vec![port("c1", 1500), port("vxlan42", 1450)]);
        state.mac_aging_ms = AGING_MS;
        state.vxlan = vec![
            None,
            Some(VxlanPort {
                vni: VNI,
                endpoint: ENDPOINT,
                remotes: REMOTE_VTEPS.to_vec(),
                learning: true,
                allow: Vec::new(),
                ttl: 64,
            }),
        ];
        state.vni_ports.insert((ENDPOINT, VNI), VXLAN);
        let mut pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));

        for i in 0..HOSTS {
            let h = local_host(i);
            let mut f = frame(EthernetAddress::BROADCAST, Ipv4Addr::BROADCAST, h, 68, 67);
            let d = pipeline.decide(&state, ACCESS, &mut f.0, NOW);
            assert!(matches!(d, Decision::Forward(_)), "pre-learn local: {d:?}");
        }
        for i in 0..HOSTS {
            let h = remote_host(i);
            let f = frame(EthernetAddress::BROADCAST, Ipv4Addr::BROADCAST, h, 68, 67);
            let mut p = vxlan_payload(&f);
            let (port, inner) = pipeline
                .decap(&state, ENDPOINT, remote_vtep(i), &mut p.0, NOW)
                .expect("pre-learn remote: decap");
            assert_eq!(port, VXLAN);
            let d = pipeline.decide(&state, port, inner, NOW);
            assert!(matches!(d, Decision::Forward(_)), "pre-learn remote: {d:?}");
        }
        assert_eq!(pipeline.mac_table().len(), 2 * HOSTS);
        assert_eq!(pipeline.remote_table().len(), HOSTS);
        let learn = &pipeline.counters().learn;
        assert_eq!(learn.learned.get(), 2 * HOSTS as u64);
        assert_eq!(learn.remote_learned.get(), HOSTS as u64);
        Setup { state, pipeline }
    }

    /// Nothing new learned, moved or dropped since the setup.
    fn check_steady(&self) {
        let learn = &self.pipeline.counters().learn;
        assert_eq!(
            learn.learned.get(),
            2 * HOSTS as u64,
            "sources are only refreshed"
        );
        assert_eq!(
            learn.remote_learned.get(),
            HOSTS as u64,
            "remotes are only refreshed"
        );
        assert_eq!(
            learn.moved.get()
                + learn.table_full.get()
                + learn.remote_moved.get()
                + learn.remote_table_full.get(),
            0
        );
        assert_eq!(self.pipeline.mac_table().len(), 2 * HOSTS);
        assert_eq!(self.pipeline.remote_table().len(), HOSTS);
        let c = self.pipeline.counters();
        for counters in [c.port(ACCESS), c.port(VXLAN), &c.tunnel] {
            assert_eq!(counters.drops.iter().map(|d| d.get()).sum::<u64>(), 0);
            assert_eq!(counters.tx_oversized.get(), 0);
        }
    }
}

/// What the worker does with one frame received on `ingress`, minus the I/O:
/// [`Pipeline::receive`] (decision; for each egress port its view of the frame and the MTU
/// check; for the VXLAN port the remote choice, outer headers and tunnel counters) into an
/// output that counts each transmit. Returns the number of transmits. (The frame is mutable
/// because the router rewrites routed frames in place; no router is configured here.)
#[inline(always)]
fn forward(
    pipeline: &mut Pipeline,
    state: &ForwardingState,
    ingress: PortId,
    frame: &mut [u8],
) -> usize {
    let mut out = Discard::default();
    pipeline.receive(state, ingress, frame, &RxMeta::default(), NOW, &mut out);
    out.sent
}

/// What the worker does with one packet read from the tunnel socket, minus the read:
/// [`Pipeline::receive_vxlan`] (decapsulation, the receive coalescer, the inner frame's
/// switching), then [`Pipeline::flush`] as at the end of a batch.
#[inline(always)]
fn receive(
    pipeline: &mut Pipeline,
    state: &ForwardingState,
    src: Ipv4Addr,
    payload: &mut [u8],
) -> usize {
    let mut out = Discard::default();
    let src = SocketAddrV4::new(src, vxlan::SOURCE_PORT_MIN);
    pipeline.receive_vxlan(state, ENDPOINT, src, payload, None, false, NOW, &mut out);
    pipeline.flush(state, NOW, &mut out);
    out.sent
}

fn decap(c: &mut Criterion) {
    let mut setup = Setup::new();
    // Remote host s -> local host d, in shuffled order.
    let srcs = shuffled(HOSTS, 0x9e37_79b9_7f4a_7c15);
    let dsts = shuffled(HOSTS, 0xd1b5_4a32_d192_ed03);
    let mut from = Vec::with_capacity(HOSTS);
    let mut payloads = Vec::with_capacity(HOSTS);
    for (&s, &d) in srcs.iter().zip(&dsts) {
        let (src, dst) = (remote_host(s), local_host(d));
        let f = frame(dst.mac, dst.ip, src, 40_000 + s as u16, 5_000 + d as u16);
        from.push(remote_vtep(s));
        payloads.push(vxlan_payload(&f));
    }
    // Each packet decapsulates, refreshes its remote, and goes to the access port alone.
    for (&src, p) in from.iter().zip(payloads.iter_mut()) {
        let Setup { state, pipeline } = &mut setup;
        let (port, inner) = pipeline
            .decap(state, ENDPOINT, src, &mut p.0, NOW)
            .expect("decap");
        assert_eq!((port, inner.len()), (VXLAN, FRAME_LEN));
        match pipeline.decide(state, port, inner, NOW) {
            Decision::Forward(e) => match e.targets {
                Targets::One(m) => assert_eq!(m.port, ACCESS),
                t => panic!("unexpected targets {t:?}"),
            },
            d => panic!("unexpected decision {d:?}"),
        }
    }
    setup.check_steady();

    let mut group = c.benchmark_group("vxlan/decap");
    group.throughput(Throughput::Elements(1));
    let Setup { state, pipeline } = &mut setup;
    group.bench_function(BenchmarkId::from_parameter(LABEL), |b| {
        let mut i = 0;
        b.iter(|| {
            let n = receive(pipeline, state, from[i], black_box(&mut payloads[i].0[..]));
            i += 1;
            if i == payloads.len() {
                i = 0;
            }
            n
        })
    });
    group.finish();
    setup.check_steady();
    let c = setup.pipeline.counters();
    assert_eq!(
        c.tunnel.rx_packets.get(),
        c.port(ACCESS).tx_packets.get() + HOSTS as u64 * 2
    );
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// To a learned remote host: one VTEP.
    KnownUnicast,
    /// To the broadcast address: every VTEP of the flood list.
    Flood,
}

fn encap_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("vxlan/encap");
    group.throughput(Throughput::Elements(1));
    for (name, kind) in [
        ("known_unicast", Kind::KnownUnicast),
        ("flood_4", Kind::Flood),
    ] {
        let mut setup = Setup::new();
        // Local host s -> remote host d (or broadcast), in shuffled order.
        let srcs = shuffled(HOSTS, 0x2545_f491_4f6c_dd1d);
        let dsts = shuffled(HOSTS, 0x9e37_79b9_7f4a_7c15);
        let mut frames: Vec<Frame> = srcs
            .iter()
            .zip(&dsts)
            .map(|(&s, &d)| {
                let (src, dst) = (local_host(s), remote_host(d));
                let dst_mac = match kind {
                    Kind::KnownUnicast => dst.mac,
                    Kind::Flood => EthernetAddress::BROADCAST,
                };
                frame(dst_mac, dst.ip, src, 40_000 + s as u16, 5_000 + d as u16)
            })
            .collect();
        // Every frame goes to the VXLAN port alone, then to the right VTEPs.
        {
            let Setup { state, pipeline } = &mut setup;
            let vx = state.vxlan_port(VXLAN).expect("the VXLAN port");
            for (f, &d) in frames.iter_mut().zip(&dsts) {
                let Decision::Forward(e) = pipeline.decide(state, ACCESS, &mut f.0, NOW) else {
                    panic!("dropped")
                };
                let ports: Vec<PortId> = e.ports().map(|m| m.port).collect();
                assert_eq!(ports, [VXLAN]);
                let dst = EthernetAddress::from_bytes(&f.0[..6]);
                match (
                    kind,
                    Tunnel.remotes_for(pipeline.shared(), state, vx, e.vlan, dst, NOW),
                ) {
                    (Kind::KnownUnicast, Remotes::One(ip)) => assert_eq!(ip, remote_vtep(d)),
                    (Kind::Flood, Remotes::Flood(list)) => assert_eq!(list, REMOTE_VTEPS),
                    (k, r) => panic!("{k:?}: unexpected remotes {r:?}"),
                }
                let want = if kind == Kind::Flood { 4 } else { 1 };
                assert_eq!(forward(pipeline, state, ACCESS, &mut f.0), want);
            }
        }
        setup.check_steady();

        let Setup { state, pipeline } = &mut setup;
        group.bench_function(BenchmarkId::new(name, LABEL), |b| {
            let mut i = 0;
            b.iter(|| {
                let n = forward(pipeline, state, ACCESS, black_box(&mut frames[i].0[..]));
                i += 1;
                if i == frames.len() {
                    i = 0;
                }
                n
            })
        });
        setup.check_steady();
    }
    group.finish();
}

/// `checksum/sum/N`: the internet checksum over N bytes, as the overlay computes it for each
/// inner TCP segment it cuts from a super-frame (1448 bytes) and a whole super-frame would
/// need (65536).
fn checksum_sum(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum/sum");
    for len in [64usize, 1448, 65536] {
        let data: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
        group.throughput(criterion::Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| tapswitch_dataplane::wire::checksum::sum(black_box(&data)))
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
    targets = decap, encap_group, checksum_sum
}
criterion_main!(benches);
