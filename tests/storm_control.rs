//! Storm control with real kernel stacks: a broadcast flood from one port is held to its
//! limit while unicast between other ports goes on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tapswitch_dataplane::wire::builder::ethernet_frame;
use tapswitch_dataplane::wire::{EtherType, EthernetAddress};

fn tx_packets(sw: &Switch, port: &str) -> u64 {
    sw.port_stats(port)["tx_packets"].as_u64().unwrap()
}

#[test]
fn a_broadcast_flood_is_held_to_its_limit_and_unicast_is_unaffected() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let names: Vec<String> = (0..4).map(|_| unique("sc")).collect();
    let ns: Vec<_> = (0..4).map(|_| container("sc", false)).collect();
    sw.cli(&[
        "port",
        "add",
        &names[0],
        "--netns",
        ns[0].name(),
        "--storm-control",
        "broadcast=1000,burst=100",
    ]);
    for i in 1..4 {
        sw.add_container_port(&ns[i], &names[i], &[], &[&format!("10.79.0.{}/24", i + 1)]);
    }
    let ports = sw.json(&["port", "list"]);
    let a = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == names[0].as_str())
        .unwrap();
    assert_eq!(a["storm_control"]["broadcast"], 1000, "{ports}");
    // Unicast between the other ports works before.
    assert_eq!(ping(&ns[2], "10.79.0.4", 3), 3);

    let raw = probe::RawPort::open(&ns[0], &names[0]).unwrap();
    let frame = ethernet_frame(
        EthernetAddress::BROADCAST,
        EthernetAddress([2, 0, 0, 0, 0x79, 1]),
        None,
        EtherType::Unknown(0x88b5),
        &[0; 46],
    );
    let before = tx_packets(&sw, &names[1]);
    let rx_before = sw.port_stats(&names[0])["rx_packets"].as_u64().unwrap();
    let drops_before = drops(&sw, &names[0], "storm");
    // Two seconds of flood, as fast as one sender goes, with a ping between two other
    // containers meanwhile.
    let pinger = {
        let n = ns[2].name().to_string();
        std::thread::spawn(move || {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &n,
                    "ping",
                    "-c",
                    "10",
                    "-i",
                    "0.1",
                    "-W",
                    "1",
                    "10.79.0.4",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..64 {
            raw.send(&frame).unwrap();
        }
        sent += 64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ping_out = pinger.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let passed = tx_packets(&sw, &names[1]) - before;
    let dropped = drops(&sw, &names[0], "storm") - drops_before;
    let received = sw.port_stats(&names[0])["rx_packets"].as_u64().unwrap() - rx_before;
    // The limit: 1000 per second plus the burst of 100.
    let limit = 1000.0 * elapsed + 100.0;
    assert!(
        sent as f64 > 3.0 * limit,
        "the flood must exceed the limit: sent {sent}"
    );
    assert!(
        (passed as f64 - limit).abs() <= 0.1 * limit,
        "passed {passed}, limit {limit:.0} (sent {sent}, dropped {dropped}, {elapsed:.2} s)"
    );
    // Every flood frame the switch read either passed or was dropped as a storm (what the
    // TAP's queue itself dropped, the switch never saw); b may also have had an ARP request
    // of the pinging containers.
    assert!(
        received.abs_diff(passed + dropped) <= 5,
        "received {received}, passed {passed}, dropped {dropped}"
    );
    assert!(
        ping_out.contains(" 0% packet loss"),
        "unicast between other ports: {ping_out}"
    );
}

#[test]
fn bad_storm_control_is_refused_naming_the_field() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let ns = container("scb", false);
    let port = unique("scb");
    for (value, field) in [
        ("broadcast=0", "storm_control.broadcast"),
        ("burst=10", "storm_control"),
        ("multicast=10,burst=0", "storm_control.burst"),
    ] {
        let err = sw
            .try_cli(&[
                "port",
                "add",
                &port,
                "--netns",
                ns.name(),
                "--storm-control",
                value,
            ])
            .expect_err("accepted");
        assert!(err.contains(field), "{value}: {err}");
    }
    let ports = sw.json(&["port", "list"]);
    assert_eq!(
        ports.as_array().unwrap().len(),
        0,
        "nothing changed: {ports}"
    );
}
