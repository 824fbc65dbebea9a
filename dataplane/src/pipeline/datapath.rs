//! [`Pipeline`]: one worker's whole packet path, from what a device or socket received to
//! what goes out, composed here from its stages in the order a frame meets them:
//!
//! 1. receive: a frame from a port with its offload metadata, a VXLAN datagram (through the
//!    [`Tunnel`] stage's decapsulation, joined with its flow's neighbours by
//!    [`gro`](super::gro)), or an IPIP packet;
//! 2. offloads: a frame with its checksum or segmentation still to do is decided whole where
//!    it can be, else finished first ([`offload`](super::offload));
//! 3. [`parse`]: the Ethernet header and 802.1Q tag;
//! 4. [`Ingress`]: the port's MTU, VLAN classification by port mode, source checks;
//! 5. L2, the [`Bridge`]: learning, ARP/ND suppression, destination lookup; or the router;
//! 6. L3 and NAT, the [`Router`]: ARP/ND, conntrack and address translation, routes,
//!    neighbours, fragmentation, IPIP;
//! 7. egress ([`egress`](super::egress)): MTU, VLAN tag, VXLAN encapsulation through the
//!    [`Tunnel`] stage, software offload fallbacks, the router's generated frames, each as a
//!    [`Transmit`] to the caller's [`Output`].
//!
//! Each stage is a type of its own; what they share (the tables every worker shares, this
//! worker's counters, the record of a traced frame) is the [`Context`] handed to each in turn.
//!
//! Sans-IO: the worker reads, calls one of the `receive` methods, and its [`Output`] writes.
//! Tests, benches and fuzz targets drive the same methods with an output of their own.
//!
//! [`Transmit`]: super::egress::Transmit

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, MutexGuard};

use super::bridge::{Bridge, Switched};
use super::context::Context;
use super::decision::EgressFrame;
use super::decision::{Decision, Egress, Targets};
use super::egress::{self, Output, Transmit};
use super::gro::{Coalescer, Push};
use super::ingress::Ingress;
use super::observe::{Direction, Link, TapKind, Tapped, Taps};
use super::offload::{complete_checksum, segment, Offload};
use super::parse::parse;
use super::policy;
use super::rate::{ByteBucket, Conform, Queues};
use super::router::{Generated, Router};
use super::shared::{ConntrackGuard, SharedTables};
use super::trace::{Stage, Trace};
use super::tunnel::Tunnel;
use super::{DropReason, ForwardingState, TunnelEndpoint, WorkerCounters};
use crate::tables::{MacTable, PortId, RemoteTable, Timestamp};

/// Room for the largest frame a segment or finished checksum is built from (64 KiB and a tag).
const SCRATCH: usize = 65_536 + 4;

/// The stages of one worker's pipeline, and the context they share.
pub(super) struct Stages {
    pub(super) cx: Context,
    pub(super) ingress: Ingress,
    pub(super) bridge: Bridge,
    pub(super) router: Router,
    pub(super) tunnel: Tunnel,
    /// Frames waiting for their egress port's shaping rate (see [`rate`](super::rate)).
    pub(super) queues: Queues,
}

/// One worker's packet path: its stages and the buffers it reuses from frame to frame.
pub struct Pipeline {
    pub(super) stages: Stages,
    /// Joins TCP segments decapsulated from one batch of tunnel packets.
    gro: Coalescer,
    /// Reused for segments of super-frames.
    scratch: Vec<u8>,
    /// Live traces and captures in force (see [`observe`](super::observe)); usually none.
    pub(super) taps: Taps,
    /// Which worker this is, for the records of taps.
    pub(super) worker: usize,
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

impl RxMeta {
    /// Whether the frame is whole as read, with a segmentation this switch can do left to do.
    #[inline]
    pub fn is_plain_but_pending(&self) -> bool {
        !self.truncated && !self.offload.gso_unsupported && self.offload.is_pending()
    }

