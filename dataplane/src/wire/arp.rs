//! ARP (RFC 826) for IPv4 over Ethernet: the 28-byte payload of an
//! [`EthernetFrame`](super::EthernetFrame) whose EtherType is `Arp`.
//!
//! The view reads the Ethernet/IPv4 layout at fixed offsets; [`ArpRepr::parse`] rejects
//! packets of any other hardware or protocol type as `Malformed`.

use std::net::Ipv4Addr;

use super::{EtherType, EthernetAddress, Result, WireError};

/// The ARP hardware type of Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

/// The ARP operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        match value {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(value: ArpOperation) -> Self {
        match value {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

mod field {
    use core::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// The length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;

/// A view of an Ethernet/IPv4 ARP packet. Bytes past the 28 (Ethernet padding) are ignored.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    /// Wraps untrusted bytes: after this no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < PACKET_LEN {
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

    fn ipv4_at(&self, range: core::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[range];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn hardware_type(&self) -> u16 {
        self.u16_at(field::HTYPE)
    }

    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(self.u16_at(field::PTYPE))
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(self.u16_at(field::OPER))
    }

    pub fn source_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SHA])
    }

    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        self.ipv4_at(field::SPA)
    }

    pub fn target_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::THA])
    }

    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        self.ipv4_at(field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    pub fn set_hardware_type(&mut self, value: u16) {
        self.buffer.as_mut()[field::HTYPE].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_protocol_type(&mut self, value: EtherType) {
        let v: u16 = value.into();
        self.buffer.as_mut()[field::PTYPE].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    pub fn set_operation(&mut self, value: ArpOperation) {
        let v: u16 = value.into();
        self.buffer.as_mut()[field::OPER].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_source_hardware_addr(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&value.0);
    }

    pub fn set_source_protocol_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&value.octets());
    }

    pub fn set_target_hardware_addr(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&value.0);
    }

    pub fn set_target_protocol_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&value.octets());
    }
}

/// The owned form of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub source_hardware_addr: EthernetAddress,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: EthernetAddress,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Reads an Ethernet/IPv4 ARP packet: `Malformed` for any other hardware type, protocol
    /// type or address lengths.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<ArpRepr> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != EtherType::Ipv4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(WireError::Malformed);
        }
        Ok(ArpRepr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet into the first [`buffer_len`](Self::buffer_len) bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(EtherType::Ipv4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with scapy 2.8.0: ARP(op=1, hwsrc="52:54:00:12:34:56", psrc="192.168.122.10",
    // hwdst="00:00:00:00:00:00", pdst="192.168.122.1") -- a guest asking for its gateway.
    static ARP_REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0xc0,
        0xa8, 0x7a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x7a, 0x01,
    ];

    // Generated with scapy 2.8.0: ARP(op=2, hwsrc="52:54:00:ab:cd:ef", psrc="192.168.122.1",
    // hwdst="52:54:00:12:34:56", pdst="192.168.122.10") -- the gateway's answer.
    static ARP_REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0xc0,
        0xa8, 0x7a, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0xc0, 0xa8, 0x7a, 0x0a,
    ];

    const GUEST: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const GATEWAY: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);

    fn request_repr() -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: GUEST,
            source_protocol_addr: Ipv4Addr::new(192, 168, 122, 10),
            target_hardware_addr: EthernetAddress::ZERO,
            target_protocol_addr: Ipv4Addr::new(192, 168, 122, 1),
        }
    }

    fn reply_repr() -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: GATEWAY,
            source_protocol_addr: Ipv4Addr::new(192, 168, 122, 1),
            target_hardware_addr: GUEST,
            target_protocol_addr: Ipv4Addr::new(192, 168, 122, 10),
        }
    }

    #[test]
    fn parse_request_fixture() {
        let packet = ArpPacket::new_checked(&ARP_REQUEST[..]).unwrap();
        assert_eq!(packet.hardware_type(), 1);
        assert_eq!(packet.protocol_type(), EtherType::Ipv4);
        assert_eq!(packet.hardware_len(), 6);
        assert_eq!(packet.protocol_len(), 4);
        assert_eq!(packet.operation(), ArpOperation::Request);
        assert_eq!(packet.source_hardware_addr(), GUEST);
        assert_eq!(
            packet.source_protocol_addr(),
            Ipv4Addr::new(192, 168, 122, 10)
        );
        assert_eq!(packet.target_hardware_addr(), EthernetAddress::ZERO);
        assert_eq!(
            packet.target_protocol_addr(),
            Ipv4Addr::new(192, 168, 122, 1)
        );
        assert_eq!(ArpRepr::parse(&packet).unwrap(), request_repr());
    }

    #[test]
    fn parse_reply_fixture() {
        let packet = ArpPacket::new_checked(&ARP_REPLY[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet).unwrap(), reply_repr());
    }

    #[test]
    fn emit_matches_fixtures() {
        for (repr, fixture) in [(request_repr(), &ARP_REQUEST), (reply_repr(), &ARP_REPLY)] {
            let mut bytes = [0xa5u8; 28];
            assert_eq!(repr.buffer_len(), bytes.len());
            repr.emit(&mut ArpPacket::new_unchecked(&mut bytes[..]));
            assert_eq!(&bytes, fixture);
        }
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut padded = [0u8; 46];
        padded[..28].copy_from_slice(&ARP_REQUEST);
        let packet = ArpPacket::new_checked(&padded[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet).unwrap(), request_repr());
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..ARP_REQUEST.len() {
            assert_eq!(
                ArpPacket::new_checked(&ARP_REQUEST[..len]).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
    }

    #[test]
    fn other_hardware_or_protocol_is_malformed() {
        // (offset, value): hardware type 6 (IEEE 802), protocol IPv6, hlen 8, plen 16.
        for (offset, value) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut bytes = ARP_REQUEST;
            bytes[offset] = value;
            let packet = ArpPacket::new_checked(&bytes[..]).unwrap();
            assert_eq!(ArpRepr::parse(&packet).unwrap_err(), WireError::Malformed);
        }
    }

    #[test]
    fn unknown_operation_is_carried() {
        let mut bytes = ARP_REQUEST;
        bytes[7] = 3; // RARP request
        let packet = ArpPacket::new_checked(&bytes[..]).unwrap();
        let repr = ArpRepr::parse(&packet).unwrap();
        assert_eq!(repr.operation, ArpOperation::Unknown(3));
        let mut out = [0u8; 28];
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }
}
