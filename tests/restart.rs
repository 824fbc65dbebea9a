//! What survives a stop, a crash and bad state, with the kernel's own stacks in namespaces:
//! containers keep their interfaces (same device, MAC, addresses, routes), runtime ports come
//! back, a masqueraded TCP stream continues byte-exact across a planned restart, starts after
//! SIGKILLs at random instants during churn restore the last acknowledged change, corrupt
//! and unwritable state is refused with the file named, and the control socket serves many
//! clients at once while idle and half-request clients time out.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Router interfaces and masquerade out of VLAN 100; the containers come at runtime.
const CONFIG: &str = r#"
[switch]
checkpoint_secs = 1

[[interface]]
vlan = 10
address = "10.77.0.1/24"

[[interface]]
vlan = 100
address = "10.177.0.1/24"

[[snat]]
source = "10.77.0.0/24"
out_vlan = 100
"#;

/// Byte `i` of the test stream.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(7) % 251) as u8
}

/// The link line, addresses and routes of `dev` in `ns`, as `ip` prints them.
fn interface_of(ns: &Netns, dev: &str) -> (String, String, String) {
    let link = ns.ip(&["-o", "link", "show", "dev", dev]).unwrap();
    // Drop the state words that legitimately change while nothing reads the TAP.
    let link = link
        .split_whitespace()
        .filter(|w| !w.contains("NO-CARRIER") && !w.contains("LOWER_UP"))
        .filter(|w| !["state", "UP", "DOWN", "UNKNOWN"].contains(w))
        .collect::<Vec<_>>()
        .join(" ");
    let addr = ns.ip(&["-o", "-4", "addr", "show", "dev", dev]).unwrap();
    // A route is marked linkdown while no queue is attached: the route itself stays.
    let routes = ns
        .ip(&["-4", "route", "show", "dev", dev])
        .unwrap()
        .replace(" linkdown", "");
    (link, addr, routes)
}

/// A TCP stream from a container to the outside: the client writes the pattern in chunks,
/// the server checks every byte.
struct Stream {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    writer: Option<std::thread::JoinHandle<Result<u64, String>>>,
    reader: Option<std::thread::JoinHandle<Result<u64, String>>>,
}

