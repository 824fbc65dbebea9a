//! ARP and IPv6 neighbour discovery suppression: a request for an address in the neighbour
//! table of the frame's VLAN (`[[neigh]]`, like the Linux bridge's `neigh_suppress` on a vxlan
//! port) is answered by the switch itself, back out of the port it came in on, instead of
//! being flooded to every remote VTEP.

use std::net::{IpAddr, Ipv6Addr};

use super::ForwardingState;
use crate::wire::builder::ethernet_frame_into;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, Icmpv6Packet, Icmpv6Repr,
    IpProtocol, Ipv6Packet, Ipv6Repr, VlanId,
};

/// Room for the largest reply: an untagged neighbour advertisement with a link-layer option
/// (14 + 40 + 32 bytes).
pub const REPLY_MAX: usize = 96;

/// A reply built by the switch, untagged.
#[derive(Clone, Copy)]
pub struct ReplyFrame {
    bytes: [u8; REPLY_MAX],
    len: u8,
}

impl ReplyFrame {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl core::fmt::Debug for ReplyFrame {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplyFrame")
            .field("len", &self.len)
            .finish()
    }
}

impl PartialEq for ReplyFrame {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ReplyFrame {}

/// The reply to `frame` (received in `vlan`; its EtherType at `inner_offset`) when it is an
/// ARP request or a neighbour solicitation for a suppressed address.
pub fn reply_for(
    state: &ForwardingState,
    vlan: VlanId,
    frame: &[u8],
    inner_offset: usize,
) -> Option<ReplyFrame> {
    if state.neighbours.is_empty() || frame.len() < inner_offset + 2 {
        return None;
    }
    let ethertype = EtherType::from(u16::from_be_bytes([
        frame[inner_offset],
        frame[inner_offset + 1],
    ]));
    let payload = &frame[inner_offset + 2..];
    let requester = EthernetAddress::from_bytes(&frame[6..12]);
    match ethertype {
        EtherType::Arp => arp_reply(state, vlan, requester, payload),
        EtherType::Ipv6 => na_reply(state, vlan, requester, payload),
        _ => None,
    }
}

fn arp_reply(
    state: &ForwardingState,
    vlan: VlanId,
    requester: EthernetAddress,
    payload: &[u8],
) -> Option<ReplyFrame> {
    let req = ArpRepr::parse(&ArpPacket::new_checked(payload).ok()?).ok()?;
    if req.operation != ArpOperation::Request
        || req.source_protocol_addr == req.target_protocol_addr
    {
        return None;
    }
    let mac = *state
        .neighbours
        .get(&(vlan, IpAddr::V4(req.target_protocol_addr)))?;
    let reply = ArpRepr {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: req.target_protocol_addr,
        target_hardware_addr: req.source_hardware_addr,
        target_protocol_addr: req.source_protocol_addr,
    };
    let mut arp = [0u8; 28];
    reply.emit(&mut ArpPacket::new_unchecked(&mut arp[..]));
    frame(requester, mac, EtherType::Arp, &arp)
}

fn na_reply(
    state: &ForwardingState,
    vlan: VlanId,
    requester: EthernetAddress,
    payload: &[u8],
) -> Option<ReplyFrame> {
    let ip = Ipv6Packet::new_checked(payload).ok()?;
    if ip.next_header() != IpProtocol::Icmpv6 || ip.hop_limit() != 255 {
        return None;
    }
    let icmp = Icmpv6Packet::new_checked(ip.payload()).ok()?;
    let Icmpv6Repr::NeighborSolicit { target_addr, .. } = Icmpv6Repr::parse(&icmp).ok()? else {
        return None;
    };
    let mac = *state.neighbours.get(&(vlan, IpAddr::V6(target_addr)))?;
    let src = ip.src_addr();
    // A solicitation from the unspecified address (duplicate address detection) is answered
    // to all nodes, unsolicited (RFC 4861 section 7.2.4).
    let (dst, solicited) = if src.is_unspecified() {
        (Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), false)
    } else {
        (src, true)
    };
    let na = Icmpv6Repr::NeighborAdvert {
        router_flag: false,
        solicited_flag: solicited,
        override_flag: true,
        target_addr,
        target_lladdr: Some(mac),
    };
    let ip_repr = Ipv6Repr {
        src_addr: target_addr,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: na.buffer_len(),
        hop_limit: 255,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut l3 = [0u8; REPLY_MAX - 14];
    let len = ip_repr.buffer_len();
    let l3 = l3.get_mut(..len)?;
    ip_repr.emit(&mut Ipv6Packet::new_unchecked(&mut l3[..]));
    na.emit(
        &target_addr,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut l3[40..]),
    );
    let dst_mac = if solicited {
        requester
    } else {
        EthernetAddress([0x33, 0x33, 0, 0, 0, 1])
    };
    frame(dst_mac, mac, EtherType::Ipv6, l3)
}

fn frame(
    dst: EthernetAddress,
    src: EthernetAddress,
    ethertype: EtherType,
    payload: &[u8],
) -> Option<ReplyFrame> {
    let mut out = ReplyFrame {
        bytes: [0; REPLY_MAX],
        len: 0,
    };
    let len = ethernet_frame_into(&mut out.bytes, dst, src, None, ethertype, payload)?;
    out.len = len as u8;
    Some(out)
}
