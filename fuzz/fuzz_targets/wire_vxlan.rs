//! VXLAN headers (UDP payloads), the inner-flow hash over what follows them, and the source
//! port chosen from it.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::wire::vxlan::{
    self, inner_flow_hash, source_port, SOURCE_PORT_MAX, SOURCE_PORT_MIN,
};
use tapswitch_dataplane::wire::{Vni, VxlanHeader, VxlanRepr, WireError};

fuzz_target!(|data: &[u8]| {
    // The hash takes any bytes as an inner frame; it is a pure function of them.
    let whole = inner_flow_hash(data);
    assert_eq!(whole, inner_flow_hash(data));
    let port = source_port(whole, SOURCE_PORT_MIN, SOURCE_PORT_MAX);
    assert!((SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&port));

    // A range from the first four bytes, reversed ones included (they fall back to the
    // default range).
    if let Some(b) = data.get(..4) {
        let (min, max) = (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        );
        let port = source_port(whole, min, max);
        if min <= max {
            assert!((min..=max).contains(&port));
        } else {
            assert!((SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&port));
        }
    }

    let header = match VxlanHeader::new_checked(data) {
        Ok(header) => header,
        Err(err) => {
            assert_eq!(err, WireError::Truncated);
            assert!(data.len() < vxlan::HEADER_LEN);
            return;
        }
    };
    let payload = header.payload();
    black_box((
        header.flags(),
        header.i_flag(),
        header.vni(),
        header.reserved_bits_clear(),
        payload,
    ));
    assert!(header.vni() <= Vni::MAX);
    assert_eq!(payload.len(), data.len() - vxlan::HEADER_LEN);

    let hash = inner_flow_hash(payload);
    let port = source_port(hash, SOURCE_PORT_MIN, SOURCE_PORT_MAX);
    assert!((SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&port));

    match VxlanRepr::parse(&header) {
        Ok(repr) => {
            assert!(header.i_flag());
            assert_eq!(repr.vni.get(), header.vni());
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut VxlanHeader::new_unchecked(&mut buf[..]));
            let again = VxlanHeader::new_checked(&buf[..]).expect("emitted VXLAN is viewable");
            assert!(again.reserved_bits_clear());
            assert_eq!(
                VxlanRepr::parse(&again).expect("emitted VXLAN parses"),
                repr
            );
            // Emitting over the received header keeps the inner frame and clears only the
            // reserved bits.
            let mut copy = data.to_vec();
            repr.emit(&mut VxlanHeader::new_unchecked(&mut copy[..]));
            assert_eq!(&copy[vxlan::HEADER_LEN..], payload);
            assert_eq!(&copy[..vxlan::HEADER_LEN], &buf[..]);
        }
        Err(err) => {
            assert_eq!(err, WireError::Malformed);
            assert!(!header.i_flag());
        }
    }
});
