//! The L3 stage: router interfaces, forwarding by longest prefix match, next-hop resolution,
//! ICMP errors and IPIP.
//!
//! A router interface sits on a VLAN like one more member of it. The L2 stage hands a frame
//! here when it is addressed to the interface's MAC, or is an ARP request or neighbour
//! solicitation for one of its addresses ([`for_router`]). Then:
//!
//! - ARP and neighbour discovery for the interface's addresses are answered, and what they
//!   say about the sender goes into the neighbour table ([`local`]).
//! - Packets to the router's own addresses: ICMP echo is answered, UDP gets port unreachable,
//!   anything else is counted and dropped.
//! - Everything else is routed: header checks, martian filter, FIB lookup, TTL / hop limit
//!   (ICMP time exceeded), egress MTU (ICMP fragmentation needed / packet too big, or IPv4
//!   fragmentation without DF), TTL decrement with an incremental checksum update, and then
//!   either the next hop's MAC from the neighbour table (the frame is rewritten in place and
//!   switched in the egress VLAN) or IPIP encapsulation towards the route's host.
//! - A next hop not yet resolved: the packet waits in the neighbour entry's bounded queue
//!   while ARP / ND asks; when the answer comes the queue is released, when it does not the
//!   senders get ICMP host unreachable.
//!
//! What the router originates (replies, ICMP errors, probes, released packets) goes into a
//! queue of [`Generated`] frames that the egress stage drains after each frame
//! ([`Router::take_generated`]); buffers come from a small pool and go back to it
//! ([`Router::recycle`]), so a steady state allocates nothing.
//!
//! The stage's own state is a [`Router`]; it works on a frame as an [`L3`], the router
//! together with the pipeline's [`Context`] (the shared tables, counters, trace).

pub mod dhcp;
mod ipip;
mod local;
mod nat;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};

pub use ipip::IpipEgress;
pub(crate) use nat::Balancer;

use super::bridge::lookup_mac;
use super::context::Context;
use super::decision::{Egress, Targets};
use super::fragment::fragment_ipv4;
use super::icmp::{self, IcmpRateLimit, Icmpv4Error, Icmpv6Error};
use super::offload::{complete_checksum, segment, Offload};
use super::policy;
use super::routing::{NextHop, Route, RoutingState};
use super::shared::SharedTables;
use super::trace::{record, Stage, Trace};
use super::{Decision, DropReason, ForwardingState, VlanMember, WorkerCounters};
use crate::tables::{NeighKey, NeighLookup, PortId, Resolve, Timestamp};
use crate::wire::{EtherType, EthernetAddress, Ipv4Packet, VlanId};

/// The pseudo ingress port of frames the router sends: floods from it reach every member.
pub const ROUTER_PORT: PortId = PortId(u16::MAX);

/// Room in front of an IP packet the router builds, for the Ethernet header.
pub(crate) const L2: usize = 14;
/// Largest ICMPv4 error (RFC 1812 4.3.2.3).
const ICMPV4_ERROR_MAX: usize = 576;
/// Largest ICMPv6 error (RFC 4443 2.4(c)).
const ICMPV6_ERROR_MAX: usize = 1280;
/// Buffers kept for reuse.
const POOL_MAX: usize = 256;

/// A frame or packet the router originates, for the worker to send.
#[derive(Debug)]
pub enum Generated {
    /// An untagged Ethernet frame to switch into `vlan`.
    Frame { vlan: VlanId, bytes: Vec<u8> },
    /// An untagged Ethernet frame of `vlan` for one port, whatever the MAC table says: an
    /// answer to the port that asked (a DHCP reply).
    Reply {
        vlan: VlanId,
        to: VlanMember,
        bytes: Vec<u8>,
    },
    /// An IPv4 packet (`bytes[start..]`) to send through the IPIP socket behind `outer`.
    Ipip {
        remote: Ipv4Addr,
        outer: [u8; crate::wire::ipip::OUTER_LEN],
        bytes: Vec<u8>,
        start: usize,
    },
}

/// One worker's router: what it has to send, and the buffers it builds that in. (The
/// neighbour table and conntrack are shared by the workers, in the [`Context`].)
pub struct Router {
    generated: VecDeque<Generated>,
    pool: Vec<Vec<u8>>,
    icmp_limit: IcmpRateLimit,
    scratch: Vec<u8>,
    released: Vec<Vec<u8>>,
    /// The offloads still to do on the frame being routed (a TCP super-frame, a partial
    /// checksum), while one is routed whole.
    pub(super) offload: Option<Offload>,
    /// The port the frame being routed came in on (for the sender's side of the policy
    /// stage, checked here for a packet that waits on its next hop or is fragmented, and for
    /// the DHCP server, answering a renewal sent to the router's address).
    pub(super) in_port: Option<PortId>,
}

