//! IPv4 headers (RFC 791), with options sized by the IHL field.
//!
//! [`Ipv4Packet::new_checked`] checks that the buffer holds the header (IHL at least 5) and
//! the whole packet (total length), so the payload is bounded by the total length and any
//! Ethernet padding after it is left out. Parsing does not verify the header checksum: a
//! switch decides itself whether to look (see [`Ipv4Packet::verify_checksum`]).

use std::net::Ipv4Addr;

use super::checksum;
use super::ip::HeaderOptions;
use super::{IpProtocol, Result, WireError};

mod field {
    use core::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// The length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// The length of an IPv4 header with the most options (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

const FLAG_DONT_FRAG: u16 = 0x4000;
const FLAG_MORE_FRAGS: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    /// Wraps untrusted bytes: after this no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than the fixed header, the IHL-sized header or
    /// the total length; `Malformed` if IHL is below 5 or the total length is below the
    /// header length.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(self.header_len());
        if header_len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < header_len {
            return Err(WireError::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(WireError::Malformed);
        }
        if len < total_len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, range: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL times 4), options included.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Differentiated services code point, 0..=63.
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// Explicit congestion notification, 0..=3.
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// The length of header and payload.
    pub fn total_len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        self.u16_at(field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_DONT_FRAG != 0
    }

    pub fn more_frags(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_MORE_FRAGS != 0
    }

    /// The fragment offset in bytes (the field times 8).
    pub fn frag_offset(&self) -> u16 {
        (self.u16_at(field::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// Whether this is a fragment: more fragments follow or the offset is not zero.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether the header (options included) sums to the checksum in it.
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..usize::from(self.header_len())];
        checksum::sum(header) == 0xffff
    }

    /// The option bytes between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.header_len())]
    }

