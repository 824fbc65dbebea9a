//! Port security with real kernel stacks: a workload on a port with addresses sends only as
//! itself. Spoofing attempts are crafted with scapy inside the workload's namespace; each is
//! dropped and counted with its reason while the workload's own traffic passes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs a scapy script inside `ns` (Debian's python3-scapy, with the system Python).
fn scapy(ns: &probe::Netns, script: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "/usr/bin/python3", "-c"])
        .arg(format!("from scapy.all import *\nconf.verb = 0\n{script}"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "scapy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn spoofing_from_a_workload_is_dropped_and_counted_while_its_own_traffic_passes() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let (a, b) = (container("psa", true), container("psb", true));
    let (pa, pb) = (unique("psa"), unique("psb"));
    // a has port security (its addresses are on the port); b does not.
    sw.cli(&[
        "port",
        "add",
        &pa,
        "--netns",
        a.name(),
        "--address",
        "10.78.0.2/24",
        "--address",
        "fd78::2/64",
        "--allowed-pair",
        "10.78.0.100/32,00:00:5e:00:01:01",
    ]);
    sw.cli(&["port", "add", &pb, "--netns", b.name()]);
    for (ns, port, v4, v6) in [
        (&a, &pa, "10.78.0.2/24", "fd78::2/64"),
        (&b, &pb, "10.78.0.3/24", "fd78::3/64"),
    ] {
        ns.add_addr(port, v4).unwrap();
        ns.add_addr(port, v6).unwrap();
    }
    let ports = sw.json(&["port", "list"]);
    let info = |name: &str| {
        ports
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(info(&pa)["port_security"], true, "{ports}");
    assert_eq!(info(&pb)["port_security"], false, "{ports}");
    let mac = info(&pa)["mac"].as_str().unwrap().to_string();

    // Its own traffic, both families, passes.
    assert_eq!(ping(&a, "10.78.0.3", 2), 2);
    assert_eq!(ping(&a, "fd78::3", 2), 2);

    // A dry run names the check that refuses a packet from another address.
    let t = sw.json(&[
        "trace",
        "--in-port",
        &pa,
        "udp 10.78.0.9:1000 > 10.78.0.3:53",
    ]);
    assert_eq!(t["verdict"], "dropped", "{t:#}");
    let drop = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "drop")
        .cloned()
        .unwrap_or_else(|| panic!("no drop in {t:#}"));
    assert_eq!(
        (&drop["stage"], &drop["reason"]),
        (&"ingress".into(), &"spoofed_source".into()),
        "{t:#}"
    );
    // And lets its own through, naming the check.
    let t = sw.json(&[
        "trace",
        "--in-port",
        &pa,
        "udp 10.78.0.2:1000 > 10.78.0.3:53",
    ]);
    assert_eq!(t["verdict"], "forwarded", "{t:#}");
    assert!(
        t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["action"] == "port_security" && s["result"] == "allowed"),
        "{t:#}"
    );

    let iface = format!("iface={pa:?}");
    let attempts = [
        // Another source MAC.
        ("spoofed_mac", "Ether(src='02:00:00:00:78:99', dst='ff:ff:ff:ff:ff:ff')/IP(src='10.78.0.2', dst='10.78.0.3')/UDP(sport=1, dport=9)".to_string()),
        // Another source IP.
        ("spoofed_source", format!("Ether(src='{mac}', dst='ff:ff:ff:ff:ff:ff')/IP(src='10.78.0.3', dst='10.78.0.9')/UDP(sport=1, dport=9)")),
        // An ARP reply that says the neighbour's IP is here.
        ("spoofed_arp", format!("Ether(src='{mac}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=2, hwsrc='{mac}', psrc='10.78.0.3', pdst='10.78.0.1')")),
        // A gratuitous ARP for an address the port does not own.
        ("spoofed_arp", format!("Ether(src='{mac}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{mac}', psrc='10.78.0.50', pdst='10.78.0.50')")),
        // A neighbour advertisement for the neighbour's IPv6 address.
        ("spoofed_nd", format!("Ether(src='{mac}', dst='33:33:00:00:00:01')/IPv6(src='fd78::2', dst='ff02::1')/ICMPv6ND_NA(tgt='fd78::3', R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{mac}')")),
        // A router advertisement.
        ("ra_guard", format!("Ether(src='{mac}', dst='33:33:00:00:00:01')/IPv6(src='fd78::2', dst='ff02::1')/ICMPv6ND_RA()/ICMPv6NDOptPrefixInfo(prefix='2001:db8::', prefixlen=64)")),
        // A DHCP offer.
        ("dhcp_guard", format!("Ether(src='{mac}', dst='ff:ff:ff:ff:ff:ff')/IP(src='10.78.0.2', dst='255.255.255.255')/UDP(sport=67, dport=68)/BOOTP(op=2, yiaddr='10.78.0.3')/DHCP(options=[('message-type', 'offer'), 'end'])")),
    ];
    // b knows 10.78.0.50 as someone else; a will claim that address.
    b.ip(&[
        "neigh",
        "replace",
        "10.78.0.50",
        "lladdr",
        "02:00:00:00:78:50",
        "dev",
        &pb,
        "nud",
        "stale",
    ])
    .unwrap();
    let mut want = std::collections::BTreeMap::new();
    for (reason, packet) in &attempts {
        scapy(&a, &format!("sendp({packet}, {iface}, count=3)"));
        *want.entry(*reason).or_insert(0u64) += 3;
    }
    std::thread::sleep(Duration::from_millis(300));
    for (reason, n) in &want {
        assert_eq!(
            drops(&sw, &pa, reason),
            *n,
            "{reason}: {}",
            sw.port_stats(&pa)
        );
    }
    // The allowed pair: its address from its MAC passes.
    scapy(
        &a,
        &format!("sendp(Ether(src='00:00:5e:00:01:01', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='00:00:5e:00:01:01', psrc='10.78.0.100', pdst='10.78.0.3'), {iface}, count=1)"),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.neighbour("10.78.0.100").as_deref(),
        Some("00:00:5e:00:01:01"),
        "b learned the pair from its ARP request"
    );
    // b never heard the gratuitous ARP for 10.78.0.50: the entry it had for that address
    // (which a gratuitous ARP that got through would have moved to a's MAC) is unchanged.
    assert_eq!(
        b.neighbour("10.78.0.50").as_deref(),
        Some("02:00:00:00:78:50")
    );
    // And the workload's own traffic still passes.
    assert_eq!(ping(&a, "10.78.0.3", 2), 2);
    assert_eq!(ping(&a, "fd78::3", 2), 2);

    // Off at runtime for b's kind of port: a port added with addresses but port security off.
    let (c, pc) = (container("psc", false), unique("psc"));
    sw.cli(&[
        "port",
        "add",
        &pc,
        "--netns",
        c.name(),
        "--address",
        "10.78.0.4/24",
        "--port-security",
        "off",
    ]);
    c.add_addr(&pc, "10.78.0.4/24").unwrap();
    let ports = sw.json(&["port", "list"]);
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == pc.as_str() && p["port_security"] == false),
        "{ports}"
    );
}