    /// Whether the frame is whole as read and has no checksum or segmentation left to do.
    #[inline]
    pub fn is_plain(&self) -> bool {
        !self.truncated && !self.offload.gso_unsupported && !self.offload.is_pending()
    }
}

impl Stages {
    /// parse -> ingress -> L2: where a frame received on `port` goes, or that it is for the
    /// router. `wire_len`: the largest frame on the wire it stands for (of a super-frame,
    /// its largest segment), which the port's MTU is checked against.
    #[inline(always)]
    fn switch<'s, const TRACE: bool>(
        &mut self,
        state: &'s ForwardingState,
        port: PortId,
        frame: &[u8],
        wire_len: usize,
        now: Timestamp,
    ) -> Result<Switched<'s>, DropReason> {
        let headers = parse(frame)?;
        let admitted = self.ingress.admit::<TRACE>(
            &mut self.cx.trace,
            state,
            port,
            &headers,
            frame,
            wire_len,
        )?;
        self.bridge
            .switch::<TRACE>(&mut self.cx, state, port, admitted, &headers, frame, now)
    }

    /// [`switch`](Self::switch), with the record of each decision when a trace is on.
    #[inline(always)]
    fn switch_traced<'s>(
        &mut self,
        state: &'s ForwardingState,
        port: PortId,
        frame: &[u8],
        wire_len: usize,
        now: Timestamp,
    ) -> Result<Switched<'s>, DropReason> {
        if self.cx.trace.is_some() {
            self.switch::<true>(state, port, frame, wire_len, now)
        } else {
            self.switch::<false>(state, port, frame, wire_len, now)
        }
    }

    /// What to do with one frame received on `port`: all of the stages before the egress.
    /// The frame is mutable because a routed frame is rewritten in place (MAC addresses,
    /// TTL, checksum, NAT) before it leaves.
    #[inline]
    pub(super) fn decide<'s>(
        &mut self,
        state: &'s ForwardingState,
        port: PortId,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let c = self.cx.counters.port(port);
        c.rx_packets.add(1);
        c.rx_bytes.add(frame.len() as u64);
        let decision = match self.switch_traced(state, port, frame, frame.len(), now) {
            Ok(Switched::Done(decision)) if state.policy_active() => {
                return self.policy_switched(state, port, decision, frame, now);
            }
            Ok(Switched::Done(decision)) => return decision,
            Ok(Switched::Route { vlan, inner_offset }) if state.policy_active() => {
                self.router.in_port = Some(port);
                let d =
                    self.router
                        .with(&mut self.cx)
                        .route_in(state, vlan, inner_offset, frame, now);
                match self.policy_routed(state, port, &d, frame, now) {
                    Ok(()) => d,
                    Err(reason) => Decision::Drop(reason),
                }
            }
            Ok(Switched::Route { vlan, inner_offset }) => {
                self.router.in_port = Some(port);
                self.router
                    .with(&mut self.cx)
                    .route_in(state, vlan, inner_offset, frame, now)
            }
            Ok(Switched::Dhcp { vlan, inner_offset }) => {
                self.router
                    .with(&mut self.cx)
                    .dhcp_in(state, port, vlan, inner_offset, frame)
            }
            Err(reason) => Decision::Drop(reason),
        };
        if let Decision::Drop(reason) = decision {
            self.dropped(port, reason);
        }
        decision
    }

    /// [`decide`](Self::decide) for a frame with offloads still to do (`offload`: a TCP
    /// super-frame, a partial checksum), without doing them. A switched frame is decided
    /// whole. An IPv4 or IPv6 frame for the router is routed whole too: the NAT stage
    /// updates a partial checksum as such, and where it cannot leave whole (an IPIP route, a
    /// next hop still resolving, fragmentation) the router cuts it and sends the pieces as
    /// generated frames. `None`, with nothing counted, for anything else for the router (ARP,
    /// suppression): the caller finishes the offloads and decides each resulting frame.
    pub(super) fn decide_offloaded<'s>(
        &mut self,
        state: &'s ForwardingState,
        port: PortId,
        frame: &mut [u8],
        offload: &Offload,
        now: Timestamp,
    ) -> Option<Decision<'s>> {
        let wire_len = offload.wire_len(frame);
        let decision = match self.switch_traced(state, port, frame, wire_len, now) {
            Ok(Switched::Done(d @ Decision::Drop(_))) => d,
            Ok(Switched::Done(d @ Decision::Forward(_))) => {
                if state.policy_active() {
                    if let Err(reason) = self.check_policy(state, port, &d, frame, true, now) {
                        Decision::Drop(reason)
                    } else {
                        d
                    }
                } else {
                    d
                }
            }
            Ok(Switched::Route { vlan, inner_offset })
                if matches!(
                    frame.get(inner_offset..inner_offset + 2),
                    Some(&[0x08, 0x00] | &[0x86, 0xdd])
                ) =>
            {
                self.router.offload = Some(*offload);
                self.router.in_port = Some(port);
                let mut d =
                    self.router
                        .with(&mut self.cx)
                        .route_in(state, vlan, inner_offset, frame, now);
                self.router.offload = None;
                self.router.in_port = None;
                if state.policy_active() {
                    if let Err(reason) = self.policy_routed(state, port, &d, frame, now) {
                        d = Decision::Drop(reason);
                    }
                }
                d
            }
            Ok(_) => {
                // Decided again, frame by frame, once the offloads are done.
                if let Some(t) = self.cx.trace_mut() {
                    t.rewind_to_receive();
                }
                return None;
            }
            Err(reason) => Decision::Drop(reason),
        };
        let c = self.cx.counters.port(port);
        c.rx_packets.add(1);
        c.rx_bytes.add(frame.len() as u64);
        if let Decision::Drop(reason) = decision {
            self.dropped(port, reason);
        }
        Some(decision)
    }

    /// The policy stage over a switched (not routed) `decision` for a frame received on
    /// `port`, the drop counted.
    #[cold]
    #[inline(never)]
    fn policy_switched<'s>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        decision: Decision<'s>,
        frame: &[u8],
        now: Timestamp,
    ) -> Decision<'s> {
        match self.check_policy(state, port, &decision, frame, true, now) {
            Ok(()) => decision,
            Err(reason) => {
                self.dropped(port, reason);
                Decision::Drop(reason)
            }
        }
    }

    /// The policy stage over a routed `decision` for a frame received on `port`: the reason
    /// it is denied for.
    #[cold]
    #[inline(never)]
    fn policy_routed(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        decision: &Decision<'_>,
        frame: &[u8],
        now: Timestamp,
    ) -> Result<(), DropReason> {
        self.check_policy(state, port, decision, frame, false, now)
    }

    /// The [`policy`] stage, for a frame from `port` that `decision` sends to one port or
    /// into an IPIP tunnel (a flood is checked member by member at its egress; what the router
    /// sends later, when it does). Takes the decision's parts by value, in registers: a
    /// decision passed by reference would have to live in memory on the hot path too.
    #[inline(always)]
    fn check_policy(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        decision: &Decision<'_>,
        frame: &[u8],
        bridged: bool,
        now: Timestamp,
    ) -> Result<(), DropReason> {
        let (to, inner_offset) = match *decision {
            Decision::Forward(Egress {
                targets: Targets::One(m),
                inner_offset,
                ..
            }) => (Some(m.port), inner_offset),
            Decision::Tunnel(t) if t.start >= 2 => (None, t.start - 2),
            _ => return Ok(()),
        };
        self.check_policy_on(state, port, to, inner_offset, frame, bridged, now)
    }

    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn check_policy_on(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        to: Option<PortId>,
        inner_offset: usize,
        frame: &[u8],
        bridged: bool,
        now: Timestamp,
    ) -> Result<(), DropReason> {
        if !policy::applies(state, Some(port), to) {
            return Ok(());
        }
        let path = policy::Path::between(port, to, bridged);
        policy::check(
            &self.cx.shared,
            &mut self.cx.trace,
            state,
            path,
            frame,
            inner_offset,
            now,
        )
    }

    /// Counts a frame received on `port` as dropped for `reason`.
    #[cold]
    fn dropped(&mut self, port: PortId, reason: DropReason) {
        self.cx.counters.port(port).drop(reason);
        if let Some(t) = self.cx.trace_mut() {
            t.dropped(reason);
        }
    }
}

