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
        }
    }

    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    pub fn bridge_mut(&mut self) -> &mut Bridge {
        &mut self.bridge
    }

    /// A frame received on `port`: switched or routed, and sent to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn receive<O: Output>(
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
        } = self;
        if cut {
            let c = &bridge.counters().tunnel;
            c.rx_packets.add(1);
            c.drop(DropReason::Oversized);
            return;
        }
        let size = segment.unwrap_or(message.len()).max(1);
        for payload in message.chunks_mut(size) {
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
        } = self;
        flush_gro(gro, bridge, out, state, scratch, now);
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
        let (start, decision) = bridge.ipip_in(state, src, packet, now);
        egress::send_decision(bridge, out, state, decision, &packet[start..], now);
    }

    /// Timer work (about once a second, by one worker of a switch): learned entries aged,
    /// neighbour probes and expiries, conntrack expiry; what that sends goes to `out`.
    pub fn tick<O: Output>(&mut self, state: &ForwardingState, now: Timestamp, out: &mut O) {
        self.bridge.age(state, now);
        self.bridge.tick(state, now);
        egress::send_generated(&mut self.bridge, out, state, now);
    }
}

/// Runs one finished frame through the bridge and sends what it decided, then whatever the
/// router generated on the way.
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
