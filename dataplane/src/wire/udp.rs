//! UDP datagrams (RFC 768), over IPv4 or IPv6.
//!
//! [`UdpPacket::new_checked`] checks the length field against the buffer, so the payload is
//! bounded by it. The checksum covers a pseudo header of the IP addresses
//! ([`PseudoHeader`]); parsing does not verify it (see [`UdpPacket::verify_checksum`]).

use super::checksum::{self, PseudoHeader};
use super::{IpProtocol, Result, WireError};

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// The length of a UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    /// Wraps untrusted bytes: after this no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than the header or the length field; `Malformed`
    /// if the length field is below the header length (this includes the 0 of an IPv6
    /// jumbogram, which this switch does not carry).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let length = usize::from(self.len());
        if length < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < length {
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

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// The length field: header and payload.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// The payload: after the header, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// Whether the datagram sums, with the pseudo header, to the checksum in it. A zero
    /// checksum means "none" over IPv4 and is accepted; over IPv6 it is not (RFC 8200 8.1).
    pub fn verify_checksum(&self, pseudo: &PseudoHeader) -> bool {
        if self.checksum() == 0 {
            return !pseudo.is_ipv6();
        }
        let length = self.len();
        let datagram = &self.buffer.as_ref()[..usize::from(length)];
        checksum::combine(&[
            pseudo.sum(IpProtocol::Udp, u32::from(length)),
            checksum::sum(datagram),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn set_u16_at(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_src_port(&mut self, value: u16) {
        self.set_u16_at(field::SRC_PORT, value);
    }

    pub fn set_dst_port(&mut self, value: u16) {
        self.set_u16_at(field::DST_PORT, value);
    }

    pub fn set_len(&mut self, value: u16) {
        self.set_u16_at(field::LENGTH, value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Computes the checksum over the pseudo header and the datagram (up to the length field)
    /// and writes it; a computed 0 is sent as 0xffff.
    pub fn fill_checksum(&mut self, pseudo: &PseudoHeader) {
        self.set_checksum(0);
        let length = self.len();
        let datagram = &self.buffer.as_ref()[..usize::from(length)];
        let value = !checksum::combine(&[
            pseudo.sum(IpProtocol::Udp, u32::from(length)),
            checksum::sum(datagram),
        ]);
        self.set_checksum(if value == 0 { 0xffff } else { value });
    }
}

/// The owned form of a UDP header; the payload stays in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl UdpRepr {
    /// Reads the header. The checksum is not verified.
    pub fn parse<T: AsRef<[u8]>>(packet: &UdpPacket<T>) -> Result<UdpRepr> {
        packet.check_len()?;
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The length of the whole datagram, header and payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header into the first 8 bytes of `packet`, then the checksum over the
    /// datagram: put the payload into [`UdpPacket::payload_mut`] first. `buffer_len()` must
    /// not exceed 65535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        pseudo: &PseudoHeader,
    ) {
        debug_assert!(self.buffer_len() <= usize::from(u16::MAX));
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(self.buffer_len() as u16);
        packet.fill_checksum(pseudo);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    // The UDP part of a DNS query generated with scapy 2.8.0: IP(src="192.168.122.10",
    // dst="192.168.122.1")/UDP(sport=53124, dport=53)/DNS(id=0xbeef, rd=1,
    // qd=DNSQR(qname="example.com")).
    static UDP4_DNS: [u8; 37] = [
        0xcf, 0x84, 0x00, 0x35, 0x00, 0x25, 0x2c, 0x30, 0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63,
        0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    // The UDP part of IPv6(src="2001:db8::1", dst="2001:db8::2")/UDP(sport=5353,
    // dport=5353)/Raw(b"hello"), generated with scapy 2.8.0.
    static UDP6: [u8; 13] = [
        0x14, 0xe9, 0x14, 0xe9, 0x00, 0x0d, 0x36, 0xbb, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
    ];

    fn pseudo4() -> PseudoHeader {
        PseudoHeader::V4 {
            src: Ipv4Addr::new(192, 168, 122, 10),
            dst: Ipv4Addr::new(192, 168, 122, 1),
        }
    }

    fn pseudo6() -> PseudoHeader {
        PseudoHeader::V6 {
            src: "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            dst: "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
        }
    }

    #[test]
    fn parse_fixtures() {
        let packet = UdpPacket::new_checked(&UDP4_DNS[..]).unwrap();
        assert_eq!(packet.src_port(), 53124);
        assert_eq!(packet.dst_port(), 53);
        assert_eq!(packet.len(), 37);
        assert_eq!(packet.checksum(), 0x2c30);
        assert_eq!(packet.payload(), &UDP4_DNS[8..]);
        assert!(packet.verify_checksum(&pseudo4()));
        assert!(!packet.verify_checksum(&pseudo6()));
        assert_eq!(
            UdpRepr::parse(&packet).unwrap(),
            UdpRepr {
                src_port: 53124,
                dst_port: 53,
                payload_len: 29
            }
        );

        let packet = UdpPacket::new_checked(&UDP6[..]).unwrap();
        assert_eq!(packet.src_port(), 5353);
        assert_eq!(packet.dst_port(), 5353);
        assert_eq!(packet.len(), 13);
        assert_eq!(packet.checksum(), 0x36bb);
        assert_eq!(packet.payload(), b"hello");
        assert!(packet.verify_checksum(&pseudo6()));
        assert_eq!(
            UdpRepr::parse(&packet).unwrap(),
            UdpRepr {
                src_port: 5353,
                dst_port: 5353,
                payload_len: 5
            }
        );
    }

    #[test]
    fn emit_matches_fixtures() {
        for (fixture, pseudo) in [(&UDP4_DNS[..], pseudo4()), (&UDP6[..], pseudo6())] {
            let repr = UdpRepr::parse(&UdpPacket::new_checked(fixture).unwrap()).unwrap();
            assert_eq!(repr.buffer_len(), fixture.len());
            let mut bytes = vec![0xa5u8; repr.buffer_len()];
            let mut packet = UdpPacket::new_unchecked(&mut bytes[..]);
            packet.set_len(repr.buffer_len() as u16);
            packet.payload_mut().copy_from_slice(&fixture[HEADER_LEN..]);
            repr.emit(&mut packet, &pseudo);
            assert_eq!(bytes, fixture);
        }
    }

    #[test]
    fn short_buffers_are_truncated() {
        for fixture in [&UDP4_DNS[..], &UDP6[..]] {
            for len in 0..fixture.len() {
                assert_eq!(
                    UdpPacket::new_checked(&fixture[..len]).unwrap_err(),
                    WireError::Truncated,
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn malformed_length() {
        for length in 0..8u16 {
            let mut bytes = UDP6;
            bytes[4..6].copy_from_slice(&length.to_be_bytes());
            assert_eq!(
                UdpPacket::new_checked(&bytes[..]).unwrap_err(),
                WireError::Malformed
            );
        }
        // Trailing bytes past the length field (Ethernet padding) are left out.
        let mut padded = [0u8; 20];
        padded[..13].copy_from_slice(&UDP6);
        let packet = UdpPacket::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload(), b"hello");
        assert!(packet.verify_checksum(&pseudo6()));
    }

    #[test]
    fn checksum_rules() {
        // A corrupted byte fails.
        let mut bytes = UDP4_DNS;
        bytes[20] ^= 0x40;
        let mut packet = UdpPacket::new_checked(&mut bytes[..]).unwrap();
        assert!(!packet.verify_checksum(&pseudo4()));
        packet.fill_checksum(&pseudo4());
        assert!(packet.verify_checksum(&pseudo4()));
        // Zero means "no checksum" over IPv4 only.
        packet.set_checksum(0);
        assert!(packet.verify_checksum(&pseudo4()));
        let mut bytes = UDP6;
        bytes[6] = 0;
        bytes[7] = 0;
        assert!(!UdpPacket::new_checked(&bytes[..])
            .unwrap()
            .verify_checksum(&pseudo6()));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose the source port so that the datagram and pseudo header sum to 0xffff.
        let pseudo = pseudo4();
        let mut bytes = [0u8; 8];
        let mut packet = UdpPacket::new_unchecked(&mut bytes[..]);
        packet.set_len(8);
        let rest = checksum::combine(&[pseudo.sum(IpProtocol::Udp, 8), 8]);
        packet.set_src_port(!rest);
        packet.fill_checksum(&pseudo);
        assert_eq!(packet.checksum(), 0xffff);
        assert!(packet.verify_checksum(&pseudo));
    }
}
