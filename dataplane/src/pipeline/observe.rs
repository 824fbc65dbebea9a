//! Taps: live traces and captures, hooked in at the pipeline's edges.
//!
//! A [`Tap`] asks for copies of frames (a capture) or for the stage-by-stage record of frames
//! (a live trace), of one port or all, one direction or both, that a filter accepts. The
//! pipeline holds the taps in force ([`Pipeline::set_taps`](super::Pipeline::set_taps)); with
//! none (the usual case) each hook costs one check of an empty list. With some:
//!
//! - in: a frame is copied (and its filter run) before any stage sees it, as it came off the
//!   device (checksum finished and a super-frame cut into its wire segments, so a capture
//!   holds what a wire would carry);
//! - out: each [`Transmit`](super::Transmit) is copied on its way to the device or socket;
//! - drops: every stage records (as a trace does), and a frame that ends in a drop is
//!   copied with its stage and reason;
//! - underlay: the outer packets of the tunnels, received and sent;
//! - live trace: the record of a frame the filter accepts.
//!
//! Copies go over a bounded channel to whoever reads the tap (the control thread, for a CLI
//! client). The dataplane never waits: when the channel is full the copy is dropped and
//! counted in [`Tap::lost`]; forwarding goes on.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::datapath::{Pipeline, RxMeta};
use super::egress::{Output, Sent, Transmit};
use super::offload::{complete_checksum, segment, Offload};
use super::trace::{Stage, Trace};
use super::{ForwardingState, TunnelEndpoint};
use crate::tables::{PortId, Timestamp};
use crate::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use crate::wire::vxlan;

/// A compiled filter (tcpdump's filter language, compiled by the control side): whether a
/// packet is wanted.
pub type Filter = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// What a tap wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapKind {
    /// Copies of frames.
    Capture,
    /// The stage-by-stage record of each frame received.
    Trace,
}

/// Which way, seen from the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the port (or tunnel).
    In,
    /// Sent to it.
    Out,
    /// Received and dropped.
    Drop,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Drop => "drop",
        }
    }
}

/// How a record's bytes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// An IPv4 packet (a tunnel's outer packet).
    Ipv4,
}

/// One record a tap produced.
#[derive(Debug, Clone)]
pub struct Record {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The port (a tunnel's outer packet: its VXLAN port, or none for IPIP).
    pub port: Option<PortId>,
    pub direction: Direction,
    pub link: Link,
    /// The bytes, cut at the tap's snap length.
    pub data: Vec<u8>,
    /// The length before the cut.
    pub len: usize,
    /// For a drop: `stage: reason`.
    pub comment: Option<String>,
    /// For a live trace: the record of every stage.
    pub trace: Option<Trace>,
    /// The worker that saw it.
    pub worker: usize,
}

/// What to tap: see the module documentation.
pub struct Tap {
    pub kind: TapKind,
    /// What it was asked for.
    pub spec: TapSpec,
    /// Records still wanted (a live trace's `--count`); `u64::MAX` for no end.
    remaining: AtomicU64,
    records: Sender<Record>,
    /// Records the reader was too slow for.
    lost: AtomicU64,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.spec;
        f.debug_struct("Tap")
            .field("kind", &self.kind)
            .field("port", &s.port)
            .field("rx", &s.rx)
            .field("tx", &s.tx)
            .field("drops", &s.drops)
            .field("underlay", &s.underlay)
            .finish_non_exhaustive()
    }
}

/// What a tap is asked for, besides its channel.
#[derive(Clone, Default)]
pub struct TapSpec {
    pub port: Option<PortId>,
    pub rx: bool,
    pub tx: bool,
    pub drops: bool,
    pub underlay: bool,
    pub snaplen: usize,
    pub filter: Option<Filter>,
    pub filter_ip: Option<Filter>,
    /// Records wanted; `None`: until stopped.
    pub count: Option<u64>,
    /// Records held for the reader at most.
    pub queue: usize,
}

impl Tap {
    /// A tap and the receiving end of its records.
    pub fn new(kind: TapKind, spec: TapSpec) -> (Arc<Tap>, Receiver<Record>) {
        let (tx, rx) = crossbeam_channel::bounded(spec.queue.max(1));
        let tap = Tap {
            kind,
            remaining: AtomicU64::new(spec.count.unwrap_or(u64::MAX)),
            spec: TapSpec {
                snaplen: spec.snaplen.max(1),
                ..spec
            },
            records: tx,
            lost: AtomicU64::new(0),
        };
        (Arc::new(tap), rx)
    }

