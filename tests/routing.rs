//! The L3 router with the kernel's own stacks as its neighbours: containers on two VLANs that
//! reach each other through their gateway, what a router does with TTL and unreachable
//! destinations, a default route out of an uplink, two tapswitch hosts joined host-gw style
//! and over IPIP (to each other, and to plain Linux: the kernel's ipip device, or on kernels
//! without one a minimal RFC 2003 endpoint over a TUN device), path MTU, and CLI errors.
//!
//! Containers are namespaces behind TAP ports of a running tapswitch, with the router's
//! interface address of their VLAN as default gateway. "Hosts" are namespaces that run a
//! tapswitch inside them (`Switch::start_in`) so its raw IPIP sockets live there. Every
//! namespace, process and capture file is owned by a guard that removes it, also when an
//! assertion fails.

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

const TCP_BYTES: u64 = 4 << 20;
const TCP_TIMEOUT: Duration = Duration::from_secs(60);
/// Host A's underlay address (its tapswitch interface in host-gw, its kernel's for IPIP).
const A_UL: &str = "192.168.205.2";
/// Host B's in the host-gw test: router B's interface on the shared underlay VLAN.
const B_UL_GW: &str = "192.168.205.3";
/// Host B's in the IPIP tests: its kernel's address on the underlay.
const B_UL: &str = "192.168.205.5";
const MAC_A: &str = "02:00:00:2a:00:02";
const MAC_B: &str = "02:00:00:2a:01:02";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Runs iputils' `ping ARGS` inside `ns` and returns what it printed (stdout, then stderr).
/// Its exit status is not looked at: a ping that gets an ICMP error instead of a reply is
/// often what a test wants to see.
fn ping_cmd(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "ping"])
        .args(args)
        .output()
        .expect("run ping (apt-get install iputils-ping)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `ping ARGS` in `ns` until its output contains every one of `needles`, up to four
/// times (a busy machine may lose a packet); panics with the last output otherwise.
fn ping_expect(ns: &Netns, args: &[&str], needles: &[&str], what: &str) -> String {
    let mut out = String::new();
    for attempt in 0..4 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        out = ping_cmd(ns, args);
        if needles.iter().all(|n| out.contains(n)) {
            return out;
        }
    }
    panic!(
        "{what}: `ping {}` printed no {needles:?}:\n{out}",
        args.join(" ")
    );
}

/// Asserts that `dst` answers 3 of 3 echo requests from `ns`, allowing a few attempts.
fn assert_reaches(ns: &Netns, dst: &str, what: &str) {
    let mut got = 0;
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        got = ping(ns, dst, 3);
        if got == 3 {
            return;
        }
    }
    panic!("{what}: {dst} answered only {got}/3 echo requests (5 attempts)");
}

/// A checked TCP transfer of `bytes` from `client` to a listener on `server_ip` in `server`.
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

/// A container on `vlan` of `switch`: a TAP port with `mac` in a fresh namespace, with
/// `addrs` and a default route via each of `gateways` (IPv4 and/or IPv6). IPv6 is on in
/// the namespace only if an address needs it.
fn routed_container(
    switch: &Switch,
    vlan: u16,
    mac: &str,
    addrs: &[&str],
    gateways: &[&str],
) -> (Netns, String) {
    let v6 = addrs.iter().any(|a| a.contains(':'));
    let ns = container("rtc", v6);
    if v6 {
        // The link-local address too is usable at once (the global ones are `nodad`).
        sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0");
        sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0");
    }
    let port = routed_port(switch, &ns, vlan, mac, addrs, gateways, &[]);
    (ns, port)
}

/// A TAP port (a fresh name) of `switch` on `vlan` in the existing namespace `ns`, with `mac`,
/// `addrs`, a default route via each of `gateways` and `extra` flags for `port add`. Returns
/// the port's name.
fn routed_port(
    switch: &Switch,
    ns: &Netns,
    vlan: u16,
    mac: &str,
    addrs: &[&str],
    gateways: &[&str],
    extra: &[&str],
) -> String {
    let port = unique("rp");
    let vlan = vlan.to_string();
    let mut flags = vec!["--vlan", &vlan, "--mac", mac];
    flags.extend_from_slice(extra);
    switch.add_container_port(ns, &port, &flags, addrs);
    for gw in gateways {
        if gw.contains(':') {
            ns.ip(&["-6", "route", "add", "default", "via", gw])
                .expect("IPv6 default route");
        } else {
            ns.ip(&["route", "add", "default", "via", gw])
                .expect("default route");
        }
    }
    port
}

/// One interface (with its counters) from `interface list -j`.
fn interface(switch: &Switch, vlan: u64) -> Value {
    let list = switch.json(&["interface", "list"]);
    list.as_array()
        .and_then(|l| l.iter().find(|i| i["vlan"] == vlan).cloned())
        .unwrap_or_else(|| panic!("no interface on VLAN {vlan}: {list}"))
}

/// A counter of the interface on `vlan` (`stats.KEY`).
fn if_stat(switch: &Switch, vlan: u64, key: &str) -> u64 {
    let i = interface(switch, vlan);
    i["stats"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("interface {vlan}: no stats.{key}: {i}"))
}