impl Pipeline {
    /// A pipeline with tables of its own (one worker), bounded as `state` says.
    pub fn new(state: &ForwardingState, counters: Arc<WorkerCounters>) -> Pipeline {
        let shared = SharedTables::new(
            state.mac_table_max,
            state.routing.neigh_max,
            state.nat.conntrack_max,
        );
        Pipeline::with_shared(counters, Arc::new(shared))
    }

    /// The pipeline of one of several workers that share `shared`.
    pub fn with_shared(counters: Arc<WorkerCounters>, shared: Arc<SharedTables>) -> Pipeline {
        Pipeline {
            stages: Stages {
                cx: Context::new(counters, shared),
                ingress: Ingress,
                bridge: Bridge,
                router: Router::new(),
                tunnel: Tunnel,
                queues: Queues::default(),
            },
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
        if state.rate_active() {
            self.receive_limited(state, port, frame, meta, now, out);
        } else {
            self.receive_unlimited(state, port, frame, meta, now, out);
        }
    }

    /// [`receive`](Self::receive) on a switch where some port has rate limits.
    #[inline(never)]
    fn receive_limited<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        now: Timestamp,
        out: &mut O,
    ) {
        if !self.policed_away(state, port, frame, meta, now, out) {
            self.receive_unlimited(state, port, frame, meta, now, out);
        }
    }

