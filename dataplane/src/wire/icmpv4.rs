//! ICMP for IPv4 (RFC 792): echo request and reply, destination unreachable (with the
//! next-hop MTU of RFC 1191) and time exceeded; other messages are carried whole as
//! [`Icmpv4Repr::Other`].
//!
//! The view covers the whole ICMP message (the IPv4 payload); the checksum covers all of it.
//! Parsing does not verify the checksum (see [`Icmpv4Packet::verify_checksum`]).

use super::checksum;
use super::{Result, WireError};

/// The ICMPv4 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Message {
    EchoReply,
    DstUnreachable,
    Redirect,
    EchoRequest,
    TimeExceeded,
    ParamProblem,
    Unknown(u8),
}

impl From<u8> for Icmpv4Message {
    fn from(value: u8) -> Self {
        match value {
            0 => Icmpv4Message::EchoReply,
            3 => Icmpv4Message::DstUnreachable,
            5 => Icmpv4Message::Redirect,
            8 => Icmpv4Message::EchoRequest,
            11 => Icmpv4Message::TimeExceeded,
            12 => Icmpv4Message::ParamProblem,
            other => Icmpv4Message::Unknown(other),
        }
    }
}

impl From<Icmpv4Message> for u8 {
    fn from(value: Icmpv4Message) -> Self {
        match value {
            Icmpv4Message::EchoReply => 0,
            Icmpv4Message::DstUnreachable => 3,
            Icmpv4Message::Redirect => 5,
            Icmpv4Message::EchoRequest => 8,
            Icmpv4Message::TimeExceeded => 11,
            Icmpv4Message::ParamProblem => 12,
            Icmpv4Message::Unknown(other) => other,
        }
    }
}

/// The code of a destination unreachable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4DstUnreachable {
    NetUnreachable,
    HostUnreachable,
    ProtoUnreachable,
    PortUnreachable,
    /// Fragmentation needed and DF set: the message carries the next-hop MTU.
    FragRequired,
    SrcRouteFailed,
    NetProhibited,
    HostProhibited,
    CommProhibited,
    Unknown(u8),
}

impl From<u8> for Icmpv4DstUnreachable {
    fn from(value: u8) -> Self {
        match value {
            0 => Icmpv4DstUnreachable::NetUnreachable,
            1 => Icmpv4DstUnreachable::HostUnreachable,
            2 => Icmpv4DstUnreachable::ProtoUnreachable,
            3 => Icmpv4DstUnreachable::PortUnreachable,
            4 => Icmpv4DstUnreachable::FragRequired,
            5 => Icmpv4DstUnreachable::SrcRouteFailed,
            9 => Icmpv4DstUnreachable::NetProhibited,
            10 => Icmpv4DstUnreachable::HostProhibited,
            13 => Icmpv4DstUnreachable::CommProhibited,
            other => Icmpv4DstUnreachable::Unknown(other),
        }
    }
}

impl From<Icmpv4DstUnreachable> for u8 {
    fn from(value: Icmpv4DstUnreachable) -> Self {
        match value {
            Icmpv4DstUnreachable::NetUnreachable => 0,
            Icmpv4DstUnreachable::HostUnreachable => 1,
            Icmpv4DstUnreachable::ProtoUnreachable => 2,
            Icmpv4DstUnreachable::PortUnreachable => 3,
            Icmpv4DstUnreachable::FragRequired => 4,
            Icmpv4DstUnreachable::SrcRouteFailed => 5,
            Icmpv4DstUnreachable::NetProhibited => 9,
            Icmpv4DstUnreachable::HostProhibited => 10,
            Icmpv4DstUnreachable::CommProhibited => 13,
            Icmpv4DstUnreachable::Unknown(other) => other,
        }
    }
}

/// The code of a time exceeded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4TimeExceeded {
    TtlExpired,
    FragExpired,
    Unknown(u8),
}

impl From<u8> for Icmpv4TimeExceeded {
    fn from(value: u8) -> Self {
        match value {
            0 => Icmpv4TimeExceeded::TtlExpired,
            1 => Icmpv4TimeExceeded::FragExpired,
            other => Icmpv4TimeExceeded::Unknown(other),
        }
    }
}

impl From<Icmpv4TimeExceeded> for u8 {
    fn from(value: Icmpv4TimeExceeded) -> Self {
        match value {
            Icmpv4TimeExceeded::TtlExpired => 0,
            Icmpv4TimeExceeded::FragExpired => 1,
            Icmpv4TimeExceeded::Unknown(other) => other,
        }
    }
}

