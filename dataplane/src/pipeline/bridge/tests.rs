//! Pipeline simulations: frames in, decisions out, on a fake clock. No root, no devices.

use std::sync::Arc;

use super::*;
use crate::pipeline::{Decision, Pipeline, PortMode, WorkerCounters};
use crate::pipeline::{PortState, VlanSet};
use crate::wire::builder::ethernet_frame;
use crate::wire::{EtherType, EthernetFrame};

fn mac(last: u8) -> EthernetAddress {
    EthernetAddress([2, 0, 0, 0, 0, last])
}

fn vlan(id: u16) -> VlanId {
    VlanId::new(id).unwrap()
}

fn access(name: &str, v: u16) -> Option<PortState> {
    Some(PortState {
        name: name.into(),
        mode: PortMode::Access(vlan(v)),
        mtu: 1500,
        max_macs: u32::MAX,
    })
}

fn trunk(name: &str, vlans: &[u16], native: Option<u16>) -> Option<PortState> {
    Some(PortState {
        name: name.into(),
        mode: PortMode::Trunk {
            allowed: vlans.iter().map(|v| vlan(*v)).collect::<VlanSet>(),
            native: native.map(vlan),
        },
        mtu: 1500,
        max_macs: u32::MAX,
    })
}

/// A switch under test: ports 0..n, a fake clock in seconds.
struct Sim {
    state: ForwardingState,
    pipeline: Pipeline,
    now: Timestamp,
}

impl Sim {
    fn new(ports: Vec<Option<PortState>>) -> Sim {
        let state = ForwardingState::with_ports(ports);
        let pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
        Sim {
            state,
            pipeline,
            now: Timestamp::from_secs(1),
        }
    }

    fn republish(&mut self) {
        self.state.rebuild_vlan_members();
        self.pipeline.adopt(&self.state);
    }