    /// [`receive`](Self::receive) past the policing.
    #[inline(always)]
    fn receive_unlimited<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        now: Timestamp,
        out: &mut O,
    ) {
        if !self.taps.is_empty() {
            self.receive_tapped(state, port, frame, meta, now, out);
        } else if meta.is_plain() {
            // Checked here, inline where the metadata was just made, rather than loaded back
            // in `receive_frame`.
            self.receive_plain(state, port, frame, now, out);
        } else {
            self.receive_frame(state, port, frame, meta, now, out);
        }
    }

    /// Policing of a frame received on `port`: true when it is dropped (or, a super-frame over
    /// the rate, handled segment by segment).
    #[inline]
    fn policed_away<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        now: Timestamp,
        out: &mut O,
    ) -> bool {
        let Some(police) = state.rate_limits(port).and_then(|r| r.police.as_ref()) else {
            return false;
        };
        let bytes = if meta.offload.is_pending() {
            meta.offload.wire_bytes(frame)
        } else {
            frame.len()
        };
        if police.take(bytes as u64, now, None) == Conform::Now {
            return false;
        }
        if meta.offload.gso_size.is_some() && meta.is_plain_but_pending() {
            // A super-frame over the rate: its segments are policed one by one, as they would
            // be on the wire (a whole super-frame dropped at once is dozens of packets lost
            // together, which TCP recovers from badly).
            self.receive_policed(state, port, frame, meta, police, now, out);
        } else {
            self.policed(port, frame.len());
        }
        true
    }

    /// A super-frame over `port`'s policing rate: cut into its segments, each policed; those
    /// within the rate go on.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn receive_policed<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        police: &ByteBucket,
        now: Timestamp,
        out: &mut O,
    ) {
        let Pipeline {
            stages, scratch, ..
        } = self;
        let result = segment(frame, &meta.offload, scratch, |seg| {
            if police.take(seg.len() as u64, now, None) == Conform::Now {
                forward(stages, out, state, port, seg, now);
            } else {
                let c = stages.cx.counters.port(port);
                c.rx_packets.add(1);
                c.rx_bytes.add(seg.len() as u64);
                stages.dropped(port, DropReason::RateLimited);
            }
        });
        if let Err(reason) = result {
            stages.cx.counters.port(port).drop(reason);
        }
    }

    /// Counts a frame of `len` bytes received on `port` and dropped by its policing rate.
    #[cold]
    fn policed(&mut self, port: PortId, len: usize) {
        let c = self.stages.cx.counters.port(port);
        c.rx_packets.add(1);
        c.rx_bytes.add(len as u64);
        self.stages.dropped(port, DropReason::RateLimited);
    }

    /// [`receive`](Self::receive) of a frame with nothing left to do and nothing wrong with
    /// how it was read.
    fn receive_plain<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        now: Timestamp,
        out: &mut O,
    ) {
        let stages = &mut self.stages;
        if let Some(t) = stages.cx.trace_mut() {
            let meta = RxMeta {
                len: frame.len(),
                ..RxMeta::default()
            };
            receive_step(t, state, port, frame, &meta);
        }
        forward(stages, out, state, port, frame, now);
    }

    /// [`receive`](Self::receive) itself.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive_frame<O: Output>(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &mut [u8],
        meta: &RxMeta,
        now: Timestamp,
        out: &mut O,
    ) {
        let Pipeline {
            stages, scratch, ..
        } = self;
        let offload = &meta.offload;
        if let Some(t) = stages.cx.trace_mut() {
            receive_step(t, state, port, frame, meta);
        }
        let bad = if meta.truncated {
            Some(DropReason::Oversized)
        } else if offload.gso_unsupported {
            Some(DropReason::BadOffload)
        } else if offload.is_pending()
            && egress::forward_offloaded(stages, out, state, port, frame, offload, scratch, now)
        {
            None
        } else if offload.gso_size.is_some() {
            segment(frame, offload, scratch, |seg| {
                forward(stages, out, state, port, seg, now)
            })
            .err()
        } else if let Some((start, offset)) = offload.csum {
            complete_checksum(frame, start, offset).err().or_else(|| {
                forward(stages, out, state, port, frame, now);
                None
            })
        } else {
            forward(stages, out, state, port, frame, now);
            None
        };
        if let Some(reason) = bad {
            let c = stages.cx.counters.port(port);
            c.rx_packets.add(1);
            c.rx_bytes.add(meta.len as u64);
            stages.dropped(port, reason);
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
        self.stages.cx.trace_on();
        self.receive(state, port, frame, meta, now, out);
        // What the receive coalescer held back goes now: a trace is of one frame.
        self.flush(state, now, out);
        self.stages.cx.take_trace().map(|t| *t).unwrap_or_default()
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
        src: SocketAddrV4,
        message: &mut [u8],
        segment: Option<usize>,
        cut: bool,
        now: Timestamp,
        out: &mut O,
    ) {
        if cut {
            let c = &self.stages.cx.counters.tunnel;
            c.rx_packets.add(1);
            c.drop(DropReason::Oversized);
        } else if self.taps.is_empty() {
            self.receive_vxlan_run(state, endpoint, *src.ip(), message, segment, now, out);
        } else {
            self.receive_vxlan_tapped(state, endpoint, src, message, segment, now, out);
        }
    }

    /// [`receive_vxlan`](Self::receive_vxlan) of a message that fit: each of its datagrams
    /// decapsulated, then joined with its flow's neighbours or switched alone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive_vxlan_run<O: Output>(
        &mut self,
        state: &ForwardingState,
        endpoint: TunnelEndpoint,
        src: Ipv4Addr,
        message: &mut [u8],
        segment: Option<usize>,
        now: Timestamp,
        out: &mut O,
    ) {
        let Pipeline {
            stages,
            gro,
            scratch,
            ..
        } = self;
        let size = segment.unwrap_or(message.len()).max(1);
        for payload in message.chunks_mut(size) {
            let decapped = stages
                .tunnel
                .decap(&mut stages.cx, state, endpoint, src, payload, now);
            let Ok((port, inner)) = decapped else {
                continue;
            };
            // Consecutive segments of one TCP flow are joined (GRO); anything else goes on
            // alone, after what was joined before it.
            match gro.push(port.0, inner) {
                Push::Joined => {}
                Push::Apart => {
                    flush_gro(gro, stages, out, state, scratch, now);
                    let joined = gro.push(port.0, inner);
                    debug_assert_eq!(joined, Push::Joined);
                }
                Push::Alone => {
                    flush_gro(gro, stages, out, state, scratch, now);
                    forward(stages, out, state, port, inner, now);
                }
            }
        }
    }

    /// Sends on what was joined from tunnel packets: call after each batch of them.
    pub fn flush<O: Output>(&mut self, state: &ForwardingState, now: Timestamp, out: &mut O) {
        if self.taps.is_empty() {
            self.flush_to(state, now, out);
        } else {
            let taps = Arc::clone(&self.taps);
            let mut tapped = Tapped::new(out, &taps, self.worker);
            self.flush_to(state, now, &mut tapped);
        }
    }

    /// [`flush`](Self::flush) to `out` as it is.
    pub(super) fn flush_to<O: Output>(
        &mut self,
        state: &ForwardingState,
        now: Timestamp,
        out: &mut O,
    ) {
        let Pipeline {
            stages,
            gro,
            scratch,
            ..
        } = self;
        flush_gro(gro, stages, out, state, scratch, now);
    }

    /// The VXLAN stage decapsulates `payload` and the inner frame is switched alone, not
    /// joined with others (for a traced packet).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive_vxlan_alone<O: Output>(
        &mut self,
        state: &ForwardingState,
        endpoint: TunnelEndpoint,
        src: Ipv4Addr,
        payload: &mut [u8],
        now: Timestamp,
        out: &mut O,
    ) {
        let stages = &mut self.stages;
        let decapped = stages
            .tunnel
            .decap(&mut stages.cx, state, endpoint, src, payload, now);
        if let Ok((port, inner)) = decapped {
            forward(stages, out, state, port, inner, now);
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
        let stages = &mut self.stages;
        if cut {
            let c = &stages.cx.counters.ipip;
            c.rx_packets.add(1);
            c.drop(DropReason::Oversized);
            return;
        }
        if self.taps.is_empty() {
            let (start, decision) = stages
                .router
                .with(&mut stages.cx)
                .ipip_in(state, src, packet, now);
            egress::send_decision(stages, out, state, decision, &packet[start..], now);
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
        let (start, decision) = stages
            .router
            .with(&mut stages.cx)
            .ipip_in(state, src, packet, now);
        egress::send_decision(stages, &mut tapped, state, decision, &packet[start..], now);
    }

    /// Timer work (about once a second, by one worker of a switch): learned entries aged,
    /// neighbour probes and expiries, conntrack expiry; what that sends goes to `out`.
    pub fn tick<O: Output>(&mut self, state: &ForwardingState, now: Timestamp, out: &mut O) {
        self.timers(state, now);
        if self.taps.is_empty() {
            egress::send_generated(&mut self.stages, out, state, now);
        } else {
            let mut tapped = Tapped::new(out, &self.taps, self.worker);
            egress::send_generated(&mut self.stages, &mut tapped, state, now);
        }
    }

    /// Sends the frames whose shaping rate lets them go at `now` (a worker calls this while
    /// [`next_release`](Self::next_release) says some wait).
    pub fn release_shaped<O: Output>(&mut self, now: Timestamp, out: &mut O) {
        let Stages { cx, queues, .. } = &mut self.stages;
        queues.release(now, |w| {
            let frame = EgressFrame {
                addresses: &w.bytes[..12],
                tag: None,
                rest: &w.bytes[12..],
            };
            out.send(Transmit::Device {
                port: w.port,
                frame,
                vnet: w.vnet,
            })
            .count(cx.counters.port(w.port));
        });
    }

    /// When the next shaped frame may go (ms of the clock, rounded up), if any waits.
    pub fn next_release(&self) -> Option<Timestamp> {
        self.stages
            .queues
            .next_ns()
            .map(|ns| Timestamp::from_millis(ns.div_ceil(1_000_000)))
    }

    /// [`tick`](Self::tick) without the sending: what the router generates stays queued
    /// ([`take_generated`](Self::take_generated)).
    pub fn timers(&mut self, state: &ForwardingState, now: Timestamp) {
        let Stages {
            cx, bridge, router, ..
        } = &mut self.stages;
        bridge.age(cx, state, now);
        router.with(cx).tick(state, now);
        // (Flows left when the last policy went are looked at by no one and go when policy
        // is back.)
        if state.policy_active() {
            cx.shared.policy6().expire(now.millis());
        }
    }

    /// Removes learned MACs and remote VTEPs idle for the state's aging time; returns how
    /// many.
    pub fn age(&mut self, state: &ForwardingState, now: Timestamp) -> usize {
        let Stages { cx, bridge, .. } = &self.stages;
        bridge.age(cx, state, now)
    }

    /// Brings the stages' learned state in line with a newly published state (see
    /// [`Bridge::adopt`] and [`Router::adopt`]).
    pub fn adopt(&mut self, state: &ForwardingState) {
        let Stages {
            cx, bridge, router, ..
        } = &mut self.stages;
        bridge.adopt(&cx.shared, state);
        router.with(cx).adopt(state);
    }
}

/// The stages one by one, without I/O: for tests, benches, fuzz targets and tools that look
/// at a decision rather than at what is sent.
impl Pipeline {
    /// What the stages before the egress decide about one frame (see [`Output`] for what
    /// [`receive`](Self::receive) then sends). What the router generates on the way stays
    /// queued ([`take_generated`](Self::take_generated)).
    pub fn decide<'s>(
        &mut self,
        state: &'s ForwardingState,
        port: PortId,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        self.stages.decide(state, port, frame, now)
    }

    /// [`decide`](Self::decide) for a frame with offloads still to do, decided whole where
    /// it can be; `None` (nothing done) where its offloads must be finished first.
    pub fn decide_offloaded<'s>(
        &mut self,
        state: &'s ForwardingState,
        port: PortId,
        frame: &mut [u8],
        offload: &Offload,
        now: Timestamp,
    ) -> Option<Decision<'s>> {
        self.stages
            .decide_offloaded(state, port, frame, offload, now)
    }

    /// The VXLAN stage's decapsulation of one packet `endpoint` received from `src`: the
    /// VXLAN port and the inner frame.
    pub fn decap<'f>(
        &mut self,
        state: &ForwardingState,
        endpoint: TunnelEndpoint,
        src: Ipv4Addr,
        payload: &'f mut [u8],
        now: Timestamp,
    ) -> Result<(PortId, &'f mut [u8]), DropReason> {
        let Stages { cx, tunnel, .. } = &mut self.stages;
        tunnel.decap(cx, state, endpoint, src, payload, now)
    }

    /// The router's decision about one packet the IPIP socket received from `src`, and
    /// where in `packet` the inner packet starts.
    pub fn ipip_in<'s>(
        &mut self,
        state: &'s ForwardingState,
        src: Ipv4Addr,
        packet: &mut [u8],
        now: Timestamp,
    ) -> (usize, Decision<'s>) {
        let Stages { cx, router, .. } = &mut self.stages;
        router.with(cx).ipip_in(state, src, packet, now)
    }

    /// The VXLAN stage's encapsulation of `frame` (switched to the VXLAN port `port`, `out_len`
    /// bytes as that port sends it): the outer headers for each remote it goes to, handed to
    /// `send` (see [`Tunnel::encapsulate`]).
    pub fn encapsulate(
        &mut self,
        state: &ForwardingState,
        port: PortId,
        frame: &[u8],
        out_len: usize,
        now: Timestamp,
        send: impl FnMut(Ipv4Addr, &[u8; super::tunnel::OUTER_LEN], &WorkerCounters),
    ) {
        let Stages { cx, tunnel, .. } = &mut self.stages;
        tunnel.encapsulate(cx, state, port, frame, out_len, now, send)
    }

    /// The next frame the router originated, if any.
    pub fn take_generated(&mut self) -> Option<Generated> {
        self.stages.router.take_generated()
    }

    /// Returns a generated frame's buffer to the router's pool.
    pub fn recycle(&mut self, generated: Generated) {
        self.stages.router.recycle_generated(generated)
    }

    /// The egress of a frame the router generated into `vlan`.
    pub fn generated_egress<'s>(
        &self,
        state: &'s ForwardingState,
        generated: &super::Generated,
        now: Timestamp,
    ) -> Option<super::Egress<'s>> {
        super::router::generated_egress(&self.stages.cx.shared, state, generated, now)
    }

    /// Records what every stage decides about the frames that follow, until
    /// [`take_trace`](Self::take_trace).
    pub fn trace_on(&mut self) {
        self.stages.cx.trace_on()
    }

    /// Stops recording and returns the record.
    pub fn take_trace(&mut self) -> Option<Box<Trace>> {
        self.stages.cx.take_trace()
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.stages.cx.counters
    }

    /// The tables this pipeline shares with the other workers.
    pub fn shared(&self) -> &Arc<SharedTables> {
        &self.stages.cx.shared
    }

    /// The learned MAC table (locked while the guard lives).
    pub fn mac_table(&self) -> MutexGuard<'_, MacTable> {
        self.stages.cx.shared.macs()
    }

    /// The learned remote VTEP table (locked while the guard lives).
    pub fn remote_table(&self) -> MutexGuard<'_, RemoteTable> {
        self.stages.cx.shared.remotes()
    }

    /// The connection tracking table (locked while the guard lives).
    pub fn conntrack(&self) -> ConntrackGuard<'_> {
        self.stages.cx.shared.conntrack()
    }
}

