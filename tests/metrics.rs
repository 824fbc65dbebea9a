//! The metrics server, scraped during real traffic and checked with Prometheus's own parser
//! (`promtool check metrics`, from Debian's prometheus package).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

/// GET `path` from `addr`: (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("the metrics server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the sample `name{labels}` in `text`.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_move_with_the_traffic_and_prometheus_parses_them() {
    if !have_root() {
        return;
    }
    let port = 21_000 + (std::process::id() % 5_000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let switch = Switch::with_config(&format!("[metrics]\nlisten = \"{addr}\"\n"));
    let (c1, c2) = (container("mtc", false), container("mtc", false));
    let (p1, p2) = (unique("mtp"), unique("mtp"));
    switch.add_container_port(&c1, &p1, &["--vlan", "10"], &["10.66.0.1/24"]);
    switch.add_container_port(&c2, &p2, &["--vlan", "10"], &["10.66.0.2/24"]);
    assert_eq!(ping(&c1, "10.66.0.2", 20), 20);
    // A policy rule's hits: one ping is one connection it allowed.
    let file = std::env::temp_dir().join(unique("mtpol"));
    std::fs::write(
        &file,
        "[[policy]]\nname = \"m\"\nselect = {}\n[[policy.ingress]]\nfrom = [ { cidr = \"10.66.0.0/24\" } ]\n",
    )
    .unwrap();
    switch.cli(&["policy", "add", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(ping(&c1, "10.66.0.2", 2), 2);

    let (status, body) = get(&addr, "/metrics");
    let hits = "tapswitch_policy_rule_hits_total{tier=\"policy\",policy=\"m\",direction=\"ingress\",rule=\"0\",action=\"allow\"}";
    assert!(
        sample(&body, hits).is_some_and(|n| n >= 1.0),
        "{hits}:\n{body}"
    );
    assert!(status.contains("200"), "{status}");
    let rx = format!("tapswitch_port_rx_packets_total{{port=\"{p1}\"}}");
    let first = sample(&body, &rx).unwrap_or_else(|| panic!("{rx} missing:\n{body}"));
    assert!(first >= 20.0, "{rx} {first}");
    assert!(
        body.contains("tapswitch_fdb_entries{type=\"learned\"}"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE tapswitch_port_rx_bytes_total counter"),
        "{body}"
    );
    assert!(!body.contains("# EOF"), "the classic format without Accept");
    // Prometheus's own checker accepts it.
    if which("promtool") {
        let mut check = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing: apt-get install prometheus"
        );
    }
    // More traffic: the counter moves by at least as much.
    assert_eq!(ping(&c1, "10.66.0.2", 10), 10);
    let (_, again) = get(&addr, "/metrics");
    let second = sample(&again, &rx).unwrap();
    assert!(second >= first + 10.0, "{first} -> {second}");
    // The tables against their bounds: the two containers' MACs, the default bound.
    assert_eq!(
        sample(&again, "tapswitch_table_entries{table=\"mac\"}"),
        Some(2.0),
        "{again}"
    );
    assert_eq!(
        sample(&again, "tapswitch_table_max{table=\"mac\"}"),
        Some(65536.0),
        "{again}"
    );
    for table in ["remote_vtep", "neighbour", "conntrack"] {
        assert!(
            again.contains(&format!("tapswitch_table_max{{table=\"{table}\"}}")),
            "{table}"
        );
    }
    // The workers' batches: every round counted in one bucket, frames as the sum.
    let total = |prefix: &str| -> f64 {
        again
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let batches = total("tapswitch_worker_batch_size_count{");
    let inf = total("tapswitch_worker_batch_size_bucket{le=\"+Inf\"");
    let frames = total("tapswitch_worker_batch_size_sum{");
    assert!(
        batches >= 30.0 && inf == batches && frames >= batches,
        "{batches} {inf} {frames}"
    );
    assert!(
        total("tapswitch_worker_busy_seconds_total{") > 0.0,
        "{again}"
    );
    // The control requests so far, with their latency: `port add` twice, one each of `stats`
    // and `service list` per scrape.
    assert_eq!(
        sample(&again, "tapswitch_control_requests_total{cmd=\"port_add\"}"),
        Some(2.0),
        "{again}"
    );
    let count = sample(
        &again,
        "tapswitch_control_request_duration_seconds_count{cmd=\"port_add\"}",
    );
    assert_eq!(count, Some(2.0));
    // Drops by stage and reason: a frame from a multicast source MAC (bad_source_mac, at
    // ingress) sent on c1's port.
    let drop = format!(
        "tapswitch_port_drops_total{{port=\"{p1}\",stage=\"ingress\",reason=\"bad_source_mac\"}}"
    );
    assert_eq!(sample(&again, &drop), None);
    send_raw(&c1, &p1, &[0xff; 6], &[0x01, 0, 0x5e, 0, 0, 1]);
    std::thread::sleep(Duration::from_millis(200));
    let (_, third) = get(&addr, "/metrics");
    assert_eq!(sample(&third, &drop), Some(1.0), "{third}");
    // A scraper that asks for OpenMetrics gets it.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
    )
    .unwrap();
    let mut om = String::new();
    s.read_to_string(&mut om).unwrap();
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(om.contains("# TYPE tapswitch_port_rx_bytes counter") && om.ends_with("# EOF\n"));
    // Anything else is not found.
    assert!(get(&addr, "/other").0.contains("404"));
}

/// Sends one raw Ethernet frame (`dst`, `src`, IPv4 EtherType, 46 zero bytes) out of `dev`
/// in `ns`.
fn send_raw(ns: &Netns, dev: &str, dst: &[u8; 6], src: &[u8; 6]) {
    let mut frame = Vec::new();
    frame.extend_from_slice(dst);
    frame.extend_from_slice(src);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&[0u8; 46]);
    let port = probe::RawPort::open(ns, dev).expect("a raw socket on the container's end");
    port.send(&frame).expect("send a raw frame");
}

fn which(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `--log-format json`: every line the daemon logs is one JSON object with its time, level,
/// target and message.
#[test]
fn json_logs_are_one_object_per_line() {
    if !have_root() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("tslog"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("s.sock");
    let child = std::process::Command::new(BIN)
        .args(["--log-format", "json", "--socket"])
        .arg(&socket)
        .arg("run")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cli(&socket, &["port", "list"]).status.code() != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli(&socket, &["stop", "--purge"]);
    assert!(out.status.success());
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
    }
    assert!(text.contains("tapswitch running"), "{text}");
}
