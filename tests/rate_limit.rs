//! Rate limits with real TCP: iperf3 between two containers through a port with a 200 Mbit/s
//! policing rate (what its workload sends) and a 200 Mbit/s shaping rate (what it receives),
//! with TAP offloads on (64 KiB super-frames, counted by the bytes of their segments).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// An iperf3 server inside `ns`, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf3_server(ns: &probe::Netns, addr: &str, port: u16) -> Server {
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "iperf3", "-s", "-B", addr, "-p"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(500));
    Server(child)
}

/// Mbit/s received by a `secs`-second iperf3 TCP test from `ns` to `addr` (`reverse`: the
/// server sends).
fn iperf3(ns: &probe::Netns, addr: &str, port: u16, secs: u32, reverse: bool) -> f64 {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name(), "iperf3", "-c", addr, "-J", "-t"])
        .arg(secs.to_string())
        .arg("-p")
        .arg(port.to_string());
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().expect("iperf3");
    assert!(
        out.status.success(),
        "iperf3: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e6
}

#[test]
fn tcp_through_a_200_mbit_limit_lands_within_ten_percent_both_ways() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let (a, b) = (container("rla", false), container("rlb", false));
    let (pa, pb) = (unique("rla"), unique("rlb"));
    sw.add_container_port(
        &a,
        &pa,
        &["--police", "200mbit", "--shape", "200mbit"],
        &["10.81.0.1/24"],
    );
    sw.add_container_port(&b, &pb, &[], &["10.81.0.2/24"]);
    let listed = listed_port(&sw, &pa);
    assert_eq!(
        listed["police"]["rate_bits_per_sec"], 200_000_000,
        "{listed}"
    );
    assert_eq!(listed["shape"]["latency_us"], 50_000, "{listed}");
    let port = 15_000 + (std::process::id() % 5_000) as u16;
    let _server = iperf3_server(&b, "10.81.0.2", port);

    // What a's workload sends: policed.
    let up = iperf3(&a, "10.81.0.2", port, 5, false);
    // What it receives: shaped.
    let down = iperf3(&a, "10.81.0.2", port, 5, true);
    eprintln!("through 200 Mbit/s: up (policed) {up:.1}, down (shaped) {down:.1} Mbit/s");
    assert!((180.0..=220.0).contains(&up), "policed: {up:.1} Mbit/s");
    assert!((180.0..=220.0).contains(&down), "shaped: {down:.1} Mbit/s");
    // Policing drops what is over the rate: counted.
    assert!(drops(&sw, &pa, "rate_limited") > 0);

    // Taken away at runtime: the same path runs free (well above the limit).
    sw.cli(&["port", "set", &pa, "--no-police", "--no-shape"]);
    let free = iperf3(&a, "10.81.0.2", port, 2, false);
    eprintln!("without limits: {free:.1} Mbit/s");
    assert!(free > 400.0, "{free:.1} Mbit/s");
}

/// Shaped frames wait in the worker for their time while it polls on after traffic (adaptive
/// polling): the poll does not sleep then, so they must still be released on time, neither
/// late (the rate falls) nor early (it overshoots).
#[test]
fn shaping_holds_its_rate_while_workers_poll_on() {
    if !have_root() {
        return;
    }
    let sw = Switch::with_config("[switch]\nbusy_poll_us = 500\nbusy_poll_budget_percent = 50\n");
    let (a, b) = (container("rpa", false), container("rpb", false));
    let (pa, pb) = (unique("rpa"), unique("rpb"));
    sw.add_container_port(&a, &pa, &["--shape", "200mbit"], &["10.82.0.1/24"]);
    sw.add_container_port(&b, &pb, &[], &["10.82.0.2/24"]);
    let port = 15_000 + (std::process::id() % 5_000) as u16 + 7;
    let _server = iperf3_server(&b, "10.82.0.2", port);
    let hits0 = sw.workers_sum("busy_poll_hits");
    let down = iperf3(&a, "10.82.0.2", port, 4, true);
    let hits = sw.workers_sum("busy_poll_hits") - hits0;
    eprintln!("shaped to 200 Mbit/s while polling on: {down:.1} Mbit/s, {hits} polling hits");
    assert!(hits > 0, "the workers polled on during the transfer");
    assert!((180.0..=220.0).contains(&down), "shaped: {down:.1} Mbit/s");
}

#[test]
fn bad_rates_are_refused_naming_the_field() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let ns = container("rlc", false);
    let port = unique("rlc");
    for (args, field) in [
        (vec!["--police", "200 furlongs"], "police.rate"),
        (vec!["--police", "200mbit,burst=1b"], "police.burst"),
        (vec!["--police", "200mbit,latency=5ms"], "police.latency"),
        (vec!["--shape", "200mbit,latency=1h"], "shape.latency"),
        (vec!["--shape", "5tbit"], "shape.rate"),
    ] {
        let mut full = vec!["port", "add", &port, "--netns", ns.name()];
        full.extend(args);
        let err = sw.try_cli(&full).unwrap_err();
        assert!(err.contains(field), "{field}: {err}");
    }
    assert!(!port_names(&sw).contains(&port));
}
