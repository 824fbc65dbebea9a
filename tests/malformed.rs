//! Malformed frames sent at a TAP port from inside a container: each is a counted drop with
//! its reason, and the switch keeps forwarding.

mod common;

use std::time::Duration;

use common::*;
use tapswitch_dataplane::wire::builder::ethernet_frame;
use tapswitch_dataplane::wire::{EtherType, EthernetAddress};

#[test]
fn malformed_frames_are_counted_and_the_switch_keeps_forwarding() {
    if !have_root() {
        return;
    }
    let switch = Switch::start();
    let (n1, n2) = (container("tsm", false), container("tsm", false));
    let (p1, p2) = (unique("tm"), unique("tm"));
    switch.add_container_port(&n1, &p1, &["--vlan", "5"], &["10.67.0.1/24"]);
    switch.add_container_port(&n2, &p2, &["--vlan", "5"], &["10.67.0.2/24"]);
    let raw = probe::RawPort::open(&n1, &p1).unwrap();
    let src = EthernetAddress([2, 0, 0, 0, 0x67, 1]);
    let bcast = EthernetAddress::BROADCAST;
    // (A runt cannot leave a kernel interface at all: the kernel refuses to send a frame
    // shorter than an Ethernet header, so runts are covered by the pipeline tests.)
    let mut cut_tag = ethernet_frame(bcast, src, Some(5), EtherType::Ipv4, &[]);
    cut_tag.truncate(16);
    let reserved_vid = ethernet_frame(bcast, src, Some(0xfff), EtherType::Ipv4, &[0x45; 46]);
    let mut qinq = ethernet_frame(bcast, src, Some(5), EtherType::Ipv4, &[0x45; 46]);
    qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
    let other_vlan = ethernet_frame(bcast, src, Some(6), EtherType::Ipv4, &[0x45; 46]);
    let bad_src = ethernet_frame(
        bcast,
        EthernetAddress([1, 0, 0x5e, 0, 0, 1]),
        None,
        EtherType::Ipv4,
        &[0; 46],
    );
    let stp = ethernet_frame(
        EthernetAddress([1, 0x80, 0xc2, 0, 0, 0]),
        src,
        None,
        EtherType::Unknown(0x26),
        &[0; 46],
    );
    for frame in [&cut_tag, &reserved_vid, &qinq, &other_vlan, &bad_src, &stp] {
        for _ in 0..3 {
            raw.send(frame).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for reason in [
        "bad_vlan_tag",
        "stacked_vlan",
        "vlan_not_allowed",
        "bad_source_mac",
        "link_local",
    ] {
        let want = if reason == "bad_vlan_tag" { 6 } else { 3 };
        assert_eq!(drops(&switch, &p1, reason), want, "{reason}");
    }
    // None of them reached the other container; real traffic still flows.
    assert_eq!(switch.port_stats(&p2)["tx_packets"], 0);
    assert_eq!(ping(&n1, "10.67.0.2", 3), 3);
}
