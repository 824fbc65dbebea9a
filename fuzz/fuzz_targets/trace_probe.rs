//! `tapswitch trace`'s packet descriptions (`tcp 10.42.0.2:40000 > 10.96.0.10:80 syn`, ...):
//! any text is read without panicking, and what reads builds a frame that parses back with
//! the addresses it names. Descriptions come from the control socket, so from any client.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapswitch_control::trace::{summary, Probe};
use tapswitch_dataplane::wire::EthernetAddress;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(probe) = Probe::parse(text) else {
        return;
    };
    let a = EthernetAddress([2, 0, 0, 0, 0, 1]);
    let b = EthernetAddress([2, 0, 0, 0, 0, 2]);
    let frame = probe.build(a, b).expect("a parsed description builds");
    let (src, dst) = probe.addresses();
    let s = summary(&frame);
    assert!(
        s.contains(&src.to_string()) && s.contains(&dst.to_string()),
        "{text}: {s}"
    );
});
