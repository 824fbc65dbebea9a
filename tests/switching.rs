//! L2 switching through TAP ports with the kernel's own stacks in namespaces as containers.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use tapswitch_dataplane::wire::builder::arp_request;
use tapswitch_dataplane::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress};

#[test]
fn three_containers_reach_each_other() {
    if !have_root() {
        return;
    }
    let switch = Switch::start();
    let mut containers = Vec::new();
    for i in 1..=3 {
        let ns = container("tsc", true);
        let port = unique("tp");
        let v4 = format!("10.61.0.{i}/24");
        let v6 = format!("fd61::{i}/64");
        switch.add_container_port(&ns, &port, &[], &[&v4, &v6]);
        containers.push((ns, port, i));
    }
    // ARP + ICMP echo between every pair.
    for (ns, _, i) in &containers {
        for (_, _, j) in &containers {
            if i != j {
                assert_eq!(ping(ns, &format!("10.61.0.{j}"), 3), 3, "c{i} -> c{j}");
            }
        }
        for (_, _, j) in &containers {
            if i != j {
                let mac = ns.neighbour(&format!("10.61.0.{j}"));
                assert!(mac.is_some(), "c{i} resolved c{j} by ARP");
            }
        }
    }
    // IPv6: neighbour discovery, then ICMPv6 echo between every pair.
    for (ns, _, i) in &containers {
        for (_, _, j) in &containers {
            if i != j {
                assert_eq!(
                    ping(ns, &format!("fd61::{j}"), 2),
                    2,
                    "c{i} -> c{j} over IPv6"
                );
                assert!(
                    ns.neighbour(&format!("fd61::{j}")).is_some(),
                    "resolved by ND"
                );
            }
        }
    }
    let (c1, _, _) = &containers[0];

    // A TCP transfer of 10 MiB, every byte checked, and UDP both ways.
    let (c2, _, _) = &containers[1];
    let (c3, port3, _) = &containers[2];
    let t = probe::tcp_transfer(
        c3,
        "10.61.0.3".parse().unwrap(),
        c1,
        10 << 20,
        Duration::from_secs(30),
    )
    .expect("TCP transfer");
    assert_eq!(t.bytes, 10 << 20);
    let echoed = probe::udp_echo(c2, "10.61.0.2".parse().unwrap(), c3, 200, 1200).unwrap();
    assert!(echoed >= 195, "UDP: {echoed}/200 echoed");

    // The switch saw it: three learned MACs, counters moved, no drops.
    let fdb = switch.fdb();
    assert_eq!(
        fdb.iter().filter(|e| e["type"] == "learned").count(),
        3,
        "{fdb:?}"
    );
    for e in &fdb {
        assert!(e["mac"].is_string() && e["port"].is_string() && e["vlan"] == 1);
    }
    let s3 = switch.port_stats(port3);
    assert!(s3["tx_bytes"].as_u64().unwrap() > 10 << 20, "{s3}");
    assert!(s3["rx_packets"].as_u64().unwrap() > 100);
    let dropped: u64 = s3["drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 0, "{s3}");
}

#[test]
fn vlans_do_not_see_each_other() {
    if !have_root() {
        return;
    }
    let switch = Switch::start();
    // Four containers in one IP subnet, two per VLAN: only the VLAN separates them.
    let mut c = Vec::new();
    for (i, vlan) in [(1, "10"), (2, "10"), (3, "20"), (4, "20")] {
        let ns = container("tsv", false);
        let port = unique("tv");
        let mac = format!("02:00:00:00:62:0{i}");
        switch.add_container_port(
            &ns,
            &port,
            &["--vlan", vlan, "--mac", &mac],
            &[&format!("10.62.0.{i}/24")],
        );
        c.push((ns, port));
    }
    assert_eq!(ping(&c[0].0, "10.62.0.2", 2), 2, "same VLAN 10");
    assert_eq!(ping(&c[2].0, "10.62.0.4", 2), 2, "same VLAN 20");
    // Watch c3's wire while c1 (VLAN 10) tries to reach it: not one frame of c1's arrives.
    let mut c3_wire = probe::RawPort::open(&c[2].0, &c[2].1).unwrap();
    assert_eq!(
        ping(&c[0].0, "10.62.0.3", 2),
        0,
        "VLAN 10 must not reach VLAN 20"
    );
    let seen = c3_wire.recv_for(Duration::from_millis(200)).unwrap();
    let c1_mac = [2, 0, 0, 0, 0x62, 1];
    assert!(
        seen.iter().all(|f| f[6..12] != c1_mac),
        "a VLAN 10 frame leaked into VLAN 20"
    );
    assert_eq!(
        ping(&c[3].0, "10.62.0.1", 2),
        0,
        "VLAN 20 must not reach VLAN 10"
    );
    assert!(c[2].0.neighbour("10.62.0.1").is_none());
    // The same MAC table holds both VLANs' stations, each in its own VLAN.
    for e in switch.fdb() {
        let vlan = e["vlan"].as_u64().unwrap();
        let i = e["mac"].as_str().unwrap().as_bytes()[16] - b'0';
        assert_eq!(vlan, if i <= 2 { 10 } else { 20 }, "{e}");
    }
}

#[test]
fn trunk_port_carries_tagged_frames() {
    if !have_root() {
        return;
    }
    let switch = Switch::start();
    let a10 = container("tsa", false);
    let a20 = container("tsb", false);
    let trunk_ns = container("tst", false);
    let (p10, p20, pt) = (unique("ta"), unique("tb"), unique("tt"));
    // Both access containers in one subnet: only the VLAN tells them apart.
    switch.add_container_port(
        &a10,
        &p10,
        &["--vlan", "10", "--mac", "02:00:00:00:63:10"],
        &["10.63.0.1/24"],
    );
    switch.add_container_port(
        &a20,
        &p20,
        &["--vlan", "20", "--mac", "02:00:00:00:63:20"],
        &["10.63.0.2/24"],
    );
    switch.add_container_port(&trunk_ns, &pt, &["--trunk", "10,20"], &[]);
    let mut trunk = probe::RawPort::open(&trunk_ns, &pt).unwrap();
    let me = EthernetAddress([2, 0, 0, 0, 0x63, 0xfe]);
    let my_ip = Ipv4Addr::new(10, 63, 0, 100);
    let ask = |target: [u8; 4], vid: Option<u16>| arp_request(me, my_ip, target.into(), vid);

    // An ARP request tagged 10 reaches the VLAN 10 container untagged; its kernel's reply
    // comes back onto the trunk tagged 10.
    trunk.send(&ask([10, 63, 0, 1], Some(10))).unwrap();
    let got = arp_replies(&mut trunk);
    assert_eq!(got, vec![(Some(10), "02:00:00:00:63:10".to_string())]);
    trunk.send(&ask([10, 63, 0, 2], Some(20))).unwrap();
    assert_eq!(
        arp_replies(&mut trunk),
        vec![(Some(20), "02:00:00:00:63:20".to_string())]
    );
    // Asking VLAN 20 for the VLAN 10 container's address gets no answer.
    trunk.send(&ask([10, 63, 0, 1], Some(20))).unwrap();
    assert_eq!(arp_replies(&mut trunk), vec![]);
    // A broadcast from an access container arrives on the trunk tagged with its VLAN.
    assert_eq!(ping(&a20, "10.63.0.99", 1), 0);
    let frames = trunk.recv_for(Duration::from_millis(300)).unwrap();
    assert!(!frames.is_empty());
    assert!(
        frames.iter().all(|f| vid_of(f) == Some(20)),
        "only VLAN 20 tags"
    );
    // VLAN 30 and untagged frames are not allowed on this trunk: counted drops.
    trunk.send(&ask([10, 63, 0, 1], Some(30))).unwrap();
    trunk.send(&ask([10, 63, 0, 1], None)).unwrap();
    assert_eq!(arp_replies(&mut trunk), vec![]);
    assert_eq!(drops(&switch, &pt, "vlan_not_allowed"), 1);
    assert_eq!(drops(&switch, &pt, "untagged_on_trunk"), 1);
}

/// The ARP replies that arrive on `port` within 300 ms: (VLAN tag, sender MAC).
fn arp_replies(port: &mut probe::RawPort) -> Vec<(Option<u16>, String)> {
    let frames = port.recv_for(Duration::from_millis(300)).unwrap();
    frames
        .iter()
        .filter_map(|f| {
            let vid = vid_of(f);
            let arp = &f[if vid.is_some() { 18 } else { 14 }..];
            let repr = ArpRepr::parse(&ArpPacket::new_checked(arp).ok()?).ok()?;
            (repr.operation == ArpOperation::Reply)
                .then(|| (vid, repr.source_hardware_addr.to_string()))
        })
        .collect()
}

fn vid_of(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 18 && frame[12..14] == [0x81, 0x00])
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0xfff)
}

