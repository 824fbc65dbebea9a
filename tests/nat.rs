//! NAT with the kernel's own stacks on both sides: containers reach an outside namespace
//! through masquerade (which has no route back to them, so only translated traffic can
//! work), the outside reaches a container through a port forward and a NodePort, containers
//! reach Services whose backends are other containers (load spread, affinity, hairpin,
//! no backends, backend removal and drain while traffic flows; a backend on another host
//! routed host-gw), traceroute and path MTU discovery across the NAT, and 1000 parallel
//! short TCP connections through masquerade.
//!
//! Layout of every test: tapswitch routes VLAN 10 (10.42.0.0/24: containers a = .2 and
//! c = .3), VLAN 20 (10.42.1.0/24: container b = .2) and the uplink VLAN 100 (10.200.0.0/24,
//! the router at .1, "outside" at .254), with `[[snat]] source = "10.42.0.0/16", out_vlan =
//! 100`. Every namespace and the daemon are guards removed on drop.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use socket2::{Domain, Socket, Type};

const CONFIG: &str = r#"
[[interface]]
vlan = 10
address = "10.42.0.1/24"

[[interface]]
vlan = 20
address = "10.42.1.1/24"

[[interface]]
vlan = 100
address = "10.200.0.1/24"

[[route]]
prefix = "0.0.0.0/0"
via = "10.200.0.254"

[[snat]]
source = "10.42.0.0/16"
out_vlan = 100
"#;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The namespaces and the switch of one test. The switch is declared first so it stops
/// (and releases its ports) before the namespaces go.
struct Lab {
    sw: Switch,
    a: Netns,
    b: Netns,
    c: Netns,
    outside: Netns,
    /// TAP port names of a, b, c, outside.
    ports: [String; 4],
}

fn attach(sw: &Switch, ns: &Netns, vlan: u16, mac: &str, cidr: &str, gw: Option<&str>) -> String {
    let port = unique("np");
    sw.add_container_port(
        ns,
        &port,
        &["--vlan", &vlan.to_string(), "--mac", mac],
        &[cidr],
    );
    if let Some(gw) = gw {
        ns.ip(&["route", "add", "default", "via", gw])
            .expect("default route");
    }
    port
}

/// The standard layout, with `extra` TOML appended to the configuration.
fn lab(extra: &str) -> Lab {
    let a = container("na", false);
    let b = container("nb", false);
    let c = container("nc", false);
    let outside = container("no", false);
    let sw = Switch::with_config(&format!("{CONFIG}\n{extra}"));
    let pa = attach(
        &sw,
        &a,
        10,
        "02:00:00:2a:00:02",
        "10.42.0.2/24",
        Some("10.42.0.1"),
    );
    let pb = attach(
        &sw,
        &b,
        20,
        "02:00:00:2a:01:02",
        "10.42.1.2/24",
        Some("10.42.1.1"),
    );
    let pc = attach(
        &sw,
        &c,
        10,
        "02:00:00:2a:00:03",
        "10.42.0.3/24",
        Some("10.42.0.1"),
    );
    // The outside has no route to 10.42.0.0/16: it can only answer translated traffic.
    let po = attach(
        &sw,
        &outside,
        100,
        "02:00:00:c8:00:fe",
        "10.200.0.254/24",
        None,
    );
    Lab {
        sw,
        a,
        b,
        c,
        outside,
        ports: [pa, pb, pc, po],
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A TCP listener with a deep accept queue (1000 parallel connections must not overflow it).
fn listen(ns: &Netns, addr: SocketAddr) -> io::Result<TcpListener> {
    ns.run(|| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        Ok(s.into())
    })
}

/// A TCP server that answers every connection with `NAME PEER-ADDRESS\n` (who served it and
/// whom it saw) after reading one line, or, when `bulk` is set, with that many bytes.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn who(ns: &Netns, name: &str, addr: &str) -> Server {
        Server::start(ns, name, addr, 0)
    }

    fn start(ns: &Netns, name: &str, addr: &str, bulk: usize) -> Server {
        let listener = listen(ns, sa(addr)).expect("listen");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
                        if bulk > 0 {
                            let chunk = vec![0x5a; 64 * 1024];
                            let mut left = bulk;
                            while left > 0 {
                                let n = left.min(chunk.len());
                                if conn.write_all(&chunk[..n]).is_err() {
                                    break;
                                }
                                left -= n;
                            }
                        } else {
                            let mut line = [0u8; 64];
                            let _ = conn.read(&mut line);
                            let _ = writeln!(conn, "{name} {}", peer.ip());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server answering every datagram with `NAME PEER-ADDRESS`.
struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    fn who(ns: &Netns, name: &str, addr: &str) -> UdpServer {
        let addr = sa(addr);
        let sock = ns.run(|| UdpSocket::bind(addr)).expect("bind UDP");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let mut answer = format!("{name} {} ", from.ip()).into_bytes();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&answer, from);
                }
            }
        });
        UdpServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `addr`, sends a line, returns the answer line.
