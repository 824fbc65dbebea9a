//! The IPIP receive path fed arbitrary packets, as the host's IPIP socket hands them over
//! (the whole outer IPv4 packet), against the switch and router of `tapswitch_fuzz::router`
//! (two IPIP peers, interfaces on three VLANs, routes of every kind). State carries over from
//! one input to the next and the fake clock moves forward with the router's timer work in
//! between.
//!
//! Input: byte 0 picks the outer source and fix-ups: bits 0-1 the source (0 and 1: one of the
//! two allowed peers; 2: 192.168.205.x from the top bits, which is a peer only by chance;
//! 3: the source address written in the packet), bit 2 makes the outer header plausible
//! (version 4, 20-byte header, protocol 4, the buffer's length, checksum), bit 3 the inner
//! IPv4 header (see `fix_ipv4`, ICMP checksum included); byte 1 advances the clock
//! (`Sim::advance`). The rest is the packet; when bits 4-7 of byte 0 are all set and the
//! source is not picked from 192.168.205.x (bits 0-1 not 2), the rest is an `arbitrary`
//! description of the packet (`tapswitch_fuzz::frame::PacketSpec`: an IPv4 or IPv6 packet,
//! IPIP with a whole inner packet among its choices, lengths and checksums right, then a few
//! byte edits), and the fix-ups of bits 2-3 are not applied.
//!
//! A packet from a source that is not a peer must be dropped as such; anything else must be a
//! drop with a reason, a forward, a tunnel or taken by the router, all checked (see
//! `tapswitch_fuzz::router::check`), and nothing may panic.
#![no_main]

use std::cell::RefCell;
use std::net::Ipv4Addr;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::pipeline::{Decision, DropReason};
use tapswitch_dataplane::wire::{IpProtocol, Ipv4Packet};
use tapswitch_fuzz::frame::{build_packet, PacketSpec};
use tapswitch_fuzz::router::{check, fix_ipv4, Sim, PEERS};

thread_local! {
    static SIM: RefCell<Sim> = RefCell::new(Sim::new());
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let select = data[0];
    let structured = select & 0xf0 == 0xf0 && select & 3 != 2;
    let mut packet = if structured {
        let Ok(spec) = PacketSpec::arbitrary(&mut Unstructured::new(&data[2..])) else {
            return;
        };
        build_packet(&spec).frame
    } else {
        data[2..].to_vec()
    };
    if !structured && select & 0x04 != 0 && packet.len() >= 20 {
        packet[0] = 0x45;
        packet[9] = u8::from(IpProtocol::IpIp);
        let total = packet.len().min(usize::from(u16::MAX)) as u16;
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut packet[..20]).fill_checksum();
    }
    if !structured && select & 0x08 != 0 && packet.len() > 20 {
        let ihl = (usize::from(packet[0] & 0x0f) * 4).clamp(20, packet.len());
        fix_ipv4(&mut packet[ihl..]);
    }
    let src = match select & 3 {
        0 | 1 => PEERS[usize::from(select & 1)],
        2 => Ipv4Addr::new(192, 168, 205, select >> 2),
        _ => match packet.get(12..16) {
            Some(a) => Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            None => Ipv4Addr::UNSPECIFIED,
        },
    };
    SIM.with(|sim| {
        let sim = &mut *sim.borrow_mut();
        let now = sim.advance(data[1]);
        let Sim {
            state, pipeline, ..
        } = sim;
        let (start, decision) = pipeline.ipip_in(state, src, &mut packet, now);
        if !PEERS.contains(&src) {
            assert_eq!(decision, Decision::Drop(DropReason::IpipSourceNotAllowed));
        }
        assert!(
            !matches!(decision, Decision::Reply(..)),
            "no ARP/ND suppression for a routed packet"
        );
        let frame = packet
            .get(start..)
            .expect("the frame starts within the packet");
        check(state, pipeline, decision, None, frame, now);
    });
});