#[test]
fn learning_moves_aging_and_static_entries() {
    if !have_root() {
        return;
    }
    let switch = Switch::with_config("[switch]\nmac_aging_secs = 2\n");
    let (n1, n2, n3) = (
        container("tsl", false),
        container("tsl", false),
        container("tsl", false),
    );
    let (p1, p2, p3) = (unique("tl"), unique("tl"), unique("tl"));
    switch.add_container_port(&n1, &p1, &["--mac", "02:00:00:00:61:01"], &["10.64.0.1/24"]);
    switch.add_container_port(&n2, &p2, &["--mac", "02:00:00:00:61:02"], &["10.64.0.2/24"]);
    switch.add_container_port(&n3, &p3, &["--mac", "02:00:00:00:61:03"], &["10.64.0.3/24"]);
    assert_eq!(ping(&n1, "10.64.0.2", 2), 2);
    let entry = |mac: &str| switch.fdb().into_iter().find(|e| e["mac"] == mac);
    let e1 = entry("02:00:00:00:61:01").expect("c1 learned");
    assert_eq!(
        (e1["port"].as_str(), e1["type"].as_str()),
        (Some(p1.as_str()), Some("learned"))
    );

    // Station move: c1's MAC shows up on c3's port.
    n3.ip(&["link", "set", &p3, "address", "02:00:00:00:61:01"])
        .unwrap();
    assert_eq!(ping(&n3, "10.64.0.2", 1), 1);
    let moved = entry("02:00:00:00:61:01").expect("still known");
    assert_eq!(
        moved["port"].as_str(),
        Some(p3.as_str()),
        "entry follows the station"
    );
    assert!(switch.json(&["stats"])["fdb"]["moved"].as_u64().unwrap() >= 1);

    // A static entry: never aged, never overwritten by learning.
    switch.cli(&["fdb", "add", "02:00:00:00:61:09", "--port", &p2]);
    n1.ip(&["link", "set", &p1, "address", "02:00:00:00:61:09"])
        .unwrap();
    // c3's reply goes where the static entry says (c2's port), not back to c1: learning did
    // not overwrite it.
    assert_eq!(
        ping(&n1, "10.64.0.3", 1),
        0,
        "the static entry is not overwritten"
    );
    let s = entry("02:00:00:00:61:09").expect("static entry");
    assert_eq!(
        (s["port"].as_str(), s["type"].as_str()),
        (Some(p2.as_str()), Some("static"))
    );

    // Aging: after 2 s without traffic learned entries are gone; the static one stays. The
    // containers' links go down first so their kernels stop sending (ARP probes).
    for (ns, port) in [(&n1, &p1), (&n2, &p2), (&n3, &p3)] {
        ns.ip(&["link", "set", port, "down"]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(3500));
    let fdb = switch.fdb();
    assert!(fdb.iter().all(|e| e["type"] == "static"), "{fdb:?}");
    assert_eq!(fdb.len(), 1);
    assert!(switch.json(&["stats"])["fdb"]["aged"].as_u64().unwrap() >= 2);

    // fdb del removes the static entry; deleting it again is an error naming it.
    switch.cli(&["fdb", "del", "02:00:00:00:61:09"]);
    let err = switch
        .try_cli(&["fdb", "del", "02:00:00:00:61:09"])
        .unwrap_err();
    assert!(
        err.contains("fdb 02:00:00:00:61:09: no such entry"),
        "{err}"
    );
}

#[test]
fn ports_come_and_go_while_traffic_flows() {
    if !have_root() {
        return;
    }
    let switch = Switch::start();
    let (n1, n2) = (container("tsr", false), container("tsr", false));
    let (p1, p2) = (unique("tr"), unique("tr"));
    switch.add_container_port(&n1, &p1, &[], &["10.65.0.1/24"]);
    switch.add_container_port(&n2, &p2, &[], &["10.65.0.2/24"]);
    assert_eq!(ping(&n1, "10.65.0.2", 1), 1);
    let pinger = std::thread::spawn(move || {
        let r = probe::ping(
            &n1,
            "10.65.0.2".parse().unwrap(),
            60,
            Duration::from_millis(25),
            Duration::from_millis(500),
        )
        .unwrap();
        (n1, r)
    });
    for round in 0..3 {
        let n3 = container("tsr", false);
        let p3 = unique("tr");
        switch.add_container_port(&n3, &p3, &[], &["10.65.0.3/24"]);
        assert_eq!(
            ping(&n3, "10.65.0.2", 2),
            2,
            "round {round}: the new port forwards"
        );
        switch.cli(&["port", "del", &p3]);
        assert!(
            n3.ip(&["link", "show", "dev", &p3]).is_err(),
            "TAP device deleted"
        );
        let names: Vec<String> = port_names(&switch);
        assert!(!names.contains(&p3));
    }
    let (_n1, r) = pinger.join().unwrap();
    assert_eq!(
        r.received, r.sent,
        "no echo lost between c1 and c2 while ports changed"
    );
}

#[test]
fn attached_veth_port_switches_with_a_tap_port() {
    if !have_root() {
        return;
    }
    let switch = Switch::start();
    let (n1, n2) = (container("tsp", false), container("tsp", false));
    // A veth pair: one end stays in the root namespace and is attached over AF_PACKET.
    let (host_end, ns_end) = (unique("vh"), unique("vn"));
    ip(&[
        "link",
        "add",
        &host_end,
        "type",
        "veth",
        "peer",
        "name",
        &ns_end,
        "netns",
        n1.name(),
    ])
    .unwrap();
    struct Link(String);
    impl Drop for Link {
        fn drop(&mut self) {
            let _ = ip(&["link", "del", &self.0]);
        }
    }
    let _link = Link(host_end.clone());
    n1.ip(&["link", "set", &ns_end, "up"]).unwrap();
    n1.add_addr(&ns_end, "10.66.0.1/24").unwrap();
    switch.cli(&["port", "add", &host_end, "--attach"]);
    let p2 = unique("tq");
    switch.add_container_port(&n2, &p2, &[], &["10.66.0.2/24"]);
    assert_eq!(ping(&n1, "10.66.0.2", 3), 3);
    assert_eq!(ping(&n2, "10.66.0.1", 3), 3);
    // UDP from the veth side leaves its checksum to offload; tapswitch finishes it.
    let echoed = probe::udp_echo(&n1, "10.66.0.1".parse().unwrap(), &n2, 100, 1000).unwrap();
    assert!(echoed >= 95, "{echoed}");
    // TCP from the veth side arrives as TSO super-frames; tapswitch segments them for the TAP.
    let t = probe::tcp_transfer(
        &n2,
        "10.66.0.2".parse().unwrap(),
        &n1,
        10 << 20,
        Duration::from_secs(30),
    )
    .expect("TCP across an attached veth");
    assert_eq!(t.bytes, 10 << 20);
    assert_eq!(drops(&switch, &host_end, "oversized"), 0);
    let listed = switch.json(&["port", "list"]);
    let port = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == host_end.as_str())
        .unwrap();
    assert_eq!(port["kind"], "attach");
    // Deleting an attached port leaves the interface in place.
    switch.cli(&["port", "del", &host_end]);
    assert!(ip(&["link", "show", "dev", &host_end]).is_ok());
}