    /// Sends `frame` in on `port`; returns the (port, frame-as-sent) pairs, or the drop.
    fn send(&mut self, port: u16, frame: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, DropReason> {
        let mut frame = frame.to_vec();
        let frame = &mut frame[..];
        match self
            .pipeline
            .decide(&self.state, PortId(port), frame, self.now)
        {
            Decision::Drop(r) => Err(r),
            Decision::Forward(e) => Ok(e
                .ports()
                .map(|m| (m.port.0, e.frame_for(m, frame).to_vec()))
                .collect()),
            Decision::Reply(e, reply) => Ok(e
                .ports()
                .map(|m| (m.port.0, e.frame_for(m, reply.as_bytes()).to_vec()))
                .collect()),
            Decision::Local | Decision::Tunnel(_) => Ok(Vec::new()),
        }
    }

    fn out_ports(&mut self, port: u16, frame: &[u8]) -> Vec<u16> {
        self.send(port, frame)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    fn advance_secs(&mut self, s: u64) {
        self.now = Timestamp::from_millis(self.now.millis() + s * 1000);
    }

    fn drops(&self, port: u16, r: DropReason) -> u64 {
        self.pipeline.counters().port(PortId(port)).drops[r.index()].get()
    }
}

fn untagged(dst: EthernetAddress, src: EthernetAddress) -> Vec<u8> {
    ethernet_frame(dst, src, None, EtherType::Ipv4, &[0x45; 46])
}

fn tagged(dst: EthernetAddress, src: EthernetAddress, vid: u16) -> Vec<u8> {
    ethernet_frame(dst, src, Some(vid), EtherType::Ipv4, &[0x45; 46])
}

#[test]
fn broadcast_floods_to_every_other_port_of_the_vlan() {
    let mut sim = Sim::new(vec![
        access("a", 1),
        access("b", 1),
        access("c", 1),
        access("d", 2),
    ]);
    assert_eq!(
        sim.out_ports(0, &untagged(EthernetAddress::BROADCAST, mac(1))),
        [1, 2]
    );
    let mcast = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(sim.out_ports(1, &untagged(mcast, mac(2))), [0, 2]);
}

#[test]
fn unknown_unicast_floods_then_learned_unicast_goes_to_one_port() {
    let mut sim = Sim::new(vec![access("a", 1), access("b", 1), access("c", 1)]);
    assert_eq!(
        sim.out_ports(0, &untagged(mac(2), mac(1))),
        [1, 2],
        "unknown: flood"
    );
    assert_eq!(
        sim.out_ports(1, &untagged(mac(1), mac(2))),
        [0],
        "mac 1 learned on port 0"
    );
    assert_eq!(
        sim.out_ports(0, &untagged(mac(2), mac(1))),
        [1],
        "mac 2 learned on port 1"
    );
    assert_eq!(sim.pipeline.counters().learn.learned.get(), 2);
}

#[test]
fn known_destination_on_the_ingress_port_is_filtered() {
    let mut sim = Sim::new(vec![access("a", 1), access("b", 1)]);
    sim.send(0, &untagged(EthernetAddress::BROADCAST, mac(1)))
        .unwrap();
    assert_eq!(
        sim.send(0, &untagged(mac(1), mac(3))),
        Err(DropReason::SamePort)
    );
    assert_eq!(sim.drops(0, DropReason::SamePort), 1);
}

#[test]
fn station_move_updates_the_entry() {
    let mut sim = Sim::new(vec![access("a", 1), access("b", 1), access("c", 1)]);
    sim.send(0, &untagged(EthernetAddress::BROADCAST, mac(1)))
        .unwrap();
    assert_eq!(sim.out_ports(2, &untagged(mac(1), mac(3))), [0]);
    sim.send(1, &untagged(EthernetAddress::BROADCAST, mac(1)))
        .unwrap();
    assert_eq!(sim.out_ports(2, &untagged(mac(1), mac(3))), [1]);
    assert_eq!(sim.pipeline.counters().learn.moved.get(), 1);
}

#[test]
fn learned_entries_age_out() {
    let mut sim = Sim::new(vec![access("a", 1), access("b", 1), access("c", 1)]);
    sim.state.mac_aging_ms = 10_000;
    sim.send(0, &untagged(EthernetAddress::BROADCAST, mac(1)))
        .unwrap();
    sim.advance_secs(9);
    assert_eq!(
        sim.out_ports(2, &untagged(mac(1), mac(3))),
        [0],
        "still fresh"
    );
    sim.advance_secs(1);
    assert_eq!(
        sim.out_ports(2, &untagged(mac(1), mac(3))),
        [0, 1],
        "expired: flood"
    );
    let now = sim.now;
    assert_eq!(
        sim.pipeline.age(&sim.state, now),
        1,
        "only mac 1 is idle for 10 s"
    );
    assert_eq!(sim.pipeline.counters().learn.aged.get(), 1);
}

#[test]
fn static_entries_never_age_and_are_never_overwritten() {
    let mut sim = Sim::new(vec![access("a", 1), access("b", 1), access("c", 1)]);
    sim.state.mac_aging_ms = 1_000;
    sim.state
        .static_fdb
        .insert(FdbKey::new(vlan(1), mac(9)), PortId(2));
    sim.republish();
    // mac 9 shows up as a source on port 0: not learned, the static entry stands.
    sim.send(0, &untagged(EthernetAddress::BROADCAST, mac(9)))
        .unwrap();
    assert_eq!(sim.pipeline.mac_table().len(), 0);
    sim.advance_secs(3600);
    assert_eq!(sim.out_ports(1, &untagged(mac(9), mac(1))), [2]);
}

#[test]
fn vlans_are_isolated() {
    let mut sim = Sim::new(vec![access("a", 10), access("b", 20), access("c", 10)]);
    assert_eq!(
        sim.out_ports(0, &untagged(EthernetAddress::BROADCAST, mac(1))),
        [2]
    );
    // Learned in VLAN 10 says nothing about VLAN 20.
    assert_eq!(
        sim.out_ports(1, &untagged(mac(1), mac(2))),
        Vec::<u16>::new()
    );
}

#[test]
fn access_ports_strip_and_trunks_tag() {
    let mut sim = Sim::new(vec![
        access("a", 10),
        trunk("t", &[10, 20], None),
        access("b", 20),
    ]);
    let from_access = untagged(EthernetAddress::BROADCAST, mac(1));
    let out = sim.send(0, &from_access).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1);
    assert_eq!(
        out[0].1,
        tagged(EthernetAddress::BROADCAST, mac(1), 10),
        "tag 10 added"
    );

    let from_trunk = tagged(EthernetAddress::BROADCAST, mac(2), 20);
    let out = sim.send(1, &from_trunk).unwrap();
    assert_eq!(
        out,
        vec![(2, untagged(EthernetAddress::BROADCAST, mac(2)))],
        "tag stripped"
    );
}

#[test]
fn trunk_drops_foreign_vlans_and_untagged_without_native() {
    let mut sim = Sim::new(vec![access("a", 30), trunk("t", &[10, 20], None)]);
    assert_eq!(
        sim.send(1, &tagged(EthernetAddress::BROADCAST, mac(2), 30)),
        Err(DropReason::VlanNotAllowed)
    );
    assert_eq!(
        sim.send(1, &untagged(EthernetAddress::BROADCAST, mac(2))),
        Err(DropReason::UntaggedOnTrunk)
    );
    // And VLAN 30 from the access port never reaches the trunk.
    assert_eq!(
        sim.out_ports(0, &untagged(EthernetAddress::BROADCAST, mac(1))),
        Vec::<u16>::new()
    );
}

#[test]
fn trunk_native_vlan_is_untagged() {
    let mut sim = Sim::new(vec![access("a", 5), trunk("t", &[10], Some(5))]);
    let out = sim
        .send(1, &untagged(EthernetAddress::BROADCAST, mac(2)))
        .unwrap();
    assert_eq!(out, vec![(0, untagged(EthernetAddress::BROADCAST, mac(2)))]);
    let out = sim
        .send(0, &untagged(EthernetAddress::BROADCAST, mac(1)))
        .unwrap();
    assert_eq!(out, vec![(1, untagged(EthernetAddress::BROADCAST, mac(1)))]);
}

#[test]
fn access_port_takes_own_or_priority_tag_only() {
    let mut sim = Sim::new(vec![access("a", 10), access("b", 10)]);
    let own = tagged(EthernetAddress::BROADCAST, mac(1), 10);
    assert_eq!(
        sim.send(0, &own).unwrap(),
        vec![(1, untagged(EthernetAddress::BROADCAST, mac(1)))]
    );
    let prio = tagged(EthernetAddress::BROADCAST, mac(1), 0);
    assert_eq!(sim.out_ports(0, &prio), [1]);
    assert_eq!(
        sim.send(0, &tagged(EthernetAddress::BROADCAST, mac(1), 20)),
        Err(DropReason::VlanNotAllowed)
    );
}

#[test]
fn malformed_frames_are_counted_drops() {
    let mut sim = Sim::new(vec![access("a", 1), access("b", 1)]);
    let good = untagged(EthernetAddress::BROADCAST, mac(1));
    assert_eq!(sim.send(0, &good[..13]), Err(DropReason::Runt));
    assert_eq!(sim.send(0, &[]), Err(DropReason::Runt));
    let t = tagged(EthernetAddress::BROADCAST, mac(1), 1);
    assert_eq!(
        sim.send(0, &t[..16]),
        Err(DropReason::BadVlanTag),
        "cut inside the tag"
    );
    let reserved = tagged(EthernetAddress::BROADCAST, mac(1), 0xfff);
    assert_eq!(sim.send(0, &reserved), Err(DropReason::BadVlanTag));
    let mut qinq = tagged(EthernetAddress::BROADCAST, mac(1), 1);
    qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
    assert_eq!(sim.send(0, &qinq), Err(DropReason::StackedVlan));
    let big = ethernet_frame(
        EthernetAddress::BROADCAST,
        mac(1),
        None,
        EtherType::Ipv4,
        &[0; 1501],
    );
    assert_eq!(sim.send(0, &big), Err(DropReason::Oversized));
    let max = ethernet_frame(
        EthernetAddress::BROADCAST,
        mac(1),
        None,
        EtherType::Ipv4,
        &[0; 1500],
    );
    assert_eq!(sim.out_ports(0, &max), [1], "exactly MTU passes");
    let mcast_src = untagged(
        EthernetAddress::BROADCAST,
        EthernetAddress([1, 0, 0x5e, 0, 0, 1]),
    );
    assert_eq!(sim.send(0, &mcast_src), Err(DropReason::BadSourceMac));
    let stp = untagged(EthernetAddress([0x01, 0x80, 0xc2, 0, 0, 0]), mac(1));
    assert_eq!(sim.send(0, &stp), Err(DropReason::LinkLocal));
    assert_eq!(sim.send(7, &good), Err(DropReason::UnknownPort));
    let c = sim.pipeline.counters().port(PortId(0));
    assert_eq!(c.drops.iter().map(|d| d.get()).sum::<u64>(), 8);
    assert_eq!(c.rx_packets.get(), 9);
}

#[test]
fn storm_control_limits_what_a_port_floods_and_nothing_else() {
    use crate::pipeline::{Limiter, StormControl};
    let mut sim = Sim::new(vec![access("a", 10), access("b", 10), access("c", 10)]);
    sim.state.storm = vec![Some(Arc::new(StormControl {
        broadcast: Some(Limiter::new(100, 5)),
        multicast: None,
        unknown_unicast: Some(Limiter::new(100, 1)),
    }))];
    let bcast = untagged(EthernetAddress::BROADCAST, mac(1));
    let passed = (0..20).filter(|_| sim.send(0, &bcast).is_ok()).count();
    assert_eq!(passed, 5, "the burst");
    assert_eq!(sim.drops(0, DropReason::Storm), 15);
    // Multicast has no limit here; unknown unicast has its own.
    let mcast = untagged(EthernetAddress([1, 0, 0x5e, 0, 0, 9]), mac(1));
    assert!((0..20).all(|_| sim.send(0, &mcast).is_ok()));
    let unknown = untagged(mac(9), mac(1));
    assert_eq!((0..20).filter(|_| sim.send(0, &unknown).is_ok()).count(), 1);
    // Known unicast is never limited, and other ports are not port 0.
    sim.send(1, &untagged(EthernetAddress::BROADCAST, mac(2)))
        .unwrap();
    let known = untagged(mac(2), mac(1));
    assert!((0..50).all(|_| sim.out_ports(0, &known) == [1]));
    assert!((0..50).all(|_| sim
        .send(1, &untagged(EthernetAddress::BROADCAST, mac(2)))
        .is_ok()));
    // A second later: the rate again (100 per second, so the burst's worth at once).
    sim.advance_secs(1);
    assert_eq!((0..20).filter(|_| sim.send(0, &bcast).is_ok()).count(), 5);
}

#[test]
fn full_tables_stop_learning_but_frames_still_flood() {
    let mut ports = vec![access("a", 1), access("b", 1), access("c", 1)];
    if let Some(p) = ports[0].as_mut() {
        p.max_macs = 2;
    }
    let mut sim = Sim::new(ports);
    sim.state.mac_table_max = 3;
    sim.republish();
    for i in 1..=3 {
        sim.send(0, &untagged(EthernetAddress::BROADCAST, mac(i)))
            .unwrap();
    }
    assert_eq!(sim.pipeline.mac_table().port_count(PortId(0)), 2);
    assert_eq!(sim.pipeline.counters().learn.port_limit.get(), 1);
    sim.send(1, &untagged(EthernetAddress::BROADCAST, mac(10)))
        .unwrap();
    assert_eq!(
        sim.out_ports(1, &untagged(EthernetAddress::BROADCAST, mac(11))),
        [0, 2]
    );
    assert_eq!(sim.pipeline.mac_table().len(), 3);
    assert_eq!(sim.pipeline.counters().learn.table_full.get(), 1);
    // mac 3 was never learned: frames to it flood.
    assert_eq!(sim.out_ports(2, &untagged(mac(3), mac(12))), [0, 1]);
}

#[test]
fn republishing_keeps_learned_entries_and_flushes_removed_ports() {
    let mut sim = Sim::new(vec![access("a", 1), access("b", 1), access("c", 1)]);
    sim.send(0, &untagged(EthernetAddress::BROADCAST, mac(1)))
        .unwrap();
    sim.send(1, &untagged(EthernetAddress::BROADCAST, mac(2)))
        .unwrap();
    sim.state.ports.push(access("d", 1));
    sim.republish();
    assert_eq!(
        sim.pipeline.mac_table().len(),
        2,
        "nothing learned is lost on an update"
    );
    sim.state.ports[0] = None;
    sim.republish();
    assert_eq!(
        sim.pipeline.mac_table().len(),
        1,
        "entries of a removed port are flushed"
    );
    assert_eq!(sim.out_ports(2, &untagged(mac(1), mac(3))), [1, 3]);
}

mod suppression {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::wire::builder::arp_request;
    use crate::wire::{
        ArpOperation, ArpPacket, ArpRepr, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet,
        Ipv6Repr,
    };

