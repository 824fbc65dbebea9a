//! The fixed IPv6 header (RFC 8200). Extension headers are not walked: `next_header` names
//! whatever follows the fixed header, and unknown values (hop-by-hop, routing, fragment...)
//! are carried as [`IpProtocol::Unknown`].
//!
//! [`Ipv6Packet::new_checked`] checks that the buffer holds the header and the payload length,
//! so the payload is bounded by the payload length and any Ethernet padding is left out.

use std::net::Ipv6Addr;

use super::{IpProtocol, Result, WireError};

mod field {
    use core::ops::Range;

    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// The length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// A view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Ipv6Packet<T> {
        Ipv6Packet { buffer }
    }

    /// Wraps untrusted bytes: after this no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Ipv6Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than the header or than header and payload length.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + usize::from(self.payload_len()) {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ver_tc_flow(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn addr_at(&self, range: core::ops::Range<usize>) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.buffer.as_ref()[range]);
        Ipv6Addr::from(octets)
    }

    pub fn version(&self) -> u8 {
        (self.ver_tc_flow() >> 28) as u8
    }

    /// The traffic class: DSCP in the upper six bits, ECN in the lower two.
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// The 20-bit flow label.
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// The length of what follows the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::NXT_HDR])
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        self.addr_at(field::SRC_ADDR)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        self.addr_at(field::DST_ADDR)
    }

    /// The payload: after the fixed header, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn set_ver_tc_flow(&mut self, value: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_version(&mut self, value: u8) {
        let v = (self.ver_tc_flow() & 0x0fff_ffff) | (u32::from(value & 0x0f) << 28);
        self.set_ver_tc_flow(v);
    }

    pub fn set_traffic_class(&mut self, value: u8) {
        let v = (self.ver_tc_flow() & 0xf00f_ffff) | (u32::from(value) << 20);
        self.set_ver_tc_flow(v);
    }

    pub fn set_flow_label(&mut self, value: u32) {
        let v = (self.ver_tc_flow() & 0xfff0_0000) | (value & 0x000f_ffff);
        self.set_ver_tc_flow(v);
    }

    pub fn set_payload_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_next_header(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = value.into();
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The owned form of the fixed IPv6 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: IpProtocol,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Reads the header: `Malformed` if the version is not 6.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Ipv6Repr> {
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(WireError::Malformed);
        }
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The length of the whole packet, header and `payload_len`: the buffer that
    /// [`emit`](Self::emit) and then [`Ipv6Packet::new_checked`] need.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the fixed header into the first 40 bytes of `packet`; the payload is left alone.
    /// `payload_len` must not exceed 65535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        debug_assert!(self.payload_len <= usize::from(u16::MAX));
        packet.set_ver_tc_flow(
            (6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff),
        );
        packet.set_payload_len(self.payload_len as u16);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with scapy 2.8.0: IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=64, tc=0x20,
    // fl=0x12345)/ICMPv6EchoRequest(id=0x1234, seq=7, data=b"tapswitch").
    static IPV6_ECHO: [u8; 57] = [
        0x62, 0x01, 0x23, 0x45, 0x00, 0x11, 0x3a, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x80, 0x00, 0xd9, 0x61, 0x12,
        0x34, 0x00, 0x07, 0x74, 0x61, 0x70, 0x73, 0x77, 0x69, 0x74, 0x63, 0x68,
    ];

    fn echo_repr() -> Ipv6Repr {
        Ipv6Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: IpProtocol::Icmpv6,
            payload_len: 17,
            hop_limit: 64,
            traffic_class: 0x20,
            flow_label: 0x12345,
        }
    }

    #[test]
    fn parse_fixture() {
        let packet = Ipv6Packet::new_checked(&IPV6_ECHO[..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.traffic_class(), 0x20);
        assert_eq!(packet.flow_label(), 0x12345);
        assert_eq!(packet.payload_len(), 17);
        assert_eq!(packet.next_header(), IpProtocol::Icmpv6);
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(
            packet.src_addr(),
            "2001:db8::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            packet.dst_addr(),
            "2001:db8::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(packet.payload(), &IPV6_ECHO[40..]);
        assert_eq!(Ipv6Repr::parse(&packet).unwrap(), echo_repr());
    }

    #[test]
    fn emit_matches_fixture() {
        let repr = echo_repr();
        assert_eq!(repr.buffer_len(), IPV6_ECHO.len());
        assert_eq!(repr.header_len(), 40);
        let mut bytes = [0xa5u8; 57];
        let mut packet = Ipv6Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(&IPV6_ECHO[40..]);
        assert_eq!(bytes, IPV6_ECHO);
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..IPV6_ECHO.len() {
            assert_eq!(
                Ipv6Packet::new_checked(&IPV6_ECHO[..len]).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
    }

    #[test]
    fn ethernet_padding_is_left_out() {
        let mut padded = [0u8; 64];
        padded[..57].copy_from_slice(&IPV6_ECHO);
        let packet = Ipv6Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload(), &IPV6_ECHO[40..]);
    }

    #[test]
    fn malformed_headers() {
        // Version 4.
        let mut bytes = IPV6_ECHO;
        bytes[0] = 0x42;
        let packet = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(Ipv6Repr::parse(&packet).unwrap_err(), WireError::Malformed);
        // Payload length past the buffer.
        let mut bytes = IPV6_ECHO;
        bytes[4..6].copy_from_slice(&18u16.to_be_bytes());
        assert_eq!(
            Ipv6Packet::new_checked(&bytes[..]).unwrap_err(),
            WireError::Truncated
        );
        bytes[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(
            Ipv6Packet::new_checked(&bytes[..]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn setters_keep_neighbouring_bits() {
        let mut bytes = IPV6_ECHO;
        let mut packet = Ipv6Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_traffic_class(0xff);
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.flow_label(), 0x12345);
        packet.set_flow_label(0xfffff);
        assert_eq!(packet.traffic_class(), 0xff);
        packet.set_version(6);
        assert_eq!(&bytes[..4], &[0x6f, 0xff, 0xff, 0xff]);
    }
}