#[test]
fn a_stop_keeps_taps_for_the_next_start_and_a_purge_removes_them() {
    if !have_root() {
        return;
    }
    let mut switch = Switch::start();
    let ns = container("tss", false);
    let port = unique("ts");
    switch.add_container_port(&ns, &port, &[], &["10.71.0.1/24"]);
    let before = ns.ip(&["-o", "link", "show", "dev", &port]).unwrap();
    let status = switch.stop().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!switch.socket.exists(), "socket removed on exit");
    let kept = ns.ip(&["-o", "addr", "show", "dev", &port]).unwrap();
    assert!(
        kept.contains("10.71.0.1/24"),
        "TAP and address kept: {kept}"
    );
    switch.restart();
    let after = ns.ip(&["-o", "link", "show", "dev", &port]).unwrap();
    let index = |s: &str| s.split(':').next().unwrap().to_string();
    assert_eq!(index(&before), index(&after), "the same device, adopted");
    assert!(listed_port(&switch, &port)["name"] == port.as_str());
    switch.cli(&["stop", "--purge"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.ip(&["link", "show", "dev", &port]).is_ok() {
        assert!(Instant::now() < deadline, "TAP removed by a purge");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !switch.state_dir.join("running.json").exists(),
        "saved state forgotten"
    );
}

#[test]
fn frames_larger_than_the_egress_mtu_are_not_sent() {
    if !have_root() {
        return;
    }
    let switch = Switch::start();
    let (jumbo, small) = (container("tsj", false), container("tsj", false));
    let (pj, ps) = (unique("tj"), unique("tj"));
    switch.add_container_port(&jumbo, &pj, &["--mtu", "9000"], &["10.68.0.1/24"]);
    switch.add_container_port(&small, &ps, &[], &["10.68.0.2/24"]);
    let listed = switch.json(&["port", "list"]);
    let mtus: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["mtu"].as_u64().unwrap())
        .collect();
    assert_eq!(mtus, [9000, 1500]);
    let server = "10.68.0.2".parse().unwrap();
    assert_eq!(
        probe::udp_echo(&small, server, &jumbo, 20, 1400).unwrap(),
        20
    );
    // 4000-byte datagrams fit the jumbo port but not the 1500-byte one: none is delivered.
    assert_eq!(probe::udp_echo(&small, server, &jumbo, 3, 4000).unwrap(), 0);
    assert_eq!(switch.port_stats(&ps)["tx_oversized"], 3);
    assert_eq!(
        drops(&switch, &pj, "oversized"),
        0,
        "accepted on the jumbo port"
    );
}
