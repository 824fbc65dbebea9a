//! IPv4 packets, and ICMPv4, UDP and TCP over their payload (whatever the protocol field
//! says, so that every parser sees every payload).
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::wire::{Ipv4Packet, Ipv4Repr, PseudoHeader};
use tapswitch_fuzz::{check_icmpv4, check_tcp, check_udp};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Ipv4Packet::new_checked(data) else {
        return;
    };
    black_box((
        packet.version(),
        packet.header_len(),
        packet.dscp(),
        packet.ecn(),
        packet.total_len(),
        packet.ident(),
        packet.dont_frag(),
        packet.more_frags(),
        packet.frag_offset(),
        packet.is_fragment(),
        packet.ttl(),
        packet.protocol(),
        packet.checksum(),
        packet.src_addr(),
        packet.dst_addr(),
        packet.options(),
        packet.payload(),
    ));

    // Decrementing the TTL keeps a valid checksum valid.
    if packet.verify_checksum() {
        let mut copy = data.to_vec();
        let mut writable = Ipv4Packet::new_checked(&mut copy[..]).expect("same bytes");
        writable.decrement_ttl();
        assert!(writable.verify_checksum());
    }

    if let Ok(repr) = Ipv4Repr::parse(&packet) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let again = Ipv4Packet::new_checked(&buf[..]).expect("emitted IPv4 is viewable");
        assert!(again.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&again).expect("emitted IPv4 parses"), repr);
    }

    let pseudo = PseudoHeader::V4 {
        src: packet.src_addr(),
        dst: packet.dst_addr(),
    };
    let payload = packet.payload();
    check_icmpv4(payload);
    check_udp(payload, &pseudo);
    check_tcp(payload, &pseudo);
});
