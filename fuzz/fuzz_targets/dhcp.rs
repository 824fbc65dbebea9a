//! The gateway's DHCP server fed arbitrary client messages: the switch + router of
//! `tapswitch_fuzz::router` with DHCP on VLAN 10 (DNS servers, a domain, a lease time), port
//! 0 (`a`, VLAN 10) given 10.42.0.2, port 2 (`t`, native VLAN 10) given an address off the
//! interface's subnets and then 10.42.10.7, the other ports none. State carries over between
//! inputs.
//!
//! Input: byte 0 picks the ingress port (one past the last is refused as unknown); byte 1:
//! bit 0 sends to the router's MAC instead of broadcast, bit 1 from 10.42.0.2 instead of
//! 0.0.0.0, bit 2 takes the rest as the whole frame (no wrapping), bit 3 leaves the UDP
//! checksum 0. Otherwise the rest is a DHCP message (BOOTP with options), wrapped in a
//! correct Ethernet / IPv4 / UDP (68 -> 67) frame so that it reaches the DHCP parser.
//!
//! Checks, besides the router's (`router::check`): every reply goes back to the port that
//! asked and to no other, from the interface's MAC to the asker's; its IPv4 and UDP headers
//! and checksums are right (67 -> 68); it reads back as a DHCP OFFER, ACK or NAK with the
//! interface's address as server identifier, and offers or acks only the asking port's own
//! address (or none, for an INFORM or a NAK); a port without an address on VLAN 10's subnets
//! never gets a reply. Nothing may panic.
#![no_main]

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr};
use tapswitch_dataplane::pipeline::{DhcpServer, ForwardingState, Generated, RoutingState};
use tapswitch_dataplane::tables::PortId;
use tapswitch_dataplane::wire::{
    EtherType, EthernetAddress, HeaderOptions, IpProtocol, Ipv4Packet, Ipv4Repr, PseudoHeader,
    UdpPacket, UdpRepr,
};
use tapswitch_fuzz::router::{check, check_generated, router_mac_of_port, Sim, PORTS, R10};

const GW: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
const GW_10: Ipv4Addr = Ipv4Addr::new(10, 42, 10, 1);

fn sim() -> Sim {
    let mut sim = Sim::new();
    let routing = tapswitch_fuzz::router::routing();
    let mut interfaces = routing.interfaces.clone();
    interfaces[0].dhcp = Some(DhcpServer {
        dns: vec![Ipv4Addr::new(10, 42, 0, 53), Ipv4Addr::new(10, 42, 0, 54)],
        domain: Some("fuzz.test".into()),
        lease_secs: 3600,
    });
    let routes = routing
        .routes
        .iter()
        .filter(|r| !r.connected)
        .cloned()
        .collect();
    sim.state.routing =
        Arc::new(RoutingState::build(interfaces, routes, routing.neigh_max).expect("valid routes"));
    sim.state.addresses = vec![
        vec![Ipv4Addr::new(10, 42, 0, 2)],
        vec![],
        vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 42, 10, 7)],
    ];
    sim.pipeline.adopt(&sim.state);
    sim
}

thread_local! {
    static SIM: RefCell<Sim> = RefCell::new(sim());
}

fn wrap(message: &[u8], src: Ipv4Addr, dst_mac: EthernetAddress, checksum: bool) -> Vec<u8> {
    let dst = if dst_mac == EthernetAddress::BROADCAST {
        Ipv4Addr::BROADCAST
    } else {
        GW
    };
    let udp = UdpRepr {
        src_port: 68,
        dst_port: 67,
        payload_len: message.len(),
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: IpProtocol::Udp,
        payload_len: udp.buffer_len(),
        ttl: 64,
        dscp: 0,
        ecn: 0,
        ident: 1,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
        options: HeaderOptions::EMPTY,
    };
    let mut frame = vec![0u8; 14 + ip.buffer_len()];
    frame[..6].copy_from_slice(dst_mac.as_bytes());
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x42]);
    frame[12..14].copy_from_slice(&u16::from(EtherType::Ipv4).to_be_bytes());
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..34]));
    frame[42..].copy_from_slice(message);
    let mut packet = UdpPacket::new_unchecked(&mut frame[34..]);
    udp.emit(&mut packet, &PseudoHeader::V4 { src, dst });
    if !checksum {
        frame[40..42].copy_from_slice(&[0, 0]);
    }
    frame
}

/// The checks on one reply the server generated for `port`.
fn check_reply(state: &ForwardingState, port: PortId, asker: EthernetAddress, bytes: &[u8]) {
    assert_eq!(&bytes[6..12], R10.as_bytes(), "from the interface's MAC");
    assert_eq!(&bytes[..6], asker.as_bytes(), "to the asker's MAC");
    let ip = Ipv4Packet::new_checked(&bytes[14..]).expect("IPv4");
    assert!(ip.verify_checksum());
    assert!(ip.src_addr() == GW || ip.src_addr() == GW_10);
    let udp = UdpPacket::new_checked(ip.payload()).expect("UDP");
    assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
    assert!(udp.verify_checksum(&PseudoHeader::V4 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
    }));
    let packet = DhcpPacket::new_checked(udp.payload()).expect("DHCP");
    let repr = DhcpRepr::parse(&packet).expect("a DHCP message smoltcp reads back");
    assert!(matches!(
        repr.message_type,
        DhcpMessageType::Offer | DhcpMessageType::Ack | DhcpMessageType::Nak
    ));
    assert_eq!(repr.server_identifier, Some(ip.src_addr()));
    let own = &state.addresses[port.index()];
    assert!(
        repr.your_ip.is_unspecified() || own.contains(&repr.your_ip),
        "{} handed to port {port:?}, which has {own:?}",
        repr.your_ip
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let port = PortId(u16::from(data[0]) % (PORTS + 1));
    let flags = data[1];
    let rest = &data[2..];
    let mut frame = if flags & 4 != 0 {
        rest.to_vec()
    } else {
        let dst_mac = if flags & 1 != 0 {
            router_mac_of_port(port.0)
        } else {
            EthernetAddress::BROADCAST
        };
        let src = if flags & 2 != 0 {
            Ipv4Addr::new(10, 42, 0, 2)
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        wrap(rest, src, dst_mac, flags & 8 == 0)
    };
    let asker = match frame.get(6..12) {
        Some(m) => EthernetAddress::from_bytes(m),
        None => EthernetAddress::ZERO,
    };
    SIM.with(|sim| {
        let sim = &mut *sim.borrow_mut();
        let now = sim.advance(1);
        let Sim {
            state, pipeline, ..
        } = sim;
        let decision = pipeline.decide(state, port, &mut frame, now);
        // What the router generated, checked as `check` would, and the server's replies more
        // closely.
        let mut replies = 0;
        while let Some(g) = pipeline.take_generated() {
            check_generated(state, pipeline, &g, now);
            if let Generated::Reply { bytes, .. } = &g {
                check_reply(state, port, asker, bytes);
                let egress = pipeline.generated_egress(state, &g, now).expect("a frame");
                let to: Vec<_> = egress.ports().map(|m| m.port).collect();
                assert_eq!(to, vec![port], "a reply goes to the asker's port only");
                replies += 1;
            }
            pipeline.recycle(g);
        }
        if replies > 0 {
            assert!(
                state
                    .addresses
                    .get(port.index())
                    .is_some_and(|a| !a.is_empty()),
                "a port without addresses got a reply"
            );
        }
        check(state, pipeline, decision, Some(port), &frame, now);
    });
});
