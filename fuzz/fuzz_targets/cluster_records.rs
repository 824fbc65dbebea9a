//! The cluster agent's parsers of etcd records, fed arbitrary bytes: `<prefix>/config`
//! (`Network::parse`), a lease (`Lease::parse` of a subnet key name and a value) and a Service
//! record (`parse_service`). The first byte picks the parser. Each returns a value or a
//! reason, never panics; a lease that parses survives a round trip through the value flannel
//! writes (`Lease::to_json`), and a network's subnets are inside its range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapswitch_control::cluster::records::{parse_service, parse_subnet_key, Lease, Network};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => match Network::parse(bytes) {
            Ok(n) => {
                assert!(n.subnet_min <= n.subnet_max);
                for s in n.subnets().take(4) {
                    assert!(n.leases(&s), "{s} of {n:?}");
                    assert!(n.network.contains(s.addr));
                }
            }
            Err(e) => assert!(!e.0.is_empty()),
        },
        1 => {
            // The key name up to the first newline, the value after it.
            let split = bytes
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(bytes.len());
            let Ok(name) = std::str::from_utf8(&bytes[..split]) else {
                return;
            };
            let value = bytes.get(split + 1..).unwrap_or_default();
            let Some(subnet) = parse_subnet_key(name) else {
                return;
            };
            assert_eq!(parse_subnet_key(&subnet.key_name()), Some(subnet));
            match Lease::parse(subnet, value) {
                Ok(l) => {
                    let again =
                        Lease::parse(subnet, l.to_json().as_bytes()).expect("a lease round-trips");
                    assert_eq!(again, l);
                }
                Err(e) => assert!(!e.0.is_empty()),
            }
        }
        _ => match parse_service("svc", bytes) {
            Ok(s) => assert_eq!(s.name, "svc"),
            Err(e) => assert!(!e.0.is_empty()),
        },
    }
});