impl Stream {
    fn open(client: &Netns, server: &Netns, server_ip: &str) -> Stream {
        let addr = format!("{server_ip}:5001");
        let listener = server
            .run(|| TcpListener::bind(&addr))
            .expect("listen outside");
        let target = addr.clone();
        let mut out = client
            .run(move || TcpStream::connect_timeout(&target.parse().unwrap(), IO_WAIT))
            .expect("connect through masquerade");
        let (mut inp, _) = listener.accept().expect("accept");
        inp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        out.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (st, rc) = (Arc::clone(&stop), Arc::clone(&received));
        let writer = std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut chunk = vec![0u8; 8192];
            while !st.load(Ordering::Relaxed) {
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = pattern(sent + i as u64);
                }
                out.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
                sent += chunk.len() as u64;
                std::thread::sleep(Duration::from_millis(5));
            }
            out.shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            Ok(sent)
        });
        let reader = std::thread::spawn(move || {
            let mut got = 0u64;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = inp.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Ok(got);
                }
                for (i, b) in buf[..n].iter().enumerate() {
                    if *b != pattern(got + i as u64) {
                        return Err(format!("byte {} differs", got + i as u64));
                    }
                }
                got += n as u64;
                rc.store(got, Ordering::Relaxed);
            }
        });
        Stream {
            stop,
            received,
            writer: Some(writer),
            reader: Some(reader),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `more` bytes beyond what has arrived now have arrived; the time it took.
    fn wait_for_more(&self, more: u64, within: Duration) -> Duration {
        let start = Instant::now();
        let target = self.received() + more;
        while self.received() < target {
            assert!(
                start.elapsed() < within,
                "the stream stalled at {} bytes",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    /// Ends the stream; (sent, received), both checked byte by byte.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.writer.take().unwrap().join().unwrap().unwrap();
        let got = self.reader.take().unwrap().join().unwrap().unwrap();
        (sent, got)
    }
}

const IO_WAIT: Duration = Duration::from_secs(5);

/// A container on VLAN `vlan` with `cidr` and a default route via `gw`, through a runtime port.
fn attach(sw: &Switch, ns: &Netns, vlan: u16, cidr: &str, gw: Option<&str>) -> String {
    let port = unique("rp");
    sw.add_container_port(ns, &port, &["--vlan", &vlan.to_string()], &[cidr]);
    if let Some(gw) = gw {
        ns.ip(&["route", "add", "default", "via", gw]).unwrap();
    }
    port
}

/// How a restart scenario stops the switch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: a planned stop, with a last checkpoint.
    Planned,
    /// SIGKILL: a crash, after a periodic checkpoint.
    Crash,
}

#[test]
fn a_planned_restart_keeps_interfaces_runtime_ports_and_a_masqueraded_stream() {
    if have_root() {
        restart_keeps_a_masqueraded_stream(Stop::Planned);
    }
}

#[test]
fn after_a_crash_a_connection_older_than_the_last_checkpoint_keeps_working() {
    if have_root() {
        restart_keeps_a_masqueraded_stream(Stop::Crash);
    }
}

/// A container with an address and a default route, an outside container, both on runtime
/// ports, and a masqueraded TCP stream; the switch stops as `how` says and starts again.
fn restart_keeps_a_masqueraded_stream(how: Stop) {
    let (a, outside) = (container("rsa", false), container("rso", false));
    let mut sw = Switch::with_config(CONFIG);
    let pa = attach(&sw, &a, 10, "10.77.0.2/24", Some("10.77.0.1"));
    let po = attach(&sw, &outside, 100, "10.177.0.254/24", None);
    assert_eq!(ping(&a, "10.177.0.254", 2), 2);
    let stream = Stream::open(&a, &outside, "10.177.0.254");
    stream.wait_for_more(256 << 10, Duration::from_secs(10));
    let before = (interface_of(&a, &pa), interface_of(&outside, &po));
    let conns_before = sw.json(&["conntrack", "show"]);
    // Periodic checkpoints (checkpoint_secs = 1) are written and counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sw.json(&["stats"])["checkpoint"]["written"]
        .as_u64()
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "no periodic checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }

    match how {
        Stop::Planned => {
            let status = sw.stop().unwrap();
            assert!(status.success(), "SIGTERM: clean exit ({status})");
        }
        // The connection is older than the checkpoint counted above.
        Stop::Crash => sw.kill(),
    }
    // While tapswitch is down the workloads keep their interfaces.
    assert_eq!(
        (interface_of(&a, &pa), interface_of(&outside, &po)),
        before,
        "interfaces untouched by the stop"
    );
    let stopped_at = Instant::now();
    sw.restart();
    let ports: Vec<String> = port_names(&sw);
    assert_eq!(ports, [pa.clone(), po.clone()], "runtime ports restored");
    assert_eq!(
        (interface_of(&a, &pa), interface_of(&outside, &po)),
        before,
        "the same devices, MACs, addresses and routes after the start"
    );
    let conns = sw.json(&["conntrack", "show"]);
    assert!(
        conns["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["state"] == "ESTABLISHED"),
        "the connection was restored: {conns}\nbefore: {conns_before}"
    );
    let started = stopped_at.elapsed();
    stream.wait_for_more(256 << 10, Duration::from_secs(20));
    eprintln!(
        "start took {} ms; 256 KiB more of the stream arrived {} ms after the stop",
        started.as_millis(),
        stopped_at.elapsed().as_millis()
    );
    assert_eq!(ping(&a, "10.177.0.254", 2), 2, "ping after the restart");
    let (sent, got) = stream.finish();
    assert_eq!(sent, got, "every byte arrived, in order, exactly once");
}

#[test]
fn a_takeover_upgrade_loses_no_ping_and_no_connection() {
    if !have_root() {
        return;
    }
    let (a, outside) = (container("rta", false), container("rto", false));
    let mut sw = Switch::with_config(CONFIG);
    let pa = attach(&sw, &a, 10, "10.77.0.2/24", Some("10.77.0.1"));
    let po = attach(&sw, &outside, 100, "10.177.0.254/24", None);
    assert_eq!(ping(&a, "10.177.0.254", 2), 2);
    // "A new binary": a copy of this one at another path.
    let new_bin = sw.state_dir.with_extension("new-tapswitch");
    std::fs::copy(BIN, &new_bin).unwrap();
    let _new_bin = RemoveFile(new_bin.clone());
    let stream = Stream::open(&a, &outside, "10.177.0.254");
    stream.wait_for_more(256 << 10, Duration::from_secs(10));
    let before = (interface_of(&a, &pa), interface_of(&outside, &po));
    // Ping every 10 ms through masquerade for 3 s, the takeover in the middle.
    let pinger = {
        let ns = a.name().to_string();
        std::thread::spawn(move || {
            Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-n", "-i", "0.01", "-c", "300",
                ])
                .args(["-W", "1", "10.177.0.254"])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    let old_pid = sw.pid();
    let t = Instant::now();
    sw.take_over_with(&new_bin);
    let took = t.elapsed();
    assert_ne!(sw.pid(), old_pid, "another process runs the switch");
    let out = pinger.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The longest run of missing echo replies, as a gap in milliseconds.
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(seqs.len() > 200, "ping ran: {text}");
    let gap_ms = seqs
        .windows(2)
        .map(|w| (w[1] - w[0] - 1) * 10)
        .max()
        .unwrap_or(0);
    let lost = 300 - seqs.len() as u64;
    eprintln!(
        "takeover: {} ms from spawn to the new daemon answering; pings lost {lost} of 300; \
         longest gap {gap_ms} ms",
        took.as_millis()
    );
    assert!(
        gap_ms < 200,
        "the traffic gap is under 200 ms ({gap_ms} ms)"
    );
    assert_eq!(
        (interface_of(&a, &pa), interface_of(&outside, &po)),
        before,
        "the same devices, MACs, addresses and routes"
    );
    stream.wait_for_more(256 << 10, Duration::from_secs(20));
    let (sent, got) = stream.finish();
    assert_eq!(
        sent, got,
        "the connection survived, every byte once and in order"
    );
    // The new process owns the socket and the state: a change is saved by it.
    let p3 = unique("rp");
    sw.cli(&["port", "add", &p3, "--netns", a.name()]);
    sw.stop();
    sw.restart();
    assert!(listed_port(&sw, &p3)["name"] == p3.as_str());
}

#[test]
fn a_failed_takeover_leaves_the_running_switch_as_it_was() {
    if !have_root() {
        return;
    }
    let (a, b) = (container("rfa", false), container("rfb", false));
    let sw = Switch::with_config(CONFIG);
    attach(&sw, &a, 10, "10.77.0.2/24", None);
    attach(&sw, &b, 10, "10.77.0.3/24", None);
    assert_eq!(ping(&a, "10.77.0.3", 2), 2);
    let ports = sw.json(&["port", "list"]);
    // The new process cannot start: its file names a port on a VLAN that does not exist.
    let bad = sw.state_dir.with_extension("bad.toml");
    std::fs::write(
        &bad,
        format!("{CONFIG}\n[[fdb]]\nmac = \"02:00:00:00:00:09\"\nport = \"nope\"\n"),
    )
    .unwrap();
    let _bad = RemoveFile(bad.clone());
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&sw.socket)
        .args(["run", "--takeover", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the new process fails");
    assert!(err.contains("fdb[0].port"), "{err}");
    // The old one resumed: same ports, forwarding, answering.
    assert_eq!(sw.json(&["port", "list"]), ports);
    assert_eq!(ping(&a, "10.77.0.3", 2), 2, "forwarding again");
}

#[test]
fn an_attached_interface_is_released_on_stop_and_attached_again_on_start() {
    if !have_root() {
        return;
    }
    let (host, c, t) = (
        container("rah", false),
        container("rac", false),
        container("rat", false),
    );
    let (outer, inner) = (unique("rv"), unique("rv"));
    host.ip(&[
        "link", "add", &outer, "type", "veth", "peer", "name", &inner,
    ])
    .unwrap();
    host.ip(&["link", "set", &inner, "netns", c.name()])
        .unwrap();
    c.ip(&["link", "set", &inner, "up"]).unwrap();
    c.add_addr(&inner, "10.77.0.9/24").unwrap();
    let mut sw = Switch::start();
    sw.cli(&[
        "port",
        "add",
        &outer,
        "--attach",
        "--netns",
        host.name(),
        "--vlan",
        "10",
    ]);
    attach(&sw, &t, 10, "10.77.0.8/24", None);
    // One promiscuous membership per packet socket (one per worker).
    let promisc = || {
        !host
            .ip(&["-d", "link", "show", "dev", &outer])
            .unwrap()
            .contains("promiscuity 0")
    };
    assert!(promisc(), "attached: promiscuous");
    assert_eq!(ping(&t, "10.77.0.9", 2), 2);
    sw.stop();
    assert!(!promisc(), "released on stop");
    sw.restart();
    assert!(promisc(), "attached again on start");
    assert_eq!(listed_port(&sw, &outer)["kind"], "attach");
    assert_eq!(ping(&t, "10.77.0.9", 2), 2, "forwarding through it again");
}

#[test]
fn a_file_edited_while_down_takes_effect_and_runtime_ports_stay() {
    if !have_root() {
        return;
    }
    let ns = container("rse", false);
    let (from_file, runtime, added, dropped) =
        (unique("rp"), unique("rp"), unique("rp"), unique("rp"));
    let port = |name: &str| format!("[[port]]\nname = \"{name}\"\nnetns = \"{}\"\n", ns.name());
    let mut sw = Switch::with_config(&format!(
        "[switch]\nmac_aging_secs = 300\n{}{}",
        port(&from_file),
        port(&dropped)
    ));
    sw.add_container_port(&ns, &runtime, &[], &[]);
    sw.stop();
    // While down: the file gains a port, loses one, and changes [switch].
    std::fs::write(
        sw.config_file.as_ref().unwrap(),
        format!(
            "[switch]\nmac_aging_secs = 60\n{}{}",
            port(&from_file),
            port(&added)
        ),
    )
    .unwrap();
    sw.restart();
    let mut names: Vec<String> = port_names(&sw);
    names.sort();
    let mut want = vec![from_file.clone(), runtime.clone(), added.clone()];
    want.sort();
    assert_eq!(names, want, "the file's edits, and the runtime port");
    assert!(
        ns.ip(&["link", "show", "dev", &dropped]).is_err(),
        "the port the file dropped is gone with its TAP"
    );
    let running = sw.cli(&["config"]);
    assert!(running.contains("mac_aging_secs = 60"), "{running}");
    // A reload keeps the runtime port too.
    sw.cli(&["reload"]);
    assert_eq!(sw.json(&["port", "list"]).as_array().unwrap().len(), 3);
}

/// Removes a file when dropped.
struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn sigkill_at_random_instants_during_churn_restores_the_last_acknowledged_change() {
    if !have_root() {
        return;
    }
    let (a, b, churn) = (
        container("rka", false),
        container("rkb", false),
        container("rkc", false),
    );
    let mut sw = Switch::with_config(CONFIG);
    attach(&sw, &a, 10, "10.77.0.2/24", None);
    attach(&sw, &b, 10, "10.77.0.3/24", None);
    let mut seed = u64::from(std::process::id()) | 1;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..50 {
        // Churn on a thread: ports and Services come and go; record what was acknowledged.
        let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let in_flight = Arc::new(std::sync::Mutex::new(None::<(bool, String)>));
        let stop = Arc::new(AtomicBool::new(false));
        let churner = {
            let (socket, acked, in_flight, stop) = (
                sw.socket.clone(),
                Arc::clone(&acked),
                Arc::clone(&in_flight),
                Arc::clone(&stop),
            );
            let ns = churn.name().to_string();
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("k{round}x{i}");
                    let add = acked.lock().unwrap().len() < 3 || i % 3 != 0;
                    let args: Vec<String> = if add {
                        if i % 2 == 0 {
                            ["port", "add", &name, "--netns", &ns, "--vlan", "20"]
                                .map(String::from)
                                .to_vec()
                        } else {
                            let vip = format!("10.96.{}.{}", round, i % 250 + 1);
                            ["service", "add", &name, "--vip", &vip, "--port", "80"]
                                .map(String::from)
                                .to_vec()
                        }
                    } else {
                        let victim = acked.lock().unwrap()[0].clone();
                        let verb = if victim.starts_with("port ") {
                            "port"
                        } else {
                            "service"
                        };
                        let what = victim.split(' ').nth(1).unwrap().to_string();
                        vec![verb.into(), "del".into(), what]
                    };
                    let label = if add {
                        format!("{} {name}", args[0])
                    } else {
                        format!("{} {}", args[0], args[2])
                    };
                    *in_flight.lock().unwrap() = Some((add, label.clone()));
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    let out = cli(&socket, &argv);
                    if !out.status.success() {
                        // The daemon died under this request: it stays in flight.
                        return;
                    }
                    let mut list = acked.lock().unwrap();
                    if add {
                        list.push(label);
                    } else {
                        list.retain(|l| *l != label);
                    }
                    *in_flight.lock().unwrap() = None;
                    i += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(random(400)));
        sw.kill();
        stop.store(true, Ordering::Relaxed);
        churner.join().unwrap();
        sw.restart();
        let mut now: Vec<String> = sw
            .json(&["port", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .filter(|n| n.starts_with('k'))
            .map(|n| format!("port {n}"))
            .collect();
        now.extend(
            sw.json(&["service", "list"])
                .as_array()
                .unwrap()
                .iter()
                .map(|s| format!("service {}", s["name"].as_str().unwrap())),
        );
        now.sort();
        let mut expect = acked.lock().unwrap().clone();
        expect.sort();
        let mut with_flight = expect.clone();
        if let Some((add, label)) = in_flight.lock().unwrap().clone() {
            if add {
                with_flight.push(label);
            } else {
                with_flight.retain(|l| *l != label);
            }
            with_flight.sort();
        }
        assert!(
            now == expect || now == with_flight,
            "round {round}: after the kill the switch has {now:?}; acknowledged: {expect:?}, \
             with the change in flight: {with_flight:?}"
        );
        assert_eq!(
            ping(&a, "10.77.0.3", 1),
            1,
            "round {round}: traffic resumes"
        );
        // No TAP without a port, no port without a TAP.
        let mut links: Vec<String> = churn
            .ip(&["-o", "link", "show"])
            .unwrap()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|n| n.starts_with('k'))
            .map(|n| format!("port {n}"))
            .collect();
        links.sort();
        let ports: Vec<&String> = now.iter().filter(|e| e.starts_with("port ")).collect();
        assert_eq!(
            links.iter().collect::<Vec<_>>(),
            ports,
            "round {round}: the churn namespace's TAPs are the ports"
        );
        // Start the next round from a clean slate of churn entries.
        for entry in now {
            let mut words = entry.split(' ');
            let (verb, name) = (words.next().unwrap(), words.next().unwrap());
            sw.cli(&[verb, "del", name]);
        }
    }
}

#[test]
fn corrupt_future_and_unwritable_state_is_refused_with_the_file_named() {
    if !have_root() {
        return;
    }
    let ns = container("rsc", false);
    let mut sw = Switch::with_config(CONFIG);
    let p1 = attach(&sw, &ns, 10, "10.77.0.2/24", None);
    sw.stop();
    let running = sw.state_dir.join("running.json");
    let good = std::fs::read(&running).unwrap();

    // Truncated, with a good previous copy: a warning, and the previous copy.
    sw.restart();
    let p2 = attach(&sw, &ns, 10, "10.77.0.3/24", None);
    sw.stop();
    let newest = std::fs::read(&running).unwrap();
    std::fs::write(&running, &newest[..newest.len() / 2]).unwrap();
    sw.restart();
    let names: Vec<String> = port_names(&sw);
    assert_eq!(
        names,
        std::slice::from_ref(&p1),
        "fell back to the last good copy, without {p2}"
    );
    sw.stop();

    // Garbage in both: the start is refused, naming the file.
    let start_err = |sw: &Switch| {
        let out = sw.command(&[]).output().unwrap();
        assert!(!out.status.success(), "a start on bad state must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    std::fs::write(&running, b"\x00\x01garbage").unwrap();
    std::fs::write(sw.state_dir.join("running.json.prev"), b"{\"format\":1").unwrap();
    let err = start_err(&sw);
    assert!(err.contains(&running.display().to_string()), "{err}");
    assert!(err.contains("not JSON"), "{err}");

    // A future version: refused, never replaced.
    let future = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"version\": 1", "\"version\": 9");
    std::fs::write(&running, future).unwrap();
    let err = start_err(&sw);
    assert!(err.contains("newer tapswitch"), "{err}");

    // A corrupt checkpoint and no previous copy: refused, naming the file.
    std::fs::write(&running, &good).unwrap();
    let ckpt = sw.state_dir.join("checkpoint.bin");
    let _ = std::fs::remove_file(sw.state_dir.join("checkpoint.bin.prev"));
    std::fs::write(&ckpt, b"TSWCKPT\0\x01\x00\x00\x00garbage").unwrap();
    let err = start_err(&sw);
    assert!(err.contains("checkpoint.bin"), "{err}");
    std::fs::remove_file(&ckpt).unwrap();

    // A state directory that cannot be written: a change is refused, nothing changes.
    sw.restart();
    let ports_before = sw.json(&["port", "list"]);
    let tmpfs = sw.state_dir.clone();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "tapswitch-test",
            tmpfs.to_str().unwrap(),
        ])
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mount a small tmpfs over the state directory");
    let _unmount = Unmount(tmpfs.clone());
    // The daemon's descriptors still point at the old directory's lock; writes go to the new
    // mount, which we fill.
    let fill = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", tmpfs.join("fill").display()),
            "bs=4k",
        ])
        .output()
        .unwrap();
    assert!(!fill.status.success(), "the tmpfs is full");
    let p3 = unique("rp");
    let err = sw
        .try_cli(&["port", "add", &p3, "--netns", ns.name()])
        .unwrap_err();
    assert!(
        err.contains("running.json") && err.contains("the change was not made"),
        "{err}"
    );
    assert_eq!(sw.json(&["port", "list"]), ports_before, "nothing changed");
    assert!(ns.ip(&["link", "show", "dev", &p3]).is_err(), "no TAP made");
    let err = sw.try_cli(&["port", "del", &p1]).unwrap_err();
    assert!(err.contains("the change was not made"), "{err}");
    std::fs::remove_file(tmpfs.join("fill")).unwrap();
    sw.cli(&["port", "add", &p3, "--netns", ns.name()]);
}

#[test]
fn a_tap_whose_removal_a_crash_interrupted_is_removed_at_the_next_start() {
    if !have_root() {
        return;
    }
    let ns = container("rsd", false);
    let mut sw = Switch::start();
    let (gone, kept) = (unique("rp"), unique("rp"));
    sw.add_container_port(&ns, &gone, &[], &[]);
    sw.add_container_port(&ns, &kept, &[], &[]);
    sw.stop();
    // What a crash right after `port del` saved its change leaves: the port gone from the
    // configuration, its TAP still there, and the removal recorded.
    let path = sw.state_dir.join("running.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["running"]["port"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["name"] != gone.as_str());
    state["deleting"] = serde_json::json!([{ "name": gone, "netns": ns.name() }]);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    assert!(ns.ip(&["link", "show", "dev", &gone]).is_ok());
    sw.restart();
    assert!(
        ns.ip(&["link", "show", "dev", &gone]).is_err(),
        "the TAP of the deleted port is removed"
    );
    assert!(
        ns.ip(&["link", "show", "dev", &kept]).is_ok(),
        "the other stays"
    );
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(
        !saved.contains("deleting"),
        "nothing left to delete: {saved}"
    );
    // A normal `port del` leaves nothing recorded either.
    sw.cli(&["port", "del", &kept]);
    assert!(ns.ip(&["link", "show", "dev", &kept]).is_err());
    assert!(!std::fs::read_to_string(&path).unwrap().contains("deleting"));
}

/// Unmounts a test mount when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn many_clients_at_once_and_idle_ones_time_out() {
    if !have_root() {
        return;
    }
    let mut sw = Switch::start();
    // One idle client and one that sends half a request.
    let idle = UnixStream::connect(&sw.socket).unwrap();
    let mut half = UnixStream::connect(&sw.socket).unwrap();
    half.write_all(b"{\"cmd\":\"port_li").unwrap();
    let started = Instant::now();
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let socket = sw.socket.clone();
            std::thread::spawn(move || {
                let verb: &[&str] = if i % 2 == 0 {
                    &["stats", "-j"]
                } else {
                    &["port", "list", "-j"]
                };
                let out = cli(&socket, verb);
                assert!(
                    out.status.success(),
                    "client {i}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let served = started.elapsed();
    assert!(
        served < Duration::from_secs(4),
        "100 clients were served while two others held connections open ({served:?})"
    );
    // The idle and the half-request clients are told and closed after the timeout.
    for mut stalled in [idle, half] {
        stalled
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        stalled.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("timed out"), "{answer}");
    }
    // A request larger than the bound is refused, not buffered.
    let mut big = UnixStream::connect(&sw.socket).unwrap();
    let _ = big.write_all(&vec![b'x'; 100 * 1024]);
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.contains("longer than 65536 bytes"), "{answer}");
    let control = &sw.json(&["stats"])["control"];
    assert!(control["timed_out"].as_u64().unwrap() >= 2, "{control}");
    assert_eq!(control["max_connections"], 512);
    // A client that never finishes does not delay SIGTERM.
    let _held = UnixStream::connect(&sw.socket).unwrap();
    let t = Instant::now();
    let status = sw.stop().unwrap();
    assert!(status.success());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "SIGTERM acted on within 1 s ({:?})",
        t.elapsed()
    );
}

#[test]
fn only_root_and_the_socket_group_may_use_the_socket() {
    if !have_root() {
        return;
    }
    // nogroup (65534) as the socket group; the client runs as nobody with and without it.
    let sw = Switch::with_config("[switch]\nsocket_group = \"65534\"\n");
    let as_user = |gid: u32| {
        Command::new(BIN)
            .arg("--socket")
            .arg(&sw.socket)
            .args(["port", "list"])
            .uid(65534)
            .gid(gid)
            .output()
            .unwrap()
    };
    let meta = std::fs::metadata(&sw.socket).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.gid(), 65534, "the socket's group");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // The socket's directory must let the user reach the file.
    let dir_mode = std::fs::metadata(sw.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert!(dir_mode & 0o001 != 0, "temp dir is searchable");
    let out = as_user(65534);
    assert!(
        out.status.success(),
        "a group member is served: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user(65533);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another user is refused");
    assert!(err.contains("Permission denied"), "{err}");
    // With the file mode opened up, the peer's credentials still decide.
    std::fs::set_permissions(&sw.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user(65533);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another user is refused");
    assert!(
        err.contains("permission denied: uid 65534") && err.contains("socket group"),
        "{err}"
    );
}
