//! The egress stage: from a decision to ready-to-send transmits.
//!
//! The earlier stages decide where a frame goes ([`Decision`]); this stage turns that into
//! [`Transmit`]s, each complete: which device, VXLAN endpoint or the IPIP socket, the buffer
//! pieces as they go on the wire (addresses, an 802.1Q tag put in or left out, the rest), the
//! virtio-net header of a frame whose checksum or segmentation is left to the device, the
//! outer headers of a tunnel. It checks each egress port's MTU, takes the VXLAN branch
//! (remote choice and outer headers from [`tunnel`](super::tunnel)), finishes offloads in
//! software for an egress that cannot take them, and drains what the router generated on
//! the way. Every transmit goes to one [`Output`], the only way out of the pipeline; the
//! worker's output writes to devices and sockets, a trace's records them.

use std::net::Ipv4Addr;

use super::datapath::Stages;
use super::decision::{Egress, EgressFrame, Targets};
use super::offload::{complete_checksum, segment, Offload, VNET_HDR_LEN};
use super::policy;
use super::rate::{Conform, Shaper, Waiting};
use super::router::ROUTER_PORT;
use super::trace::{record, Stage};
use super::tunnel::OUTER_LEN;
use super::{
    Decision, DropReason, ForwardingState, Generated, PortCounters, TunnelEndpoint, VlanMember,
};
use crate::tables::{PortId, Timestamp};
use crate::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use crate::wire::vlan::TAG_LEN;

/// One packet ready to go on the wire, as the pipeline hands it to its [`Output`].
#[derive(Debug, Clone, Copy)]
pub enum Transmit<'a> {
    /// A frame for the device of `port`. `vnet`: the virtio-net header of a frame whose
    /// checksum or segmentation the device is to finish; `None` for a finished frame.
    Device {
        port: PortId,
        frame: EgressFrame<'a>,
        vnet: Option<[u8; VNET_HDR_LEN]>,
    },
    /// A VXLAN packet to `remote` through `endpoint`'s socket: the outer IPv4, UDP and VXLAN
    /// headers, then the inner frame as the VXLAN port `port` sends it.
    Vxlan {
        port: PortId,
        endpoint: TunnelEndpoint,
        remote: Ipv4Addr,
        outer: &'a [u8; OUTER_LEN],
        inner: EgressFrame<'a>,
    },
    /// An IPv4 packet for the host's IPIP socket: the outer header, then the inner packet.
    Ipip {
        remote: Ipv4Addr,
        outer: &'a [u8],
        inner: &'a [u8],
    },
}