    /// The payload: after the header, up to the total length.
    pub fn payload(&self) -> &[u8] {
        let start = usize::from(self.header_len());
        let end = usize::from(self.total_len());
        &self.buffer.as_ref()[start..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set_u16_at(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_version(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (value << 4);
    }

    /// Sets IHL from a header length in bytes (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((value / 4) & 0x0f);
    }

    pub fn set_dscp(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (value << 2);
    }

    pub fn set_ecn(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (value & 0x03);
    }

    pub fn set_total_len(&mut self, value: u16) {
        self.set_u16_at(field::LENGTH, value);
    }

    pub fn set_ident(&mut self, value: u16) {
        self.set_u16_at(field::IDENT, value);
    }

    /// Sets the flags and the fragment offset (in bytes, a multiple of 8); the reserved flag
    /// is cleared.
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & FRAG_OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DONT_FRAG;
        }
        if more_frags {
            v |= FLAG_MORE_FRAGS;
        }
        self.set_u16_at(field::FLG_OFF, v);
    }

    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    pub fn set_protocol(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = value.into();
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }

    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Computes the header checksum (over the header length in IHL) and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = usize::from(self.header_len());
        let value = checksum::checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(value);
    }

    /// Decrements the TTL and patches the checksum incrementally (RFC 1624); returns the new
    /// TTL. A TTL of 0 stays 0.
    pub fn decrement_ttl(&mut self) -> u8 {
        let ttl = self.ttl();
        if ttl == 0 {
            return 0;
        }
        let old = u16::from_be_bytes([ttl, u8::from(self.protocol())]);
        self.set_ttl(ttl - 1);
        let new = u16::from_be_bytes([ttl - 1, u8::from(self.protocol())]);
        let value = checksum::update16(self.checksum(), old, new);
        self.set_checksum(value);
        ttl - 1
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.header_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        let end = usize::from(self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// The owned form of an IPv4 header. The options are kept as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: IpProtocol,
    /// The payload length: total length less header length.
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp: u8,
    pub ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes, a multiple of 8.
    pub frag_offset: u16,
    pub options: HeaderOptions,
}

impl Ipv4Repr {
    /// Reads the header: `Malformed` if the version is not 4. The checksum is not verified.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(WireError::Malformed);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - usize::from(packet.header_len()),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
            options: HeaderOptions::new(packet.options())?,
        })
    }

    /// The header length: 20 bytes and the options.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// The length of the whole packet, header and `payload_len`: the buffer that
    /// [`emit`](Self::emit) and then [`Ipv4Packet::new_checked`] need.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header, options and checksum into the first
    /// [`header_len`](Self::header_len) bytes of `packet`; the payload is left alone.
    /// `buffer_len()` must not exceed 65535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        debug_assert!(self.buffer_len() <= usize::from(u16::MAX));
        packet.set_version(4);
        packet.set_header_len(self.header_len() as u8);
        packet.set_dscp(self.dscp);
        packet.set_ecn(self.ecn);
        packet.set_total_len(self.buffer_len() as u16);
        packet.set_ident(self.ident);
        packet.set_frag(self.dont_frag, self.more_frags, self.frag_offset);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet
            .options_mut()
            .copy_from_slice(self.options.as_bytes());
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with scapy 2.8.0: IP(src="192.168.122.10", dst="192.168.122.1", id=0x1c46,
    // flags="DF", ttl=64)/ICMP(type=8, id=0x0d05, seq=1)/Raw(b"tapswitch-ping!!").
    static IPV4_ICMP_ECHO: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0xa9, 0x2e, 0xc0, 0xa8, 0x7a,
        0x0a, 0xc0, 0xa8, 0x7a, 0x01, 0x08, 0x00, 0xb2, 0x38, 0x0d, 0x05, 0x00, 0x01, 0x74, 0x61,
        0x70, 0x73, 0x77, 0x69, 0x74, 0x63, 0x68, 0x2d, 0x70, 0x69, 0x6e, 0x67, 0x21, 0x21,
    ];

    // Generated with scapy 2.8.0: an IGMPv3 report with the Router Alert option, as Linux
    // sends it: IP(src="10.0.0.1", dst="224.0.0.22", ttl=1, tos=0xc0, proto=2,
    // options=[IPOption_Router_Alert()])/Raw(<16-byte IGMPv3 report>).
    static IPV4_RA_IGMP: [u8; 40] = [
        0x46, 0xc0, 0x00, 0x28, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x39, 0xf9, 0x0a, 0x00, 0x00,
        0x01, 0xe0, 0x00, 0x00, 0x16, 0x94, 0x04, 0x00, 0x00, 0x22, 0x00, 0xfa, 0x01, 0x00, 0x00,
        0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0xef, 0xc0, 0x00, 0x01,
    ];

    fn echo_repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(192, 168, 122, 10),
            dst_addr: Ipv4Addr::new(192, 168, 122, 1),
            protocol: IpProtocol::Icmp,
            payload_len: 24,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0x1c46,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            options: HeaderOptions::EMPTY,
        }
    }

    fn igmp_repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(224, 0, 0, 22),
            protocol: IpProtocol::Unknown(2),
            payload_len: 16,
            ttl: 1,
            dscp: 48,
            ecn: 0,
            ident: 0,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
            options: HeaderOptions::new(&[0x94, 0x04, 0x00, 0x00]).unwrap(),
        }
    }

    #[test]
    fn parse_fixture() {
        let packet = Ipv4Packet::new_checked(&IPV4_ICMP_ECHO[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.dscp(), 0);
        assert_eq!(packet.ecn(), 0);
        assert_eq!(packet.total_len(), 44);
        assert_eq!(packet.ident(), 0x1c46);
        assert!(packet.dont_frag());
        assert!(!packet.more_frags());
        assert_eq!(packet.frag_offset(), 0);
        assert!(!packet.is_fragment());
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.protocol(), IpProtocol::Icmp);
        assert_eq!(packet.checksum(), 0xa92e);
        assert_eq!(packet.src_addr(), Ipv4Addr::new(192, 168, 122, 10));
        assert_eq!(packet.dst_addr(), Ipv4Addr::new(192, 168, 122, 1));
        assert!(packet.verify_checksum());
        assert_eq!(packet.options(), &[] as &[u8]);
        assert_eq!(packet.payload(), &IPV4_ICMP_ECHO[20..]);
        assert_eq!(Ipv4Repr::parse(&packet).unwrap(), echo_repr());
    }

    #[test]
    fn parse_fixture_with_options() {
        let packet = Ipv4Packet::new_checked(&IPV4_RA_IGMP[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.dscp(), 48);
        assert_eq!(packet.ecn(), 0);
        assert_eq!(packet.total_len(), 40);
        assert!(!packet.dont_frag());
        assert_eq!(packet.ttl(), 1);
        assert_eq!(packet.protocol(), IpProtocol::Unknown(2));
        assert_eq!(packet.checksum(), 0x39f9);
        assert!(packet.verify_checksum());
        assert_eq!(packet.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(packet.payload(), &IPV4_RA_IGMP[24..]);
        assert_eq!(Ipv4Repr::parse(&packet).unwrap(), igmp_repr());
    }

    #[test]
    fn emit_matches_fixtures() {
        for (repr, fixture) in [
            (echo_repr(), &IPV4_ICMP_ECHO[..]),
            (igmp_repr(), &IPV4_RA_IGMP[..]),
        ] {
            assert_eq!(repr.buffer_len(), fixture.len());
            let mut bytes = vec![0xa5u8; repr.buffer_len()];
            let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            let header_len = repr.header_len();
            packet.payload_mut().copy_from_slice(&fixture[header_len..]);
            assert_eq!(bytes, fixture);
        }
    }

    #[test]
    fn short_buffers_are_truncated() {
        for fixture in [&IPV4_ICMP_ECHO[..], &IPV4_RA_IGMP[..]] {
            for len in 0..fixture.len() {
                assert_eq!(
                    Ipv4Packet::new_checked(&fixture[..len]).unwrap_err(),
                    WireError::Truncated,
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn ethernet_padding_is_left_out() {
        let mut padded = [0u8; 46];
        padded[..44].copy_from_slice(&IPV4_ICMP_ECHO);
        let packet = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload(), &IPV4_ICMP_ECHO[20..]);
        assert_eq!(Ipv4Repr::parse(&packet).unwrap().payload_len, 24);
    }

    #[test]
    fn malformed_headers() {
        // IHL below 5.
        for ihl in 0..5u8 {
            let mut bytes = IPV4_ICMP_ECHO;
            bytes[0] = 0x40 | ihl;
            assert_eq!(
                Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
                WireError::Malformed
            );
        }
        // IHL 15 (60 bytes): past the 44-byte buffer it is truncated; in a 60-byte buffer
        // the total length of 44 is below it.
        let mut bytes = [0u8; 60];
        bytes[..44].copy_from_slice(&IPV4_ICMP_ECHO);
        bytes[0] = 0x4f;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..44]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
            WireError::Malformed
        );
        // Total length below the header length.
        let mut bytes = IPV4_ICMP_ECHO;
        bytes[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
            WireError::Malformed
        );
        // Total length past the buffer.
        let mut bytes = IPV4_ICMP_ECHO;
        bytes[2..4].copy_from_slice(&45u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
            WireError::Truncated
        );
        // Version 6.
        let mut bytes = IPV4_ICMP_ECHO;
        bytes[0] = 0x65;
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(Ipv4Repr::parse(&packet).unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn checksum_verify_and_fill() {
        let mut bytes = IPV4_ICMP_ECHO;
        bytes[8] = 63;
        let mut packet = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        assert!(!packet.verify_checksum());
        packet.fill_checksum();
        assert!(packet.verify_checksum());

        // An option byte is covered too.
        let mut bytes = IPV4_RA_IGMP;
        bytes[22] = 1;
        assert!(!Ipv4Packet::new_checked(&bytes[..])
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn decrement_ttl_patches_checksum() {
        let mut bytes = IPV4_ICMP_ECHO;
        let mut packet = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(packet.decrement_ttl(), 63);
        assert!(packet.verify_checksum());
        let patched = packet.checksum();
        packet.fill_checksum();
        assert_eq!(packet.checksum(), patched);

        let mut bytes = IPV4_RA_IGMP;
        let mut packet = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(packet.decrement_ttl(), 0);
        assert!(packet.verify_checksum());
        assert_eq!(packet.decrement_ttl(), 0);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn fragment_fields() {
        let mut repr = echo_repr();
        repr.dont_frag = false;
        repr.more_frags = true;
        repr.frag_offset = 1480;
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..]));
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.is_fragment());
        assert_eq!(packet.frag_offset(), 1480);
        assert_eq!(&bytes[6..8], &[0x20, 0xb9]);
        assert_eq!(Ipv4Repr::parse(&packet).unwrap(), repr);
    }
}
