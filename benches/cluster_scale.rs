//! Cluster mode at scale: a real etcd with 1000 node leases and 10,000 Services, and one
//! tapswitch node starting against it.
//!
//! `sudo cargo bench --bench cluster_scale [-- NODES SERVICES CHANGES]` (defaults 1000, 10000,
//! 200). Needs root, `etcd` (Debian's etcd-server) and the release binary (built by the
//! bench). Everything runs inside one fresh network namespace, over its loopback: etcd on
//! 127.0.0.1, the node with PublicIP 127.0.0.1.
//!
//! Reports:
//! - **converge**: from `tapswitch run` to the node's agent having programmed every peer and
//!   Service (`cluster status`: state `running`, the revision of the listing applied);
//! - **change latency**: for each of CHANGES changes (half a peer's lease rewritten with a
//!   new VtepMAC, half a Service's backends), from the etcd put returning to `cluster status`
//!   showing that revision applied (the dataplane has it: a batch answers once every worker
//!   forwards with it); p50, p99 and max;
//! - **memory**: the node's resident set once converged, and after the changes.
//!
//! Not criterion: one run is a few seconds of wall time against a real server.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, Txn, TxnOp};
use tapswitch::probe::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_tapswitch");
const ETCD: &str = "http://127.0.0.1:23790";
const PREFIX: &str = "/scale/network";

struct Guard {
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
            let _ = std::fs::remove_file(d);
        }
    }
}

fn lease(i: usize, mac_seed: u32) -> (String, String) {
    let subnet = format!("10.{}.{}.0-24", 100 + i / 256, i % 256);
    let ip = format!("10.250.{}.{}", i / 250, i % 250 + 1);
    let m = mac_seed.to_be_bytes();
    let value = format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}"}}}}"#,
        (i >> 8) as u8,
        i as u8,
        m[1],
        m[2],
        m[3]
    );
    (format!("{PREFIX}/subnets/{subnet}"), value)
}