impl Transmit<'_> {
    /// The bytes this transmit puts on its device or socket, outer headers included.
    pub fn len(&self) -> usize {
        match self {
            Transmit::Device { frame, .. } => frame.len(),
            Transmit::Vxlan { outer, inner, .. } => outer.len() + inner.len(),
            Transmit::Ipip { outer, inner, .. } => outer.len() + inner.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an [`Output`] did with transmits, in packets on the wire (a batching output may
/// report, on one call, what an earlier batch did).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub packets: u64,
    /// Bytes, with what the kernel adds to each packet counted where it adds something.
    pub bytes: u64,
    /// Refused as larger than the route's MTU.
    pub oversized: u64,
    pub errors: u64,
}

impl Sent {
    /// One packet of `bytes` sent.
    pub fn one(bytes: usize) -> Sent {
        Sent {
            packets: 1,
            bytes: bytes as u64,
            ..Sent::default()
        }
    }

    /// One packet that could not be sent.
    pub fn error() -> Sent {
        Sent {
            errors: 1,
            ..Sent::default()
        }
    }

    /// Adds what was sent to a port's (or tunnel's) transmit counters.
    #[inline]
    pub fn count(self, c: &PortCounters) {
        if self.packets != 0 {
            c.tx_packets.add(self.packets);
            c.tx_bytes.add(self.bytes);
        }
        if self.oversized | self.errors != 0 {
            c.tx_oversized.add(self.oversized);
            c.tx_errors.add(self.errors);
        }
    }
}

/// Where the pipeline's transmits go.
pub trait Output {
    /// Whether `port`'s device finishes a frame with `offload` left to do (checksum,
    /// segmentation); when not, the pipeline finishes it in software first.
    fn takes_offloads(&self, port: PortId, offload: &Offload) -> bool;

    /// Sends (or queues) one transmit; returns what went on the wire. A port with no device
    /// sends nothing and reports nothing.
    fn send(&mut self, transmit: Transmit<'_>) -> Sent;
}

/// Sends `frame` as `decision` says, then the router's generated frames.
#[inline]
pub(super) fn send_decision<O: Output>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    decision: Decision<'_>,
    frame: &[u8],
    now: Timestamp,
) {
    match decision {
        Decision::Forward(egress) => send_egress(st, out, state, &egress, frame, now),
        Decision::Reply(egress, built) => {
            send_egress(st, out, state, &egress, built.as_bytes(), now)
        }
        Decision::Tunnel(t) => {
            let inner = &frame[t.start..t.start + t.len];
            send_ipip(st, out, &t.outer, inner, t.remote);
        }
        Decision::Local | Decision::Drop(_) => {}
    }
    send_generated(st, out, state, now);
}

/// Sends every frame the router has generated (replies, ICMP errors, probes, packets released
/// by a resolved neighbour).
#[inline]
pub(super) fn send_generated<O: Output>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    now: Timestamp,
) {
    if st.router.has_generated() {
        send_generated_slow(st, out, state, now);
    }
}

#[inline(never)]
fn send_generated_slow<O: Output>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    now: Timestamp,
) {
    while let Some(generated) = st.router.take_generated() {
        let (vlan, remote, len) = match &generated {
            Generated::Frame { vlan, bytes } | Generated::Reply { vlan, bytes, .. } => {
                (Some(*vlan), None, bytes.len())
            }
            Generated::Ipip { remote, bytes, .. } => (None, Some(*remote), bytes.len()),
        };
        record(&mut st.cx.trace, Stage::L3, "generated", move |s| {
            if let Some(v) = vlan {
                s.with("vlan", v);
            }
            if let Some(r) = remote {
                s.with("remote", r);
            }
            s.with("len", len);
        });
        match &generated {
            Generated::Reply { bytes, .. } => {
                if let Some(egress) =
                    super::router::generated_egress(&st.cx.shared, state, &generated, now)
                {
                    send_egress(st, out, state, &egress, bytes, now);
                }
            }
            Generated::Frame { vlan, bytes } => {
                let egress = super::router::router_egress(&st.cx.shared, state, *vlan, bytes, now);
                if let (true, Targets::One(m)) = (state.policy_active(), egress.targets) {
                    // A routed packet released by its next hop's answer: the receiver's side
                    // (for a frame the router made itself, from its own address: allowed).
                    let path = policy::Path::released(m.port);
                    let checked =
                        policy::check(&st.cx.shared, &mut st.cx.trace, state, path, bytes, 12, now);
                    if let Err(reason) = checked {
                        st.cx.counters.interface(*vlan).drop(reason);
                        st.router.recycle_generated(generated);
                        continue;
                    }
                }
                send_egress(st, out, state, &egress, bytes, now);
            }
            Generated::Ipip {
                remote,
                outer,
                bytes,
                start,
            } => send_ipip(st, out, outer, &bytes[*start..], *remote),
        }
        st.router.recycle_generated(generated);
    }
}

fn send_ipip<O: Output>(
    st: &mut Stages,
    out: &mut O,
    outer: &[u8],
    inner: &[u8],
    remote: Ipv4Addr,
) {
    let sent = out.send(Transmit::Ipip {
        remote,
        outer,
        inner,
    });
    record(&mut st.cx.trace, Stage::Egress, "transmit", move |s| {
        s.with("to", "ipip")
            .with("remote", remote)
            .with("len", outer.len() + inner.len());
    });
    sent.count(&st.cx.counters.ipip);
}

