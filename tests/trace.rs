//! `tapswitch trace`: dry runs against the live tables of a switch that carries real traffic
//! between kernel stacks, checked field by field in the JSON; a dry run changes no table and
//! no counter.
//!
//! Layout: VLAN 10 (10.72.0.0/24, the router at .1) with containers c1 = .2 and c2 = .3;
//! the uplink VLAN 100 (10.202.0.0/24, the router at .1, "outside" at .254, the default
//! route) with `[[snat]]` masquerade of 10.72.0.0/24; the Service `web` 10.96.0.10:80 -> c2
//! port 8080; VXLAN VNI 4242 extending VLAN 10 over loopback, with a static FDB entry for a
//! MAC behind the remote VTEP 127.0.0.3. Before any trace, c1 pings c2 and the outside host
//! (so MACs are learned and neighbours resolved).

mod common;

use common::*;
use serde_json::Value;

const C1_MAC: &str = "02:00:00:48:00:02";
const C2_MAC: &str = "02:00:00:48:00:03";
const OUT_MAC: &str = "02:00:00:48:01:fe";
const ROUTER_MAC: &str = "02:aa:00:00:00:0a";
const REMOTE_MAC: &str = "02:00:00:00:77:77";

struct Lab {
    sw: Switch,
    c1: Netns,
    _c2: Netns,
    _outside: Netns,
    /// Port names of c1, c2, outside.
    ports: [String; 3],
}

fn config(vxlan_port: u16) -> String {
    format!(
        r#"
[[interface]]
vlan = 10
address = "10.72.0.1/24"
mac = "{ROUTER_MAC}"

[[interface]]
vlan = 100
address = "10.202.0.1/24"

[[route]]
prefix = "0.0.0.0/0"
via = "10.202.0.254"

[[snat]]
source = "10.72.0.0/24"
out_vlan = 100

[[service]]
name = "web"
vip = "10.96.0.10"
port = 80
backends = ["10.72.0.3:8080"]

[[vxlan]]
vni = 4242
vlan = 10
local = "127.0.0.1"
port = {vxlan_port}
remotes = ["127.0.0.2"]

[[fdb]]
mac = "{REMOTE_MAC}"
vni = 4242
remote = "127.0.0.3"
"#
    )
}

fn lab(offset: u16) -> Lab {
    let c1 = container("tc", false);
    let c2 = container("tc", false);
    let outside = container("to", false);
    let vxlan_port = 30_000 + (std::process::id() % 10_000) as u16 * 2 + offset;
    let sw = Switch::with_config(&config(vxlan_port));
    let attach = |ns: &Netns, vlan: &str, mac: &str, cidr: &str, gw: &str| {
        let port = unique("tp");
        sw.add_container_port(ns, &port, &["--vlan", vlan, "--mac", mac], &[cidr]);
        ns.ip(&["route", "add", "default", "via", gw])
            .expect("default route");
        port
    };
    let p1 = attach(&c1, "10", C1_MAC, "10.72.0.2/24", "10.72.0.1");
    let p2 = attach(&c2, "10", C2_MAC, "10.72.0.3/24", "10.72.0.1");
    let po = attach(&outside, "100", OUT_MAC, "10.202.0.254/24", "10.202.0.1");
    assert_eq!(ping(&c1, "10.72.0.3", 3), 3, "c1 reaches c2");
    assert_eq!(
        ping(&c1, "10.202.0.254", 3),
        3,
        "c1 reaches outside (masqueraded)"
    );
    assert_eq!(ping(&c2, "10.202.0.254", 1), 1, "the router resolves c2");
    Lab {
        sw,
        c1,
        _c2: c2,
        _outside: outside,
        ports: [p1, p2, po],
    }
}

/// `trace -j --in-port PORT WORDS...`.
fn trace(sw: &Switch, port: &str, packet: &str) -> Value {
    let mut args = vec!["trace", "--in-port", port];
    args.extend(packet.split_whitespace());
    sw.json(&args)
}

/// The steps of `stage`/`action`.
fn steps<'a>(t: &'a Value, stage: &str, action: &str) -> Vec<&'a Value> {
    t["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["stage"] == stage && s["action"] == action)
        .collect()
}

fn step<'a>(t: &'a Value, stage: &str, action: &str) -> &'a Value {
    steps(t, stage, action)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {stage}/{action} step in {t:#}"))
}