fn ask(ns: &Netns, addr: &str) -> io::Result<String> {
    let addr = sa(addr);
    ns.run(move || ask_here(addr))
}

/// [`ask`] from the calling thread's namespace.
fn ask_here(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"hello\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.trim().to_string())
}

/// [`ask`], retried a few times (the first connection may wait on ARP).
fn ask_ok(ns: &Netns, addr: &str, what: &str) -> String {
    let mut last = None;
    for attempt in 0..4 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        match ask(ns, addr) {
            Ok(a) if !a.is_empty() => return a,
            Ok(_) => last = Some(io::Error::other("empty answer")),
            Err(e) => last = Some(e),
        }
    }
    panic!("{what}: {addr}: {last:?}");
}

/// Sends `queries` datagrams from one socket of `ns` to `addr` back to back and returns the
/// answers.
fn udp_ask(ns: &Netns, addr: &str, queries: &[&str]) -> Vec<String> {
    let addr = sa(addr);
    let queries: Vec<String> = queries.iter().map(|q| q.to_string()).collect();
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.connect(addr)?;
        for q in &queries {
            s.send(q.as_bytes())?;
        }
        let mut answers = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in &queries {
            match s.recv(&mut buf) {
                Ok(n) => answers.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => break,
            }
        }
        answers.sort();
        Ok(answers)
    })
    .expect("UDP socket")
}

fn conntrack(sw: &Switch) -> Vec<Value> {
    let v = sw.json(&["conntrack", "show"]);
    v["entries"]
        .as_array()
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default()
}

