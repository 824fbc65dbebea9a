//! Frames built from `arbitrary` descriptions of their headers, the structure-aware inputs of
//! the frame targets (`pipeline`, `routing`, `scenario`, `wire_diff`).
//!
//! A [`FrameSpec`] describes an Ethernet frame header by header: MAC addresses, up to two
//! 802.1Q / 802.1ad tags, then ARP, IPv4 or IPv6 (or a raw EtherType) with UDP, TCP, ICMP,
//! ICMPv6 neighbour discovery, VXLAN (a whole inner frame), IPIP or an ICMP error quoting a
//! packet. [`build`] writes it with the dataplane's own reprs and frame builder, so lengths
//! and checksums are right, then applies at most [`MAX_EDITS`] byte edits chosen by the input
//! (set, xor, truncate, insert), so that the fuzzer starts from frames that pass the parsers
//! and still reaches the checks that refuse them.
//!
//! Addresses, ports and VLAN ids are mostly picked from [`Palette`]: the MACs, addresses and
//! ports the fuzz switches are configured with (router interfaces, static FDB entries,
//! Services, port forwards, tunnel peers), so that a few input bytes name a configured host
//! rather than a random one; every choice also has a raw arm.

use std::net::{Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use tapswitch_dataplane::wire::builder::ethernet_frame;
use tapswitch_dataplane::wire::vxlan::{IANA_PORT, LINUX_DEFAULT_PORT};
use tapswitch_dataplane::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, HeaderOptions, Icmpv4Message,
    Icmpv4Packet, Icmpv4Repr, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr, PseudoHeader, TcpFlags, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
    VlanTag, VlanTagRepr, Vni, VxlanHeader, VxlanRepr,
};

use crate::nat::UPLINK_ADDR;
use crate::router::{PEERS, R10, R100, R20};

/// The most byte edits applied to a built frame.
pub const MAX_EDITS: usize = 4;
/// The most VLAN tags in a frame.
pub const MAX_TAGS: usize = 2;
/// Nested packets (VXLAN inner frames, IPIP, quoted packets) deeper than this are left empty.
const MAX_DEPTH: u8 = 2;
/// Payloads of zeros are capped so that a frame stays below a jumbo frame.
const MAX_ZEROS: usize = 9000;

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

const fn mac(b: [u8; 6]) -> EthernetAddress {
    EthernetAddress(b)
}

/// What the fuzz switches are configured with (see `crate::router`, `crate::nat` and the
/// `pipeline`, `vxlan_decap` and `scenario` targets).
pub struct Palette;

impl Palette {
    pub const MACS: [EthernetAddress; 10] = [
        R10,
        R20,
        R100,
        // Static FDB entry of `pipeline`, `vxlan_decap` and `scenario`.
        mac([2, 0, 0, 0, 0, 9]),
        // The neighbour of `pipeline`'s ARP/ND suppression.
        mac([2, 0, 0, 0, 0, 0x99]),
        mac([2, 0, 0, 0, 0, 1]),
        mac([2, 0, 0, 0, 0, 2]),
        mac([0x33, 0x33, 0, 0, 0, 1]),
        mac([0x33, 0x33, 0xff, 0, 0, 1]),
        mac([0x01, 0x80, 0xc2, 0, 0, 0]),
    ];

