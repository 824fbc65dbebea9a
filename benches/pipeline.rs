//! Per-frame cost of the sans-IO packet path, and of the learned MAC table at scale.
//!
//! `pipeline/*` measures what a worker does for one received frame, minus the syscalls:
//! `Pipeline::receive` (the pipeline's decision, then for every egress port its view of the
//! frame, the MTU check and the tx counters) into an output that counts each transmit.
//! Frames are 64 bytes (Ethernet header + 50 bytes of payload, no FCS), untagged, on four
//! access ports of VLAN 1.
//!
//! Before measuring, `n` hosts (1k or 100k) are learned by sending one broadcast from each:
//! host `i` sits on port `i % 4`. The measured frames then come in on their source's own port,
//! so every frame also refreshes a learned source (`LearnOutcome::Refreshed`), and sources and
//! destinations are drawn in shuffled order from the whole learned set. Each frame is one
//! cache line of a precomputed array that the bench cycles through, so at 100k hosts the table
//! lookups are spread over the whole table rather than a few hot entries. `mac_table_max` is
//! `max(65_536, n)`: the default bound, or exactly the learned set when that is bigger.
//!
//! The clock is fake and fixed (`NOW`), far from the 300 s aging time, so nothing expires.
//!
//! `mac_table/lookup/*` measures `MacTable::lookup` hits alone, with 1k, 100k and 1M entries,
//! looking keys up in shuffled order.
//!
//! Run with `cargo bench --bench pipeline`; add a filter such as `-- known_unicast` for one
//! group.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tapswitch_control::switch::tap::compile_filter;
use tapswitch_dataplane::pipeline::observe::{Link, Tap, TapKind, TapSpec};
use tapswitch_dataplane::pipeline::Targets;
use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Pipeline, PortMode, PortState, RxMeta, WorkerCounters,
};
use tapswitch_dataplane::tables::{FdbKey, MacTable, PortId, Timestamp};
use tapswitch_dataplane::wire::builder::ethernet_frame;
use tapswitch_dataplane::wire::{EtherType, EthernetAddress, VlanId};

use common::{shuffled, Discard};

const FRAME_LEN: usize = 64;
const PAYLOAD_LEN: usize = FRAME_LEN - 14;
const PORTS: u16 = 4;
const VLAN: VlanId = VlanId::DEFAULT;
/// The fake clock: every frame, learned or measured, is seen at this instant.
const NOW: Timestamp = Timestamp::from_secs(1);
const AGING_MS: u64 = 300_000;

/// Learned-table sizes of the pipeline benches.
const PIPELINE_SIZES: [(&str, usize); 2] = [("1k", 1_000), ("100k", 100_000)];
/// Table sizes of the `MacTable::lookup` bench.
const TABLE_SIZES: [(&str, usize); 3] = [("1k", 1_000), ("100k", 100_000), ("1M", 1_000_000)];

/// One frame in its own cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Frame([u8; FRAME_LEN]);

/// The MAC of learned host `i`: locally administered unicast.
fn host_mac(i: usize) -> EthernetAddress {
    EthernetAddress::from_u64(0x02_00_00_00_00_00 | i as u64)
}

/// A unicast MAC that is never learned.
fn stranger_mac(i: usize) -> EthernetAddress {
    EthernetAddress::from_u64(0x06_00_00_00_00_00 | i as u64)
}

/// The port host `i` is learned on.
fn host_port(i: usize) -> PortId {
    PortId((i % PORTS as usize) as u16)
}

fn frame(dst: EthernetAddress, src: EthernetAddress) -> Frame {
    let bytes = ethernet_frame(dst, src, None, EtherType::Ipv4, &[0x45; PAYLOAD_LEN]);
    Frame(bytes.try_into().expect("a 64-byte frame"))
}

/// A pipeline with four access ports in one VLAN and `hosts` MACs learned on them.
struct Setup {
    state: ForwardingState,
    pipeline: Pipeline,
}