#[test]
fn dry_runs_name_every_decision() {
    if !have_root() {
        return;
    }
    let lab = lab(0);
    let sw = &lab.sw;
    let [p1, p2, po] = &lab.ports;

    // L2 hit: c1 -> c2 in VLAN 10, the destination learned on c2's port.
    let t = trace(
        sw,
        p1,
        &format!("dst-mac {C2_MAC} udp 10.72.0.2:5000 > 10.72.0.3:6000"),
    );
    assert_eq!(t["verdict"], "forwarded", "{t:#}");
    let c = step(&t, "ingress", "classified");
    assert_eq!(
        (&c["port"], &c["vlan"], &c["tag"]),
        (
            &Value::from(p1.as_str()),
            &Value::from("10"),
            &Value::from("none")
        )
    );
    let learn = step(&t, "l2", "learn");
    assert_eq!(
        (&learn["mac"], &learn["outcome"]),
        (&Value::from(C1_MAC), &Value::from("refreshed"))
    );
    let l = step(&t, "l2", "lookup");
    assert_eq!(l["result"], "hit");
    assert_eq!(l["table"], "mac_table");
    assert_eq!(l["port"], p2.as_str());
    let tx = steps(&t, "egress", "transmit");
    assert_eq!(tx.len(), 1, "{t:#}");
    assert_eq!(tx[0]["port"], p2.as_str());
    assert!(
        tx[0]["headers"]
            .as_str()
            .unwrap()
            .contains("UDP 5000 > 6000"),
        "{t:#}"
    );

    // Flood: a broadcast reaches every other member of VLAN 10: c2 and the VXLAN port,
    // which replicates it to its flood list.
    let t = trace(
        sw,
        p1,
        "dst-mac ff:ff:ff:ff:ff:ff udp 10.72.0.2:5000 > 255.255.255.255:6000",
    );
    let l = step(&t, "l2", "lookup");
    assert_eq!(
        (&l["result"], &l["why"]),
        (&Value::from("flood"), &Value::from("broadcast"))
    );
    let to: Vec<&str> = steps(&t, "egress", "transmit")
        .iter()
        .map(|s| s["to"].as_str().unwrap())
        .collect();
    assert!(to.contains(&"port") && to.contains(&"vxlan"), "{t:#}");
    assert!(
        steps(&t, "egress", "transmit")
            .iter()
            .all(|s| s["port"] != p1.as_str()),
        "never back out of the ingress port: {t:#}"
    );
    let e = step(&t, "tunnel", "vxlan_encap");
    assert_eq!(
        (&e["table"], &e["remotes"]),
        (&Value::from("flood_list"), &Value::from("1"))
    );

    // A broadcast to the DHCP server port is the gateway's (VLAN 10's interface serves
    // DHCP): an empty one is no DHCP message.
    let t = trace(
        sw,
        p1,
        "dst-mac ff:ff:ff:ff:ff:ff udp 10.72.0.2:68 > 255.255.255.255:67",
    );
    assert_eq!(step(&t, "l2", "to_dhcp")["vlan"], "10", "{t:#}");
    assert_eq!(
        (&t["drop"]["stage"], &t["drop"]["reason"]),
        (&Value::from("l3"), &Value::from("dhcp_malformed")),
        "{t:#}"
    );

    // Routed and masqueraded TCP SYN to the outside host.
    let t = trace(sw, p1, "tcp 10.72.0.2:40000 > 10.202.0.254:80 syn");
    assert_eq!(t["verdict"], "forwarded", "{t:#}");
    assert_eq!(
        t["input"]["headers"]
            .as_str()
            .unwrap()
            .split(',')
            .next()
            .unwrap(),
        format!("{C1_MAC} > {ROUTER_MAC}")
    );
    assert_eq!(step(&t, "l2", "to_router")["vlan"], "10");
    let r = step(&t, "l3", "route");
    assert_eq!(
        (&r["route"], &r["kind"]),
        (&Value::from("10.202.0.0/24"), &Value::from("connected"))
    );
    let n = step(&t, "nat", "new_connection");
    assert_eq!(n["flow"], "tcp 10.72.0.2:40000 > 10.202.0.254:80");
    let snat = n["snat"].as_str().expect("a masquerade binding");
    assert!(snat.starts_with("10.202.0.1:"), "{t:#}");
    let nb = step(&t, "l3", "neighbour");
    assert_eq!(
        (&nb["result"], &nb["mac"]),
        (&Value::from("resolved"), &Value::from(OUT_MAC))
    );
    assert_eq!(step(&t, "l3", "ttl")["ttl"], "63");
    let tx = step(&t, "egress", "transmit");
    assert_eq!(tx["port"], po.as_str());
    let headers = tx["headers"].as_str().unwrap();
    assert!(
        headers.contains("IPv4 10.202.0.1 > 10.202.0.254 ttl 63"),
        "{headers}"
    );
    assert!(headers.contains("[S]"), "{headers}");

    // A Service connection names the Service and the backend it picked.
    let t = trace(sw, p1, "tcp 10.72.0.2:40001 > 10.96.0.10:80 syn");
    let s = step(&t, "nat", "service");
    assert_eq!(
        (&s["service"], &s["vip"], &s["backend"]),
        (
            &Value::from("web"),
            &Value::from("10.96.0.10:80"),
            &Value::from("10.72.0.3:8080")
        )
    );
    let tx = step(&t, "egress", "transmit");
    assert_eq!(tx["port"], p2.as_str(), "{t:#}");
    assert!(
        tx["headers"]
            .as_str()
            .unwrap()
            .contains("> 10.72.0.3 ttl 63"),
        "{t:#}"
    );

    // VXLAN: a frame to a MAC behind a remote VTEP names the remote and the VNI.
    let t = trace(
        sw,
        p1,
        &format!("dst-mac {REMOTE_MAC} udp 10.72.0.2:5000 > 10.72.0.99:6000"),
    );
    let e = step(&t, "tunnel", "vxlan_encap");
    assert_eq!(
        (&e["vni"], &e["remote"], &e["table"]),
        (
            &Value::from("4242"),
            &Value::from("127.0.0.3"),
            &Value::from("static_fdb")
        )
    );
    let tx = step(&t, "egress", "transmit");
    assert_eq!(
        (&tx["to"], &tx["remote"]),
        (&Value::from("vxlan"), &Value::from("127.0.0.3"))
    );
    let h = tx["headers"].as_str().unwrap();
    assert!(
        h.contains("IPv4 127.0.0.1 > 127.0.0.3") && h.contains("VXLAN vni 4242"),
        "{h}"
    );
}

