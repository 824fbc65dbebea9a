//! ICMP messages the router originates: errors about packets it cannot forward (RFC 792,
//! RFC 1812 section 4.3, RFC 4443), echo replies for its own addresses, and a token bucket
//! that limits how many errors it sends.
//!
//! Everything here is sans-IO and allocation-free: each builder reads the offending or
//! requesting packet as received (starting at its IP header) and writes a complete IP packet,
//! header and checksums included, into a buffer the caller provides. It returns the length
//! written, or `None` when the RFCs forbid the message, the input is malformed, or the buffer
//! is too small. No builder panics on any input.
//!
//! The "must not send" rules of RFC 1812 4.3.2.7 (RFC 1122 3.2.2) and RFC 4443 2.4(e) are
//! checked here, except what only the caller knows: whether the packet arrived as a link-layer
//! broadcast or multicast, or (IPv4) was addressed to a subnet-directed broadcast. Rate
//! limiting ([`IcmpRateLimit`]) is left to the caller as well, so that it can count what it
//! suppresses.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::tables::Timestamp;
use crate::wire::checksum;
use crate::wire::icmpv4::HEADER_LEN as ICMPV4_HEADER_LEN;
use crate::wire::icmpv6::HEADER_LEN as ICMPV6_HEADER_LEN;
use crate::wire::ip::HeaderOptions;
use crate::wire::ipv4::HEADER_LEN as IPV4_HEADER_LEN;
use crate::wire::ipv6::HEADER_LEN as IPV6_HEADER_LEN;
use crate::wire::{
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded,
    Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet,
    Ipv6Repr,
};

/// The largest ICMPv4 error, IP header included (RFC 1812 4.3.2.3).
pub const ICMPV4_ERROR_MAX_LEN: usize = 576;
/// The largest ICMPv6 error, IPv6 header included: the IPv6 minimum MTU (RFC 4443 2.4(c)).
pub const ICMPV6_ERROR_MAX_LEN: usize = 1280;
/// The TTL or hop limit of the messages built here.
pub const ICMP_TTL: u8 = 64;
/// The DSCP of ICMPv4 errors: TOS 0xc0, precedence "internetwork control", as Linux sends.
const ERROR_DSCP_V4: u8 = 0xc0 >> 2;

/// The IPv6 next-header numbers of the extension headers walked to find an upper layer.
const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AUTH: u8 = 51;
const NH_DEST_OPTS: u8 = 60;
const NH_ICMPV6: u8 = 58;

/// Why the router answers a packet with an ICMPv4 error, and so the type and code it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Error {
    /// The TTL reached zero in transit: time exceeded, code 0.
    TimeExceeded,
    /// No route to the destination network: destination unreachable, code 0.
    NetUnreachable,
    /// The destination host does not answer (no ARP reply): destination unreachable, code 1.
    HostUnreachable,
    /// No listener on the destination port of a packet to the router: code 3.
    PortUnreachable,
    /// The router does not speak the packet's protocol: code 2.
    ProtocolUnreachable,
    /// The packet is larger than the egress MTU and has DF set: code 4, with the next-hop
    /// MTU (RFC 1191).
    FragNeeded {
        /// The MTU of the egress link.
        mtu: u16,
    },
    /// A filter refused the packet: "communication administratively prohibited", code 13
    /// (RFC 1812 5.2.7.1).
    AdminProhibited,
}

impl Icmpv4Error {
    /// The ICMP header of the error, carrying `data_len` bytes of the offending packet.
    fn repr(self, data_len: usize) -> Icmpv4Repr {
        let unreachable = |reason, next_hop_mtu| Icmpv4Repr::DstUnreachable {
            reason,
            next_hop_mtu,
            data_len,
        };
        match self {
            Icmpv4Error::TimeExceeded => Icmpv4Repr::TimeExceeded {
                reason: Icmpv4TimeExceeded::TtlExpired,
                data_len,
            },
            Icmpv4Error::NetUnreachable => unreachable(Icmpv4DstUnreachable::NetUnreachable, 0),
            Icmpv4Error::HostUnreachable => unreachable(Icmpv4DstUnreachable::HostUnreachable, 0),
            Icmpv4Error::PortUnreachable => unreachable(Icmpv4DstUnreachable::PortUnreachable, 0),
            Icmpv4Error::ProtocolUnreachable => {
                unreachable(Icmpv4DstUnreachable::ProtoUnreachable, 0)
            }
            Icmpv4Error::FragNeeded { mtu } => unreachable(Icmpv4DstUnreachable::FragRequired, mtu),
            Icmpv4Error::AdminProhibited => unreachable(Icmpv4DstUnreachable::CommProhibited, 0),
        }
    }

    /// Whether this error should pass an [`IcmpRateLimit`]. "Fragmentation needed" is exempt,
    /// as in Linux: limiting it would break path MTU discovery.
    pub const fn is_rate_limited(self) -> bool {
        !matches!(self, Icmpv4Error::FragNeeded { .. })
    }
}

/// Why the router answers a packet with an ICMPv6 error, and so the type and code it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv6Error {
    /// The hop limit reached zero in transit: time exceeded, code 0.
    HopLimitExceeded,
    /// No route to the destination: destination unreachable, code 0.
    NoRoute,
    /// The destination does not answer neighbour solicitations: destination unreachable,
    /// code 3.
    AddressUnreachable,
    /// No listener on the destination port of a packet to the router: code 4.
    PortUnreachable,
    /// A filter refused the packet: destination unreachable, code 1.
    AdminProhibited,
    /// The packet is larger than the egress MTU (IPv6 routers never fragment): packet too
    /// big, with the MTU.
    PacketTooBig {
        /// The MTU of the egress link.
        mtu: u32,
    },
}

impl Icmpv6Error {
    /// The ICMPv6 header of the error, carrying `data_len` bytes of the offending packet.
    fn repr(self, data_len: usize) -> Icmpv6Repr {
        let (msg_type, code, rest_of_header) = match self {
            Icmpv6Error::HopLimitExceeded => (Icmpv6Message::TimeExceeded, 0, 0),
            Icmpv6Error::NoRoute => (Icmpv6Message::DstUnreachable, 0, 0),
            Icmpv6Error::AdminProhibited => (Icmpv6Message::DstUnreachable, 1, 0),
            Icmpv6Error::AddressUnreachable => (Icmpv6Message::DstUnreachable, 3, 0),
            Icmpv6Error::PortUnreachable => (Icmpv6Message::DstUnreachable, 4, 0),
            Icmpv6Error::PacketTooBig { mtu } => (Icmpv6Message::PktTooBig, 0, mtu),
        };
        Icmpv6Repr::Other {
            msg_type,
            code,
            rest_of_header,
            data_len,
        }
    }

    /// Whether this error should pass an [`IcmpRateLimit`]. "Packet too big" is exempt, as in
    /// Linux: limiting it would break path MTU discovery.
    pub const fn is_rate_limited(self) -> bool {
        !matches!(self, Icmpv6Error::PacketTooBig { .. })
    }
}

/// Whether `addr` names a single host and may be the destination of an ICMPv4 message: not
/// in 0/8 ("this network", RFC 1122 3.2.1.3), 127/8 (loopback), 224/4 (multicast) or 240/4
/// (class E, the limited broadcast 255.255.255.255 included).
fn is_unicast_v4(addr: Ipv4Addr) -> bool {
    !matches!(addr.octets()[0], 0 | 127 | 224..=255)
}

/// Whether an ICMPv4 type is an error message, or unknown and so treated as one (as Linux
/// does for types past 18): RFC 1812 4.3.2.7 forbids answering errors with errors.
///
/// The errors are destination unreachable (3), source quench (4), redirect (5), time
/// exceeded (11) and parameter problem (12).
fn is_icmpv4_error_type(msg_type: u8) -> bool {
    matches!(msg_type, 3 | 4 | 5 | 11 | 12 | 19..=u8::MAX)
}

/// Reads the header of an offending IPv4 packet that may be truncated after its header:
/// returns the header view and the packet's bytes, cut at the total length when the buffer
/// holds more (Ethernet padding). `None` if the header is cut off, not version 4, has an IHL
/// below 5, a total length below the header length, or a wrong checksum (RFC 1812 5.2.2:
/// such packets are discarded silently).
fn offending_v4(offending: &[u8]) -> Option<(Ipv4Packet<&[u8]>, &[u8])> {
    let fixed = Ipv4Packet::new_unchecked(offending.get(..IPV4_HEADER_LEN)?);
    let header_len = usize::from(fixed.header_len());
    if fixed.version() != 4 || header_len < IPV4_HEADER_LEN {
        return None;
    }
    let header = Ipv4Packet::new_unchecked(offending.get(..header_len)?);
    let total_len = usize::from(header.total_len());
    if total_len < header_len || !header.verify_checksum() {
        return None;
    }
    let bytes = offending.get(..total_len).unwrap_or(offending);
    Some((header, bytes))
}

