//! Checks shared by the fuzz targets: for each header, view untrusted bytes with
//! `new_checked`, call every accessor, and if `Repr::parse` succeeds, emit the `Repr` into a
//! fresh buffer of `buffer_len` bytes and assert that parsing it again gives the same `Repr`.
//! Any panic in a parser or accessor is a bug in the parser.
//!
//! The modules hold what several targets share: [`frame`] (structure-aware frames built from
//! `arbitrary` descriptions), [`router`] and [`nat`] (the switches of the router targets and
//! their checks), [`scenario`] (switches built from the input, run through those checks).

use std::hint::black_box;
use std::net::Ipv6Addr;

use tapswitch_dataplane::wire::vlan::TAG_LEN;
use tapswitch_dataplane::wire::{
    EtherType, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, PseudoHeader, TcpPacket,
    TcpRepr, UdpPacket, UdpRepr, VlanTag, VlanTagRepr,
};

/// An 802.1Q tag at the start of `data`; returns its inner EtherType and what follows it.
pub fn check_vlan(data: &[u8]) -> Option<(EtherType, &[u8])> {
    let tag = VlanTag::new_checked(data).ok()?;
    black_box((
        tag.pcp(),
        tag.dei(),
        tag.vid(),
        tag.ethertype(),
        tag.payload(),
    ));
    let repr = VlanTagRepr::parse(&tag).expect("parse after new_checked");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut VlanTag::new_unchecked(&mut buf[..]));
    let again = VlanTag::new_checked(&buf[..]).expect("emitted tag is viewable");
    assert_eq!(
        VlanTagRepr::parse(&again).expect("emitted tag parses"),
        repr
    );
    Some((
        tag.ethertype(),
        data.get(TAG_LEN..).expect("checked length"),
    ))
}

pub fn check_icmpv4(data: &[u8]) {
    let Ok(packet) = Icmpv4Packet::new_checked(data) else {
        return;
    };
    black_box((
        packet.msg_type(),
        packet.msg_code(),
        packet.checksum(),
        packet.rest_of_header(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.next_hop_mtu(),
        packet.data(),
        packet.verify_checksum(),
    ));
    let Ok(repr) = Icmpv4Repr::parse(&packet) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
    let again = Icmpv4Packet::new_checked(&buf[..]).expect("emitted ICMPv4 is viewable");
    assert!(again.verify_checksum());
    assert_eq!(
        Icmpv4Repr::parse(&again).expect("emitted ICMPv4 parses"),
        repr
    );
}

pub fn check_icmpv6(data: &[u8], src: &Ipv6Addr, dst: &Ipv6Addr) {
    let Ok(packet) = Icmpv6Packet::new_checked(data) else {
        return;
    };
    black_box((
        packet.msg_type(),
        packet.msg_code(),
        packet.checksum(),
        packet.rest_of_header(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.router_flag(),
        packet.solicited_flag(),
        packet.override_flag(),
        packet.target_addr(),
        packet.data(),
        packet.verify_checksum(src, dst),
    ));
    for option in packet.nd_options() {
        if let Ok(option) = black_box(option) {
            black_box(option.link_layer_addr());
        }
    }
    let Ok(repr) = Icmpv6Repr::parse(&packet) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(src, dst, &mut Icmpv6Packet::new_unchecked(&mut buf[..]));
    let again = Icmpv6Packet::new_checked(&buf[..]).expect("emitted ICMPv6 is viewable");
    assert!(again.verify_checksum(src, dst));
    assert_eq!(
        Icmpv6Repr::parse(&again).expect("emitted ICMPv6 parses"),
        repr
    );
}

pub fn check_udp(data: &[u8], pseudo: &PseudoHeader) {
    let Ok(packet) = UdpPacket::new_checked(data) else {
        return;
    };
    black_box((
        packet.src_port(),
        packet.dst_port(),
        packet.len(),
        packet.checksum(),
        packet.payload(),
        packet.verify_checksum(pseudo),
    ));
    let Ok(repr) = UdpRepr::parse(&packet) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), pseudo);
    let again = UdpPacket::new_checked(&buf[..]).expect("emitted UDP is viewable");
    assert!(again.verify_checksum(pseudo));
    assert_eq!(UdpRepr::parse(&again).expect("emitted UDP parses"), repr);
}

pub fn check_tcp(data: &[u8], pseudo: &PseudoHeader) {
    let Ok(packet) = TcpPacket::new_checked(data) else {
        return;
    };
    black_box((
        packet.src_port(),
        packet.dst_port(),
        packet.seq_number(),
        packet.ack_number(),
        packet.header_len(),
        packet.flags(),
        packet.window_len(),
        packet.checksum(),
        packet.urgent_at(),
        packet.options(),
        packet.payload(),
        packet.verify_checksum(pseudo),
    ));
    let Ok(repr) = TcpRepr::parse(&packet) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), pseudo);
    let again = TcpPacket::new_checked(&buf[..]).expect("emitted TCP is viewable");
    assert!(again.verify_checksum(pseudo));
    assert_eq!(TcpRepr::parse(&again).expect("emitted TCP parses"), repr);
}

pub mod frame;
pub mod nat;
pub mod router;
pub mod scenario;
