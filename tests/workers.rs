//! Several workers (`[switch] workers = 2`) with the kernel's own stacks: TAP ports open one
//! queue per worker and the kernel spreads flows over them. Each test checks that both
//! workers carried traffic (`stats -j` reports each worker's share), that no flow was reordered
//! (numbered UDP datagrams and their echoes, in both directions), and that state shared by the
//! workers stays right: connections masqueraded by whichever worker sees their packets, checked
//! byte by byte, and one conntrack table for all.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;

const FLOWS: u16 = 16;
const PER_FLOW: u32 = 2000;

fn worker_rx(sw: &Switch) -> Vec<u64> {
    sw.worker_counters("rx_packets")
}

fn check_order(sw: &Switch, a: &Netns, b: &Netns, b_ip: &str, what: &str) {
    let before = worker_rx(sw);
    assert_eq!(before.len(), 2, "{what}: two workers");
    let o = probe::udp_order(b, b_ip.parse::<Ipv4Addr>().unwrap(), a, FLOWS, PER_FLOW)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!("{what}: {o:?}");
    assert_eq!(o.reordered, 0, "{what}: datagrams reordered within a flow");
    assert_eq!(
        o.echoes_reordered, 0,
        "{what}: echoes reordered within a flow"
    );
    // Losses are allowed (the senders are not paced, and a debug build is slow), but every
    // flow must get through.
    assert!(o.received * 10 > o.sent, "{what}: datagrams arrive: {o:?}");
    assert!(o.echoed * 20 > o.sent, "{what}: echoes come back: {o:?}");
    let after = worker_rx(sw);
    let share: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!("{what}: frames read per worker {share:?}");
    assert!(
        share.iter().all(|&n| n > 0),
        "{what}: every worker read frames of some flows: {share:?}"
    );
}

#[test]
fn flows_keep_their_order_across_two_workers() {
    if !have_root() {
        return;
    }
    let a = container("wka", false);
    let b = container("wkb", false);
    let sw = Switch::with_config("[switch]\nworkers = 2\n");
    let (pa, pb) = (unique("wkpa"), unique("wkpb"));
    sw.add_container_port(&a, &pa, &["--vlan", "10"], &["10.61.0.1/24"]);
    sw.add_container_port(&b, &pb, &["--vlan", "10"], &["10.61.0.2/24"]);
    assert_eq!(ping(&a, "10.61.0.2", 3), 3);
    check_order(&sw, &a, &b, "10.61.0.2", "switched");
    // The learned MACs are one table: each station once, whichever worker saw it.
    let fdb = sw.fdb();
    assert_eq!(fdb.len(), 2, "{fdb:?}");
}

#[test]
fn masquerade_is_consistent_across_two_workers() {
    if !have_root() {
        return;
    }
    let a = container("wma", false);
    let b = container("wmb", false);
    let sw = Switch::with_config(
        r#"
[switch]
workers = 2
[[interface]]
vlan = 10
address = "10.62.0.1/24"
[[interface]]
vlan = 100
address = "10.201.0.1/24"
[[snat]]
source = "10.62.0.0/16"
out_vlan = 100
"#,
    );
    let (pa, pb) = (unique("wmpa"), unique("wmpb"));
    sw.add_container_port(&a, &pa, &["--vlan", "10"], &["10.62.0.2/24"]);
    sw.add_container_port(&b, &pb, &["--vlan", "100"], &["10.201.0.254/24"]);
    a.ip(&["route", "add", "default", "via", "10.62.0.1"])
        .unwrap();
    // b has no route back: only masqueraded traffic reaches it, and the echoes find their way
    // back only through the shared conntrack entry.
    // Neighbours resolved first: packets that wait for a next hop may be overtaken when it
    // answers, in the kernel's stacks as in the router (a flow's first packets only).
    assert_eq!(ping(&a, "10.201.0.254", 2), 2);
    check_order(&sw, &a, &b, "10.201.0.254", "masqueraded");
    let ct = sw.json(&["conntrack", "show", "--protocol", "udp"]);
    let n = ct["entries"].as_array().map_or(0, Vec::len);
    assert_eq!(n, usize::from(FLOWS), "one entry per flow: {ct}");
    // Parallel TCP connections, each checked byte by byte.
    std::thread::scope(|scope| {
        let transfers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    probe::tcp_transfer(
                        &b,
                        "10.201.0.254".parse().unwrap(),
                        &a,
                        4 << 20,
                        Duration::from_secs(60),
                    )
                })
            })
            .collect();
        for t in transfers {
            let t = t.join().expect("transfer thread").expect("TCP transfer");
            assert_eq!(t.bytes, 4 << 20);
        }
    });
    for reason in ["conntrack_invalid", "nat_no_port", "bad_offload"] {
        assert_eq!(drops(&sw, &pa, reason), 0, "{reason}");
        assert_eq!(drops(&sw, &pb, reason), 0, "{reason}");
    }
}