mod field {
    use core::ops::{Range, RangeFrom};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// The four type-specific bytes after the checksum.
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    pub const DATA: RangeFrom<usize> = 8..;
}

/// The length of the ICMPv4 header: type, code, checksum and four type-specific bytes.
pub const HEADER_LEN: usize = field::DATA.start;

/// A view of an ICMPv4 message.
#[derive(Debug, Clone)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Icmpv4Packet<T> {
        Icmpv4Packet { buffer }
    }

    /// Wraps untrusted bytes: after this no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Icmpv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

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

    fn u16_at(&self, range: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn msg_type(&self) -> Icmpv4Message {
        Icmpv4Message::from(self.buffer.as_ref()[field::TYPE])
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// The four type-specific bytes after the checksum.
    pub fn rest_of_header(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::REST];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The identifier of an echo request or reply.
    pub fn echo_ident(&self) -> u16 {
        self.u16_at(field::ECHO_IDENT)
    }

    /// The sequence number of an echo request or reply.
    pub fn echo_seq_no(&self) -> u16 {
        self.u16_at(field::ECHO_SEQNO)
    }

    /// The next-hop MTU of a "fragmentation needed" destination unreachable (RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        self.u16_at(field::NEXT_HOP_MTU)
    }

    /// After the header: echo data, or the start of the datagram an error is about.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Whether the whole message sums to the checksum in it.
    pub fn verify_checksum(&self) -> bool {
        checksum::sum(self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    fn set_u16_at(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_msg_type(&mut self, value: Icmpv4Message) {
        self.buffer.as_mut()[field::TYPE] = value.into();
    }

    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }

    pub fn set_rest_of_header(&mut self, value: u32) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_echo_ident(&mut self, value: u16) {
        self.set_u16_at(field::ECHO_IDENT, value);
    }

    pub fn set_echo_seq_no(&mut self, value: u16) {
        self.set_u16_at(field::ECHO_SEQNO, value);
    }

    pub fn set_next_hop_mtu(&mut self, value: u16) {
        self.set_u16_at(field::NEXT_HOP_MTU, value);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes the checksum over the whole buffer and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(value);
    }
}

/// The owned form of an ICMPv4 header; the data after it stays in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv4Repr {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data_len: usize,
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data_len: usize,
    },
    DstUnreachable {
        reason: Icmpv4DstUnreachable,
        /// Meaningful for `FragRequired`; zero otherwise.
        next_hop_mtu: u16,
        data_len: usize,
    },
    TimeExceeded {
        reason: Icmpv4TimeExceeded,
        data_len: usize,
    },
    /// Any other message, kept whole.
    Other {
        msg_type: Icmpv4Message,
        code: u8,
        rest_of_header: u32,
        data_len: usize,
    },
}