/// The router at work on a frame: its own state and the pipeline's [`Context`], split into
/// its parts (so that a guard on a shared table can be held across calls on `self`).
pub struct L3<'a> {
    pub(super) r: &'a mut Router,
    pub(super) shared: &'a SharedTables,
    pub(super) counters: &'a WorkerCounters,
    pub(super) trace: &'a mut Option<Box<Trace>>,
    ident: &'a mut u16,
}

impl Router {
    pub fn new() -> Router {
        Router {
            generated: VecDeque::new(),
            pool: Vec::new(),
            icmp_limit: IcmpRateLimit::default(),
            scratch: Vec::new(),
            released: Vec::new(),
            offload: None,
            in_port: None,
        }
    }

    /// The router at work, with the pipeline's context.
    #[inline]
    pub fn with<'a>(&'a mut self, cx: &'a mut Context) -> L3<'a> {
        let Context {
            shared,
            counters,
            trace,
            ident,
        } = cx;
        L3 {
            r: self,
            shared,
            counters,
            trace,
            ident,
        }
    }

    /// Whether the router originated frames still to send.
    #[inline]
    pub fn has_generated(&self) -> bool {
        !self.generated.is_empty()
    }

    /// The next frame the router originated, if any.
    #[inline]
    pub fn take_generated(&mut self) -> Option<Generated> {
        self.generated.pop_front()
    }

    /// Returns a sent frame's buffer to the pool.
    pub fn recycle_generated(&mut self, generated: Generated) {
        match generated {
            Generated::Frame { bytes, .. }
            | Generated::Reply { bytes, .. }
            | Generated::Ipip { bytes, .. } => self.recycle(bytes),
        }
    }

    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(2048));
        b.clear();
        b
    }

    fn recycle(&mut self, b: Vec<u8>) {
        if self.pool.len() < POOL_MAX {
            self.pool.push(b);
        }
    }
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

/// A route as a trace names it: `route` (prefix/len), `via`, `vlan`, `kind`.
fn describe_route(s: &mut super::Step, r: &Route) {
    s.with("route", format_args!("{}/{}", r.prefix, r.len));
    match r.next_hop {
        NextHop::Connected { vlan } => s.with("kind", "connected").with("vlan", vlan),
        NextHop::Gateway { vlan, via } => s
            .with("kind", "gateway")
            .with("via", via)
            .with("vlan", vlan),
        NextHop::Ipip { remote, .. } => s.with("kind", "ipip").with("remote", remote),
        NextHop::Unreachable => s.with("kind", "unreachable"),
    };
}

fn ethertype_name(t: EtherType) -> &'static str {
    match t {
        EtherType::Arp => "arp",
        EtherType::Ipv4 => "ipv4",
        EtherType::Ipv6 => "ipv6",
        _ => "other",
    }
}

/// What the router claims of a frame classified into a VLAN ([`for_router`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Not the router's: switch it.
    No,
    /// Addressed to the interface's MAC, or an ARP request / neighbour solicitation for one
    /// of its addresses: route it.
    Route,
    /// A DHCP client's broadcast on a VLAN whose interface serves DHCP: answer it
    /// ([`dhcp`]).
    Dhcp,
}

/// What the router of `vlan` claims of a frame: one addressed to the interface's MAC, an ARP
/// request / neighbour solicitation for one of its addresses, or a DHCP client's broadcast
/// when it serves DHCP.
#[inline]
pub(super) fn for_router(
    routing: &RoutingState,
    vlan: VlanId,
    frame: &[u8],
    inner_offset: usize,
) -> Claim {
    let Some(iface) = routing.interface(vlan) else {
        return Claim::No;
    };
    let dst = &frame[..6];
    if dst == iface.mac.as_bytes() {
        // A DHCP message to the MAC (a renewal, to the server's address) is routed to the
        // router's own address, which answers it (`local_v4`): no check here, on the path
        // of every routed frame.
        return Claim::Route;
    }
    if dst[0] & 1 == 0 {
        return Claim::No;
    }
    if local::is_resolution_for(iface, frame, inner_offset) {
        Claim::Route
    } else if iface.dhcp.is_some() && dhcp::is_client_message(frame, inner_offset) {
        Claim::Dhcp
    } else {
        Claim::No
    }
}

