//! Ethernet II frames and the 802.1Q / 802.1ad tags after them.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::wire::{EtherType, EthernetFrame, EthernetRepr};
use tapswitch_fuzz::check_vlan;

fuzz_target!(|data: &[u8]| {
    // The tag view on its own, from the first byte.
    check_vlan(data);

    let Ok(frame) = EthernetFrame::new_checked(data) else {
        return;
    };
    let (dst, src) = (frame.dst_addr(), frame.src_addr());
    black_box((dst, src, frame.ethertype(), frame.payload()));
    black_box((
        dst.is_multicast(),
        dst.is_broadcast(),
        dst.is_link_local(),
        src.to_u64(),
    ));

    let repr = EthernetRepr::parse(&frame).expect("parse after new_checked");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    let again = EthernetFrame::new_checked(&buf[..]).expect("emitted frame is viewable");
    assert_eq!(
        EthernetRepr::parse(&again).expect("emitted frame parses"),
        repr
    );

    // Up to two stacked tags (QinQ then 802.1Q).
    let mut ethertype = frame.ethertype();
    let mut rest = frame.payload();
    for _ in 0..2 {
        if !matches!(ethertype, EtherType::Vlan | EtherType::QinQ) {
            break;
        }
        let Some((inner_type, inner)) = check_vlan(rest) else {
            break;
        };
        ethertype = inner_type;
        rest = inner;
    }
});