fn nat_stat(sw: &Switch, name: &str) -> u64 {
    sw.json(&["stats"])["nat"][name].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Masquerade
// ---------------------------------------------------------------------------------------

#[test]
fn masquerade_tcp_udp_and_ping_show_only_the_uplink_address() {
    if !have_root() {
        return;
    }
    let lab = lab("");
    let _tcp = Server::who(&lab.outside, "outside", "10.200.0.254:7000");
    let _udp = UdpServer::who(&lab.outside, "outside", "10.200.0.254:7001");

    // ICMP echo: the outside answers 10.200.0.1, and only the translation brings it home.
    let mut got = 0;
    for _ in 0..5 {
        got = ping(&lab.a, "10.200.0.254", 3);
        if got == 3 {
            break;
        }
    }
    assert_eq!(got, 3, "ping through masquerade");
    // TCP and UDP: the outside sees the uplink address as the peer.
    assert_eq!(
        ask_ok(&lab.a, "10.200.0.254:7000", "TCP through masquerade"),
        "outside 10.200.0.1"
    );
    assert_eq!(
        ask_ok(&lab.b, "10.200.0.254:7000", "TCP from the other VLAN"),
        "outside 10.200.0.1"
    );
    let answers = udp_ask(&lab.a, "10.200.0.254:7001", &["q"]);
    assert_eq!(
        answers,
        vec!["outside 10.200.0.1 q"],
        "UDP through masquerade"
    );
    // A socket sending two queries back to back from one port (as a resolver asks for A and
    // AAAA): both answered, many times over.
    for i in 0..50 {
        let answers = udp_ask(&lab.c, "10.200.0.254:7001", &["A", "AAAA"]);
        assert_eq!(
            answers,
            vec!["outside 10.200.0.1 A", "outside 10.200.0.1 AAAA"],
            "parallel queries, round {i}"
        );
    }
    // A bulk transfer: the window tracking lets a real TCP stream through.
    let t = probe::tcp_transfer(
        &lab.outside,
        Ipv4Addr::new(10, 200, 0, 254).into(),
        &lab.a,
        8 << 20,
        Duration::from_secs(60),
    )
    .expect("TCP transfer through masquerade");
    eprintln!("masquerade: 8 MiB at {:.0} Mbit/s", t.mbit_per_sec());

    // The connections are tracked, translated behind 10.200.0.1 from ports >= 1024.
    let entries = conntrack(&lab.sw);
    let tcp: Vec<&Value> = entries
        .iter()
        .filter(|e| e.to_string().contains("10.200.0.254") && e.to_string().contains("7000"))
        .collect();
    assert!(tcp.len() >= 2, "{entries:?}");
    assert!(
        entries.iter().any(|e| e.to_string().contains("SNAT")
            || e["nat"].to_string().contains("snat")
            || e["nat"].to_string().contains("SNAT")),
        "{entries:?}"
    );
    assert!(nat_stat(&lab.sw, "translated") > 0);
    for r in ["conntrack_invalid", "nat_no_port", "conntrack_full"] {
        assert_eq!(drops(&lab.sw, &lab.ports[0], r), 0, "{r}");
    }
    // `conntrack flush` empties the table.
    let out = lab.sw.cli(&["conntrack", "flush"]);
    assert!(!out.is_empty());
    assert!(conntrack(&lab.sw).len() < entries.len());
}

#[test]
fn a_thousand_parallel_short_tcp_connections_through_masquerade() {
    if !have_root() {
        return;
    }
    let lab = lab("");
    let _tcp = Server::who(&lab.outside, "outside", "10.200.0.254:7000");
    // Warm up ARP on both sides.
    ask_ok(&lab.a, "10.200.0.254:7000", "first connection");
    let target = sa("10.200.0.254:7000");
    let started = Instant::now();
    let results: Vec<io::Result<String>> = lab
        .a
        .run(move || {
            let threads: Vec<JoinHandle<io::Result<String>>> = (0..1000)
                .map(|_| {
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || ask_here(target))
                        .expect("thread")
                })
                .collect();
            Ok(threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|_| Err(io::Error::other("panic"))))
                .collect())
        })
        .unwrap();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Ok(a) if a == "outside 10.200.0.1" => None,
            Ok(a) => Some(format!("answer {a:?}")),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    eprintln!(
        "1000 parallel connections in {:.2?}, {} failed",
        started.elapsed(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    // Each got its own mapping: 1000 distinct translated ports.
    let entries = conntrack(&lab.sw);
    assert!(entries.len() >= 1000, "{} entries", entries.len());
    for r in ["conntrack_invalid", "nat_no_port", "conntrack_full"] {
        assert_eq!(drops(&lab.sw, &lab.ports[0], r), 0, "{r}");
    }
}

// ---------------------------------------------------------------------------------------
// Port forwarding and NodePort
// ---------------------------------------------------------------------------------------

#[test]
fn port_forward_from_outside_reaches_a_container() {
    if !have_root() {
        return;
    }
    let lab = lab(r#"
[[dnat]]
protocol = "tcp"
address = "10.200.0.1"
port = 8080
to = "10.42.0.2:8081"

[[dnat]]
protocol = "udp"
address = "10.200.0.1"
port = 5353
to = "10.42.1.2:53"
"#);
    let _web = Server::who(&lab.a, "a", "10.42.0.2:8081");
    let _dns = UdpServer::who(&lab.b, "b", "10.42.1.2:53");
    // The container sees the real client.
    assert_eq!(
        ask_ok(&lab.outside, "10.200.0.1:8080", "TCP port forward"),
        "a 10.200.0.254"
    );
    assert_eq!(
        udp_ask(&lab.outside, "10.200.0.1:5353", &["x"]),
        vec!["b 10.200.0.254 x"]
    );
    // A bulk stream from the container through the forward.
    let _bulk = Server::start(&lab.a, "bulk", "10.42.0.2:8082", 4 << 20);
    lab.sw.cli(&[
        "dnat",
        "add",
        "--protocol",
        "tcp",
        "--address",
        "10.200.0.1",
        "--port",
        "8082",
        "--to",
        "10.42.0.2:8082",
    ]);
    let got = lab
        .outside
        .run(|| {
            let mut s = TcpStream::connect_timeout(&sa("10.200.0.1:8082"), IO_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut n = 0u64;
            let mut buf = vec![0u8; 65536];
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    return Ok(n);
                }
                n += k as u64;
            }
        })
        .expect("bulk through the port forward");
    assert_eq!(got, 4 << 20);
    let list = lab.sw.json(&["dnat", "list"]);
    assert!(list.to_string().contains("10.42.0.2:8082"), "{list}");
    // Removed, the forward is gone: nothing listens on the router's own address.
    lab.sw.cli(&[
        "dnat",
        "del",
        "--protocol",
        "tcp",
        "--address",
        "10.200.0.1",
        "--port",
        "8080",
    ]);
    assert!(ask(&lab.outside, "10.200.0.1:8080").is_err());
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

const SERVICES: &str = r#"
[[service]]
name = "web"
vip = "10.96.0.10"
port = 80
protocol = "tcp"
backends = ["10.42.0.2:8080", "10.42.1.2:8080"]
node_port = 30080

[[service]]
name = "sticky"
vip = "10.96.0.11"
port = 80
backends = ["10.42.0.2:8080", "10.42.1.2:8080"]
scheduler = "round-robin"
affinity_secs = 600

[[service]]
name = "self"
vip = "10.96.0.12"
port = 80
backends = ["10.42.0.2:8080"]

[[service]]
name = "empty"
vip = "10.96.0.13"
port = 80
backends = []

[[service]]
name = "empty-dns"
vip = "10.96.0.13"
port = 53
protocol = "udp"
backends = []
"#;

fn spread(ns: &Netns, addr: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let answer = ask_ok(ns, addr, "service connection");
        let who = answer.split_whitespace().next().unwrap_or("").to_string();
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

#[test]
fn services_spread_load_keep_affinity_hairpin_and_reject_without_backends() {
    if !have_root() {
        return;
    }
    let lab = lab(SERVICES);
    let _a = Server::who(&lab.a, "a", "10.42.0.2:8080");
    let _b = Server::who(&lab.b, "b", "10.42.1.2:8080");

    // Load spread over both backends (maglev over the client's 5-tuple).
    let seen = spread(&lab.c, "10.96.0.10:80", 60);
    eprintln!("web: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 60);
    assert!(seen.get("a").copied().unwrap_or(0) >= 10, "{seen:?}");
    assert!(seen.get("b").copied().unwrap_or(0) >= 10, "{seen:?}");
    // b (VLAN 20) sees the client's own address (no SNAT across the router); a shares the
    // client's VLAN, so that connection is hairpinned and a sees the router.
    for _ in 0..10 {
        let answer = ask_ok(&lab.c, "10.96.0.10:80", "client address");
        match answer.split_whitespace().next() {
            Some("b") => assert_eq!(answer, "b 10.42.0.3"),
            _ => assert_eq!(answer, "a 10.42.0.1"),
        }
    }

    // Affinity: round robin would alternate, ClientIP affinity keeps one backend.
    let seen = spread(&lab.c, "10.96.0.11:80", 20);
    assert_eq!(seen.len(), 1, "affinity: {seen:?}");

    // Hairpin: a reaches a Service whose only backend is a itself; c reaches it on its own
    // VLAN. Both answers come back through the router (the backend sees the router).
    assert_eq!(
        ask_ok(&lab.a, "10.96.0.12:80", "hairpin to itself"),
        "a 10.42.0.1"
    );
    assert_eq!(
        ask_ok(&lab.c, "10.96.0.12:80", "hairpin on the VLAN"),
        "a 10.42.0.1"
    );

    // NodePort: the outside reaches web on the router's uplink address.
    let answer = ask_ok(&lab.outside, "10.200.0.1:30080", "NodePort");
    assert!(
        answer == "a 10.200.0.254" || answer == "b 10.200.0.254",
        "{answer}"
    );

    // No backends: TCP is refused at once (RST), UDP gets port unreachable.
    let t0 = Instant::now();
    let err = ask(&lab.c, "10.96.0.13:80").expect_err("no backends");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    let refused = lab
        .c
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.connect("10.96.0.13:53")?;
            s.send(b"q")?;
            let mut buf = [0u8; 64];
            Ok(s.recv(&mut buf).map_err(|e| e.kind()))
        })
        .unwrap();
    assert_eq!(refused, Err(io::ErrorKind::ConnectionRefused));
    assert!(drops(&lab.sw, &lab.ports[2], "service_no_backend") >= 2);
    assert!(nat_stat(&lab.sw, "rejected") >= 2);

    // The listing names every Service and its backends.
    let list = lab.sw.json(&["service", "list"]).to_string();
    for name in [
        "web",
        "sticky",
        "self",
        "empty",
        "empty-dns",
        "10.42.1.2:8080",
    ] {
        assert!(list.contains(name), "{name}: {list}");
    }
}

#[test]
fn backend_removal_and_drain_while_traffic_flows() {
    if !have_root() {
        return;
    }
    let lab = lab(r#"
[[service]]
name = "dns"
vip = "10.96.0.20"
port = 53
protocol = "udp"
backends = ["10.42.0.2:5353", "10.42.1.2:5353"]
"#);
    let _a = UdpServer::who(&lab.a, "a", "10.42.0.2:5353");
    let _b = UdpServer::who(&lab.b, "b", "10.42.1.2:5353");
    let backend_of = |who: &str| match who {
        "a" => "10.42.0.2:5353",
        _ => "10.42.1.2:5353",
    };
    // One client socket keeps asking, as a resolver does.
    let sock = lab
        .c
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.connect("10.96.0.20:53")?;
            Ok(s)
        })
        .unwrap();
    let query = |s: &UdpSocket| -> Option<String> {
        s.send(b"q").ok()?;
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).ok()?;
        Some(
            String::from_utf8_lossy(&buf[..n])
                .split_whitespace()
                .next()?
                .to_string(),
        )
    };
    let mut first = None;
    for _ in 0..10 {
        first = query(&sock);
        if first.is_some() {
            break;
        }
    }
    let first = first.expect("the service answers");
    let other = if first == "a" { "b" } else { "a" };
    for _ in 0..5 {
        assert_eq!(
            query(&sock).as_deref(),
            Some(first.as_str()),
            "the flow sticks"
        );
    }

    // Drain the serving backend: the flow keeps it, new sockets go to the other.
    let drained = format!("{},drain", backend_of(&first));
    lab.sw.cli(&[
        "service",
        "set-backends",
        "dns",
        &drained,
        backend_of(other),
    ]);
    for _ in 0..5 {
        assert_eq!(
            query(&sock).as_deref(),
            Some(first.as_str()),
            "drained: flow kept"
        );
    }
    for _ in 0..10 {
        let answers = udp_ask(&lab.c, "10.96.0.20:53", &["n"]);
        assert_eq!(answers.len(), 1);
        assert!(
            answers[0].starts_with(other),
            "new flow to the drained backend: {answers:?}"
        );
    }

    // Remove it: its flows are purged, so the very next query of the same socket reaches the
    // remaining backend (a stale entry would keep sending to the removed one).
    lab.sw
        .cli(&["service", "set-backends", "dns", backend_of(other)]);
    let mut moved = false;
    for _ in 0..4 {
        if query(&sock).as_deref() == Some(other) {
            moved = true;
            break;
        }
    }
    assert!(moved, "the flow moved to the remaining backend");
    let entries = conntrack(&lab.sw);
    assert!(
        !entries.iter().any(|e| e
            .to_string()
            .contains(backend_of(&first).split(':').next().unwrap())
            && e.to_string().contains("5353")),
        "no entry left for the removed backend: {entries:?}"
    );
    // Zero backends: the same socket is refused.
    lab.sw.cli(&["service", "set-backends", "dns"]);
    sock.send(b"q").unwrap();
    let mut buf = [0u8; 64];
    let r = sock.recv(&mut buf).map_err(|e| e.kind());
    assert_eq!(r, Err(io::ErrorKind::ConnectionRefused));
}