impl L3<'_> {
    /// The IPv4 identification for the next outer header (see [`Context::next_ip_ident`]).
    fn next_ip_ident(&mut self) -> u16 {
        super::context::next_ident(self.ident)
    }

    /// The L3 stage for a frame [`for_router`] claimed; `inner_offset` is where its EtherType
    /// is.
    pub fn route_in<'s>(
        &mut self,
        state: &'s ForwardingState,
        vlan: VlanId,
        inner_offset: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let c = self.counters.interface(vlan);
        c.rx_packets.add(1);
        c.rx_bytes.add(frame.len() as u64);
        let ethertype = EtherType::from(u16::from_be_bytes([
            frame[inner_offset],
            frame[inner_offset + 1],
        ]));
        record(self.trace, Stage::L3, "received", move |s| {
            s.with("vlan", vlan)
                .with("ethertype", ethertype_name(ethertype));
        });
        let decision = match ethertype {
            EtherType::Arp => self.arp_in(state, vlan, inner_offset, frame, now),
            EtherType::Ipv4 => self.ipv4_in(state, Some(vlan), inner_offset, frame, now),
            EtherType::Ipv6 => self.ipv6_in(state, vlan, inner_offset, frame, now),
            _ => Decision::Drop(DropReason::L3Unsupported),
        };
        if let Decision::Drop(reason) = decision {
            self.counters.interface(vlan).drop(reason);
        }
        decision
    }

    /// An IPv4 packet at `frame[off + 2..]`, arrived on `in_vlan` (or from a tunnel).
    pub fn ipv4_in<'s>(
        &mut self,
        state: &'s ForwardingState,
        in_vlan: Option<VlanId>,
        off: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let l3 = off + 2;
        let (src, dst, total) = match check_ipv4(&frame[l3..]) {
            Ok(v) => v,
            Err(r) => return Decision::Drop(r),
        };
        let routing = &*state.routing;
        if martian_source_v4(src) || routing.local.contains_key(&IpAddr::V4(src)) {
            return Decision::Drop(DropReason::Martian);
        }
        if dst.is_loopback() || dst.is_unspecified() || dst.is_broadcast() || dst.is_multicast() {
            return Decision::Drop(DropReason::Martian);
        }
        let mut dst = dst;
        if state.nat.is_active() || self.shared.tracks_any() {
            if let Err(reason) = self.nat_in(state, in_vlan, l3, total, frame, now) {
                return Decision::Drop(reason);
            }
            dst = Ipv4Addr::from([
                frame[l3 + 16],
                frame[l3 + 17],
                frame[l3 + 18],
                frame[l3 + 19],
            ]);
        }
        if routing.local.contains_key(&IpAddr::V4(dst)) {
            return self.local_v4(state, in_vlan, l3, total, frame, now);
        }
        self.forward_v4(state, in_vlan, off, total, frame, now)
    }

    fn forward_v4<'s>(
        &mut self,
        state: &'s ForwardingState,
        in_vlan: Option<VlanId>,
        off: usize,
        total: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let l3 = off + 2;
        let dst = Ipv4Addr::from([
            frame[l3 + 16],
            frame[l3 + 17],
            frame[l3 + 18],
            frame[l3 + 19],
        ]);
        let routing = &*state.routing;
        let found = routing.lookup(IpAddr::V4(dst));
        record(self.trace, Stage::L3, "route", move |s| {
            s.with("dst", dst);
            match found {
                Some(r) => describe_route(s, r),
                None => {
                    s.with("route", "none");
                }
            }
        });
        let Some(route) = found else {
            self.icmpv4_error(
                state,
                in_vlan,
                l3,
                total,
                frame,
                Icmpv4Error::NetUnreachable,
                now,
            );
            return Decision::Drop(DropReason::NoRoute);
        };
        let (out_vlan, next_hop) = match route.next_hop {
            NextHop::Connected { vlan } => (vlan, IpAddr::V4(dst)),
            NextHop::Gateway { vlan, via } => (vlan, via),
            NextHop::Ipip {
                remote,
                local,
                mtu,
                ttl,
            } => {
                let tunnel = ipip::Tunnel {
                    remote,
                    local,
                    mtu,
                    ttl,
                };
                if self.r.offload.is_some() {
                    // A raw socket takes no super-frame: each segment is encapsulated (or
                    // refused, as a frame would be: a drop the caller counts).
                    let mut result = Decision::Local;
                    for mut piece in self.finish_offloads(&frame[..l3 + total]) {
                        let len = piece.len() - l3;
                        match self.ipip_out(state, in_vlan, off, len, &mut piece, tunnel, now) {
                            Decision::Tunnel(t) => self.r.generated.push_back(Generated::Ipip {
                                remote: t.remote,
                                outer: t.outer,
                                bytes: piece,
                                start: t.start,
                            }),
                            d => {
                                if let Decision::Drop(r) = d {
                                    result = Decision::Drop(r);
                                }
                                self.r.recycle(piece);
                            }
                        }
                    }
                    return result;
                }
                return self.ipip_out(state, in_vlan, off, total, frame, tunnel, now);
            }
            NextHop::Unreachable => {
                self.icmpv4_error(
                    state,
                    in_vlan,
                    l3,
                    total,
                    frame,
                    Icmpv4Error::HostUnreachable,
                    now,
                );
                return Decision::Drop(DropReason::NoRoute);
            }
        };
        if frame[l3 + 8] <= 1 {
            self.icmpv4_error(
                state,
                in_vlan,
                l3,
                total,
                frame,
                Icmpv4Error::TimeExceeded,
                now,
            );
            return Decision::Drop(DropReason::TtlExceeded);
        }
        let Some(iface) = routing.interface(out_vlan) else {
            return Decision::Drop(DropReason::NoRoute);
        };
        let mtu = usize::from(iface.mtu);
        // A super-frame leaves as segments: they must fit, not the whole.
        let wire_total = self.r.offload.map_or(total, |o| {
            o.wire_len(&frame[..l3 + total]).saturating_sub(l3)
        });
        if wire_total > mtu {
            if frame[l3 + 6] & 0x40 != 0 {
                self.icmpv4_error(
                    state,
                    in_vlan,
                    l3,
                    total,
                    frame,
                    Icmpv4Error::FragNeeded { mtu: iface.mtu },
                    now,
                );
                return Decision::Drop(DropReason::FragNeeded);
            }
            if let Err(reason) = self.check_policy_sender(state, frame, off, now) {
                return Decision::Drop(reason);
            }
            Ipv4Packet::new_unchecked(&mut frame[l3..l3 + total]).decrement_ttl();
            if self.r.offload.is_some() {
                let mut result = Decision::Local;
                for piece in self.finish_offloads(&frame[..l3 + total]) {
                    let d = self.fragment_out(state, out_vlan, next_hop, &piece[l3..], now);
                    if let Decision::Drop(r) = d {
                        result = Decision::Drop(r);
                    }
                    self.r.recycle(piece);
                }
                return result;
            }
            return self.fragment_out(state, out_vlan, next_hop, &frame[l3..l3 + total], now);
        }
        Ipv4Packet::new_unchecked(&mut frame[l3..l3 + total]).decrement_ttl();
        let ttl = frame[l3 + 8];
        record(self.trace, Stage::L3, "ttl", move |s| {
            s.with("ttl", ttl);
        });
        self.output(state, out_vlan, next_hop, off, l3 + total, frame, now)
    }

    /// Sends a routed frame (its IP packet ending at `end`) to `next_hop` on `out_vlan`:
    /// rewritten in place when the neighbour is known, else queued behind its resolution.
    #[allow(clippy::too_many_arguments)]
    fn output<'s>(
        &mut self,
        state: &'s ForwardingState,
        out_vlan: VlanId,
        next_hop: IpAddr,
        off: usize,
        end: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let Some(iface) = state.routing.interface(out_vlan) else {
            return Decision::Drop(DropReason::NoRoute);
        };
        let key = NeighKey {
            vlan: out_vlan,
            ip: next_hop,
        };
        let mut found = self.shared.neighbours().lookup(key, now);
        if let NeighLookup::Pending { probe: true } = found {
            // A static neighbour resolves at once (the probe confirms it, sending nothing).
            if self.pin_static(state, key, now) {
                found = self.shared.neighbours().lookup(key, now);
            }
        }
        record(self.trace, Stage::L3, "neighbour", move |s| {
            s.with("vlan", out_vlan).with("next_hop", next_hop);
            match found {
                NeighLookup::Known { mac, .. } => s.with("result", "resolved").with("mac", mac),
                NeighLookup::Pending { .. } => s.with("result", "resolving"),
                NeighLookup::Failed => s.with("result", "failed"),
                NeighLookup::TableFull => s.with("result", "table_full"),
            };
            if state.neighbours.contains_key(&(out_vlan, next_hop)) {
                s.with("table", "static");
            }
        });
        match found {
            NeighLookup::Known { mac, probe } => {
                if probe {
                    self.probe(state, key, Some(mac), now);
                }
                frame[..6].copy_from_slice(mac.as_bytes());
                frame[6..12].copy_from_slice(iface.mac.as_bytes());
                let c = self.counters.interface(out_vlan);
                c.tx_packets.add(1);
                c.tx_bytes.add((end - off + 12) as u64);
                Decision::Forward(Egress {
                    vlan: out_vlan,
                    inner_offset: off,
                    targets: l2_targets(self.shared, state, out_vlan, mac, now),
                })
            }
            NeighLookup::Pending { probe } => {
                if let Err(reason) = self.check_policy_sender(state, frame, off, now) {
                    return Decision::Drop(reason);
                }
                if probe {
                    self.probe(state, key, None, now);
                }
                if self.r.offload.is_some() {
                    // Queued frames leave as they are: finish them first.
                    let mut result = Decision::Local;
                    for piece in self.finish_offloads(&frame[..end]) {
                        let mut buf = self.r.buffer();
                        buf.extend_from_slice(&piece[..6]);
                        buf.extend_from_slice(iface.mac.as_bytes());
                        buf.extend_from_slice(&piece[off..]);
                        self.r.recycle(piece);
                        let queued = self.shared.neighbours().enqueue(&key, buf);
                        if let Err(b) = queued {
                            self.r.recycle(b);
                            result = Decision::Drop(DropReason::NeighbourQueueFull);
                        }
                    }
                    return result;
                }
                let mut buf = self.r.buffer();
                buf.extend_from_slice(&frame[..6]);
                buf.extend_from_slice(iface.mac.as_bytes());
                buf.extend_from_slice(&frame[off..end]);
                let queued = self.shared.neighbours().enqueue(&key, buf);
                match queued {
                    Ok(()) => Decision::Local,
                    Err(b) => {
                        self.r.recycle(b);
                        Decision::Drop(DropReason::NeighbourQueueFull)
                    }
                }
            }
            NeighLookup::Failed => {
                let l3 = off + 2;
                let total = end - l3;
                match frame[l3] >> 4 {
                    4 => self.icmpv4_error(
                        state,
                        None,
                        l3,
                        total,
                        frame,
                        Icmpv4Error::HostUnreachable,
                        now,
                    ),
                    _ => self.send_icmpv6_error(
                        state,
                        None,
                        &frame[l3..end],
                        Icmpv6Error::AddressUnreachable,
                        now,
                    ),
                }
                Decision::Drop(DropReason::NeighbourFailed)
            }
            NeighLookup::TableFull => Decision::Drop(DropReason::NeighbourTableFull),
        }
    }

    /// The sender's side of the policy stage for a routed packet (its EtherType at
    /// `frame[off..]`) that leaves later than now: the receiver's side is checked when it
    /// does.
    fn check_policy_sender(
        &mut self,
        state: &ForwardingState,
        frame: &[u8],
        off: usize,
        now: Timestamp,
    ) -> Result<(), DropReason> {
        match self.r.in_port {
            Some(from) if policy::applies(state, Some(from), None) => policy::check(
                self.shared,
                self.trace,
                state,
                policy::Path::sender(from),
                frame,
                off,
                now,
            ),
            _ => Ok(()),
        }
    }

    /// Sends an untagged frame (source MAC set) to the neighbour `key`: now if its MAC is
    /// known, else queued behind its resolution.
    fn send_frame(
        &mut self,
        state: &ForwardingState,
        key: NeighKey,
        mut buf: Vec<u8>,
        now: Timestamp,
    ) -> Result<(), DropReason> {
        let len = buf.len();
        let resolved = self.shared.neighbours().resolve(key, buf, now);
        match resolved {
            Resolve::Known { mac, probe, packet } => {
                buf = packet;
                if probe {
                    self.probe(state, key, Some(mac), now);
                }
                buf[..6].copy_from_slice(mac.as_bytes());
                let c = self.counters.interface(key.vlan);
                c.tx_packets.add(1);
                c.tx_bytes.add(len as u64);
                self.r.generated.push_back(Generated::Frame {
                    vlan: key.vlan,
                    bytes: buf,
                });
                Ok(())
            }
            Resolve::Queued { probe } => {
                if probe {
                    self.probe(state, key, None, now);
                }
                Ok(())
            }
            Resolve::QueueFull(b) => {
                self.r.recycle(b);
                Err(DropReason::NeighbourQueueFull)
            }
            Resolve::Failed(b) => {
                self.unreachable_about(state, &b, now);
                self.r.recycle(b);
                Err(DropReason::NeighbourFailed)
            }
            Resolve::TableFull(b) => {
                self.r.recycle(b);
                Err(DropReason::NeighbourTableFull)
            }
        }
    }

    /// Fragments an IPv4 packet (TTL already decremented) to the egress MTU and sends each
    /// fragment to `next_hop`.
    fn fragment_out<'s>(
        &mut self,
        state: &'s ForwardingState,
        out_vlan: VlanId,
        next_hop: IpAddr,
        packet: &[u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let Some(iface) = state.routing.interface(out_vlan) else {
            return Decision::Drop(DropReason::NoRoute);
        };
        let fragments = self.fragments(packet, usize::from(iface.mtu));
        let Some(fragments) = fragments else {
            return Decision::Drop(DropReason::IpHeaderBad);
        };
        self.counters.interface(out_vlan).fragmented.add(1);
        let key = NeighKey {
            vlan: out_vlan,
            ip: next_hop,
        };
        let mut result = Decision::Local;
        for mut f in fragments {
            f[6..12].copy_from_slice(iface.mac.as_bytes());
            f[12..14].copy_from_slice(&u16::from(EtherType::Ipv4).to_be_bytes());
            if let Err(reason) = self.send_frame(state, key, f, now) {
                result = Decision::Drop(reason);
            }
        }
        result
    }

    /// Finishes the offloads still to do on the frame being routed (`frame`, from its
    /// Ethernet header to the end of its IP packet): a super-frame cut into segments, a
    /// partial checksum completed. Returns the frames, each in a pool buffer with the layout
    /// of `frame`; none if the offload metadata does not fit the frame. Nothing is pending
    /// afterwards.
    fn finish_offloads(&mut self, frame: &[u8]) -> Vec<Vec<u8>> {
        let Some(o) = self.r.offload.take() else {
            let mut b = self.r.buffer();
            b.extend_from_slice(frame);
            return vec![b];
        };
        let mut scratch = std::mem::take(&mut self.r.scratch);
        let mut out = Vec::new();
        let pool = &mut self.r.pool;
        let mut take = |bytes: &[u8]| {
            let mut b = pool.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(bytes);
            b
        };
        let result = match (o.gso_size, o.csum) {
            (Some(_), _) => segment(frame, &o, &mut scratch, |seg| out.push(take(seg))),
            (None, Some((start, offset))) => {
                let mut b = take(frame);
                let r = complete_checksum(&mut b, start, offset);
                out.push(b);
                r
            }
            (None, None) => {
                out.push(take(frame));
                Ok(())
            }
        };
        self.r.scratch = scratch;
        if result.is_err() {
            for b in out.drain(..) {
                self.r.recycle(b);
            }
        }
        out
    }

    /// The fragments of `packet` for `mtu`, each in a buffer with room for the Ethernet
    /// header in front.
    fn fragments(&mut self, packet: &[u8], mtu: usize) -> Option<Vec<Vec<u8>>> {
        let mut scratch = std::mem::take(&mut self.r.scratch);
        let mut out = Vec::new();
        let pool = &mut self.r.pool;
        let result = fragment_ipv4(packet, mtu, &mut scratch, |frag| {
            let mut b = pool.pop().unwrap_or_default();
            b.clear();
            b.resize(L2, 0);
            b.extend_from_slice(frag);
            out.push(b);
        });
        self.r.scratch = scratch;
        match result {
            Ok(_) => Some(out),
            Err(_) => {
                for b in out {
                    self.r.recycle(b);
                }
                None
            }
        }
    }

    /// The router's share of a new state: neighbours of removed interfaces are forgotten, and
    /// so are resolutions that disagree with a static neighbour (`[[neigh]]`): the next packet
    /// to such a next hop takes the static MAC. O(static neighbours).
    pub fn adopt(&mut self, state: &ForwardingState) {
        let routing = &*state.routing;
        let mut neigh = self.shared.neighbours();
        neigh.set_max_entries(routing.neigh_max);
        neigh.retain(|k| routing.interface(k.vlan).is_some());
        for (&(vlan, ip), &mac) in &state.neighbours {
            neigh.forget_unless(&NeighKey { vlan, ip }, mac);
        }
        drop(neigh);
        self.shared
            .conntrack()
            .set_max_entries(state.nat.conntrack_max);
    }

    /// Timer work for the neighbour table (about once a second): probes that are due, and
    /// ICMP host unreachable for packets whose next hop never answered.
    pub fn tick(&mut self, state: &ForwardingState, now: Timestamp) {
        self.nat_tick(now);
        let mut probes = Vec::new();
        let mut failed = Vec::new();
        self.shared.neighbours().tick(now, &mut probes, &mut failed);
        for (key, mac) in probes {
            self.probe(state, key, mac, now);
        }
        for (key, b) in failed {
            self.counters
                .interface(key.vlan)
                .drop(DropReason::NeighbourFailed);
            self.unreachable_about(state, &b, now);
            self.r.recycle(b);
        }
    }

    /// Sends the queued frames of a neighbour that just resolved to `mac`.
    fn release(&mut self, vlan: VlanId, mac: EthernetAddress) {
        let released = std::mem::take(&mut self.r.released);
        for mut b in released.into_iter() {
            b[..6].copy_from_slice(mac.as_bytes());
            let c = self.counters.interface(vlan);
            c.tx_packets.add(1);
            c.tx_bytes.add(b.len() as u64);
            self.r
                .generated
                .push_back(Generated::Frame { vlan, bytes: b });
        }
    }

    /// ICMP host / address unreachable about a queued frame (`frame[L2..]` is the packet)
    /// whose next hop did not resolve. Nothing for packets the router originated.
    fn unreachable_about(&mut self, state: &ForwardingState, frame: &[u8], now: Timestamp) {
        let Some(packet) = frame.get(L2..) else {
            return;
        };
        match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let src = Ipv4Addr::from([packet[12], packet[13], packet[14], packet[15]]);
                // The router's own packets get no error, unless masquerade put its address
                // there: then the error is translated back to the sender.
                if state.routing.local.contains_key(&IpAddr::V4(src)) && !self.is_translated(packet)
                {
                    return;
                }
                self.send_icmpv4_error(state, None, packet, Icmpv4Error::HostUnreachable, now);
            }
            Some(6) if packet.len() >= 40 => {
                let mut s = [0u8; 16];
                s.copy_from_slice(&packet[8..24]);
                if state
                    .routing
                    .local
                    .contains_key(&IpAddr::V6(std::net::Ipv6Addr::from(s)))
                {
                    return;
                }
                self.send_icmpv6_error(state, None, packet, Icmpv6Error::AddressUnreachable, now);
            }
            _ => {}
        }
    }

    /// An ICMPv4 error about the packet at `frame[l3..l3 + total]`.
    #[allow(clippy::too_many_arguments)]
    fn icmpv4_error(
        &mut self,
        state: &ForwardingState,
        in_vlan: Option<VlanId>,
        l3: usize,
        total: usize,
        frame: &[u8],
        kind: Icmpv4Error,
        now: Timestamp,
    ) {
        self.send_icmpv4_error(state, in_vlan, &frame[l3..l3 + total], kind, now);
    }

    fn send_icmpv4_error(
        &mut self,
        state: &ForwardingState,
        in_vlan: Option<VlanId>,
        offending: &[u8],
        kind: Icmpv4Error,
        now: Timestamp,
    ) {
        let Some(peer) = offending.get(12..16) else {
            return;
        };
        let peer = Ipv4Addr::new(peer[0], peer[1], peer[2], peer[3]);
        let Some(IpAddr::V4(src)) = state.routing.source_for(IpAddr::V4(peer)) else {
            return;
        };
        let ident = self.next_ip_ident();
        let mut buf = self.r.buffer();
        buf.resize(L2 + ICMPV4_ERROR_MAX, 0);
        let Some(n) = icmp::icmpv4_error(&mut buf[L2..], src, ident, offending, kind) else {
            self.r.recycle(buf);
            return;
        };
        // Path MTU discovery is never rate limited (as in Linux).
        if kind.is_rate_limited() && !self.r.icmp_limit.allow(now) {
            if let Some(v) = in_vlan {
                self.counters.interface(v).icmp_rate_limited.add(1);
            }
            self.r.recycle(buf);
            return;
        }
        buf.truncate(L2 + n);
        if let Some(v) = in_vlan {
            self.counters.interface(v).icmp_errors.add(1);
        }
        // About a translated packet: the error goes to its sender as the sender knows it,
        // from the router's address on the sender's side (as if no translation had happened).
        if self.translate_icmp_error(&mut buf[L2..], 20, now) {
            self.counters.nat.icmp_translated.add(1);
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[L2..]);
            if let Some(IpAddr::V4(src)) = state.routing.source_for(IpAddr::V4(ip.dst_addr())) {
                ip.set_src_addr(src);
                ip.fill_checksum();
            }
        }
        self.send_ip(state, buf, now);
    }

    fn send_icmpv6_error(
        &mut self,
        state: &ForwardingState,
        in_vlan: Option<VlanId>,
        offending: &[u8],
        kind: Icmpv6Error,
        now: Timestamp,
    ) {
        let Some(peer) = offending.get(8..24) else {
            return;
        };
        let mut s = [0u8; 16];
        s.copy_from_slice(peer);
        let peer = std::net::Ipv6Addr::from(s);
        let Some(IpAddr::V6(src)) = state.routing.source_for(IpAddr::V6(peer)) else {
            return;
        };
        let mut buf = self.r.buffer();
        buf.resize(L2 + ICMPV6_ERROR_MAX, 0);
        let Some(n) = icmp::icmpv6_error(&mut buf[L2..], src, offending, kind) else {
            self.r.recycle(buf);
            return;
        };
        if kind.is_rate_limited() && !self.r.icmp_limit.allow(now) {
            if let Some(v) = in_vlan {
                self.counters.interface(v).icmp_rate_limited.add(1);
            }
            self.r.recycle(buf);
            return;
        }
        buf.truncate(L2 + n);
        if let Some(v) = in_vlan {
            self.counters.interface(v).icmp_errors.add(1);
        }
        self.send_ip(state, buf, now);
    }

    /// Routes a packet the router originated (`buf[L2..]`, IPv4 or IPv6).
    fn send_ip(&mut self, state: &ForwardingState, buf: Vec<u8>, now: Timestamp) {
        let packet = &buf[L2..];
        let (dst, ethertype) = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => (
                IpAddr::V4(Ipv4Addr::from([
                    packet[16], packet[17], packet[18], packet[19],
                ])),
                EtherType::Ipv4,
            ),
            Some(6) if packet.len() >= 40 => {
                let mut d = [0u8; 16];
                d.copy_from_slice(&packet[24..40]);
                (IpAddr::V6(std::net::Ipv6Addr::from(d)), EtherType::Ipv6)
            }
            _ => {
                self.r.recycle(buf);
                return;
            }
        };
        let Some(route) = state.routing.lookup(dst) else {
            self.r.recycle(buf);
            return;
        };
        let (vlan, next_hop) = match route.next_hop {
            NextHop::Connected { vlan } => (vlan, dst),
            NextHop::Gateway { vlan, via } => (vlan, via),
            NextHop::Ipip {
                remote,
                local,
                ttl,
                mtu,
            } if ethertype == EtherType::Ipv4 => {
                let tunnel = ipip::Tunnel {
                    remote,
                    local,
                    mtu,
                    ttl,
                };
                // What the router originates has DF clear: fragment it to the tunnel's MTU.
                let packets = if buf.len() - L2 > usize::from(mtu) {
                    let fragments = self.fragments(&buf[L2..], usize::from(mtu));
                    self.r.recycle(buf);
                    fragments.unwrap_or_default()
                } else {
                    vec![buf]
                };
                for b in packets {
                    let outer = self.outer(tunnel, &b[L2..]);
                    self.r.generated.push_back(Generated::Ipip {
                        remote,
                        outer,
                        bytes: b,
                        start: L2,
                    });
                }
                return;
            }
            _ => {
                self.r.recycle(buf);
                return;
            }
        };
        let Some(iface) = state.routing.interface(vlan) else {
            self.r.recycle(buf);
            return;
        };
        let key = NeighKey { vlan, ip: next_hop };
        let packets = if buf.len() - L2 > usize::from(iface.mtu) {
            // Larger than the egress MTU: IPv4 (DF clear) is fragmented, IPv6 dropped.
            let fragments = match ethertype {
                EtherType::Ipv4 => self.fragments(&buf[L2..], usize::from(iface.mtu)),
                _ => None,
            };
            self.r.recycle(buf);
            fragments.unwrap_or_default()
        } else {
            vec![buf]
        };
        for mut b in packets {
            b[6..12].copy_from_slice(iface.mac.as_bytes());
            b[12..14].copy_from_slice(&u16::from(ethertype).to_be_bytes());
            let _ = self.send_frame(state, key, b, now);
        }
    }
}

