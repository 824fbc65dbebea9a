//! Differential: the same bytes parsed by tapswitch's wire views and by the `etherparse`
//! crate, header by header (Ethernet, 802.1Q/802.1ad tags, ARP, IPv4, IPv6, UDP, TCP, ICMPv4,
//! ICMPv6), walking down through what both agree is there. Panics where they disagree on
//! whether a header is valid or on a field, and where their checksum verdicts differ. The
//! deliberate differences (what tapswitch accepts or refuses that etherparse does not) are
//! listed in fuzz/README.md ("wire_diff: deliberate differences") and encoded below, each at
//! the place it applies, marked `Deliberate:`.
//!
//! Input: byte 0 picks where to start. With bit 7 set, the rest is an `arbitrary`
//! description of a frame (`tapswitch_fuzz::frame`), built and then parsed from Ethernet
//! down; otherwise bits 0-2 pick the first header of the raw rest: Ethernet, IPv4, IPv6, ARP,
//! UDP, TCP, ICMPv4, ICMPv6 (transports with the pseudo header of fixed addresses).
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Unstructured};
use etherparse::{
    ArpHardwareId, ArpPacketSlice, Ethernet2HeaderSlice, Icmpv4Slice, Icmpv6Slice, Ipv4HeaderSlice,
    Ipv4Slice, Ipv6HeaderSlice, Ipv6Slice, SingleVlanHeaderSlice, TcpSlice, UdpSlice,
};
use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::wire::{
    checksum, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, Icmpv4Packet,
    Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
    PseudoHeader, TcpPacket, TcpRepr, UdpPacket, UdpRepr, VlanTag,
};
use tapswitch_fuzz::frame::{build, FrameSpec};

/// Tags walked through before giving up (etherparse slices one at a time as well).
const MAX_TAGS: usize = 4;