// ---------------------------------------------------------------------------------------
// ICMP errors across the NAT: traceroute and path MTU discovery
// ---------------------------------------------------------------------------------------

#[test]
fn traceroute_and_fragmentation_needed_cross_the_nat() {
    if !have_root() {
        return;
    }
    let far = container("nf", false);
    let lab = lab("");
    // The outside routes on to a far namespace over a link with MTU 1400.
    let (o_if, f_if) = (unique("nof"), unique("nfo"));
    lab.outside
        .ip(&[
            "link",
            "add",
            &o_if,
            "mtu",
            "1400",
            "type",
            "veth",
            "peer",
            "name",
            &f_if,
            "netns",
            far.name(),
        ])
        .expect("veth");
    lab.outside.add_addr(&o_if, "198.51.100.1/24").unwrap();
    lab.outside.ip(&["link", "set", &o_if, "up"]).unwrap();
    far.ip(&["link", "set", &f_if, "mtu", "1400"]).unwrap();
    far.add_addr(&f_if, "198.51.100.2/24").unwrap();
    far.ip(&["link", "set", &f_if, "up"]).unwrap();
    far.ip(&["route", "add", "default", "via", "198.51.100.1"])
        .unwrap();
    sysctl(&lab.outside, "net.ipv4.ip_forward", "1");
    sysctl(&lab.outside, "net.ipv4.icmp_ratelimit", "0");
    sysctl(&far, "net.ipv4.icmp_ratelimit", "0");
    let mut got = 0;
    for _ in 0..5 {
        got = ping(&lab.a, "198.51.100.2", 3);
        if got == 3 {
            break;
        }
    }
    assert_eq!(got, 3, "the far host through masquerade");

    // traceroute (UDP probes): hop 1 is tapswitch, hop 2 the outside router, hop 3 the far
    // host; the time-exceeded of hop 2 and the port unreachable of hop 3 are addressed to
    // 10.200.0.1 and reach the container only because they are translated.
    let out = run_in(
        &lab.a,
        &[
            "traceroute",
            "-n",
            "-q",
            "1",
            "-w",
            "2",
            "-m",
            "5",
            "198.51.100.2",
        ],
    );
    eprintln!("{out}");
    let hops: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(hops.first(), Some(&"10.42.0.1"), "{out}");
    assert_eq!(hops.get(1), Some(&"10.200.0.254"), "{out}");
    assert_eq!(hops.get(2), Some(&"198.51.100.2"), "{out}");

    // Path MTU: a DF ping too big for the far link gets "fragmentation needed" from the outside
    // router, translated back to the container.
    let out = run_in(
        &lab.a,
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1450",
            "198.51.100.2",
        ],
    );
    assert!(
        out.contains("mtu = 1400") || out.contains("mtu=1400"),
        "{out}"
    );
    // tracepath discovers it for UDP.
    let out = run_in(&lab.a, &["tracepath", "-n", "-m", "5", "198.51.100.2"]);
    eprintln!("{out}");
    assert!(out.contains("pmtu 1400"), "{out}");
    // And TCP adapts: a bulk transfer completes across the smaller link.
    let t = probe::tcp_transfer(
        &far,
        Ipv4Addr::new(198, 51, 100, 2).into(),
        &lab.a,
        2 << 20,
        Duration::from_secs(60),
    )
    .expect("TCP across the smaller MTU");
    assert_eq!(t.bytes, 2 << 20);
    assert!(nat_stat(&lab.sw, "icmp_translated") >= 3);
    drop(lab);
}