#[test]
fn dry_runs_name_drop_reasons_and_change_nothing() {
    if !have_root() {
        return;
    }
    let lab = lab(1);
    let sw = &lab.sw;
    let [p1, _, po] = &lab.ports;
    let before = (
        sw.json(&["stats"]),
        sw.json(&["fdb", "show"]),
        sw.json(&["conntrack", "show"]),
        sw.json(&["neigh", "show"]),
    );

    for (port, packet, stage, reason) in [
        // An access port takes no tag of another VLAN.
        (
            p1,
            "vlan 20 udp 10.72.0.2:1 > 10.72.0.3:2",
            "ingress",
            "vlan_not_allowed",
        ),
        // A multicast source MAC.
        (
            p1,
            "src-mac 01:00:5e:00:00:01 udp 10.72.0.2:1 > 10.72.0.3:2",
            "ingress",
            "bad_source_mac",
        ),
        // To a MAC learned on the ingress port itself.
        (
            p1,
            &format!("dst-mac {C1_MAC} udp 10.72.0.2:1 > 10.72.0.2:2"),
            "l2",
            "same_port",
        ),
        // The TTL runs out at the router.
        (
            p1,
            "ttl 1 udp 10.72.0.2:1 > 10.202.0.254:2",
            "l3",
            "ttl_exceeded",
        ),
        // A martian source.
        (p1, "udp 127.0.0.1:1 > 10.202.0.254:2", "l3", "martian"),
        // Mid-stream TCP with no connection, to be translated.
        (
            p1,
            "tcp 10.72.0.2:40002 > 10.96.0.10:80 ack",
            "nat",
            "conntrack_invalid",
        ),
        // From outside, an IPv6 packet where there is no IPv6 route.
        (po, "icmp6 fd00::1 > fd00::2", "l3", "no_route"),
    ] {
        let t = trace(sw, port, packet);
        assert_eq!(t["verdict"], "dropped", "{packet}: {t:#}");
        assert_eq!(t["drop"]["stage"], stage, "{packet}: {t:#}");
        assert_eq!(t["drop"]["reason"], reason, "{packet}: {t:#}");
        let d = step(&t, stage, "drop");
        assert_eq!(d["reason"], reason);
    }
    // A frame cut short, from a hex dump.
    let t = sw.json(&["trace", "--in-port", p1, "--hex", "ffffffffffff0200"]);
    assert_eq!(
        (&t["drop"]["stage"], &t["drop"]["reason"]),
        (&Value::from("parse"), &Value::from("runt"))
    );

    // A new connection in a dry run, a flood, a learn of a new MAC: none of it is real.
    trace(
        sw,
        p1,
        "src-mac 02:00:00:48:00:99 tcp 10.72.0.2:40003 > 10.96.0.10:80 syn",
    );
    trace(sw, p1, "tcp 10.72.0.2:40004 > 10.202.0.254:443 syn");
    let after = (
        sw.json(&["stats"]),
        sw.json(&["fdb", "show"]),
        sw.json(&["conntrack", "show"]),
        sw.json(&["neigh", "show"]),
    );
    assert_eq!(counters(&before.0), counters(&after.0), "no counter moved");
    assert_eq!(macs(&before.1), macs(&after.1), "nothing learned");
    assert_eq!(flows(&before.2), flows(&after.2), "no connection tracked");
    assert_eq!(
        neighbours(&before.3),
        neighbours(&after.3),
        "no neighbour changed"
    );
    // The switch still forwards.
    assert_eq!(ping(&lab.c1, "10.72.0.3", 2), 2);
}

/// Every port's counters and the drop and learning counters, without clocks and gauges.
fn counters(stats: &Value) -> Value {
    let mut s = stats.clone();
    if let Some(o) = s.as_object_mut() {
        for k in ["uptime_ms", "control", "checkpoint", "workers"] {
            o.remove(k);
        }
    }
    s
}

fn macs(fdb: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fdb
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["mac"].to_string(), e["port"].to_string()))
        .collect();
    v.sort();
    v
}

fn flows(ct: &Value) -> Vec<String> {
    let list = ct.get("entries").unwrap_or(ct);
    let mut v: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| format!("{}{}", e["orig"], e["reply"]))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn neighbours(n: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = n
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["ip"].to_string(),
                e["mac"].to_string(),
                e["state"].to_string(),
            )
        })
        .collect();
    v.sort();
    v
}