/// Writes into `out` a complete IPv4 packet carrying an ICMPv4 error about `offending`, from
/// `src` to the offending packet's source, and returns its length.
///
/// `offending` is the IPv4 packet as received (before the TTL was decremented), starting at
/// its header; it may be cut short after its header. The error has TTL 64, DF clear, IP ident
/// `ident`, TOS 0xc0 and no options; its ICMP data is the offending header and as much of the
/// rest as keeps the whole error within 576 bytes (RFC 1812 4.3.2.3).
///
/// Returns `None`, sending nothing, when RFC 1812 4.3.2.7 forbids the error: the offending
/// packet is an ICMP error (any type but echo and the other queries) or a fragment other than
/// the first; its source is not a unicast address (0/8, 127/8, multicast, class E, broadcast);
/// its destination is multicast or the limited broadcast 255.255.255.255. Also `None` if its
/// header is malformed or has a wrong checksum, or `out` is too small.
///
/// A packet addressed to a subnet-directed broadcast address, or received as a link-layer
/// broadcast or multicast, must not be answered either; only the caller can tell, with
/// [`icmpv4_error_with`]. This is `icmpv4_error_with(.., false, ..)`.
pub fn icmpv4_error(
    out: &mut [u8],
    src: Ipv4Addr,
    ident: u16,
    offending: &[u8],
    kind: Icmpv4Error,
) -> Option<usize> {
    icmpv4_error_with(out, src, ident, offending, false, kind)
}

/// [`icmpv4_error`] with what only the caller knows: `dst_was_broadcast` says that the
/// offending packet was addressed to a subnet-directed broadcast address or arrived as a
/// link-layer broadcast or multicast, and so must not be answered (RFC 1812 4.3.2.7); with it
/// set this always returns `None`.
pub fn icmpv4_error_with(
    out: &mut [u8],
    src: Ipv4Addr,
    ident: u16,
    offending: &[u8],
    dst_was_broadcast: bool,
    kind: Icmpv4Error,
) -> Option<usize> {
    let (header, bytes) = offending_v4(offending)?;
    if header.frag_offset() != 0 {
        return None;
    }
    let dst = header.dst_addr();
    if dst_was_broadcast || dst.is_multicast() || dst.is_broadcast() {
        return None;
    }
    let to = header.src_addr();
    if !is_unicast_v4(to) {
        return None;
    }
    if header.protocol() == IpProtocol::Icmp {
        // Without the type we cannot tell a query from an error: send nothing, as Linux.
        let msg_type = *bytes.get(usize::from(header.header_len()))?;
        if is_icmpv4_error_type(msg_type) {
            return None;
        }
    }

    let data_len = bytes
        .len()
        .min(ICMPV4_ERROR_MAX_LEN - IPV4_HEADER_LEN - ICMPV4_HEADER_LEN);
    let data = bytes.get(..data_len)?;
    let icmp_repr = kind.repr(data_len);
    let ip_repr = Ipv4Repr {
        src_addr: src,
        dst_addr: to,
        protocol: IpProtocol::Icmp,
        payload_len: icmp_repr.buffer_len(),
        ttl: ICMP_TTL,
        dscp: ERROR_DSCP_V4,
        ecn: 0,
        ident,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
        options: HeaderOptions::EMPTY,
    };
    let len = ip_repr.buffer_len();
    let (ip_bytes, icmp_bytes) = out.get_mut(..len)?.split_at_mut_checked(IPV4_HEADER_LEN)?;
    ip_repr.emit(&mut Ipv4Packet::new_unchecked(ip_bytes));
    let mut icmp = Icmpv4Packet::new_unchecked(icmp_bytes);
    icmp.data_mut().copy_from_slice(data);
    icmp_repr.emit(&mut icmp);
    Some(len)
}

/// Writes into `out` a complete IPv4 packet answering the echo request `request` (the whole
/// IPv4 packet, addressed to an address of the caller's) and returns its length.
///
/// The reply goes from the request's destination to its source with TTL 64, IP ident `ident`,
/// DF clear, the request's DSCP (ECN cleared, as Linux copies the TOS) and no options: the
/// header is 20 bytes whatever options the request had. The ICMP identifier, sequence number
/// and data are the request's; the checksum is patched incrementally (RFC 1624).
///
/// Returns `None` if `request` is not a valid, unfragmented IPv4 ICMP echo request (a wrong
/// IP or ICMP checksum included), is from or to an address that is not unicast (a broadcast
/// or multicast ping; a subnet-directed broadcast is the caller's to refuse), or `out` is too
/// small.
pub fn icmpv4_echo_reply(out: &mut [u8], ident: u16, request: &[u8]) -> Option<usize> {
    let packet = Ipv4Packet::new_checked(request).ok()?;
    if packet.version() != 4
        || !packet.verify_checksum()
        || packet.protocol() != IpProtocol::Icmp
        || packet.is_fragment()
    {
        return None;
    }
    let (from, to) = (packet.dst_addr(), packet.src_addr());
    if !is_unicast_v4(from) || !is_unicast_v4(to) {
        return None;
    }
    let message = packet.payload();
    let icmp = Icmpv4Packet::new_checked(message).ok()?;
    if icmp.msg_type() != Icmpv4Message::EchoRequest || !icmp.verify_checksum() {
        return None;
    }

    let ip_repr = Ipv4Repr {
        src_addr: from,
        dst_addr: to,
        protocol: IpProtocol::Icmp,
        payload_len: message.len(),
        ttl: ICMP_TTL,
        dscp: packet.dscp(),
        ecn: 0,
        ident,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
        options: HeaderOptions::EMPTY,
    };
    let len = ip_repr.buffer_len();
    let (ip_bytes, icmp_bytes) = out.get_mut(..len)?.split_at_mut_checked(IPV4_HEADER_LEN)?;
    ip_repr.emit(&mut Ipv4Packet::new_unchecked(ip_bytes));
    icmp_bytes.copy_from_slice(message);
    let mut reply = Icmpv4Packet::new_unchecked(icmp_bytes);
    // Only the type/code word changes: 8/code -> 0/0.
    let old = u16::from_be_bytes([u8::from(Icmpv4Message::EchoRequest), icmp.msg_code()]);
    reply.set_msg_type(Icmpv4Message::EchoReply);
    reply.set_msg_code(0);
    reply.set_checksum(checksum::update16(icmp.checksum(), old, 0));
    Some(len)
}

/// Whether `addr` may be the destination of an ICMPv6 message: not unspecified, multicast
/// or loopback (RFC 4443 2.4(e.6)).
fn is_unicast_v6(addr: &Ipv6Addr) -> bool {
    !(addr.is_unspecified() || addr.is_multicast() || addr.is_loopback())
}

/// The upper layer of an IPv6 packet: walks the extension headers of RFC 8200 (hop-by-hop,
/// routing, fragment, destination options, authentication) in `payload`, which starts after
/// the fixed header whose next header is `next_header`. Returns the upper-layer protocol,
/// its offset in `payload` (which may be past the end when the bytes are cut short), and
/// whether a fragment header with a non-zero offset hides it (the bytes there are not its
/// header). `None` if a next-header or length byte, or a fragment header, is cut off.
fn upper_layer(payload: &[u8], mut next_header: u8) -> Option<(u8, usize, bool)> {
    let mut offset = 0usize;
    loop {
        let len = match next_header {
            NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {
                (usize::from(*payload.get(offset.checked_add(1)?)?) + 1) * 8
            }
            NH_AUTH => (usize::from(*payload.get(offset.checked_add(1)?)?) + 2) * 4,
            NH_FRAGMENT => {
                let frag = payload.get(offset..offset.checked_add(8)?)?;
                let frag_offset = u16::from_be_bytes([frag[2], frag[3]]) & !0x7;
                if frag_offset != 0 {
                    return Some((frag[0], offset + 8, true));
                }
                8
            }
            upper => return Some((upper, offset, false)),
        };
        next_header = *payload.get(offset)?;
        offset = offset.checked_add(len)?;
    }
}

/// Whether RFC 4443 2.4(e.1, e.2) forbids an error about a packet whose payload after the
/// fixed header is `payload`: it is an ICMPv6 error (type below 128) or a redirect. As Linux,
/// an ICMPv6 message cut off before its type counts as an error, while an extension header
/// chain cut off before its next-header byte, or a non-first fragment, leaves the upper layer
/// unknown and does not forbid the error.
fn is_ineligible_v6(next_header: u8, payload: &[u8]) -> bool {
    match upper_layer(payload, next_header) {
        Some((NH_ICMPV6, offset, false)) => match payload.get(offset) {
            Some(&msg_type) => {
                msg_type < 128 || Icmpv6Message::from(msg_type) == Icmpv6Message::Redirect
            }
            None => true,
        },
        _ => false,
    }
}

