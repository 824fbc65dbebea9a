//! The router fed arbitrary frames on the ports of a switch with router interfaces on three
//! VLANs, routes of every kind (gateway, connected, IPIP, unreachable, default) and a small
//! neighbour table (see `tapswitch_fuzz::router`). State (learned MACs, neighbours, queued
//! packets) carries over from one input to the next, and the fake clock moves forward with
//! the router's timer work in between, so resolutions time out, entries go stale and
//! neighbours are evicted.
//!
//! Input: byte 0 picks the ingress port (one id past the last port is refused as unknown);
//! byte 1 advances the clock (`Sim::advance`: a step with the top bit set also runs
//! `Pipeline::tick`); byte 2 holds fix-ups that get arbitrary bytes past the early checks:
//! bit 0 sets the destination MAC to the router's MAC for the port (bit 5 to broadcast
//! instead, for ARP requests and solicitations), bits 1-2 set the EtherType (IPv4, IPv6, ARP),
//! bit 3 fixes the IP lengths and checksums (IPv4 header and ICMP, or IPv6 payload length and
//! ICMPv6), bit 4 does the IPv6 part too and sets the hop limit to 255 (neighbour discovery);
//! bit 6 takes the first 10 bytes of the rest as a virtio-net header, as a port with offloads
//! would read one, and hands the frame to `Pipeline::process_offloaded` (super-frames and
//! partial checksums switched and routed whole, or cut by the router). The rest is the frame;
//! with bit 7 set, the rest (after the virtio-net header) is an `arbitrary` frame description
//! built by `tapswitch_fuzz::frame` (lengths and checksums right, then a few byte edits), and
//! the other fix-ups are not applied.
//!
//! Every decision and every generated frame is checked (see `tapswitch_fuzz::router::check`);
//! nothing may panic.
#![no_main]

use std::cell::RefCell;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::pipeline::offload::{Offload, VNET_HDR_LEN};
use tapswitch_dataplane::tables::PortId;
use tapswitch_dataplane::wire::EthernetAddress;
use tapswitch_fuzz::frame::{build, FrameSpec};
use tapswitch_fuzz::router::{check, fix_ipv4, fix_ipv6, router_mac_of_port, Sim, PORTS};

thread_local! {
    static SIM: RefCell<Sim> = RefCell::new(Sim::new());
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let port = u16::from(data[0]) % (PORTS + 1);
    let flags = data[2];
    let mut rest = &data[3..];
    let mut offload = None;
    if flags & 0x40 != 0 && rest.len() >= VNET_HDR_LEN {
        let mut h = [0u8; VNET_HDR_LEN];
        h.copy_from_slice(&rest[..VNET_HDR_LEN]);
        offload = Some(Offload::from_vnet_hdr(&h));
        rest = &rest[VNET_HDR_LEN..];
    }
    let structured = flags & 0x80 != 0;
    let mut frame = if structured {
        let Ok(spec) = FrameSpec::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        build(&spec).frame
    } else {
        rest.to_vec()
    };
    if !structured && frame.len() >= 14 {
        if flags & 0x20 != 0 {
            frame[..6].copy_from_slice(EthernetAddress::BROADCAST.as_bytes());
        } else if flags & 1 != 0 {
            frame[..6].copy_from_slice(router_mac_of_port(port).as_bytes());
        }
        let ethertype: Option<u16> = match (flags >> 1) & 3 {
            1 => Some(0x0800),
            2 => Some(0x86dd),
            3 => Some(0x0806),
            _ => None,
        };
        if let Some(t) = ethertype {
            frame[12..14].copy_from_slice(&t.to_be_bytes());
        }
        if flags & 0x18 != 0 {
            match u16::from_be_bytes([frame[12], frame[13]]) {
                0x0800 if flags & 0x08 != 0 => fix_ipv4(&mut frame[14..]),
                0x86dd => fix_ipv6(&mut frame[14..], flags & 0x10 != 0),
                _ => {}
            }
        }
    }
    SIM.with(|sim| {
        let sim = &mut *sim.borrow_mut();
        let now = sim.advance(data[1]);
        let Sim {
            state, pipeline, ..
        } = sim;
        if let Some(o) = offload.filter(|o| o.is_pending() && !o.gso_unsupported) {
            if let Some(d) = pipeline.decide_offloaded(state, PortId(port), &mut frame, &o, now) {
                check(state, pipeline, d, Some(PortId(port)), &frame, now);
                return;
            }
        }
        let decision = pipeline.decide(state, PortId(port), &mut frame, now);
        check(state, pipeline, decision, Some(PortId(port)), &frame, now);
    });
});
