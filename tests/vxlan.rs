//! VXLAN (RFC 7348) between hosts: tapswitch to tapswitch, and tapswitch to the Linux kernel's
//! vxlan device (with learning, and flannel style with static entries only), what goes on the
//! wire as an independent decoder (tshark) reads it, and what malformed or foreign VXLAN does.
//!
//! Each test builds two "hosts" (namespaces joined by an underlay veth, 192.168.77.1 and .2),
//! runs tapswitch inside host A (`Switch::start_in`) so its VTEP sockets live there, and puts
//! containers (namespaces) behind each host. Every namespace, process and capture file is owned
//! by a guard that removes it, also when an assertion fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const A_UL: &str = "192.168.77.1";
const B_UL: &str = "192.168.77.2";
/// Inner MTU: the underlay's 1500 less the 50 bytes of outer headers.
const OVERLAY_MTU: &str = "1450";
const TEN_MIB: u64 = 10 << 20;
const EIGHT_MIB: u64 = 8 << 20;
const TCP_TIMEOUT: Duration = Duration::from_secs(60);

/// Two hosts joined by an underlay veth: host A is 192.168.77.1, host B 192.168.77.2.
struct Underlay {
    a: Netns,
    b: Netns,
    a_if: String,
    b_if: String,
}

fn underlay() -> Underlay {
    let a = container("vxha", false);
    let b = container("vxhb", false);
    let (a_if, b_if) = (unique("ula"), unique("ulb"));
    a.ip(&[
        "link",
        "add",
        &a_if,
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "netns",
        b.name(),
    ])
    .expect("underlay veth");
    for (ns, dev, addr) in [(&a, &a_if, A_UL), (&b, &b_if, B_UL)] {
        ns.add_addr(dev, &format!("{addr}/24")).unwrap();
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    Underlay { a, b, a_if, b_if }
}

/// Makes host B's end of the underlay send finished checksums, as a NIC puts them on a wire.
/// A veth otherwise hands host A the kernel vxlan device's packets with the inner TCP/UDP
/// checksums still left to offload (CHECKSUM_PARTIAL crosses namespaces as it is), and a UDP
/// socket, unlike a kernel vxlan device, cannot learn that: tapswitch would pass the inner
/// frames on with unfinished checksums and the containers would drop them. Only the tests with
/// a Linux VTEP on host B need this; tapswitch itself always sends finished checksums.
fn wire_checksums_on_b(ul: &Underlay) {
    ethtool_k(&ul.b, &ul.b_if, &["tx", "off"]);
}

/// `ethtool -K DEV ARGS...` inside `ns`.
fn ethtool_k(ns: &Netns, dev: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "ethtool", "-K", dev])
        .args(args)
        .output()
        .expect("run ethtool");
    assert!(
        out.status.success(),
        "ethtool -K {dev} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A container behind a tapswitch: a TAP port in a fresh namespace, with a fixed MAC, the
/// overlay MTU and one address.
fn tap_container(switch: &Switch, vlan: &str, mac: &str, cidr: &str) -> (Netns, String) {
    let ns = container("vxc", false);
    let port = tap_port(switch, &ns, vlan, mac, cidr, true);
    (ns, port)
}

/// A TAP port (a fresh name) of `switch` in the existing namespace `ns`, with a fixed MAC, the
/// overlay MTU and one address; `offload` false adds `--no-offload`. Returns the port's name.
fn tap_port(
    switch: &Switch,
    ns: &Netns,
    vlan: &str,
    mac: &str,
    cidr: &str,
    offload: bool,
) -> String {
    let port = unique("vt");
    let mut flags = vec!["--vlan", vlan, "--mac", mac, "--mtu", OVERLAY_MTU];
    if !offload {
        flags.push("--no-offload");
    }
    switch.add_container_port(ns, &port, &flags, &[cidr]);
    port
}

/// `bridge -n NS ARGS` (iproute2's bridge tool).
fn bridge(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("bridge")
        .arg("-n")
        .arg(ns.name())
        .args(args)
        .output()
        .expect("run bridge (iproute2)");
    assert!(
        out.status.success(),
        "bridge {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Linux side as a bridge host: a vxlan device (VNI 42, learning) and a veth into a
/// container, both on a Linux bridge in `host`; broadcast and unknown unicast go to host A
/// (the all-zero entry).
struct LinuxBridgePeer {
    container: Netns,
    vx: String,
}

fn linux_bridge_peer(host: &Netns, udp_port: u16, mac: &str, cidr: &str) -> LinuxBridgePeer {
    let (vx, br, host_end, inner_end) = (unique("vx"), unique("br"), unique("vh"), unique("ve"));
    let port = udp_port.to_string();
    // Learning on (the default): the kernel learns tapswitch's containers behind host A.
    host.ip(&[
        "link", "add", &vx, "type", "vxlan", "id", "42", "dstport", &port, "local", B_UL,
    ])
    .expect("kernel vxlan device");
    host.ip(&["link", "set", &vx, "mtu", OVERLAY_MTU]).unwrap();
    host.ip(&["link", "add", &br, "type", "bridge"]).unwrap();
    host.ip(&["link", "set", &vx, "master", &br]).unwrap();
    let container = container("vxk", false);
    host.ip(&[
        "link",
        "add",
        &host_end,
        "type",
        "veth",
        "peer",
        "name",
        &inner_end,
        "netns",
        container.name(),
    ])
    .unwrap();
    host.ip(&["link", "set", &host_end, "mtu", OVERLAY_MTU])
        .unwrap();
    host.ip(&["link", "set", &host_end, "master", &br]).unwrap();
    for dev in [&vx, &host_end, &br] {
        host.ip(&["link", "set", dev, "up"]).unwrap();
    }
    container
        .ip(&[
            "link",
            "set",
            &inner_end,
            "address",
            mac,
            "mtu",
            OVERLAY_MTU,
        ])
        .unwrap();
    container.add_addr(&inner_end, cidr).unwrap();
    container.ip(&["link", "set", &inner_end, "up"]).unwrap();
    bridge(
        host,
        &[
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            &vx,
            "dst",
            A_UL,
        ],
    );
    LinuxBridgePeer { container, vx }
}

/// A `stats -j` counter by JSON path.
fn stat(switch: &Switch, section: &str, key: &str) -> u64 {
    let s = switch.json(&["stats"]);
    s[section][key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats.{section}.{key} missing: {s}"))
}

fn tcp(server: &Netns, server_ip: &str, client: &Netns, bytes: u64, what: &str) {
    let t = probe::tcp_transfer(
        server,
        server_ip.parse().unwrap(),
        client,
        bytes,
        TCP_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{what}: TCP transfer: {e}"));
    assert_eq!(t.bytes, bytes, "{what}");
    eprintln!(
        "{what}: {} MiB in {:.2?} ({:.0} Mbit/s)",
        bytes >> 20,
        t.elapsed,
        t.mbit_per_sec()
    );
}

/// The first entry for `mac` in `fdb show -j`.
fn fdb_entry(switch: &Switch, mac: &str) -> Option<serde_json::Value> {
    switch.fdb().into_iter().find(|e| e["mac"] == mac)
}

#[test]
fn tapswitch_to_tapswitch() {
    if !have_root() {
        return;
    }
    let ul = underlay();
    // Host A from a configuration file (its containers must exist first), host B by CLI.
    let (a1, a2) = (container("vxc", false), container("vxc", false));
    let (pa1, pa2) = (unique("vt"), unique("vt"));
    let config = format!(
        r#"
[[port]]
name = "{pa1}"
netns = "{}"
mac = "02:00:00:42:0a:01"
mtu = 1450
vlan = 10

[[port]]
name = "{pa2}"
netns = "{}"
mac = "02:00:00:43:0a:03"
mtu = 1450
vlan = 20

[[vxlan]]
vni = 42
vlan = 10
local = "{A_UL}"
remotes = ["{B_UL}"]

[[vxlan]]
vni = 43
vlan = 20
local = "{A_UL}"
remotes = ["{B_UL}"]
"#,
        a1.name(),
        a2.name()
    );
    let sw_a = Switch::start_in(&ul.a, Some(&config));
    a1.add_addr(&pa1, "10.42.0.1/24").unwrap();
    a2.add_addr(&pa2, "10.42.0.3/24").unwrap();

    let sw_b = Switch::start_in(&ul.b, None);
    for (vni, vlan) in [("42", "10"), ("43", "20")] {
        sw_b.cli(&[
            "vxlan", "add", vni, "--vlan", vlan, "--local", B_UL, "--remote", A_UL,
        ]);
    }
    // All four containers in one subnet: only the VNI (and VLAN) separates them.
    let (b1, pb1) = tap_container(&sw_b, "10", "02:00:00:42:0b:02", "10.42.0.2/24");
    let (b2, pb2) = tap_container(&sw_b, "20", "02:00:00:43:0b:04", "10.42.0.4/24");

    let listed = sw_b.json(&["vxlan", "list"]);
    let vnis: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vni"].as_u64().unwrap())
        .collect();
    assert_eq!(vnis, [42, 43], "{listed}");

    // ARP + ICMP echo across the hosts within each VNI, both ways.
    assert_eq!(ping(&a1, "10.42.0.2", 3), 3, "VNI 42: a1 -> b1");
    assert_eq!(ping(&b1, "10.42.0.1", 3), 3, "VNI 42: b1 -> a1");
    assert_eq!(ping(&a2, "10.42.0.4", 3), 3, "VNI 43: a2 -> b2");
    assert_eq!(ping(&b2, "10.42.0.3", 3), 3, "VNI 43: b2 -> a2");
    assert_eq!(
        a1.neighbour("10.42.0.2").as_deref(),
        Some("02:00:00:42:0b:02")
    );
    assert_eq!(
        b2.neighbour("10.42.0.3").as_deref(),
        Some("02:00:00:43:0a:03")
    );

    // Bulk TCP, every byte checked, and UDP.
    let before = sw_b.port_stats(&pb1);
    tcp(&b1, "10.42.0.2", &a1, TEN_MIB, "VNI 42 a1 -> b1");
    // Host B joined the decapsulated segments (GRO): b1's TAP took frames larger than the
    // MTU, with their segmentation left to its kernel.
    let after = sw_b.port_stats(&pb1);
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    let per_frame = delta("tx_bytes") / delta("tx_packets").max(1);
    eprintln!("towards b1: {per_frame} bytes per frame");
    assert!(
        per_frame > 1514,
        "coalesced frames towards b1: {per_frame} bytes on average"
    );
    let echoed = probe::udp_echo(&b2, "10.42.0.4".parse().unwrap(), &a2, 200, 1200).unwrap();
    assert!(echoed >= 195, "VNI 43 UDP: {echoed}/200 echoed");

    // VNI 42 cannot reach VNI 43: not across the hosts, not on the same host. b2's wire
    // sees nothing of a1 meanwhile.
    let mut b2_wire = probe::RawPort::open(&b2, &pb2).unwrap();
    assert_eq!(ping(&a1, "10.42.0.4", 2), 0, "VNI 42 must not reach VNI 43");
    assert_eq!(ping(&b1, "10.42.0.3", 2), 0, "VNI 42 must not reach VNI 43");
    let seen = b2_wire.recv_for(Duration::from_millis(200)).unwrap();
    let a1_mac = [2, 0, 0, 0x42, 0x0a, 1];
    let b1_mac = [2, 0, 0, 0x42, 0x0b, 2];
    assert!(
        seen.iter()
            .all(|f| f[6..12] != a1_mac && f[6..12] != b1_mac),
        "a VNI 42 frame leaked into VNI 43"
    );
    assert_eq!(
        ping(&a1, "10.42.0.3", 2),
        0,
        "VLAN 10 must not reach VLAN 20"
    );
    assert!(a1.neighbour("10.42.0.4").is_none());
    assert!(b2.neighbour("10.42.0.2").is_none());

    // Each side learned the other's containers behind the remote VTEP, in the right VNI.
    for (sw, remote, local_port, entries) in [
        (
            &sw_a,
            B_UL,
            &pa1,
            [("02:00:00:42:0b:02", 42, 10), ("02:00:00:43:0b:04", 43, 20)],
        ),
        (
            &sw_b,
            A_UL,
            &pb1,
            [("02:00:00:42:0a:01", 42, 10), ("02:00:00:43:0a:03", 43, 20)],
        ),
    ] {
        for (mac, vni, vlan) in entries {
            let e = fdb_entry(sw, mac).unwrap_or_else(|| panic!("{mac} not in {:?}", sw.fdb()));
            assert_eq!(e["type"], "learned", "{e}");
            assert_eq!(e["vni"], vni, "{e}");
            assert_eq!(e["remote"], remote, "{e}");
            assert_eq!(e["vlan"], vlan, "{e}");
            assert_eq!(e["port"], format!("vxlan{vni}"), "{e}");
            let times = sw.fdb().iter().filter(|e| e["mac"] == mac).count();
            assert_eq!(times, 1, "{mac} known in one VLAN only: {:?}", sw.fdb());
        }
        // The local containers are learned on their TAP ports, with no VNI or remote.
        let own = sw
            .fdb()
            .into_iter()
            .find(|e| e["port"] == local_port.as_str())
            .expect("local container learned");
        assert!(own["vni"].is_null() && own["remote"].is_null(), "{own}");
        assert!(stat(sw, "fdb", "remote_learned") >= 2);
        let vx = sw.json(&["stats"])["vxlan"].clone();
        assert!(vx["rx_packets"].as_u64().unwrap() > 100, "{vx}");
        assert!(vx["tx_packets"].as_u64().unwrap() > 100, "{vx}");
        assert_eq!(vx["tx_errors"], 0, "{vx}");
        assert_eq!(vx["tx_oversized"], 0, "{vx}");
        let dropped: u64 = vx["drops"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(dropped, 0, "{vx}");
    }
    // b1's port sent the whole transfer on.
    assert!(sw_b.port_stats(&pb1)["tx_bytes"].as_u64().unwrap() > TEN_MIB);
}

#[test]
fn tapswitch_to_linux_vxlan_learning() {
    if !have_root() {
        return;
    }
    let ul = underlay();
    wire_checksums_on_b(&ul);
    let peer = linux_bridge_peer(&ul.b, 4789, "02:00:00:42:0b:02", "10.42.0.2/24");
    let c2 = &peer.container;
    let switch = Switch::start_in(&ul.a, None);
    switch.cli(&[
        "vxlan", "add", "42", "--vlan", "10", "--local", A_UL, "--remote", B_UL,
    ]);
    let (c1, _p1) = tap_container(&switch, "10", "02:00:00:42:0a:01", "10.42.0.1/24");

    assert_eq!(ping(&c1, "10.42.0.2", 3), 3, "tapswitch -> Linux");
    assert_eq!(ping(c2, "10.42.0.1", 3), 3, "Linux -> tapswitch");
    tcp(c2, "10.42.0.2", &c1, TEN_MIB, "tapswitch -> Linux (4789)");
    tcp(&c1, "10.42.0.1", c2, TEN_MIB, "Linux -> tapswitch (4789)");
    let echoed = probe::udp_echo(&c1, "10.42.0.1".parse().unwrap(), c2, 200, 1400).unwrap();
    assert!(echoed >= 195, "UDP from Linux: {echoed}/200 echoed");

    // Both VTEPs learned: the kernel c1's MAC behind 192.168.77.1, tapswitch c2's behind .2.
    let kernel = bridge(&ul.b, &["fdb", "show", "dev", &peer.vx]);
    assert!(
        kernel
            .lines()
            .any(|l| l.starts_with("02:00:00:42:0a:01 ") && l.contains(&format!("dst {A_UL}"))),
        "kernel did not learn c1 behind tapswitch:\n{kernel}"
    );
    let e = fdb_entry(&switch, "02:00:00:42:0b:02").expect("c2 learned");
    assert_eq!(
        (&e["type"], &e["vni"], &e["remote"]),
        (&"learned".into(), &42.into(), &B_UL.into()),
        "{e}"
    );
    assert_eq!(stat(&switch, "vxlan", "tx_errors"), 0);
}

#[test]
fn tapswitch_to_linux_vxlan_flannel_style() {
    if !have_root() {
        return;
    }
    let (c1_mac, peer_mac) = ("02:00:00:42:0a:01", "02:00:00:42:0b:02");
    let ul = underlay();
    // The Linux side as flannel sets up flannel.1: a vxlan device on 8472 that carries the
    // address itself, no learning, a permanent neighbour and a static FDB entry per remote.
    wire_checksums_on_b(&ul);
    let vx = unique("vx");
    let hb = &ul.b;
    hb.ip(&[
        "link",
        "add",
        &vx,
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "8472",
        "local",
        B_UL,
        "nolearning",
    ])
    .expect("kernel vxlan device");
    hb.ip(&["link", "set", &vx, "address", peer_mac, "mtu", OVERLAY_MTU])
        .unwrap();
    hb.add_addr(&vx, "10.42.0.2/24").unwrap();
    hb.ip(&["link", "set", &vx, "up"]).unwrap();
    hb.ip(&[
        "neigh",
        "add",
        "10.42.0.1",
        "lladdr",
        c1_mac,
        "dev",
        &vx,
        "nud",
        "permanent",
    ])
    .unwrap();
    bridge(hb, &["fdb", "append", c1_mac, "dev", &vx, "dst", A_UL]);

    // tapswitch the same way: no learning, no flood list, static entries only.
    let switch = Switch::start_in(&ul.a, None);
    switch.cli(&[
        "vxlan",
        "add",
        "42",
        "--vlan",
        "10",
        "--local",
        A_UL,
        "--port",
        "8472",
        "--no-learning",
    ]);
    switch.cli(&["fdb", "add", peer_mac, "--vni", "42", "--remote", B_UL]);
    switch.cli(&[
        "neigh",
        "add",
        "10.42.0.2",
        "--mac",
        peer_mac,
        "--vni",
        "42",
    ]);
    let (c1, p1) = tap_container(&switch, "10", c1_mac, "10.42.0.1/24");
    // Not relying on ARP suppression: the container has the neighbour statically too.
    c1.ip(&[
        "neigh",
        "add",
        "10.42.0.2",
        "lladdr",
        peer_mac,
        "dev",
        &p1,
        "nud",
        "permanent",
    ])
    .unwrap();

    let vxl = switch.json(&["vxlan", "list"]);
    assert_eq!(vxl[0]["udp_port"], 8472, "{vxl}");
    assert_eq!(vxl[0]["learning"], false, "{vxl}");
    let neigh = switch.json(&["neigh", "show"]);
    assert_eq!(
        (&neigh[0]["ip"], &neigh[0]["mac"], &neigh[0]["vni"]),
        (&"10.42.0.2".into(), &peer_mac.into(), &42.into()),
        "{neigh}"
    );

    assert_eq!(ping(&c1, "10.42.0.2", 3), 3, "tapswitch -> Linux (8472)");
    assert_eq!(ping(hb, "10.42.0.1", 3), 3, "Linux -> tapswitch (8472)");
    tcp(
        hb,
        "10.42.0.2",
        &c1,
        TEN_MIB,
        "tapswitch -> Linux flannel-style",
    );
    tcp(
        &c1,
        "10.42.0.1",
        hb,
        TEN_MIB,
        "Linux -> tapswitch flannel-style",
    );

    // Static only: tapswitch learned no remote MAC; the one remote entry is the static one.
    assert_eq!(stat(&switch, "fdb", "remote_learned"), 0);
    let remote_entries: Vec<_> = switch
        .fdb()
        .into_iter()
        .filter(|e| !e["vni"].is_null())
        .collect();
    assert_eq!(remote_entries.len(), 1, "{remote_entries:?}");
    let e = &remote_entries[0];
    assert_eq!(
        (&e["mac"], &e["type"], &e["remote"]),
        (&peer_mac.into(), &"static".into(), &B_UL.into()),
        "{e}"
    );
    assert_eq!(stat(&switch, "vxlan", "tx_errors"), 0);
}

/// A packet capture running in a namespace (tcpdump), stopped and its file removed on drop.
struct Capture {
    child: Option<Child>,
    file: PathBuf,
    /// What tcpdump prints on stderr, line by line.
    log: mpsc::Receiver<String>,
}

impl Capture {
    fn start(ns: &Netns, dev: &str, filter: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("{}.pcap", unique("tapswitch-vxcap-")));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "tcpdump",
                "-Z",
                "root",
                "-n",
                "-U",
            ])
            .args(["--immediate-mode", "-B", "32768", "-i", dev, "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (apt-get install tcpdump)");
        // tcpdump says "listening on DEV" once the capture is open.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut capture = Capture {
            child: Some(child),
            file,
            log: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match capture.log.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => break,
                Ok(_) => {}
                Err(_) => {
                    let status = capture.stop();
                    panic!("tcpdump did not start capturing ({status:?})");
                }
            }
        }
        capture
    }

    /// Stops the capture and returns how many packets the kernel dropped before tcpdump
    /// could read them (from its closing summary).
    fn finish(&mut self) -> u64 {
        let status = self.stop();
        let mut dropped = None;
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(2)) {
            if let Some(n) = line.strip_suffix(" packets dropped by kernel") {
                dropped = n.trim().parse().ok();
            }
        }
        dropped.unwrap_or_else(|| panic!("tcpdump ended ({status:?}) without its summary"))
    }

    /// Stops the capture (SIGINT, as Ctrl-C: tcpdump writes out what it has).
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill on the PID of a child this guard started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The fields tshark decodes per packet; each holds every occurrence, outermost first
/// (outer and inner Ethernet, IPv4, UDP).
const FIELDS: [&str; 18] = [
    "ip.src",
    "ip.dst",
    "ip.ttl",
    "ip.flags.df",
    "ip.proto",
    "udp.srcport",
    "udp.dstport",
    "udp.checksum",
    "udp.checksum.status",
    "vxlan.flags",
    "vxlan.flag_i",
    "vxlan.vni",
    "eth.src",
    "eth.dst",
    "eth.type",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.len",
];

/// One decoded packet: field name -> its occurrences.
type Decoded = BTreeMap<&'static str, Vec<String>>;

fn tshark_decode(file: &std::path::Path, port: u16) -> Vec<Decoded> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args([
            "-n",
            "-o",
            "udp.check_checksum:TRUE",
            "-d",
            &format!("udp.port=={port},vxlan"),
            "-T",
            "fields",
        ])
        .args([
            "-E",
            "separator=/t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark (apt-get install tshark)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            FIELDS
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let v = cols.get(i).copied().unwrap_or("");
                    let occ = if v.is_empty() {
                        Vec::new()
                    } else {
                        v.split(',').map(str::to_string).collect()
                    };
                    (*f, occ)
                })
                .collect()
        })
        .collect()
}

