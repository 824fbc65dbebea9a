//! `tapswitch capture` and `tapswitch trace --live` with real kernel stacks, read back by
//! tshark: a TCP transfer on a port (both directions, checksums valid, as many packets as the
//! port's counters moved), a filter, the dropped frames with their reasons, a VXLAN port's
//! outer packets with the VNI, a live trace of a ping in both directions.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A capture file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(ext: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!("{}.{ext}", unique("tscap"))))
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn stat(sw: &Switch, port: &str, key: &str) -> u64 {
    sw.port_stats(port)[key].as_u64().unwrap_or(0)
}

/// Two containers on VLAN 10, 10.74.0.1 and .2.
fn pair(sw: &Switch) -> (Netns, Netns, String, String) {
    let (a, b) = (container("cpa", false), container("cpb", false));
    let (pa, pb) = (unique("cpp"), unique("cpp"));
    sw.add_container_port(&a, &pa, &["--vlan", "10"], &["10.74.0.1/24"]);
    sw.add_container_port(&b, &pb, &["--vlan", "10"], &["10.74.0.2/24"]);
    (a, b, pa, pb)
}

/// Every line of `text` is a Unix time (seconds, with a fraction) within the last minute.
fn assert_recent(text: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for l in lines(text) {
        let t: f64 = l.trim().parse().unwrap_or_else(|_| panic!("a time: {l}"));
        assert!(
            (now - 60.0..=now + 1.0).contains(&t),
            "{t} is not within the last minute of {now}"
        );
    }
}