/// Writes into `out` a complete IPv6 packet carrying an ICMPv6 error about `offending`, from
/// `src` to the offending packet's source, and returns its length.
///
/// `offending` is the IPv6 packet as received, starting at its fixed header; it may be cut
/// short after it. The error has hop limit 64, traffic class and flow label 0; its data is as
/// much of the offending packet as keeps the whole error within 1280 bytes (RFC 4443 2.4(c)).
/// The checksum covers the IPv6 pseudo header.
///
/// Returns `None`, sending nothing, when RFC 4443 2.4(e) forbids the error: the offending
/// packet is an ICMPv6 error message (type below 128) or a redirect (found behind any
/// extension headers); its source is unspecified, multicast or loopback; its destination is
/// multicast, unless `kind` is [`Icmpv6Error::PacketTooBig`], which is sent for multicast too.
/// Also `None` if the fixed header is cut off or not version 6, or `out` is too small. Whether
/// the packet arrived as a link-layer multicast or broadcast (e.4, e.5) is the caller's to
/// check.
pub fn icmpv6_error(
    out: &mut [u8],
    src: Ipv6Addr,
    offending: &[u8],
    kind: Icmpv6Error,
) -> Option<usize> {
    let header = Ipv6Packet::new_unchecked(offending.get(..IPV6_HEADER_LEN)?);
    if header.version() != 6 {
        return None;
    }
    let bytes = offending
        .get(..IPV6_HEADER_LEN + usize::from(header.payload_len()))
        .unwrap_or(offending);
    let to = header.src_addr();
    if !is_unicast_v6(&to) {
        return None;
    }
    if header.dst_addr().is_multicast() && !matches!(kind, Icmpv6Error::PacketTooBig { .. }) {
        return None;
    }
    if is_ineligible_v6(
        u8::from(header.next_header()),
        bytes.get(IPV6_HEADER_LEN..)?,
    ) {
        return None;
    }

    let data_len = bytes
        .len()
        .min(ICMPV6_ERROR_MAX_LEN - IPV6_HEADER_LEN - ICMPV6_HEADER_LEN);
    let data = bytes.get(..data_len)?;
    let icmp_repr = kind.repr(data_len);
    let ip_repr = Ipv6Repr {
        src_addr: src,
        dst_addr: to,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp_repr.buffer_len(),
        hop_limit: ICMP_TTL,
        traffic_class: 0,
        flow_label: 0,
    };
    let len = ip_repr.buffer_len();
    let (ip_bytes, icmp_bytes) = out.get_mut(..len)?.split_at_mut_checked(IPV6_HEADER_LEN)?;
    ip_repr.emit(&mut Ipv6Packet::new_unchecked(ip_bytes));
    let mut icmp = Icmpv6Packet::new_unchecked(icmp_bytes);
    icmp.data_mut().copy_from_slice(data);
    icmp_repr.emit(&src, &to, &mut icmp);
    Some(len)
}

/// Writes into `out` a complete IPv6 packet answering the echo request `request` (the whole
/// IPv6 packet, addressed to an address of the caller's) and returns its length.
///
/// The reply goes from the request's destination to its source with hop limit 64, the
/// request's traffic class with ECN cleared, flow label 0, and no extension headers: any
/// hop-by-hop or destination options of the request are dropped. The identifier, sequence
/// number and data are the request's; the checksum is patched incrementally (RFC 1624: the
/// pseudo-header sum does not change when the addresses swap).
///
/// Returns `None` if `request` is not a valid IPv6 echo request (a wrong checksum included,
/// or behind a routing or fragment header), its destination is multicast (the caller answers
/// those itself, if at all) or unspecified, its source is unspecified or multicast, or `out`
/// is too small.
pub fn icmpv6_echo_reply(out: &mut [u8], request: &[u8]) -> Option<usize> {
    let packet = Ipv6Packet::new_checked(request).ok()?;
    if packet.version() != 6 {
        return None;
    }
    let (from, to) = (packet.dst_addr(), packet.src_addr());
    if from.is_multicast() || from.is_unspecified() || to.is_multicast() || to.is_unspecified() {
        return None;
    }
    let payload = packet.payload();
    let mut next_header = u8::from(packet.next_header());
    let mut offset = 0usize;
    while next_header == NH_HOP_BY_HOP || next_header == NH_DEST_OPTS {
        let len = (usize::from(*payload.get(offset.checked_add(1)?)?) + 1) * 8;
        next_header = *payload.get(offset)?;
        offset = offset.checked_add(len)?;
    }
    if next_header != NH_ICMPV6 {
        return None;
    }
    let message = payload.get(offset..)?;
    let icmp = Icmpv6Packet::new_checked(message).ok()?;
    if icmp.msg_type() != Icmpv6Message::EchoRequest || !icmp.verify_checksum(&to, &from) {
        return None;
    }

    let ip_repr = Ipv6Repr {
        src_addr: from,
        dst_addr: to,
        next_header: IpProtocol::Icmpv6,
        payload_len: message.len(),
        hop_limit: ICMP_TTL,
        traffic_class: packet.traffic_class() & !0x03,
        flow_label: 0,
    };
    let len = ip_repr.buffer_len();
    let (ip_bytes, icmp_bytes) = out.get_mut(..len)?.split_at_mut_checked(IPV6_HEADER_LEN)?;
    ip_repr.emit(&mut Ipv6Packet::new_unchecked(ip_bytes));
    icmp_bytes.copy_from_slice(message);
    let mut reply = Icmpv6Packet::new_unchecked(icmp_bytes);
    let old = u16::from_be_bytes([u8::from(Icmpv6Message::EchoRequest), icmp.msg_code()]);
    let new = u16::from_be_bytes([u8::from(Icmpv6Message::EchoReply), 0]);
    reply.set_msg_type(Icmpv6Message::EchoReply);
    reply.set_msg_code(0);
    reply.set_checksum(checksum::update16(icmp.checksum(), old, new));
    Some(len)
}

/// One token, in the bucket's units: a thousandth of a token accrues per millisecond for each
/// message per second, so the arithmetic stays in integers.
const TOKEN: u64 = 1000;

/// A token bucket limiting the ICMP errors the router sends, like Linux's global limit
/// (`net.ipv4.icmp_msgs_per_sec` 1000, `icmp_msgs_burst` 50): up to `burst` messages at once,
/// refilled at `per_sec` messages a second. It starts full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpRateLimit {
    /// Units added per millisecond: `per_sec` tokens a second.
    per_ms: u64,
    /// The most units the bucket holds: `burst` tokens.
    capacity: u64,
    tokens: u64,
    /// The latest time seen, `None` before the first call.
    last: Option<Timestamp>,
}

impl IcmpRateLimit {
    /// A full bucket of `burst` messages, refilled at `per_sec` messages a second. With
    /// `burst` 0 nothing is ever allowed; with `per_sec` 0 only the first `burst`.
    pub const fn new(per_sec: u32, burst: u32) -> Self {
        let capacity = burst as u64 * TOKEN;
        IcmpRateLimit {
            per_ms: per_sec as u64,
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    /// Whether one more message may be sent at `now`; if so, it is counted. A clock that
    /// steps back adds nothing.
    pub fn allow(&mut self, now: Timestamp) -> bool {
        match self.last {
            Some(last) if now > last => {
                let refill = now.millis_since(last).saturating_mul(self.per_ms);
                self.tokens = self.tokens.saturating_add(refill).min(self.capacity);
                self.last = Some(now);
            }
            Some(_) => {}
            None => self.last = Some(now),
        }
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            false
        }
    }
}

impl Default for IcmpRateLimit {
    /// 1000 messages a second, bursts of 50, as Linux.
    fn default() -> Self {
        IcmpRateLimit::new(1000, 50)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PseudoHeader, UdpPacket, UdpRepr};