fn run_in(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(args)
        .output()
        .expect("run");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// A Service with a backend on another host (host-gw routing between two tapswitch hosts)
// ---------------------------------------------------------------------------------------

#[test]
fn a_service_balances_over_backends_on_two_hosts() {
    if !have_root() {
        return;
    }
    // Two "hosts" (namespaces, each running its own tapswitch) joined by a veth underlay on
    // VLAN 100; pod subnets 10.42.0.0/24 on host A, 10.42.1.0/24 on host B, routed host-gw.
    let ha = container("nha", false);
    let hb = container("nhb", false);
    let (a_if, b_if) = (unique("nula"), unique("nulb"));
    ha.ip(&[
        "link",
        "add",
        &a_if,
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "netns",
        hb.name(),
    ])
    .expect("underlay veth");
    ha.ip(&["link", "set", &a_if, "up"]).unwrap();
    hb.ip(&["link", "set", &b_if, "up"]).unwrap();
    let client = container("ncl", false);
    let local = container("nlo", false);
    let remote = container("nre", false);
    let host = |underlay: &str, me: &str, peer: &str, pods: &str, peer_pods: &str, extra: &str| {
        format!(
            r#"
[[port]]
name = "{underlay}"
attach = true
vlan = 100

[[interface]]
vlan = 100
address = "{me}/24"

[[interface]]
vlan = 10
address = "{pods}"

[[route]]
prefix = "{peer_pods}"
via = "{peer}"
{extra}
"#
        )
    };
    let service = r#"
[[service]]
name = "web"
vip = "10.96.0.10"
port = 80
backends = ["10.42.0.3:8080", "10.42.1.2:8080"]
scheduler = "round-robin"
"#;
    let sa = Switch::start_in(
        &ha,
        Some(&host(
            &a_if,
            "192.168.205.2",
            "192.168.205.3",
            "10.42.0.1/24",
            "10.42.1.0/24",
            service,
        )),
    );
    let sb = Switch::start_in(
        &hb,
        Some(&host(
            &b_if,
            "192.168.205.3",
            "192.168.205.2",
            "10.42.1.1/24",
            "10.42.0.0/24",
            "",
        )),
    );
    let _pc = attach(
        &sa,
        &client,
        10,
        "02:00:00:2a:00:02",
        "10.42.0.2/24",
        Some("10.42.0.1"),
    );
    let _pl = attach(
        &sa,
        &local,
        10,
        "02:00:00:2a:00:03",
        "10.42.0.3/24",
        Some("10.42.0.1"),
    );
    let _pr = attach(
        &sb,
        &remote,
        10,
        "02:00:00:2a:01:02",
        "10.42.1.2/24",
        Some("10.42.1.1"),
    );
    let _l = Server::who(&local, "local", "10.42.0.3:8080");
    let _r = Server::who(&remote, "remote", "10.42.1.2:8080");

    let seen = spread(&client, "10.96.0.10:80", 20);
    eprintln!("two hosts: {seen:?}");
    assert_eq!(seen.get("local"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("remote"), Some(&10), "{seen:?}");
    // The remote backend sees the client itself; its answer comes back through host A, where
    // the connection is tracked, and is translated back to the VIP.
    for _ in 0..4 {
        let answer = ask_ok(&client, "10.96.0.10:80", "across hosts");
        assert!(
            answer == "remote 10.42.0.2" || answer == "local 10.42.0.1",
            "{answer}"
        );
    }
    drop(sb);
    drop(sa);
}
