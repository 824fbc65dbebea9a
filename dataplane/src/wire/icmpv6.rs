//! ICMPv6 (RFC 4443) with the neighbour discovery messages a switch snoops (RFC 4861):
//! echo request and reply, neighbour solicitation and advertisement with their link-layer
//! address options. Other messages are carried whole as [`Icmpv6Repr::Other`].
//!
//! The view covers the whole ICMPv6 message (the IPv6 payload); the checksum covers it and the
//! IPv6 pseudo header. Parsing does not verify the checksum (see
//! [`Icmpv6Packet::verify_checksum`]).

use std::net::Ipv6Addr;

use super::checksum;
use super::{EthernetAddress, IpProtocol, Result, WireError};

/// The ICMPv6 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv6Message {
    DstUnreachable,
    PktTooBig,
    TimeExceeded,
    ParamProblem,
    EchoRequest,
    EchoReply,
    RouterSolicit,
    RouterAdvert,
    NeighborSolicit,
    NeighborAdvert,
    Redirect,
    Unknown(u8),
}

impl From<u8> for Icmpv6Message {
    fn from(value: u8) -> Self {
        match value {
            1 => Icmpv6Message::DstUnreachable,
            2 => Icmpv6Message::PktTooBig,
            3 => Icmpv6Message::TimeExceeded,
            4 => Icmpv6Message::ParamProblem,
            128 => Icmpv6Message::EchoRequest,
            129 => Icmpv6Message::EchoReply,
            133 => Icmpv6Message::RouterSolicit,
            134 => Icmpv6Message::RouterAdvert,
            135 => Icmpv6Message::NeighborSolicit,
            136 => Icmpv6Message::NeighborAdvert,
            137 => Icmpv6Message::Redirect,
            other => Icmpv6Message::Unknown(other),
        }
    }
}

impl From<Icmpv6Message> for u8 {
    fn from(value: Icmpv6Message) -> Self {
        match value {
            Icmpv6Message::DstUnreachable => 1,
            Icmpv6Message::PktTooBig => 2,
            Icmpv6Message::TimeExceeded => 3,
            Icmpv6Message::ParamProblem => 4,
            Icmpv6Message::EchoRequest => 128,
            Icmpv6Message::EchoReply => 129,
            Icmpv6Message::RouterSolicit => 133,
            Icmpv6Message::RouterAdvert => 134,
            Icmpv6Message::NeighborSolicit => 135,
            Icmpv6Message::NeighborAdvert => 136,
            Icmpv6Message::Redirect => 137,
            Icmpv6Message::Unknown(other) => other,
        }
    }
}

/// The type of a neighbour discovery option (RFC 4861 section 4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NdOptionType {
    SourceLinkLayerAddr,
    TargetLinkLayerAddr,
    PrefixInformation,
    RedirectedHeader,
    Mtu,
    Unknown(u8),
}

impl From<u8> for NdOptionType {
    fn from(value: u8) -> Self {
        match value {
            1 => NdOptionType::SourceLinkLayerAddr,
            2 => NdOptionType::TargetLinkLayerAddr,
            3 => NdOptionType::PrefixInformation,
            4 => NdOptionType::RedirectedHeader,
            5 => NdOptionType::Mtu,
            other => NdOptionType::Unknown(other),
        }
    }
}

impl From<NdOptionType> for u8 {
    fn from(value: NdOptionType) -> Self {
        match value {
            NdOptionType::SourceLinkLayerAddr => 1,
            NdOptionType::TargetLinkLayerAddr => 2,
            NdOptionType::PrefixInformation => 3,
            NdOptionType::RedirectedHeader => 4,
            NdOptionType::Mtu => 5,
            NdOptionType::Unknown(other) => other,
        }
    }
}

/// One neighbour discovery option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdOption<'a> {
    pub option_type: NdOptionType,
    /// The option after its type and length bytes.
    pub data: &'a [u8],
}