/// A drop counter of the interface on `vlan` (0 if not listed).
fn if_drop(switch: &Switch, vlan: u64, reason: &str) -> u64 {
    interface(switch, vlan)["stats"]["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// The router's next-hop entry for `ip` in `neigh show -j` (not a suppression entry).
fn next_hop(switch: &Switch, ip: &str) -> Option<Value> {
    let list = switch.json(&["neigh", "show"]);
    list.as_array()?
        .iter()
        .find(|e| e["ip"] == ip && e["vni"].is_null() && e["state"] != "PERMANENT")
        .cloned()
}

/// A `stats -j` counter by section and key.
fn stat(switch: &Switch, section: &str, key: &str) -> u64 {
    let s = switch.json(&["stats"]);
    s[section][key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats.{section}.{key} missing: {s}"))
}

/// An IPIP drop counter from `stats -j` (`stats.ipip.drops.REASON`).
fn ipip_drop(switch: &Switch, reason: &str) -> u64 {
    switch.json(&["stats"])["ipip"]["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// Waits (up to 3 s) until `f` is true.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The prefixes of `route show -j` with their type.
fn routes(switch: &Switch) -> BTreeMap<String, Value> {
    switch
        .json(&["route", "show"])
        .as_array()
        .expect("route show -j is a list")
        .iter()
        .map(|r| (r["prefix"].as_str().expect("prefix").to_string(), r.clone()))
        .collect()
}

/// Two containers on one tapswitch: `a` on VLAN 10 (10.42.0.2, fd42::2, gateway .1 / ::1),
/// `b` on VLAN 20 (10.42.1.2, fd42:1::2, gateway 10.42.1.1 / fd42:1::1).
struct TwoVlans {
    switch: Switch,
    a: Netns,
    b: Netns,
    pa: String,
    pb: String,
}

fn two_vlans(ipv6: bool, extra_b: &[&str]) -> TwoVlans {
    let switch = Switch::start();
    let (addr10, addr20) = if ipv6 {
        ("10.42.0.1/24,fd42::1/64", "10.42.1.1/24,fd42:1::1/64")
    } else {
        ("10.42.0.1/24", "10.42.1.1/24")
    };
    switch.cli(&["interface", "add", "10", "--address", addr10]);
    let mut args = vec!["interface", "add", "20", "--address", addr20];
    args.extend_from_slice(extra_b);
    switch.cli(&args);
    let (a_addrs, a_gws, b_addrs, b_gws): (&[&str], &[&str], &[&str], &[&str]) = if ipv6 {
        (
            &["10.42.0.2/24", "fd42::2/64"],
            &["10.42.0.1", "fd42::1"],
            &["10.42.1.2/24", "fd42:1::2/64"],
            &["10.42.1.1", "fd42:1::1"],
        )
    } else {
        (
            &["10.42.0.2/24"],
            &["10.42.0.1"],
            &["10.42.1.2/24"],
            &["10.42.1.1"],
        )
    };
    let (a, pa) = routed_container(&switch, 10, MAC_A, a_addrs, a_gws);
    let (b, pb) = routed_container(&switch, 20, MAC_B, b_addrs, b_gws);
    TwoVlans {
        switch,
        a,
        b,
        pa,
        pb,
    }
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
        let file = std::env::temp_dir().join(format!("{}.pcap", unique("tapswitch-rtcap-")));
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
            // Headers are all the tests look at: 160 bytes hold the outer and inner ones.
            .args([
                "--immediate-mode",
                "-B",
                "32768",
                "-s",
                "160",
                "-i",
                dev,
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (apt-get install tcpdump)");
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

    /// Stops the capture; returns how many packets the kernel dropped before tcpdump read
    /// them (from its closing summary).
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

/// The fields tshark decodes per IPv4 packet; each holds every occurrence, outermost first
/// (outer and inner IPv4 of an IPIP packet).
const FIELDS: [&str; 12] = [
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.ttl",
    "ip.flags.df",
    "ip.len",
    "ip.flags.mf",
    "ip.frag_offset",
    "icmp.type",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.len",
];

/// One decoded packet: field name -> its occurrences.
type Decoded = BTreeMap<&'static str, Vec<String>>;

fn tshark_decode(file: &std::path::Path) -> Vec<Decoded> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(["-n", "-T", "fields"]).args([
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

/// Two namespaces as hosts, joined by a veth pair (`a_if` in `a`, `b_if` in `b`), both ends
/// up, no addresses.
struct HostPair {
    a: Netns,
    b: Netns,
    a_if: String,
    b_if: String,
}

fn host_pair() -> HostPair {
    let a = container("rtha", false);
    let b = container("rthb", false);
    let (a_if, b_if) = (unique("rula"), unique("rulb"));
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
    a.ip(&["link", "set", &a_if, "up"]).unwrap();
    b.ip(&["link", "set", &b_if, "up"]).unwrap();
    HostPair { a, b, a_if, b_if }
}

/// The Internet checksum of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo request (header and all) from `src` to `dst` with `ident` and `ttl`.
fn echo_packet(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, ttl: u8) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&ident.to_be_bytes());
    icmp.extend_from_slice(&[0, 1]);
    icmp.extend_from_slice(&[0x5a; 32]);
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, ttl, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// Whether `frame` (Ethernet) is an ICMP echo request with `ident`.
fn is_echo_with_ident(frame: &[u8], ident: u16) -> bool {
    frame.len() >= 14 + 20 + 8
        && frame[12..14] == [0x08, 0x00]
        && frame[14 + 9] == 1
        && frame[14 + 20] == 8
        && frame[14 + 24..14 + 26] == ident.to_be_bytes()
}

/// Sends `inner` as the payload of an IPIP packet from `src` (an address of `ns`) to `dst`:
/// the kernel adds the outer header (protocol 4).
fn send_ipip(ns: &Netns, src: &str, dst: &str, inner: &[u8]) {
    let src: Ipv4Addr = src.parse().unwrap();
    let dst: Ipv4Addr = dst.parse().unwrap();
    let sock = ns
        .run(|| {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(4)))?;
            s.bind(&SocketAddr::from((src, 0)).into())?;
            Ok(s)
        })
        .expect("raw IPIP socket");
    sock.send_to(inner, &SocketAddr::from((dst, 0)).into())
        .expect("send IPIP");
}

// ---------------------------------------------------------------------------------------
// One tapswitch, two VLANs
// ---------------------------------------------------------------------------------------

#[test]
fn two_vlans_route_through_the_gateway() {
    if !have_root() {
        return;
    }
    let t = two_vlans(true, &["--mac", "02:00:00:00:14:fe"]);
    let sw = &t.switch;

    // The FIB holds the connected routes of both interfaces, in both families.
    let fib = routes(sw);
    for (prefix, vlan) in [
        ("10.42.0.0/24", 10),
        ("fd42::/64", 10),
        ("10.42.1.0/24", 20),
        ("fd42:1::/64", 20),
    ] {
        let r = fib
            .get(prefix)
            .unwrap_or_else(|| panic!("{prefix} not in the FIB: {fib:?}"));
        assert_eq!(
            (&r["type"], &r["vlan"]),
            (&"connected".into(), &vlan.into())
        );
    }
    let gw10 = interface(sw, 10);
    let gw20 = interface(sw, 20);
    assert_eq!(gw20["mac"], "02:00:00:00:14:fe", "{gw20}");
    assert_eq!(gw10["mtu"], 1500, "{gw10}");
    let gw10_mac = gw10["mac"].as_str().unwrap().to_string();
    assert_ne!(
        gw10_mac,
        gw20["mac"].as_str().unwrap(),
        "one MAC per interface"
    );

    // Across the router, both ways, IPv4 and IPv6 (ARP and ND with the gateway first).
    assert_reaches(&t.a, "10.42.1.2", "VLAN 10 -> VLAN 20");
    assert_reaches(&t.b, "10.42.0.2", "VLAN 20 -> VLAN 10");
    assert_reaches(&t.a, "fd42:1::2", "VLAN 10 -> VLAN 20 (IPv6)");
    assert_reaches(&t.b, "fd42::2", "VLAN 20 -> VLAN 10 (IPv6)");
    // The containers resolved their gateway to the interface's MAC, by ARP and by ND.
    assert_eq!(t.a.neighbour("10.42.0.1").as_deref(), Some(&*gw10_mac));
    assert_eq!(t.a.neighbour("fd42::1").as_deref(), Some(&*gw10_mac));
    assert_eq!(
        t.b.neighbour("10.42.1.1").as_deref(),
        Some("02:00:00:00:14:fe")
    );
    assert_eq!(
        t.b.neighbour("fd42:1::1").as_deref(),
        Some("02:00:00:00:14:fe")
    );
    // The replies crossed one router: TTL and hop limit 64 less one.
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "10.42.1.2"],
        &["from 10.42.1.2", "ttl=63"],
        "IPv4 TTL",
    );
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "fd42:1::2"],
        &["from fd42:1::2", "ttl=63"],
        "IPv6 hop limit",
    );

    // The gateway answers echo on all of its addresses, its own VLAN's and the other's.
    let echoes = |sw: &Switch| if_stat(sw, 10, "echo_replies") + if_stat(sw, 20, "echo_replies");
    let before = echoes(sw);
    for gw in ["10.42.0.1", "10.42.1.1", "fd42::1", "fd42:1::1"] {
        assert_reaches(&t.a, gw, "a -> a gateway address");
    }
    assert_reaches(&t.b, "10.42.0.1", "b -> the other VLAN's gateway");
    // A reply from the gateway itself: no hop on the way.
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "10.42.1.1"],
        &["from 10.42.1.1", "ttl=64"],
        "gateway TTL",
    );
    assert!(
        echoes(sw) >= before + 16,
        "echo_replies {} -> {}",
        before,
        echoes(sw)
    );

    // Bulk TCP both ways, every byte checked.
    let (rx10, tx20) = (if_stat(sw, 10, "rx_bytes"), if_stat(sw, 20, "tx_bytes"));
    tcp(&t.b, "10.42.1.2", &t.a, TCP_BYTES, "VLAN 10 -> VLAN 20");
    tcp(&t.a, "10.42.0.2", &t.b, TCP_BYTES, "VLAN 20 -> VLAN 10");
    // The router counted the transfers in on one interface and out on the other.
    assert!(if_stat(sw, 10, "rx_bytes") >= rx10 + TCP_BYTES);
    assert!(if_stat(sw, 20, "tx_bytes") >= tx20 + TCP_BYTES);
    assert!(if_stat(sw, 20, "rx_bytes") >= TCP_BYTES);
    assert!(if_stat(sw, 10, "tx_bytes") >= TCP_BYTES);
    for vlan in [10, 20] {
        // 4 MiB each way: at least 64 frames even when they cross as 64 KiB super-frames.
        assert!(if_stat(sw, vlan, "rx_packets") > 64);
        assert!(if_stat(sw, vlan, "tx_packets") > 64);
        assert!(
            if_stat(sw, vlan, "neigh_probes") >= 1,
            "the router resolved its neighbours itself"
        );
        for reason in [
            "bad_ip_header",
            "ttl_exceeded",
            "no_route",
            "neighbour_failed",
        ] {
            assert_eq!(if_drop(sw, vlan, reason), 0, "interface {vlan}: {reason}");
        }
    }
    assert!(
        if_stat(sw, 10, "neigh_replies") >= 1,
        "a asked for its gateway"
    );
    // `stats -j` carries the same interfaces.
    let stats = sw.json(&["stats"]);
    let vlans: Vec<u64> = stats["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("no stats.interfaces: {stats}"))
        .iter()
        .map(|i| i["vlan"].as_u64().unwrap())
        .collect();
    assert_eq!(vlans, [10, 20], "{stats}");
    assert!(stats["interfaces"][0]["rx_bytes"].as_u64().unwrap() >= TCP_BYTES);
    // The TAP ports carried it too (L2 counters under the router).
    assert!(sw.port_stats(&t.pb)["tx_bytes"].as_u64().unwrap() >= TCP_BYTES);
    assert!(sw.port_stats(&t.pa)["rx_bytes"].as_u64().unwrap() >= TCP_BYTES);

    // The router resolved both containers, IPv4 and IPv6, to their MACs.
    for (ip, mac, vlan) in [
        ("10.42.0.2", MAC_A, 10),
        ("fd42::2", MAC_A, 10),
        ("10.42.1.2", MAC_B, 20),
        ("fd42:1::2", MAC_B, 20),
    ] {
        let e = next_hop(sw, ip)
            .unwrap_or_else(|| panic!("{ip} not in {}", sw.json(&["neigh", "show"])));
        assert_eq!(e["mac"], mac, "{e}");
        assert_eq!(e["vlan"], vlan, "{e}");
        let state = e["state"].as_str().unwrap();
        assert!(state == "REACHABLE" || state == "STALE", "{e}");
        assert_eq!(e["queued"], 0, "{e}");
    }
    // The text form too.
    let text = sw.cli(&["neigh", "show"]);
    assert!(
        text.lines()
            .any(|l| l.contains("10.42.1.2") && l.contains(MAC_B)),
        "{text}"
    );
}

/// The hops `ping -t TTL` finds from `ns` to `dst`, as traceroute would: the address that
/// answers with "time exceeded" for TTL 1, 2, ..., then `dst` itself.
fn trace(ns: &Netns, dst: &str, max: u32) -> Vec<String> {
    let mut hops = Vec::new();
    let six = dst.contains(':');
    for ttl in 1..=max {
        let ttl_s = ttl.to_string();
        let mut args = vec!["-c", "1", "-W", "2", "-n", "-t", &ttl_s, dst];
        if six {
            args.insert(0, "-6");
        }
        let mut hop = None;
        for _ in 0..3 {
            let out = ping_cmd(ns, &args);
            if out.contains(&format!("bytes from {dst}")) {
                hop = Some(dst.to_string());
            } else if let Some(line) = out.lines().find(|l| {
                l.starts_with("From ")
                    && (l.contains("Time to live exceeded") || l.contains("Time exceeded"))
            }) {
                hop = line.split_whitespace().nth(1).map(str::to_string);
            }
            if hop.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let hop = hop.unwrap_or_else(|| "*".to_string());
        let done = hop == dst;
        hops.push(hop);
        if done {
            break;
        }
    }
    hops
}

#[test]
fn ttl_behaves_like_a_router() {
    if !have_root() {
        return;
    }
    let t = two_vlans(true, &[]);
    let sw = &t.switch;
    sw.cli(&["route", "add", "10.99.0.0/16", "--unreachable"]);
    sw.cli(&["route", "add", "fd99::/32", "--unreachable"]);
    let fib = routes(sw);
    assert_eq!(fib["10.99.0.0/16"]["type"], "unreachable", "{fib:?}");
    assert_reaches(&t.a, "10.42.1.2", "warm-up");
    assert_reaches(&t.a, "fd42:1::2", "warm-up (IPv6)");

    // TTL 1 dies at the gateway, which says so; TTL 2 gets through.
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "-t", "1", "10.42.1.2"],
        &["From 10.42.0.1 icmp_seq=1 Time to live exceeded"],
        "TTL 1",
    );
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "-t", "2", "10.42.1.2"],
        &["bytes from 10.42.1.2", "1 received"],
        "TTL 2",
    );
    ping_expect(
        &t.a,
        &["-6", "-c", "1", "-W", "2", "-t", "1", "fd42:1::2"],
        &["From fd42::1 icmp_seq=1 Time exceeded: Hop limit"],
        "hop limit 1",
    );
    ping_expect(
        &t.a,
        &["-6", "-c", "1", "-W", "2", "-t", "2", "fd42:1::2"],
        &["bytes from fd42:1::2", "1 received"],
        "hop limit 2",
    );
    // As traceroute sees it: one hop (the gateway), then the destination.
    assert_eq!(trace(&t.a, "10.42.1.2", 4), ["10.42.0.1", "10.42.1.2"]);
    assert_eq!(trace(&t.b, "10.42.0.2", 4), ["10.42.1.1", "10.42.0.2"]);
    assert_eq!(trace(&t.a, "fd42:1::2", 4), ["fd42::1", "fd42:1::2"]);
    assert!(if_drop(sw, 10, "ttl_exceeded") >= 4);
    assert!(if_stat(sw, 10, "icmp_errors") >= 4);

    // A route that says unreachable: host unreachable from the gateway.
    let errors = if_stat(sw, 10, "icmp_errors");
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "10.99.3.4"],
        &["From 10.42.0.1 icmp_seq=1 Destination Host Unreachable"],
        "unreachable route",
    );
    ping_expect(
        &t.a,
        &["-6", "-c", "1", "-W", "2", "fd99::1"],
        // As Linux does for an IPv6 unreachable route: code 0, no route.
        &["From fd42::1 icmp_seq=1 Destination unreachable: No route"],
        "unreachable route (IPv6)",
    );
    // No route at all (there is no default route): net unreachable.
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "10.77.0.1"],
        &["From 10.42.0.1 icmp_seq=1 Destination Net Unreachable"],
        "no route",
    );
    ping_expect(
        &t.a,
        &["-6", "-c", "1", "-W", "2", "fd77::1"],
        &["From fd42::1 icmp_seq=1 Destination unreachable: No route"],
        "no route (IPv6)",
    );
    assert!(if_drop(sw, 10, "no_route") >= 2);
    assert!(if_stat(sw, 10, "icmp_errors") >= errors + 4);

    // A next hop on a connected subnet that nobody answers for: the router gives up after
    // its probes and says host (address) unreachable; the entry shows the failure. IPv4 and
    // IPv6 at the same time, as each takes a few seconds.
    std::thread::scope(|s| {
        s.spawn(|| {
            ping_expect(
                &t.a,
                &["-c", "1", "-W", "6", "10.42.1.77"],
                &["From 10.42.0.1 icmp_seq=1 Destination Host Unreachable"],
                "unresolved next hop",
            )
        });
        s.spawn(|| {
            ping_expect(
                &t.a,
                &["-6", "-c", "1", "-W", "6", "fd42:1::77"],
                &["From fd42::1 icmp_seq=1 Destination unreachable: Address unreachable"],
                "unresolved next hop (IPv6)",
            )
        });
    });
    for ip in ["10.42.1.77", "fd42:1::77"] {
        let e = next_hop(sw, ip).expect("the unresolved next hop is listed");
        assert!(e["state"] == "FAILED" || e["state"] == "INCOMPLETE", "{e}");
        assert!(e["mac"].is_null(), "{e}");
        assert_eq!(e["vlan"], 20, "{e}");
        assert!(e["probes"].as_u64().unwrap() >= 1, "{e}");
    }
    // Counted on the interface of the next hop that failed.
    assert!(if_drop(sw, 10, "neighbour_failed") + if_drop(sw, 20, "neighbour_failed") >= 2);
    assert!(if_stat(sw, 20, "neigh_probes") >= 6);

    // A burst of TTL-1 packets, faster than the ICMP rate limit (as Linux: bursts of 50,
    // 1000 a second): the router answers the first ones and counts the rest.
    let gw_mac: Vec<u8> = interface(sw, 10)["mac"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let mut frame = gw_mac.clone();
    frame.extend_from_slice(&[2, 0, 0, 0x2a, 0, 2, 0x08, 0x00]);
    frame.extend_from_slice(&echo_packet(
        Ipv4Addr::new(10, 42, 0, 2),
        Ipv4Addr::new(10, 42, 1, 2),
        0x7a7a,
        1,
    ));
    let raw = probe::RawPort::open(&t.a, &t.pa).unwrap();
    let (ttl0, sent0, limited0) = (
        if_drop(sw, 10, "ttl_exceeded"),
        if_stat(sw, 10, "icmp_errors"),
        if_stat(sw, 10, "icmp_rate_limited"),
    );
    for _ in 0..300 {
        raw.send(&frame).unwrap();
    }
    let mut expired = 0;
    eventually("the burst arrives", || {
        let now = if_drop(sw, 10, "ttl_exceeded") - ttl0;
        let settled = now == expired && now > 0;
        expired = now;
        std::thread::sleep(Duration::from_millis(100));
        settled
    });
    let sent = if_stat(sw, 10, "icmp_errors") - sent0;
    let limited = if_stat(sw, 10, "icmp_rate_limited") - limited0;
    eprintln!("burst: {expired} expired, {sent} answered, {limited} rate limited");
    assert!(expired >= 200, "only {expired} of 300 reached the router");
    assert_eq!(
        sent + limited,
        expired,
        "every expired packet answered or limited"
    );
    assert!(sent >= 50, "the burst of 50 is answered: {sent}");
    assert!(limited >= 50, "no rate limit: {sent} answered of {expired}");

    // None of this disturbed the working path.
    assert_reaches(&t.a, "10.42.1.2", "after the errors");
}