/// Whether two checksum field values say the same: equal, or the two encodings of ones'-
/// complement zero (0x0000 and 0xffff), which a receiver summing the whole header accepts
/// alike (RFC 1624).
fn same_checksum(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

/// etherparse's ones'-complement sum routine over `data`, complemented (it sums words in
/// native byte order: `to_be` gives the field value, as etherparse's own callers do).
fn ep_checksum(data: &[u8]) -> u16 {
    etherparse::checksum::Sum16BitWords::new()
        .add_slice(data)
        .ones_complement()
        .to_be()
}

/// The one checksum routine of tapswitch against etherparse's.
fn diff_sum(data: &[u8]) {
    assert!(
        same_checksum(checksum::checksum(data), ep_checksum(data)),
        "checksum of {data:02x?}"
    );
}

fn diff_ethernet(data: &[u8]) {
    let ts = EthernetFrame::new_checked(data);
    let ep = Ethernet2HeaderSlice::from_slice(data);
    assert_eq!(ts.is_ok(), ep.is_ok(), "Ethernet validity");
    let (Ok(ts), Ok(ep)) = (ts, ep) else { return };
    assert_eq!(ts.dst_addr().0, ep.destination());
    assert_eq!(ts.src_addr().0, ep.source());
    assert_eq!(u16::from(ts.ethertype()), ep.ether_type().0);
    diff_ethertype(ts.ethertype(), &data[14..], 0);
}

fn diff_ethertype(ethertype: EtherType, payload: &[u8], tags: usize) {
    match ethertype {
        EtherType::Vlan | EtherType::QinQ if tags < MAX_TAGS => diff_vlan(payload, tags),
        EtherType::Ipv4 => diff_ipv4(payload),
        EtherType::Ipv6 => diff_ipv6(payload),
        EtherType::Arp => diff_arp(payload),
        _ => {}
    }
}

fn diff_vlan(data: &[u8], tags: usize) {
    let ts = VlanTag::new_checked(data);
    let ep = SingleVlanHeaderSlice::from_slice(data);
    assert_eq!(ts.is_ok(), ep.is_ok(), "802.1Q tag validity");
    let (Ok(ts), Ok(ep)) = (ts, ep) else { return };
    assert_eq!(ts.pcp(), ep.priority_code_point().value());
    assert_eq!(ts.dei(), ep.drop_eligible_indicator());
    assert_eq!(ts.vid(), ep.vlan_identifier().value());
    assert_eq!(u16::from(ts.ethertype()), ep.ether_type().0);
    diff_ethertype(ts.ethertype(), ts.payload(), tags + 1);
}

fn diff_arp(data: &[u8]) {
    let view = ArpPacket::new_checked(data);
    let repr = view.as_ref().ok().map(ArpRepr::parse);
    let ep = ArpPacketSlice::from_slice(data);
    if let (Ok(view), Ok(ep)) = (&view, &ep) {
        // The fixed part is at the same offsets in both.
        assert_eq!(view.hardware_type(), ep.hw_addr_type().0);
        assert_eq!(u16::from(view.protocol_type()), ep.proto_addr_type().0);
        assert_eq!(view.hardware_len(), ep.hw_addr_size());
        assert_eq!(view.protocol_len(), ep.proto_addr_size());
        assert_eq!(u16::from(view.operation()), ep.operation().0);
    }
    // Deliberate: tapswitch's view needs the 28 bytes of Ethernet/IPv4 ARP whatever the
    // address lengths say, and its repr takes Ethernet/IPv4 ARP alone; etherparse takes any
    // hardware and protocol address lengths (8 bytes and twice their sum). They must agree on
    // Ethernet/IPv4 ARP, and etherparse must take whatever tapswitch's repr takes.
    let ep_eth_ipv4 = ep.as_ref().ok().filter(|ep| {
        ep.hw_addr_type() == ArpHardwareId::ETHERNET
            && ep.proto_addr_type() == etherparse::EtherType::IPV4
            && ep.hw_addr_size() == 6
            && ep.proto_addr_size() == 4
    });
    let ts_ok = matches!(repr, Some(Ok(_)));
    assert_eq!(ts_ok, ep_eth_ipv4.is_some(), "Ethernet/IPv4 ARP validity");
    if let (Some(Ok(r)), Some(ep)) = (repr, ep_eth_ipv4) {
        assert_eq!(u16::from(r.operation), ep.operation().0);
        assert_eq!(r.source_hardware_addr.0[..], *ep.sender_hw_addr());
        assert_eq!(
            r.source_protocol_addr.octets()[..],
            *ep.sender_protocol_addr()
        );
        assert_eq!(r.target_hardware_addr.0[..], *ep.target_hw_addr());
        assert_eq!(
            r.target_protocol_addr.octets()[..],
            *ep.target_protocol_addr()
        );
        let _ = ArpOperation::from(ep.operation().0);
    }
}

fn diff_ipv4(data: &[u8]) {
    let ts = Ipv4Packet::new_checked(data)
        .ok()
        .and_then(|p| Ipv4Repr::parse(&p).ok().map(|r| (p, r)));
    let ep_header = Ipv4HeaderSlice::from_slice(data);
    let ep = Ipv4Slice::from_slice(data);
    // Deliberate: etherparse also slices an IP authentication header (protocol 51) after the
    // IPv4 header and fails when it is not there; tapswitch does not look into it (51 is an
    // unknown protocol, carried as payload). For protocol 51 the IPv4 layer alone is
    // compared: etherparse's verdict is that of the header and total length.
    let auth = ep_header.as_ref().is_ok_and(|h| h.protocol().0 == 51);
    let ep_ok = match &ep {
        Ok(_) => true,
        Err(etherparse::err::ipv4::SliceError::Exts(_)) => auth,
        Err(etherparse::err::ipv4::SliceError::Len(e)) => {
            auth && e.layer != etherparse::err::Layer::Ipv4Packet
                && e.layer != etherparse::err::Layer::Ipv4Header
        }
        Err(_) => false,
    };
    assert_eq!(ts.is_some(), ep_ok, "IPv4 validity of {data:02x?}");
    let (Some((p, r)), Ok(h)) = (ts, ep_header) else {
        return;
    };
    assert_eq!(p.version(), h.version());
    assert_eq!(p.header_len(), h.ihl() * 4);
    assert_eq!(r.dscp, h.dcp().value());
    assert_eq!(r.ecn, h.ecn().value());
    assert_eq!(p.total_len(), h.total_len());
    assert_eq!(r.ident, h.identification());
    assert_eq!(r.dont_frag, h.dont_fragment());
    assert_eq!(r.more_frags, h.more_fragments());
    assert_eq!(r.frag_offset, h.fragments_offset().value() * 8);
    assert_eq!(p.is_fragment(), h.is_fragmenting_payload());
    assert_eq!(r.ttl, h.ttl());
    assert_eq!(u8::from(r.protocol), h.protocol().0);
    assert_eq!(p.checksum(), h.header_checksum());
    assert_eq!(r.src_addr, h.source_addr());
    assert_eq!(r.dst_addr, h.destination_addr());
    assert_eq!(r.options.as_bytes(), h.options());
    assert_eq!(r.payload_len, p.payload().len());
    // The header checksum: tapswitch sums the header as it is; etherparse computes the field
    // from the parsed header. Deliberate: etherparse's parsed header has no place for the
    // reserved flag bit (0x8000 of the flags and fragment offset), so with that bit set its
    // computed field leaves it out; the header's own sum (etherparse's routine over the
    // header bytes) is the reference then.
    let header = &data[..usize::from(p.header_len())];
    let ep_verifies = if header[6] & 0x80 != 0 {
        ep_checksum(header) == 0
    } else {
        same_checksum(h.to_header().calc_header_checksum(), h.header_checksum())
    };
    assert_eq!(
        p.verify_checksum(),
        ep_verifies,
        "IPv4 header checksum of {data:02x?}"
    );
    diff_sum(&data[..usize::from(p.header_len())]);
    if let Ok(ep) = &ep {
        if !auth {
            assert_eq!(p.payload(), ep.payload().payload, "IPv4 payload");
        }
    }
    // Transports of unfragmented packets and first fragments.
    if r.frag_offset == 0 {
        let pseudo = PseudoHeader::V4 {
            src: r.src_addr,
            dst: r.dst_addr,
        };
        match r.protocol {
            IpProtocol::Udp => diff_udp(p.payload(), &pseudo),
            IpProtocol::Tcp => diff_tcp(p.payload(), &pseudo),
            IpProtocol::Icmp => diff_icmpv4(p.payload()),
            IpProtocol::IpIp => diff_ipv4(p.payload()),
            _ => {}
        }
    }
}

fn diff_ipv6(data: &[u8]) {
    let ts = Ipv6Packet::new_checked(data)
        .ok()
        .and_then(|p| Ipv6Repr::parse(&p).ok().map(|r| (p, r)));
    let ep_header = Ipv6HeaderSlice::from_slice(data);
    // Deliberate: etherparse walks the IPv6 extension headers (hop-by-hop, routing,
    // fragment, AH, ESP, destination options, mobility, HIP, shim6, experimental) and fails
    // on broken ones; tapswitch does not walk them (they are the payload of an `Unknown`
    // next header). With an extension header next, etherparse's verdict is that of the fixed
    // header and the payload length, checked here as `Ipv6Slice` checks it.
    let ext = ep_header
        .as_ref()
        .is_ok_and(|h| h.next_header().is_ipv6_ext_header_value());
    let ep_ok = if ext {
        ep_header.as_ref().is_ok_and(|h| {
            h.payload_length() == 0 || data.len() >= 40 + usize::from(h.payload_length())
        })
    } else {
        Ipv6Slice::from_slice(data).is_ok()
    };
    assert_eq!(ts.is_some(), ep_ok, "IPv6 validity of {data:02x?}");
    let (Some((p, r)), Ok(h)) = (ts, ep_header) else {
        return;
    };
    assert_eq!(p.version(), h.version());
    assert_eq!(r.traffic_class, h.traffic_class());
    assert_eq!(r.flow_label, h.flow_label().value());
    assert_eq!(p.payload_len(), h.payload_length());
    assert_eq!(u8::from(r.next_header), h.next_header().0);
    assert_eq!(r.hop_limit, h.hop_limit());
    assert_eq!(r.src_addr, h.source_addr());
    assert_eq!(r.dst_addr, h.destination_addr());
    // Deliberate: a payload length of 0 is a jumbogram to etherparse (the rest of the slice
    // is the payload); tapswitch does not carry jumbograms and reads an empty payload.
    if !ext && r.payload_len != 0 {
        let ep = Ipv6Slice::from_slice(data).expect("checked above");
        assert_eq!(p.payload(), ep.payload().payload, "IPv6 payload");
    }
    let pseudo = PseudoHeader::V6 {
        src: r.src_addr,
        dst: r.dst_addr,
    };
    match r.next_header {
        IpProtocol::Udp => diff_udp(p.payload(), &pseudo),
        IpProtocol::Tcp => diff_tcp(p.payload(), &pseudo),
        IpProtocol::Icmpv6 => diff_icmpv6(p.payload(), &r.src_addr, &r.dst_addr),
        _ => {}
    }
}

fn diff_udp(data: &[u8], pseudo: &PseudoHeader) {
    let ts = UdpPacket::new_checked(data)
        .ok()
        .and_then(|p| UdpRepr::parse(&p).ok().map(|r| (p, r)));
    let ep = UdpSlice::from_slice(data);
    let length_zero = data.len() >= 8 && data[4..6] == [0, 0];
    if length_zero {
        // Deliberate: a length field of 0 (an IPv6 jumbogram) makes etherparse take the
        // whole slice; tapswitch refuses it as malformed.
        assert!(ts.is_none(), "UDP length 0 refused");
        assert!(ep.is_ok());
        return;
    }
    assert_eq!(ts.is_some(), ep.is_ok(), "UDP validity of {data:02x?}");
    let (Some((p, r)), Ok(ep)) = (ts, ep) else {
        return;
    };
    assert_eq!(r.src_port, ep.source_port());
    assert_eq!(r.dst_port, ep.destination_port());
    assert_eq!(p.len(), ep.length());
    assert_eq!(p.checksum(), ep.checksum());
    assert_eq!(p.payload(), ep.payload());
    assert_eq!(r.payload_len, ep.payload().len());
    // Deliberate: a zero checksum is "none" over IPv4 (tapswitch accepts it) and invalid over
    // IPv6 (tapswitch refuses it); etherparse only computes checksums, so zero is left out.
    if p.checksum() != 0 {
        let header = ep.to_header();
        let computed = match pseudo {
            PseudoHeader::V4 { src, dst } => {
                header.calc_checksum_ipv4_raw(src.octets(), dst.octets(), ep.payload())
            }
            PseudoHeader::V6 { src, dst } => {
                header.calc_checksum_ipv6_raw(src.octets(), dst.octets(), ep.payload())
            }
        }
        .expect("a UDP length fits");
        assert_eq!(
            p.verify_checksum(pseudo),
            same_checksum(computed, p.checksum()),
            "UDP checksum of {data:02x?}"
        );
    }
}

fn diff_tcp(data: &[u8], pseudo: &PseudoHeader) {
    let ts = TcpPacket::new_checked(data)
        .ok()
        .and_then(|p| TcpRepr::parse(&p).ok().map(|r| (p, r)));
    let ep = TcpSlice::from_slice(data);
    assert_eq!(ts.is_some(), ep.is_ok(), "TCP validity of {data:02x?}");
    let (Some((p, r)), Ok(ep)) = (ts, ep) else {
        return;
    };
    assert_eq!(r.src_port, ep.source_port());
    assert_eq!(r.dst_port, ep.destination_port());
    assert_eq!(r.seq_number, ep.sequence_number());
    assert_eq!(r.ack_number, ep.acknowledgment_number());
    assert_eq!(usize::from(p.header_len()), ep.header_len());
    let flags = [
        ep.fin(),
        ep.syn(),
        ep.rst(),
        ep.psh(),
        ep.ack(),
        ep.urg(),
        ep.ece(),
        ep.cwr(),
        ep.ns(),
    ]
    .iter()
    .enumerate()
    .fold(0u16, |bits, (i, &set)| bits | (u16::from(set) << i));
    assert_eq!(r.flags.bits(), flags, "TCP flags");
    assert_eq!(r.window_len, ep.window_size());
    assert_eq!(p.checksum(), ep.checksum());
    assert_eq!(r.urgent_pointer, ep.urgent_pointer());
    assert_eq!(r.options.as_bytes(), ep.options());
    assert_eq!(p.payload(), ep.payload());
    assert_eq!(r.payload_len, ep.payload().len());
    let computed = match pseudo {
        PseudoHeader::V4 { src, dst } => ep.calc_checksum_ipv4(src.octets(), dst.octets()),
        PseudoHeader::V6 { src, dst } => ep.calc_checksum_ipv6(src.octets(), dst.octets()),
    };
    // etherparse refuses to compute over IPv4 past 65535 bytes, which no IPv4 payload is.
    if let Ok(computed) = computed {
        assert_eq!(
            p.verify_checksum(pseudo),
            same_checksum(computed, p.checksum()),
            "TCP checksum of {data:02x?}"
        );
    }
}

fn diff_icmpv4(data: &[u8]) {
    let ts = Icmpv4Packet::new_checked(data);
    let ep = Icmpv4Slice::from_slice(data);
    // Deliberate: etherparse takes a timestamp request or reply (type 13 or 14, code 0) only
    // when it is exactly 20 bytes; tapswitch carries them as other messages of any length.
    let timestamp = data.len() >= 8 && matches!(data[0], 13 | 14) && data[1] == 0;
    if timestamp && data.len() != 20 {
        assert!(ts.is_ok());
        assert!(ep.is_err());
        return;
    }
    assert_eq!(ts.is_ok(), ep.is_ok(), "ICMPv4 validity");
    let (Ok(ts), Ok(ep)) = (ts, ep) else { return };
    assert_eq!(u8::from(ts.msg_type()), ep.type_u8());
    assert_eq!(ts.msg_code(), ep.code_u8());
    assert_eq!(ts.checksum(), ep.checksum());
    assert_eq!(ts.rest_of_header().to_be_bytes(), ep.bytes5to8());
    // Deliberate: etherparse's payload of a timestamp message is empty (the timestamps are
    // its header); tapswitch's data is what follows the 8-byte header.
    if !timestamp {
        assert_eq!(ts.data(), ep.payload());
    }
    if let etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) =
        ep.icmp_type()
    {
        assert_eq!(ts.echo_ident(), e.id);
        assert_eq!(ts.echo_seq_no(), e.seq);
    }
    assert_eq!(
        ts.verify_checksum(),
        ep_checksum(data) == 0,
        "ICMPv4 checksum"
    );
    diff_sum(data);
}