/// Writes `frame` to each egress port of `egress`.
#[inline]
pub(super) fn send_egress<O: Output>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    egress: &Egress<'_>,
    frame: &[u8],
    now: Timestamp,
) {
    // Known unicast, the common case, without the flood's iterator.
    if let Targets::One(member) = egress.targets {
        send_member(st, out, state, egress, member, frame, None, now);
        return;
    }
    for member in egress.ports() {
        send_member(st, out, state, egress, member, frame, None, now);
    }
}

/// Sends `frame` out of one member of its egress set: a finished frame, or (`pending`) one
/// with its checksum or segmentation left to the egress device, with the virtio-net header
/// moved for the VLAN tag the egress adds or removes. A frame larger than the member's MTU
/// is not sent there (counted as `tx_oversized`), as the Linux bridge does.
#[allow(clippy::too_many_arguments)]
#[inline]
fn send_member<O: Output>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    egress: &Egress<'_>,
    member: VlanMember,
    frame: &[u8],
    pending: Option<&Offload>,
    now: Timestamp,
) {
    if state.checks == 0 {
        send_member_as::<O, false>(st, out, state, egress, member, frame, pending, now);
    } else {
        send_member_checked(st, out, state, egress, member, frame, pending, now);
    }
}

/// [`send_member`] with policy and rate limits in force somewhere in the switch.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn send_member_checked<O: Output>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    egress: &Egress<'_>,
    member: VlanMember,
    frame: &[u8],
    pending: Option<&Offload>,
    now: Timestamp,
) {
    send_member_as::<O, true>(st, out, state, egress, member, frame, pending, now);
}

/// [`send_member`], compiled with (`CHECKS`) or without the policy and shaping checks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn send_member_as<O: Output, const CHECKS: bool>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    egress: &Egress<'_>,
    member: VlanMember,
    frame: &[u8],
    pending: Option<&Offload>,
    now: Timestamp,
) {
    if CHECKS && state.policy_active() && flood_denied(st, state, egress, member, frame, now) {
        return;
    }
    let out_frame = egress.frame_for(member, frame);
    let mtu = state.port(member.port).map_or(u16::MAX, |p| p.mtu);
    let tag = if member.tagged { TAG_LEN } else { 0 };
    let max_len = mtu as usize + ETHERNET_HEADER_LEN + tag;
    // Where the EtherType moves to: a tag inserted or removed shifts the L3 header.
    let delta = (ETHERNET_HEADER_LEN - 2 + tag) as isize - egress.inner_offset as isize;
    let wire_len = match pending {
        Some(o) => (o.wire_len(frame) as isize + delta) as usize,
        None => out_frame.len(),
    };
    if wire_len > max_len {
        st.cx.counters.port(member.port).tx_oversized.add(1);
        record(&mut st.cx.trace, Stage::Egress, "oversized", move |s| {
            s.with("port", port_name(state, member.port))
                .with("len", wire_len)
                .with("max", max_len);
        });
        return;
    }
    if pending.is_none() && state.vxlan_port(member.port).is_some() {
        encap(st, out, state, member.port, frame, &out_frame, now);
        return;
    }
    let vnet = pending.map(|o| o.header_moved(delta));
    if CHECKS && state.rate_active() {
        if let Some(shaper) = state
            .rate_limits(member.port)
            .and_then(|r| r.shape.as_ref())
        {
            let bytes = pending.map_or(out_frame.len(), |o| o.wire_bytes(frame));
            if shaped(st, member.port, shaper, bytes, &out_frame, vnet, now) {
                return;
            }
        }
    }
    let sent = out.send(Transmit::Device {
        port: member.port,
        frame: out_frame,
        vnet,
    });
    if let Some(t) = st.cx.trace.as_deref_mut() {
        let tag = out_frame.tag.map(|_| egress.vlan);
        let len = out_frame.len();
        transmit_step(
            t,
            state,
            member.port,
            egress.vlan,
            tag,
            len,
            pending.is_some(),
        );
    }
    sent.count(st.cx.counters.port(member.port));
}