fn first<'d>(p: &'d Decoded, f: &str) -> &'d str {
    p[f].first().map(String::as_str).unwrap_or("")
}

fn last<'d>(p: &'d Decoded, f: &str) -> &'d str {
    p[f].last().map(String::as_str).unwrap_or("")
}

/// tshark prints booleans as 0/1 or False/True depending on its version.
fn is_false(v: &str) -> bool {
    matches!(v, "0" | "False" | "false")
}

fn is_true(v: &str) -> bool {
    matches!(v, "1" | "True" | "true")
}

#[test]
fn wire_is_rfc7348() {
    if !have_root() {
        return;
    }
    let (c1_mac, c2_mac) = ("02:00:00:42:0a:01", "02:00:00:42:0b:02");
    let ul = underlay();
    wire_checksums_on_b(&ul);
    // tapswitch hands the kernel runs of datagrams (UDP segmentation offload) with their
    // checksums left to the device: here the kernel finishes both before the veth, so the
    // capture sees each datagram as a NIC would put it on the wire.
    ethtool_k(
        &ul.a,
        &ul.a_if,
        &["tx", "off", "tx-udp-segmentation", "off"],
    );
    let peer = linux_bridge_peer(&ul.b, 4789, c2_mac, "10.42.0.2/24");
    let c2 = &peer.container;
    let switch = Switch::start_in(&ul.a, None);
    switch.cli(&[
        "vxlan", "add", "42", "--vlan", "10", "--local", A_UL, "--remote", B_UL,
    ]);
    let (c1, _p1) = tap_container(&switch, "10", c1_mac, "10.42.0.1/24");

    // Capture what tapswitch sends, on host B's end of the underlay.
    let mut capture = Capture::start(
        &ul.b,
        &ul.b_if,
        &format!("udp and src host {A_UL} and dst port 4789"),
    );
    // ARP and ICMP, three TCP connections, two UDP flows: each its own inner flow.
    assert_eq!(ping(&c1, "10.42.0.2", 3), 3);
    for _ in 0..3 {
        tcp(c2, "10.42.0.2", &c1, 256 << 10, "small TCP flow");
    }
    for _ in 0..2 {
        let echoed = probe::udp_echo(c2, "10.42.0.2".parse().unwrap(), &c1, 20, 500).unwrap();
        assert!(echoed >= 19, "{echoed}/20");
    }
    std::thread::sleep(Duration::from_millis(200));
    let dropped = capture.finish();
    assert_eq!(dropped, 0, "tcpdump could not keep up");
    let packets = tshark_decode(&capture.file, 4789);
    assert!(
        packets.len() > 200,
        "captured only {} packets",
        packets.len()
    );

    // flow (inner protocol and ports, or ARP / ICMP) -> outer UDP source ports seen.
    let mut flows: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut tcp_bytes: BTreeMap<String, u64> = BTreeMap::new();
    let mut unicast = 0;
    for p in &packets {
        let show = format!("{p:?}");
        // Outer IPv4: tapswitch's VTEP to the remote, TTL 64, DF clear, UDP.
        assert_eq!(first(p, "ip.src"), A_UL, "{show}");
        assert_eq!(first(p, "ip.dst"), B_UL, "{show}");
        assert_eq!(first(p, "ip.ttl"), "64", "outer TTL: {show}");
        assert!(is_false(first(p, "ip.flags.df")), "DF set: {show}");
        assert_eq!(first(p, "ip.proto"), "17", "{show}");
        // Outer UDP: to 4789, a correct checksum (RFC 7348 allows one; segmentation offload
        // needs it), source port from the flow hash.
        assert_eq!(first(p, "udp.dstport"), "4789", "{show}");
        assert_ne!(first(p, "udp.checksum"), "0x0000", "{show}");
        assert_eq!(
            first(p, "udp.checksum.status"),
            "1",
            "checksum good: {show}"
        );
        let sport: u16 = first(p, "udp.srcport").parse().expect("outer source port");
        // VXLAN: only the I flag, the VNI.
        assert_eq!(first(p, "vxlan.flags"), "0x0800", "{show}");
        assert!(is_true(first(p, "vxlan.flag_i")), "I flag: {show}");
        assert_eq!(first(p, "vxlan.vni"), "42", "{show}");
        // Inner Ethernet: from c1, to c2 or broadcast (ARP request).
        assert_eq!(p["eth.src"].len(), 2, "outer and inner Ethernet: {show}");
        assert_eq!(last(p, "eth.src"), c1_mac, "{show}");
        let dst = last(p, "eth.dst");
        assert!(dst == c2_mac || dst == "ff:ff:ff:ff:ff:ff", "{show}");
        unicast += usize::from(dst == c2_mac);
        let flow = match (p["ip.proto"].len(), last(p, "ip.proto")) {
            (1, _) => format!("ethertype {}", last(p, "eth.type")),
            (_, "6") => {
                let flow = format!("tcp {}->{}", last(p, "tcp.srcport"), last(p, "tcp.dstport"));
                *tcp_bytes.entry(flow.clone()).or_default() +=
                    last(p, "tcp.len").parse::<u64>().unwrap_or(0);
                flow
            }
            (_, "17") => {
                assert_eq!(p["udp.srcport"].len(), 2, "inner UDP: {show}");
                format!("udp {}->{}", last(p, "udp.srcport"), last(p, "udp.dstport"))
            }
            (_, proto) => format!("ip proto {proto}"),
        };
        flows.entry(flow).or_default().insert(sport);
    }
    assert!(unicast > 100, "{unicast} unicast frames to c2");
    // The whole of each TCP stream went through the capture, so nothing escaped the checks.
    for (flow, bytes) in &tcp_bytes {
        assert!(*bytes >= 256 << 10, "{flow}: only {bytes} bytes captured");
    }
    eprintln!("inner flow -> outer UDP source port: {flows:?}");
    // One flow keeps one source port.
    for (flow, ports) in &flows {
        assert_eq!(
            ports.len(),
            1,
            "{flow} used several source ports: {ports:?}"
        );
    }
    let tcp_flows: Vec<u16> = flows
        .iter()
        .filter(|(f, _)| f.starts_with("tcp "))
        .map(|(_, p)| *p.first().unwrap())
        .collect();
    let udp_flows: Vec<u16> = flows
        .iter()
        .filter(|(f, _)| f.starts_with("udp "))
        .map(|(_, p)| *p.first().unwrap())
        .collect();
    assert_eq!(tcp_flows.len(), 3, "{flows:?}");
    assert_eq!(udp_flows.len(), 2, "{flows:?}");
    assert!(flows.contains_key("ip proto 1"), "ICMP captured: {flows:?}");
    // Different flows spread over source ports: the flow hash picks one of 256 sending
    // sockets, so two of the seven flows share one in about 8 % of runs and two such pairs in
    // 0.2 %; more than that (fewer than 5 ports) almost never.
    let distinct: BTreeSet<u16> = flows.values().flatten().copied().collect();
    assert!(
        distinct.len() + 2 >= flows.len(),
        "source ports do not follow the inner flow: {flows:?}"
    );
    let tcp_distinct: BTreeSet<_> = tcp_flows.iter().collect();
    assert!(
        tcp_distinct.len() >= 2,
        "TCP flows share a port: {tcp_flows:?}"
    );
    assert_eq!(udp_flows.len(), 2);
}

