//! TCP segment headers (RFC 9293), over IPv4 or IPv6. Options are kept as bytes.
//!
//! The segment is the whole buffer (TCP has no length field: pass the IP payload). The
//! checksum covers a pseudo header of the IP addresses ([`PseudoHeader`]); parsing does not
//! verify it (see [`TcpPacket::verify_checksum`]).

use core::fmt;

use super::checksum::{self, PseudoHeader};
use super::ip::HeaderOptions;
use super::{IpProtocol, Result, WireError};

/// The nine TCP control bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(u16);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x001);
    pub const SYN: TcpFlags = TcpFlags(0x002);
    pub const RST: TcpFlags = TcpFlags(0x004);
    pub const PSH: TcpFlags = TcpFlags(0x008);
    pub const ACK: TcpFlags = TcpFlags(0x010);
    pub const URG: TcpFlags = TcpFlags(0x020);
    pub const ECE: TcpFlags = TcpFlags(0x040);
    pub const CWR: TcpFlags = TcpFlags(0x080);
    /// The ECN nonce bit of RFC 3540 (historic), bit 8.
    pub const NS: TcpFlags = TcpFlags(0x100);
    pub const EMPTY: TcpFlags = TcpFlags(0);
    const ALL: u16 = 0x1ff;

    /// The flags in the low nine bits of `bits`; higher bits are dropped.
    pub const fn from_bits_truncate(bits: u16) -> TcpFlags {
        TcpFlags(bits & Self::ALL)
    }

    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;

    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        self.union(rhs)
    }
}

impl core::ops::BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        *self = self.union(rhs);
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(TcpFlags, &str); 9] = [
            (TcpFlags::NS, "NS"),
            (TcpFlags::CWR, "CWR"),
            (TcpFlags::ECE, "ECE"),
            (TcpFlags::URG, "URG"),
            (TcpFlags::ACK, "ACK"),
            (TcpFlags::PSH, "PSH"),
            (TcpFlags::RST, "RST"),
            (TcpFlags::SYN, "SYN"),
            (TcpFlags::FIN, "FIN"),
        ];
        f.write_str("TcpFlags(")?;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset (4 bits), reserved (3 bits), the nine control bits.
    pub const FLAGS: Range<usize> = 12..14;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// The length of a TCP header without options.