/// Hosts A (192.168.79.1) and B (192.168.79.2) at the two ends of an underlay veth.
fn underlay(prefix: &str) -> (probe::Netns, probe::Netns) {
    let (ha, hb) = (container(prefix, false), container(prefix, false));
    let (ia, ib) = (unique(prefix), unique(prefix));
    ha.ip(&[
        "link",
        "add",
        &ia,
        "type",
        "veth",
        "peer",
        "name",
        &ib,
        "netns",
        hb.name(),
    ])
    .unwrap();
    for (ns, dev, addr) in [(&ha, &ia, "192.168.79.1/24"), (&hb, &ib, "192.168.79.2/24")] {
        ns.add_addr(dev, addr).unwrap();
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    (ha, hb)
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn a_tcp_transfer_on_a_port_reads_back_in_tshark() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let (a, b, pa, _pb) = pair(&sw);
    // Segments the size of the MTU, their checksums left to the switch (as a NIC would be
    // asked): the capture must show them finished.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            a.name(),
            "ethtool",
            "-K",
            &pa,
            "tso",
            "off",
            "gso",
            "off",
        ])
        .output()
        .expect("ethtool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ping(&a, "10.74.0.2", 2), 2);
    let file = TempFile::new("pcapng");
    let cap = Background::start(&sw, &["capture", &pa, "-w", file.arg(), "--duration", "4"]);
    let (rx0, tx0) = (stat(&sw, &pa, "rx_packets"), stat(&sw, &pa, "tx_packets"));
    let t = probe::tcp_transfer(
        &b,
        "10.74.0.2".parse::<std::net::IpAddr>().unwrap(),
        &a,
        200_000,
        Duration::from_secs(20),
    )
    .expect("TCP transfer");
    assert_eq!(t.bytes, 200_000);
    std::thread::sleep(Duration::from_millis(300));
    let (rx1, tx1) = (stat(&sw, &pa, "rx_packets"), stat(&sw, &pa, "tx_packets"));
    let (_, err) = cap.finish(Duration::from_secs(15));
    assert!(err.contains("packets captured"), "{err}");
    assert!(!err.contains("lost"), "{err}");

    let all = lines(&tshark(&file.0, &["-T", "fields", "-e", "frame.number"])).len() as u64;
    eprintln!("CAPTURED {all} rx {} tx {}", rx1 - rx0, tx1 - tx0);
    assert_eq!(
        all,
        (rx1 - rx0) + (tx1 - tx0),
        "every frame of the port, no more"
    );
    let from_a = lines(&tshark(
        &file.0,
        &[
            "-Y",
            "ip.src == 10.74.0.1 && tcp",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
    ))
    .len();
    let to_a = lines(&tshark(
        &file.0,
        &[
            "-Y",
            "ip.dst == 10.74.0.1 && tcp",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
    ))
    .len();
    assert!(
        from_a > 100 && to_a > 10,
        "both directions: {from_a} from a, {to_a} to a"
    );
    // Every checksum checks out, and they were checked.
    let check = [
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
    ];
    let bad = tshark(
        &file.0,
        &[
            &check[..],
            &[
                "-Y",
                "tcp.checksum.status == 0 || ip.checksum.status == 0",
                "-T",
                "fields",
                "-e",
                "frame.number",
            ],
        ]
        .concat(),
    );
    assert!(lines(&bad).is_empty(), "bad checksums in frames {bad}");
    let good = tshark(
        &file.0,
        &[
            &check[..],
            &[
                "-Y",
                "tcp.checksum.status == 1",
                "-T",
                "fields",
                "-e",
                "frame.number",
            ],
        ]
        .concat(),
    );
    assert!(
        lines(&good).len() as u64 > all / 2,
        "checksums verified: {}",
        lines(&good).len()
    );
    // Timestamps are the wall clock's (pcapng's are in nanoseconds).
    assert_recent(&tshark(
        &file.0,
        &["-T", "fields", "-e", "frame.time_epoch"],
    ));
    // Directions are marked.
    let inbound = lines(&tshark(
        &file.0,
        &[
            "-Y",
            "frame.packet_flags_direction == 1",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
    ))
    .len() as u64;
    assert_eq!(inbound, rx1 - rx0, "received frames are marked inbound");
}

#[test]
fn a_filter_selects_only_what_it_names_and_pcap_to_stdout_reads_in_tcpdump() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let (a, b, pa, _) = pair(&sw);
    assert_eq!(ping(&a, "10.74.0.2", 1), 1);
    let cap = Background::start(
        &sw,
        &[
            "capture", &pa, "--filter", "icmp", "--format", "pcap", "-w", "-", "-c", "10",
        ],
    );
    // TCP and ARP besides the pings: the filter leaves them out.
    let _ = tcp_once(&b, "10.74.0.2", 7070, &a, "10.74.0.2:7070", "hello");
    assert_eq!(ping(&a, "10.74.0.2", 5), 5);
    let (out, _) = cap.finish(Duration::from_secs(15));
    let file = TempFile::new("pcap");
    std::fs::write(&file.0, &out).unwrap();
    // tcpdump reads what went to stdout.
    let td = Command::new("tcpdump")
        .args(["-n", "-r", file.arg()])
        .output()
        .expect("tcpdump");
    assert!(
        td.status.success(),
        "{}",
        String::from_utf8_lossy(&td.stderr)
    );
    let text = String::from_utf8_lossy(&td.stdout);
    let l = lines(&text);
    assert_eq!(l.len(), 10, "{text}");
    let tt = Command::new("tcpdump")
        .args(["-n", "-tt", "-r", file.arg()])
        .output()
        .expect("tcpdump");
    let stamps: String = String::from_utf8_lossy(&tt.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|t| format!("{t}\n"))
        .collect();
    assert_recent(&stamps);
    assert!(l.iter().all(|l| l.contains("ICMP echo")), "{text}");
    assert_eq!(l.iter().filter(|l| l.contains("echo request")).count(), 5);
}

#[test]
fn a_drop_capture_carries_the_reasons() {
    if !have_root() {
        return;
    }
    let sw = Switch::with_config("[[interface]]\nvlan = 10\naddress = \"10.74.0.254/24\"\n");
    let (a, _b, _, _) = pair(&sw);
    a.ip(&["route", "add", "default", "via", "10.74.0.254"])
        .unwrap();
    let file = TempFile::new("pcapng");
    let cap = Background::start(&sw, &["capture", "--drops", "-w", file.arg(), "-c", "3"]);
    // No route to 192.0.2.0/24: the router drops (and answers with unreachables).
    let _ = ping(&a, "192.0.2.1", 3);
    let (_, err) = cap.finish(Duration::from_secs(15));
    assert!(err.contains("3 packets captured"), "{err}");
    let comments = tshark(
        &file.0,
        &["-T", "fields", "-e", "frame.comment", "-e", "ip.dst"],
    );
    let l = lines(&comments);
    assert_eq!(l.len(), 3, "{comments}");
    assert!(
        l.iter()
            .all(|l| l.starts_with("drop: l3: no_route\t192.0.2.1")),
        "{comments}"
    );
}

#[test]
fn an_underlay_capture_shows_outer_packets_with_the_vni() {
    if !have_root() {
        return;
    }
    // Host A runs the switch; host B (192.168.79.2) is the remote VTEP at the other end of
    // an underlay veth.
    let (ha, _hb) = underlay("cuh");
    let config = "[[vxlan]]\nvni = 4343\nvlan = 10\nlocal = \"192.168.79.1\"\nremotes = [\"192.168.79.2\"]\n";
    let sw = Switch::start_in(&ha, Some(config));
    let c = container("cuc", false);
    let pc = unique("cup");
    sw.add_container_port(&c, &pc, &["--vlan", "10"], &["10.75.0.1/24"]);
    let file = TempFile::new("pcapng");
    let cap = Background::start(
        &sw,
        &[
            "capture",
            "vxlan4343",
            "--underlay",
            "--direction",
            "out",
            "-w",
            file.arg(),
            "-c",
            "2",
        ],
    );
    // ARP requests flood the VLAN, so over the VNI to host B.
    let _ = ping(&c, "10.75.0.9", 2);
    cap.finish(Duration::from_secs(15));
    let vni = tshark(
        &file.0,
        &[
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
            "-e",
            "vxlan.vni",
            "-e",
            "arp.dst.proto_ipv4",
        ],
    );
    let l = lines(&vni);
    assert_eq!(l.len(), 2, "{vni}");
    for line in l {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f[0].split(',').next(), Some("192.168.79.1"), "{vni}");
        assert_eq!(f[1].split(',').next(), Some("192.168.79.2"), "{vni}");
        assert_eq!((f[2], f[3], f[4]), ("4789", "4343", "10.75.0.9"), "{vni}");
    }
}

#[test]
fn a_live_trace_of_a_ping_shows_both_directions() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let (a, _b, pa, pb) = pair(&sw);
    assert_eq!(ping(&a, "10.74.0.2", 1), 1);
    let live = Background::start(
        &sw,
        &["trace", "--live", "--filter", "icmp", "--count", "2", "-j"],
    );
    assert_eq!(ping(&a, "10.74.0.2", 1), 1);
    let (out, _) = live.finish(Duration::from_secs(15));
    let text = String::from_utf8_lossy(&out);
    let traces: Vec<serde_json::Value> = lines(&text)
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON trace per line"))
        .collect();
    assert_eq!(traces.len(), 2, "{text}");
    let hops: Vec<(String, String)> = traces
        .iter()
        .map(|t| {
            let tx = t["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["action"] == "transmit")
                .unwrap_or_else(|| panic!("no transmit in {t:#}"));
            (
                t["port"].as_str().unwrap().to_string(),
                tx["port"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(hops, [(pa.clone(), pb.clone()), (pb, pa)], "{text}");
    assert!(traces[0]["input"]["headers"]
        .as_str()
        .unwrap()
        .contains("ICMP type 8"));
    assert!(traces[1]["input"]["headers"]
        .as_str()
        .unwrap()
        .contains("ICMP type 0"));
}

#[test]
fn a_frame_from_a_tunnel_is_traced_live_and_its_outer_source_port_is_the_senders() {
    if !have_root() {
        return;
    }
    // Host A runs the switch; host B (192.168.79.2) has a kernel vxlan device (VNI 4343)
    // with 10.76.0.9 on it, at the other end of an underlay veth.
    let (ha, hb) = underlay("cut");
    let vx = unique("ctv");
    hb.ip(&[
        "link",
        "add",
        &vx,
        "type",
        "vxlan",
        "id",
        "4343",
        "dstport",
        "4789",
        "local",
        "192.168.79.2",
        "remote",
        "192.168.79.1",
    ])
    .expect("kernel vxlan device");
    hb.ip(&["link", "set", &vx, "mtu", "1450"]).unwrap();
    hb.add_addr(&vx, "10.76.0.9/24").unwrap();
    hb.ip(&["link", "set", &vx, "up"]).unwrap();
    let config = "[[vxlan]]\nvni = 4343\nvlan = 10\nlocal = \"192.168.79.1\"\nremotes = [\"192.168.79.2\"]\n";
    let sw = Switch::start_in(&ha, Some(config));
    let c = container("cutc", false);
    let pc = unique("ctp");
    sw.add_container_port(
        &c,
        &pc,
        &["--vlan", "10", "--mtu", "1450"],
        &["10.76.0.1/24"],
    );
    assert_eq!(ping(&c, "10.76.0.9", 1), 1, "through the tunnel");

    let live = Background::start(
        &sw,
        &[
            "trace",
            "--live",
            "--port",
            "vxlan4343",
            "--filter",
            "icmp",
            "--count",
            "1",
            "-j",
        ],
    );
    let file = TempFile::new("pcapng");
    let cap = Background::start(
        &sw,
        &[
            "capture",
            "vxlan4343",
            "--underlay",
            "--direction",
            "in",
            "--filter",
            "udp",
            "-w",
            file.arg(),
            "-c",
            "1",
        ],
    );
    assert_eq!(ping(&c, "10.76.0.9", 1), 1);
    let (out, _) = live.finish(Duration::from_secs(15));
    cap.finish(Duration::from_secs(15));

    // The echo reply, from the tunnel: received as VXLAN from host B, decapsulated with its
    // VNI, switched to the container's port.
    let text = String::from_utf8_lossy(&out);
    let l = lines(&text);
    assert_eq!(l.len(), 1, "{text}");
    let t: serde_json::Value = serde_json::from_str(l[0]).expect("a JSON trace");
    assert_eq!(t["port"], "vxlan4343", "{t:#}");
    assert!(
        t["input"]["headers"]
            .as_str()
            .unwrap()
            .contains("ICMP type 0"),
        "{t:#}"
    );
    let steps = t["steps"].as_array().unwrap();
    let step = |stage: &str, action: &str| {
        steps
            .iter()
            .find(|s| s["stage"] == stage && s["action"] == action)
            .unwrap_or_else(|| panic!("no {stage} {action} in {t:#}"))
    };
    let rx = step("receive", "vxlan");
    let remote = rx["remote"].as_str().unwrap();
    assert!(remote.starts_with("192.168.79.2:"), "{t:#}");
    assert_eq!(rx["endpoint"], "192.168.79.1:4789", "{t:#}");
    assert_eq!(step("tunnel", "vxlan_decap")["vni"], "4343", "{t:#}");
    assert_eq!(step("egress", "transmit")["port"], pc.as_str(), "{t:#}");
    assert_eq!(t["verdict"], "forwarded", "{t:#}");

    // The outer packet as host B sent it: its UDP source port is its own (the kernel picks
    // one per flow), not the VXLAN port.
    let f = tshark(
        &file.0,
        &[
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
            "-e",
            "vxlan.vni",
        ],
    );
    let l = lines(&f);
    assert_eq!(l.len(), 1, "{f}");
    let f: Vec<&str> = l[0].split('\t').collect();
    assert_eq!(f[0].split(',').next(), Some("192.168.79.2"), "{f:?}");
    assert_eq!((f[2], f[3]), ("4789", "4343"), "{f:?}");
    let sport: u16 = f[1].parse().unwrap();
    assert_ne!(sport, 4789, "{f:?}");
}