    /// Records lost because the reader was too slow.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Whether it wants nothing more (its count is reached).
    pub fn is_done(&self) -> bool {
        self.remaining.load(Ordering::Relaxed) == 0
    }

    /// Whether the tap looks at `port`.
    #[inline]
    pub fn on_port(&self, port: Option<PortId>) -> bool {
        self.spec.port.is_none() || self.spec.port == port
    }

    /// Whether `data` (of kind `link`) passes the filter.
    pub fn accepts(&self, link: Link, data: &[u8]) -> bool {
        let f = match link {
            Link::Ethernet => &self.spec.filter,
            Link::Ipv4 => &self.spec.filter_ip,
        };
        f.as_ref().is_none_or(|f| f(data))
    }

    /// Claims one of the records still wanted; false when the count is reached.
    fn claim(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n > 0).then(|| if n == u64::MAX { n } else { n - 1 })
            })
            .is_ok()
    }

    /// Hands a record to the reader, or counts it lost. Never blocks.
    pub fn push(&self, record: Record) {
        if !self.claim() {
            return;
        }
        match self.records.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A record of `data`, cut at the snap length.
    pub fn record(
        &self,
        port: Option<PortId>,
        direction: Direction,
        link: Link,
        data: &[u8],
        worker: usize,
    ) -> Record {
        Record {
            ts_ns: now_ns(),
            port,
            direction,
            link,
            data: data[..data.len().min(self.spec.snaplen)].to_vec(),
            len: data.len(),
            comment: None,
            trace: None,
            worker,
        }
    }
}

/// The taps a pipeline serves, shared with the control side that set them.
pub type Taps = Arc<[Arc<Tap>]>;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The outer IPv4 and UDP headers of a VXLAN packet received from `src` by `local:port`
/// (for an underlay capture: the socket hands over only the UDP payload and its sender).
/// What the socket does not tell (the identification, TTL and flags) is made up: ident 0,
/// TTL 64, DF.
pub fn vxlan_outer(src: SocketAddrV4, local: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    p[2..4].copy_from_slice(&(total.min(0xffff) as u16).to_be_bytes());
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&local.octets());
    let sum = crate::wire::checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()).min(0xffff) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