#[test]
fn egress_mtu_gets_frag_needed_or_fragments() {
    if !have_root() {
        return;
    }
    // VLAN 20's interface has an MTU of 1400; the containers' links are 1500.
    let t = two_vlans(true, &["--mtu", "1400"]);
    let sw = &t.switch;
    assert_eq!(interface(sw, 20)["mtu"], 1400);
    assert_reaches(&t.a, "10.42.1.2", "warm-up");
    assert_reaches(&t.a, "fd42:1::2", "warm-up (IPv6)");

    // Without DF the router fragments: a 1428-byte packet arrives as two, and the echo
    // reply (1428 bytes the other way, within VLAN 10's 1500) comes back whole (ping counts
    // the ICMP message: 1408 bytes).
    ping_expect(
        &t.a,
        &[
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "dont",
            "-s",
            "1400",
            "10.42.1.2",
        ],
        &["1408 bytes from 10.42.1.2", "1 received"],
        "fragmented by the router",
    );
    assert!(if_stat(sw, 20, "fragmented") + if_stat(sw, 10, "fragmented") >= 1);
    // With DF: frag needed with the egress MTU, and the container's kernel learns it.
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1400", "10.42.1.2"],
        &["From 10.42.0.1 icmp_seq=1 Frag needed and DF set (mtu = 1400)"],
        "DF, too big",
    );
    let route = t.a.ip(&["route", "get", "10.42.1.2"]).unwrap();
    assert!(route.contains("mtu 1400"), "PMTU not learned: {route}");
    ping_expect(
        &t.a,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1372", "10.42.1.2"],
        &["1380 bytes from 10.42.1.2", "1 received"],
        "DF, fits (1400 bytes)",
    );
    assert!(if_drop(sw, 10, "frag_needed") >= 1);
    // IPv6 routers never fragment: packet too big.
    ping_expect(
        &t.a,
        &["-6", "-c", "1", "-W", "2", "-s", "1400", "fd42:1::2"],
        &["From fd42::1 icmp_seq=1 Packet too big: mtu=1400"],
        "IPv6 too big",
    );
    let route6 = t.a.ip(&["-6", "route", "get", "fd42:1::2"]).unwrap();
    assert!(
        route6.contains("mtu 1400"),
        "IPv6 PMTU not learned: {route6}"
    );
    // TCP adapts to the path MTU both ways.
    tcp(&t.b, "10.42.1.2", &t.a, TCP_BYTES, "into the small MTU");
    tcp(&t.a, "10.42.0.2", &t.b, TCP_BYTES, "out of the small MTU");
}