/// The shaping of a frame of `bytes` on the wire to `port`: false to send it now; true when
/// it waits in the worker's queue for the port (or, the queue full, is dropped and counted).
#[inline(never)]
fn shaped(
    st: &mut Stages,
    port: PortId,
    shaper: &Shaper,
    bytes: usize,
    frame: &EgressFrame<'_>,
    vnet: Option<[u8; VNET_HDR_LEN]>,
    now: Timestamp,
) -> bool {
    let at = match shaper
        .bucket
        .take(bytes as u64, now, Some(shaper.latency_ns))
    {
        // Within the rate, and nothing of this port waits before it here.
        Conform::Now if !st.queues.waits(port) => return false,
        Conform::Now => 0,
        Conform::At(at) => at,
        Conform::No => {
            st.cx.counters.port(port).drop(DropReason::RateLimited);
            record(&mut st.cx.trace, Stage::Qos, "drop", move |s| {
                s.with("reason", "rate_limited").with("len", bytes);
            });
            return true;
        }
    };
    let mut buf = st.queues.buffer();
    buf.extend_from_slice(frame.addresses);
    if let Some(tag) = &frame.tag {
        buf.extend_from_slice(tag);
    }
    buf.extend_from_slice(frame.rest);
    st.queues.push(Waiting {
        port,
        at_ns: at,
        bytes: buf,
        vnet,
    });
    record(&mut st.cx.trace, Stage::Qos, "shaped", move |s| {
        s.with("len", bytes).with("until_ms", at / 1_000_000);
    });
    true
}

/// The policy stage for one member of a flood (a frame to one port was checked when it was
/// decided): whether the member may not have it. A denial counts on the ingress port (on the
/// member for a flood from the router).
#[inline(never)]
fn flood_denied(
    st: &mut Stages,
    state: &ForwardingState,
    egress: &Egress<'_>,
    member: VlanMember,
    frame: &[u8],
    now: Timestamp,
) -> bool {
    let Targets::Flood { except, .. } = egress.targets else {
        return false;
    };
    let from = (except != ROUTER_PORT).then_some(except);
    if !policy::applies(state, from, Some(member.port)) {
        return false;
    }
    let path = policy::Path::flood_member(from, member.port);
    match policy::check(
        &st.cx.shared,
        &mut st.cx.trace,
        state,
        path,
        frame,
        egress.inner_offset,
        now,
    ) {
        Ok(()) => false,
        Err(reason) => {
            st.cx
                .counters
                .port(from.unwrap_or(member.port))
                .drop(reason);
            true
        }
    }
}

/// Whether a frame with `offload` left to do may go out of `port` as it is: not into a
/// tunnel, and only to a device that finishes it.
fn takes_offloads<O: Output>(
    out: &O,
    state: &ForwardingState,
    port: PortId,
    offload: &Offload,
) -> bool {
    state.vxlan_port(port).is_none() && out.takes_offloads(port, offload)
}

