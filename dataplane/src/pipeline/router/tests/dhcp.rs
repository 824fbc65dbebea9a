//! DHCP from the gateway: client messages in, the server's replies out, read back with
//! smoltcp's DHCP parser.

use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr};

use super::*;
use crate::pipeline::routing::DhcpServer;
use crate::wire::{PseudoHeader, UdpPacket, UdpRepr};

const GW10: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 53);
/// Port 3: VLAN 10 like A, without addresses.
const D: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xd]);

/// The router of [`Sim`] with DHCP on VLAN 10; A (port 0) has 10.42.0.2 and an address
/// elsewhere, port 3 (D) none.
fn sim() -> Sim {
    let mut sim = Sim::new(1500);
    let mut state = sim.state.clone();
    let (mut interfaces, routes) = routing_parts(1500);
    interfaces[0].dhcp = Some(DhcpServer {
        dns: vec![DNS],
        domain: Some("pods.example".into()),
        lease_secs: 3600,
    });
    state.routing = Arc::new(RoutingState::build(interfaces, routes, 1024).unwrap());
    state.ports.push(port("d", 10));
    state.rebuild_vlan_members();
    state.addresses = vec![vec![Ipv4Addr::new(192, 0, 2, 9), A_IP], vec![B_IP]];
    sim.state = state;
    sim.pipeline.adopt(&sim.state);
    sim
}

fn smol(mac: EthernetAddress) -> smoltcp::wire::EthernetAddress {
    smoltcp::wire::EthernetAddress(mac.0)
}

/// A client message from `mac`: broadcast from 0.0.0.0 unless `ciaddr` is set (then unicast
/// to the gateway's MAC and address).
fn client(
    mac: EthernetAddress,
    kind: DhcpMessageType,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
    ciaddr: Ipv4Addr,
    broadcast: bool,
) -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: kind,
        transaction_id: 0x1234_5678,
        secs: 0,
        client_hardware_address: smol(mac),
        client_ip: ciaddr,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast,
        requested_ip: requested,
        client_identifier: Some(smol(mac)),
        server_identifier: server,
        parameter_request_list: Some(&[1, 3, 6, 15, 26, 28]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut dhcp = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut dhcp[..]))
        .unwrap();
    let (src, dst, l2) = if ciaddr.is_unspecified() {
        (ciaddr, Ipv4Addr::BROADCAST, EthernetAddress::BROADCAST)
    } else {
        (ciaddr, GW10, R10)
    };
    let udp = UdpRepr {
        src_port: 68,
        dst_port: 67,
        payload_len: dhcp.len(),
    };
    let mut datagram = vec![0u8; udp.buffer_len()];
    datagram[8..].copy_from_slice(&dhcp);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut datagram[..]),
        &PseudoHeader::V4 { src, dst },
    );
    ethernet_frame(
        l2,
        mac,
        None,
        EtherType::Ipv4,
        &ipv4(src, dst, 64, false, &datagram, IpProtocol::Udp),
    )
}

fn discover(mac: EthernetAddress) -> Vec<u8> {
    client(
        mac,
        DhcpMessageType::Discover,
        None,
        None,
        Ipv4Addr::UNSPECIFIED,
        false,
    )
}

/// The one frame `out` holds, on `port`, checked as an IPv4 UDP datagram from 67 to 68 with
/// good checksums: its IP destination and the DHCP message.
fn reply(out: &Out, port: u16) -> (EthernetAddress, Ipv4Addr, Vec<u8>) {
    assert_eq!(out.drop, None);
    assert_eq!(out.frames.len(), 1, "{out:?}");
    let (p, frame) = &out.frames[0];
    assert_eq!(*p, port);
    let ip = ip_of(frame);
    assert!(ip.verify_checksum());
    assert_eq!(ip.src_addr(), GW10);
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
    assert!(udp.verify_checksum(&PseudoHeader::V4 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
    }));
    assert!(udp.payload().len() >= 300, "BOOTP minimum");
    (
        EthernetAddress::from_bytes(&frame[..6]),
        ip.dst_addr(),
        udp.payload().to_vec(),
    )
}