#[test]
fn routing_errors_change_nothing() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    sw.cli(&[
        "interface",
        "add",
        "10",
        "--address",
        "10.42.0.1/24,fd42::1/64",
    ]);
    sw.cli(&["interface", "add", "20", "--address", "10.42.1.1/24"]);
    sw.cli(&["route", "add", "10.42.2.0/24", "--via", "10.42.1.5"]);
    sw.cli(&["route", "add", "10.99.0.0/16", "--unreachable"]);
    let routes_before = sw.json(&["route", "show"]);
    let ifaces_before = sw.json(&["interface", "list"]);
    let r = &routes(&sw)["10.42.2.0/24"];
    assert_eq!(
        (&r["type"], &r["via"], &r["vlan"]),
        (&"static".into(), &"10.42.1.5".into(), &20.into()),
        "{r}"
    );

    let cases: &[(&[&str], &[&str])] = &[
        // A gateway not on any interface's subnet.
        (
            &["route", "add", "10.42.3.0/24", "--via", "10.9.9.9"],
            &["via", "10.9.9.9"],
        ),
        // Not an address.
        (
            &["interface", "add", "30", "--address", "bogus"],
            &["address"],
        ),
        // Host bits set in the prefix.
        (
            &["route", "add", "10.42.1.1/24", "--via", "10.42.0.9"],
            &["prefix"],
        ),
        // Deleting what is not there.
        (&["route", "del", "10.77.0.0/16"], &["no such route"]),
        (&["interface", "del", "99"], &["no such interface"]),
        // No next hop at all.
        (&["route", "add", "10.42.3.0/24"], &["via"]),
        // An unknown encapsulation.
        (
            &[
                "route",
                "add",
                "10.42.3.0/24",
                "--via",
                "10.42.0.9",
                "--encap",
                "gre",
            ],
            &["encap"],
        ),
        // A next hop of the other address family.
        (
            &["route", "add", "fd42:3::/64", "--via", "10.42.0.9"],
            &["via"],
        ),
        // The router's own address as next hop.
        (
            &["route", "add", "10.42.3.0/24", "--via", "10.42.0.1"],
            &["via"],
        ),
        // An interface address that cannot be one.
        (
            &["interface", "add", "30", "--address", "224.0.0.1/24"],
            &["address"],
        ),
        (
            &[
                "interface",
                "add",
                "30",
                "--address",
                "10.50.0.1/24",
                "--mtu",
                "10",
            ],
            &["mtu"],
        ),
    ];
    for (args, needles) in cases {
        let out = cli(&sw.socket, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "tapswitch {}: should fail (stdout {:?}, stderr {err:?})",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        for n in *needles {
            assert!(
                err.contains(n),
                "tapswitch {}: error does not name {n:?}: {err}",
                args.join(" ")
            );
        }
        assert_eq!(
            sw.json(&["route", "show"]),
            routes_before,
            "after tapswitch {}",
            args.join(" ")
        );
        assert_eq!(
            sw.json(&["interface", "list"]),
            ifaces_before,
            "after tapswitch {}",
            args.join(" ")
        );
    }
    // And what works still works: deleting the static route, then the interface.
    sw.cli(&["route", "del", "10.42.2.0/24"]);
    assert!(!routes(&sw).contains_key("10.42.2.0/24"));
    sw.cli(&["interface", "del", "20"]);
    let fib = routes(&sw);
    assert!(!fib.contains_key("10.42.1.0/24"), "{fib:?}");
    assert!(fib.contains_key("10.42.0.0/24"), "{fib:?}");
}

// ---------------------------------------------------------------------------------------
// An uplink and a default route
// ---------------------------------------------------------------------------------------

#[test]
fn default_route_through_an_uplink_reaches_outside() {
    if !have_root() {
        return;
    }
    let outside_mac = "02:00:00:c8:00:fe";
    // "wire" holds tapswitch's end of the uplink veth (no address on it); "outside" is the
    // rest of the world: 10.200.0.254 on the uplink subnet, and 10.250.0.1 further away.
    let wire = container("rtw", false);
    let outside = container("rto", false);
    let (up, out_if) = (unique("rup"), unique("rout"));
    wire.ip(&[
        "link",
        "add",
        &up,
        "type",
        "veth",
        "peer",
        "name",
        &out_if,
        "netns",
        outside.name(),
    ])
    .expect("uplink veth");
    outside
        .ip(&["link", "set", &out_if, "address", outside_mac])
        .unwrap();
    outside.add_addr(&out_if, "10.200.0.254/24").unwrap();
    outside.ip(&["link", "set", &out_if, "up"]).unwrap();
    outside.add_addr("lo", "10.250.0.1/32").unwrap();
    outside
        .ip(&["route", "add", "10.42.0.0/16", "via", "10.200.0.1"])
        .unwrap();
    // Started after the namespaces, so it stops (and releases the uplink) before they go.
    let sw = Switch::start();
    sw.cli(&[
        "port",
        "add",
        &up,
        "--attach",
        "--netns",
        wire.name(),
        "--vlan",
        "100",
    ]);
    sw.cli(&["interface", "add", "100", "--address", "10.200.0.1/24"]);
    sw.cli(&["interface", "add", "10", "--address", "10.42.0.1/24"]);
    sw.cli(&["route", "add", "0.0.0.0/0", "--via", "10.200.0.254"]);
    let (a, _pa) = routed_container(&sw, 10, MAC_A, &["10.42.0.2/24"], &["10.42.0.1"]);
    assert!(
        wire.ip(&["-4", "addr", "show", "dev", &up])
            .unwrap()
            .lines()
            .all(|l| !l.contains("inet ")),
        "the attached end has no address"
    );
    let fib = routes(&sw);
    let d = &fib["0.0.0.0/0"];
    assert_eq!(
        (&d["type"], &d["via"], &d["vlan"]),
        (&"static".into(), &"10.200.0.254".into(), &100.into()),
        "{d}"
    );

    // The outside world reaches the router's uplink address: tapswitch answers ARP and echo.
    assert_reaches(&outside, "10.200.0.1", "outside -> uplink interface");
    let up_mac = interface(&sw, 100)["mac"].as_str().unwrap().to_string();
    assert_eq!(outside.neighbour("10.200.0.1").as_deref(), Some(&*up_mac));
    // The container reaches the next hop and, by the default route, what is behind it.
    assert_reaches(&a, "10.200.0.254", "container -> uplink next hop");
    assert_reaches(&a, "10.250.0.1", "container -> beyond the default route");
    assert_reaches(&outside, "10.42.0.2", "outside -> container");
    assert_reaches(&outside, "10.42.0.1", "outside -> the container's gateway");
    ping_expect(
        &a,
        &["-c", "1", "-W", "2", "10.250.0.1"],
        &["from 10.250.0.1", "ttl=63"],
        "one router on the way",
    );
    // TCP both ways; what the outside's veth sends arrives with checksums left to offload
    // and as TSO super-frames, which tapswitch has to finish and cut before routing them.
    tcp(
        &outside,
        "10.250.0.1",
        &a,
        TCP_BYTES,
        "container -> outside",
    );
    tcp(&a, "10.42.0.2", &outside, TCP_BYTES, "outside -> container");
    assert!(if_stat(&sw, 100, "rx_bytes") >= TCP_BYTES);
    assert!(if_stat(&sw, 100, "tx_bytes") >= TCP_BYTES);
    assert_eq!(drops(&sw, &up, "bad_offload"), 0);

    // The router resolved the outside's next hop to its MAC on VLAN 100.
    let e = next_hop(&sw, "10.200.0.254").expect("next hop listed");
    assert_eq!(
        (&e["mac"], &e["vlan"]),
        (&outside_mac.into(), &100.into()),
        "{e}"
    );
    assert!(e["state"] == "REACHABLE" || e["state"] == "STALE", "{e}");

    // Without the default route the outside is out of reach again: net unreachable.
    sw.cli(&["route", "del", "0.0.0.0/0"]);
    ping_expect(
        &a,
        &["-c", "1", "-W", "2", "10.250.0.1"],
        &["From 10.42.0.1 icmp_seq=1 Destination Net Unreachable"],
        "default route removed",
    );
    assert_reaches(&a, "10.200.0.254", "the connected subnet stays");
}

// ---------------------------------------------------------------------------------------
// Two hosts, host-gw: next hops on a shared L2 underlay
// ---------------------------------------------------------------------------------------

#[test]
fn host_gw_between_two_hosts() {
    if !have_root() {
        return;
    }
    let hosts = host_pair();
    let (mac_ua, mac_ub) = ("02:00:00:cd:00:02", "02:00:00:cd:00:03");
    // Host A from a configuration file (its container must exist first), host B by CLI.
    let ca = container("rtc", false);
    let pa = unique("rp");
    let config = format!(
        r#"
[[port]]
name = "{a_if}"
attach = true
netns = "{ha}"
vlan = 100

[[port]]
name = "{pa}"
netns = "{ca}"
mac = "{MAC_A}"
vlan = 10

[[interface]]
vlan = 10
address = "10.42.0.1/24"

[[interface]]
vlan = 100
address = ["{A_UL}/24"]
mac = "{mac_ua}"

[[route]]
prefix = "10.42.1.0/24"
via = "{B_UL_GW}"
"#,
        a_if = hosts.a_if,
        ha = hosts.a.name(),
        ca = ca.name(),
    );
    let sa = Switch::start_in(&hosts.a, Some(&config));
    ca.add_addr(&pa, "10.42.0.2/24").unwrap();
    ca.ip(&["route", "add", "default", "via", "10.42.0.1"])
        .unwrap();

    let sb = Switch::start_in(&hosts.b, None);
    sb.cli(&["port", "add", &hosts.b_if, "--attach", "--vlan", "100"]);
    sb.cli(&[
        "interface",
        "add",
        "100",
        "--address",
        &format!("{B_UL_GW}/24"),
        "--mac",
        mac_ub,
    ]);
    sb.cli(&["interface", "add", "10", "--address", "10.42.1.1/24"]);
    sb.cli(&["route", "add", "10.42.0.0/24", "--via", A_UL]);
    let (cb, _pb) = routed_container(&sb, 10, MAC_B, &["10.42.1.2/24"], &["10.42.1.1"]);

    let r = &routes(&sa)["10.42.1.0/24"];
    assert_eq!(
        (&r["type"], &r["via"], &r["vlan"]),
        (&"static".into(), &B_UL_GW.into(), &100.into()),
        "{r}"
    );
    // The running configuration says what the file said.
    let running = sa.cli(&["config"]);
    assert!(
        running.contains("[[route]]") && running.contains(B_UL_GW),
        "{running}"
    );

    // The routers reach each other on the underlay, then the containers each other.
    assert_reaches(&ca, B_UL_GW, "container A -> router B's underlay address");
    assert_reaches(&ca, "10.42.1.2", "container A -> container B");
    assert_reaches(&cb, "10.42.0.2", "container B -> container A");
    ping_expect(
        &ca,
        &["-c", "1", "-W", "2", "10.42.1.2"],
        &["from 10.42.1.2", "ttl=62"],
        "two routers on the way",
    );
    assert_eq!(
        trace(&ca, "10.42.1.2", 4),
        ["10.42.0.1", B_UL_GW, "10.42.1.2"]
    );
    tcp(
        &cb,
        "10.42.1.2",
        &ca,
        TCP_BYTES,
        "host A -> host B (host-gw)",
    );
    tcp(
        &ca,
        "10.42.0.2",
        &cb,
        TCP_BYTES,
        "host B -> host A (host-gw)",
    );

    // Each router resolved the other's underlay address to its interface MAC.
    for (sw, peer, mac) in [(&sa, B_UL_GW, mac_ub), (&sb, A_UL, mac_ua)] {
        let e = next_hop(sw, peer).unwrap_or_else(|| panic!("{peer} not resolved"));
        assert_eq!((&e["mac"], &e["vlan"]), (&mac.into(), &100.into()), "{e}");
        assert!(e["state"] == "REACHABLE" || e["state"] == "STALE", "{e}");
        assert!(if_stat(sw, 100, "tx_bytes") >= TCP_BYTES);
        assert!(if_stat(sw, 100, "rx_bytes") >= TCP_BYTES);
    }
    // host-gw sends nothing through IPIP.
    assert_eq!(stat(&sa, "ipip", "tx_packets"), 0);
}