/// Switches a frame whose checksum or TCP segmentation is still to do (`offload`) without
/// doing it, where that is possible: it is switched whole, members whose device takes
/// offloads get it as it is (one write for up to 64 KiB), the others (VXLAN, ports with
/// offloads off) get the finished frames, cut here in software. Returns false, having done
/// nothing, when the frame is for the router: then the caller finishes the offloads first.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_offloaded<O: Output>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    port: PortId,
    frame: &mut [u8],
    offload: &Offload,
    scratch: &mut Vec<u8>,
    now: Timestamp,
) -> bool {
    let Some(decision) = st.decide_offloaded(state, port, frame, offload, now) else {
        return false;
    };
    let Decision::Forward(egress) = decision else {
        // The router cut what it could not send whole into generated frames.
        send_decision(st, out, state, decision, frame, now);
        return true;
    };
    let mut finish = false;
    for member in egress.ports() {
        if takes_offloads(out, state, member.port, offload) {
            send_member(st, out, state, &egress, member, frame, Some(offload), now);
        } else {
            finish = true;
        }
    }
    if !finish {
        send_generated(st, out, state, now);
        return true;
    }
    let mut emit = |done: &mut [u8]| {
        for member in egress.ports() {
            if !takes_offloads(out, state, member.port, offload) {
                send_member(st, out, state, &egress, member, done, None, now);
            }
        }
    };
    let result = match (offload.gso_size, offload.csum) {
        (Some(_), _) => segment(frame, offload, scratch, emit),
        (None, Some((start, offset))) => {
            scratch.clear();
            scratch.extend_from_slice(frame);
            complete_checksum(scratch, start, offset).map(|()| emit(scratch))
        }
        (None, None) => {
            emit(frame);
            Ok(())
        }
    };
    if let Err(reason) = result {
        st.cx.counters.port(port).drop(reason);
    }
    send_generated(st, out, state, now);
    true
}

/// Sends a frame out of a VXLAN port: to the remote its destination is known behind, or to
/// every remote of the flood list (head-end replication). The port counts frames handed to
/// the tunnel; the tunnel counts outer packets sent. An outer packet too large for the
/// underlay is not fragmented: the kernel refuses it and it counts as `tx_oversized` on the
/// tunnel.
fn encap<O: Output>(
    st: &mut Stages,
    out: &mut O,
    state: &ForwardingState,
    port: PortId,
    frame: &[u8],
    out_frame: &EgressFrame<'_>,
    now: Timestamp,
) {
    let Some(endpoint) = state.vxlan_port(port).map(|vx| vx.endpoint) else {
        return;
    };
    let len = out_frame.len();
    // The remotes sent to, kept only for a trace.
    let mut remotes: Option<Vec<Ipv4Addr>> = st.cx.trace.is_some().then(Vec::new);
    let Stages { cx, tunnel, .. } = st;
    tunnel.encapsulate(
        cx,
        state,
        port,
        frame,
        len,
        now,
        |remote, outer, counters| {
            let c = counters.port(port);
            c.tx_packets.add(1);
            c.tx_bytes.add(len as u64);
            let sent = out.send(Transmit::Vxlan {
                port,
                endpoint,
                remote,
                outer,
                inner: *out_frame,
            });
            sent.count(&counters.tunnel);
            if let Some(r) = &mut remotes {
                r.push(remote);
            }
        },
    );
    if let (Some(t), Some(remotes)) = (st.cx.trace.as_deref_mut(), remotes) {
        for remote in remotes {
            t.step(Stage::Egress, "transmit")
                .with("to", "vxlan")
                .with("port", port_name(state, port))
                .with("remote", remote)
                .with("len", super::tunnel::OUTER_LEN + len);
        }
    }
}

/// The trace step of a frame sent to a port's device.
#[cold]
#[inline(never)]
fn transmit_step(
    t: &mut super::Trace,
    state: &ForwardingState,
    port: PortId,
    vlan: crate::wire::VlanId,
    tag: Option<crate::wire::VlanId>,
    len: usize,
    pending: bool,
) {
    let s = t.step(Stage::Egress, "transmit");
    s.with("to", "port")
        .with("port", port_name(state, port))
        .with("vlan", vlan);
    match tag {
        Some(v) => s.with("tag", v),
        None => s.with("tag", "none"),
    };
    s.with("len", len);
    if pending {
        s.with("offload", "left to the device");
    }
}