impl NdOption<'_> {
    /// The Ethernet address of a source or target link-layer address option (length 1, i.e.
    /// 8 bytes); `None` for other options or link layers.
    pub fn link_layer_addr(&self) -> Option<EthernetAddress> {
        match self.option_type {
            NdOptionType::SourceLinkLayerAddr | NdOptionType::TargetLinkLayerAddr
                if self.data.len() == 6 =>
            {
                Some(EthernetAddress::from_bytes(self.data))
            }
            _ => None,
        }
    }
}

/// An iterator over neighbour discovery options. It yields one `Err` and stops at an option
/// of length 0 (`Malformed`, RFC 4861 4.6) or one that runs past the bytes (`Truncated`).
#[derive(Debug, Clone)]
pub struct NdOptions<'a> {
    rest: &'a [u8],
}

impl<'a> NdOptions<'a> {
    /// Iterates the options in `bytes` (the part of an ND message after its fixed fields).
    pub const fn new(bytes: &'a [u8]) -> NdOptions<'a> {
        NdOptions { rest: bytes }
    }
}

impl<'a> Iterator for NdOptions<'a> {
    type Item = Result<NdOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        let (&kind, &units) = match rest {
            [] => return None,
            [kind, units, ..] => (kind, units),
            [_] => {
                self.rest = &[];
                return Some(Err(WireError::Truncated));
            }
        };
        let len = usize::from(units) * 8;
        if len == 0 {
            self.rest = &[];
            return Some(Err(WireError::Malformed));
        }
        match (rest.get(2..len), rest.get(len..)) {
            (Some(data), Some(tail)) => {
                self.rest = tail;
                Some(Ok(NdOption {
                    option_type: NdOptionType::from(kind),
                    data,
                }))
            }
            _ => {
                self.rest = &[];
                Some(Err(WireError::Truncated))
            }
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
    /// Router, solicited and override flags of a neighbour advertisement.
    pub const NA_FLAGS: usize = 4;
    pub const DATA: RangeFrom<usize> = 8..;
    pub const TARGET_ADDR: Range<usize> = 8..24;
    pub const ND_OPTIONS: RangeFrom<usize> = 24..;
}

/// The length of the ICMPv6 header: type, code, checksum and four type-specific bytes.
pub const HEADER_LEN: usize = field::DATA.start;
/// The length of a neighbour solicitation or advertisement without options.
pub const ND_NEIGHBOR_LEN: usize = field::ND_OPTIONS.start;
/// The length of an Ethernet link-layer address option.
const LLADDR_OPTION_LEN: usize = 8;

const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;

/// A view of an ICMPv6 message.
#[derive(Debug, Clone)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Wraps bytes without checking; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Icmpv6Packet<T> {
        Icmpv6Packet { buffer }
    }

    /// Wraps untrusted bytes: after this no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Icmpv6Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` if the buffer is shorter than the 8-byte header, or than the 24 fixed bytes
    /// of a neighbour solicitation or advertisement.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        match self.msg_type() {
            Icmpv6Message::NeighborSolicit | Icmpv6Message::NeighborAdvert
                if len < ND_NEIGHBOR_LEN =>
            {
                Err(WireError::Truncated)
            }
            _ => Ok(()),
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, range: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn msg_type(&self) -> Icmpv6Message {
        Icmpv6Message::from(self.buffer.as_ref()[field::TYPE])
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

    /// The R flag of a neighbour advertisement: the sender is a router.
    pub fn router_flag(&self) -> bool {
        self.buffer.as_ref()[field::NA_FLAGS] & NA_ROUTER != 0
    }

    /// The S flag of a neighbour advertisement: it answers a solicitation.
    pub fn solicited_flag(&self) -> bool {
        self.buffer.as_ref()[field::NA_FLAGS] & NA_SOLICITED != 0
    }

    /// The O flag of a neighbour advertisement: it should override a cached address.
    pub fn override_flag(&self) -> bool {
        self.buffer.as_ref()[field::NA_FLAGS] & NA_OVERRIDE != 0
    }

    /// The target address of a neighbour solicitation or advertisement (bytes 8..24); `None`
    /// if the message is shorter, which `new_checked` rules out for those two types.
    pub fn target_addr(&self) -> Option<Ipv6Addr> {
        let b = self.buffer.as_ref().get(field::TARGET_ADDR)?;
        let mut octets = [0u8; 16];
        octets.copy_from_slice(b);
        Some(Ipv6Addr::from(octets))
    }

    /// After the 8-byte header: echo data, the start of an offending packet, or the fixed
    /// fields and options of a neighbour discovery message.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// The options of a neighbour solicitation or advertisement, after the target address;
    /// empty if the message is shorter than 24 bytes.
    pub fn nd_options(&self) -> NdOptions<'_> {
        NdOptions::new(self.buffer.as_ref().get(field::ND_OPTIONS).unwrap_or(&[]))
    }

