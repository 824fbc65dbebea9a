//! [`Pipeline`]: one worker's whole packet path, from what a device or socket received to
//! what goes out, composed here in the order a frame meets it:
//!
//! 1. receive: a frame from a port with its offload metadata, a VXLAN datagram (decapsulated
//!    and learned from by [`tunnel`](super::tunnel), joined with its flow's neighbours by
//!    [`gro`](super::gro)), or an IPIP packet;
//! 2. offloads: a frame with its checksum or segmentation still to do is switched whole
//!    where it can be, else finished first ([`offload`](super::offload));
//! 3. the [`Bridge`]: parse, VLAN classification, learning, L2 lookup, or the router
//!    ([`router`](super::router): ARP/ND, conntrack and NAT, route lookup, IPIP);
//! 4. egress ([`egress`](super::egress)): MTU, VLAN tagging, VXLAN encapsulation, software
//!    offload fallbacks, the router's generated frames, each as a [`Transmit`] to the
//!    caller's [`Output`].
//!
//! Sans-IO: the worker reads, calls one of the `receive` methods, and its [`Output`] writes.
//! Tests, benches and fuzz targets drive the same methods with an output of their own.
//!
//! [`Transmit`]: super::egress::Transmit

use std::net::Ipv4Addr;

use super::egress::{self, Output};
use super::gro::{Coalescer, Push};
use super::offload::{complete_checksum, segment, Offload};
use std::sync::Arc;

use super::egress::{Sent, Transmit};
use super::observe::{vxlan_outer, Direction, Link, Tap, TapKind, Taps};
use super::trace::{Stage, Trace};
use super::{Bridge, DropReason, ForwardingState, TunnelEndpoint};
use crate::tables::{PortId, Timestamp};

/// Room for the largest frame a segment or finished checksum is built from (64 KiB and a tag).
const SCRATCH: usize = 65_536 + 4;

/// One worker's packet path: its [`Bridge`] (counters, router state, the tables shared with
/// the other workers) and the buffers it reuses from frame to frame.
pub struct Pipeline {
    bridge: Bridge,
    /// Joins TCP segments decapsulated from one batch of tunnel packets.
    gro: Coalescer,
    /// Reused for segments of super-frames.
    scratch: Vec<u8>,
    /// Live traces and captures in force (see [`observe`](super::observe)); usually none.
    taps: Taps,
    /// Which worker this is, for the records of taps.
    worker: usize,
}

/// How a frame came off its device, besides its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// The checksum or segmentation its sender left to do (its virtio-net header).
    pub offload: Offload,
    /// Longer than the receive buffer: cut, and dropped as oversized.
    pub truncated: bool,
    /// Its length as received (of a truncated frame: what was read).
    pub len: usize,
}

impl Pipeline {
    pub fn new(bridge: Bridge) -> Pipeline {
        Pipeline {
            bridge,
            gro: Coalescer::new(),
            scratch: Vec::with_capacity(SCRATCH),
            taps: Arc::from(Vec::new()),
            worker: 0,
        }
    }

    /// The live traces and captures to serve from the next frame on, as worker `worker`.
    pub fn set_taps(&mut self, taps: Taps, worker: usize) {
        self.taps = taps;
        self.worker = worker;
    }

    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    pub fn bridge_mut(&mut self) -> &mut Bridge {
        &mut self.bridge
    }