/// A port's name, for a trace.
fn port_name(state: &ForwardingState, port: PortId) -> &str {
    state.port(port).map_or("?", |p| p.name.as_str())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::nat::tests::tcp;
    use crate::pipeline::{Pipeline, PortMode, PortState, RxMeta, VlanSet, VxlanPort};
    use crate::wire::builder::ethernet_frame;
    use crate::wire::{EtherType, EthernetAddress, VlanId};

    const NOW: Timestamp = Timestamp::from_secs(1);
    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
    const ENDPOINT: TunnelEndpoint = TunnelEndpoint {
        local: Ipv4Addr::new(192, 168, 1, 1),
        port: 4789,
    };

    /// What an output was handed: the port (or remote), the bytes, the virtio-net header.
    #[derive(Default)]
    struct Recorder {
        takes_offloads: bool,
        sent: Vec<(String, Vec<u8>, Option<[u8; VNET_HDR_LEN]>)>,
    }

    impl Output for Recorder {
        fn takes_offloads(&self, _port: PortId, _offload: &Offload) -> bool {
            self.takes_offloads
        }

        fn send(&mut self, t: Transmit<'_>) -> Sent {
            let len = t.len();
            self.sent.push(match t {
                Transmit::Device { port, frame, vnet } => {
                    (format!("port{}", port.0), frame.to_vec(), vnet)
                }
                Transmit::Vxlan {
                    remote,
                    outer,
                    inner,
                    ..
                } => {
                    let mut b = outer.to_vec();
                    b.extend(inner.to_vec());
                    (format!("vxlan {remote}"), b, None)
                }
                Transmit::Ipip {
                    remote,
                    outer,
                    inner,
                } => (format!("ipip {remote}"), [outer, inner].concat(), None),
            });
            Sent::one(len)
        }
    }

    fn vlan(v: u16) -> VlanId {
        VlanId::new(v).unwrap()
    }

    /// Port 0: access VLAN 10, MTU 9000 (the sender). Port 1: access, MTU 1500. Port 2: a
    /// trunk carrying VLAN 10 tagged. Port 3: VXLAN VNI 42 flooding to two VTEPs.
    fn state() -> ForwardingState {
        let port = |name: &str, mode: PortMode, mtu| {
            Some(PortState {
                name: name.into(),
                mode,
                mtu,
                max_macs: u32::MAX,
            })
        };
        let trunk = PortMode::Trunk {
            allowed: VlanSet::from_iter([vlan(10)]),
            native: None,
        };
        let mut s = ForwardingState::with_ports(vec![
            port("p0", PortMode::Access(vlan(10)), 9000),
            port("p1", PortMode::Access(vlan(10)), 1500),
            port("p2", trunk, 9000),
            port("vx", PortMode::Access(vlan(10)), 9000),
        ]);
        s.vxlan = vec![
            None,
            None,
            None,
            Some(VxlanPort {
                vni: 42,
                endpoint: ENDPOINT,
                remotes: vec![Ipv4Addr::new(192, 168, 1, 2), Ipv4Addr::new(192, 168, 1, 3)],
                learning: true,
                allow: Vec::new(),
                ttl: 64,
            }),
        ];
        s.vni_ports.insert((ENDPOINT, 42), PortId(3));
        s
    }

    fn send(p: &mut Pipeline, s: &ForwardingState, frame: &[u8], meta: RxMeta, out: &mut Recorder) {
        let mut f = frame.to_vec();
        let meta = RxMeta {
            len: f.len(),
            ..meta
        };
        p.receive(s, PortId(0), &mut f, &meta, NOW, out);
    }

    #[test]
    fn a_flood_goes_to_each_member_as_it_sends_within_its_mtu() {
        let s = state();
        let mut p = Pipeline::new(&s, Arc::default());
        let mut out = Recorder::default();
        let small = ethernet_frame(
            EthernetAddress::BROADCAST,
            A,
            None,
            EtherType::Ipv4,
            &[0x45; 100],
        );
        send(&mut p, &s, &small, RxMeta::default(), &mut out);
        let to: Vec<&str> = out.sent.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(
            to,
            ["port1", "port2", "vxlan 192.168.1.2", "vxlan 192.168.1.3"]
        );
        // The access port untagged, the trunk with the VLAN's tag, the tunnel with its outer
        // headers (VNI 42) around the untagged frame.
        assert_eq!(out.sent[0].1, small);
        assert_eq!(&out.sent[1].1[12..16], &[0x81, 0x00, 0x00, 10]);
        assert_eq!(out.sent[1].1.len(), small.len() + 4);
        assert_eq!(&out.sent[2].1[32..35], &[0, 0, 42]);
        assert_eq!(&out.sent[2].1[OUTER_LEN..], &small[..]);
        let c = p.counters();
        assert_eq!(c.port(PortId(1)).tx_packets.get(), 1);
        assert_eq!(c.port(PortId(3)).tx_packets.get(), 2);
        assert_eq!(c.tunnel.tx_packets.get(), 2);

        // Too big for port 1's MTU: not sent there, counted; the others still get it.
        out.sent.clear();
        let big = ethernet_frame(
            EthernetAddress::BROADCAST,
            A,
            None,
            EtherType::Ipv4,
            &[0x45; 2000],
        );
        send(&mut p, &s, &big, RxMeta::default(), &mut out);
        assert_eq!(out.sent.len(), 3);
        assert!(out.sent.iter().all(|(t, _, _)| t != "port1"));
        assert_eq!(p.counters().port(PortId(1)).tx_oversized.get(), 1);
    }

    /// A 3000-byte TCP super-frame from port 0 with its checksum and segmentation (MSS
    /// 1000) left to do, flooded.
    fn super_frame() -> (Vec<u8>, Offload) {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut ip = tcp(a, b, 0x10, 1, 1, 512, &[], &payload);
        let pseudo = crate::wire::checksum::pseudo_header_v4(
            a.ip(),
            b.ip(),
            crate::wire::IpProtocol::Tcp,
            (ip.len() - 20) as u32,
        );
        ip[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let frame = ethernet_frame(EthernetAddress::BROADCAST, A, None, EtherType::Ipv4, &ip);
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = 1; // NEEDS_CSUM
        h[1] = 1; // GSO_TCPV4
        h[2..4].copy_from_slice(&54u16.to_le_bytes());
        h[4..6].copy_from_slice(&1000u16.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        (frame, Offload::from_vnet_hdr(&h))
    }

    #[test]
    fn a_super_frame_goes_whole_to_devices_that_finish_it_and_cut_elsewhere() {
        let s = state();
        let (frame, offload) = super_frame();
        let meta = RxMeta {
            offload,
            ..RxMeta::default()
        };
        for takes in [true, false] {
            let mut p = Pipeline::new(&s, Arc::default());
            let mut out = Recorder {
                takes_offloads: takes,
                ..Recorder::default()
            };
            send(&mut p, &s, &frame, meta, &mut out);
            let count = |to: &str| out.sent.iter().filter(|(t, _, _)| t == to).count();
            // The tunnel always gets segments, three per remote.
            assert_eq!(count("vxlan 192.168.1.2"), 3, "takes offloads: {takes}");
            for port in ["port1", "port2"] {
                let sent: Vec<_> = out.sent.iter().filter(|(t, _, _)| t == port).collect();
                if takes {
                    // Whole, with its virtio-net header; the trunk's tag moves the checksum
                    // start by four bytes.
                    assert_eq!(sent.len(), 1, "{port}");
                    let vnet = sent[0].2.expect("a virtio-net header");
                    let start = u16::from_le_bytes([vnet[6], vnet[7]]);
                    assert_eq!(start, if port == "port2" { 38 } else { 34 }, "{port}");
                } else {
                    assert_eq!(sent.len(), 3, "{port}");
                    assert!(sent
                        .iter()
                        .all(|(_, f, v)| v.is_none() && f.len() <= 1054 + 4));
                }
            }
        }
    }
}