    const ANSWERED: EthernetAddress = EthernetAddress([0x62, 0xc8, 0xa9, 0xce, 0xca, 0x4e]);

    fn sim() -> Sim {
        let mut sim = Sim::new(vec![
            access("a", 10),
            access("b", 10),
            trunk("t", &[10], None),
        ]);
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 42, 1, 0));
        let v6 = IpAddr::V6("fd42::10".parse().unwrap());
        sim.state.neighbours.insert((vlan(10), v4), ANSWERED);
        sim.state.neighbours.insert((vlan(10), v6), ANSWERED);
        sim
    }

    #[test]
    fn arp_for_a_known_address_is_answered_back_out_the_ingress_port() {
        let mut sim = sim();
        let ask = arp_request(
            mac(1),
            Ipv4Addr::new(10, 42, 0, 5),
            Ipv4Addr::new(10, 42, 1, 0),
            None,
        );
        let out = sim.send(0, &ask).unwrap();
        assert_eq!(out.len(), 1, "answered, not flooded");
        let (port, reply) = &out[0];
        assert_eq!(*port, 0);
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!((eth.dst_addr(), eth.src_addr()), (mac(1), ANSWERED));
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(arp.operation, ArpOperation::Reply);
        assert_eq!(arp.source_hardware_addr, ANSWERED);
        assert_eq!(arp.source_protocol_addr, Ipv4Addr::new(10, 42, 1, 0));
        assert_eq!(arp.target_hardware_addr, mac(1));
        assert_eq!(arp.target_protocol_addr, Ipv4Addr::new(10, 42, 0, 5));
        assert_eq!(sim.pipeline.counters().learn.neigh_suppressed.get(), 1);
        // From a trunk, the reply goes back tagged.
        let tagged_ask = arp_request(
            mac(2),
            Ipv4Addr::new(10, 42, 0, 6),
            Ipv4Addr::new(10, 42, 1, 0),
            Some(10),
        );
        let out = sim.send(2, &tagged_ask).unwrap();
        assert_eq!(out[0].0, 2);
        assert_eq!(&out[0].1[12..16], &[0x81, 0x00, 0x00, 0x0a]);
    }

    #[test]
    fn arp_for_other_addresses_floods_as_usual() {
        let mut sim = sim();
        let ask = arp_request(
            mac(1),
            Ipv4Addr::new(10, 42, 0, 5),
            Ipv4Addr::new(10, 42, 1, 1),
            None,
        );
        assert_eq!(sim.out_ports(0, &ask), [1, 2]);
        assert_eq!(sim.pipeline.counters().learn.neigh_suppressed.get(), 0);
    }

    #[test]
    fn neighbour_solicitation_gets_an_advertisement() {
        let mut sim = sim();
        let (src, target): (Ipv6Addr, Ipv6Addr) =
            ("fd42::5".parse().unwrap(), "fd42::10".parse().unwrap());
        let solicited_node: Ipv6Addr = "ff02::1:ff00:10".parse().unwrap();
        let ns = Icmpv6Repr::NeighborSolicit {
            target_addr: target,
            source_lladdr: Some(mac(1)),
        };
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: solicited_node,
            next_header: IpProtocol::Icmpv6,
            payload_len: ns.buffer_len(),
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut l3 = vec![0u8; ip.buffer_len()];
        ip.emit(&mut Ipv6Packet::new_unchecked(&mut l3[..]));
        ns.emit(
            &src,
            &solicited_node,
            &mut Icmpv6Packet::new_unchecked(&mut l3[40..]),
        );
        let dst_mac = EthernetAddress([0x33, 0x33, 0xff, 0, 0, 0x10]);
        let frame = ethernet_frame(dst_mac, mac(1), None, EtherType::Ipv6, &l3);
        let out = sim.send(0, &frame).unwrap();
        assert_eq!(out.len(), 1);
        let eth = EthernetFrame::new_checked(&out[0].1[..]).unwrap();
        assert_eq!((eth.dst_addr(), eth.src_addr()), (mac(1), ANSWERED));
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
            (target, src, 255)
        );
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&target, &src));
        match Icmpv6Repr::parse(&icmp).unwrap() {
            Icmpv6Repr::NeighborAdvert {
                solicited_flag,
                override_flag,
                target_addr,
                target_lladdr,
                ..
            } => {
                assert!(solicited_flag && override_flag);
                assert_eq!(target_addr, target);
                assert_eq!(target_lladdr, Some(ANSWERED));
            }
            other => panic!("not an advertisement: {other:?}"),
        }
    }
}