impl Setup {
    fn new(hosts: usize) -> Setup {
        let ports = (0..PORTS)
            .map(|p| {
                Some(PortState {
                    name: format!("p{p}"),
                    mode: PortMode::Access(VLAN),
                    mtu: 1500,
                    max_macs: u32::MAX,
                })
            })
            .collect();
        let mut state = ForwardingState::with_ports(ports);
        state.mac_table_max = hosts.max(65_536);
        state.mac_aging_ms = AGING_MS;
        let mut pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
        for i in 0..hosts {
            let mut f = frame(EthernetAddress::BROADCAST, host_mac(i));
            let d = pipeline.decide(&state, host_port(i), &mut f.0, NOW);
            assert!(matches!(d, Decision::Forward(_)), "pre-learn: {d:?}");
        }
        assert_eq!(pipeline.mac_table().len(), hosts);
        assert_eq!(pipeline.counters().learn.learned.get(), hosts as u64);
        Setup { state, pipeline }
    }
}

/// What the worker does with one received frame, minus the I/O: [`Pipeline::receive`] with
/// an output that counts each transmit. Returns the number of transmits. (The frame is mutable
/// because the router rewrites routed frames in place; no router is configured here, so it
/// never changes.)
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

/// The frames a pipeline bench cycles through, each with its ingress port.
struct Workload {
    ingress: Vec<PortId>,
    frames: Vec<Frame>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// To a learned host on another port.
    KnownUnicast,
    /// To the broadcast address.
    Flood,
    /// To a MAC that was never learned.
    UnknownUnicast,
}

impl Workload {
    /// `hosts` frames, from every learned host once in shuffled order, each on its own port.
    fn new(kind: Kind, hosts: usize) -> Workload {
        let srcs = shuffled(hosts, 0x9e37_79b9_7f4a_7c15);
        let dsts = shuffled(hosts, 0xd1b5_4a32_d192_ed03);
        let mut w = Workload {
            ingress: Vec::with_capacity(hosts),
            frames: Vec::with_capacity(hosts),
        };
        for (&s, &d) in srcs.iter().zip(&dsts) {
            let dst = match kind {
                // A host on another port: the next host along is on the next port.
                Kind::KnownUnicast if host_port(d) == host_port(s) => host_mac((d + 1) % hosts),
                Kind::KnownUnicast => host_mac(d),
                Kind::Flood => EthernetAddress::BROADCAST,
                Kind::UnknownUnicast => stranger_mac(d),
            };
            w.ingress.push(host_port(s));
            w.frames.push(frame(dst, host_mac(s)));
        }
        w
    }

    /// Sends every frame once and checks that each goes where the bench says it goes and that
    /// nothing is learned anew, moved or dropped.
    fn check(&mut self, kind: Kind, setup: &mut Setup) {
        let learn = &setup.pipeline.counters().learn;
        let (learned, moved) = (learn.learned.get(), learn.moved.get());
        for (&ingress, f) in self.ingress.iter().zip(self.frames.iter_mut()) {
            let d = setup.pipeline.decide(&setup.state, ingress, &mut f.0, NOW);
            let Decision::Forward(e) = d else {
                panic!("dropped: {d:?}")
            };
            match (kind, e.targets) {
                (Kind::KnownUnicast, Targets::One(m)) => {
                    let dst = EthernetAddress::from_bytes(&f.0[..6]);
                    let host = (dst.to_u64() & 0xff_ffff) as usize;
                    assert_eq!(m.port, host_port(host));
                    assert_ne!(m.port, ingress);
                }
                (Kind::Flood | Kind::UnknownUnicast, Targets::Flood { .. }) => {
                    assert_eq!(e.ports().count(), PORTS as usize - 1);
                }
                (_, t) => panic!("unexpected targets {t:?}"),
            }
        }
        let learn = &setup.pipeline.counters().learn;
        assert_eq!(learn.learned.get(), learned, "sources are only refreshed");
        assert_eq!(learn.moved.get(), moved, "sources are only refreshed");
    }
}

fn no_drops(setup: &Setup) {
    for p in 0..PORTS {
        let c = setup.pipeline.counters().port(PortId(p));
        assert_eq!(c.drops.iter().map(|d| d.get()).sum::<u64>(), 0);
    }
}