impl Pipeline {
    /// [`receive`](Pipeline::receive) with taps in force: copies in, the record of the stages
    /// for live traces and drop captures, copies out (see the module docs).
    #[cold]
    pub(super) fn receive_tapped<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        now: Timestamp,
        out: &mut O,
    ) {
        let taps = Arc::clone(&self.taps);
        let worker = self.worker;
        let on = |t: &Tap| t.on_port(Some(port)) && !t.is_done();
        let mut copies: Option<Vec<Vec<u8>>> = None;
        let mut traced = false;
        let mut input: Option<Vec<u8>> = None;
        for tap in taps.iter().filter(|t| on(t)) {
            if tap.kind == TapKind::Capture && tap.spec.rx && !tap.spec.underlay {
                let c = copies.get_or_insert_with(|| wire_copies(frame, &meta.offload));
                for c in c.iter().filter(|c| tap.accepts(Link::Ethernet, c)) {
                    tap.push(tap.record(Some(port), Direction::In, Link::Ethernet, c, worker));
                }
            }
            let wants_trace = match tap.kind {
                TapKind::Trace => tap.accepts(Link::Ethernet, frame),
                TapKind::Capture => tap.spec.drops,
            };
            if wants_trace {
                traced = true;
                input.get_or_insert_with(|| frame.to_vec());
            }
        }
        if traced {
            self.stages.cx.trace_on();
        }
        let mut tapped = Tapped::new(out, &taps, worker);
        self.receive_frame(state, port, frame, meta, now, &mut tapped);
        let Some(trace) = self.stages.cx.take_trace().filter(|_| traced) else {
            return;
        };
        deliver(
            &taps,
            Some(port),
            &input.unwrap_or_default(),
            &trace,
            worker,
        );
    }

    /// [`receive_vxlan`](Pipeline::receive_vxlan) with taps in force: underlay and inner
    /// copies in, transmits copied out, and for a packet that a live trace or a drop capture
    /// wants, the record of its stages (such a packet skips the receive coalescer, so that
    /// the record is of it alone).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive_vxlan_tapped<O: Output>(
        &mut self,
        state: &ForwardingState,
        endpoint: TunnelEndpoint,
        src: SocketAddrV4,
        message: &mut [u8],
        segment: Option<usize>,
        now: Timestamp,
        out: &mut O,
    ) {
        let taps = Arc::clone(&self.taps);
        let worker = self.worker;
        let mut tapped = Tapped::new(out, &taps, worker);
        let size = segment.unwrap_or(message.len()).max(1);
        for payload in message.chunks_mut(size) {
            tap_vxlan_in(&taps, worker, state, endpoint, src, payload);
            let port = vni_port(state, endpoint, payload);
            let inner = payload
                .get(vxlan::HEADER_LEN..)
                .filter(|i| i.len() >= ETHERNET_HEADER_LEN);
            let traced = taps.iter().any(|t| {
                t.on_port(port)
                    && !t.is_done()
                    && match t.kind {
                        TapKind::Trace => inner.is_some_and(|i| t.accepts(Link::Ethernet, i)),
                        TapKind::Capture => t.spec.drops,
                    }
            });
            let ip = *src.ip();
            if !traced {
                self.receive_vxlan_run(state, endpoint, ip, payload, None, now, &mut tapped);
                continue;
            }
            let input = inner.map(<[u8]>::to_vec).unwrap_or_default();
            // What was joined before goes first, out of this packet's record.
            self.flush_to(state, now, &mut tapped);
            self.stages.cx.trace_on();
            if let Some(t) = self.stages.cx.trace_mut() {
                t.step(Stage::Receive, "vxlan")
                    .with("remote", src)
                    .with(
                        "endpoint",
                        format_args!("{}:{}", endpoint.local, endpoint.port),
                    )
                    .with("len", payload.len());
            }
            self.receive_vxlan_alone(state, endpoint, ip, payload, now, &mut tapped);
            if let Some(trace) = self.stages.cx.take_trace() {
                deliver(&taps, port, &input, &trace, worker);
            }
        }
    }
}

/// Hands the record of a traced frame (`input`, received on `port`) to the live traces that
/// want it and, when it was dropped, with its stage and reason to the drop captures.
fn deliver(taps: &Taps, port: Option<PortId>, input: &[u8], trace: &Trace, worker: usize) {
    for tap in taps.iter().filter(|t| t.on_port(port) && !t.is_done()) {
        match tap.kind {
            TapKind::Trace if tap.accepts(Link::Ethernet, input) => {
                let mut r = tap.record(port, Direction::In, Link::Ethernet, input, worker);
                r.trace = Some(trace.clone());
                tap.push(r);
            }
            TapKind::Capture if tap.spec.drops => {
                let Some(d) = trace.steps.iter().find(|s| s.action == "drop") else {
                    continue;
                };
                if tap.accepts(Link::Ethernet, input) {
                    let mut r = tap.record(port, Direction::Drop, Link::Ethernet, input, worker);
                    r.comment = Some(format!("{}: {}", d.stage, d.field("reason").unwrap_or("?")));
                    tap.push(r);
                }
            }
            _ => {}
        }
    }
}

/// An output that copies transmits to the taps that want them, then hands them on.
pub(super) struct Tapped<'a, O> {
    inner: &'a mut O,
    taps: &'a Taps,
    worker: usize,
    scratch: Vec<u8>,
}

impl<'a, O> Tapped<'a, O> {
    pub(super) fn new(inner: &'a mut O, taps: &'a Taps, worker: usize) -> Tapped<'a, O> {
        Tapped {
            inner,
            taps,
            worker,
            scratch: Vec::new(),
        }
    }
}