#[test]
fn bad_port_security_settings_are_refused_naming_the_field() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let ns = container("psd", false);
    let port = unique("psd");
    for (args, field) in [
        (
            vec![
                "--address",
                "10.79.0.2/24",
                "--allowed-pair",
                "10.79.0.300/32",
            ],
            "allowed_pairs",
        ),
        (
            vec![
                "--address",
                "10.79.0.2/24",
                "--allowed-pair",
                "10.79.0.9/32,zz:00:00:00:00:01",
            ],
            "allowed_pairs",
        ),
        (vec!["--allow-ra"], "allow_ra"),
        (
            vec![
                "--address",
                "10.79.0.2/24",
                "--port-security",
                "off",
                "--allow-dhcp-server",
            ],
            "allow_dhcp_server",
        ),
    ] {
        let mut full = vec!["port", "add", &port, "--netns", ns.name()];
        full.extend(args.iter().copied());
        let err = sw.try_cli(&full).expect_err("accepted");
        assert!(err.contains(field), "{full:?}: {err}");
    }
    let ports = sw.json(&["port", "list"]);
    assert_eq!(
        ports.as_array().unwrap().len(),
        0,
        "nothing changed: {ports}"
    );
}

#[test]
fn port_set_changes_identity_and_checks_at_runtime() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let (a, b) = (container("pss", false), container("pst", false));
    let (pa, pb) = (unique("pss"), unique("pst"));
    sw.add_container_port(&a, &pa, &[], &["10.80.0.2/24"]);
    sw.add_container_port(&b, &pb, &[], &["10.80.0.3/24"]);
    let port = |name: &str| {
        sw.json(&["port", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let mac = port(&pa)["mac"].as_str().unwrap().to_string();
    let iface = format!("iface={pa:?}");
    let spoof = format!(
        "sendp(Ether(src='{mac}', dst='ff:ff:ff:ff:ff:ff')/IP(src='10.80.0.9', dst='10.80.0.3')/UDP(sport=1, dport=9), {iface}, count=2)"
    );
    // No addresses recorded: no port security, anything goes.
    assert_eq!(port(&pa)["port_security"], false);
    scapy(&a, &spoof);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(drops(&sw, &pa, "spoofed_source"), 0);

    // Its address recorded at runtime: port security on, the spoof dropped, its own passes.
    sw.cli(&[
        "port",
        "set",
        &pa,
        "--address",
        "10.80.0.2/24",
        "--label",
        "app=web",
        "--label",
        "tier=front",
    ]);
    let p = port(&pa);
    assert_eq!(p["port_security"], true, "{p}");
    assert_eq!(p["addresses"], serde_json::json!(["10.80.0.2/24"]), "{p}");
    assert_eq!(
        p["labels"],
        serde_json::json!({"app": "web", "tier": "front"}),
        "{p}"
    );
    scapy(&a, &spoof);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(drops(&sw, &pa, "spoofed_source"), 2);
    assert_eq!(ping(&a, "10.80.0.3", 2), 2);

    // Labels one by one; storm control on and off; port security off again.
    sw.cli(&[
        "port",
        "set",
        &pa,
        "--del-label",
        "tier",
        "--storm-control",
        "broadcast=10",
    ]);
    let p = port(&pa);
    assert_eq!(p["labels"], serde_json::json!({"app": "web"}), "{p}");
    assert_eq!(p["storm_control"]["broadcast"], 10, "{p}");
    sw.cli(&[
        "port",
        "set",
        &pa,
        "--no-storm-control",
        "--port-security",
        "off",
    ]);
    let p = port(&pa);
    assert!(p.get("storm_control").is_none(), "{p}");
    assert_eq!(p["port_security"], false, "{p}");
    scapy(&a, &spoof);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(drops(&sw, &pa, "spoofed_source"), 2, "off: not dropped");

    // A bad change names its field and changes nothing; so does an unknown port.
    let before = port(&pa);
    let err = sw
        .try_cli(&[
            "port",
            "set",
            &pa,
            "--port-security",
            "on",
            "--allowed-pair",
            "10.80.0.300/32",
        ])
        .expect_err("accepted");
    assert!(err.contains("allowed_pairs"), "{err}");
    assert_eq!(port(&pa), before);
    let err = sw
        .try_cli(&["port", "set", "nosuchport", "--label", "a=b"])
        .expect_err("accepted");
    assert!(err.contains("nosuchport"), "{err}");
    // What was set is the running configuration (saved like any change).
    let toml = sw.cli(&["config"]);
    assert!(toml.contains("app = \"web\""), "{toml}");
}
