//! VXLAN headers (RFC 7348): the 8 bytes at the start of the UDP payload, in front of the
//! inner Ethernet frame.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! [`VxlanRepr::parse`] requires the I flag ("The I flag MUST be set to 1 for a valid VXLAN
//! Network ID") and, as receivers SHOULD, ignores every reserved bit; the view's
//! [`reserved_bits_clear`](VxlanHeader::reserved_bits_clear) tells whether any is set, for a
//! caller that counts them. Extensions that use reserved bits (Group Based Policy, GPE) are
//! not interpreted.
//!
//! Also here: the choice of the outer UDP source port from a hash of the inner flow
//! ([`inner_flow_hash`], [`source_port`]), so that every packet of one flow takes one path
//! through an ECMP underlay (RFC 7348 section 5).

use core::fmt;

use super::vlan::TAG_LEN;
use super::{
    EtherType, EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet, Result, TcpPacket, UdpPacket,
    VlanTag, WireError,
};

/// The IANA-assigned UDP destination port of VXLAN.
pub const IANA_PORT: u16 = 4789;
/// The UDP port the Linux vxlan device uses when no `dstport` is given (it predates the IANA
/// assignment).
pub const LINUX_DEFAULT_PORT: u16 = 8472;

/// The lowest UDP source port [`source_port`] picks by default: the start of the Linux
/// `net.ipv4.ip_local_port_range` default, which the kernel's vxlan device falls back to.
pub const SOURCE_PORT_MIN: u16 = 32768;
/// The highest UDP source port [`source_port`] picks by default: the end of the Linux
/// `net.ipv4.ip_local_port_range` default.
pub const SOURCE_PORT_MAX: u16 = 60999;

/// The I flag: the VNI is valid. The other seven flag bits are reserved.
pub const FLAG_I: u8 = 0x08;