// ---------------------------------------------------------------------------------------
// Two hosts, IPIP: the hosts' kernels route the outer packets
// ---------------------------------------------------------------------------------------

/// Two hosts with addresses on their underlay veth (A 192.168.205.2, B .5), each running a
/// tapswitch with one container on VLAN 10 (10.42.0.2 on A, 10.42.1.2 on B) and an IPIP
/// route to the other's container subnet. Fields drop in order: the switches (which remove
/// their TAP ports) first, the hosts last.
struct IpipHosts {
    sa: Switch,
    sb: Switch,
    ca: Netns,
    pa: String,
    cb: Netns,
    hosts: HostPair,
}

fn ipip_hosts(route_b_extra: &[&str]) -> IpipHosts {
    let (hosts, sa, sb) = ipip_switches(route_b_extra);
    let (ca, pa) = routed_container(&sa, 10, MAC_A, &["10.42.0.2/24"], &["10.42.0.1"]);
    let (cb, _pb) = routed_container(&sb, 10, MAC_B, &["10.42.1.2/24"], &["10.42.1.1"]);
    IpipHosts {
        sa,
        sb,
        ca,
        pa,
        cb,
        hosts,
    }
}

/// The hosts and switches of `ipip_hosts`, without containers: router interfaces 10.42.0.1
/// on A and 10.42.1.1 on B (VLAN 10) and the IPIP routes between the two subnets.
fn ipip_switches(route_b_extra: &[&str]) -> (HostPair, Switch, Switch) {
    let hosts = host_pair();
    hosts
        .a
        .add_addr(&hosts.a_if, &format!("{A_UL}/24"))
        .unwrap();
    hosts
        .b
        .add_addr(&hosts.b_if, &format!("{B_UL}/24"))
        .unwrap();
    let sa = Switch::start_in(&hosts.a, None);
    sa.cli(&["interface", "add", "10", "--address", "10.42.0.1/24"]);
    sa.cli(&[
        "route",
        "add",
        "10.42.1.0/24",
        "--via",
        B_UL,
        "--encap",
        "ipip",
    ]);
    let sb = Switch::start_in(&hosts.b, None);
    sb.cli(&["interface", "add", "10", "--address", "10.42.1.1/24"]);
    let mut args = vec![
        "route",
        "add",
        "10.42.0.0/24",
        "--via",
        A_UL,
        "--encap",
        "ipip",
    ];
    args.extend_from_slice(route_b_extra);
    sb.cli(&args);
    (hosts, sa, sb)
}