fn option(message: &[u8], kind: u8) -> Option<Vec<u8>> {
    let packet = DhcpPacket::new_checked(message).unwrap();
    let found = packet
        .options()
        .find(|o| o.kind == kind)
        .map(|o| o.data.to_vec());
    found
}

#[test]
fn offers_the_ports_address_with_gateway_mtu_and_dns() {
    let mut sim = sim();
    let out = sim.send(0, &discover(A));
    let (l2, dst, message) = reply(&out, 0);
    assert_eq!((l2, dst), (A, A_IP));
    let packet = DhcpPacket::new_checked(&message[..]).unwrap();
    let offer = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(offer.message_type, DhcpMessageType::Offer);
    assert_eq!(offer.transaction_id, 0x1234_5678);
    assert_eq!(offer.client_hardware_address, smol(A));
    assert_eq!(offer.your_ip, A_IP);
    assert_eq!(offer.router, Some(GW10));
    assert_eq!(offer.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(offer.server_identifier, Some(GW10));
    assert_eq!(offer.lease_duration, Some(3600));
    assert_eq!(offer.renew_duration, Some(1800));
    assert_eq!(offer.rebind_duration, Some(3150));
    assert_eq!(offer.dns_servers.unwrap().as_slice(), &[DNS]);
    // The smaller of the port's MTU (9000) and the interface's (1500).
    assert_eq!(option(&message, 26), Some(1500u16.to_be_bytes().to_vec()));
    assert_eq!(option(&message, 28), Some(vec![10, 42, 0, 255]));
    assert_eq!(option(&message, 15), Some(b"pods.example".to_vec()));
    // The client identifier, echoed.
    assert_eq!(
        option(&message, 61),
        Some([&[1u8][..], A.as_bytes()].concat())
    );
    let c = sim.pipeline.counters().interface(vlan(10));
    assert_eq!(c.dhcp_offers.get(), 1);
}

#[test]
fn acks_a_request_for_its_address_and_naks_any_other() {
    let mut sim = sim();
    let request = |addr, server| {
        client(
            A,
            DhcpMessageType::Request,
            Some(addr),
            server,
            Ipv4Addr::UNSPECIFIED,
            true,
        )
    };
    // Selecting: broadcast flag set, so broadcast at IP, still only to the client.
    let out = sim.send(0, &request(A_IP, Some(GW10)));
    let (l2, dst, message) = reply(&out, 0);
    assert_eq!((l2, dst), (A, Ipv4Addr::BROADCAST));
    let packet = DhcpPacket::new_checked(&message[..]).unwrap();
    let ack = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(ack.message_type, DhcpMessageType::Ack);
    assert_eq!(ack.your_ip, A_IP);
    assert_eq!(ack.lease_duration, Some(3600));

    // Another address (say, a lease from some earlier network): NAK, no options.
    let out = sim.send(0, &request(Ipv4Addr::new(10, 42, 0, 77), None));
    let (l2, dst, message) = reply(&out, 0);
    assert_eq!((l2, dst), (A, Ipv4Addr::BROADCAST));
    let packet = DhcpPacket::new_checked(&message[..]).unwrap();
    let nak = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(nak.message_type, DhcpMessageType::Nak);
    assert_eq!(nak.your_ip, Ipv4Addr::UNSPECIFIED);
    assert_eq!(nak.router, None);
    assert_eq!(nak.lease_duration, None);

    // A request that chose another server: left alone.
    let out = sim.send(0, &request(A_IP, Some(Ipv4Addr::new(10, 42, 0, 9))));
    assert!(out.frames.is_empty() && out.drop.is_none(), "{out:?}");

    let c = sim.pipeline.counters().interface(vlan(10));
    assert_eq!((c.dhcp_acks.get(), c.dhcp_naks.get()), (1, 1));
}

#[test]
fn renewal_to_the_gateway_is_acked_to_the_clients_address() {
    let mut sim = sim();
    let renew = client(A, DhcpMessageType::Request, None, None, A_IP, false);
    let out = sim.send(0, &renew);
    let (l2, dst, message) = reply(&out, 0);
    assert_eq!((l2, dst), (A, A_IP));
    let packet = DhcpPacket::new_checked(&message[..]).unwrap();
    let ack = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(ack.message_type, DhcpMessageType::Ack);
    assert_eq!(ack.client_ip, A_IP);

    // INFORM: the options, no lease.
    let inform = client(A, DhcpMessageType::Inform, None, None, A_IP, false);
    let (_, _, message) = reply(&sim.send(0, &inform), 0);
    let packet = DhcpPacket::new_checked(&message[..]).unwrap();
    let ack = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(ack.message_type, DhcpMessageType::Ack);
    assert_eq!(ack.your_ip, Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.lease_duration, None);
    assert_eq!(ack.router, Some(GW10));
}

#[test]
fn a_port_without_an_address_there_is_dropped_and_counted() {
    let mut sim = sim();
    // Port 3 has no addresses; port 1's is on VLAN 20's subnet, but it asks in VLAN 10? It
    // cannot: it is an access port of VLAN 20, which serves no DHCP, so its request floods.
    let out = sim.send(3, &discover(D));
    assert_eq!(out.drop, Some(DropReason::DhcpNoAddress));
    assert!(out.frames.is_empty());
    assert_eq!(sim.iface_drops(10, DropReason::DhcpNoAddress), 1);
    let out = sim.send(1, &discover(B));
    assert_eq!(out.drop, None);
    assert!(
        out.frames.iter().all(|(p, _)| *p != 1),
        "VLAN 20 has no DHCP server: switched as any broadcast"
    );
    assert_eq!(
        sim.pipeline
            .counters()
            .interface(vlan(20))
            .dhcp_offers
            .get(),
        0
    );
}

#[test]
fn release_decline_and_malformed_messages() {
    let mut sim = sim();
    let release = client(A, DhcpMessageType::Release, None, Some(GW10), A_IP, false);
    let out = sim.send(0, &release);
    assert!(out.frames.is_empty() && out.drop.is_none(), "{out:?}");
    let decline = client(
        A,
        DhcpMessageType::Decline,
        Some(A_IP),
        Some(GW10),
        Ipv4Addr::UNSPECIFIED,
        false,
    );
    let out = sim.send(0, &decline);
    assert!(out.frames.is_empty() && out.drop.is_none(), "{out:?}");
    assert_eq!(
        sim.pipeline
            .counters()
            .interface(vlan(10))
            .dhcp_declines
            .get(),
        1
    );

    // A server's message type, a cut message, a bad UDP checksum, no magic cookie.
    let offer = client(
        A,
        DhcpMessageType::Offer,
        None,
        None,
        Ipv4Addr::UNSPECIFIED,
        false,
    );
    let good = discover(A);
    let mut cut = good[..14 + 20 + 8 + 100].to_vec();
    let ip_len = (cut.len() - 14) as u16;
    cut[16..18].copy_from_slice(&ip_len.to_be_bytes());
    let mut ip = Ipv4Packet::new_unchecked(&mut cut[14..]);
    ip.fill_checksum();
    let udp_len = (cut.len() - 34) as u16;
    cut[38..40].copy_from_slice(&udp_len.to_be_bytes());
    cut[40..42].copy_from_slice(&[0, 0]);
    let mut bad_sum = good.clone();
    bad_sum[100] ^= 0xff;
    let mut no_cookie = good.clone();
    no_cookie[14 + 20 + 8 + 236] = 0;
    no_cookie[40..42].copy_from_slice(&[0, 0]);
    for (what, frame) in [
        ("offer", offer),
        ("cut", cut),
        ("bad checksum", bad_sum),
        ("no cookie", no_cookie),
    ] {
        let out = sim.send(0, &frame);
        assert_eq!(out.drop, Some(DropReason::DhcpMalformed), "{what}");
        assert!(out.frames.is_empty(), "{what}");
    }
}

#[test]
fn off_when_the_interface_does_not_serve_dhcp() {
    let mut sim = Sim::new(1500);
    let mut state = sim.state.clone();
    state.addresses = vec![vec![A_IP]];
    sim.state = state;
    sim.pipeline.adopt(&sim.state);
    let out = sim.send(0, &discover(A));
    assert_eq!(out.drop, None);
    assert!(out.frames.iter().all(|(_, f)| f[..6] == [0xff; 6]));
    assert_eq!(
        sim.pipeline
            .counters()
            .interface(vlan(10))
            .dhcp_offers
            .get(),
        0
    );
}
