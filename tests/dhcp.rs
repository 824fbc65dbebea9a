//! DHCP from the gateway with a real client: busybox's `udhcpc` in a container namespace
//! behind a TAP port gets the port's address, prefix, gateway, MTU, DNS servers, domain and
//! lease time from tapswitch's router interface (no DHCP server anywhere else), configures
//! them with the script a distribution would, and then reaches its gateway and a neighbour.
//! A port without addresses gets nothing, and the drop is counted.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const CONFIG: &str = r#"
[[interface]]
vlan = 10
address = "10.77.0.1/24"
mtu = 1400
dns = ["10.77.0.53", "10.77.0.54"]
domain = "pods.test"
lease_secs = 120
"#;

/// A udhcpc script that prints what it was given (one `key=value` per line, on `bound` and
/// `renew`) and configures the interface the way a distribution's default script does.
const SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    echo "event=$1"
    for v in ip mask subnet router dns domain mtu lease serverid broadcast; do
      eval "echo $v=\$$v"
    done
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" broadcast "$broadcast" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip route add default via "$router" dev "$interface"
    ;;
  nak)
    echo "event=nak"
    ;;
esac
exit 0
"#;

/// A temporary directory with the udhcpc script, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique("tsdhcp"));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("udhcpc.sh");
        std::fs::write(&script, SCRIPT).unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&script)
            .status()
            .unwrap();
        Scratch(dir)
    }

    fn script(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs busybox's udhcpc once on `ifname` in `ns` (foreground, quit when bound, give up
/// after three discovers a second apart), with `extra` arguments.
fn udhcpc(ns: &Netns, ifname: &str, scratch: &Scratch, extra: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), "busybox", "udhcpc"])
        .args(["-f", "-q", "-n", "-t", "3", "-T", "1", "-i", ifname])
        .args(["-O", "mtu", "-O", "domain", "-O", "broadcast"])
        .arg("-s")
        .arg(scratch.script().join("udhcpc.sh"))
        .args(extra)
        .output()
        .expect("run busybox udhcpc (apt-get install busybox-static)")
}

/// The `key=value` lines the script printed for its last `bound` or `renew`.
fn lease_of(out: &Output) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.rsplit("event=").next().unwrap_or_default().to_string();
    last.lines()
        .skip(1)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn interface_stats(sw: &Switch) -> serde_json::Value {
    sw.json(&["interface", "list"])[0]["stats"].clone()
}