    pub const V4: [Ipv4Addr; 32] = [
        // Router interfaces.
        ip(10, 42, 0, 1),
        ip(10, 42, 10, 1),
        ip(10, 42, 1, 1),
        UPLINK_ADDR,
        // Hosts and backends on the routed VLANs.
        ip(10, 42, 0, 2),
        ip(10, 42, 0, 3),
        ip(10, 42, 0, 5),
        ip(10, 42, 0, 7),
        ip(10, 42, 0, 9),
        ip(10, 42, 1, 2),
        ip(10, 42, 1, 7),
        ip(10, 42, 1, 254),
        ip(10, 200, 0, 254),
        // Routed elsewhere: gateway, off-link gateway, connected without interface, IPIP,
        // unreachable, default.
        ip(10, 50, 3, 4),
        ip(10, 60, 3, 4),
        ip(10, 70, 0, 5),
        ip(10, 42, 2, 7),
        ip(10, 42, 3, 7),
        ip(10, 99, 0, 1),
        ip(198, 51, 100, 7),
        ip(203, 0, 113, 50),
        ip(8, 8, 8, 8),
        // Service VIPs.
        ip(10, 96, 0, 10),
        ip(10, 96, 0, 11),
        ip(10, 96, 0, 12),
        ip(10, 96, 0, 20),
        ip(10, 96, 0, 21),
        // Tunnel peers and VXLAN endpoints.
        PEERS[0],
        PEERS[1],
        ip(192, 168, 77, 1),
        ip(192, 168, 77, 2),
        // `pipeline`'s neighbour.
        ip(10, 0, 0, 9),
    ];

    pub const V6: [&'static str; 10] = [
        "fd42::1",
        "fd42:1::1",
        "fd42::2",
        "fd42:1::2",
        "fd42:1::fe",
        "fd99::1",
        "fd00::9",
        "2001:db8::1",
        "fe80::1",
        "fe80::200:ff:fe00:2",
    ];

    /// Ports of the Services, NodePorts and port forwards, well-known ports, VXLAN.
    pub const PORTS: [u16; 16] = [
        80,
        443,
        53,
        22,
        2222,
        5353,
        8080,
        30080,
        30053,
        30054,
        IANA_PORT,
        LINUX_DEFAULT_PORT,
        67,
        68,
        546,
        0,
    ];

    /// VLAN ids: those configured, the priority tag, the reserved 4095.
    pub const VIDS: [u16; 8] = [10, 20, 100, 1, 30, 0, 4095, 4094];

    /// VNIs of the VXLAN ports.
    pub const VNIS: [u32; 4] = [42, 43, 44, 0];
}

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Mac {
    Known(u8),
    Broadcast,
    /// 02:00:00:00:00:xx, a locally administered unicast host.
    Host(u8),
    /// 01:00:5e:00:00:xx, IPv4 multicast.
    Multicast(u8),
    Raw([u8; 6]),
}