#[test]
fn worker_count_is_fixed_while_running() {
    if !have_root() {
        return;
    }
    let sw = Switch::with_config("[switch]\nworkers = 2\n");
    let file = sw.config_file.clone().unwrap();
    std::fs::write(&file, "[switch]\nworkers = 1\n").unwrap();
    let err = sw.try_cli(&["reload"]).unwrap_err();
    assert!(err.contains("switch.workers"), "{err}");
    // Leaving it out keeps the running number.
    std::fs::write(&file, "[switch]\nmac_aging_secs = 60\n").unwrap();
    sw.cli(&["reload"]);
    let stats = sw.json(&["stats"]);
    assert_eq!(stats["workers"].as_array().map_or(0, Vec::len), 2);
}

/// The daemon's CPU time (user + system) in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command's closing parenthesis; utime and stime are the 12th and
    // 13th of them.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Adaptive polling (`busy_poll_us`): after traffic a worker polls on and finds the answers
/// that way (hits), within its CPU budget, and an idle worker does not poll at all.
#[test]
fn busy_polling_follows_traffic_within_its_budget_and_stops_when_idle() {
    if !have_root() {
        return;
    }
    let a = container("bpa", false);
    let b = container("bpb", false);
    // Each ping (every 50 ms) would have the worker poll on for 10 ms, 20 % of a CPU (about
    // 17 % measured with the budget at 100 %); the budget allows 5 %.
    let sw = Switch::with_config(
        "[switch]\nworkers = 1\nbusy_poll_us = 10000\nbusy_poll_budget_percent = 5\n",
    );
    let (pa, pb) = (unique("bppa"), unique("bppb"));
    sw.add_container_port(&a, &pa, &["--vlan", "10"], &["10.63.0.1/24"]);
    sw.add_container_port(&b, &pb, &["--vlan", "10"], &["10.63.0.2/24"]);
    assert_eq!(ping(&a, "10.63.0.2", 3), 3);

    let (spun0, hits0) = (
        sw.workers_sum("busy_poll_ns"),
        sw.workers_sum("busy_poll_hits"),
    );
    let start = std::time::Instant::now();
    assert_eq!(ping(&a, "10.63.0.2", 40), 40);
    let elapsed = start.elapsed();
    let spun = sw.workers_sum("busy_poll_ns") - spun0;
    let hits = sw.workers_sum("busy_poll_hits") - hits0;
    eprintln!("40 pings in {elapsed:?}: polled on {spun} ns, {hits} hits");
    assert!(
        hits >= 10,
        "the replies are found by polling on: {hits} hits"
    );
    let budget = elapsed.as_nanos() as u64 / 20;
    assert!(
        spun >= budget / 3,
        "the worker polls on after traffic: {spun} ns in {elapsed:?}"
    );
    // At most the budget, and one poll over it in each 100 ms period.
    let periods = elapsed.as_millis() as u64 / 100 + 1;
    assert!(
        spun <= budget + periods * 1_000_000,
        "polling on keeps to 5 % of a CPU: {spun} ns in {elapsed:?}"
    );

    // Idle: no polling, and next to no CPU.
    std::thread::sleep(Duration::from_millis(200));
    let pid = sw.pid().expect("daemon pid");
    let (idle0, cpu0) = (sw.workers_sum("busy_poll_ns"), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(1));
    let (idle1, cpu1) = (sw.workers_sum("busy_poll_ns"), cpu_ticks(pid));
    assert_eq!(idle1, idle0, "an idle worker does not poll");
    assert!(
        cpu1 - cpu0 <= 10,
        "an idle switch takes next to no CPU: {} ticks in 1 s",
        cpu1 - cpu0
    );
}