/// Measures `forward` of the workload's frames, one per iteration, cycling through them.
fn bench_frames(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    setup: &mut Setup,
    work: &mut Workload,
) {
    let Setup { state, pipeline } = setup;
    group.bench_function(BenchmarkId::from_parameter(label), |b| {
        let mut i = 0;
        b.iter(|| {
            let n = forward(
                pipeline,
                state,
                work.ingress[i],
                black_box(&mut work.frames[i].0[..]),
            );
            i += 1;
            if i == work.frames.len() {
                i = 0;
            }
            n
        })
    });
}

fn pipeline_group(c: &mut Criterion, name: &str, kind: Kind, sizes: &[(&str, usize)]) {
    let mut group = c.benchmark_group(format!("pipeline/{name}"));
    group.throughput(Throughput::Elements(1));
    for &(label, hosts) in sizes {
        let mut setup = Setup::new(hosts);
        let mut work = Workload::new(kind, hosts);
        work.check(kind, &mut setup);
        bench_frames(&mut group, label, &mut setup, &mut work);
        let learn = &setup.pipeline.counters().learn;
        assert_eq!(learn.learned.get(), hosts as u64, "nothing new was learned");
        assert_eq!(learn.moved.get() + learn.table_full.get(), 0);
        assert_eq!(setup.pipeline.mac_table().len(), hosts);
        no_drops(&setup);
    }
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    pipeline_group(c, "known_unicast", Kind::KnownUnicast, &PIPELINE_SIZES);
    pipeline_group(c, "flood", Kind::Flood, &PIPELINE_SIZES);
    pipeline_group(
        c,
        "unknown_unicast",
        Kind::UnknownUnicast,
        &PIPELINE_SIZES[1..],
    );
}

fn mac_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("mac_table/lookup");
    group.throughput(Throughput::Elements(1));
    for (label, n) in TABLE_SIZES {
        let mut table = MacTable::new(n);
        for i in 0..n {
            table.learn(FdbKey::new(VLAN, host_mac(i)), host_port(i), NOW, u32::MAX);
        }
        assert_eq!(table.len(), n);
        let keys: Vec<FdbKey> = shuffled(n, 0x2545_f491_4f6c_dd1d)
            .into_iter()
            .map(|i| FdbKey::new(VLAN, host_mac(i)))
            .collect();
        assert!(keys
            .iter()
            .all(|k| table.lookup(*k, NOW, AGING_MS).is_some()));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            let mut i = 0;
            b.iter(|| {
                let port = table.lookup(black_box(keys[i]), NOW, AGING_MS);
                i += 1;
                if i == keys.len() {
                    i = 0;
                }
                port
            })
        });
    }
    group.finish();
}

/// Known unicast at 1k hosts with taps in force: a capture of every port (both directions,
/// no filter: every frame copied twice and queued), a capture whose filter refuses
/// everything (`tcp port 9`: the filter runs on each frame and its transmit), and a live
/// trace of every frame. A thread drains the records, as the control thread does. Compare
/// with `pipeline/known_unicast/1k` (no tap) for the cost of each.
fn tapped(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline/tapped");
    group.throughput(Throughput::Elements(1));
    let never = compile_filter("tcp port 9", Link::Ethernet).expect("a filter");
    for (label, kind, filter) in [
        ("capture_all", TapKind::Capture, None),
        ("capture_filtered_out", TapKind::Capture, Some(never)),
        ("trace_all", TapKind::Trace, None),
    ] {
        let hosts = 1_000;
        let mut setup = Setup::new(hosts);
        let mut work = Workload::new(Kind::KnownUnicast, hosts);
        work.check(Kind::KnownUnicast, &mut setup);
        let (tap, records) = Tap::new(
            kind,
            TapSpec {
                rx: true,
                tx: true,
                snaplen: 262_144,
                filter,
                queue: 1 << 16,
                ..TapSpec::default()
            },
        );
        let drain = std::thread::spawn(move || records.iter().count());
        setup
            .pipeline
            .set_taps(Arc::from(vec![Arc::clone(&tap)]), 0);
        bench_frames(&mut group, label, &mut setup, &mut work);
        setup.pipeline.set_taps(Arc::from(Vec::new()), 0);
        drop(tap);
        let recorded = drain.join().expect("drain");
        eprintln!("pipeline/tapped/{label}: {recorded} records");
        no_drops(&setup);
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
    targets = pipeline, tapped, mac_table
}
criterion_main!(benches);
