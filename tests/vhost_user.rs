//! vhost-user ports with a real frontend: QEMU under TCG (see `common::vm`) whose virtio-net
//! NIC is a tapswitch vhost-user port, a container on a TAP port beside it, the kernel's own
//! stacks at both ends. The Linux guest negotiates checksum and TSO offloads and mergeable RX
//! buffers, so both directions carry 64 KiB super-frames with their offload metadata.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::vm::{self, Net, Nic, Vm, VmConfig};
use common::*;

/// A private directory for a test's sockets, removed with everything in it on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> SocketDir {
        let dir = std::env::temp_dir().join(unique("tsvu-dir"));
        std::fs::create_dir_all(&dir).expect("socket directory");
        SocketDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `port list` says the port's frontend is (or is not) connected; returns the
/// port's `vhost_user` entry.
fn wait_connected(switch: &Switch, port: &str, connected: bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let vu = listed_port(switch, port)["vhost_user"].clone();
        if vu["connected"].as_bool() == Some(connected) {
            return vu;
        }
        if Instant::now() > deadline {
            panic!(
                "port {port} is not {}: {vu}",
                if connected {
                    "connected"
                } else {
                    "disconnected"
                }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The VM pings the container and the container the VM, then 4 MiB go each way over TCP.
fn vm_talks_to_container(vm: &Vm, ns: &Netns, vm_ip: &str, ns_ip: &str) {
    let out = vm.ok(&format!("ping -c 3 -W 5 {ns_ip}"));
    assert!(out.contains("3 packets received"), "{out}");
    assert_eq!(ping(ns, vm_ip, 3), 3, "the container pings the VM");
    vm::exchange_tcp(vm, ns, vm_ip, ns_ip);
}

/// The scenario of both modes: a VM on vhost-user port `port` (added by the caller on
/// `socket`), a container on a TAP port; they talk; the VM's QEMU is stopped, the port shows
/// it, a new QEMU comes up on the same socket and they talk again.
fn vm_on_vhost_user_port(switch: &Switch, port: &str, socket: &Path, qemu_listens: bool) {
    let ns = container("tsvuc", false);
    let tap = unique("tsvup");
    switch.add_container_port(&ns, &tap, &[], &["10.94.0.1/24"]);
    let vu = listed_port(switch, port)["vhost_user"].clone();
    assert_eq!(vu["connected"], false, "no VM yet: {vu}");

    let nic = Nic::VhostUser {
        socket: socket.to_path_buf(),
        server: qemu_listens,
    };
    let mut config = VmConfig::new(nic, Net::fixed("10.94.0.2/24", None));
    config.mac = MAC.to_string();
    let first = Vm::boot(config.clone());
    eprintln!("the VM booted in {:.1?}", first.boot_time());
    let vu = wait_connected(switch, port, true);
    let names: Vec<&str> = vu["feature_names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    eprintln!(
        "negotiated with the Linux guest: {} ({})",
        vu["features"],
        names.join(" ")
    );
    for want in [
        "VERSION_1",
        "MRG_RXBUF",
        "CSUM",
        "GUEST_CSUM",
        "HOST_TSO4",
        "GUEST_TSO4",
        "EVENT_IDX",
    ] {
        assert!(names.contains(&want), "{want} not negotiated: {vu}");
    }
    assert_eq!(vu["queue_pairs_enabled"], 1, "{vu}");
    let shown = switch.cli(&["port", "list"]);
    assert!(
        shown.contains("connected, queue pairs 1/") && shown.contains("MRG_RXBUF"),
        "{shown}"
    );

    vm_talks_to_container(&first, &ns, "10.94.0.2", "10.94.0.1");
    // The VM's frames came in on the vhost-user port, and went out on it.
    let stats = switch.port_stats(port);
    assert!(stats["rx_bytes"].as_u64().unwrap() > 4 << 20, "{stats}");
    assert!(stats["tx_bytes"].as_u64().unwrap() > 4 << 20, "{stats}");
    // TSO both ways: the frames average more than an MTU's worth.
    let per_frame = |bytes: &str, frames: &str| {
        stats[bytes].as_u64().unwrap() / stats[frames].as_u64().unwrap().max(1)
    };
    eprintln!(
        "bytes per frame: from the VM {}, to the VM {}",
        per_frame("rx_bytes", "rx_packets"),
        per_frame("tx_bytes", "tx_packets")
    );
    let learned = switch
        .fdb()
        .into_iter()
        .find(|e| e["mac"] == MAC)
        .unwrap_or_else(|| panic!("the VM's MAC is not learned"));
    assert_eq!(learned["port"], port, "{learned}");

    // The VM's QEMU goes away: the port stays, not connected.
    drop(first);
    let vu = wait_connected(switch, port, false);
    assert_eq!(vu["queue_pairs_enabled"], 0, "{vu}");
    assert_eq!(
        ping(&ns, "10.94.0.2", 1),
        0,
        "nothing answers for the VM while it is down"
    );

    // A new QEMU on the same socket: the port is connected again and carries traffic.
    let second = Vm::boot(config);
    let vu = wait_connected(switch, port, true);
    assert_eq!(vu["connections"], 2, "{vu}");
    vm_talks_to_container(&second, &ns, "10.94.0.2", "10.94.0.1");
}

/// The VM's MAC (given to QEMU and to the port, for port security).
const MAC: &str = "52:54:00:94:00:02";

/// tapswitch listens on the socket (server mode, the default), QEMU connects.
#[test]
fn a_vm_on_a_vhost_user_port_talks_to_a_container_and_comes_back_after_a_restart() {
    if !have_root() || !vm::available() {
        return;
    }
    let dir = SocketDir::new();
    let socket = dir.path("vm.sock");
    let switch = Switch::start();
    let port = unique("tsvu");
    switch.cli(&[
        "port",
        "add",
        &port,
        "--vhost-user",
        socket.to_str().unwrap(),
        "--mac",
        MAC,
        "--address",
        "10.94.0.2/24",
    ]);
    assert!(socket.exists(), "tapswitch listens on {}", socket.display());
    let listed = listed_port(&switch, &port);
    assert_eq!(listed["kind"], "vhost-user", "{listed}");
    assert_eq!(listed["port_security"], true, "{listed}");
    assert_eq!(listed["vhost_user"]["mode"], "server", "{listed}");
    vm_on_vhost_user_port(&switch, &port, &socket, false);

    // port del removes the socket.
    switch.cli(&["port", "del", &port]);
    assert!(!socket.exists(), "the socket goes with the port");
}

/// QEMU listens (`server=on`), tapswitch connects, and connects again to the next QEMU.
#[test]
fn a_vhost_user_client_port_reconnects_to_a_restarted_qemu() {
    if !have_root() || !vm::available() {
        return;
    }
    let dir = SocketDir::new();
    let socket = dir.path("vm.sock");
    let switch = Switch::start();
    let port = unique("tsvu");
    switch.cli(&[
        "port",
        "add",
        &port,
        "--vhost-user",
        socket.to_str().unwrap(),
        "--vhost-user-client",
    ]);
    let listed = listed_port(&switch, &port);
    assert_eq!(listed["vhost_user"]["mode"], "client", "{listed}");
    vm_on_vhost_user_port(&switch, &port, &socket, true);
}

/// Bad vhost-user ports are refused with the field named, and change nothing.
#[test]
fn bad_vhost_user_ports_are_refused() {
    if !have_root() {
        return;
    }
    let dir = SocketDir::new();
    let switch = Switch::start();
    let port = unique("tsvu");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--vhost-user".into(), "vm.sock".into()],
            "socket: \"vm.sock\" is not an absolute path",
        ),
        (
            vec![
                "--vhost-user".into(),
                dir.path("no-such-dir/vm.sock").display().to_string(),
            ],
            "does not exist",
        ),
        (
            vec![
                "--vhost-user".into(),
                dir.path("vm.sock").display().to_string(),
                "--port-security".into(),
                "on".into(),
            ],
            "port_security: a vhost-user port needs the VM's mac",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["port", "add", port.as_str()];
        args.extend(extra.iter().map(String::as_str));
        let err = switch.try_cli(&args).expect_err("refused");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A socket another process listens on is not taken over.
    let taken = dir.path("taken.sock");
    let _other = std::os::unix::net::UnixListener::bind(&taken).unwrap();
    let err = switch
        .try_cli(&[
            "port",
            "add",
            &port,
            "--vhost-user",
            taken.to_str().unwrap(),
        ])
        .expect_err("refused");
    assert!(err.contains("in use by another process"), "{err}");
    // CLI flags that make no sense together.
    let err = switch
        .try_cli(&["port", "add", &port, "--attach", "--vhost-user", "/x.sock"])
        .expect_err("refused");
    assert!(err.contains("cannot be used with"), "{err}");
    assert!(!port_names(&switch).contains(&port), "nothing was added");
}

/// Multiqueue: a VM with two vCPUs and two queue pairs, on a port of a switch with two
/// workers (a pair per worker). The Linux guest enables both pairs, and what it sends from
/// each vCPU comes in on that vCPU's pair; the VM and the container still talk.
#[test]
fn a_two_queue_vm_sends_on_both_pairs() {
    if !have_root() || !vm::available() {
        return;
    }
    let dir = SocketDir::new();
    let socket = dir.path("vm.sock");
    let switch = Switch::with_config("[switch]\nworkers = 2\n");
    let port = unique("tsvq");
    let mac = "52:54:00:95:00:02";
    switch.cli(&[
        "port",
        "add",
        &port,
        "--vhost-user",
        socket.to_str().unwrap(),
        "--mac",
        mac,
        "--address",
        "10.95.0.2/24",
    ]);
    let ns = container("tsvqc", false);
    let tap = unique("tsvqp");
    switch.add_container_port(&ns, &tap, &[], &["10.95.0.1/24"]);
    let mut config = VmConfig::new(
        Nic::VhostUser {
            socket: socket.clone(),
            server: false,
        },
        Net::fixed("10.95.0.2/24", None),
    );
    config.mac = mac.to_string();
    config.cpus = 2;
    config.queues = 2;
    let vm = Vm::boot(config);
    let vu = wait_connected(&switch, &port, true);
    assert_eq!(
        (&vu["queue_pairs"], &vu["queue_pairs_enabled"]),
        (&serde_json::Value::from(2), &serde_json::Value::from(2)),
        "the guest enables both pairs: {vu}"
    );
    // A ping from each vCPU: the guest sends on the pair of the CPU it runs on.
    let out = vm.ok("taskset 1 ping -c 20 -i 0.05 10.95.0.1 >/run/p0 & \
         taskset 2 ping -c 20 -i 0.05 10.95.0.1 >/run/p1; wait; cat /run/p0 /run/p1");
    assert_eq!(out.matches("20 packets received").count(), 2, "{out}");
    let vu = listed_port(&switch, &port)["vhost_user"].clone();
    let frames: Vec<u64> = vu["pair_frames"]
        .as_array()
        .unwrap_or_else(|| panic!("no pair_frames: {vu}"))
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    eprintln!("frames from the guest by queue pair: {frames:?}");
    assert!(
        frames.len() == 2 && frames.iter().all(|&n| n >= 10),
        "each pair carried one vCPU's pings: {vu}"
    );
    vm_talks_to_container(&vm, &ns, "10.95.0.2", "10.95.0.1");
}