    const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 1);
    const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 10);
    const FAR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    fn router6() -> Ipv6Addr {
        "2001:db8::1".parse().unwrap()
    }

    fn host6() -> Ipv6Addr {
        "2001:db8::10".parse().unwrap()
    }

    fn far6() -> Ipv6Addr {
        "2001:db8:ffff::7".parse().unwrap()
    }

    fn ipv4_repr(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, len: usize) -> Ipv4Repr {
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol,
            payload_len: len,
            ttl: 1,
            dscp: 10,
            ecn: 1,
            ident: 0x4242,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            options: HeaderOptions::EMPTY,
        }
    }

    /// An IPv4 packet of `repr` with `payload`.
    fn ipv4_packet(repr: &Ipv4Repr, payload: &[u8]) -> Vec<u8> {
        assert_eq!(repr.payload_len, payload.len());
        let mut bytes = vec![0u8; repr.buffer_len()];
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(payload);
        bytes
    }

    /// A UDP datagram of `data_len` patterned bytes, as its IPv4 payload.
    fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, data_len: usize) -> Vec<u8> {
        let repr = UdpRepr {
            src_port: 40000,
            dst_port: 33434,
            payload_len: data_len,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        let mut packet = UdpPacket::new_unchecked(&mut bytes[..]);
        packet.set_len(repr.buffer_len() as u16);
        for (i, b) in packet.payload_mut().iter_mut().enumerate() {
            *b = i as u8;
        }
        repr.emit(&mut packet, &PseudoHeader::V4 { src, dst });
        bytes
    }

    fn udp_packet_v4(src: Ipv4Addr, dst: Ipv4Addr, data_len: usize) -> Vec<u8> {
        let udp = udp_v4(src, dst, data_len);
        ipv4_packet(&ipv4_repr(src, dst, IpProtocol::Udp, udp.len()), &udp)
    }

    /// An ICMPv4 message of `repr` with `data`.
    fn icmpv4_message(repr: &Icmpv4Repr, data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; repr.buffer_len()];
        let mut packet = Icmpv4Packet::new_unchecked(&mut bytes[..]);
        packet.data_mut().copy_from_slice(data);
        repr.emit(&mut packet);
        bytes
    }

    fn icmp_packet_v4(src: Ipv4Addr, dst: Ipv4Addr, repr: &Icmpv4Repr, data: &[u8]) -> Vec<u8> {
        let icmp = icmpv4_message(repr, data);
        ipv4_packet(&ipv4_repr(src, dst, IpProtocol::Icmp, icmp.len()), &icmp)
    }

    fn echo_request_v4(src: Ipv4Addr, dst: Ipv4Addr, data: &[u8]) -> Vec<u8> {
        let repr = Icmpv4Repr::EchoRequest {
            ident: 0x0d05,
            seq_no: 7,
            data_len: data.len(),
        };
        icmp_packet_v4(src, dst, &repr, data)
    }

    fn error_v4(offending: &[u8], kind: Icmpv4Error) -> Option<Vec<u8>> {
        let mut out = [0u8; 1500];
        let len = icmpv4_error(&mut out, ROUTER, 0x1234, offending, kind)?;
        Some(out[..len].to_vec())
    }

    /// Checks every field of an ICMPv4 error built by [`icmpv4_error`] about `offending`, and
    /// returns its ICMP header.
    fn check_error_v4(error: &[u8], offending: &[u8]) -> Icmpv4Repr {
        let ip = Ipv4Packet::new_checked(error).unwrap();
        assert_eq!(usize::from(ip.total_len()), error.len());
        assert!(error.len() <= ICMPV4_ERROR_MAX_LEN);
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(error[1], 0xc0, "TOS");
        assert_eq!(ip.ident(), 0x1234);
        assert!(!ip.dont_frag());
        assert!(!ip.more_frags());
        assert_eq!(ip.frag_offset(), 0);
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), IpProtocol::Icmp);
        assert_eq!(ip.src_addr(), ROUTER);
        let offending_ip = Ipv4Packet::new_unchecked(offending);
        assert_eq!(ip.dst_addr(), offending_ip.src_addr());
        assert!(ip.verify_checksum());

        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        let expect_len = offending.len().min(576 - 28);
        assert_eq!(icmp.data(), &offending[..expect_len]);
        let repr = Icmpv4Repr::parse(&icmp).unwrap();
        assert_eq!(repr.data_len(), expect_len);
        repr
    }

    #[test]
    fn time_exceeded_fields() {
        let offending = udp_packet_v4(HOST, FAR, 100);
        let error = error_v4(&offending, Icmpv4Error::TimeExceeded).unwrap();
        assert_eq!(error.len(), 20 + 8 + offending.len());
        let repr = check_error_v4(&error, &offending);
        assert_eq!(
            repr,
            Icmpv4Repr::TimeExceeded {
                reason: Icmpv4TimeExceeded::TtlExpired,
                data_len: offending.len(),
            }
        );
        assert_eq!(&error[20..24], &[11, 0, error[22], error[23]]);
        assert_eq!(&error[24..28], &[0, 0, 0, 0]);
    }

    #[test]
    fn every_kind_has_its_type_and_code() {
        let offending = udp_packet_v4(HOST, FAR, 30);
        let cases = [
            (Icmpv4Error::TimeExceeded, 11, 0, 0),
            (Icmpv4Error::NetUnreachable, 3, 0, 0),
            (Icmpv4Error::HostUnreachable, 3, 1, 0),
            (Icmpv4Error::ProtocolUnreachable, 3, 2, 0),
            (Icmpv4Error::PortUnreachable, 3, 3, 0),
            (Icmpv4Error::FragNeeded { mtu: 1400 }, 3, 4, 1400),
            (Icmpv4Error::AdminProhibited, 3, 13, 0),
        ];
        for (kind, msg_type, code, rest) in cases {
            let error = error_v4(&offending, kind).unwrap();
            check_error_v4(&error, &offending);
            let icmp = Icmpv4Packet::new_checked(&error[20..]).unwrap();
            assert_eq!(u8::from(icmp.msg_type()), msg_type, "{kind:?}");
            assert_eq!(icmp.msg_code(), code, "{kind:?}");
            assert_eq!(icmp.rest_of_header(), rest, "{kind:?}");
        }
        assert!(Icmpv4Error::TimeExceeded.is_rate_limited());
        assert!(!Icmpv4Error::FragNeeded { mtu: 1400 }.is_rate_limited());
    }

    #[test]
    fn frag_needed_parses_as_such() {
        let offending = udp_packet_v4(HOST, FAR, 1472);
        let error = error_v4(&offending, Icmpv4Error::FragNeeded { mtu: 1400 }).unwrap();
        assert_eq!(
            check_error_v4(&error, &offending),
            Icmpv4Repr::DstUnreachable {
                reason: Icmpv4DstUnreachable::FragRequired,
                next_hop_mtu: 1400,
                data_len: 548,
            }
        );
    }

    #[test]
    fn error_is_capped_at_576_bytes() {
        for data_len in [519, 520, 521, 1472, 65507] {
            let offending = udp_packet_v4(HOST, FAR, data_len);
            let error = error_v4(&offending, Icmpv4Error::HostUnreachable).unwrap();
            check_error_v4(&error, &offending);
            assert_eq!(error.len(), (28 + offending.len()).min(576), "{data_len}");
        }
    }

    #[test]
    fn truncated_and_padded_offending_packets() {
        let offending = udp_packet_v4(HOST, FAR, 1000);
        // Only the header and 8 bytes are at hand.
        let error = error_v4(&offending[..28], Icmpv4Error::NetUnreachable).unwrap();
        check_error_v4(&error, &offending[..28]);
        assert_eq!(error.len(), 56);
        // Only the header.
        let error = error_v4(&offending[..20], Icmpv4Error::NetUnreachable).unwrap();
        check_error_v4(&error, &offending[..20]);
        // Ethernet padding after a short packet is not quoted.
        let short = udp_packet_v4(HOST, FAR, 2);
        let mut padded = short.clone();
        padded.resize(46, 0xee);
        let error = error_v4(&padded, Icmpv4Error::NetUnreachable).unwrap();
        check_error_v4(&error, &short);
        assert_eq!(error.len(), 28 + short.len());
    }

    #[test]
    fn offending_options_are_quoted() {
        let udp = udp_v4(HOST, FAR, 16);
        let mut repr = ipv4_repr(HOST, FAR, IpProtocol::Udp, udp.len());
        repr.options = HeaderOptions::new(&[0x94, 0x04, 0x00, 0x00]).unwrap();
        let offending = ipv4_packet(&repr, &udp);
        let error = error_v4(&offending, Icmpv4Error::PortUnreachable).unwrap();
        check_error_v4(&error, &offending);
        assert_eq!(error.len(), 28 + 24 + 24);
    }

    #[test]
    fn no_error_about_icmp_errors() {
        let inner = udp_packet_v4(FAR, HOST, 8);
        let errors = [
            Icmpv4Repr::DstUnreachable {
                reason: Icmpv4DstUnreachable::PortUnreachable,
                next_hop_mtu: 0,
                data_len: 28,
            },
            Icmpv4Repr::TimeExceeded {
                reason: Icmpv4TimeExceeded::TtlExpired,
                data_len: 28,
            },
        ];
        for repr in errors {
            let offending = icmp_packet_v4(HOST, FAR, &repr, &inner[..28]);
            assert_eq!(error_v4(&offending, Icmpv4Error::TimeExceeded), None);
        }
        // Source quench, redirect, parameter problem and unknown types above 18.
        for msg_type in [4u8, 5, 12, 19, 42, 255] {
            let repr = Icmpv4Repr::Other {
                msg_type: Icmpv4Message::from(msg_type),
                code: 0,
                rest_of_header: 0,
                data_len: 28,
            };
            let offending = icmp_packet_v4(HOST, FAR, &repr, &inner[..28]);
            assert_eq!(
                error_v4(&offending, Icmpv4Error::NetUnreachable),
                None,
                "type {msg_type}"
            );
        }
        // Queries are answered: echo request and reply, timestamp, router solicitation.
        for msg_type in [0u8, 8, 10, 13, 14, 17, 18] {
            let repr = Icmpv4Repr::Other {
                msg_type: Icmpv4Message::from(msg_type),
                code: 0,
                rest_of_header: 0x0001_0002,
                data_len: 12,
            };
            let offending = icmp_packet_v4(HOST, FAR, &repr, &[7; 12]);
            let error = error_v4(&offending, Icmpv4Error::TimeExceeded).unwrap();
            check_error_v4(&error, &offending);
        }
        // An ICMP packet cut off before its type is not answered.
        let offending = echo_request_v4(HOST, FAR, b"ping");
        assert_eq!(error_v4(&offending[..20], Icmpv4Error::TimeExceeded), None);
        assert!(error_v4(&offending[..21], Icmpv4Error::TimeExceeded).is_some());
    }

    #[test]
    fn fragments() {
        let udp = udp_v4(HOST, FAR, 64);
        let mut repr = ipv4_repr(HOST, FAR, IpProtocol::Udp, udp.len());
        repr.dont_frag = false;
        repr.more_frags = true;
        // The first fragment is answered.
        let offending = ipv4_packet(&repr, &udp);
        let error = error_v4(&offending, Icmpv4Error::TimeExceeded).unwrap();
        check_error_v4(&error, &offending);
        // Later ones are not, with or without more fragments after them.
        repr.frag_offset = 1480;
        let offending = ipv4_packet(&repr, &udp);
        assert_eq!(error_v4(&offending, Icmpv4Error::TimeExceeded), None);
        repr.more_frags = false;
        let offending = ipv4_packet(&repr, &udp);
        assert_eq!(error_v4(&offending, Icmpv4Error::TimeExceeded), None);
    }

    #[test]
    fn no_error_to_non_unicast_sources() {
        for src in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(0, 1, 2, 3),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 5),
            Ipv4Addr::new(239, 255, 255, 250),
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(127, 9, 9, 9),
            Ipv4Addr::new(240, 0, 0, 1),
        ] {
            let offending = udp_packet_v4(src, FAR, 10);
            assert_eq!(
                error_v4(&offending, Icmpv4Error::NetUnreachable),
                None,
                "{src}"
            );
        }
        // The edges of the forbidden ranges are fine.
        for src in [Ipv4Addr::new(1, 0, 0, 0), Ipv4Addr::new(223, 255, 255, 254)] {
            let offending = udp_packet_v4(src, FAR, 10);
            assert!(error_v4(&offending, Icmpv4Error::NetUnreachable).is_some());
        }
    }

    #[test]
    fn no_error_about_multicast_or_broadcast_destinations() {
        for dst in [
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::new(239, 1, 2, 3),
            Ipv4Addr::BROADCAST,
        ] {
            let offending = udp_packet_v4(HOST, dst, 10);
            assert_eq!(error_v4(&offending, Icmpv4Error::TimeExceeded), None);
        }
        // A subnet-directed broadcast, which only the caller can tell.
        let offending = udp_packet_v4(HOST, Ipv4Addr::new(192, 168, 122, 255), 10);
        let mut out = [0u8; 576];
        assert_eq!(
            icmpv4_error_with(
                &mut out,
                ROUTER,
                1,
                &offending,
                true,
                Icmpv4Error::PortUnreachable
            ),
            None
        );
        assert!(icmpv4_error_with(
            &mut out,
            ROUTER,
            1,
            &offending,
            false,
            Icmpv4Error::PortUnreachable
        )
        .is_some());
        assert!(icmpv4_error(
            &mut out,
            ROUTER,
            1,
            &offending,
            Icmpv4Error::PortUnreachable
        )
        .is_some());
    }

    #[test]
    fn error_out_buffer_too_small() {
        let offending = udp_packet_v4(HOST, FAR, 100);
        let need = 28 + offending.len();
        let mut out = vec![0u8; need];
        for len in 0..need {
            assert_eq!(
                icmpv4_error(
                    &mut out[..len],
                    ROUTER,
                    1,
                    &offending,
                    Icmpv4Error::TimeExceeded
                ),
                None
            );
        }
        assert_eq!(
            icmpv4_error(&mut out, ROUTER, 1, &offending, Icmpv4Error::TimeExceeded),
            Some(need)
        );
    }

    #[test]
    fn no_error_about_malformed_headers() {
        let good = udp_packet_v4(HOST, FAR, 40);
        let mut cases: Vec<Vec<u8>> = Vec::new();
        cases.extend((0..20).map(|len| good[..len].to_vec()));
        let mut v6 = good.clone();
        v6[0] = 0x65;
        cases.push(v6);
        for ihl in 0..5u8 {
            let mut b = good.clone();
            b[0] = 0x40 | ihl;
            cases.push(b);
        }
        // IHL 15 past the bytes at hand.
        let mut b = good.clone();
        b[0] = 0x4f;
        cases.push(b[..40].to_vec());
        // Total length below the header length, with the checksum fixed up.
        let mut b = good.clone();
        b[2..4].copy_from_slice(&19u16.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut b[..]).fill_checksum();
        cases.push(b);
        // A wrong header checksum.
        let mut b = good.clone();
        b[10] ^= 0x01;
        cases.push(b);
        for case in cases {
            assert_eq!(
                error_v4(&case, Icmpv4Error::NetUnreachable),
                None,
                "{case:02x?}"
            );
        }
    }

    /// Checks every field of an echo reply built by [`icmpv4_echo_reply`] for `request`.
    fn check_echo_reply_v4(reply: &[u8], request: &[u8]) {
        let req_ip = Ipv4Packet::new_checked(request).unwrap();
        let req_icmp = Icmpv4Packet::new_checked(req_ip.payload()).unwrap();
        let ip = Ipv4Packet::new_checked(reply).unwrap();
        assert_eq!(reply.len(), 20 + req_ip.payload().len());
        assert_eq!(usize::from(ip.total_len()), reply.len());
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.dscp(), req_ip.dscp());
        assert_eq!(ip.ecn(), 0);
        assert_eq!(ip.ident(), 0x5678);
        assert!(!ip.dont_frag());
        assert!(!ip.is_fragment());
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), IpProtocol::Icmp);
        assert_eq!(ip.src_addr(), req_ip.dst_addr());
        assert_eq!(ip.dst_addr(), req_ip.src_addr());
        assert!(ip.verify_checksum());

        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            Icmpv4Repr::parse(&icmp).unwrap(),
            Icmpv4Repr::EchoReply {
                ident: req_icmp.echo_ident(),
                seq_no: req_icmp.echo_seq_no(),
                data_len: req_icmp.data().len(),
            }
        );
        assert_eq!(icmp.msg_code(), 0);
        assert_eq!(icmp.data(), req_icmp.data());
        // The incremental checksum is the one a full computation gives.
        let mut copy = ip.payload().to_vec();
        let mut recomputed = Icmpv4Packet::new_unchecked(&mut copy[..]);
        recomputed.fill_checksum();
        assert_eq!(recomputed.checksum(), icmp.checksum());
    }

    fn echo_reply_v4(request: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; 2048];
        let len = icmpv4_echo_reply(&mut out, 0x5678, request)?;
        Some(out[..len].to_vec())
    }

    #[test]
    fn echo_reply_of_every_small_length() {
        for data_len in 0..=65 {
            let data: Vec<u8> = (0..data_len).map(|i| (i * 37 + 11) as u8).collect();
            let request = echo_request_v4(HOST, ROUTER, &data);
            let reply = echo_reply_v4(&request).unwrap();
            check_echo_reply_v4(&reply, &request);
        }
        // The fixture of the wire tests (scapy), and a large odd one.
        let request = echo_request_v4(HOST, ROUTER, b"tapswitch-ping!!");
        check_echo_reply_v4(&echo_reply_v4(&request).unwrap(), &request);
        let request = echo_request_v4(HOST, ROUTER, &[0xff; 1473]);
        check_echo_reply_v4(&echo_reply_v4(&request).unwrap(), &request);
    }

    #[test]
    fn echo_reply_drops_request_options_and_padding() {
        let icmp = icmpv4_message(
            &Icmpv4Repr::EchoRequest {
                ident: 1,
                seq_no: 2,
                data_len: 5,
            },
            b"hello",
        );
        let mut repr = ipv4_repr(HOST, ROUTER, IpProtocol::Icmp, icmp.len());
        repr.options =
            HeaderOptions::new(&[0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00]).unwrap();
        let mut request = ipv4_packet(&repr, &icmp);
        let reply = echo_reply_v4(&request).unwrap();
        check_echo_reply_v4(&reply, &request);
        assert_eq!(reply.len(), 20 + 13);
        request.resize(60, 0);
        assert_eq!(echo_reply_v4(&request).unwrap(), reply);
    }

    #[test]
    fn echo_reply_out_buffer_too_small() {
        let request = echo_request_v4(HOST, ROUTER, b"abc");
        let mut out = [0u8; 31];
        for len in 0..31 {
            assert_eq!(icmpv4_echo_reply(&mut out[..len], 1, &request), None);
        }
        assert_eq!(icmpv4_echo_reply(&mut out, 1, &request), Some(31));
    }

    #[test]
    fn no_echo_reply_to_invalid_requests() {
        let good = echo_request_v4(HOST, ROUTER, b"odd");
        assert!(echo_reply_v4(&good).is_some());
        // A wrong ICMP checksum.
        let mut b = good.clone();
        *b.last_mut().unwrap() ^= 0x40;
        assert_eq!(echo_reply_v4(&b), None);
        // A wrong IP checksum.
        let mut b = good.clone();
        b[11] ^= 0x40;
        assert_eq!(echo_reply_v4(&b), None);
        // Cut short.
        for len in 0..good.len() {
            assert_eq!(echo_reply_v4(&good[..len]), None);
        }
        // ICMP shorter than its header.
        let short = ipv4_packet(&ipv4_repr(HOST, ROUTER, IpProtocol::Icmp, 4), &[8, 0, 0, 0]);
        assert_eq!(echo_reply_v4(&short), None);
        // An echo reply, a timestamp request.
        let reply = icmp_packet_v4(
            HOST,
            ROUTER,
            &Icmpv4Repr::EchoReply {
                ident: 1,
                seq_no: 1,
                data_len: 0,
            },
            &[],
        );
        assert_eq!(echo_reply_v4(&reply), None);
        let timestamp = icmp_packet_v4(
            HOST,
            ROUTER,
            &Icmpv4Repr::Other {
                msg_type: Icmpv4Message::Unknown(13),
                code: 0,
                rest_of_header: 0,
                data_len: 12,
            },
            &[0; 12],
        );
        assert_eq!(echo_reply_v4(&timestamp), None);
        // Not ICMP.
        assert_eq!(echo_reply_v4(&udp_packet_v4(HOST, ROUTER, 8)), None);
        // A fragment.
        let icmp = icmpv4_message(
            &Icmpv4Repr::EchoRequest {
                ident: 1,
                seq_no: 1,
                data_len: 8,
            },
            &[1; 8],
        );
        let mut repr = ipv4_repr(HOST, ROUTER, IpProtocol::Icmp, icmp.len());
        repr.dont_frag = false;
        repr.more_frags = true;
        assert_eq!(echo_reply_v4(&ipv4_packet(&repr, &icmp)), None);
        // To a broadcast or multicast address, or from a non-unicast one.
        for (src, dst) in [
            (HOST, Ipv4Addr::BROADCAST),
            (HOST, Ipv4Addr::new(224, 0, 0, 1)),
            (Ipv4Addr::UNSPECIFIED, ROUTER),
            (Ipv4Addr::new(239, 0, 0, 1), ROUTER),
        ] {
            assert_eq!(echo_reply_v4(&echo_request_v4(src, dst, b"x")), None);
        }
    }

    fn ipv6_packet(repr: &Ipv6Repr, payload: &[u8]) -> Vec<u8> {
        assert_eq!(repr.payload_len, payload.len());
        let mut bytes = vec![0u8; repr.buffer_len()];
        let mut packet = Ipv6Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(payload);
        bytes
    }

    fn ipv6_repr(src: Ipv6Addr, dst: Ipv6Addr, next_header: IpProtocol, len: usize) -> Ipv6Repr {
        Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header,
            payload_len: len,
            hop_limit: 1,
            traffic_class: 0x2a,
            flow_label: 0x12345,
        }
    }

    fn udp_packet_v6(src: Ipv6Addr, dst: Ipv6Addr, data_len: usize) -> Vec<u8> {
        let repr = UdpRepr {
            src_port: 40000,
            dst_port: 33434,
            payload_len: data_len,
        };
        let mut udp = vec![0u8; repr.buffer_len()];
        let mut packet = UdpPacket::new_unchecked(&mut udp[..]);
        packet.set_len(repr.buffer_len() as u16);
        for (i, b) in packet.payload_mut().iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        repr.emit(&mut packet, &PseudoHeader::V6 { src, dst });
        ipv6_packet(&ipv6_repr(src, dst, IpProtocol::Udp, udp.len()), &udp)
    }

    fn icmpv6_message(src: Ipv6Addr, dst: Ipv6Addr, repr: &Icmpv6Repr, data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; repr.buffer_len()];
        let mut packet = Icmpv6Packet::new_unchecked(&mut bytes[..]);
        packet.data_mut().copy_from_slice(data);
        repr.emit(&src, &dst, &mut packet);
        bytes
    }

    fn icmp_packet_v6(src: Ipv6Addr, dst: Ipv6Addr, repr: &Icmpv6Repr, data: &[u8]) -> Vec<u8> {
        let icmp = icmpv6_message(src, dst, repr, data);
        ipv6_packet(&ipv6_repr(src, dst, IpProtocol::Icmpv6, icmp.len()), &icmp)
    }

    fn other_v6(msg_type: u8, data_len: usize) -> Icmpv6Repr {
        Icmpv6Repr::Other {
            msg_type: Icmpv6Message::from(msg_type),
            code: 0,
            rest_of_header: 0,
            data_len,
        }
    }

    fn error_v6(offending: &[u8], kind: Icmpv6Error) -> Option<Vec<u8>> {
        let mut out = [0u8; 1500];
        let len = icmpv6_error(&mut out, router6(), offending, kind)?;
        Some(out[..len].to_vec())
    }

    /// Checks every field of an ICMPv6 error built by [`icmpv6_error`] about `offending`,
    /// and returns its ICMPv6 header.
    fn check_error_v6(error: &[u8], offending: &[u8]) -> Icmpv6Repr {
        let ip = Ipv6Packet::new_checked(error).unwrap();
        assert!(error.len() <= ICMPV6_ERROR_MAX_LEN);
        assert_eq!(40 + usize::from(ip.payload_len()), error.len());
        let repr = Ipv6Repr::parse(&ip).unwrap();
        let offending_src = Ipv6Packet::new_unchecked(offending).src_addr();
        assert_eq!(
            repr,
            Ipv6Repr {
                src_addr: router6(),
                dst_addr: offending_src,
                next_header: IpProtocol::Icmpv6,
                payload_len: error.len() - 40,
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            }
        );
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&router6(), &offending_src));
        assert!(!icmp.verify_checksum(&router6(), &far6()));
        let expect_len = offending.len().min(1280 - 48);
        assert_eq!(icmp.data(), &offending[..expect_len]);
        let repr = Icmpv6Repr::parse(&icmp).unwrap();
        assert_eq!(icmp.data().len(), expect_len);
        repr
    }

    #[test]
    fn hop_limit_exceeded_fields() {
        let offending = udp_packet_v6(host6(), far6(), 100);
        let error = error_v6(&offending, Icmpv6Error::HopLimitExceeded).unwrap();
        assert_eq!(error.len(), 48 + offending.len());
        assert_eq!(
            check_error_v6(&error, &offending),
            Icmpv6Repr::Other {
                msg_type: Icmpv6Message::TimeExceeded,
                code: 0,
                rest_of_header: 0,
                data_len: offending.len(),
            }
        );
        assert_eq!((error[40], error[41]), (3, 0));
    }

    #[test]
    fn every_v6_kind_has_its_type_and_code() {
        let offending = udp_packet_v6(host6(), far6(), 30);
        let cases = [
            (Icmpv6Error::HopLimitExceeded, 3, 0, 0),
            (Icmpv6Error::NoRoute, 1, 0, 0),
            (Icmpv6Error::AdminProhibited, 1, 1, 0),
            (Icmpv6Error::AddressUnreachable, 1, 3, 0),
            (Icmpv6Error::PortUnreachable, 1, 4, 0),
            (Icmpv6Error::PacketTooBig { mtu: 1280 }, 2, 0, 1280),
            (Icmpv6Error::PacketTooBig { mtu: 70000 }, 2, 0, 70000),
        ];
        for (kind, msg_type, code, rest) in cases {
            let error = error_v6(&offending, kind).unwrap();
            check_error_v6(&error, &offending);
            let icmp = Icmpv6Packet::new_checked(&error[40..]).unwrap();
            assert_eq!(u8::from(icmp.msg_type()), msg_type, "{kind:?}");
            assert_eq!(icmp.msg_code(), code, "{kind:?}");
            assert_eq!(icmp.rest_of_header(), rest, "{kind:?}");
        }
        assert!(Icmpv6Error::NoRoute.is_rate_limited());
        assert!(!Icmpv6Error::PacketTooBig { mtu: 1280 }.is_rate_limited());
    }

    #[test]
    fn v6_error_is_capped_at_1280_bytes() {
        for data_len in [1183, 1184, 1185, 1452, 65000] {
            let offending = udp_packet_v6(host6(), far6(), data_len);
            let error = error_v6(&offending, Icmpv6Error::PacketTooBig { mtu: 1280 }).unwrap();
            check_error_v6(&error, &offending);
            assert_eq!(error.len(), (48 + offending.len()).min(1280), "{data_len}");
        }
    }

    #[test]
    fn v6_truncated_and_padded_offending_packets() {
        let offending = udp_packet_v6(host6(), far6(), 500);
        let error = error_v6(&offending[..40], Icmpv6Error::NoRoute).unwrap();
        check_error_v6(&error, &offending[..40]);
        let error = error_v6(&offending[..45], Icmpv6Error::NoRoute).unwrap();
        check_error_v6(&error, &offending[..45]);
        let short = udp_packet_v6(host6(), far6(), 1);
        let mut padded = short.clone();
        padded.resize(short.len() + 9, 0xee);
        let error = error_v6(&padded, Icmpv6Error::NoRoute).unwrap();
        check_error_v6(&error, &short);
    }

    #[test]
    fn no_v6_error_about_icmpv6_errors_or_redirects() {
        let inner = udp_packet_v6(far6(), host6(), 8);
        for msg_type in [1u8, 2, 3, 4, 100, 127, 137] {
            let offending =
                icmp_packet_v6(host6(), far6(), &other_v6(msg_type, inner.len()), &inner);
            assert_eq!(
                error_v6(&offending, Icmpv6Error::HopLimitExceeded),
                None,
                "type {msg_type}"
            );
        }
        // Informational messages are answered.
        for msg_type in [128u8, 129, 135, 200] {
            let offending = icmp_packet_v6(host6(), far6(), &other_v6(msg_type, 8), &[1; 8]);
            let error = error_v6(&offending, Icmpv6Error::HopLimitExceeded).unwrap();
            check_error_v6(&error, &offending);
        }
        // An ICMPv6 message cut off before its type is not answered.
        let offending = icmp_packet_v6(host6(), far6(), &other_v6(128, 0), &[]);
        assert_eq!(error_v6(&offending[..40], Icmpv6Error::NoRoute), None);
        assert!(error_v6(&offending[..41], Icmpv6Error::NoRoute).is_some());
    }

    /// An ICMPv6 message behind `ext` (extension headers chained by their first byte), whose
    /// first header is `first`.
    fn behind_ext_headers(first: u8, ext: &[u8], icmp: &[u8]) -> Vec<u8> {
        let mut payload = ext.to_vec();
        payload.extend_from_slice(icmp);
        let repr = ipv6_repr(host6(), far6(), IpProtocol::from(first), payload.len());
        ipv6_packet(&repr, &payload)
    }

    #[test]
    fn v6_icmp_errors_found_behind_extension_headers() {
        let error_msg = icmpv6_message(host6(), far6(), &other_v6(1, 8), &[0; 8]);
        let echo_msg = icmpv6_message(host6(), far6(), &other_v6(128, 8), &[0; 8]);
        // Hop-by-hop (8 bytes, PadN) -> destination options (16 bytes) -> ICMPv6.
        let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[58, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let offending = behind_ext_headers(0, &ext, &error_msg);
        assert_eq!(error_v6(&offending, Icmpv6Error::NoRoute), None);
        let offending = behind_ext_headers(0, &ext, &echo_msg);
        assert!(error_v6(&offending, Icmpv6Error::NoRoute).is_some());
        // A first fragment shows the ICMPv6 header; a later one does not, and is answered.
        let first = [58, 0, 0x00, 0x01, 0, 0, 0, 1];
        let offending = behind_ext_headers(44, &first, &error_msg);
        assert_eq!(error_v6(&offending, Icmpv6Error::NoRoute), None);
        let later = [58, 0, 0x05, 0x68, 0, 0, 0, 1];
        let offending = behind_ext_headers(44, &later, &error_msg);
        assert!(error_v6(&offending, Icmpv6Error::NoRoute).is_some());
        // Routing (type 4, 8 bytes) and authentication (16 bytes) headers.
        let mut ext = vec![51, 0, 4, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&[58, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let offending = behind_ext_headers(43, &ext, &error_msg);
        assert_eq!(error_v6(&offending, Icmpv6Error::NoRoute), None);
        // An extension header running past the bytes at hand still names the upper layer:
        // an ICMPv6 message whose type is out of sight is not answered...
        let offending = behind_ext_headers(0, &[58, 200, 0, 0, 0, 0, 0, 0], &error_msg);
        assert_eq!(error_v6(&offending, Icmpv6Error::NoRoute), None);
        let offending = behind_ext_headers(0, &[17, 200, 0, 0, 0, 0, 0, 0], &error_msg);
        assert!(error_v6(&offending, Icmpv6Error::NoRoute).is_some());
        // ...but a chain cut off before its next-header or length byte hides nothing.
        let offending = behind_ext_headers(0, &[58, 0, 1, 4, 0, 0, 0, 0], &error_msg);
        assert!(error_v6(&offending[..40], Icmpv6Error::NoRoute).is_some());
        assert!(error_v6(&offending[..41], Icmpv6Error::NoRoute).is_some());
        let offending = behind_ext_headers(44, &first, &error_msg);
        assert!(error_v6(&offending[..47], Icmpv6Error::NoRoute).is_some());
    }

    #[test]
    fn no_v6_error_to_non_unicast_sources() {
        for src in ["::", "::1", "ff02::1", "ff05::1:3"] {
            let offending = udp_packet_v6(src.parse().unwrap(), far6(), 10);
            assert_eq!(error_v6(&offending, Icmpv6Error::NoRoute), None, "{src}");
            assert_eq!(
                error_v6(&offending, Icmpv6Error::PacketTooBig { mtu: 1280 }),
                None,
                "{src}"
            );
        }
        let link_local = udp_packet_v6("fe80::1".parse().unwrap(), far6(), 10);
        assert!(error_v6(&link_local, Icmpv6Error::NoRoute).is_some());
    }

    #[test]
    fn v6_multicast_destinations_get_only_packet_too_big() {
        let offending = udp_packet_v6(host6(), "ff0e::1234".parse().unwrap(), 1400);
        for kind in [
            Icmpv6Error::HopLimitExceeded,
            Icmpv6Error::NoRoute,
            Icmpv6Error::AddressUnreachable,
            Icmpv6Error::PortUnreachable,
            Icmpv6Error::AdminProhibited,
        ] {
            assert_eq!(error_v6(&offending, kind), None, "{kind:?}");
        }
        let error = error_v6(&offending, Icmpv6Error::PacketTooBig { mtu: 1280 }).unwrap();
        check_error_v6(&error, &offending);
        assert_eq!(error.len(), 1280);
    }

    #[test]
    fn v6_error_malformed_or_no_room() {
        let good = udp_packet_v6(host6(), far6(), 20);
        for len in 0..40 {
            assert_eq!(error_v6(&good[..len], Icmpv6Error::NoRoute), None);
        }
        let mut v4 = good.clone();
        v4[0] = 0x45;
        assert_eq!(error_v6(&v4, Icmpv6Error::NoRoute), None);
        let need = 48 + good.len();
        let mut out = vec![0u8; need];
        for len in 0..need {
            assert_eq!(
                icmpv6_error(&mut out[..len], router6(), &good, Icmpv6Error::NoRoute),
                None
            );
        }
        assert_eq!(
            icmpv6_error(&mut out, router6(), &good, Icmpv6Error::NoRoute),
            Some(need)
        );
    }

    fn echo_request_v6(src: Ipv6Addr, dst: Ipv6Addr, data: &[u8]) -> Vec<u8> {
        let repr = Icmpv6Repr::EchoRequest {
            ident: 0x1234,
            seq_no: 7,
            data_len: data.len(),
        };
        icmp_packet_v6(src, dst, &repr, data)
    }

    fn echo_reply_v6(request: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; 2048];
        let len = icmpv6_echo_reply(&mut out, request)?;
        Some(out[..len].to_vec())
    }

    /// Checks every field of a reply built by [`icmpv6_echo_reply`] to a request from `host`
    /// to `router` carrying `data`.
    fn check_echo_reply_v6(reply: &[u8], host: Ipv6Addr, router: Ipv6Addr, data: &[u8]) {
        let ip = Ipv6Packet::new_checked(reply).unwrap();
        assert_eq!(reply.len(), 48 + data.len());
        assert_eq!(
            Ipv6Repr::parse(&ip).unwrap(),
            Ipv6Repr {
                src_addr: router,
                dst_addr: host,
                next_header: IpProtocol::Icmpv6,
                payload_len: 8 + data.len(),
                hop_limit: 64,
                traffic_class: 0x28,
                flow_label: 0,
            }
        );
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&router, &host));
        assert_eq!(
            Icmpv6Repr::parse(&icmp).unwrap(),
            Icmpv6Repr::EchoReply {
                ident: 0x1234,
                seq_no: 7,
                data_len: data.len(),
            }
        );
        assert_eq!(icmp.msg_code(), 0);
        assert_eq!(icmp.data(), data);
        let mut copy = ip.payload().to_vec();
        let mut recomputed = Icmpv6Packet::new_unchecked(&mut copy[..]);
        recomputed.fill_checksum(&router, &host);
        assert_eq!(recomputed.checksum(), icmp.checksum());
    }

    #[test]
    fn v6_echo_reply_of_every_small_length() {
        for data_len in 0..=65 {
            let data: Vec<u8> = (0..data_len).map(|i| (i * 53 + 5) as u8).collect();
            let request = echo_request_v6(host6(), router6(), &data);
            let reply = echo_reply_v6(&request).unwrap();
            check_echo_reply_v6(&reply, host6(), router6(), &data);
        }
        let data = [0xffu8; 1401];
        let request = echo_request_v6(host6(), router6(), &data);
        check_echo_reply_v6(&echo_reply_v6(&request).unwrap(), host6(), router6(), &data);
        // Link-local addresses.
        let (host, router) = ("fe80::2".parse().unwrap(), "fe80::1".parse().unwrap());
        let request = echo_request_v6(host, router, b"tapswitch");
        check_echo_reply_v6(
            &echo_reply_v6(&request).unwrap(),
            host,
            router,
            b"tapswitch",
        );
    }

    #[test]
    fn v6_echo_reply_skips_option_headers() {
        let icmp = icmpv6_message(
            host6(),
            router6(),
            &Icmpv6Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 7,
                data_len: 3,
            },
            b"abc",
        );
        let mut payload = vec![60, 0, 1, 4, 0, 0, 0, 0, 58, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&icmp);
        let repr = ipv6_repr(host6(), router6(), IpProtocol::Unknown(0), payload.len());
        let mut request = ipv6_packet(&repr, &payload);
        let reply = echo_reply_v6(&request).unwrap();
        check_echo_reply_v6(&reply, host6(), router6(), b"abc");
        // Behind a routing header: not answered.
        request[40] = 43;
        request[6] = 0;
        assert_eq!(echo_reply_v6(&request), None);
        // Option headers running past the packet.
        request[40] = 58;
        request[41] = 100;
        assert_eq!(echo_reply_v6(&request), None);
    }

    #[test]
    fn no_v6_echo_reply_to_invalid_requests() {
        let good = echo_request_v6(host6(), router6(), b"odd");
        assert!(echo_reply_v6(&good).is_some());
        let mut b = good.clone();
        *b.last_mut().unwrap() ^= 1;
        assert_eq!(echo_reply_v6(&b), None);
        for len in 0..good.len() {
            assert_eq!(echo_reply_v6(&good[..len]), None);
        }
        let mut b = good.clone();
        b[0] = 0x45;
        assert_eq!(echo_reply_v6(&b), None);
        // A checksum right for other addresses.
        let wrong = icmpv6_message(
            far6(),
            router6(),
            &Icmpv6Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 7,
                data_len: 0,
            },
            &[],
        );
        let b = ipv6_packet(
            &ipv6_repr(host6(), router6(), IpProtocol::Icmpv6, wrong.len()),
            &wrong,
        );
        assert_eq!(echo_reply_v6(&b), None);
        // An echo reply, a neighbour solicitation-sized other message, UDP.
        let b = icmp_packet_v6(host6(), router6(), &other_v6(129, 4), &[0; 4]);
        assert_eq!(echo_reply_v6(&b), None);
        assert_eq!(echo_reply_v6(&udp_packet_v6(host6(), router6(), 8)), None);
        // Multicast or unspecified addresses.
        for (src, dst) in [
            (host6(), "ff02::1".parse().unwrap()),
            (host6(), Ipv6Addr::UNSPECIFIED),
            (Ipv6Addr::UNSPECIFIED, router6()),
            ("ff02::2".parse().unwrap(), router6()),
        ] {
            assert_eq!(echo_reply_v6(&echo_request_v6(src, dst, b"x")), None);
        }
        // No room.
        let mut out = [0u8; 51];
        for len in 0..51 {
            assert_eq!(icmpv6_echo_reply(&mut out[..len], &good), None);
        }
        assert_eq!(icmpv6_echo_reply(&mut out, &good), Some(51));
    }

    #[test]
    fn garbage_never_panics() {
        let mut out = [0u8; 1500];
        let mut seed = 0x1234_5678u32;
        for round in 0..4000 {
            let len = round % 200;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            if let Some(b) = bytes.first_mut() {
                *b = if round % 2 == 0 {
                    0x40 | (*b & 0x0f)
                } else {
                    0x60
                };
            }
            let _ = icmpv4_error(&mut out, ROUTER, 1, &bytes, Icmpv4Error::TimeExceeded);
            let _ = icmpv4_echo_reply(&mut out, 1, &bytes);
            let _ = icmpv6_error(&mut out, router6(), &bytes, Icmpv6Error::NoRoute);
            let _ = icmpv6_echo_reply(&mut out, &bytes);
            let _ = icmpv4_error(&mut out[..30], ROUTER, 1, &bytes, Icmpv4Error::TimeExceeded);
        }
    }

    #[test]
    fn rate_limit_default_burst_then_rate() {
        let mut limit = IcmpRateLimit::default();
        let t0 = Timestamp::from_secs(10);
        for i in 0..50 {
            assert!(limit.allow(t0), "message {i}");
        }
        assert!(!limit.allow(t0));
        // 1000 a second: one more every millisecond.
        let t1 = Timestamp::from_millis(t0.millis() + 1);
        assert!(limit.allow(t1));
        assert!(!limit.allow(t1));
        // After a long pause, no more than the burst.
        let t2 = Timestamp::from_secs(100);
        for _ in 0..50 {
            assert!(limit.allow(t2));
        }
        assert!(!limit.allow(t2));
        // A clock stepping back adds nothing.
        assert!(!limit.allow(t0));
        assert!(!limit.allow(t2));
    }

    #[test]
    fn rate_limit_slow_rates_and_edges() {
        // 2 a second, burst 1: one every 500 ms.
        let mut limit = IcmpRateLimit::new(2, 1);
        let t = |ms| Timestamp::from_millis(ms);
        assert!(limit.allow(t(0)));
        assert!(!limit.allow(t(499)));
        assert!(limit.allow(t(500)));
        assert!(!limit.allow(t(700)));
        assert!(!limit.allow(t(999)));
        assert!(limit.allow(t(1000)));
        // No refill: only the burst.
        let mut limit = IcmpRateLimit::new(0, 3);
        assert_eq!((0..10).filter(|&i| limit.allow(t(i * 1000))).count(), 3);
        // No burst: nothing.
        let mut limit = IcmpRateLimit::new(1000, 0);
        assert!(!limit.allow(t(0)));
        assert!(!limit.allow(t(u64::MAX)));
        // Huge values saturate instead of overflowing.
        let mut limit = IcmpRateLimit::new(u32::MAX, u32::MAX);
        assert!(limit.allow(t(0)));
        assert!(limit.allow(t(u64::MAX)));
    }
}