/// An Ethernet frame of 60 bytes (a local experimental EtherType) from `src` to broadcast.
fn inner_frame(src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(60, 0x5a);
    f
}

fn vxlan_packet(flags: u8, vni: u32, reserved: u8, inner: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut p = vec![
        flags, reserved, reserved, reserved, v[1], v[2], v[3], reserved,
    ];
    p.extend_from_slice(inner);
    p
}

#[test]
fn malformed_and_foreign_vxlan_is_dropped_and_counted() {
    if !have_root() {
        return;
    }
    let (c1_mac, c2_mac) = ("02:00:00:42:0a:01", "02:00:00:42:0b:02");
    let ul = underlay();
    // A second underlay subnet, outside the VNI's allow list.
    ul.a.add_addr(&ul.a_if, "192.168.78.1/24").unwrap();
    ul.b.add_addr(&ul.b_if, "192.168.78.2/24").unwrap();
    wire_checksums_on_b(&ul);
    let peer = linux_bridge_peer(&ul.b, 4789, c2_mac, "10.42.0.2/24");
    let c2 = &peer.container;
    let c1 = container("vxc", false);
    let p1 = unique("vt");
    let config = format!(
        r#"
[[port]]
name = "{p1}"
netns = "{}"
mac = "{c1_mac}"
mtu = 1450
vlan = 10

[[vxlan]]
vni = 42
vlan = 10
local = "{A_UL}"
remotes = ["{B_UL}"]
allow = ["192.168.77.0/24"]
"#,
        c1.name()
    );
    let switch = Switch::start_in(&ul.a, Some(&config));
    c1.add_addr(&p1, "10.42.0.1/24").unwrap();
    assert_eq!(ping(&c1, "10.42.0.2", 2), 2, "before");

    let stranger = [2, 0, 0, 0, 0x99, 0x99];
    let ignored_bits = [2, 0, 0, 0, 0x77, 0x77];
    let vtep = std::net::SocketAddr::from((A_UL.parse::<Ipv4Addr>().unwrap(), 4789));
    let inside =
        ul.b.run(|| UdpSocket::bind((B_UL.parse::<Ipv4Addr>().unwrap(), 0)))
            .unwrap();
    let outside =
        ul.b.run(|| UdpSocket::bind(("192.168.78.2".parse::<Ipv4Addr>().unwrap(), 0)))
            .unwrap();
    let good = inner_frame(stranger);
    let sends: Vec<(&UdpSocket, Vec<u8>)> = vec![
        // Shorter than the 8-byte header: vxlan_truncated.
        (&inside, vec![0x08]),
        (&inside, vec![0x08, 0, 0, 0]),
        (&inside, vec![0x08, 0, 0, 0, 0, 0, 42]),
        // A whole header but an inner frame shorter than an Ethernet header: vxlan_truncated.
        (&inside, vxlan_packet(0x08, 42, 0, &good[..10])),
        // No I flag: vxlan_bad_flags.
        (&inside, vxlan_packet(0x00, 42, 0, &good)),
        (&inside, vxlan_packet(0x80, 42, 0, &good)),
        // VNIs tapswitch does not have: vxlan_unknown_vni.
        (&inside, vxlan_packet(0x08, 43, 0, &good)),
        (&inside, vxlan_packet(0x08, 0xff_ffff, 0, &good)),
        // Valid, but from outside `allow`: vxlan_source_not_allowed.
        (&outside, vxlan_packet(0x08, 42, 0, &good)),
        (&outside, vxlan_packet(0x08, 42, 0, &good)),
        (&outside, vxlan_packet(0x08, 42, 0, &good)),
        // Valid with reserved bits set: receivers ignore them (RFC 7348), so it is taken.
        (
            &inside,
            vxlan_packet(0x08 | 0x40, 42, 0xa5, &inner_frame(ignored_bits)),
        ),
    ];
    let rx_before = stat(&switch, "vxlan", "rx_packets");
    for (sock, p) in &sends {
        sock.send_to(p, vtep).unwrap();
    }
    let want: BTreeMap<String, u64> = [
        ("vxlan_truncated", 4),
        ("vxlan_bad_flags", 2),
        ("vxlan_unknown_vni", 2),
        ("vxlan_source_not_allowed", 3),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let read = || -> BTreeMap<String, u64> {
        let s = switch.json(&["stats"]);
        s["vxlan"]["drops"]
            .as_object()
            .unwrap_or_else(|| panic!("no stats.vxlan.drops: {s}"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .filter(|(_, v)| *v > 0)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = read();
    while got.values().sum::<u64>() < want.values().sum() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        got = read();
    }
    // A little longer, so a count above the expected one would show too.
    std::thread::sleep(Duration::from_millis(200));
    let got = read();
    assert_eq!(got, want, "stats.vxlan.drops (non-zero ones)");
    assert!(stat(&switch, "vxlan", "rx_packets") >= rx_before + sends.len() as u64);

    // Nothing dropped was learned; the valid packet with reserved bits was.
    assert!(
        fdb_entry(&switch, "02:00:00:00:99:99").is_none(),
        "{:?}",
        switch.fdb()
    );
    let e = fdb_entry(&switch, "02:00:00:00:77:77").expect("reserved bits are ignored");
    assert_eq!((&e["vni"], &e["remote"]), (&42.into(), &B_UL.into()), "{e}");

    // Traffic between the containers goes on.
    assert_eq!(ping(&c1, "10.42.0.2", 3), 3, "after: tapswitch -> Linux");
    assert_eq!(ping(c2, "10.42.0.1", 3), 3, "after: Linux -> tapswitch");
    let echoed = probe::udp_echo(c2, "10.42.0.2".parse().unwrap(), &c1, 50, 1000).unwrap();
    assert!(echoed >= 49, "{echoed}/50");
}

/// Two tapswitch hosts on the underlay, VNI 42 extending VLAN 10 on both, and a container
/// behind each (10.42.0.1 on A, 10.42.0.2 on B). `config_a` is host A's configuration file.
struct TwoSwitches {
    u: Underlay,
    a: Switch,
    b: Switch,
    c1: (Netns, String),
    c2: (Netns, String),
}

fn two_switches(config_a: &str) -> TwoSwitches {
    let u = underlay();
    let a = Switch::start_in(&u.a, Some(config_a));
    let b = Switch::start_in(&u.b, None);
    b.cli(&[
        "vxlan", "add", "42", "--vlan", "10", "--local", B_UL, "--remote", A_UL,
    ]);
    let c1 = tap_container(&a, "10", "02:00:00:00:7a:01", "10.42.0.1/24");
    let c2 = tap_container(&b, "10", "02:00:00:00:7a:02", "10.42.0.2/24");
    TwoSwitches { u, a, b, c1, c2 }
}

fn vni42_on_a(extra: &str) -> String {
    format!("{extra}\n[[vxlan]]\nvni = 42\nvlan = 10\nlocal = \"{A_UL}\"\nremotes = [\"{B_UL}\"]\n")
}

#[test]
fn outer_packets_too_big_for_the_underlay_are_dropped_not_fragmented() {
    if !have_root() {
        return;
    }
    let t = two_switches(&vni42_on_a(""));
    // The underlay shrinks to 1400: inner frames that fit the 1450 overlay MTU no longer fit.
    for (ns, dev) in [(&t.u.a, &t.u.a_if), (&t.u.b, &t.u.b_if)] {
        ns.ip(&["link", "set", dev, "mtu", "1400"]).unwrap();
    }
    let server: Ipv4Addr = "10.42.0.2".parse().unwrap();
    assert_eq!(
        probe::udp_echo(&t.c2.0, server, &t.c1.0, 10, 1000).unwrap(),
        10
    );
    let sent_before = stat(&t.a, "vxlan", "tx_packets");
    assert_eq!(
        probe::udp_echo(&t.c2.0, server, &t.c1.0, 3, 1400).unwrap(),
        0
    );
    assert_eq!(
        stat(&t.a, "vxlan", "tx_oversized"),
        3,
        "counted, not fragmented"
    );
    assert_eq!(
        stat(&t.a, "vxlan", "tx_packets"),
        sent_before,
        "nothing went out"
    );
    assert!(stat(&t.b, "vxlan", "rx_packets") >= 10);
    assert_eq!(ping(&t.c1.0, "10.42.0.2", 2), 2, "small frames still cross");
}

#[test]
fn arp_and_nd_for_suppressed_addresses_are_answered_locally() {
    if !have_root() {
        return;
    }
    let u = underlay();
    let a = Switch::start_in(&u.a, Some(&vni42_on_a("")));
    let answered = "62:c8:a9:ce:ca:4e";
    a.cli(&[
        "neigh",
        "add",
        "10.42.0.99",
        "--mac",
        answered,
        "--vni",
        "42",
    ]);
    a.cli(&["neigh", "add", "fd42::99", "--mac", answered, "--vni", "42"]);
    let listed = a.json(&["neigh", "show"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let c1 = container("vxs", false);
    let p1 = unique("vs");
    a.add_container_port(
        &c1,
        &p1,
        &["--vlan", "10", "--mtu", OVERLAY_MTU],
        &["10.42.0.1/24"],
    );

    // A raw ARP request: answered back on the port, and nothing sent into the overlay.
    let mut raw = probe::RawPort::open(&c1, &p1).unwrap();
    let me = tapswitch_dataplane::wire::EthernetAddress([2, 0, 0, 0, 0x7b, 1]);
    let _ = raw.recv_for(Duration::from_millis(100));
    let tunnel_before = stat(&a, "vxlan", "tx_packets");
    let ask = |target: [u8; 4]| {
        tapswitch_dataplane::wire::builder::arp_request(
            me,
            Ipv4Addr::new(10, 42, 0, 7),
            target.into(),
            None,
        )
    };
    raw.send(&ask([10, 42, 0, 99])).unwrap();
    let frames = raw.recv_for(Duration::from_millis(300)).unwrap();
    let reply = frames
        .iter()
        .find(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2])
        .expect("an ARP reply");
    assert_eq!(&reply[0..6], &me.0, "to the asker");
    assert_eq!(
        reply[22..28],
        [0x62, 0xc8, 0xa9, 0xce, 0xca, 0x4e],
        "with the configured MAC"
    );
    assert_eq!(
        stat(&a, "vxlan", "tx_packets"),
        tunnel_before,
        "not flooded to the remote"
    );
    // A request for another address is flooded to the remote as usual.
    raw.send(&ask([10, 42, 0, 98])).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(stat(&a, "vxlan", "tx_packets"), tunnel_before + 1);

    // The container's own kernel resolves both addresses through the switch's answers.
    ping(&c1, "10.42.0.99", 1);
    assert_eq!(c1.neighbour("10.42.0.99").as_deref(), Some(answered), "ARP");
    // IPv6: a second container with IPv6 on (added last: its own multicast would be flooded).
    let c6 = container("vxs", true);
    let p6 = unique("vs");
    a.add_container_port(
        &c6,
        &p6,
        &["--vlan", "10", "--mtu", OVERLAY_MTU],
        &["fd42::6/64"],
    );
    // The new address may still be tentative (duplicate address detection) for the first
    // try, so the kernel gets a few.
    for _ in 0..5 {
        ping(&c6, "fd42::99", 1);
        if c6.neighbour("fd42::99").as_deref() == Some(answered) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(c6.neighbour("fd42::99").as_deref(), Some(answered), "ND");
    assert!(stat(&a, "fdb", "neigh_suppressed") >= 3);
}

#[test]
fn learned_remotes_age_out_static_ones_stay() {
    if !have_root() {
        return;
    }
    let t = two_switches(&vni42_on_a(
        "[switch]\nmac_aging_secs = 2\n[[fdb]]\nmac = \"02:00:00:00:7a:09\"\nvni = 42\nremote = \"192.168.77.2\"",
    ));
    assert_eq!(ping(&t.c1.0, "10.42.0.2", 2), 2);
    let learned = fdb_entry(&t.a, "02:00:00:00:7a:02").expect("c2 learned behind B");
    assert_eq!(learned["remote"], B_UL);
    assert_eq!(learned["type"], "learned");
    assert!(stat(&t.a, "fdb", "remote_learned") >= 1);
    // Quiet both containers, then wait past the aging time.
    t.c1.0.ip(&["link", "set", &t.c1.1, "down"]).unwrap();
    t.c2.0.ip(&["link", "set", &t.c2.1, "down"]).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        fdb_entry(&t.a, "02:00:00:00:7a:02").is_none(),
        "learned remote aged out"
    );
    let kept = fdb_entry(&t.a, "02:00:00:00:7a:09").expect("static remote stays");
    assert_eq!(
        (kept["type"].as_str(), kept["remote"].as_str()),
        (Some("static"), Some(B_UL))
    );
    drop(t.b);
}

/// One port's `tx_bytes` / `tx_packets` (or `rx_`, by `dir`) since `before`, a `port_stats`
/// taken earlier: the average frame size in that direction.
fn bytes_per_frame(switch: &Switch, port: &str, before: &serde_json::Value, dir: &str) -> u64 {
    let after = switch.port_stats(port);
    let delta = |k: &str| {
        let key = format!("{dir}_{k}");
        after[&key].as_u64().unwrap() - before[&key].as_u64().unwrap()
    };
    let frames = delta("packets");
    assert!(frames > 0, "{port}: no {dir} frames");
    delta("bytes") / frames
}

/// Whether the kernel in `ns` may hand `dev` TCP super-frames (ethtool's
/// tcp-segmentation-offload): tapswitch offers it on a TAP port that takes offloads only.
fn kernel_tso(ns: &Netns, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "ethtool", "-k", dev])
        .output()
        .expect("run ethtool");
    assert!(out.status.success(), "ethtool -k {dev}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("tcp-segmentation-offload:"))
        .unwrap_or_else(|| panic!("no tcp-segmentation-offload in:\n{text}"));
    line.contains(": on")
}

/// The largest Ethernet frame a port with the overlay MTU gets without offloads.
const OVERLAY_FRAME: u64 = 1450 + 14;

#[test]
fn tcp_over_vxlan_with_offloads_on_and_off() {
    if !have_root() {
        return;
    }
    // Two tapswitch hosts, VNI 42 extending VLAN 10 on both, and a container on each; per
    // combination each container gets a fresh TAP port with offloads on or off (the
    // namespaces, daemons and tunnel stay).
    // The containers are declared before the switches, so that on a failed assertion the
    // switches (which remove their TAP ports) go first.
    let ul = underlay();
    let (c1, c2) = (container("vxo", false), container("vxo", false));
    let sw_a = Switch::start_in(&ul.a, None);
    let sw_b = Switch::start_in(&ul.b, None);
    sw_a.cli(&[
        "vxlan", "add", "42", "--vlan", "10", "--local", A_UL, "--remote", B_UL,
    ]);
    sw_b.cli(&[
        "vxlan", "add", "42", "--vlan", "10", "--local", B_UL, "--remote", A_UL,
    ]);
    let mut measured = Vec::new();
    for (on1, on2) in [(true, true), (true, false), (false, true), (false, false)] {
        let what = format!("VXLAN, offloads c1={on1} c2={on2}");
        let p1 = tap_port(&sw_a, &c1, "10", "02:00:00:42:0f:01", "10.42.0.1/24", on1);
        let p2 = tap_port(&sw_b, &c2, "10", "02:00:00:42:0f:02", "10.42.0.2/24", on2);
        // The ports are what the combination says, to tapswitch and to the containers' kernels.
        for (sw, port, ns, on) in [(&sw_a, &p1, &c1, on1), (&sw_b, &p2, &c2, on2)] {
            let entry = listed_port(sw, port);
            assert_eq!(entry["offload"], on, "{what}: {entry}");
            assert_eq!(kernel_tso(ns, port), on, "{what}: TSO on {port}");
        }
        assert_eq!(ping(&c1, "10.42.0.2", 2), 2, "{what}: ping");

        let (a1, b2) = (sw_a.port_stats(&p1), sw_b.port_stats(&p2));
        let vx_a = sw_a.json(&["stats"])["vxlan"].clone();
        tcp(&c2, "10.42.0.2", &c1, EIGHT_MIB, &what);
        let sent = bytes_per_frame(&sw_a, &p1, &a1, "rx");
        let got = bytes_per_frame(&sw_b, &p2, &b2, "tx");
        eprintln!("{what}: {sent} bytes per frame from c1, {got} to c2");
        measured.push((on1, on2, sent, got));

        // c1's kernel segments by itself exactly when its port takes no offloads.
        if on1 {
            assert!(sent > 1514, "{what}: super-frames from c1 ({sent})");
        } else {
            assert!(sent <= OVERLAY_FRAME, "{what}: frames from c1 ({sent})");
        }
        if on2 {
            // Host B joined the decapsulated segments (GRO) for c2's kernel to take whole.
            assert!(got > 1514, "{what}: joined segments towards c2 ({got})");
        } else {
            assert!(got <= OVERLAY_FRAME, "{what}: cut to c2's MTU ({got})");
        }
        for (sw, port) in [(&sw_a, &p1), (&sw_b, &p2)] {
            for reason in ["bad_offload", "oversized"] {
                assert_eq!(drops(sw, port, reason), 0, "{what}: {port} {reason}");
            }
            assert_eq!(
                sw.port_stats(port)["tx_oversized"].as_u64().unwrap_or(0),
                0,
                "{what}: {port} tx_oversized"
            );
        }
        // The tunnel on A sent the stream without an error or an outer packet too big for
        // the underlay; B's took it all.
        let vx = sw_a.json(&["stats"])["vxlan"].clone();
        assert!(
            vx["tx_packets"].as_u64().unwrap() > vx_a["tx_packets"].as_u64().unwrap() + 100,
            "{what}: {vx}"
        );
        assert_eq!(vx["tx_oversized"], 0, "{what}: {vx}");
        assert_eq!(vx["tx_errors"], 0, "{what}: {vx}");
        for (host, sw) in [("A", &sw_a), ("B", &sw_b)] {
            let vx = sw.json(&["stats"])["vxlan"].clone();
            assert_eq!(
                all_drops(&vx),
                0,
                "{what}: tunnel drops on host {host}: {vx}"
            );
        }
        sw_a.cli(&["port", "del", &p1]);
        sw_b.cli(&["port", "del", &p2]);
    }
    eprintln!("(c1 offload, c2 offload, bytes per frame from c1, to c2): {measured:?}");
}

/// Sends `count` datagrams from `socket` to `dst` and returns the worker of `sw` whose reads
/// grew by at least `count` meanwhile (the one that carried them).
fn carried_by(sw: &Switch, socket: &UdpSocket, dst: &str, count: u64) -> usize {
    // Each worker's frames read (ports and tunnel sockets together).
    let before = sw.worker_counters("rx_packets");
    for i in 0..count {
        socket
            .send_to(&i.to_be_bytes(), dst)
            .expect("send a datagram");
        std::thread::sleep(Duration::from_millis(1));
    }
    let src = socket.local_addr().expect("bound");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let grew: Vec<u64> = sw
            .worker_counters("rx_packets")
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        let carriers: Vec<usize> = (0..grew.len()).filter(|&w| grew[w] >= count).collect();
        // (A datagram from the tunnel counts twice: the outer packet and the inner frame.)
        if carriers.len() == 1 {
            return carriers[0];
        }
        assert!(
            Instant::now() < deadline,
            "{src} -> {dst}: one worker carries the flow: reads grew by {grew:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With two workers on host B, the worker that receives a flow from the tunnel is the one
/// its container's TAP gives the flow's answers to (the tunnel sockets are picked by the same
/// hash of the inner frame as the TAP's queues), so an answer finds that worker running.
/// With the kernel's reuseport hash of the outer header instead, about half the flows would
/// arrive on one worker and answer on the other.
#[test]
fn a_flow_and_its_answers_meet_on_one_worker_across_the_tunnel() {
    if !have_root() {
        return;
    }
    let u = underlay();
    let two = "[switch]\nworkers = 2\n";
    let a = Switch::start_in(&u.a, Some(&vni42_on_a(two)));
    let b = Switch::start_in(&u.b, Some(two));
    b.cli(&[
        "vxlan", "add", "42", "--vlan", "10", "--local", B_UL, "--remote", A_UL,
    ]);
    let (c1, _) = tap_container(&a, "10", "02:00:00:00:7b:01", "10.42.0.1/24");
    let (c2, _) = tap_container(&b, "10", "02:00:00:00:7b:02", "10.42.0.2/24");
    assert_eq!(ping(&c1, "10.42.0.2", 3), 3);
    assert_eq!(ping(&c2, "10.42.0.1", 3), 3);
    // Both ends bound before anything is sent, so no datagram draws an ICMP error (a flow of
    // its own).
    const COUNT: u64 = 40;
    let mut seen = BTreeSet::new();
    for flow in 0..8u16 {
        let (p1, p2) = (7100 + flow, 7200 + flow * 3);
        let (src1, src2) = (format!("10.42.0.1:{p1}"), format!("10.42.0.2:{p2}"));
        let bind = |ns: &Netns, at: &str| {
            let at = at.to_string();
            ns.run(move || UdpSocket::bind(&at)).expect("bind")
        };
        let (s1, s2) = (bind(&c1, &src1), bind(&c2, &src2));
        let tunnel_in = carried_by(&b, &s1, &src2, COUNT);
        let tap_in = carried_by(&b, &s2, &src1, COUNT);
        assert_eq!(
            tunnel_in, tap_in,
            "flow {src1} <-> {src2}: received from the tunnel by worker {tunnel_in}, its \
             answers read from the TAP by worker {tap_in}"
        );
        seen.insert(tunnel_in);
    }
    assert_eq!(
        seen.len(),
        2,
        "the flows spread over both workers: {seen:?}"
    );
}
