//! The NAT stage (connection tracking, masquerade and source NAT, port forwards, Services with
//! and without backends, NodePorts, ICMP error translation, fragments) fed arbitrary frames
//! on the ports of the switch of `tapswitch_fuzz::nat`. State (learned MACs, neighbours,
//! tracked connections, scheduler state, fragment translations) carries over from one input
//! to the next, and the fake clock moves forward with the router's timer work (which sweeps
//! the connection table) in between, so connections expire, are evicted from the full table
//! (64 entries) and are reopened.
//!
//! Input: byte 0 is the control byte: bits 0-1 the mode, bits 2-4 the ingress port (modulo 5:
//! port 4 does not exist), bit 5 makes the transport checksum (TCP, UDP) valid, bit 6 adds an
//! 802.1Q tag (bit 7: VLAN 100, else 20); byte 1 advances the clock (`Sim::advance`: a step
//! with the top bit set also runs `Pipeline::tick`). Modes:
//!
//! - 0: the rest (from byte 2) is the Ethernet frame, as it is;
//! - 1: the rest after byte 2 is an IPv4 packet, made plausible (version, header length,
//!   total length, header and ICMP checksums: see `fix_ipv4`) and sent in an Ethernet frame
//!   to the router's MAC for the port;
//! - 2: the same, with the tuple of a tracked connection (byte 2: bits 0-5 which one, bits
//!   6-7 how): the initiator's next packet, a reply as it arrives, or an ICMP error quoting a
//!   packet of either direction as it left (as a router on the path or the peer sends it);
//! - 3: the same, with a source and destination from the rules (byte 2: bits 0-3 a frontend,
//!   a NodePort, a port forward or a plain destination, with its protocol; bits 5-7 a source;
//!   bit 4 makes a TCP segment a SYN).
//!
//! Every decision and generated frame is checked (`tapswitch_fuzz::router::check`), and so
//! are NAT's own guarantees (`tapswitch_fuzz::nat::check_nat`: checksums stay valid through
//! translation, nothing leaves through the uplink with an inside source untranslated unless a
//! tracked connection says so). Nothing may panic.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tapswitch_fuzz::nat::{check_nat, input, sim};
use tapswitch_fuzz::router::{check, Sim};

thread_local! {
    static SIM: RefCell<Sim> = RefCell::new(sim());
}

fuzz_target!(|data: &[u8]| {
    SIM.with(|sim| {
        let sim = &mut *sim.borrow_mut();
        let Some(input) = input(sim, data) else {
            return;
        };
        let now = sim.advance(data[1]);
        let Sim {
            state, pipeline, ..
        } = sim;
        let mut frame = input.frame.clone();
        let decision = pipeline.decide(state, input.port, &mut frame, now);
        check_nat(pipeline, decision, &input, &frame);
        check(state, pipeline, decision, Some(input.port), &frame, now);
    });
});
