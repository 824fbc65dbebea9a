//! What the router answers itself: ARP and neighbour discovery for its addresses, ICMP echo,
//! and the probes it sends to resolve next hops.

use std::net::{IpAddr, Ipv6Addr};

use super::super::icmp::{self, Icmpv4Error, Icmpv6Error};
use super::super::routing::{same_subnet_v4, same_subnet_v6, Interface};
use super::super::{Decision, DropReason, ForwardingState};
use super::L3;
use super::{Generated, L2};
use crate::tables::{NeighKey, Timestamp};
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, Icmpv6Message, Icmpv6Packet,
    Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, VlanId,
};

/// ICMPv6 neighbour solicitation type.
const NS: u8 = 135;

/// Whether a broadcast / multicast frame is an ARP request or a neighbour solicitation for one
/// of `iface`'s addresses.
pub(super) fn is_resolution_for(iface: &Interface, frame: &[u8], off: usize) -> bool {
    let Some(et) = frame.get(off..off + 2) else {
        return false;
    };
    let payload = &frame[off + 2..];
    match EtherType::from(u16::from_be_bytes([et[0], et[1]])) {
        EtherType::Arp => {
            let Ok(arp) = ArpPacket::new_checked(payload) else {
                return false;
            };
            let target = arp.target_protocol_addr();
            arp.operation() == ArpOperation::Request && iface.v4.iter().any(|(a, _)| *a == target)
        }
        EtherType::Ipv6 => {
            // The fixed header, then an ICMPv6 neighbour solicitation: type at 40, target at
            // 48..64.
            if payload.len() < 64 || payload[6] != u8::from(IpProtocol::Icmpv6) || payload[40] != NS
            {
                return false;
            }
            let mut t = [0u8; 16];
            t.copy_from_slice(&payload[48..64]);
            let target = Ipv6Addr::from(t);
            iface.v6.iter().any(|(a, _)| *a == target)
        }
        _ => false,
    }
}

/// An untagged Ethernet frame around `payload`, in a pool buffer.
fn frame_into(buf: &mut Vec<u8>, dst: EthernetAddress, src: EthernetAddress, ethertype: EtherType) {
    buf.clear();
    buf.extend_from_slice(dst.as_bytes());
    buf.extend_from_slice(src.as_bytes());
    buf.extend_from_slice(&u16::from(ethertype).to_be_bytes());
}