fn diff_icmpv6(data: &[u8], src: &Ipv6Addr, dst: &Ipv6Addr) {
    let ts = Icmpv6Packet::new_checked(data);
    let ep = Icmpv6Slice::from_slice(data);
    // Deliberate: tapswitch refuses a neighbour solicitation or advertisement shorter than
    // its 24 fixed bytes (the target address); etherparse takes any ICMPv6 message of 8
    // bytes or more.
    let nd = data.len() >= 8 && matches!(data[0], 135 | 136);
    if nd && data.len() < 24 {
        assert!(ts.is_err());
        assert!(ep.is_ok());
        return;
    }
    assert_eq!(ts.is_ok(), ep.is_ok(), "ICMPv6 validity");
    let (Ok(ts), Ok(ep)) = (ts, ep) else { return };
    assert_eq!(u8::from(ts.msg_type()), ep.type_u8());
    assert_eq!(ts.msg_code(), ep.code_u8());
    assert_eq!(ts.checksum(), ep.checksum());
    assert_eq!(ts.rest_of_header().to_be_bytes(), ep.bytes5to8());
    assert_eq!(ts.data(), ep.payload());
    if matches!(
        ts.msg_type(),
        Icmpv6Message::EchoRequest | Icmpv6Message::EchoReply
    ) {
        let b = ep.bytes5to8();
        assert_eq!(ts.echo_ident(), u16::from_be_bytes([b[0], b[1]]));
        assert_eq!(ts.echo_seq_no(), u16::from_be_bytes([b[2], b[3]]));
    }
    assert_eq!(
        ts.verify_checksum(src, dst),
        ep.is_checksum_valid(src.octets(), dst.octets()),
        "ICMPv6 checksum"
    );
}

fn pseudo_v4() -> PseudoHeader {
    PseudoHeader::V4 {
        src: Ipv4Addr::new(10, 42, 0, 2),
        dst: Ipv4Addr::new(10, 42, 1, 2),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    if select & 0x80 != 0 {
        let mut u = Unstructured::new(rest);
        if let Ok(spec) = FrameSpec::arbitrary(&mut u) {
            diff_ethernet(&build(&spec).frame);
        }
        return;
    }
    let src6: Ipv6Addr = "fd42::2".parse().expect("ipv6");
    let dst6: Ipv6Addr = "fd42:1::2".parse().expect("ipv6");
    match select & 7 {
        0 => diff_ethernet(rest),
        1 => diff_ipv4(rest),
        2 => diff_ipv6(rest),
        3 => diff_arp(rest),
        4 => diff_udp(rest, &pseudo_v4()),
        5 => diff_tcp(rest, &pseudo_v4()),
        6 => diff_icmpv4(rest),
        _ => diff_icmpv6(rest, &src6, &dst6),
    }
});