/// A 24-bit VXLAN network identifier, 0..=0xff_ffff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: u32 = 0x00ff_ffff;

    /// A VNI, or `None` if `vni` does not fit 24 bits.
    pub const fn new(vni: u32) -> Option<Vni> {
        if vni <= Self::MAX {
            Some(Vni(vni))
        } else {
            None
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

mod field {
    use core::ops::{Range, RangeFrom};

    pub const FLAGS: usize = 0;
    pub const RESERVED_1: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED_2: usize = 7;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// The length of a VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view of a VXLAN header and the inner frame after it (a UDP payload).
#[derive(Debug, Clone)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> VxlanHeader<T> {
        VxlanHeader { buffer }
    }

    /// Wraps untrusted bytes: after this no accessor can panic. The flags are not judged
    /// here; [`VxlanRepr::parse`] does.
    pub fn new_checked(buffer: T) -> Result<VxlanHeader<T>> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// `Truncated` if the buffer is shorter than the 8-byte header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole flags byte, reserved bits included.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag (valid VNI) is set.
    pub fn i_flag(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VNI field, whatever the I flag says.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// Whether every reserved bit is zero: the seven reserved flag bits, the 24 bits after
    /// the flags and the 8 bits after the VNI. Receivers ignore them; senders set them to 0.
    pub fn reserved_bits_clear(&self) -> bool {
        let b = self.buffer.as_ref();
        b[field::FLAGS] & !FLAG_I == 0
            && b[field::RESERVED_1] == [0, 0, 0]
            && b[field::RESERVED_2] == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> VxlanHeader<&'a T> {
    /// The inner Ethernet frame: everything after the header. As in smoltcp, it borrows from
    /// the buffer rather than from the view, so it can outlive the view.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanHeader<T> {
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Writes the VNI field; the reserved byte after it is left alone.
    pub fn set_vni(&mut self, value: Vni) {
        let b = value.get().to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// Zeroes every reserved bit (the I flag is kept as it is).
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[field::FLAGS] &= FLAG_I;
        b[field::RESERVED_1].fill(0);
        b[field::RESERVED_2] = 0;
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The owned form of a VXLAN header; the inner frame stays in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: Vni,
}

impl VxlanRepr {
    /// Reads the header: `Malformed` if the I flag is clear. Reserved bits are ignored (see
    /// [`VxlanHeader::reserved_bits_clear`]).
    pub fn parse<T: AsRef<[u8]>>(header: &VxlanHeader<T>) -> Result<VxlanRepr> {
        header.check_len()?;
        if !header.i_flag() {
            return Err(WireError::Malformed);
        }
        // The field is 24 bits wide, so this cannot fail.
        let vni = Vni::new(header.vni()).ok_or(WireError::Malformed)?;
        Ok(VxlanRepr { vni })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first 8 bytes of `header`: the I flag, the VNI and zero
    /// reserved bits. The inner frame is left alone.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut VxlanHeader<T>) {
        header.set_flags(FLAG_I);
        header.clear_reserved();
        header.set_vni(self.vni);
    }
}

/// Maps a flow hash into the UDP source ports `min..=max` by reciprocal scaling, as the Linux
/// kernel's `udp_flow_src_port` does: `((hash * (max - min + 1)) >> 32) + min`, which keeps
/// the upper bits of the hash. Two differences from the kernel: `max` is included here (the
/// kernel multiplies by `max - min`), and the hash is used as it is (the kernel first folds
/// `hash ^= hash << 16`, since its hash may be weak in the upper bits; [`inner_flow_hash`]
/// ends with a full avalanche). If `min > max` the default range
/// [`SOURCE_PORT_MIN`]`..=`[`SOURCE_PORT_MAX`] is used, as the kernel falls back to the local
/// port range.
pub const fn source_port(hash: u32, min: u16, max: u16) -> u16 {
    let (min, max) = if min > max {
        (SOURCE_PORT_MIN, SOURCE_PORT_MAX)
    } else {
        (min, max)
    };
    let span = (max - min) as u64 + 1;
    // hash * span < 2^32 * span, so the shifted value is below span and min + it <= max.
    (((hash as u64) * span) >> 32) as u16 + min
}

/// FNV-1a, 32 bits: a simple byte-at-a-time hash, good enough for a few dozen bytes of flow
/// fields before [`fmix32`].
struct Fnv1a(u32);

impl Fnv1a {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;

    const fn new() -> Fnv1a {
        Fnv1a(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u32::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    fn write_u16(&mut self, value: u16) {
        self.write(&value.to_be_bytes());
    }

    fn finish(&self) -> u32 {
        fmix32(self.0)
    }
}

/// The murmur3 finalizer: every input bit affects every output bit.
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The most 802.1Q / 802.1ad tags walked before the network header.
const MAX_TAGS: usize = 2;

/// A hash of the flow of an inner Ethernet frame, for [`source_port`]: the same for every
/// packet of a flow, deterministic (no random seed, so the same across runs and hosts), and
/// never panicking, whatever the bytes.
///
/// The hash covers, in this order, each as it appears on the wire: the destination and
/// source MAC addresses and the EtherType; for each 802.1Q or 802.1ad tag (up to two), its
/// 12-bit VLAN id and the EtherType after it (not the priority, which may change within a
/// flow); then for IPv4 (version 4, a viewable header) the source and destination addresses
/// and the protocol, and for IPv6 (version 6) the addresses and the next header; then for
/// TCP and UDP the source and destination ports, unless the packet is an IPv4 fragment (only
/// the first fragment has ports; an IPv6 fragment has a fragment header as next header, so
/// gets none either). The IPv6 flow label is left out: Linux changes it when it rehashes a
/// connection. Whatever part is truncated or malformed is left out with everything after
/// it; a frame shorter than an Ethernet header hashes to one constant.
///
/// The fields go through FNV-1a (32 bits) and then the murmur3 `fmix32` finalizer.
pub fn inner_flow_hash(frame: &[u8]) -> u32 {
    let mut h = Fnv1a::new();
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return h.finish();
    };
    h.write(eth.dst_addr().as_bytes());
    h.write(eth.src_addr().as_bytes());
    let mut ethertype = eth.ethertype();
    h.write_u16(ethertype.into());
    let mut rest = eth.payload();
    for _ in 0..MAX_TAGS {
        if !matches!(ethertype, EtherType::Vlan | EtherType::QinQ) {
            break;
        }
        let Ok(tag) = VlanTag::new_checked(rest) else {
            return h.finish();
        };
        ethertype = tag.ethertype();
        h.write_u16(tag.vid());
        h.write_u16(ethertype.into());
        // What follows the tag, borrowed from the frame rather than from `tag`.
        let Some(after) = rest.get(TAG_LEN..) else {
            return h.finish();
        };
        rest = after;
    }
    match ethertype {
        EtherType::Ipv4 => hash_ipv4(&mut h, rest),
        EtherType::Ipv6 => hash_ipv6(&mut h, rest),
        _ => {}
    }
    h.finish()
}

fn hash_ipv4(h: &mut Fnv1a, bytes: &[u8]) {
    let Ok(packet) = Ipv4Packet::new_checked(bytes) else {
        return;
    };
    if packet.version() != 4 {
        return;
    }
    h.write(&packet.src_addr().octets());
    h.write(&packet.dst_addr().octets());
    let protocol = packet.protocol();
    h.write(&[u8::from(protocol)]);
    if !packet.is_fragment() {
        hash_ports(h, protocol, packet.payload());
    }
}

fn hash_ipv6(h: &mut Fnv1a, bytes: &[u8]) {
    let Ok(packet) = Ipv6Packet::new_checked(bytes) else {
        return;
    };
    if packet.version() != 6 {
        return;
    }
    h.write(&packet.src_addr().octets());
    h.write(&packet.dst_addr().octets());
    let next_header = packet.next_header();
    h.write(&[u8::from(next_header)]);
    hash_ports(h, next_header, packet.payload());
}

fn hash_ports(h: &mut Fnv1a, protocol: IpProtocol, l4: &[u8]) {
    let ports = match protocol {
        IpProtocol::Tcp => TcpPacket::new_checked(l4)
            .ok()
            .map(|p| (p.src_port(), p.dst_port())),
        IpProtocol::Udp => UdpPacket::new_checked(l4)
            .ok()
            .map(|p| (p.src_port(), p.dst_port())),
        _ => None,
    };
    if let Some((src, dst)) = ports {
        h.write_u16(src);
        h.write_u16(dst);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::wire::{EthernetAddress, Ipv4Repr, TcpRepr};

    // The fixtures are UDP payloads (VXLAN header and inner frame) captured with tcpdump on
    // the underlay veth between two Linux 6.18 vxlan devices, `ip link add vx42 type vxlan id
    // 42 remote ... dstport 4789 dev veth` on 192.0.2.1 and 192.0.2.2, overlay MACs
    // 02:00:00:00:00:0a / 0b, overlay addresses 10.99.0.1 / 10.99.0.2 and 2001:db8::1 / ::2,
    // inner TX checksum offload off. The kernel does not pad inner frames to 60 bytes.

    // Outer 192.0.2.1:52207 -> 192.0.2.2:4789. Inner: ARP who-has 10.99.0.2 tell 10.99.0.1.
    static VXLAN_ARP_REQUEST: [u8; 50] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x0a, 0x63, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x0a, 0x63, 0x00, 0x02,
    ];

    // Outer 192.0.2.1:33308 -> 192.0.2.2:4789. Inner: 10.99.0.1:40001 -> 10.99.0.2:8081
    // [P.] seq 1:13, payload "hello vxlan\n".
    static VXLAN_TCP_DATA_1: [u8; 86] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x02,
        0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x00, 0x45, 0x00, 0x00, 0x40, 0x0f, 0x82, 0x40, 0x00,
        0x40, 0x06, 0x16, 0x6e, 0x0a, 0x63, 0x00, 0x01, 0x0a, 0x63, 0x00, 0x02, 0x9c, 0x41, 0x1f,
        0x91, 0xc5, 0x03, 0x81, 0xa0, 0x8a, 0x7f, 0x74, 0x38, 0x80, 0x18, 0x00, 0x40, 0x9f, 0x50,
        0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x37, 0xfe, 0x53, 0x9a, 0xf7, 0x50, 0xa9, 0x61, 0x68,
        0x65, 0x6c, 0x6c, 0x6f, 0x20, 0x76, 0x78, 0x6c, 0x61, 0x6e, 0x0a,
    ];

    // The next data segment of the same connection (the kernel chose the same outer source
    // port 33308): [P.] seq 13:28, payload "second segment\n".
    static VXLAN_TCP_DATA_2: [u8; 89] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x02,
        0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x00, 0x45, 0x00, 0x00, 0x43, 0x0f, 0x83, 0x40, 0x00,
        0x40, 0x06, 0x16, 0x6a, 0x0a, 0x63, 0x00, 0x01, 0x0a, 0x63, 0x00, 0x02, 0x9c, 0x41, 0x1f,
        0x91, 0xc5, 0x03, 0x81, 0xac, 0x8a, 0x7f, 0x74, 0x38, 0x80, 0x18, 0x00, 0x40, 0x81, 0x99,
        0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x37, 0xfe, 0x54, 0x62, 0xf7, 0x50, 0xaa, 0x2a, 0x73,
        0x65, 0x63, 0x6f, 0x6e, 0x64, 0x20, 0x73, 0x65, 0x67, 0x6d, 0x65, 0x6e, 0x74, 0x0a,
    ];

    // Outer 192.0.2.1:45136 -> 192.0.2.2:4789. Inner: [2001:db8::1]:5000 ->
    // [2001:db8::2]:6000 UDP "one".
    static VXLAN_UDP6_1: [u8; 73] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x02,
        0x00, 0x00, 0x00, 0x00, 0x0a, 0x86, 0xdd, 0x60, 0x0f, 0xca, 0x6f, 0x00, 0x0b, 0x11, 0x40,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x13, 0x88, 0x17, 0x70, 0x00, 0x0b, 0xa4, 0xfc, 0x6f, 0x6e, 0x65,
    ];

    // The same socket's next datagram (same outer source port 45136): UDP "two!".
    static VXLAN_UDP6_2: [u8; 74] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x02,
        0x00, 0x00, 0x00, 0x00, 0x0a, 0x86, 0xdd, 0x60, 0x0f, 0xca, 0x6f, 0x00, 0x0c, 0x11, 0x40,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0x13, 0x88, 0x17, 0x70, 0x00, 0x0c, 0x95, 0xd0, 0x74, 0x77, 0x6f, 0x21,
    ];

    const FIXTURES: [&[u8]; 5] = [
        &VXLAN_ARP_REQUEST,
        &VXLAN_TCP_DATA_1,
        &VXLAN_TCP_DATA_2,
        &VXLAN_UDP6_1,
        &VXLAN_UDP6_2,
    ];

    // Offsets into the inner frame of the TCP fixtures.
    const INNER_IPV4: usize = 14;
    const INNER_TCP: usize = INNER_IPV4 + 20;

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    fn inner(fixture: &[u8]) -> &[u8] {
        &fixture[HEADER_LEN..]
    }

    #[test]
    fn parse_kernel_fixture() {
        let header = VxlanHeader::new_checked(&VXLAN_ARP_REQUEST[..]).unwrap();
        assert_eq!(header.flags(), 0x08);
        assert!(header.i_flag());
        assert_eq!(header.vni(), 42);
        assert!(header.reserved_bits_clear());
        assert_eq!(header.payload(), &VXLAN_ARP_REQUEST[8..]);
        assert_eq!(
            VxlanRepr::parse(&header).unwrap(),
            VxlanRepr { vni: vni(42) }
        );

        let frame = EthernetFrame::new_checked(header.payload()).unwrap();
        assert_eq!(frame.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(frame.src_addr(), EthernetAddress([2, 0, 0, 0, 0, 0x0a]));
        assert_eq!(frame.ethertype(), EtherType::Arp);

        // The TCP fixture's inner frame is a whole, checksummed IPv4/TCP packet.
        let header = VxlanHeader::new_checked(&VXLAN_TCP_DATA_1[..]).unwrap();
        let frame = EthernetFrame::new_checked(header.payload()).unwrap();
        let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
        assert!(ip.verify_checksum());
        let ip_repr = Ipv4Repr::parse(&ip).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&crate::wire::PseudoHeader::V4 {
            src: ip_repr.src_addr,
            dst: ip_repr.dst_addr,
        }));
        let tcp_repr = TcpRepr::parse(&tcp).unwrap();
        assert_eq!((tcp_repr.src_port, tcp_repr.dst_port), (40001, 8081));
        assert_eq!(tcp.payload(), b"hello vxlan\n");
    }

    #[test]
    fn emit_matches_kernel_fixtures() {
        for fixture in FIXTURES {
            let repr = VxlanRepr::parse(&VxlanHeader::new_checked(fixture).unwrap()).unwrap();
            assert_eq!(repr, VxlanRepr { vni: vni(42) });
            assert_eq!(repr.buffer_len(), HEADER_LEN);
            let mut bytes = vec![0xa5u8; fixture.len()];
            let mut header = VxlanHeader::new_unchecked(&mut bytes[..]);
            repr.emit(&mut header);
            header.payload_mut().copy_from_slice(inner(fixture));
            assert_eq!(bytes, fixture);
        }
        let mut bytes = [0xffu8; HEADER_LEN];
        VxlanRepr { vni: vni(42) }.emit(&mut VxlanHeader::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00]);
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..HEADER_LEN {
            let short = &VXLAN_ARP_REQUEST[..len];
            assert_eq!(
                VxlanHeader::new_checked(short).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
            assert_eq!(
                VxlanRepr::parse(&VxlanHeader::new_unchecked(short)).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
        // The bare header, with no inner frame, is a header.
        let header = VxlanHeader::new_checked(&VXLAN_ARP_REQUEST[..HEADER_LEN]).unwrap();
        assert_eq!(header.payload(), &[] as &[u8]);
        assert_eq!(VxlanRepr::parse(&header).unwrap().vni, vni(42));
    }

    #[test]
    fn missing_i_flag_is_malformed() {
        // No flag at all, and every flag but I.
        for flags in [0x00u8, !FLAG_I, 0x80, 0x04] {
            let mut bytes = VXLAN_ARP_REQUEST;
            bytes[0] = flags;
            let header = VxlanHeader::new_checked(&bytes[..]).unwrap();
            assert!(!header.i_flag());
            assert_eq!(header.vni(), 42);
            assert_eq!(
                VxlanRepr::parse(&header).unwrap_err(),
                WireError::Malformed,
                "flags {flags:#04x}"
            );
        }
    }

    #[test]
    fn reserved_bits_are_ignored_but_visible() {
        // Each bit of the header that is neither the I flag nor in the VNI, set alone.
        for bit in 0..64 {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            if (byte == 0 && mask == FLAG_I) || field::VNI.contains(&byte) {
                continue;
            }
            let mut bytes = VXLAN_ARP_REQUEST;
            bytes[byte] |= mask;
            let header = VxlanHeader::new_checked(&bytes[..]).unwrap();
            assert!(!header.reserved_bits_clear(), "bit {bit}");
            assert_eq!(
                VxlanRepr::parse(&header).unwrap(),
                VxlanRepr { vni: vni(42) },
                "bit {bit}"
            );
        }
        // A Group Based Policy header (G bit 0x80, policy id 0x1234 in reserved bytes 2..4),
        // as Linux sends with `gbp`: a plain receiver still takes the VNI.
        let mut bytes = VXLAN_ARP_REQUEST;
        bytes[..8].copy_from_slice(&[0x88, 0x00, 0x12, 0x34, 0x00, 0x00, 0x2a, 0x00]);
        let mut header = VxlanHeader::new_checked(&mut bytes[..]).unwrap();
        assert!(!header.reserved_bits_clear());
        assert_eq!(VxlanRepr::parse(&header).unwrap().vni, vni(42));
        header.clear_reserved();
        assert!(header.reserved_bits_clear());
        assert!(header.i_flag());
        assert_eq!(&bytes[..], &VXLAN_ARP_REQUEST[..]);
    }

    #[test]
    fn vni_max_round_trip() {
        let repr = VxlanRepr {
            vni: vni(0x00ff_ffff),
        };
        let mut bytes = [0u8; HEADER_LEN];
        repr.emit(&mut VxlanHeader::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, [0x08, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x00]);
        let header = VxlanHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(header.vni(), 0x00ff_ffff);
        assert!(header.reserved_bits_clear());
        assert_eq!(VxlanRepr::parse(&header).unwrap(), repr);

        // set_vni touches only the VNI bytes.
        let mut bytes = [0x5au8; HEADER_LEN];
        VxlanHeader::new_unchecked(&mut bytes[..]).set_vni(vni(0x0012_3456));
        assert_eq!(bytes, [0x5a, 0x5a, 0x5a, 0x5a, 0x12, 0x34, 0x56, 0x5a]);
    }

    #[test]
    fn vni_range() {
        assert!(Vni::new(1 << 24).is_none());
        assert!(Vni::new(u32::MAX).is_none());
        assert_eq!(Vni::new(0).unwrap().get(), 0);
        assert_eq!(Vni::new(Vni::MAX).unwrap().get(), 0x00ff_ffff);
        assert_eq!(vni(42).to_string(), "42");
        assert_eq!(vni(16_777_215).to_string(), "16777215");
    }

    #[test]
    fn ports() {
        assert_eq!(IANA_PORT, 4789);
        assert_eq!(LINUX_DEFAULT_PORT, 8472);
        assert_eq!((SOURCE_PORT_MIN, SOURCE_PORT_MAX), (32768, 60999));
    }

    #[test]
    fn source_port_stays_in_range() {
        // The ends of the hash space reach the ends of the range, both included.
        assert_eq!(
            source_port(0, SOURCE_PORT_MIN, SOURCE_PORT_MAX),
            SOURCE_PORT_MIN
        );
        assert_eq!(
            source_port(u32::MAX, SOURCE_PORT_MIN, SOURCE_PORT_MAX),
            SOURCE_PORT_MAX
        );
        assert_eq!(source_port(u32::MAX, 0, u16::MAX), u16::MAX);
        assert_eq!(source_port(0, 0, u16::MAX), 0);
        // The reciprocal scale: the upper bits choose. Half-way lands half-way.
        assert_eq!(source_port(1 << 31, 0, u16::MAX), 32768);
        assert_eq!(source_port(1 << 31, 1000, 1999), 1500);
        // A one-port range.
        assert_eq!(source_port(0xdead_beef, 4789, 4789), 4789);
        // A reversed range falls back to the default.
        assert_eq!(source_port(0, 2000, 1000), SOURCE_PORT_MIN);
        assert_eq!(source_port(u32::MAX, 2000, 1000), SOURCE_PORT_MAX);

        let ranges = [
            (SOURCE_PORT_MIN, SOURCE_PORT_MAX),
            (0, u16::MAX),
            (49152, 65535),
            (1, 2),
            (7, 7),
        ];
        let mut hash = 0x9e37_79b9u32;
        for _ in 0..100_000 {
            hash = hash.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            for (min, max) in ranges {
                let port = source_port(hash, min, max);
                assert!((min..=max).contains(&port), "{hash:#x} {min} {max}");
            }
        }
    }

    #[test]
    fn source_port_spreads_flows() {
        // 1000 TCP flows that differ only in their source port.
        let mut ports = HashSet::new();
        let mut hashes = HashSet::new();
        for i in 0..1000u16 {
            let mut frame = inner(&VXLAN_TCP_DATA_1).to_vec();
            frame[INNER_TCP..INNER_TCP + 2].copy_from_slice(&(20000 + i).to_be_bytes());
            let hash = inner_flow_hash(&frame);
            hashes.insert(hash);
            let port = source_port(hash, SOURCE_PORT_MIN, SOURCE_PORT_MAX);
            assert!((SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&port));
            ports.insert(port);
        }
        assert_eq!(hashes.len(), 1000);
        assert!(ports.len() > 500, "{} distinct ports", ports.len());
        // And both halves of the range are used.
        let mid = SOURCE_PORT_MIN + (SOURCE_PORT_MAX - SOURCE_PORT_MIN) / 2;
        assert!(ports.iter().any(|&p| p < mid) && ports.iter().any(|&p| p > mid));
    }

    #[test]
    fn flow_hash_is_per_flow() {
        let a = inner_flow_hash(inner(&VXLAN_TCP_DATA_1));
        let b = inner_flow_hash(inner(&VXLAN_TCP_DATA_2));
        assert_eq!(a, b, "two segments of one TCP connection");
        assert_eq!(a, inner_flow_hash(inner(&VXLAN_TCP_DATA_1)));
        assert_eq!(
            inner_flow_hash(inner(&VXLAN_UDP6_1)),
            inner_flow_hash(inner(&VXLAN_UDP6_2)),
            "two datagrams of one UDP socket pair"
        );

        // Changing any flow field changes the hash.
        let frame = inner(&VXLAN_TCP_DATA_1);
        let changes: [(usize, u8); 7] = [
            (INNER_TCP, 0x01),       // TCP source port
            (INNER_TCP + 3, 0x01),   // TCP destination port
            (INNER_IPV4 + 15, 0x01), // IPv4 source address
            (INNER_IPV4 + 19, 0x01), // IPv4 destination address
            (INNER_IPV4 + 9, 0x17),  // protocol 6 -> 17
            (5, 0x01),               // destination MAC
            (11, 0x01),              // source MAC
        ];
        for (offset, flip) in changes {
            let mut other = frame.to_vec();
            other[offset] ^= flip;
            assert_ne!(inner_flow_hash(&other), a, "offset {offset}");
        }
        let mut other = inner(&VXLAN_UDP6_1).to_vec();
        other[14 + 40 + 1] ^= 1; // UDP source port
        assert_ne!(
            inner_flow_hash(&other),
            inner_flow_hash(inner(&VXLAN_UDP6_1))
        );

        // Fields outside the flow do not: TTL, IP id, checksums, TCP sequence and flags.
        for offset in [
            INNER_IPV4 + 8,
            INNER_IPV4 + 5,
            INNER_IPV4 + 11,
            INNER_TCP + 7,
        ] {
            let mut other = frame.to_vec();
            other[offset] ^= 0x01;
            assert_eq!(inner_flow_hash(&other), a, "offset {offset}");
        }
        // Nor does Ethernet padding after the IPv4 total length.
        let mut padded = frame.to_vec();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(inner_flow_hash(&padded), a);
    }

    #[test]
    fn flow_hash_pinned_value() {
        // FNV-1a 32 over 02:00:00:00:00:0b, 02:00:00:00:00:0a, 0800, 10.99.0.1, 10.99.0.2,
        // 06, 9c41, 1f91, then fmix32; computed independently of this code. A change here
        // moves every flow's underlay path: only on purpose.
        assert_eq!(inner_flow_hash(inner(&VXLAN_TCP_DATA_1)), PINNED_TCP_HASH);
        // A frame shorter than an Ethernet header hashes to fmix32 of the FNV offset basis.
        assert_eq!(inner_flow_hash(&[]), fmix32(0x811c_9dc5));
        assert_eq!(inner_flow_hash(&[1, 2, 3]), inner_flow_hash(&[]));
    }

    const PINNED_TCP_HASH: u32 = 0xff4b_cc5b;

    #[test]
    fn fragments_hash_without_ports() {
        let frame = inner(&VXLAN_TCP_DATA_1);
        // More fragments (flags byte at IPv4 offset 6), then a later fragment (offset 185*8).
        for (hi, lo) in [(0x20u8, 0x00u8), (0x00, 0xb9)] {
            let mut frag = frame.to_vec();
            frag[INNER_IPV4 + 6] = hi;
            frag[INNER_IPV4 + 7] = lo;
            let mut other_ports = frag.clone();
            other_ports[INNER_TCP] ^= 0xff;
            other_ports[INNER_TCP + 3] ^= 0xff;
            assert_eq!(inner_flow_hash(&frag), inner_flow_hash(&other_ports));
            assert_ne!(inner_flow_hash(&frag), inner_flow_hash(frame));
        }
    }

    #[test]
    fn flow_hash_sees_vlan_id_not_priority() {
        let frame = inner(&VXLAN_TCP_DATA_1);
        let tagged = |tci: u16| {
            let mut f = frame[..12].to_vec();
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&tci.to_be_bytes());
            f.extend_from_slice(&frame[12..]);
            f
        };
        let vid10 = inner_flow_hash(&tagged(10));
        assert_eq!(vid10, inner_flow_hash(&tagged(0xa000 | 10)), "PCP 5");
        assert_ne!(vid10, inner_flow_hash(&tagged(20)));
        assert_ne!(vid10, inner_flow_hash(frame));
        // The ports are still found under the tag.
        let mut other = tagged(10);
        other[4 + INNER_TCP] ^= 1;
        assert_ne!(vid10, inner_flow_hash(&other));
    }

    #[test]
    fn no_panic_on_any_prefix() {
        for fixture in FIXTURES {
            for len in 0..=fixture.len() {
                let prefix = &fixture[..len];
                if let Ok(header) = VxlanHeader::new_checked(prefix) {
                    let _ = VxlanRepr::parse(&header);
                    let _ = header.reserved_bits_clear();
                    let _ = inner_flow_hash(header.payload());
                }
                let h = inner_flow_hash(prefix);
                assert_eq!(h, inner_flow_hash(prefix), "deterministic");
                let inner = &inner(fixture)[..len.saturating_sub(HEADER_LEN)];
                let _ = inner_flow_hash(inner);
            }
        }
        // A truncated IPv4 packet hashes as its Ethernet header alone.
        let frame = inner(&VXLAN_TCP_DATA_1);
        assert_eq!(
            inner_flow_hash(&frame[..frame.len() - 1]),
            inner_flow_hash(&frame[..14])
        );
        // Garbage of every length, with every EtherType this hash looks into.
        let mut x = 0x1234_5678u32;
        for len in 0..300 {
            for ethertype in [0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x0806] {
                let mut bytes = Vec::with_capacity(len);
                for _ in 0..len {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    bytes.push((x >> 24) as u8);
                }
                if len >= 14 {
                    bytes[12..14].copy_from_slice(&ethertype.to_be_bytes());
                }
                if len >= 15 {
                    // A plausible version / IHL.
                    bytes[14] = if ethertype == 0x86dd { 0x60 } else { 0x45 };
                }
                let _ = inner_flow_hash(&bytes);
            }
        }
    }
}