impl L3<'_> {
    /// ARP to the router on `vlan`: requests for its addresses are answered; requests and
    /// replies from neighbours on its subnets update the neighbour table.
    pub(super) fn arp_in<'s>(
        &mut self,
        state: &'s ForwardingState,
        vlan: VlanId,
        off: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let Some(iface) = state.routing.interface(vlan) else {
            return Decision::Drop(DropReason::L3Unsupported);
        };
        let Ok(arp) = ArpPacket::new_checked(&frame[off + 2..]) else {
            return Decision::Drop(DropReason::L3Unsupported);
        };
        let Ok(arp) = ArpRepr::parse(&arp) else {
            return Decision::Drop(DropReason::L3Unsupported);
        };
        let target = arp.target_protocol_addr;
        let sender = arp.source_protocol_addr;
        let ours = iface.v4.iter().any(|(a, _)| *a == target);
        super::super::trace::record(self.trace, super::super::Stage::L3, "arp", move |s| {
            let op = match arp.operation {
                ArpOperation::Request => "request",
                ArpOperation::Reply => "reply",
                _ => "other",
            };
            s.with("op", op)
                .with("sender", sender)
                .with("target", target)
                .with("ours", ours);
        });
        if !ours {
            return Decision::Drop(DropReason::LocalUnsupported);
        }
        let on_link = iface
            .v4
            .iter()
            .any(|(a, len)| same_subnet_v4(*a, sender, *len));
        let mac = arp.source_hardware_addr;
        if on_link && mac.is_unicast() && !sender.is_unspecified() && sender != target {
            let key = NeighKey {
                vlan,
                ip: IpAddr::V4(sender),
            };
            let mut released = std::mem::take(&mut self.r.released);
            if arp.operation == ArpOperation::Reply {
                self.shared
                    .neighbours()
                    .confirm(key, mac, now, &mut released);
            } else {
                self.shared
                    .neighbours()
                    .observe(key, mac, now, &mut released);
            }
            self.r.released = released;
            self.release(vlan, mac);
        }
        if arp.operation == ArpOperation::Request {
            let reply = ArpRepr {
                operation: ArpOperation::Reply,
                source_hardware_addr: iface.mac,
                source_protocol_addr: target,
                target_hardware_addr: mac,
                target_protocol_addr: sender,
            };
            let mut buf = self.r.buffer();
            frame_into(&mut buf, mac, iface.mac, EtherType::Arp);
            buf.resize(L2 + reply.buffer_len(), 0);
            reply.emit(&mut ArpPacket::new_unchecked(&mut buf[L2..]));
            self.counters.interface(vlan).neigh_replies.add(1);
            self.r
                .generated
                .push_back(Generated::Frame { vlan, bytes: buf });
        }
        Decision::Local
    }

    /// An IPv4 packet to one of the router's addresses (`frame[l3..l3 + total]`).
    pub(super) fn local_v4<'s>(
        &mut self,
        state: &'s ForwardingState,
        in_vlan: Option<VlanId>,
        l3: usize,
        total: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let packet = &frame[l3..l3 + total];
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        super::super::trace::record(self.trace, super::super::Stage::L3, "local", move |s| {
            s.with(
                "dst",
                std::net::Ipv4Addr::from([packet[16], packet[17], packet[18], packet[19]]),
            )
            .with("protocol", packet[9]);
        });
        match IpProtocol::from(packet[9]) {
            IpProtocol::Icmp if packet.get(ihl) == Some(&8) => {
                let mut buf = self.r.buffer();
                buf.resize(L2 + total, 0);
                let ident = self.next_ip_ident();
                match icmp::icmpv4_echo_reply(&mut buf[L2..], ident, packet) {
                    Some(n) => {
                        buf.truncate(L2 + n);
                        if let Some(v) = in_vlan {
                            self.counters.interface(v).echo_replies.add(1);
                        }
                        self.send_ip(state, buf, now);
                        Decision::Local
                    }
                    None => {
                        self.r.recycle(buf);
                        Decision::Drop(DropReason::LocalUnsupported)
                    }
                }
            }
            IpProtocol::Udp => {
                // A DHCP client's unicast (a renewal) to the server of its VLAN.
                if let (Some(vlan), Some(port)) = (in_vlan, self.r.in_port) {
                    let serves = state
                        .routing
                        .interface(vlan)
                        .is_some_and(|i| i.dhcp.is_some());
                    if serves && super::dhcp::is_client_message(frame, l3 - 2) {
                        return self.dhcp(state, port, vlan, l3 - 2, frame);
                    }
                }
                self.icmpv4_error(
                    state,
                    in_vlan,
                    l3,
                    total,
                    frame,
                    Icmpv4Error::PortUnreachable,
                    now,
                );
                Decision::Drop(DropReason::LocalUnsupported)
            }
            _ => Decision::Drop(DropReason::LocalUnsupported),
        }
    }

    /// An IPv6 packet at `frame[off + 2..]` to the router on `vlan`.
    pub(super) fn ipv6_in<'s>(
        &mut self,
        state: &'s ForwardingState,
        vlan: VlanId,
        off: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let l3 = off + 2;
        let Ok(ip) = Ipv6Packet::new_checked(&frame[l3..]) else {
            return Decision::Drop(DropReason::IpHeaderBad);
        };
        if ip.version() != 6 {
            return Decision::Drop(DropReason::IpHeaderBad);
        }
        let total = 40 + usize::from(ip.payload_len());
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let routing = &*state.routing;
        let nd = ip.next_header() == IpProtocol::Icmpv6 && ip.hop_limit() == 255;
        if dst.is_multicast() {
            // Only solicitations for our addresses get here (see `is_resolution_for`).
            if nd {
                return self.nd_in(state, vlan, l3, total, frame, now);
            }
            return Decision::Drop(DropReason::Martian);
        }
        if src.is_multicast() || src.is_loopback() || routing.local.contains_key(&IpAddr::V6(src)) {
            return Decision::Drop(DropReason::Martian);
        }
        if routing.local.contains_key(&IpAddr::V6(dst)) {
            if nd {
                return self.nd_in(state, vlan, l3, total, frame, now);
            }
            return self.local_v6(state, vlan, l3, total, frame, now);
        }
        if src.is_unspecified()
            || dst.is_unspecified()
            || dst.is_loopback()
            || is_link_local(dst)
            || is_link_local(src)
        {
            return Decision::Drop(DropReason::Martian);
        }
        self.forward_v6(state, Some(vlan), off, total, frame, now)
    }

    /// An IPv6 packet to one of the router's addresses: ICMPv6 echo is answered.
    fn local_v6<'s>(
        &mut self,
        state: &'s ForwardingState,
        vlan: VlanId,
        l3: usize,
        total: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let packet = &frame[l3..l3 + total];
        match IpProtocol::from(packet[6]) {
            IpProtocol::Icmpv6 if packet.get(40) == Some(&128) => {
                let mut buf = self.r.buffer();
                buf.resize(L2 + total, 0);
                match icmp::icmpv6_echo_reply(&mut buf[L2..], packet) {
                    Some(n) => {
                        buf.truncate(L2 + n);
                        self.counters.interface(vlan).echo_replies.add(1);
                        self.send_ip(state, buf, now);
                        Decision::Local
                    }
                    None => {
                        self.r.recycle(buf);
                        Decision::Drop(DropReason::LocalUnsupported)
                    }
                }
            }
            IpProtocol::Udp => {
                self.send_icmpv6_error(
                    state,
                    Some(vlan),
                    &frame[l3..l3 + total],
                    Icmpv6Error::PortUnreachable,
                    now,
                );
                Decision::Drop(DropReason::LocalUnsupported)
            }
            _ => Decision::Drop(DropReason::LocalUnsupported),
        }
    }

    /// Neighbour discovery to the router (hop limit 255 checked by the caller): solicitations
    /// for its addresses are answered (router flag set) and tell it the sender's MAC;
    /// advertisements resolve next hops.
    fn nd_in<'s>(
        &mut self,
        state: &'s ForwardingState,
        vlan: VlanId,
        l3: usize,
        total: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        let Some(iface) = state.routing.interface(vlan) else {
            return Decision::Drop(DropReason::LocalUnsupported);
        };
        let eth_src = EthernetAddress::from_bytes(&frame[6..12]);
        let ip = Ipv6Packet::new_unchecked(&frame[l3..l3 + total]);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let Ok(icmp) = Icmpv6Packet::new_checked(ip.payload()) else {
            return Decision::Drop(DropReason::IpHeaderBad);
        };
        if !icmp.verify_checksum(&src, &dst) {
            return Decision::Drop(DropReason::IpHeaderBad);
        }
        let on_link = |a: Ipv6Addr| {
            iface.v6.iter().any(|(o, len)| same_subnet_v6(*o, a, *len)) || is_link_local(a)
        };
        match Icmpv6Repr::parse(&icmp) {
            Ok(Icmpv6Repr::NeighborSolicit {
                target_addr,
                source_lladdr,
            }) => {
                if !iface.v6.iter().any(|(a, _)| *a == target_addr) {
                    return Decision::Drop(DropReason::LocalUnsupported);
                }
                let solicited = !src.is_unspecified();
                if let Some(mac) = source_lladdr.filter(|m| m.is_unicast()) {
                    if solicited && on_link(src) {
                        let key = NeighKey {
                            vlan,
                            ip: IpAddr::V6(src),
                        };
                        let mut released = std::mem::take(&mut self.r.released);
                        self.shared
                            .neighbours()
                            .observe(key, mac, now, &mut released);
                        self.r.released = released;
                        self.release(vlan, mac);
                    }
                }
                let (to_ip, to_mac) = if solicited {
                    (src, source_lladdr.unwrap_or(eth_src))
                } else {
                    (
                        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                        EthernetAddress([0x33, 0x33, 0, 0, 0, 1]),
                    )
                };
                let na = Icmpv6Repr::NeighborAdvert {
                    router_flag: true,
                    solicited_flag: solicited,
                    override_flag: true,
                    target_addr,
                    target_lladdr: Some(iface.mac),
                };
                let buf = self.nd_frame(iface.mac, to_mac, target_addr, to_ip, na);
                self.counters.interface(vlan).neigh_replies.add(1);
                self.r
                    .generated
                    .push_back(Generated::Frame { vlan, bytes: buf });
                Decision::Local
            }
            Ok(Icmpv6Repr::NeighborAdvert {
                solicited_flag,
                target_addr,
                target_lladdr,
                ..
            }) => {
                let mac = target_lladdr.unwrap_or(eth_src);
                if mac.is_unicast() && on_link(target_addr) {
                    let key = NeighKey {
                        vlan,
                        ip: IpAddr::V6(target_addr),
                    };
                    let mut released = std::mem::take(&mut self.r.released);
                    if solicited_flag {
                        self.shared
                            .neighbours()
                            .confirm(key, mac, now, &mut released);
                    } else {
                        self.shared
                            .neighbours()
                            .observe(key, mac, now, &mut released);
                    }
                    self.r.released = released;
                    self.release(vlan, mac);
                }
                Decision::Local
            }
            _ => Decision::Drop(DropReason::LocalUnsupported),
        }
    }

    /// A neighbour discovery frame from `src_mac` to `dst_mac`.
    fn nd_frame(
        &mut self,
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        msg: Icmpv6Repr,
    ) -> Vec<u8> {
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Icmpv6,
            payload_len: msg.buffer_len(),
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut buf = self.r.buffer();
        frame_into(&mut buf, dst_mac, src_mac, EtherType::Ipv6);
        buf.resize(L2 + ip.buffer_len(), 0);
        ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[L2..]));
        msg.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(&mut buf[L2 + 40..]),
        );
        buf
    }

    /// Confirms neighbour `key` with its static MAC, if it has one, releasing what was queued
    /// on it. Returns whether it had one.
    pub(super) fn pin_static(
        &mut self,
        state: &ForwardingState,
        key: NeighKey,
        now: Timestamp,
    ) -> bool {
        let Some(&mac) = state.neighbours.get(&(key.vlan, key.ip)) else {
            return false;
        };
        let mut released = std::mem::take(&mut self.r.released);
        self.shared
            .neighbours()
            .confirm(key, mac, now, &mut released);
        self.r.released = released;
        self.release(key.vlan, mac);
        true
    }

    /// Asks for the MAC of neighbour `key`: ARP request or neighbour solicitation, to
    /// `unicast` when re-confirming a known MAC, else broadcast / solicited-node multicast.
    ///
    /// A next hop with a static neighbour entry (`[[neigh]]` on the VLAN, as flannel programs
    /// `nud permanent` entries for its peers' VTEP addresses) is not asked: the entry is
    /// confirmed with the static MAC and packets queued on it leave now.
    pub(super) fn probe(
        &mut self,
        state: &ForwardingState,
        key: NeighKey,
        unicast: Option<EthernetAddress>,
        now: Timestamp,
    ) {
        if self.pin_static(state, key, now) {
            return;
        }
        let Some(iface) = state.routing.interface(key.vlan) else {
            return;
        };
        let buf = match key.ip {
            IpAddr::V4(target) => {
                let Some(src) = iface.v4_source_for(target) else {
                    return;
                };
                let req = ArpRepr {
                    operation: ArpOperation::Request,
                    source_hardware_addr: iface.mac,
                    source_protocol_addr: src,
                    target_hardware_addr: EthernetAddress::ZERO,
                    target_protocol_addr: target,
                };
                let mut buf = self.r.buffer();
                frame_into(
                    &mut buf,
                    unicast.unwrap_or(EthernetAddress::BROADCAST),
                    iface.mac,
                    EtherType::Arp,
                );
                buf.resize(L2 + req.buffer_len(), 0);
                req.emit(&mut ArpPacket::new_unchecked(&mut buf[L2..]));
                buf
            }
            IpAddr::V6(target) => {
                let Some(src) = iface.v6_source_for(target) else {
                    return;
                };
                let (dst, dst_mac) = match unicast {
                    Some(mac) => (target, mac),
                    None => {
                        let t = target.octets();
                        (
                            Ipv6Addr::new(
                                0xff02,
                                0,
                                0,
                                0,
                                0,
                                1,
                                0xff00 | u16::from(t[13]),
                                u16::from_be_bytes([t[14], t[15]]),
                            ),
                            EthernetAddress([0x33, 0x33, 0xff, t[13], t[14], t[15]]),
                        )
                    }
                };
                let ns = Icmpv6Repr::NeighborSolicit {
                    target_addr: target,
                    source_lladdr: Some(iface.mac),
                };
                self.nd_frame(iface.mac, dst_mac, src, dst, ns)
            }
        };
        self.counters.interface(key.vlan).neigh_probes.add(1);
        self.r.generated.push_back(Generated::Frame {
            vlan: key.vlan,
            bytes: buf,
        });
    }

    /// Routes the IPv6 packet at `frame[off + 2..]` (`total` bytes).
    pub(super) fn forward_v6<'s>(
        &mut self,
        state: &'s ForwardingState,
        in_vlan: Option<VlanId>,
        off: usize,
        total: usize,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        use super::super::routing::NextHop;
        let l3 = off + 2;
        let mut d = [0u8; 16];
        d.copy_from_slice(&frame[l3 + 24..l3 + 40]);
        let dst = Ipv6Addr::from(d);
        let found = state.routing.lookup(IpAddr::V6(dst));
        super::super::trace::record(self.trace, super::super::Stage::L3, "route", move |s| {
            s.with("dst", dst);
            match found {
                Some(r) => super::describe_route(s, r),
                None => {
                    s.with("route", "none");
                }
            }
        });
        let (out_vlan, next_hop) = match found.map(|r| r.next_hop) {
            Some(NextHop::Connected { vlan }) => (vlan, IpAddr::V6(dst)),
            Some(NextHop::Gateway { vlan, via }) => (vlan, via),
            _ => {
                self.send_icmpv6_error(
                    state,
                    in_vlan,
                    &frame[l3..l3 + total],
                    Icmpv6Error::NoRoute,
                    now,
                );
                return Decision::Drop(DropReason::NoRoute);
            }
        };
        if frame[l3 + 7] <= 1 {
            self.send_icmpv6_error(
                state,
                in_vlan,
                &frame[l3..l3 + total],
                Icmpv6Error::HopLimitExceeded,
                now,
            );
            return Decision::Drop(DropReason::TtlExceeded);
        }
        let Some(iface) = state.routing.interface(out_vlan) else {
            return Decision::Drop(DropReason::NoRoute);
        };
        // A super-frame leaves as segments: they must fit, not the whole.
        let wire_total = self.r.offload.map_or(total, |o| {
            o.wire_len(&frame[..l3 + total]).saturating_sub(l3)
        });
        if wire_total > usize::from(iface.mtu) {
            let mtu = u32::from(iface.mtu);
            self.send_icmpv6_error(
                state,
                in_vlan,
                &frame[l3..l3 + total],
                Icmpv6Error::PacketTooBig { mtu },
                now,
            );
            return Decision::Drop(DropReason::FragNeeded);
        }
        frame[l3 + 7] -= 1;
        self.output(state, out_vlan, next_hop, off, l3 + total, frame, now)
    }
}

/// fe80::/10.
fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

#[allow(dead_code)]
fn _assert_icmpv6_message_used(m: Icmpv6Message) -> u8 {
    m.into()
}