#[test]
fn a_dhcp_client_gets_its_ports_address_and_settings_from_the_gateway() {
    if !have_root() {
        return;
    }
    let scratch = Scratch::new();
    let sw = Switch::with_config(CONFIG);
    let a = container("tsdha", false);
    let b = container("tsdhb", false);
    let c = container("tsdhc", false);
    sw.add_container_port(
        &a,
        "dha",
        &[
            "--vlan",
            "10",
            "--address",
            "10.77.0.5/24",
            "--ifname",
            "eth0",
        ],
        &[],
    );
    sw.add_container_port(
        &b,
        "dhb",
        &[
            "--vlan",
            "10",
            "--address",
            "10.77.0.6/24",
            "--ifname",
            "eth0",
        ],
        &[],
    );
    // No addresses: nothing to hand out.
    sw.add_container_port(&c, "dhc", &["--vlan", "10", "--ifname", "eth0"], &[]);

    let out = udhcpc(&a, "eth0", &scratch, &[]);
    let got = lease_of(&out);
    let want: BTreeMap<String, String> = [
        ("ip", "10.77.0.5"),
        ("mask", "24"),
        ("subnet", "255.255.255.0"),
        ("router", "10.77.0.1"),
        ("dns", "10.77.0.53 10.77.0.54"),
        ("domain", "pods.test"),
        // The smaller of the port's MTU (1500) and the interface's.
        ("mtu", "1400"),
        ("lease", "120"),
        ("serverid", "10.77.0.1"),
        ("broadcast", "10.77.0.255"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert!(
        out.status.success() && got == want,
        "udhcpc in A: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // B asks with the broadcast flag, and for an address that is not its own: it is offered
    // its own.
    let out = udhcpc(&b, "eth0", &scratch, &["-B", "-r", "10.77.0.99"]);
    let got = lease_of(&out);
    assert!(
        out.status.success() && got.get("ip").map(String::as_str) == Some("10.77.0.6"),
        "udhcpc in B: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What the client configured works: the gateway and the neighbour answer.
    assert!(ping(&a, "10.77.0.1", 3) > 0, "A pings its gateway");
    assert!(ping(&a, "10.77.0.6", 3) > 0, "A pings B");

    // A renews while bound (SIGUSR1: a unicast REQUEST from its address to the server's),
    // and releases on the way out (SIGTERM with -R).
    let log = scratch.script().join("renew.log");
    let mut client = Command::new("ip")
        .args(["netns", "exec", a.name(), "busybox", "udhcpc"])
        .args(["-f", "-R", "-t", "3", "-T", "1", "-i", "eth0", "-s"])
        .arg(scratch.script().join("udhcpc.sh"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("udhcpc");
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(needle)
            {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    let bound = wait_for("event=bound");
    let pid = client.id() as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions; pid is our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let renewed = wait_for("event=renew");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = client.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        bound && renewed,
        "udhcpc in A did not bind and renew:\n{text}"
    );
    // The script runs `renew` only on an ACK to the renewal.
    assert!(text.contains("ip=10.77.0.5"), "{text}");

    // C has no address: no lease, and its requests are dropped and counted.
    let out = udhcpc(&c, "eth0", &scratch, &[]);
    assert!(
        !out.status.success() && lease_of(&out).is_empty(),
        "udhcpc in C got a lease: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(drops(&sw, "dhc", "dhcp_no_address") >= 3);

    let stats = interface_stats(&sw);
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    assert!(n("dhcp_offers") >= 2, "{stats}");
    assert!(n("dhcp_acks") >= 3, "{stats}");
    assert!(
        stats["drops"]["dhcp_no_address"].as_u64() >= Some(3),
        "{stats}"
    );
    let listed = sw.cli(&["interface", "list"]);
    assert!(
        listed.contains("dhcp: dns [10.77.0.53, 10.77.0.54] domain pods.test lease 120 s"),
        "{listed}"
    );

    // The lease follows the port: a new address, and the next request gets it.
    sw.cli(&["port", "set", "dha", "--address", "10.77.0.7/24"]);
    let out = udhcpc(&a, "eth0", &scratch, &[]);
    assert_eq!(
        lease_of(&out).get("ip").map(String::as_str),
        Some("10.77.0.7"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn without_dhcp_on_the_interface_requests_are_switched_and_bad_settings_are_refused() {
    if !have_root() {
        return;
    }
    let scratch = Scratch::new();
    let sw = Switch::start();
    let err = sw
        .try_cli(&[
            "interface",
            "add",
            "10",
            "--address",
            "10.78.0.1/24",
            "--dns",
            "10.78.0.53,10.78.0.54,10.78.0.55,10.78.0.56",
        ])
        .unwrap_err();
    assert!(
        err.contains("dns: lists 4 servers; DHCP hands out at most 3"),
        "{err}"
    );
    let err = sw
        .try_cli(&[
            "interface",
            "add",
            "10",
            "--address",
            "10.78.0.1/24",
            "--no-dhcp",
            "--lease-secs",
            "600",
        ])
        .unwrap_err();
    assert!(err.contains("lease_secs: is a DHCP setting"), "{err}");
    assert_eq!(sw.json(&["interface", "list"]), serde_json::json!([]));

    sw.cli(&[
        "interface",
        "add",
        "10",
        "--address",
        "10.78.0.1/24",
        "--no-dhcp",
    ]);
    let a = container("tsdna", false);
    let b = container("tsdnb", false);
    sw.add_container_port(
        &a,
        "dna",
        &[
            "--vlan",
            "10",
            "--address",
            "10.78.0.5/24",
            "--ifname",
            "eth0",
        ],
        &[],
    );
    sw.add_container_port(&b, "dnb", &["--vlan", "10", "--ifname", "eth0"], &[]);
    // B listens for DHCP the way a server of the VLAN would: A's discovers reach it.
    let listener = Command::new("ip")
        .args(["netns", "exec", b.name(), "timeout", "6"])
        .args([
            "tcpdump", "-c", "1", "-n", "-i", "eth0", "udp", "dst", "port", "67",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let out = udhcpc(&a, "eth0", &scratch, &[]);
    assert!(!out.status.success(), "no server, no lease");
    let heard = listener.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&heard.stdout).contains(".68 > 255.255.255.255.67"),
        "B did not see A's discover: {}{}",
        String::from_utf8_lossy(&heard.stdout),
        String::from_utf8_lossy(&heard.stderr)
    );
    assert!(interface_stats(&sw)["dhcp_offers"].is_u64());
    assert_eq!(interface_stats(&sw)["dhcp_offers"], 0);
}