/// The receive stage's step of a trace: the port, the length, the offloads left to do.
#[cold]
fn receive_step(t: &mut Trace, state: &ForwardingState, port: PortId, frame: &[u8], m: &RxMeta) {
    let s = t.step(Stage::Receive, "frame");
    s.with("port", state.port(port).map_or("?", |p| p.name.as_str()))
        .with("len", m.len.max(frame.len()));
    if let Some(mss) = m.offload.gso_size {
        s.with("gso_size", mss);
    }
    if m.offload.csum.is_some() {
        s.with("checksum", "partial");
    }
}

/// Decides one finished frame and sends what was decided, then whatever the router
/// generated on the way.
#[inline]
fn forward<O: Output>(
    stages: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    port: PortId,
    frame: &mut [u8],
    now: Timestamp,
) {
    let decision = stages.decide(state, port, frame, now);
    egress::send_decision(stages, out, state, decision, frame, now);
}

/// Sends on what the receive coalescer joined: a super-frame with its offloads left to the
/// egress (or finished here where the egress cannot take them), or a lone segment.
fn flush_gro<O: Output>(
    gro: &mut Coalescer,
    stages: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    scratch: &mut Vec<u8>,
    now: Timestamp,
) {
    gro.take(|tag, frame, offload| {
        let port = PortId(tag);
        match offload {
            None => forward(stages, out, state, port, frame, now),
            Some(o) => {
                if !egress::forward_offloaded(stages, out, state, port, frame, &o, scratch, now) {
                    let _ = segment(frame, &o, scratch, |seg| {
                        forward(stages, out, state, port, seg, now)
                    });
                }
            }
        }
    });
}