    /// A frame received on `port`: switched or routed, and sent to `out`.
    #[inline]
    pub fn receive<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        now: Timestamp,
        out: &mut O,
    ) {
        if self.taps.is_empty() {
            self.receive_frame(state, port, frame, meta, now, out);
        } else {
            self.receive_tapped(state, port, frame, meta, now, out);
        }
    }

    /// [`receive`](Self::receive) with taps in force: copies in, the record of the stages
    /// for live traces and drop captures, copies out (see [`observe`](super::observe)).
    #[cold]
    fn receive_tapped<O: Output>(
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
            self.bridge.trace_on();
        }
        let mut tapped = Tapped::new(out, &taps, worker);
        self.receive_frame(state, port, frame, meta, now, &mut tapped);
        let Some(trace) = self.bridge.take_trace().filter(|_| traced) else {
            return;
        };
        let input = input.unwrap_or_default();
        for tap in taps.iter().filter(|t| on(t)) {
            match tap.kind {
                TapKind::Trace if tap.accepts(Link::Ethernet, &input) => {
                    let mut r =
                        tap.record(Some(port), Direction::In, Link::Ethernet, &input, worker);
                    r.trace = Some((*trace).clone());
                    tap.push(r);
                }
                TapKind::Capture if tap.spec.drops => {
                    let Some(d) = trace.steps.iter().find(|s| s.action == "drop") else {
                        continue;
                    };
                    if tap.accepts(Link::Ethernet, &input) {
                        let mut r =
                            tap.record(Some(port), Direction::Drop, Link::Ethernet, &input, worker);
                        r.comment =
                            Some(format!("{}: {}", d.stage, d.field("reason").unwrap_or("?")));
                        tap.push(r);
                    }
                }
                _ => {}
            }
        }
    }

    /// [`receive`](Self::receive) itself.
    #[allow(clippy::too_many_arguments)]
    fn receive_frame<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        now: Timestamp,
        out: &mut O,
    ) {
        let Pipeline {
            bridge, scratch, ..
        } = self;
        let offload = &meta.offload;
        if let Some(t) = bridge.trace_mut() {
            let s = t.step(Stage::Receive, "frame");
            s.with("port", state.port(port).map_or("?", |p| p.name.as_str()))
                .with("len", meta.len.max(frame.len()));
            if let Some(mss) = offload.gso_size {
                s.with("gso_size", mss);
            }
            if offload.csum.is_some() {
                s.with("checksum", "partial");
            }
        }
        let bad = if meta.truncated {
            Some(DropReason::Oversized)
        } else if offload.gso_unsupported {
            Some(DropReason::BadOffload)
        } else if offload.is_pending()
            && egress::forward_offloaded(bridge, out, state, port, frame, offload, scratch, now)
        {
            None
        } else if offload.gso_size.is_some() {
            segment(frame, offload, scratch, |seg| {
                forward(bridge, out, state, port, seg, now)
            })
            .err()
        } else if let Some((start, offset)) = offload.csum {
            complete_checksum(frame, start, offset).err().or_else(|| {
                forward(bridge, out, state, port, frame, now);
                None
            })
        } else {
            forward(bridge, out, state, port, frame, now);
            None
        };
        if let Some(reason) = bad {
            let c = bridge.counters().port(port);
            c.rx_packets.add(1);
            c.rx_bytes.add(meta.len as u64);
            c.drop(reason);
            if let Some(t) = bridge.trace_mut() {
                t.dropped(reason);
            }
        }
    }

    /// [`receive`](Self::receive) with every stage's decision recorded: what a frame meets,
    /// as `tapswitch trace` shows it. What it sends goes to `out` as usual.
    #[allow(clippy::too_many_arguments)]
    pub fn trace<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        now: Timestamp,
        out: &mut O,
    ) -> Trace {
        self.bridge.trace_on();
        self.receive(state, port, frame, meta, now, out);
        // What the receive coalescer held back goes now: a trace is of one frame.
        self.flush(state, now, out);
        self.bridge.take_trace().map(|t| *t).unwrap_or_default()
    }

    /// One message a VXLAN endpoint received from `src`: a datagram, or a run of datagrams
    /// of `segment` bytes each that the kernel joined (UDP GRO); `cut` when it did not fit
    /// the receive buffer. Consecutive TCP segments of one inner flow are joined until
    /// [`flush`](Self::flush).
    #[allow(clippy::too_many_arguments)]
    pub fn receive_vxlan<O: Output>(
        &mut self,
        state: &ForwardingState,
        endpoint: TunnelEndpoint,
        src: Ipv4Addr,
        message: &mut [u8],
        segment: Option<usize>,
        cut: bool,
        now: Timestamp,
        out: &mut O,
    ) {
        let Pipeline {
            bridge,
            gro,
            scratch,
            taps,
            worker,
        } = self;
        if cut {
            let c = &bridge.counters().tunnel;
            c.rx_packets.add(1);
            c.drop(DropReason::Oversized);
            return;
        }
        let size = segment.unwrap_or(message.len()).max(1);
        for payload in message.chunks_mut(size) {
            if !taps.is_empty() {
                tap_vxlan_in(taps, *worker, state, endpoint, src, payload);
            }
            let Ok((port, inner)) = bridge.decap(state, endpoint, src, payload, now) else {
                continue;
            };
            // Consecutive segments of one TCP flow are joined (GRO); anything else goes on
            // alone, after what was joined before it.
            if gro.push(port.0, inner) == Push::Alone {
                flush_gro(gro, bridge, out, state, scratch, now);
                if gro.push(port.0, inner) == Push::Alone {
                    forward(bridge, out, state, port, inner, now);
                }
            }
        }
    }

    /// Sends on what was joined from tunnel packets: call after each batch of them.
    pub fn flush<O: Output>(&mut self, state: &ForwardingState, now: Timestamp, out: &mut O) {
        let Pipeline {
            bridge,
            gro,
            scratch,
            taps,
            worker,
        } = self;
        if taps.is_empty() {
            flush_gro(gro, bridge, out, state, scratch, now);
        } else {
            let mut tapped = Tapped::new(out, taps, *worker);
            flush_gro(gro, bridge, &mut tapped, state, scratch, now);
        }
    }

    /// One packet the IPIP socket received from `src` (its outer IPv4 header first); `cut`
    /// when it did not fit the receive buffer.
    pub fn receive_ipip<O: Output>(
        &mut self,
        state: &ForwardingState,
        src: Ipv4Addr,
        packet: &mut [u8],
        cut: bool,
        now: Timestamp,
        out: &mut O,
    ) {
        let bridge = &mut self.bridge;
        if cut {
            let c = &bridge.counters().ipip;
            c.rx_packets.add(1);
            c.drop(DropReason::Oversized);
            return;
        }
        if self.taps.is_empty() {
            let (start, decision) = bridge.ipip_in(state, src, packet, now);
            egress::send_decision(bridge, out, state, decision, &packet[start..], now);
            return;
        }
        for tap in self.taps.iter() {
            if tap.kind == TapKind::Capture
                && tap.spec.underlay
                && tap.spec.rx
                && tap.on_port(None)
                && tap.accepts(Link::Ipv4, packet)
            {
                tap.push(tap.record(None, Direction::In, Link::Ipv4, packet, self.worker));
            }
        }
        let mut tapped = Tapped::new(out, &self.taps, self.worker);
        let (start, decision) = bridge.ipip_in(state, src, packet, now);
        egress::send_decision(bridge, &mut tapped, state, decision, &packet[start..], now);
    }

    /// Timer work (about once a second, by one worker of a switch): learned entries aged,
    /// neighbour probes and expiries, conntrack expiry; what that sends goes to `out`.
    pub fn tick<O: Output>(&mut self, state: &ForwardingState, now: Timestamp, out: &mut O) {
        self.bridge.age(state, now);
        self.bridge.tick(state, now);
        if self.taps.is_empty() {
            egress::send_generated(&mut self.bridge, out, state, now);
        } else {
            let mut tapped = Tapped::new(out, &self.taps, self.worker);
            egress::send_generated(&mut self.bridge, &mut tapped, state, now);
        }
    }
}