impl Icmpv4Repr {
    /// Reads the header. The checksum is not verified.
    pub fn parse<T: AsRef<[u8]>>(packet: &Icmpv4Packet<T>) -> Result<Icmpv4Repr> {
        packet.check_len()?;
        let data_len = packet.data().len();
        Ok(match packet.msg_type() {
            Icmpv4Message::EchoRequest => Icmpv4Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data_len,
            },
            Icmpv4Message::EchoReply => Icmpv4Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data_len,
            },
            Icmpv4Message::DstUnreachable => Icmpv4Repr::DstUnreachable {
                reason: Icmpv4DstUnreachable::from(packet.msg_code()),
                next_hop_mtu: packet.next_hop_mtu(),
                data_len,
            },
            Icmpv4Message::TimeExceeded => Icmpv4Repr::TimeExceeded {
                reason: Icmpv4TimeExceeded::from(packet.msg_code()),
                data_len,
            },
            msg_type => Icmpv4Repr::Other {
                msg_type,
                code: packet.msg_code(),
                rest_of_header: packet.rest_of_header(),
                data_len,
            },
        })
    }

    /// The length of the data after the header.
    pub const fn data_len(&self) -> usize {
        match *self {
            Icmpv4Repr::EchoRequest { data_len, .. }
            | Icmpv4Repr::EchoReply { data_len, .. }
            | Icmpv4Repr::DstUnreachable { data_len, .. }
            | Icmpv4Repr::TimeExceeded { data_len, .. }
            | Icmpv4Repr::Other { data_len, .. } => data_len,
        }
    }

    /// The length of the whole message, header and data.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data_len()
    }

    /// Writes the header into the first 8 bytes of `packet`, then the checksum over the whole
    /// buffer: put the data into [`Icmpv4Packet::data_mut`] first, and pass a buffer of
    /// exactly [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        match *self {
            Icmpv4Repr::EchoRequest { ident, seq_no, .. } => {
                packet.set_msg_type(Icmpv4Message::EchoRequest);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Icmpv4Repr::EchoReply { ident, seq_no, .. } => {
                packet.set_msg_type(Icmpv4Message::EchoReply);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Icmpv4Repr::DstUnreachable {
                reason,
                next_hop_mtu,
                ..
            } => {
                packet.set_msg_type(Icmpv4Message::DstUnreachable);
                packet.set_msg_code(reason.into());
                packet.set_rest_of_header(u32::from(next_hop_mtu));
            }
            Icmpv4Repr::TimeExceeded { reason, .. } => {
                packet.set_msg_type(Icmpv4Message::TimeExceeded);
                packet.set_msg_code(reason.into());
                packet.set_rest_of_header(0);
            }
            Icmpv4Repr::Other {
                msg_type,
                code,
                rest_of_header,
                ..
            } => {
                packet.set_msg_type(msg_type);
                packet.set_msg_code(code);
                packet.set_rest_of_header(rest_of_header);
            }
        }
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The ICMP part of a packet generated with scapy 2.8.0: IP(src="192.168.122.10",
    // dst="192.168.122.1")/ICMP(type=8, id=0x0d05, seq=1)/Raw(b"tapswitch-ping!!").
    static ECHO_REQUEST: [u8; 24] = [
        0x08, 0x00, 0xb2, 0x38, 0x0d, 0x05, 0x00, 0x01, 0x74, 0x61, 0x70, 0x73, 0x77, 0x69, 0x74,
        0x63, 0x68, 0x2d, 0x70, 0x69, 0x6e, 0x67, 0x21, 0x21,
    ];

    // Generated with scapy 2.8.0: ICMP(type=3, code=3)/Raw(<the first 28 bytes of
    // IP(src="192.168.122.10", dst="192.168.122.1", id=0x4242)/UDP(sport=40000, dport=33434)>).
    static PORT_UNREACH: [u8; 36] = [
        0x03, 0x03, 0x72, 0x73, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x1c, 0x42, 0x42, 0x00,
        0x00, 0x40, 0x11, 0xc3, 0x32, 0xc0, 0xa8, 0x7a, 0x0a, 0xc0, 0xa8, 0x7a, 0x01, 0x9c, 0x40,
        0x82, 0x9a, 0x00, 0x08, 0x6b, 0xa6,
    ];

    // As PORT_UNREACH, with ICMP(type=3, code=4, nexthopmtu=1400).
    static FRAG_NEEDED: [u8; 36] = [
        0x03, 0x04, 0x6c, 0xfa, 0x00, 0x00, 0x05, 0x78, 0x45, 0x00, 0x00, 0x1c, 0x42, 0x42, 0x00,
        0x00, 0x40, 0x11, 0xc3, 0x32, 0xc0, 0xa8, 0x7a, 0x0a, 0xc0, 0xa8, 0x7a, 0x01, 0x9c, 0x40,
        0x82, 0x9a, 0x00, 0x08, 0x6b, 0xa6,
    ];

    // As PORT_UNREACH, with ICMP(type=11, code=0).
    static TTL_EXCEEDED: [u8; 36] = [
        0x0b, 0x00, 0x6a, 0x76, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x1c, 0x42, 0x42, 0x00,
        0x00, 0x40, 0x11, 0xc3, 0x32, 0xc0, 0xa8, 0x7a, 0x0a, 0xc0, 0xa8, 0x7a, 0x01, 0x9c, 0x40,
        0x82, 0x9a, 0x00, 0x08, 0x6b, 0xa6,
    ];

    fn fixtures() -> [(&'static [u8], Icmpv4Repr); 4] {
        [
            (
                &ECHO_REQUEST,
                Icmpv4Repr::EchoRequest {
                    ident: 0x0d05,
                    seq_no: 1,
                    data_len: 16,
                },
            ),
            (
                &PORT_UNREACH,
                Icmpv4Repr::DstUnreachable {
                    reason: Icmpv4DstUnreachable::PortUnreachable,
                    next_hop_mtu: 0,
                    data_len: 28,
                },
            ),
            (
                &FRAG_NEEDED,
                Icmpv4Repr::DstUnreachable {
                    reason: Icmpv4DstUnreachable::FragRequired,
                    next_hop_mtu: 1400,
                    data_len: 28,
                },
            ),
            (
                &TTL_EXCEEDED,
                Icmpv4Repr::TimeExceeded {
                    reason: Icmpv4TimeExceeded::TtlExpired,
                    data_len: 28,
                },
            ),
        ]
    }

    #[test]
    fn parse_echo_fixture() {
        let packet = Icmpv4Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv4Message::EchoRequest);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0xb238);
        assert_eq!(packet.echo_ident(), 0x0d05);
        assert_eq!(packet.echo_seq_no(), 1);
        assert_eq!(packet.rest_of_header(), 0x0d05_0001);
        assert_eq!(packet.data(), b"tapswitch-ping!!");
        assert!(packet.verify_checksum());
    }

    #[test]
    fn parse_error_fixtures() {
        let packet = Icmpv4Packet::new_checked(&FRAG_NEEDED[..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv4Message::DstUnreachable);
        assert_eq!(packet.msg_code(), 4);
        assert_eq!(packet.checksum(), 0x6cfa);
        assert_eq!(packet.next_hop_mtu(), 1400);
        assert_eq!(packet.data(), &PORT_UNREACH[8..]);
        assert!(packet.verify_checksum());

        let packet = Icmpv4Packet::new_checked(&TTL_EXCEEDED[..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv4Message::TimeExceeded);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0x6a76);
        assert_eq!(packet.rest_of_header(), 0);
        assert!(packet.verify_checksum());

        for (fixture, repr) in fixtures() {
            let packet = Icmpv4Packet::new_checked(fixture).unwrap();
            assert!(packet.verify_checksum());
            assert_eq!(Icmpv4Repr::parse(&packet).unwrap(), repr);
        }
    }

    #[test]
    fn emit_matches_fixtures() {
        for (fixture, repr) in fixtures() {
            assert_eq!(repr.buffer_len(), fixture.len());
            let mut bytes = vec![0xa5u8; repr.buffer_len()];
            let mut packet = Icmpv4Packet::new_unchecked(&mut bytes[..]);
            packet.data_mut().copy_from_slice(&fixture[HEADER_LEN..]);
            repr.emit(&mut packet);
            assert_eq!(bytes, fixture);
        }
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&ECHO_REQUEST[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        // The header alone is a valid message with no data.
        let packet = Icmpv4Packet::new_checked(&ECHO_REQUEST[..HEADER_LEN]).unwrap();
        assert_eq!(Icmpv4Repr::parse(&packet).unwrap().data_len(), 0);
    }

    #[test]
    fn bad_checksum_is_detected() {
        let mut bytes = ECHO_REQUEST;
        bytes[23] ^= 1;
        let mut packet = Icmpv4Packet::new_checked(&mut bytes[..]).unwrap();
        assert!(!packet.verify_checksum());
        packet.fill_checksum();
        assert!(packet.verify_checksum());
    }

    #[test]
    fn other_messages_are_kept_whole() {
        // A timestamp request (type 13): ident 1, seq 2, three timestamps.
        let mut bytes = [0u8; 20];
        bytes[0] = 13;
        bytes[4..8].copy_from_slice(&[0, 1, 0, 2]);
        bytes[8..12].copy_from_slice(&[0x01, 0x02, 0x03, 0x04]);
        let mut packet = Icmpv4Packet::new_checked(&mut bytes[..]).unwrap();
        packet.fill_checksum();
        let repr = Icmpv4Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::Other {
                msg_type: Icmpv4Message::Unknown(13),
                code: 0,
                rest_of_header: 0x0001_0002,
                data_len: 12,
            }
        );
        let mut out = [0u8; 20];
        out[8..].copy_from_slice(&bytes[8..]);
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn type_and_code_numbers_round_trip() {
        for n in 0..=255u8 {
            assert_eq!(u8::from(Icmpv4Message::from(n)), n);
            assert_eq!(u8::from(Icmpv4DstUnreachable::from(n)), n);
            assert_eq!(u8::from(Icmpv4TimeExceeded::from(n)), n);
        }
    }
}