impl<O: Output> Output for Tapped<'_, O> {
    fn takes_offloads(&self, port: PortId, offload: &Offload) -> bool {
        self.inner.takes_offloads(port, offload)
    }

    fn send(&mut self, transmit: Transmit<'_>) -> Sent {
        let worker = self.worker;
        match &transmit {
            Transmit::Device { port, frame, vnet } => {
                let mut copies = None;
                for tap in self.taps.iter().filter(|t| {
                    t.kind == TapKind::Capture
                        && t.spec.tx
                        && !t.spec.underlay
                        && t.on_port(Some(*port))
                        && !t.is_done()
                }) {
                    let c = copies.get_or_insert_with(|| {
                        let o = vnet.map(|h| Offload::from_vnet_hdr(&h)).unwrap_or_default();
                        wire_copies(&frame.to_vec(), &o)
                    });
                    for c in c.iter().filter(|c| tap.accepts(Link::Ethernet, c)) {
                        tap.push(tap.record(
                            Some(*port),
                            Direction::Out,
                            Link::Ethernet,
                            c,
                            worker,
                        ));
                    }
                }
            }
            Transmit::Vxlan {
                port, outer, inner, ..
            } => {
                for tap in self.taps.iter().filter(|t| {
                    t.kind == TapKind::Capture
                        && t.spec.tx
                        && t.on_port(Some(*port))
                        && !t.is_done()
                }) {
                    if tap.spec.underlay {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(&outer[..]);
                        self.scratch.extend_from_slice(&inner.to_vec());
                        if tap.accepts(Link::Ipv4, &self.scratch) {
                            let r = tap.record(
                                Some(*port),
                                Direction::Out,
                                Link::Ipv4,
                                &self.scratch,
                                worker,
                            );
                            tap.push(r);
                        }
                    } else {
                        let bytes = inner.to_vec();
                        if tap.accepts(Link::Ethernet, &bytes) {
                            let r = tap.record(
                                Some(*port),
                                Direction::Out,
                                Link::Ethernet,
                                &bytes,
                                worker,
                            );
                            tap.push(r);
                        }
                    }
                }
            }
            Transmit::Ipip { outer, inner, .. } => {
                for tap in self.taps.iter().filter(|t| {
                    t.kind == TapKind::Capture
                        && t.spec.tx
                        && t.spec.underlay
                        && t.on_port(None)
                        && !t.is_done()
                }) {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(outer);
                    self.scratch.extend_from_slice(inner);
                    if tap.accepts(Link::Ipv4, &self.scratch) {
                        let r = tap.record(None, Direction::Out, Link::Ipv4, &self.scratch, worker);
                        tap.push(r);
                    }
                }
            }
        }
        self.inner.send(transmit)
    }
}

/// A frame as the wire carries it: its checksum finished, a super-frame cut into its
/// segments (for captures; the frame itself is not touched).
fn wire_copies(frame: &[u8], offload: &Offload) -> Vec<Vec<u8>> {
    let mut copies = Vec::new();
    if offload.gso_size.is_some() {
        let mut scratch = Vec::new();
        let cut = segment(frame, offload, &mut scratch, |seg| {
            copies.push(seg.to_vec())
        });
        if cut.is_ok() {
            return copies;
        }
        copies.clear();
    }
    let mut copy = frame.to_vec();
    if let Some((start, offset)) = offload.csum {
        let _ = complete_checksum(&mut copy, start, offset);
    }
    copies.push(copy);
    copies
}

/// The VXLAN port of `payload`'s VNI on `endpoint`, if it has one.
fn vni_port(state: &ForwardingState, endpoint: TunnelEndpoint, payload: &[u8]) -> Option<PortId> {
    let v = payload.get(4..7)?;
    let vni = u32::from_be_bytes([0, v[0], v[1], v[2]]);
    state.vni_ports.get(&(endpoint, vni)).copied()
}

/// Underlay and inner copies of a VXLAN payload received from `src` by `endpoint`.
fn tap_vxlan_in(
    taps: &Taps,
    worker: usize,
    state: &ForwardingState,
    endpoint: TunnelEndpoint,
    src: SocketAddrV4,
    payload: &[u8],
) {
    let port = vni_port(state, endpoint, payload);
    for tap in taps
        .iter()
        .filter(|t| t.kind == TapKind::Capture && t.spec.rx && !t.is_done())
    {
        if tap.spec.port.is_some() && tap.spec.port != port {
            continue;
        }
        if tap.spec.underlay {
            let outer = vxlan_outer(src, endpoint.local, endpoint.port, payload);
            if tap.accepts(Link::Ipv4, &outer) {
                tap.push(tap.record(port, Direction::In, Link::Ipv4, &outer, worker));
            }
        } else if let Some(inner) = payload
            .get(vxlan::HEADER_LEN..)
            .filter(|i| i.len() >= ETHERNET_HEADER_LEN)
        {
            if tap.accepts(Link::Ethernet, inner) {
                tap.push(tap.record(port, Direction::In, Link::Ethernet, inner, worker));
            }
        }
    }
}