#[test]
fn ipip_between_two_tapswitch_hosts() {
    if !have_root() {
        return;
    }
    let t = ipip_hosts(&[]);
    let r = &routes(&t.sa)["10.42.1.0/24"];
    assert_eq!(
        (&r["type"], &r["via"], &r["encap"], &r["mtu"]),
        (&"static".into(), &B_UL.into(), &"ipip".into(), &1480.into()),
        "{r}"
    );

    // Capture the underlay on host B while the containers talk.
    let mut capture = Capture::start(&t.hosts.b, &t.hosts.b_if, "ip proto 4");
    assert_reaches(&t.ca, "10.42.1.2", "A -> B over IPIP");
    assert_reaches(&t.cb, "10.42.0.2", "B -> A over IPIP");
    ping_expect(
        &t.ca,
        &["-c", "1", "-W", "2", "10.42.1.2"],
        &["from 10.42.1.2", "ttl=62"],
        "two routers on the way",
    );
    tcp(
        &t.cb,
        "10.42.1.2",
        &t.ca,
        1 << 20,
        "A -> B over IPIP (captured)",
    );
    tcp(
        &t.ca,
        "10.42.0.2",
        &t.cb,
        1 << 20,
        "B -> A over IPIP (captured)",
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(capture.finish(), 0, "tcpdump could not keep up");
    let packets = tshark_decode(&capture.file);
    assert!(packets.len() > 200, "captured {} packets", packets.len());
    let mut tcp_bytes: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut icmp = 0;
    for p in &packets {
        let show = format!("{p:?}");
        // Two IPv4 headers: the outer one (protocol 4) between the hosts, the inner one
        // between the containers, in the same direction.
        assert_eq!(p["ip.src"].len(), 2, "outer and inner IPv4: {show}");
        assert_eq!(first(p, "ip.proto"), "4", "{show}");
        let (osrc, odst) = (first(p, "ip.src"), first(p, "ip.dst"));
        let (isrc, idst) = (last(p, "ip.src"), last(p, "ip.dst"));
        match (osrc, odst) {
            (A_UL, B_UL) => assert_eq!((isrc, idst), ("10.42.0.2", "10.42.1.2"), "{show}"),
            (B_UL, A_UL) => assert_eq!((isrc, idst), ("10.42.1.2", "10.42.0.2"), "{show}"),
            _ => panic!("outer addresses are not the hosts': {show}"),
        }
        // Outer TTL: the route's default; inner TTL: the sender's 64 less one hop.
        assert_eq!(first(p, "ip.ttl"), "64", "outer TTL: {show}");
        assert_eq!(last(p, "ip.ttl"), "63", "inner TTL: {show}");
        // Outer length: the inner packet and 20 bytes.
        let (olen, ilen): (u32, u32) = (
            first(p, "ip.len").parse().unwrap(),
            last(p, "ip.len").parse().unwrap(),
        );
        assert_eq!(olen, ilen + 20, "{show}");
        assert!(
            ilen <= 1480,
            "inner packet larger than the tunnel MTU: {show}"
        );
        match last(p, "ip.proto") {
            "1" => icmp += 1,
            "6" => {
                let flow = (last(p, "tcp.srcport").into(), last(p, "tcp.dstport").into());
                *tcp_bytes.entry(flow).or_default() +=
                    last(p, "tcp.len").parse::<u64>().unwrap_or(0);
            }
            other => panic!("inner protocol {other}: {show}"),
        }
    }
    assert!(icmp >= 12, "{icmp} ICMP packets captured");
    let streams: Vec<u64> = tcp_bytes.values().copied().filter(|b| *b > 0).collect();
    assert_eq!(streams.len(), 2, "two TCP streams with data: {tcp_bytes:?}");
    assert!(streams.iter().all(|b| *b >= 1 << 20), "{tcp_bytes:?}");

    // As traceroute sees it: router B answers from its interface address, and its time
    // exceeded comes back through the tunnel.
    assert_eq!(
        trace(&t.ca, "10.42.1.2", 4),
        ["10.42.0.1", "10.42.1.1", "10.42.1.2"]
    );
    assert_eq!(
        trace(&t.cb, "10.42.0.2", 4),
        ["10.42.1.1", "10.42.0.1", "10.42.0.2"]
    );

    // Bulk, uncaptured.
    tcp(&t.cb, "10.42.1.2", &t.ca, TCP_BYTES, "A -> B over IPIP");
    tcp(&t.ca, "10.42.0.2", &t.cb, TCP_BYTES, "B -> A over IPIP");
    for sw in [&t.sa, &t.sb] {
        let ipip = sw.json(&["stats"])["ipip"].clone();
        assert!(ipip["tx_packets"].as_u64().unwrap() > 1000, "{ipip}");
        assert!(ipip["rx_packets"].as_u64().unwrap() > 1000, "{ipip}");
        assert_eq!(ipip["tx_errors"], 0, "{ipip}");
        // The trace's packets that reached the far router with TTL 1 came out of the
        // tunnel; nothing else was dropped.
        assert!(
            ipip["drops"]["ttl_exceeded"].as_u64().unwrap() >= 1,
            "{ipip}"
        );
        let dropped: u64 = ipip["drops"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "ttl_exceeded")
            .map(|(_, v)| v.as_u64().unwrap())
            .sum();
        assert_eq!(dropped, 0, "{ipip}");
    }

    // IPIP from an address that is no route's `via` is dropped and counted; from the
    // peer it is taken. A second address on host B's underlay sends the stranger's.
    t.hosts
        .b
        .add_addr(&t.hosts.b_if, "192.168.205.9/24")
        .unwrap();
    let mut wire = probe::RawPort::open(&t.ca, &t.pa).unwrap();
    let _ = wire.recv_for(Duration::from_millis(50));
    let (stranger_id, peer_id) = (0x7a01, 0x7a02);
    let (inner_src, inner_dst) = (Ipv4Addr::new(10, 42, 1, 2), Ipv4Addr::new(10, 42, 0, 2));
    for _ in 0..2 {
        send_ipip(
            &t.hosts.b,
            "192.168.205.9",
            A_UL,
            &echo_packet(inner_src, inner_dst, stranger_id, 64),
        );
    }
    send_ipip(
        &t.hosts.b,
        B_UL,
        A_UL,
        &echo_packet(inner_src, inner_dst, peer_id, 64),
    );
    // From the peer but too short to hold an inner IPv4 header.
    send_ipip(&t.hosts.b, B_UL, A_UL, &[0x45, 0, 0, 10, 0, 0, 0, 0, 64, 1]);
    eventually("ipip drops counted", || {
        ipip_drop(&t.sa, "ipip_source_not_allowed") >= 2 && ipip_drop(&t.sa, "ipip_malformed") >= 1
    });
    let frames = wire.recv_for(Duration::from_millis(300)).unwrap();
    assert!(
        frames.iter().any(|f| is_echo_with_ident(f, peer_id)),
        "the peer's IPIP packet was not routed to the container"
    );
    assert!(
        !frames.iter().any(|f| is_echo_with_ident(f, stranger_id)),
        "a stranger's IPIP packet reached the container"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ipip_drop(&t.sa, "ipip_source_not_allowed"), 2);
    assert_eq!(ipip_drop(&t.sa, "ipip_malformed"), 1);
    assert_reaches(&t.ca, "10.42.1.2", "after the strangers");
}

#[test]
fn ipip_fragmentation_needed() {
    if !have_root() {
        return;
    }
    // Host B's route has a smaller inner MTU than the default.
    let t = ipip_hosts(&["--mtu", "1400"]);
    assert_eq!(routes(&t.sb)["10.42.0.0/24"]["mtu"], 1400);
    assert_reaches(&t.ca, "10.42.1.2", "warm-up");

    // Without DF, a 1488-byte packet does not fit the 1480 of the tunnel: the router
    // fragments it (and host B's the 1488-byte reply, for its 1400).
    let mut capture = Capture::start(&t.hosts.b, &t.hosts.b_if, "ip proto 4");
    ping_expect(
        &t.ca,
        &[
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "dont",
            "-s",
            "1460",
            "10.42.1.2",
        ],
        &["1468 bytes from 10.42.1.2", "1 received"],
        "fragmented into the tunnel",
    );
    std::thread::sleep(Duration::from_millis(100));
    capture.finish();
    // On the underlay: the request as two IPIP packets (inner fragments at offsets 0 and
    // 1456 with MF on the first, 1476 + 32 bytes), the reply as two (B's tunnel MTU 1400: 1376 + 92 bytes).
    let packets = tshark_decode(&capture.file);
    let frags = |src: &str| -> Vec<(String, String, u32)> {
        packets
            .iter()
            .filter(|p| first(p, "ip.src") == src && p["ip.src"].len() == 2)
            .map(|p| {
                (
                    last(p, "ip.flags.mf").to_string(),
                    last(p, "ip.frag_offset").to_string(),
                    last(p, "ip.len").parse().unwrap(),
                )
            })
            .collect()
    };
    let (a_frags, b_frags) = (frags(A_UL), frags(B_UL));
    eprintln!("A -> B: {a_frags:?}; B -> A: {b_frags:?}");
    assert_eq!(a_frags.len(), 2, "{packets:?}");
    assert!(
        a_frags.iter().all(|(_, _, len)| *len <= 1480),
        "{a_frags:?}"
    );
    assert_eq!(
        a_frags.iter().map(|f| f.2 - 20).sum::<u32>(),
        1468,
        "{a_frags:?}"
    );
    assert!(
        a_frags
            .iter()
            .any(|(mf, off, _)| !is_false(mf) && off == "0"),
        "{a_frags:?}"
    );
    assert!(
        a_frags
            .iter()
            .any(|(mf, off, _)| is_false(mf) && off != "0"),
        "{a_frags:?}"
    );
    assert_eq!(b_frags.len(), 2, "{packets:?}");
    assert!(
        b_frags.iter().all(|(_, _, len)| *len <= 1400),
        "{b_frags:?}"
    );
    // With DF: frag needed with the tunnel's MTU, and the sender's kernel learns it.
    ping_expect(
        &t.ca,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1460", "10.42.1.2"],
        &["From 10.42.0.1 icmp_seq=1 Frag needed and DF set (mtu = 1480)"],
        "DF, too big for the tunnel",
    );
    let route = t.ca.ip(&["route", "get", "10.42.1.2"]).unwrap();
    assert!(route.contains("mtu 1480"), "PMTU not learned: {route}");
    let again = ping_cmd(
        &t.ca,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1460", "10.42.1.2"],
    );
    assert!(
        again.contains("message too long, mtu=1480"),
        "the kernel knows the path MTU now: {again}"
    );
    ping_expect(
        &t.ca,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1452", "10.42.1.2"],
        &["1460 bytes from 10.42.1.2", "1 received"],
        "DF, exactly the tunnel MTU",
    );
    assert!(if_drop(&t.sa, 10, "frag_needed") >= 1);
    // The other way, the configured MTU of B's route.
    ping_expect(
        &t.cb,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1400", "10.42.0.2"],
        &["From 10.42.1.1 icmp_seq=1 Frag needed and DF set (mtu = 1400)"],
        "DF, too big for B's tunnel",
    );
    // No outer packet was ever too big for the underlay.
    assert_eq!(stat(&t.sa, "ipip", "tx_oversized"), 0);
    assert_eq!(stat(&t.sb, "ipip", "tx_oversized"), 0);
    // TCP with the containers' 1460-byte MSS finds the path MTU by itself.
    tcp(
        &t.cb,
        "10.42.1.2",
        &t.ca,
        TCP_BYTES,
        "A -> B, path MTU discovery",
    );
    tcp(
        &t.ca,
        "10.42.0.2",
        &t.cb,
        TCP_BYTES,
        "B -> A, path MTU discovery",
    );
}

/// One port's `tx_bytes` / `tx_packets` (or `rx_`, by `dir`) since `before`, a `port_stats`
/// taken earlier: the average frame size in that direction.
fn bytes_per_frame(switch: &Switch, port: &str, before: &Value, dir: &str) -> u64 {
    let after = switch.port_stats(port);
    let delta = |k: &str| {
        let key = format!("{dir}_{k}");
        after[&key].as_u64().unwrap() - before[&key].as_u64().unwrap()
    };
    let frames = delta("packets");
    assert!(frames > 0, "{port}: no {dir} frames");
    delta("bytes") / frames
}

#[test]
fn tcp_over_ipip_with_offloads_on_and_off() {
    if !have_root() {
        return;
    }
    // Two tapswitch hosts routing 10.42.0.0/24 (A) and 10.42.1.0/24 (B) to each other over
    // IPIP, and a container on each; per combination each container gets a fresh TAP port
    // with offloads on or off (the namespaces, daemons and routes stay). The containers have
    // the default MTU of 1500, the tunnel 1480: TCP finds the path MTU through the router's
    // ICMP fragmentation needed. The containers are declared before the switches, so that on
    // a failed assertion the switches (which remove their TAP ports) go first.
    let (ca, cb) = (container("rto", false), container("rto", false));
    let (_hosts, sa, sb) = ipip_switches(&[]);
    let mut measured = Vec::new();
    for (on_a, on_b) in [(true, true), (true, false), (false, true), (false, false)] {
        let what = format!("IPIP, offloads a={on_a} b={on_b}");
        let flags = |on: bool| if on { vec![] } else { vec!["--no-offload"] };
        let pa = routed_port(
            &sa,
            &ca,
            10,
            MAC_A,
            &["10.42.0.2/24"],
            &["10.42.0.1"],
            &flags(on_a),
        );
        let pb = routed_port(
            &sb,
            &cb,
            10,
            MAC_B,
            &["10.42.1.2/24"],
            &["10.42.1.1"],
            &flags(on_b),
        );
        for (sw, port, on) in [(&sa, &pa, on_a), (&sb, &pb, on_b)] {
            let entry = listed_port(sw, port);
            assert_eq!(entry["offload"], on, "{what}: {entry}");
        }
        assert_reaches(&ca, "10.42.1.2", &what);

        let (a0, b0) = (sa.port_stats(&pa), sb.port_stats(&pb));
        let (ipip_a0, ipip_b0) = (
            sa.json(&["stats"])["ipip"].clone(),
            sb.json(&["stats"])["ipip"].clone(),
        );
        let frag0 = if_drop(&sa, 10, "frag_needed");
        tcp(&cb, "10.42.1.2", &ca, 8 << 20, &what);
        // Full-sized segments (1500 bytes) do not fit the 1480-byte tunnel: the sender gets
        // fragmentation needed, whether they came alone or in a super-frame, and adapts.
        assert!(
            if_drop(&sa, 10, "frag_needed") > frag0,
            "{what}: segments too big for the tunnel got fragmentation needed"
        );
        let sent = bytes_per_frame(&sa, &pa, &a0, "rx");
        let got = bytes_per_frame(&sb, &pb, &b0, "tx");
        eprintln!(
            "{what}: {sent} bytes per frame from A's container, {got} to B's; \
             frag_needed on A so far: {}",
            if_drop(&sa, 10, "frag_needed")
        );
        measured.push((on_a, on_b, sent, got));

        // A's container segments by itself exactly when its port takes no offloads.
        if on_a {
            assert!(
                sent > 1514,
                "{what}: super-frames from A's container ({sent})"
            );
        } else {
            assert!(sent <= 1514, "{what}: frames from A's container ({sent})");
        }
        // With B's offloads on nothing is asserted about the frame size: unlike VXLAN's, IPIP
        // decapsulation does not join segments, so B's container gets them one by one.
        if !on_b {
            // Out of a 1480-byte tunnel and cut to the port's MTU.
            assert!(got <= 1480 + 14, "{what}: frames to B's container ({got})");
        }
        for (sw, port) in [(&sa, &pa), (&sb, &pb)] {
            for reason in ["bad_offload", "oversized"] {
                assert_eq!(drops(sw, port, reason), 0, "{what}: {port} {reason}");
            }
            assert_eq!(
                sw.port_stats(port)["tx_oversized"].as_u64().unwrap_or(0),
                0,
                "{what}: {port} tx_oversized"
            );
        }
        // The tunnel carried the stream without an error, an outer packet too big for the
        // underlay or a drop.
        for (host, sw, before) in [("A", &sa, &ipip_a0), ("B", &sb, &ipip_b0)] {
            let ipip = sw.json(&["stats"])["ipip"].clone();
            assert!(
                ipip["tx_packets"].as_u64().unwrap() > before["tx_packets"].as_u64().unwrap() + 100,
                "{what}: host {host}: {ipip}"
            );
            assert_eq!(ipip["tx_oversized"], 0, "{what}: host {host}: {ipip}");
            assert_eq!(ipip["tx_errors"], 0, "{what}: host {host}: {ipip}");
            assert_eq!(all_drops(&ipip), 0, "{what}: host {host}: {ipip}");
        }
        sa.cli(&["port", "del", &pa]);
        sb.cli(&["port", "del", &pb]);
    }
    eprintln!("(A offload, B offload, bytes per frame from A's container, to B's): {measured:?}");
}

/// Whether this kernel can make `ipip` devices. Minimal kernels, CI's among them, are built
/// without CONFIG_NET_IPIP (`ip link add ... type ipip` says "Unknown device type").
fn kernel_makes_ipip_devices(ns: &Netns) -> bool {
    let probe_dev = unique("ripq");
    match ns.ip(&[
        "link",
        "add",
        &probe_dev,
        "type",
        "ipip",
        "local",
        "192.0.2.1",
        "remote",
        "192.0.2.2",
    ]) {
        Ok(_) => {
            let _ = ns.ip(&["link", "del", &probe_dev]);
            true
        }
        Err(e) => {
            eprintln!("this kernel cannot make ipip devices: {e}");
            false
        }
    }
}

/// Creates TUN device `name` (IFF_TUN | IFF_NO_PI: bare IP packets) in the namespace of the
/// calling thread; it exists as long as the returned file is open.
fn open_tun(name: &str) -> io::Result<File> {
    assert!(
        name.len() < libc::IFNAMSIZ,
        "interface name {name:?} too long"
    );
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data, for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF on an open /dev/net/tun reads and writes one ifreq, which `req` is.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

/// What [`TunIpip`]'s pump has done.
#[derive(Default)]
struct TunIpipCounters {
    /// Inner packets from the TUN device sent to the peer in an outer header.
    encapsulated: AtomicU64,
    /// Inner packets of the peer's IPIP packets written to the TUN device.
    decapsulated: AtomicU64,
    /// IPIP packets from other sources, malformed ones, non-IPv4 packets from the TUN
    /// device, and packets the kernel refused (sending or writing).
    ignored: AtomicU64,
}

/// Host B's IPIP endpoint on a kernel without `ipip` devices: a minimal RFC 2003
/// implementation whose inner traffic is still the kernel's own stack. The kernel routes
/// packets into TUN device `name`; a pump thread gives each an outer IPv4 header (version 4,
/// IHL 5, DF, TTL 64, protocol 4, `local` to `remote`) and sends it through a raw socket
/// that takes the header as given (IPPROTO_RAW). A raw IPPROTO_IPIP socket gets every IPIP
/// packet to `local` whole, outer header included; the pump strips that header off the
/// ones from `remote` and writes the inner packet to the TUN device. Dropping the guard stops
/// the pump (it polls with a short timeout) and joins it; its descriptors close with it, and
/// the TUN device disappears with the last one.
struct TunIpip {
    stop: Arc<AtomicBool>,
    counters: Arc<TunIpipCounters>,
    pump: Option<JoinHandle<io::Result<()>>>,
}

impl TunIpip {
    /// Creates the TUN device (down, no address; MTU 1480, as an ipip device's) and the raw
    /// sockets in `ns`, and starts the pump.
    fn start(ns: &Netns, name: &str, local: &str, remote: &str) -> TunIpip {
        let local: Ipv4Addr = local.parse().unwrap();
        let remote: Ipv4Addr = remote.parse().unwrap();
        let (tun, rx, tx) = ns
            .run(|| {
                let tun = open_tun(name)?;
                let rx = Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(Protocol::from(libc::IPPROTO_IPIP)),
                )?;
                // Only IPIP packets to the endpoint's own underlay address.
                rx.bind(&SocketAddr::from((local, 0)).into())?;
                rx.set_nonblocking(true)?;
                // Room for a burst of TCP while the pump is busy with the other direction.
                let size: libc::c_int = 4 << 20;
                // SAFETY: setsockopt with a pointer to a c_int and its size, on an open socket.
                let rc = unsafe {
                    libc::setsockopt(
                        rx.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                // IPPROTO_RAW implies IP_HDRINCL: the pump writes the outer header.
                let tx = Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(Protocol::from(libc::IPPROTO_RAW)),
                )?;
                Ok((tun, rx, tx))
            })
            .expect("TUN device and raw IPIP sockets");
        ns.ip(&["link", "set", name, "mtu", "1480"])
            .expect("TUN device MTU");
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(TunIpipCounters::default());
        let pump = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::spawn(move || ipip_pump(tun, rx, tx, local, remote, &stop, &counters))
        };
        TunIpip {
            stop,
            counters,
            pump: Some(pump),
        }
    }

    /// Panics if the pump has stopped by itself (an error it could not get past).
    fn assert_running(&self) {
        assert!(
            !self.pump.as_ref().is_some_and(|p| p.is_finished()),
            "the IPIP endpoint's pump has stopped"
        );
    }

    fn report(&self) -> String {
        let c = &*self.counters;
        format!(
            "{} packets encapsulated, {} decapsulated, {} ignored",
            c.encapsulated.load(Ordering::Relaxed),
            c.decapsulated.load(Ordering::Relaxed),
            c.ignored.load(Ordering::Relaxed)
        )
    }
}

impl Drop for TunIpip {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(pump) = self.pump.take() {
            match pump.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("cleanup: the IPIP endpoint's pump failed: {e}"),
                Err(_) => eprintln!("cleanup: the IPIP endpoint's pump panicked"),
            }
        }
    }
}