    /// Whether the message sums, with the IPv6 pseudo header, to the checksum in it.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        let message = self.buffer.as_ref();
        checksum::combine(&[
            checksum::pseudo_header_v6(src, dst, IpProtocol::Icmpv6, message.len() as u32),
            checksum::sum(message),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    fn set_u16_at(&mut self, range: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_msg_type(&mut self, value: Icmpv6Message) {
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

    /// Sets the R, S and O flags of a neighbour advertisement and clears the reserved bits.
    pub fn set_neighbor_flags(&mut self, router: bool, solicited: bool, override_: bool) {
        let mut flags = 0u32;
        if router {
            flags |= u32::from(NA_ROUTER) << 24;
        }
        if solicited {
            flags |= u32::from(NA_SOLICITED) << 24;
        }
        if override_ {
            flags |= u32::from(NA_OVERRIDE) << 24;
        }
        self.set_rest_of_header(flags);
    }

    /// Sets the target address of a neighbour solicitation or advertisement.
    ///
    /// # Panics
    /// If the buffer is shorter than 24 bytes.
    pub fn set_target_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::TARGET_ADDR].copy_from_slice(&value.octets());
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes the checksum over the IPv6 pseudo header and the whole buffer and writes it.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let message = self.buffer.as_ref();
        let value = !checksum::combine(&[
            checksum::pseudo_header_v6(src, dst, IpProtocol::Icmpv6, message.len() as u32),
            checksum::sum(message),
        ]);
        self.set_checksum(value);
    }
}

/// The owned form of an ICMPv6 message: echo data stays in the buffer; of the neighbour
/// discovery options only the Ethernet link-layer address is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv6Repr {
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
    NeighborSolicit {
        target_addr: Ipv6Addr,
        /// From the first source link-layer address option.
        source_lladdr: Option<EthernetAddress>,
    },
    NeighborAdvert {
        router_flag: bool,
        solicited_flag: bool,
        override_flag: bool,
        target_addr: Ipv6Addr,
        /// From the first target link-layer address option.
        target_lladdr: Option<EthernetAddress>,
    },
    /// Any other message, kept whole.
    Other {
        msg_type: Icmpv6Message,
        code: u8,
        rest_of_header: u32,
        data_len: usize,
    },
}

/// The first link-layer address option of `kind` among `options`; errors of the option walk
/// are passed on.
fn find_lladdr(options: NdOptions<'_>, kind: NdOptionType) -> Result<Option<EthernetAddress>> {
    let mut found = None;
    for option in options {
        let option = option?;
        if found.is_none() && option.option_type == kind {
            found = option.link_layer_addr();
        }
    }
    Ok(found)
}

impl Icmpv6Repr {
    /// Reads the message. A neighbour solicitation or advertisement is `Malformed` if its code
    /// is not 0, its target is multicast, or an option has length 0 (RFC 4861 7.1), and
    /// `Truncated` if an option runs past the message. The checksum is not verified.
    pub fn parse<T: AsRef<[u8]>>(packet: &Icmpv6Packet<T>) -> Result<Icmpv6Repr> {
        packet.check_len()?;
        let data_len = packet.data().len();
        let msg_type = packet.msg_type();
        let neighbor = |kind| -> Result<(Ipv6Addr, Option<EthernetAddress>)> {
            let target = packet.target_addr().ok_or(WireError::Truncated)?;
            if packet.msg_code() != 0 || target.is_multicast() {
                return Err(WireError::Malformed);
            }
            Ok((target, find_lladdr(packet.nd_options(), kind)?))
        };
        Ok(match msg_type {
            Icmpv6Message::EchoRequest => Icmpv6Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data_len,
            },
            Icmpv6Message::EchoReply => Icmpv6Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data_len,
            },
            Icmpv6Message::NeighborSolicit => {
                let (target_addr, source_lladdr) = neighbor(NdOptionType::SourceLinkLayerAddr)?;
                Icmpv6Repr::NeighborSolicit {
                    target_addr,
                    source_lladdr,
                }
            }
            Icmpv6Message::NeighborAdvert => {
                let (target_addr, target_lladdr) = neighbor(NdOptionType::TargetLinkLayerAddr)?;
                Icmpv6Repr::NeighborAdvert {
                    router_flag: packet.router_flag(),
                    solicited_flag: packet.solicited_flag(),
                    override_flag: packet.override_flag(),
                    target_addr,
                    target_lladdr,
                }
            }
            msg_type => Icmpv6Repr::Other {
                msg_type,
                code: packet.msg_code(),
                rest_of_header: packet.rest_of_header(),
                data_len,
            },
        })
    }

    /// The length of the whole message: header and data, or the neighbour discovery fixed
    /// fields and the link-layer address option if any.
    pub const fn buffer_len(&self) -> usize {
        match *self {
            Icmpv6Repr::EchoRequest { data_len, .. }
            | Icmpv6Repr::EchoReply { data_len, .. }
            | Icmpv6Repr::Other { data_len, .. } => HEADER_LEN + data_len,
            Icmpv6Repr::NeighborSolicit {
                source_lladdr: lladdr,
                ..
            }
            | Icmpv6Repr::NeighborAdvert {
                target_lladdr: lladdr,
                ..
            } => {
                ND_NEIGHBOR_LEN
                    + if lladdr.is_some() {
                        LLADDR_OPTION_LEN
                    } else {
                        0
                    }
            }
        }
    }

    /// Writes the message into `packet`, which must be exactly
    /// [`buffer_len`](Self::buffer_len) bytes, then the checksum over the whole buffer with
    /// the pseudo header of `src` and `dst`. Echo and other data is not written: put it into
    /// [`Icmpv6Packet::data_mut`] first. Neighbour discovery messages are written whole.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
        packet: &mut Icmpv6Packet<T>,
    ) {
        fn emit_lladdr<T: AsRef<[u8]> + AsMut<[u8]>>(
            packet: &mut Icmpv6Packet<T>,
            kind: NdOptionType,
            lladdr: Option<EthernetAddress>,
        ) {
            if let Some(addr) = lladdr {
                let option = &mut packet.buffer.as_mut()[ND_NEIGHBOR_LEN..][..LLADDR_OPTION_LEN];
                option[0] = kind.into();
                option[1] = 1;
                option[2..].copy_from_slice(addr.as_bytes());
            }
        }

        match *self {
            Icmpv6Repr::EchoRequest { ident, seq_no, .. } => {
                packet.set_msg_type(Icmpv6Message::EchoRequest);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Icmpv6Repr::EchoReply { ident, seq_no, .. } => {
                packet.set_msg_type(Icmpv6Message::EchoReply);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Icmpv6Repr::NeighborSolicit {
                target_addr,
                source_lladdr,
            } => {
                packet.set_msg_type(Icmpv6Message::NeighborSolicit);
                packet.set_msg_code(0);
                packet.set_rest_of_header(0);
                packet.set_target_addr(target_addr);
                emit_lladdr(packet, NdOptionType::SourceLinkLayerAddr, source_lladdr);
            }
            Icmpv6Repr::NeighborAdvert {
                router_flag,
                solicited_flag,
                override_flag,
                target_addr,
                target_lladdr,
            } => {
                packet.set_msg_type(Icmpv6Message::NeighborAdvert);
                packet.set_msg_code(0);
                packet.set_neighbor_flags(router_flag, solicited_flag, override_flag);
                packet.set_target_addr(target_addr);
                emit_lladdr(packet, NdOptionType::TargetLinkLayerAddr, target_lladdr);
            }
            Icmpv6Repr::Other {
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
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The ICMPv6 part of a neighbour solicitation generated with scapy 2.8.0:
    // IPv6(src="fe80::5054:ff:fe12:3456", dst="ff02::1:ffab:cdef", hlim=255)/
    // ICMPv6ND_NS(tgt="fe80::5054:ff:feab:cdef")/ICMPv6NDOptSrcLLAddr(lladdr="52:54:00:12:34:56").
    static NS: [u8; 32] = [
        0x87, 0x00, 0x85, 0x9a, 0x00, 0x00, 0x00, 0x00, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x50, 0x54, 0x00, 0xff, 0xfe, 0xab, 0xcd, 0xef, 0x01, 0x01, 0x52, 0x54, 0x00, 0x12,
        0x34, 0x56,
    ];

    // The answer, generated with scapy 2.8.0: IPv6(src="fe80::5054:ff:feab:cdef",
    // dst="fe80::5054:ff:fe12:3456", hlim=255)/ICMPv6ND_NA(tgt="fe80::5054:ff:feab:cdef", R=0,
    // S=1, O=1)/ICMPv6NDOptDstLLAddr(lladdr="52:54:00:ab:cd:ef").
    static NA: [u8; 32] = [
        0x88, 0x00, 0x39, 0x97, 0x60, 0x00, 0x00, 0x00, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x50, 0x54, 0x00, 0xff, 0xfe, 0xab, 0xcd, 0xef, 0x02, 0x01, 0x52, 0x54, 0x00, 0xab,
        0xcd, 0xef,
    ];

    // Generated with scapy 2.8.0: IPv6(src="2001:db8::1", dst="2001:db8::2")/
    // ICMPv6EchoRequest(id=0x1234, seq=7, data=b"tapswitch").
    static ECHO_REQUEST: [u8; 17] = [
        0x80, 0x00, 0xd9, 0x61, 0x12, 0x34, 0x00, 0x07, 0x74, 0x61, 0x70, 0x73, 0x77, 0x69, 0x74,
        0x63, 0x68,
    ];

    // The reply, from 2001:db8::2 to 2001:db8::1: ICMPv6EchoReply(id=0x1234, seq=7,
    // data=b"tapswitch"), generated with scapy 2.8.0.
    static ECHO_REPLY: [u8; 17] = [
        0x81, 0x00, 0xd8, 0x61, 0x12, 0x34, 0x00, 0x07, 0x74, 0x61, 0x70, 0x73, 0x77, 0x69, 0x74,
        0x63, 0x68,
    ];

    const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const PEER_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn guest_ll() -> Ipv6Addr {
        addr("fe80::5054:ff:fe12:3456")
    }

    fn peer_ll() -> Ipv6Addr {
        addr("fe80::5054:ff:feab:cdef")
    }

    fn solicited_node() -> Ipv6Addr {
        addr("ff02::1:ffab:cdef")
    }

    /// (message, repr, source, destination)
    fn fixtures() -> [(&'static [u8], Icmpv6Repr, Ipv6Addr, Ipv6Addr); 4] {
        [
            (
                &NS,
                Icmpv6Repr::NeighborSolicit {
                    target_addr: peer_ll(),
                    source_lladdr: Some(GUEST_MAC),
                },
                guest_ll(),
                solicited_node(),
            ),
            (
                &NA,
                Icmpv6Repr::NeighborAdvert {
                    router_flag: false,
                    solicited_flag: true,
                    override_flag: true,
                    target_addr: peer_ll(),
                    target_lladdr: Some(PEER_MAC),
                },
                peer_ll(),
                guest_ll(),
            ),
            (
                &ECHO_REQUEST,
                Icmpv6Repr::EchoRequest {
                    ident: 0x1234,
                    seq_no: 7,
                    data_len: 9,
                },
                addr("2001:db8::1"),
                addr("2001:db8::2"),
            ),
            (
                &ECHO_REPLY,
                Icmpv6Repr::EchoReply {
                    ident: 0x1234,
                    seq_no: 7,
                    data_len: 9,
                },
                addr("2001:db8::2"),
                addr("2001:db8::1"),
            ),
        ]
    }

    #[test]
    fn parse_neighbor_solicitation() {
        let packet = Icmpv6Packet::new_checked(&NS[..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv6Message::NeighborSolicit);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0x859a);
        assert_eq!(packet.rest_of_header(), 0);
        assert_eq!(packet.target_addr(), Some(peer_ll()));
        let options: Vec<_> = packet.nd_options().collect();
        assert_eq!(
            options,
            [Ok(NdOption {
                option_type: NdOptionType::SourceLinkLayerAddr,
                data: &NS[26..]
            })]
        );
        assert_eq!(options[0].unwrap().link_layer_addr(), Some(GUEST_MAC));
        assert!(packet.verify_checksum(&guest_ll(), &solicited_node()));
        assert!(!packet.verify_checksum(&peer_ll(), &solicited_node()));
    }

    #[test]
    fn parse_neighbor_advertisement() {
        let packet = Icmpv6Packet::new_checked(&NA[..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv6Message::NeighborAdvert);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0x3997);
        assert!(!packet.router_flag());
        assert!(packet.solicited_flag());
        assert!(packet.override_flag());
        assert_eq!(packet.target_addr(), Some(peer_ll()));
        let option = packet.nd_options().next().unwrap().unwrap();
        assert_eq!(option.option_type, NdOptionType::TargetLinkLayerAddr);
        assert_eq!(option.link_layer_addr(), Some(PEER_MAC));
        assert!(packet.verify_checksum(&peer_ll(), &guest_ll()));
    }

    #[test]
    fn parse_echo() {
        let packet = Icmpv6Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        assert_eq!(packet.msg_type(), Icmpv6Message::EchoRequest);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0xd961);
        assert_eq!(packet.echo_ident(), 0x1234);
        assert_eq!(packet.echo_seq_no(), 7);
        assert_eq!(packet.data(), b"tapswitch");
        assert_eq!(packet.target_addr(), None);
        assert_eq!(packet.nd_options().next(), None);
    }

    #[test]
    fn parse_fixtures() {
        for (fixture, repr, src, dst) in fixtures() {
            let packet = Icmpv6Packet::new_checked(fixture).unwrap();
            assert!(packet.verify_checksum(&src, &dst));
            assert_eq!(Icmpv6Repr::parse(&packet).unwrap(), repr);
        }
    }

    #[test]
    fn emit_matches_fixtures() {
        for (fixture, repr, src, dst) in fixtures() {
            assert_eq!(repr.buffer_len(), fixture.len());
            let mut bytes = vec![0xa5u8; repr.buffer_len()];
            let mut packet = Icmpv6Packet::new_unchecked(&mut bytes[..]);
            if let Icmpv6Repr::EchoRequest { .. } | Icmpv6Repr::EchoReply { .. } = repr {
                packet.data_mut().copy_from_slice(&fixture[HEADER_LEN..]);
            }
            repr.emit(&src, &dst, &mut packet);
            assert_eq!(bytes, fixture);
        }
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv6Packet::new_checked(&ECHO_REQUEST[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        for fixture in [&NS, &NA] {
            for len in 0..ND_NEIGHBOR_LEN {
                assert_eq!(
                    Icmpv6Packet::new_checked(&fixture[..len]).unwrap_err(),
                    WireError::Truncated,
                    "len {len}"
                );
            }
            // Cut inside the link-layer address option.
            for len in ND_NEIGHBOR_LEN + 1..fixture.len() {
                let packet = Icmpv6Packet::new_checked(&fixture[..len]).unwrap();
                assert_eq!(
                    Icmpv6Repr::parse(&packet).unwrap_err(),
                    WireError::Truncated
                );
            }
            // Without options the message stands on its own.
            let packet = Icmpv6Packet::new_checked(&fixture[..ND_NEIGHBOR_LEN]).unwrap();
            let repr = Icmpv6Repr::parse(&packet).unwrap();
            assert_eq!(repr.buffer_len(), ND_NEIGHBOR_LEN);
        }
    }

    #[test]
    fn malformed_neighbor_messages() {
        // Option length 0.
        let mut bytes = NS;
        bytes[25] = 0;
        let packet = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Icmpv6Repr::parse(&packet).unwrap_err(),
            WireError::Malformed
        );
        // Code not 0.
        let mut bytes = NA;
        bytes[1] = 1;
        let packet = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Icmpv6Repr::parse(&packet).unwrap_err(),
            WireError::Malformed
        );
        // Multicast target.
        let mut bytes = NS;
        bytes[8..24].copy_from_slice(&solicited_node().octets());
        let packet = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Icmpv6Repr::parse(&packet).unwrap_err(),
            WireError::Malformed
        );
        // Option longer than the message.
        let mut bytes = NS;
        bytes[25] = 2;
        let packet = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Icmpv6Repr::parse(&packet).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn unknown_options_are_skipped() {
        // An NS with a nonce option (type 14, RFC 3971) before the source link-layer address.
        let mut bytes = [0u8; 40];
        bytes[..24].copy_from_slice(&NS[..24]);
        bytes[24..32].copy_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        bytes[32..].copy_from_slice(&NS[24..]);
        let packet = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.nd_options().count(), 2);
        assert_eq!(
            Icmpv6Repr::parse(&packet).unwrap(),
            Icmpv6Repr::NeighborSolicit {
                target_addr: peer_ll(),
                source_lladdr: Some(GUEST_MAC)
            }
        );
    }

    #[test]
    fn bad_checksum_is_detected() {
        let mut bytes = ECHO_REQUEST;
        bytes[16] = b'X';
        let (src, dst) = (addr("2001:db8::1"), addr("2001:db8::2"));
        let mut packet = Icmpv6Packet::new_checked(&mut bytes[..]).unwrap();
        assert!(!packet.verify_checksum(&src, &dst));
        packet.fill_checksum(&src, &dst);
        assert!(packet.verify_checksum(&src, &dst));
    }

    #[test]
    fn other_messages_are_kept_whole() {
        // Packet too big, MTU 1280, with four bytes of the offending packet.
        let mut bytes = [2, 0, 0, 0, 0x00, 0x00, 0x05, 0x00, 0x60, 0, 0, 0];
        let (src, dst) = (addr("2001:db8::1"), addr("2001:db8::2"));
        Icmpv6Packet::new_unchecked(&mut bytes[..]).fill_checksum(&src, &dst);
        let packet = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        let repr = Icmpv6Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Icmpv6Repr::Other {
                msg_type: Icmpv6Message::PktTooBig,
                code: 0,
                rest_of_header: 1280,
                data_len: 4,
            }
        );
        let mut out = [0u8; 12];
        out[8..].copy_from_slice(&bytes[8..]);
        repr.emit(&src, &dst, &mut Icmpv6Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn type_numbers_round_trip() {
        for n in 0..=255u8 {
            assert_eq!(u8::from(Icmpv6Message::from(n)), n);
            assert_eq!(u8::from(NdOptionType::from(n)), n);
        }
    }
}
