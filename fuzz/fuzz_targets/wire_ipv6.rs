//! IPv6 packets, and ICMPv6, UDP and TCP over their payload (whatever the next header field
//! says, so that every parser sees every payload).
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::wire::{Ipv6Packet, Ipv6Repr, PseudoHeader};
use tapswitch_fuzz::{check_icmpv6, check_tcp, check_udp};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Ipv6Packet::new_checked(data) else {
        return;
    };
    black_box((
        packet.version(),
        packet.traffic_class(),
        packet.flow_label(),
        packet.payload_len(),
        packet.next_header(),
        packet.hop_limit(),
        packet.src_addr(),
        packet.dst_addr(),
        packet.payload(),
    ));

    if let Ok(repr) = Ipv6Repr::parse(&packet) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
        let again = Ipv6Packet::new_checked(&buf[..]).expect("emitted IPv6 is viewable");
        assert_eq!(Ipv6Repr::parse(&again).expect("emitted IPv6 parses"), repr);
    }

    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    let pseudo = PseudoHeader::V6 { src, dst };
    let payload = packet.payload();
    check_icmpv6(payload, &src, &dst);
    check_udp(payload, &pseudo);
    check_tcp(payload, &pseudo);
});