/// Where in `vlan` a frame to `mac` goes: its port, or a flood of the VLAN.
#[inline]
fn l2_targets<'s>(
    shared: &SharedTables,
    state: &'s ForwardingState,
    vlan: VlanId,
    mac: EthernetAddress,
    now: Timestamp,
) -> Targets<'s> {
    if mac.is_unicast() {
        if let Some(out) = lookup_mac(shared, state, vlan, mac, now) {
            if let Some(p) = state.port(out).filter(|p| p.mode.is_member(vlan)) {
                return Targets::One(VlanMember {
                    port: out,
                    tagged: p.mode.tags_egress(vlan),
                });
            }
        }
    }
    Targets::Flood {
        members: state.members(vlan),
        except: ROUTER_PORT,
    }
}

/// The egress of a frame the router generated into `vlan` (untagged, from the router).
pub fn router_egress<'s>(
    shared: &SharedTables,
    state: &'s ForwardingState,
    vlan: VlanId,
    frame: &[u8],
    now: Timestamp,
) -> Egress<'s> {
    let dst = EthernetAddress::from_bytes(&frame[..6]);
    Egress {
        vlan,
        inner_offset: 12,
        targets: l2_targets(shared, state, vlan, dst, now),
    }
}

/// Where a frame the router generated goes: the ports of its VLAN the MAC table says, or the
/// one port a reply is for. `None` for an IPIP packet.
pub fn generated_egress<'s>(
    shared: &SharedTables,
    state: &'s ForwardingState,
    generated: &Generated,
    now: Timestamp,
) -> Option<Egress<'s>> {
    match generated {
        Generated::Frame { vlan, bytes } => Some(router_egress(shared, state, *vlan, bytes, now)),
        Generated::Reply { vlan, to, .. } => Some(Egress {
            vlan: *vlan,
            inner_offset: 12,
            targets: Targets::One(*to),
        }),
        Generated::Ipip { .. } => None,
    }
}

/// Checks an IPv4 header as a router must before forwarding (RFC 1812 5.2.2): length,
/// version, header length, total length, checksum. Returns (source, destination, total
/// length).
fn check_ipv4(bytes: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr, usize), DropReason> {
    let ip = Ipv4Packet::new_checked(bytes).map_err(|_| DropReason::IpHeaderBad)?;
    if ip.version() != 4 || !ip.verify_checksum() {
        return Err(DropReason::IpHeaderBad);
    }
    Ok((ip.src_addr(), ip.dst_addr(), usize::from(ip.total_len())))
}

/// Sources a router never forwards from (RFC 1812 5.3.7).
fn martian_source_v4(src: Ipv4Addr) -> bool {
    src.is_unspecified()
        || src.is_loopback()
        || src.is_multicast()
        || src.is_broadcast()
        || src.octets()[0] >= 240
}