impl Mac {
    pub fn get(self) -> EthernetAddress {
        match self {
            Mac::Known(i) => pick(&Palette::MACS, i),
            Mac::Broadcast => EthernetAddress::BROADCAST,
            Mac::Host(x) => mac([2, 0, 0, 0, 0, x]),
            Mac::Multicast(x) => mac([1, 0, 0x5e, 0, 0, x]),
            Mac::Raw(b) => EthernetAddress(b),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum V4 {
    Known(u8),
    /// A known address with its last octet replaced: a neighbour in the same subnet.
    Subnet(u8, u8),
    Broadcast,
    Raw([u8; 4]),
}

impl V4 {
    pub fn get(self) -> Ipv4Addr {
        match self {
            V4::Known(i) => pick(&Palette::V4, i),
            V4::Subnet(i, x) => {
                let o = pick(&Palette::V4, i).octets();
                ip(o[0], o[1], o[2], x)
            }
            V4::Broadcast => Ipv4Addr::BROADCAST,
            V4::Raw(b) => Ipv4Addr::from(b),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum V6 {
    Known(u8),
    /// A known address with its last 16 bits replaced.
    Subnet(u8, u16),
    /// The solicited-node multicast address of a known address.
    SolicitedNode(u8),
    AllNodes,
    Unspecified,
    Raw([u8; 16]),
}

impl V6 {
    pub fn get(self) -> Ipv6Addr {
        let known = |i| {
            pick(&Palette::V6, i)
                .parse::<Ipv6Addr>()
                .expect("palette addresses parse")
        };
        match self {
            V6::Known(i) => known(i),
            V6::Subnet(i, x) => {
                let mut s = known(i).segments();
                s[7] = x;
                Ipv6Addr::from(s)
            }
            V6::SolicitedNode(i) => {
                let o = known(i).octets();
                Ipv6Addr::new(
                    0xff02,
                    0,
                    0,
                    0,
                    0,
                    1,
                    0xff00 | u16::from(o[13]),
                    u16::from_be_bytes([o[14], o[15]]),
                )
            }
            V6::AllNodes => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            V6::Unspecified => Ipv6Addr::UNSPECIFIED,
            V6::Raw(b) => Ipv6Addr::from(b),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    Known(u8),
    Raw(u16),
}

impl Port {
    pub fn get(self) -> u16 {
        match self {
            Port::Known(i) => pick(&Palette::PORTS, i),
            Port::Raw(p) => p,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Vid {
    Known(u8),
    Raw(u16),
}

impl Vid {
    /// The 12-bit VID of a tag.
    pub fn get(self) -> u16 {
        match self {
            Vid::Known(i) => pick(&Palette::VIDS, i),
            Vid::Raw(v) => v & 0x0fff,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Tag {
    pub vid: Vid,
    pub pcp: u8,
    pub dei: bool,
    /// An 802.1ad S-tag (EtherType 0x88a8) rather than an 802.1Q C-tag.
    pub s_tag: bool,
}

/// Bytes that follow a header.
#[derive(Arbitrary, Debug, Clone)]
pub enum Payload {
    Bytes(Vec<u8>),
    /// That many zeros (capped): large frames for MTU checks, fragmentation, segmentation.
    Zeros(u16),
    /// An IP packet, cut to at most that many bytes (0: whole).
    Ip(Box<IpSpec>, u16),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum IpSpec {
    V4(Ipv4Spec),
    V6(Ipv6Spec),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Ipv4Spec {
    pub src: V4,
    pub dst: V4,
    pub ttl: u8,
    pub dscp_ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In 8-byte units (13 bits are kept).
    pub frag_offset: u16,
    /// Padded with zeros to a multiple of 4, at most 40 bytes.
    pub options: Vec<u8>,
    pub l4: L4,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Ipv6Spec {
    pub src: V6,
    pub dst: V6,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub l4: L4,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum L4 {
    Udp {
        sport: Port,
        dport: Port,
        /// No checksum (allowed over IPv4 only).
        zero_checksum: bool,
        payload: Payload,
    },
    Tcp {
        sport: Port,
        dport: Port,
        seq: u32,
        ack: u32,
        /// The nine control bits.
        flags: TcpFlagSet,
        window: u16,
        urgent: u16,
        options: Vec<u8>,
        payload: Payload,
    },
    /// ICMP over IPv4, ICMPv6 over IPv6: any type and code.
    Icmp {
        msg_type: IcmpType,
        code: u8,
        rest_of_header: u32,
        payload: Payload,
    },
    /// A neighbour solicitation or advertisement (over IPv4: an echo request).
    Nd {
        advert: bool,
        flags: u8,
        target: V6,
        lladdr: Option<Mac>,
    },
    /// UDP to a VXLAN port, carrying a whole frame.
    Vxlan { sport: Port, vxlan: VxlanSpec },
    /// An IPv4 packet in IPv4 (protocol 4; over IPv6 the same next header).
    IpIp(Box<Ipv4Spec>),
    /// Any other protocol number.
    Raw { protocol: u8, payload: Payload },
}

/// TCP flags: common combinations, or raw bits.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TcpFlagSet {
    Syn,
    SynAck,
    Ack,
    PshAck,
    FinAck,
    Rst,
    RstAck,
    Raw(u16),
}

impl TcpFlagSet {
    pub fn get(self) -> TcpFlags {
        let (s, a, f, r, p) = (
            TcpFlags::SYN,
            TcpFlags::ACK,
            TcpFlags::FIN,
            TcpFlags::RST,
            TcpFlags::PSH,
        );
        match self {
            TcpFlagSet::Syn => s,
            TcpFlagSet::SynAck => s | a,
            TcpFlagSet::Ack => a,
            TcpFlagSet::PshAck => p | a,
            TcpFlagSet::FinAck => f | a,
            TcpFlagSet::Rst => r,
            TcpFlagSet::RstAck => r | a,
            TcpFlagSet::Raw(bits) => TcpFlags::from_bits_truncate(bits),
        }
    }
}

/// ICMP types: those the dataplane handles (per family), or raw.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IcmpType {
    EchoRequest,
    EchoReply,
    DstUnreachable,
    TimeExceeded,
    /// Packet too big over IPv6, parameter problem over IPv4.
    TooBig,
    Raw(u8),
}

impl IcmpType {
    fn v4(self) -> u8 {
        match self {
            IcmpType::EchoRequest => 8,
            IcmpType::EchoReply => 0,
            IcmpType::DstUnreachable => 3,
            IcmpType::TimeExceeded => 11,
            IcmpType::TooBig => 12,
            IcmpType::Raw(t) => t,
        }
    }

    fn v6(self) -> u8 {
        match self {
            IcmpType::EchoRequest => 128,
            IcmpType::EchoReply => 129,
            IcmpType::DstUnreachable => 1,
            IcmpType::TimeExceeded => 3,
            IcmpType::TooBig => 2,
            IcmpType::Raw(t) => t,
        }
    }
}

/// A VXLAN header and its inner frame: what a tunnel socket receives.
#[derive(Arbitrary, Debug, Clone)]
pub struct VxlanSpec {
    pub dport: VxlanPort,
    pub vni: VniChoice,
    /// Flags other than the I flag alone (`None`: 0x08).
    pub flags: Option<u8>,
    pub inner: Box<FrameSpec>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum VxlanPort {
    Iana,
    Linux,
    Raw(u16),
}

impl VxlanPort {
    pub fn get(self) -> u16 {
        match self {
            VxlanPort::Iana => IANA_PORT,
            VxlanPort::Linux => LINUX_DEFAULT_PORT,
            VxlanPort::Raw(p) => p,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum VniChoice {
    Known(u8),
    Raw(u32),
}

impl VniChoice {
    pub fn get(self) -> u32 {
        match self {
            VniChoice::Known(i) => pick(&Palette::VNIS, i),
            VniChoice::Raw(v) => v & Vni::MAX,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct ArpSpec {
    pub reply: bool,
    /// Another operation code instead of request or reply.
    pub raw_op: Option<u16>,
    pub sha: Mac,
    pub spa: V4,
    pub tha: Mac,
    pub tpa: V4,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Body {
    Ipv4(Ipv4Spec),
    Ipv6(Ipv6Spec),
    Arp(ArpSpec),
    Raw { ethertype: u16, payload: Payload },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum EditOp {
    Set(u8),
    Xor(u8),
    /// Cut the frame at the position.
    Truncate,
    Insert(u8),
}

/// A byte edit at a position (taken modulo the frame's length).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Edit {
    pub at: u16,
    pub op: EditOp,
}

/// An Ethernet frame, header by header, then byte edits.
#[derive(Arbitrary, Debug, Clone)]
pub struct FrameSpec {
    pub dst: Mac,
    pub src: Mac,
    /// At most [`MAX_TAGS`] are used.
    pub tags: Vec<Tag>,
    pub body: Body,
    /// At most [`MAX_EDITS`] are applied.
    pub edits: Vec<Edit>,
}

/// An IP packet without a link layer (as a tunnel socket hands it over), then byte edits.
#[derive(Arbitrary, Debug, Clone)]
pub struct PacketSpec {
    pub packet: IpSpec,
    /// At most [`MAX_EDITS`] are applied.
    pub edits: Vec<Edit>,
}

/// Builds the packet `spec` describes, edits applied.
pub fn build_packet(spec: &PacketSpec) -> Built {
    let mut frame = match &spec.packet {
        IpSpec::V4(p) => build_ipv4(p, 0),
        IpSpec::V6(p) => build_ipv6(p, 0),
    };
    let intact = apply_edits(&mut frame, &spec.edits);
    Built { frame, intact }
}

/// A frame (or packet) built from a [`FrameSpec`] (or [`PacketSpec`]).
pub struct Built {
    pub frame: Vec<u8>,
    /// No edit changed the frame: lengths and checksums are as built.
    pub intact: bool,
}

/// Builds the frame `spec` describes, edits applied.
pub fn build(spec: &FrameSpec) -> Built {
    let mut frame = build_frame(spec, 0);
    let intact = apply_edits(&mut frame, &spec.edits);
    Built { frame, intact }
}

/// Applies at most [`MAX_EDITS`] of `edits` to `bytes`; returns whether the bytes are as they
/// were.
pub fn apply_edits(bytes: &mut Vec<u8>, edits: &[Edit]) -> bool {
    let before = bytes.clone();
    for edit in edits.iter().take(MAX_EDITS) {
        let at = usize::from(edit.at) % (bytes.len() + 1);
        match edit.op {
            EditOp::Set(b) if at < bytes.len() => bytes[at] = b,
            EditOp::Xor(b) if at < bytes.len() => bytes[at] ^= b,
            EditOp::Truncate => bytes.truncate(at),
            EditOp::Insert(b) => bytes.insert(at, b),
            _ => {}
        }
    }
    *bytes == before
}

fn build_frame(spec: &FrameSpec, depth: u8) -> Vec<u8> {
    let (ethertype, l3) = match &spec.body {
        Body::Ipv4(p) => (EtherType::Ipv4, build_ipv4(p, depth)),
        Body::Ipv6(p) => (EtherType::Ipv6, build_ipv6(p, depth)),
        Body::Arp(a) => (EtherType::Arp, build_arp(a)),
        Body::Raw { ethertype, payload } => {
            (EtherType::from(*ethertype), build_payload(payload, depth))
        }
    };
    // Tags from the innermost out, each naming what follows it.
    let tags: Vec<&Tag> = spec.tags.iter().take(MAX_TAGS).collect();
    let mut inner_type = ethertype;
    let mut rest = l3;
    for tag in tags.iter().rev() {
        let mut t = vec![0u8; 4];
        VlanTagRepr {
            pcp: tag.pcp & 7,
            dei: tag.dei,
            vid: tag.vid.get(),
            ethertype: inner_type,
        }
        .emit(&mut VlanTag::new_unchecked(&mut t[..]));
        t.extend_from_slice(&rest);
        rest = t;
        inner_type = if tag.s_tag {
            EtherType::QinQ
        } else {
            EtherType::Vlan
        };
    }
    ethernet_frame(spec.dst.get(), spec.src.get(), None, inner_type, &rest)
}

fn build_payload(payload: &Payload, depth: u8) -> Vec<u8> {
    match payload {
        Payload::Bytes(b) => b.clone(),
        Payload::Zeros(n) => vec![0; usize::from(*n) % MAX_ZEROS],
        Payload::Ip(_, _) if depth >= MAX_DEPTH => Vec::new(),
        Payload::Ip(p, cut) => {
            let mut b = match &**p {
                IpSpec::V4(p) => build_ipv4(p, depth + 1),
                IpSpec::V6(p) => build_ipv6(p, depth + 1),
            };
            if *cut != 0 {
                b.truncate(usize::from(*cut));
            }
            b
        }
    }
}

fn build_arp(a: &ArpSpec) -> Vec<u8> {
    let operation = match (a.raw_op, a.reply) {
        (Some(op), _) => ArpOperation::from(op),
        (None, true) => ArpOperation::Reply,
        (None, false) => ArpOperation::Request,
    };
    let repr = ArpRepr {
        operation,
        source_hardware_addr: a.sha.get(),
        source_protocol_addr: a.spa.get(),
        target_hardware_addr: a.tha.get(),
        target_protocol_addr: a.tpa.get(),
    };
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut b[..]));
    b
}

/// Options padded with zeros (end of options) to whole words, at most 40 bytes.
fn options(bytes: &[u8]) -> HeaderOptions {
    let mut o = bytes[..bytes.len().min(40)].to_vec();
    o.resize(o.len().div_ceil(4) * 4, 0);
    HeaderOptions::new(&o).expect("padded options are valid")
}

/// Caps an IP payload so that the packet's length fits its 16-bit field.
fn cap(mut payload: Vec<u8>, header_len: usize) -> Vec<u8> {
    payload.truncate(usize::from(u16::MAX) - header_len);
    payload
}

pub fn build_ipv4(p: &Ipv4Spec, depth: u8) -> Vec<u8> {
    let (src, dst) = (p.src.get(), p.dst.get());
    let pseudo = PseudoHeader::V4 { src, dst };
    let (protocol, l4) = build_l4(&p.l4, &pseudo, depth);
    let options = options(&p.options);
    let l4 = cap(l4, 20 + options.len());
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol,
        payload_len: l4.len(),
        ttl: p.ttl,
        dscp: p.dscp_ecn >> 2,
        ecn: p.dscp_ecn & 3,
        ident: p.ident,
        dont_frag: p.dont_frag,
        more_frags: p.more_frags,
        frag_offset: (p.frag_offset & 0x1fff) << 3,
        options,
    };
    let mut b = vec![0u8; repr.buffer_len()];
    b[repr.header_len()..].copy_from_slice(&l4);
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
    b
}

pub fn build_ipv6(p: &Ipv6Spec, depth: u8) -> Vec<u8> {
    let (src, dst) = (p.src.get(), p.dst.get());
    let pseudo = PseudoHeader::V6 { src, dst };
    let (next_header, l4) = build_l4(&p.l4, &pseudo, depth);
    let l4 = cap(l4, 0);
    let repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header,
        payload_len: l4.len(),
        hop_limit: p.hop_limit,
        traffic_class: p.traffic_class,
        flow_label: p.flow_label & 0x000f_ffff,
    };
    let mut b = vec![0u8; repr.buffer_len()];
    b[repr.header_len()..].copy_from_slice(&l4);
    repr.emit(&mut Ipv6Packet::new_unchecked(&mut b[..]));
    b
}

fn build_udp(sport: u16, dport: u16, payload: &[u8], pseudo: &PseudoHeader) -> Vec<u8> {
    let payload = &payload[..payload.len().min(usize::from(u16::MAX) - 8 - 60)];
    let repr = UdpRepr {
        src_port: sport,
        dst_port: dport,
        payload_len: payload.len(),
    };
    let mut b = vec![0u8; repr.buffer_len()];
    b[repr.header_len()..].copy_from_slice(payload);
    repr.emit(&mut UdpPacket::new_unchecked(&mut b[..]), pseudo);
    b
}

/// The VXLAN header and inner frame of `v`: the payload of the UDP datagram.
pub fn build_vxlan(v: &VxlanSpec, depth: u8) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    {
        let mut h = VxlanHeader::new_unchecked(&mut b[..]);
        let vni = Vni::new(v.vni.get()).expect("masked to 24 bits");
        VxlanRepr { vni }.emit(&mut h);
        if let Some(flags) = v.flags {
            h.set_flags(flags);
        }
    }
    if depth < MAX_DEPTH {
        b.extend_from_slice(&build_frame(&v.inner, depth + 1));
    }
    b
}

fn build_l4(l4: &L4, pseudo: &PseudoHeader, depth: u8) -> (IpProtocol, Vec<u8>) {
    match l4 {
        L4::Udp {
            sport,
            dport,
            zero_checksum,
            payload,
        } => {
            let payload = build_payload(payload, depth);
            let mut b = build_udp(sport.get(), dport.get(), &payload, pseudo);
            if *zero_checksum {
                UdpPacket::new_unchecked(&mut b[..]).set_checksum(0);
            }
            (IpProtocol::Udp, b)
        }
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            urgent,
            options: opts,
            payload,
        } => {
            let payload = build_payload(payload, depth);
            let options = options(opts);
            let payload = &payload[..payload.len().min(usize::from(u16::MAX) - 60 - 60)];
            let repr = TcpRepr {
                src_port: sport.get(),
                dst_port: dport.get(),
                seq_number: *seq,
                ack_number: *ack,
                flags: flags.get(),
                window_len: *window,
                urgent_pointer: *urgent,
                options,
                payload_len: payload.len(),
            };
            let mut b = vec![0u8; repr.buffer_len()];
            b[repr.header_len()..].copy_from_slice(payload);
            repr.emit(&mut TcpPacket::new_unchecked(&mut b[..]), pseudo);
            (IpProtocol::Tcp, b)
        }
        L4::Icmp {
            msg_type,
            code,
            rest_of_header,
            payload,
        } => {
            let data = build_payload(payload, depth);
            let data = &data[..data.len().min(usize::from(u16::MAX) - 8 - 60)];
            let mut b = vec![0u8; 8 + data.len()];
            b[8..].copy_from_slice(data);
            if let PseudoHeader::V6 { src, dst } = pseudo {
                let repr = Icmpv6Repr::Other {
                    msg_type: Icmpv6Message::from(msg_type.v6()),
                    code: *code,
                    rest_of_header: *rest_of_header,
                    data_len: data.len(),
                };
                repr.emit(src, dst, &mut Icmpv6Packet::new_unchecked(&mut b[..]));
                (IpProtocol::Icmpv6, b)
            } else {
                let repr = Icmpv4Repr::Other {
                    msg_type: Icmpv4Message::from(msg_type.v4()),
                    code: *code,
                    rest_of_header: *rest_of_header,
                    data_len: data.len(),
                };
                repr.emit(&mut Icmpv4Packet::new_unchecked(&mut b[..]));
                (IpProtocol::Icmp, b)
            }
        }
        L4::Nd {
            advert,
            flags,
            target,
            lladdr,
        } => {
            let PseudoHeader::V6 { src, dst } = pseudo else {
                let repr = Icmpv4Repr::EchoRequest {
                    ident: u16::from(*flags),
                    seq_no: 1,
                    data_len: 0,
                };
                let mut b = vec![0u8; repr.buffer_len()];
                repr.emit(&mut Icmpv4Packet::new_unchecked(&mut b[..]));
                return (IpProtocol::Icmp, b);
            };
            let lladdr = lladdr.map(Mac::get);
            let repr = if *advert {
                Icmpv6Repr::NeighborAdvert {
                    router_flag: flags & 0x80 != 0,
                    solicited_flag: flags & 0x40 != 0,
                    override_flag: flags & 0x20 != 0,
                    target_addr: target.get(),
                    target_lladdr: lladdr,
                }
            } else {
                Icmpv6Repr::NeighborSolicit {
                    target_addr: target.get(),
                    source_lladdr: lladdr,
                }
            };
            let mut b = vec![0u8; repr.buffer_len()];
            repr.emit(src, dst, &mut Icmpv6Packet::new_unchecked(&mut b[..]));
            (IpProtocol::Icmpv6, b)
        }
        L4::Vxlan { sport, vxlan } => {
            let payload = build_vxlan(vxlan, depth);
            let b = build_udp(sport.get(), vxlan.dport.get(), &payload, pseudo);
            (IpProtocol::Udp, b)
        }
        L4::IpIp(inner) => {
            let b = if depth < MAX_DEPTH {
                build_ipv4(inner, depth + 1)
            } else {
                Vec::new()
            };
            (IpProtocol::IpIp, b)
        }
        L4::Raw { protocol, payload } => {
            (IpProtocol::from(*protocol), build_payload(payload, depth))
        }
    }
}
