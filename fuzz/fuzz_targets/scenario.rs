//! A switch built from the input, then a batch of steps run through the real pipeline (see
//! `tapswitch_fuzz::scenario`): ports with access and trunk modes, static FDB entries, VXLAN
//! ports with their peers, ARP/ND suppression entries, and no router, the router of
//! `tapswitch_fuzz::router` or that of `tapswitch_fuzz::nat` with its NAT rules; then
//! structure-aware frames (`tapswitch_fuzz::frame`), VXLAN packets from peers, raw frames,
//! ports changed and republished, the clock moved. Every decision is checked as in the
//! `routing` and `nat` targets, plus the scenario's own checks; nothing may panic.
//!
//! Input: the whole input is an `arbitrary` `Scenario` (setup, then steps).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tapswitch_fuzz::scenario::{run, Scenario};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(scenario) = Scenario::arbitrary(&mut u) {
        run(&scenario);
    }
});