/// Runs one finished frame through the bridge and sends what it decided, then whatever the
/// router generated on the way.
#[inline]
fn forward<O: Output>(
    bridge: &mut Bridge,
    out: &mut O,
    state: &ForwardingState,
    port: PortId,
    frame: &mut [u8],
    now: Timestamp,
) {
    let decision = bridge.process(state, port, frame, now);
    egress::send_decision(bridge, out, state, decision, frame, now);
}

/// Sends on what the receive coalescer joined: a super-frame with its offloads left to the
/// egress (or finished here where the egress cannot take them), or a lone segment.
fn flush_gro<O: Output>(
    gro: &mut Coalescer,
    bridge: &mut Bridge,
    out: &mut O,
    state: &ForwardingState,
    scratch: &mut Vec<u8>,
    now: Timestamp,
) {
    gro.take(|tag, frame, offload| {
        let port = PortId(tag);
        match offload {
            None => forward(bridge, out, state, port, frame, now),
            Some(o) => {
                if !egress::forward_offloaded(bridge, out, state, port, frame, &o, scratch, now) {
                    let _ = segment(frame, &o, scratch, |seg| {
                        forward(bridge, out, state, port, seg, now)
                    });
                }
            }
        }
    });
}

/// An output that copies transmits to the taps that want them, then hands them on.
struct Tapped<'a, O> {
    inner: &'a mut O,
    taps: &'a Taps,
    worker: usize,
    scratch: Vec<u8>,
}

impl<'a, O> Tapped<'a, O> {
    fn new(inner: &'a mut O, taps: &'a Taps, worker: usize) -> Tapped<'a, O> {
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

/// Underlay and inner copies of a VXLAN payload received from `src` by `endpoint`.
fn tap_vxlan_in(
    taps: &Taps,
    worker: usize,
    state: &ForwardingState,
    endpoint: TunnelEndpoint,
    src: Ipv4Addr,
    payload: &[u8],
) {
    let port = payload
        .get(4..7)
        .map(|v| u32::from_be_bytes([0, v[0], v[1], v[2]]))
        .and_then(|vni| state.vni_ports.get(&(endpoint, vni)).copied());
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
        } else if let Some(inner) = payload.get(8..).filter(|i| i.len() >= 14) {
            if tap.accepts(Link::Ethernet, inner) {
                tap.push(tap.record(port, Direction::In, Link::Ethernet, inner, worker));
            }
        }
    }
}
