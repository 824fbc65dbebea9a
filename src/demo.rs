//! `tapswitch demo`: three containers on a running switch, real traffic between them, what
//! happened, and a clean teardown (also on Ctrl-C or failure).
//!
//! Everything it makes carries a name unique to this process (`tsd<pid>...`) and is removed by
//! guards when the demo ends, however it ends.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tapswitch::probe::{self, Netns};
use tapswitch_control::api::{self, Request};
use tapswitch_control::config::{PortConfig, DEFAULT_CONFIG};
use tapswitch_control::daemon::{self, StopHandle};
use tapswitch_control::Config;

use crate::cli::{print_fdb, print_ports, print_stats, Error};

const CONTAINERS: usize = 3;
const TCP_BYTES: u64 = 20 * 1024 * 1024;

/// A switch daemon on its own thread, with its own state directory; when dropped it is
/// stopped with every port removed (a purge), joined, and its state directory removed.
struct Daemon {
    socket: PathBuf,
    state_dir: PathBuf,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(socket: PathBuf) -> Result<Daemon, Error> {
        let (tx, rx) = mpsc::channel();
        let opts = daemon::RunOptions {
            config: Config::from_toml(DEFAULT_CONFIG).expect("embedded default parses"),
            config_file: None,
            socket: socket.clone(),
            state_dir: Some(socket.with_extension("state")),
            takeover: false,
        };
        let state_dir = socket.with_extension("state");
        let thread = std::thread::spawn(move || {
            let done = tx.clone();
            if let Err(e) = daemon::run(opts, move |stop| {
                let _ = tx.send(Ok(stop));
            }) {
                let _ = done.send(Err(e.to_string()));
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(stop)) => Ok(Daemon {
                socket,
                state_dir,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err("the switch did not start within 10 s".into()),
        }
    }

    fn call(&self, req: Request) -> Result<serde_json::Value, Error> {
        Ok(api::call(&self.socket, &req)?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.purge();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn check(interrupted: &AtomicBool) -> Result<(), Error> {
    if interrupted.load(Ordering::Relaxed) {
        Err("interrupted: cleaning up".into())
    } else {
        Ok(())
    }
}

pub fn run() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("demo: needs root (CAP_NET_ADMIN) to create namespaces and TAP devices".into());
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))?;
    }
    let tag = format!("tsd{}", std::process::id() % 100_000);
    let socket = std::env::temp_dir().join(format!("tapswitch-{tag}.sock"));

    println!("== tapswitch demo: {CONTAINERS} containers on one switch ==\n");
    println!("starting the switch (control socket {})", socket.display());
    // Declared first so it is dropped last: namespaces go before the switch stops.
    let switch = Daemon::start(socket.clone())?;
    let mut containers: Vec<(Netns, String, Ipv4Addr)> = Vec::new();
    for i in 1..=CONTAINERS {
        check(&interrupted)?;
        let ns = Netns::create(&format!("{tag}-c{i}"))?;
        let port = format!("{tag}c{i}");
        let mac = format!("02:00:00:00:de:{i:02x}");
        let addr = Ipv4Addr::new(10, 77, 0, i as u8);
        println!(
            "$ tapswitch port add {port} --netns {} --mac {mac}   # then {addr}/24 on it",
            ns.name()
        );
        switch.call(Request::PortAdd {
            port: PortConfig {
                name: port.clone(),
                netns: Some(ns.name().to_string()),
                mac: Some(mac),
                ..PortConfig::default()
            },
        })?;
        ns.add_addr(&port, &format!("{addr}/24"))?;
        containers.push((ns, port, addr));
    }
    println!();
    print_ports(&switch.call(Request::PortList)?);

    println!("\n-- reachability: ICMP echo, every container to every other (ARP first) --");
    let mut failures = 0;
    for (a, (ns_a, _, ip_a)) in containers.iter().enumerate() {
        for (b, (_, _, ip_b)) in containers.iter().enumerate() {
            if a == b {
                continue;
            }
            check(&interrupted)?;
            let r = probe::ping(
                ns_a,
                (*ip_b).into(),
                3,
                Duration::from_millis(100),
                Duration::from_secs(1),
            )?;
            let rtt = r
                .avg_rtt()
                .map_or("-".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
            let verdict = if r.received == r.sent { "ok" } else { "FAILED" };
            if r.received != r.sent {
                failures += 1;
            }
            println!(
                "  c{} {ip_a} -> c{} {ip_b}: {}/{} replies, avg rtt {rtt}  {verdict}",
                a + 1,
                b + 1,
                r.received,
                r.sent
            );
        }
    }

    println!("\n-- ARP: what c1's kernel resolved --");
    for (_, _, ip) in &containers[1..] {
        let mac = containers[0]
            .0
            .neighbour(&ip.to_string())
            .unwrap_or_else(|| "(none)".into());
        println!("  {ip} is at {mac}");
    }

    check(&interrupted)?;
    println!(
        "\n-- TCP: {} MiB from c1 to c3, every byte checked --",
        TCP_BYTES >> 20
    );
    match probe::tcp_transfer(
        &containers[2].0,
        containers[2].2.into(),
        &containers[0].0,
        TCP_BYTES,
        Duration::from_secs(30),
    ) {
        Ok(t) => println!(
            "  {} bytes intact in {:.2} s ({:.0} Mbit/s)",
            t.bytes,
            t.elapsed.as_secs_f64(),
            t.mbit_per_sec()
        ),
        Err(e) => {
            failures += 1;
            println!("  FAILED: {e}");
        }
    }

    check(&interrupted)?;
    println!("\n-- UDP: 100 datagrams from c2 echoed by c1 --");
    let echoed = probe::udp_echo(
        &containers[0].0,
        containers[0].2,
        &containers[1].0,
        100,
        512,
    )?;
    println!("  {echoed}/100 echoed intact");
    if echoed < 95 {
        failures += 1;
    }

    println!("\n-- the learned MAC table (tapswitch fdb show) --");
    print_fdb(&switch.call(Request::FdbShow)?);
    println!("\n-- per-port counters (tapswitch stats) --");
    print_stats(&switch.call(Request::Stats)?);

    println!("\nremoving the ports, the namespaces and the switch");
    drop(containers);
    drop(switch);
    if failures > 0 {
        return Err(format!("demo: {failures} check(s) failed").into());
    }
    println!("done: every container reached every other through tapswitch");
    Ok(())
}