/// Writes the RFC 2003 outer header for an inner packet of `inner_len` bytes into `header`:
/// TOS copied from the inner header (`inner_tos`), DF, TTL 64, protocol 4.
fn ipip_outer_header(
    header: &mut [u8; 20],
    inner_len: usize,
    inner_tos: u8,
    ident: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let total = (20 + inner_len) as u16;
    header[0] = 0x45;
    header[1] = inner_tos;
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header[4..6].copy_from_slice(&ident.to_be_bytes());
    header[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    header[8] = 64;
    header[9] = 4;
    header[10..12].copy_from_slice(&[0, 0]);
    header[12..16].copy_from_slice(&src.octets());
    header[16..20].copy_from_slice(&dst.octets());
    let c = inet_checksum(&header[..]);
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The inner packet of `packet` (an outer IPv4 header and all, as a raw IPIP socket gets it)
/// if it is a well-formed IPIP packet from `remote`.
fn ipip_inner(packet: &[u8], remote: Ipv4Addr) -> Option<&[u8]> {
    if packet.len() < 20
        || packet[0] >> 4 != 4
        || packet[9] != 4
        || packet[12..16] != remote.octets()
    {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if ihl < 20 || total < ihl || total > packet.len() {
        return None;
    }
    let inner = &packet[ihl..total];
    (inner.len() >= 20 && inner[0] >> 4 == 4).then_some(inner)
}

#[test]
fn tun_ipip_endpoint_headers() {
    // The fallback endpoint's own header handling, without namespaces: what it puts in front
    // of an inner packet, and what it takes off.
    let (b, a) = (
        Ipv4Addr::new(192, 168, 205, 5),
        Ipv4Addr::new(192, 168, 205, 2),
    );
    let inner = echo_packet(
        Ipv4Addr::new(10, 42, 1, 1),
        Ipv4Addr::new(10, 42, 0, 2),
        7,
        64,
    );
    let mut header = [0u8; 20];
    ipip_outer_header(&mut header, inner.len(), 0x10, 0x1234, b, a);
    assert_eq!(header[0], 0x45, "version 4, IHL 5");
    assert_eq!(header[1], 0x10, "TOS copied");
    assert_eq!(
        usize::from(u16::from_be_bytes([header[2], header[3]])),
        inner.len() + 20
    );
    assert_eq!(header[6..8], [0x40, 0], "DF, no fragment offset");
    assert_eq!((header[8], header[9]), (64, 4), "TTL 64, protocol 4");
    assert_eq!(header[12..16], b.octets());
    assert_eq!(header[16..20], a.octets());
    assert_eq!(inet_checksum(&header), 0, "header checksum");
    let mut packet = header.to_vec();
    packet.extend_from_slice(&inner);
    assert_eq!(ipip_inner(&packet, b), Some(&inner[..]));
    assert_eq!(ipip_inner(&packet, a), None, "from another source");
    // An outer header with options (IHL 6), and trailing bytes past its total length.
    let mut long = vec![0x46, 0, 0, 0, 0, 0, 0x40, 0, 64, 4, 0, 0];
    long.extend_from_slice(&a.octets());
    long.extend_from_slice(&b.octets());
    long.extend_from_slice(&[1, 1, 1, 0]);
    long.extend_from_slice(&inner);
    let total = long.len() as u16;
    long[2..4].copy_from_slice(&total.to_be_bytes());
    long.extend_from_slice(&[0; 6]);
    assert_eq!(ipip_inner(&long, a), Some(&inner[..]));
    // Shorter than its total length says; not IPIP.
    assert_eq!(ipip_inner(&packet[..30], b), None);
    packet[9] = 41;
    assert_eq!(ipip_inner(&packet, b), None);
}

/// Most packets one direction moves before the pump looks at the other.
const PUMP_BATCH: usize = 64;

/// [`TunIpip`]'s thread: moves packets between the TUN device and the raw sockets until
/// `stop`.
fn ipip_pump(
    mut tun: File,
    rx: Socket,
    tx: Socket,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    stop: &AtomicBool,
    counters: &TunIpipCounters,
) -> io::Result<()> {
    let to: socket2::SockAddr = SocketAddr::from((remote, 0)).into();
    // An outer header's room in front of the largest inner packet.
    let mut out = vec![0u8; 20 + 65_535];
    let mut inb = vec![0u8; 65_535];
    let mut ident: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two pollfds of descriptors this thread owns.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Into the tunnel: what the kernel routed to the TUN device.
        if fds[0].revents != 0 {
            for _ in 0..PUMP_BATCH {
                let n = match tun.read(&mut out[20..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                };
                if n < 20 || out[20] >> 4 != 4 {
                    counters.ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                ident = ident.wrapping_add(1);
                let tos = out[21];
                let header: &mut [u8; 20] = (&mut out[..20]).try_into().unwrap();
                ipip_outer_header(header, n, tos, ident, local, remote);
                match tx.send_to(&out[..20 + n], &to) {
                    Ok(_) => counters.encapsulated.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counters.ignored.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        // Out of the tunnel: IPIP packets from the peer, their inner packets to the kernel.
        if fds[1].revents != 0 {
            for _ in 0..PUMP_BATCH {
                let n = match (&rx).read(&mut inb) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                };
                let Some(inner) = ipip_inner(&inb[..n], remote) else {
                    counters.ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                // A TUN device takes a packet whole or not at all.
                match tun.write(inner) {
                    Ok(n) if n == inner.len() => {
                        counters.decapsulated.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => counters.ignored.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    }
    Ok(())
}

/// IPIP with a peer that is the Linux kernel's own stack: tapswitch on host A, plain Linux on
/// host B. Where the kernel can make `ipip` devices, host B's endpoint is one. Minimal kernels
/// (CI's among them) are built without CONFIG_NET_IPIP, so there host B's endpoint is
/// [`TunIpip`], an independent RFC 2003 implementation over a TUN device: the inner traffic
/// (ping, TCP) is still the kernel's, and the test checks the same things either way.
#[test]
fn ipip_interoperates_with_a_kernel_stack_peer() {
    if !have_root() {
        return;
    }
    let hosts = host_pair();
    let kernel_ipip = kernel_makes_ipip_devices(&hosts.b);
    let (ha, hb) = (&hosts.a, &hosts.b);
    ha.add_addr(&hosts.a_if, &format!("{A_UL}/24")).unwrap();
    hb.add_addr(&hosts.b_if, &format!("{B_UL}/24")).unwrap();
    // Host B is plain Linux: an IPIP endpoint device to host A, holding 10.42.1.1, and a
    // route to A's containers through it.
    let tun = unique("rtun");
    let tun_peer = if kernel_ipip {
        eprintln!("ipip peer: kernel ipip device");
        hb.ip(&[
            "link", "add", &tun, "type", "ipip", "local", B_UL, "remote", A_UL,
        ])
        .expect("kernel ipip device");
        None
    } else {
        eprintln!(
            "ipip peer: minimal RFC 2003 endpoint over a TUN device (this kernel has no \
             CONFIG_NET_IPIP)"
        );
        Some(TunIpip::start(hb, &tun, B_UL, A_UL))
    };
    hb.ip(&["link", "set", &tun, "up"]).unwrap();
    hb.add_addr(&tun, "10.42.1.1/32").unwrap();
    hb.ip(&["route", "add", "10.42.0.0/24", "dev", &tun])
        .unwrap();
    // The veth would hand host A B's packets with the inner TCP checksums left to offload
    // (and as GSO super-packets); a raw socket cannot tell, so B's end sends finished
    // checksums and single packets, as a NIC puts them on a wire.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            hb.name(),
            "ethtool",
            "-K",
            &hosts.b_if,
            "tx",
            "off",
        ])
        .output()
        .expect("run ethtool");
    assert!(
        out.status.success(),
        "ethtool -K tx off: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the ipip module loaded, host A's kernel sees tapswitch's IPIP packets too and,
    // with no ipip device of its own matching them, answers each with ICMP port
    // unreachable; host B's ipip device then reports link failures for a while. The
    // fallback device tunl0 up in host A takes those packets instead (and, forwarding
    // being off in that namespace, drops what it decapsulates), which quiets the kernel.
    if ha.ip(&["link", "show", "tunl0"]).is_ok() {
        ha.ip(&["link", "set", "tunl0", "up"]).unwrap();
    }

    let sa = Switch::start_in(ha, None);
    sa.cli(&["interface", "add", "10", "--address", "10.42.0.1/24"]);
    sa.cli(&[
        "route",
        "add",
        "10.42.1.0/24",
        "--via",
        B_UL,
        "--encap",
        "ipip",
    ]);
    let (ca, _pa) = routed_container(&sa, 10, MAC_A, &["10.42.0.2/24"], &["10.42.0.1"]);

    let mut capture = Capture::start(hb, &hosts.b_if, "ip proto 4 or icmp");
    assert_reaches(&ca, "10.42.1.1", "tapswitch -> kernel stack peer");
    assert_reaches(hb, "10.42.0.2", "kernel stack peer -> tapswitch");
    // The kernel answers with TTL 64; router A takes one.
    ping_expect(
        &ca,
        &["-c", "1", "-W", "2", "10.42.1.1"],
        &["from 10.42.1.1", "ttl=63"],
        "one router on the way",
    );
    tcp(
        hb,
        "10.42.1.1",
        &ca,
        1 << 20,
        "tapswitch -> kernel stack peer (captured)",
    );
    tcp(
        &ca,
        "10.42.0.2",
        hb,
        1 << 20,
        "kernel stack peer -> tapswitch (captured)",
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(capture.finish(), 0, "tcpdump could not keep up");
    let packets = tshark_decode(&capture.file);
    let (mut to_b, mut to_a, mut other) = (0, 0, Vec::new());
    for p in &packets {
        let show = format!("{p:?}");
        if first(p, "ip.proto") != "4" {
            other.push(show);
            continue;
        }
        assert_eq!(p["ip.src"].len(), 2, "outer and inner IPv4: {show}");
        match (first(p, "ip.src"), first(p, "ip.dst")) {
            (A_UL, B_UL) => {
                to_b += 1;
                assert_eq!(last(p, "ip.src"), "10.42.0.2", "{show}");
                assert_eq!(last(p, "ip.dst"), "10.42.1.1", "{show}");
                // tapswitch's outer TTL; the inner one less the hop through router A.
                assert_eq!(first(p, "ip.ttl"), "64", "{show}");
                assert_eq!(last(p, "ip.ttl"), "63", "{show}");
            }
            (B_UL, A_UL) => {
                to_a += 1;
                assert_eq!(last(p, "ip.src"), "10.42.1.1", "{show}");
                assert_eq!(last(p, "ip.dst"), "10.42.0.2", "{show}");
                // Host B's own packets: its stack's TTL, no hop yet.
                assert_eq!(last(p, "ip.ttl"), "64", "{show}");
                if tun_peer.is_some() {
                    // The TUN endpoint's outer header: TTL 64 and DF.
                    assert_eq!(first(p, "ip.ttl"), "64", "{show}");
                    assert!(!is_false(first(p, "ip.flags.df")), "outer DF: {show}");
                }
            }
            _ => panic!("outer addresses are not the hosts': {show}"),
        }
        // Outer length: the inner packet and 20 bytes (no options), both ways.
        let (olen, ilen): (u32, u32) = (
            first(p, "ip.len").parse().unwrap(),
            last(p, "ip.len").parse().unwrap(),
        );
        assert_eq!(olen, ilen + 20, "{show}");
        assert!(
            ilen <= 1480,
            "inner packet larger than the tunnel MTU: {show}"
        );
    }
    eprintln!(
        "IPIP A->B {to_b}, B->A {to_a}; other ICMP on the underlay: {}",
        other.len()
    );
    for o in other.iter().take(5) {
        eprintln!("  {o}");
    }
    assert!(to_b > 100 && to_a > 100, "A->B {to_b}, B->A {to_a}");
    // Bulk, uncaptured.
    tcp(
        hb,
        "10.42.1.1",
        &ca,
        TCP_BYTES,
        "tapswitch -> kernel stack peer",
    );
    tcp(
        &ca,
        "10.42.0.2",
        hb,
        TCP_BYTES,
        "kernel stack peer -> tapswitch",
    );
    assert!(stat(&sa, "ipip", "rx_packets") > 1000);
    assert_eq!(stat(&sa, "ipip", "tx_errors"), 0);
    assert_eq!(ipip_drop(&sa, "ipip_source_not_allowed"), 0);
    if let Some(peer) = &tun_peer {
        peer.assert_running();
        eprintln!("TUN endpoint: {}", peer.report());
    }
}