fn service(i: usize, backend: usize) -> (String, String) {
    let value = format!(
        r#"{{"vip":"10.96.{}.{}","port":80,"backends":["10.{}.{}.5:8080","10.{}.{}.6:8080"]}}"#,
        i / 250,
        i % 250 + 1,
        100 + backend / 256,
        backend % 256,
        100 + (backend + 1) / 256 % 256,
        (backend + 1) % 256
    );
    (format!("{PREFIX}/services/svc-{i}"), value)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// `cluster status`, straight on the control socket (no CLI process per poll).
fn status(socket: &std::path::Path) -> serde_json::Value {
    tapswitch_control::api::call(socket, &tapswitch_control::api::Request::ClusterStatus)
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are ours.
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes = args.first().copied().unwrap_or(1000);
    let services = args.get(1).copied().unwrap_or(10_000);
    let changes = args.get(2).copied().unwrap_or(200);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("cluster_scale: needs root (network namespaces); skipped");
        return;
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("cluster_scale: needs etcd (apt-get install etcd-server); skipped");
        return;
    }
    let ns = Netns::create(&format!("tsscale{}", std::process::id())).expect("namespace");
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let tmp = std::env::temp_dir().join(format!("tsscale{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut guard = Guard {
        children: Vec::new(),
        dirs: vec![tmp.clone()],
    };
    let etcd = Command::new("ip")
        .args(["netns", "exec", ns.name(), "etcd", "--name", "scale"])
        .arg("--data-dir")
        .arg(tmp.join("etcd"))
        .args([
            "--listen-client-urls",
            ETCD,
            "--advertise-client-urls",
            ETCD,
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:23791"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:23791"])
        .args(["--initial-cluster", "scale=http://127.0.0.1:23791"])
        .args(["--quota-backend-bytes", "4294967296"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd");
    guard.children.push(etcd);

    // The records, written in transactions of 100 puts.
    let ns_name = ns.name().to_string();
    let write = |ops: Vec<(String, String)>| {
        tapswitch_dataplane::io::netns::run_in(Some(&ns_name), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut c = loop {
                    if let Ok(mut c) = Client::connect([ETCD], None).await {
                        if c.status().await.is_ok() {
                            break c;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                let mut last = 0;
                for chunk in ops.chunks(100) {
                    let txn = Txn::new().and_then(
                        chunk
                            .iter()
                            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                            .collect::<Vec<_>>(),
                    );
                    let r = c.txn(txn).await.map_err(std::io::Error::other)?;
                    last = r.header().map_or(0, |h| h.revision());
                }
                Ok::<(Instant, i64), std::io::Error>((Instant::now(), last))
            })
        })
        .expect("writing to etcd")
    };
    let t = Instant::now();
    let mut records = vec![(
        format!("{PREFIX}/config"),
        r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":47999}}"#
            .to_string(),
    )];
    records.extend((0..nodes).map(|i| lease(i, 1)));
    records.extend((0..services).map(|i| service(i, i % nodes.max(1))));
    write(records);
    println!(
        "etcd: {nodes} leases and {services} Services written in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // The node: a switch with its pod VLAN, in cluster mode.
    let config = tmp.join("node.toml");
    let socket = tmp.join("node.sock");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        r#"[switch]
workers = 1
[cluster]
etcd_endpoints = ["{ETCD}"]
prefix = "{PREFIX}"
public_ip = "127.0.0.1"
pod_vlan = 10
lease_ttl_secs = 60
"#
    )
    .unwrap();
    drop(f);
    let start = Instant::now();
    let node = Command::new("ip")
        .args(["netns", "exec", ns.name(), BIN, "--socket"])
        .arg(&socket)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(tmp.join("state"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tapswitch");
    let pid = node.id();
    guard.children.push(node);
    let mut converged = None;
    while start.elapsed() < Duration::from_secs(120) {
        let st = status(&socket);
        if st["state"] == "running"
            && st["services"].as_u64() == Some(services as u64)
            && st["peers"].as_array().map(Vec::len) == Some(nodes)
        {
            converged = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(converged) = converged else {
        eprintln!("did not converge in 120 s: {}", status(&socket));
        std::process::exit(1);
    };
    let routes = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .args(["-j", "route", "show"])
        .output()
        .unwrap();
    let routes: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap_or_default();
    println!(
        "converge: {:.3} s from start to {nodes} peers ({} routes in the FIB) and {services} \
         Services programmed",
        converged.as_secs_f64(),
        routes.as_array().map_or(0, Vec::len)
    );
    println!("memory: {} MiB resident", rss_kib(pid) / 1024);

    // Changes, one at a time: a peer's new VtepMAC, a Service's new backends.
    let mut lat = Vec::with_capacity(changes);
    let (mut peers_lat, mut services_lat) = (Vec::new(), Vec::new());
    for c in 0..changes {
        let op = if c % 2 == 0 {
            lease((c * 7919) % nodes.max(1), 1000 + c as u32)
        } else {
            let i = (c * 104_729) % services.max(1);
            service(i, (i + c) % nodes.max(1))
        };
        let (done, revision) = write(vec![op]);
        loop {
            let st = status(&socket);
            if st["revision"].as_i64().unwrap_or(0) >= revision {
                let took = done.elapsed();
                lat.push(took);
                if c % 2 == 0 {
                    peers_lat.push(took);
                } else {
                    services_lat.push(took);
                }
                break;
            }
            if done.elapsed() > Duration::from_secs(10) {
                eprintln!("change {c} not applied in 10 s");
                std::process::exit(1);
            }
            // Polls are served by the control thread too: leave it room.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "change latency over {changes} changes (put to dataplane): p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    for (what, mut l) in [
        ("a peer's lease", peers_lat),
        ("a Service's backends", services_lat),
    ] {
        if l.is_empty() {
            continue;
        }
        l.sort();
        println!(
            "  {what}: p50 {:.1} ms, p99 {:.1} ms",
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.99))
        );
    }
    println!("memory after: {} MiB resident", rss_kib(pid) / 1024);
    let _ = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .args(["stop", "--purge"])
        .output();
    drop(guard);
    drop(ns);
}