pub const HEADER_LEN: usize = field::URGENT.end;
/// The length of a TCP header with the most options (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// A view of a TCP segment.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    /// Wraps untrusted bytes: after this no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than the fixed header or the data offset;
    /// `Malformed` if the data offset is below 5.
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
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, range: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn u32_at(&self, range: core::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[range];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK_NUM)
    }

    /// The header length in bytes (data offset times 4), options included.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::FLAGS.start] >> 4) * 4
    }

    pub fn flags(&self) -> TcpFlags {
        TcpFlags::from_bits_truncate(self.u16_at(field::FLAGS))
    }

    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WIN_SIZE)
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    pub fn urgent_at(&self) -> u16 {
        self.u16_at(field::URGENT)
    }

    /// The option bytes between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.header_len())]
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..]
    }

    /// Whether the segment (the whole buffer) sums, with the pseudo header, to the checksum
    /// in it.
    pub fn verify_checksum(&self, pseudo: &PseudoHeader) -> bool {
        let segment = self.buffer.as_ref();
        checksum::combine(&[
            pseudo.sum(IpProtocol::Tcp, segment.len() as u32),
            checksum::sum(segment),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set_u16_at(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    fn set_u32_at(&mut self, range: core::ops::Range<usize>, value: u32) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_src_port(&mut self, value: u16) {
        self.set_u16_at(field::SRC_PORT, value);
    }

    pub fn set_dst_port(&mut self, value: u16) {
        self.set_u16_at(field::DST_PORT, value);
    }

    pub fn set_seq_number(&mut self, value: u32) {
        self.set_u32_at(field::SEQ_NUM, value);
    }

    pub fn set_ack_number(&mut self, value: u32) {
        self.set_u32_at(field::ACK_NUM, value);
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::FLAGS.start];
        *b = (*b & 0x0f) | ((value / 4) << 4);
    }

    /// Sets the control bits; the reserved bits are cleared.
    pub fn set_flags(&mut self, value: TcpFlags) {
        let offset = u16::from(self.buffer.as_ref()[field::FLAGS.start] & 0xf0) << 8;
        self.set_u16_at(field::FLAGS, offset | value.bits());
    }

    pub fn set_window_len(&mut self, value: u16) {
        self.set_u16_at(field::WIN_SIZE, value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }

    pub fn set_urgent_at(&mut self, value: u16) {
        self.set_u16_at(field::URGENT, value);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.header_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes the checksum over the pseudo header and the whole buffer and writes it.
    pub fn fill_checksum(&mut self, pseudo: &PseudoHeader) {
        self.set_checksum(0);
        let segment = self.buffer.as_ref();
        let value = !checksum::combine(&[
            pseudo.sum(IpProtocol::Tcp, segment.len() as u32),
            checksum::sum(segment),
        ]);
        self.set_checksum(value);
    }
}

/// The owned form of a TCP header; the payload stays in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: TcpFlags,
    pub window_len: u16,
    pub urgent_pointer: u16,
    pub options: HeaderOptions,
    pub payload_len: usize,
}

impl TcpRepr {
    /// Reads the header. The checksum is not verified.
    pub fn parse<T: AsRef<[u8]>>(packet: &TcpPacket<T>) -> Result<TcpRepr> {
        packet.check_len()?;
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_pointer: packet.urgent_at(),
            options: HeaderOptions::new(packet.options())?,
            payload_len: packet.payload().len(),
        })
    }

    /// The header length: 20 bytes and the options.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// The length of the whole segment, header and payload.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header and options into the first [`header_len`](Self::header_len) bytes
    /// of `packet`, then the checksum over the whole buffer: put the payload into
    /// [`TcpPacket::payload_mut`] first, and pass a buffer of exactly
    /// [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        pseudo: &PseudoHeader,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(self.header_len() as u8);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(self.urgent_pointer);
        packet
            .options_mut()
            .copy_from_slice(self.options.as_bytes());
        packet.fill_checksum(pseudo);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    // The TCP part of a Linux-style SYN generated with scapy 2.8.0: IP(src="192.168.122.10",
    // dst="192.168.122.1")/TCP(sport=51234, dport=80, seq=0x12345678, flags="S", window=64240,
    // options=[("MSS",1460), ("SAckOK",b""), ("Timestamp",(3279131394,0)), ("NOP",None),
    // ("WScale",7)]).
    static TCP4_SYN: [u8; 40] = [
        0xc8, 0x22, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x50, 0x1d, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xc3, 0x73,
        0x93, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    // The TCP part of IP(src="192.168.122.1", dst="192.168.122.10")/TCP(sport=80,
    // dport=51234, seq=0xcafebabe, ack=0x12345679, flags="PA", window=502)/
    // Raw(b"HTTP/1.1 200 OK\r\n"), generated with scapy 2.8.0.
    static TCP4_PSH_ACK: [u8; 37] = [
        0x00, 0x50, 0xc8, 0x22, 0xca, 0xfe, 0xba, 0xbe, 0x12, 0x34, 0x56, 0x79, 0x50, 0x18, 0x01,
        0xf6, 0xc1, 0xc5, 0x00, 0x00, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e, 0x31, 0x20, 0x32,
        0x30, 0x30, 0x20, 0x4f, 0x4b, 0x0d, 0x0a,
    ];

    // The TCP part of IPv6(src="2001:db8::1", dst="2001:db8::2")/TCP(sport=443, dport=50000,
    // seq=1, ack=2, flags="FA", window=1024), generated with scapy 2.8.0.
    static TCP6_FIN: [u8; 20] = [
        0x01, 0xbb, 0xc3, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x50, 0x11, 0x04,
        0x00, 0x8b, 0x50, 0x00, 0x00,
    ];

    const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 10);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 1);

    fn pseudo6() -> PseudoHeader {
        PseudoHeader::V6 {
            src: "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            dst: "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
        }
    }

    fn syn_repr() -> TcpRepr {
        TcpRepr {
            src_port: 51234,
            dst_port: 80,
            seq_number: 0x1234_5678,
            ack_number: 0,
            flags: TcpFlags::SYN,
            window_len: 64240,
            urgent_pointer: 0,
            options: HeaderOptions::new(&TCP4_SYN[20..]).unwrap(),
            payload_len: 0,
        }
    }

    fn fixtures() -> [(&'static [u8], TcpRepr, PseudoHeader); 3] {
        [
            (
                &TCP4_SYN,
                syn_repr(),
                PseudoHeader::V4 {
                    src: GUEST,
                    dst: GATEWAY,
                },
            ),
            (
                &TCP4_PSH_ACK,
                TcpRepr {
                    src_port: 80,
                    dst_port: 51234,
                    seq_number: 0xcafe_babe,
                    ack_number: 0x1234_5679,
                    flags: TcpFlags::PSH | TcpFlags::ACK,
                    window_len: 502,
                    urgent_pointer: 0,
                    options: HeaderOptions::EMPTY,
                    payload_len: 17,
                },
                PseudoHeader::V4 {
                    src: GATEWAY,
                    dst: GUEST,
                },
            ),
            (
                &TCP6_FIN,
                TcpRepr {
                    src_port: 443,
                    dst_port: 50000,
                    seq_number: 1,
                    ack_number: 2,
                    flags: TcpFlags::FIN | TcpFlags::ACK,
                    window_len: 1024,
                    urgent_pointer: 0,
                    options: HeaderOptions::EMPTY,
                    payload_len: 0,
                },
                pseudo6(),
            ),
        ]
    }

    #[test]
    fn parse_syn_fixture() {
        let packet = TcpPacket::new_checked(&TCP4_SYN[..]).unwrap();
        assert_eq!(packet.src_port(), 51234);
        assert_eq!(packet.dst_port(), 80);
        assert_eq!(packet.seq_number(), 0x1234_5678);
        assert_eq!(packet.ack_number(), 0);
        assert_eq!(packet.header_len(), 40);
        assert_eq!(packet.flags(), TcpFlags::SYN);
        assert_eq!(packet.window_len(), 64240);
        assert_eq!(packet.checksum(), 0x501d);
        assert_eq!(packet.urgent_at(), 0);
        // MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
        assert_eq!(&packet.options()[..4], &[0x02, 0x04, 0x05, 0xb4]);
        assert_eq!(&packet.options()[16..], &[0x01, 0x03, 0x03, 0x07]);
        assert_eq!(packet.payload(), &[] as &[u8]);
        assert!(packet.verify_checksum(&PseudoHeader::V4 {
            src: GUEST,
            dst: GATEWAY
        }));
        // The addresses are covered: another source address fails.
        let other = PseudoHeader::V4 {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: GATEWAY,
        };
        assert!(!packet.verify_checksum(&other));
    }

    #[test]
    fn parse_fixtures() {
        let packet = TcpPacket::new_checked(&TCP4_PSH_ACK[..]).unwrap();
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.flags(), TcpFlags::PSH | TcpFlags::ACK);
        assert_eq!(packet.checksum(), 0xc1c5);
        assert_eq!(packet.payload(), b"HTTP/1.1 200 OK\r\n");
        for (fixture, repr, pseudo) in fixtures() {
            let packet = TcpPacket::new_checked(fixture).unwrap();
            assert!(packet.verify_checksum(&pseudo));
            assert_eq!(TcpRepr::parse(&packet).unwrap(), repr);
        }
    }

    #[test]
    fn emit_matches_fixtures() {
        for (fixture, repr, pseudo) in fixtures() {
            assert_eq!(repr.buffer_len(), fixture.len());
            let mut bytes = vec![0xa5u8; repr.buffer_len()];
            let header_len = repr.header_len();
            bytes[header_len..].copy_from_slice(&fixture[header_len..]);
            repr.emit(&mut TcpPacket::new_unchecked(&mut bytes[..]), &pseudo);
            assert_eq!(bytes, fixture);
        }
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..TCP4_SYN.len() {
            assert_eq!(
                TcpPacket::new_checked(&TCP4_SYN[..len]).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
        for len in 0..HEADER_LEN {
            assert_eq!(
                TcpPacket::new_checked(&TCP4_PSH_ACK[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
    }

    #[test]
    fn malformed_data_offset() {
        for offset in 0..5u8 {
            let mut bytes = TCP6_FIN;
            bytes[12] = offset << 4;
            assert_eq!(
                TcpPacket::new_checked(&bytes[..]).unwrap_err(),
                WireError::Malformed
            );
        }
        // A data offset past the buffer.
        let mut bytes = TCP6_FIN;
        bytes[12] = 0x60;
        assert_eq!(
            TcpPacket::new_checked(&bytes[..]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn checksum_verify_and_fill() {
        let mut bytes = TCP4_PSH_ACK;
        bytes[36] = b'!';
        let pseudo = PseudoHeader::V4 {
            src: GATEWAY,
            dst: GUEST,
        };
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).unwrap();
        assert!(!packet.verify_checksum(&pseudo));
        packet.fill_checksum(&pseudo);
        assert!(packet.verify_checksum(&pseudo));
    }

    #[test]
    fn flags_bits() {
        let mut bytes = TCP6_FIN;
        bytes[12] |= 0x0f; // reserved bits and NS
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(packet.flags(), TcpFlags::NS | TcpFlags::FIN | TcpFlags::ACK);
        assert_eq!(packet.header_len(), 20);
        packet.set_flags(TcpFlags::RST);
        assert_eq!(&bytes[12..14], &[0x50, 0x04]);
        assert_eq!(
            format!("{:?}", TcpFlags::SYN | TcpFlags::ACK),
            "TcpFlags(ACK|SYN)"
        );
        assert!(TcpFlags::EMPTY.is_empty());
        assert_eq!(TcpFlags::from_bits_truncate(0xffff).bits(), 0x1ff);
    }
}
