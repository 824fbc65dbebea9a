//! The CNI plugin driven by a real container runtime: Debian's podman (4.3) with its CNI
//! network backend, containers made from a busybox-static root filesystem (no image
//! registry), on a network `tsnet` whose plugin is tapswitch.
//!
//! Everything podman keeps (storage, run state, the CNI configuration, host-local's leases)
//! lives in a directory of the test's own, removed afterwards; published ports differ from
//! test to test (podman holds each host port open in the host's namespace); podman's configuration comes
//! from `CONTAINERS_CONF` (runc, the ulimits this kind of machine needs, the CNI backend, the
//! plugin directory holding the tapswitch binary as `tapswitch`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// One podman world: its directory, configuration and root filesystem, and the switch it
/// puts containers on.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// A fresh world for `switch`, with the network `tsnet` on VLAN 10 leasing from
    /// `subnet`.0/24.
    fn new(switch: &Switch, subnet: &str) -> Podman {
        let dir = std::env::temp_dir().join(unique("podman"));
        for d in [
            "cni-bin",
            "cni-conf",
            "ipam",
            "rootfs/bin",
            "rootfs/etc",
            "rootfs/tmp",
            "www",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let bin = dir.join("rootfs/bin");
        std::fs::copy("/usr/bin/busybox", bin.join("busybox")).expect("busybox-static");
        let applets = Command::new("/usr/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for a in String::from_utf8_lossy(&applets.stdout).lines() {
            if a != "busybox" {
                std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
            }
        }
        std::fs::copy(BIN, dir.join("cni-bin/tapswitch")).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{d}/cni-bin", "/usr/lib/cni"]
network_config_dir = "{d}/cni-conf"
default_subnet = "10.199.0.0/24"
"#
            ),
        )
        .unwrap();
        // The network, and the same with the reference tuning, bandwidth and portmap plugins
        // chained after tapswitch.
        let tapswitch = format!(
            r#"{{"type":"tapswitch","socket":"{sock}","vlan":10,"mtu":1500,
  "ipam":{{"type":"host-local","dataDir":"{d}/ipam","ranges":[[{{"subnet":"{subnet}.0/24","gateway":"{subnet}.1"}}]]}},
  "capabilities":{{"portMappings":true,"mac":true,"ips":true}}}}"#,
            sock = switch.socket.display()
        );
        let chained = r#"{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.arp_notify":"1"}},
 {"type":"bandwidth","capabilities":{"bandwidth":true}},
 {"type":"portmap","capabilities":{"portMappings":true},"snat":false}"#;
        for (name, plugins) in [
            ("tsnet", tapswitch.clone()),
            ("tschain", format!("{tapswitch},\n {chained}")),
        ] {
            std::fs::write(
                dir.join(format!("cni-conf/{name}.conflist")),
                format!(r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{plugins}]}}"#),
            )
            .unwrap();
        }
        std::fs::write(
            dir.join("www/index.html"),
            "hello from a tapswitch container\n",
        )
        .unwrap();
        Podman { dir }
    }

    fn rootfs(&self) -> String {
        self.dir.join("rootfs").display().to_string()
    }

    /// `podman ARGS` in this world; stdout, or the error with stderr.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let d = &self.dir;
        let out = Command::new("timeout")
            .arg("120")
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .output()
            .expect("podman (apt-get install podman)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "podman {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a container `name` running `cmd` (all options before `--rootfs`).
    fn start(&self, name: &str, opts: &[&str], cmd: &[&str]) {
        let rootfs = self.rootfs();
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(opts);
        args.extend(["--rootfs", rootfs.as_str()]);
        args.extend_from_slice(cmd);
        self.ok(&args);
    }

    fn exec(&self, name: &str, cmd: &[&str]) -> Result<String, String> {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// The address podman reports for `name` (on its one network).
    fn address(&self, name: &str) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0]["NetworkSettings"]["Networks"]
            .as_object()
            .and_then(|n| n.values().next())
            .and_then(|n| n["IPAddress"].as_str())
            .unwrap_or_else(|| panic!("no address for {name}"))
            .to_string()
    }

    fn leases(&self) -> usize {
        std::fs::read_dir(self.dir.join("ipam/tsnet"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|f| {
                f.file_name()
                    .to_string_lossy()
                    .parse::<std::net::IpAddr>()
                    .is_ok()
            })
            .count()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        // Whatever podman left mounted under the directory (nothing, normally).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have_podman() -> bool {
    let there = Command::new("podman").arg("--version").output().is_ok()
        && Path::new("/usr/bin/busybox").exists()
        && Path::new("/usr/lib/cni/host-local").exists();
    if !there {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "podman, busybox-static or containernetworking-plugins is missing (tests/setup.sh)"
        );
        eprintln!("skipped: podman, busybox-static and containernetworking-plugins needed");
    }
    there
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn podman_containers_on_tapswitch() {
    if !have_root() || !have_podman() {
        return;
    }
    let switch = Switch::start();
    let pm = Podman::new(&switch, "10.43.0");
    let www = pm.dir.join("www").display().to_string();
    let volume = format!("{www}:/www");
    pm.start(
        "web",
        &["--network", "tsnet", "-p", "18080:80", "-v", &volume],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    pm.start("client", &["--network", "tsnet"], &["sleep", "3600"]);
    let (web, client) = (pm.address("web"), pm.address("client"));
    assert!(
        web.starts_with("10.43.0.") && client.starts_with("10.43.0."),
        "{web} {client}"
    );

    // The ports tapswitch made carry the containers' IDs and the addresses podman shows.
    let id = pm
        .ok(&["inspect", "-f", "{{.Id}}", "web"])
        .trim()
        .to_string();
    let ports = switch.json(&["port", "list"]);
    let port = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["container_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no port for {id}: {ports}"))
        .clone();
    assert_eq!(port["ifname"], "eth0");
    assert_eq!(port["addresses"][0], format!("{web}/24"));

    // Container to container: ping, and a TCP stream checked byte by byte.
    pm.ok(&["exec", "client", "ping", "-c", "3", "-W", "2", &web]);
    let payload: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(pm.dir.join("www/blob.txt"), &payload).unwrap();
    let got = pm
        .exec(
            "client",
            &["wget", "-q", "-O", "-", &format!("http://{web}/blob.txt")],
        )
        .unwrap();
    assert_eq!(got, payload, "the stream arrived whole");

    // -p 18080:80: from another container, on the gateway's address (every router address).
    wait_for("the port mapping", || {
        pm.exec(
            "client",
            &["wget", "-q", "-O", "-", "http://10.43.0.1:18080/"],
        )
        .is_ok_and(|b| b.contains("hello from a tapswitch container"))
    });
    let forwards = switch.json(&["dnat", "list"]);
    assert!(
        forwards
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["port"] == 18080 && d["container_id"] == id.as_str()),
        "{forwards}"
    );

    // podman rm leaves no port, no lease, no forward.
    let before = switch.json(&["port", "list"]).as_array().unwrap().len();
    assert_eq!(pm.leases(), 2);
    pm.ok(&["rm", "-f", "-t", "0", "web"]);
    assert_eq!(
        switch.json(&["port", "list"]).as_array().unwrap().len(),
        before - 1
    );
    assert_eq!(pm.leases(), 1);
    assert_eq!(switch.json(&["dnat", "list"]), serde_json::json!([]));
}

#[test]
fn dockers_network_modes_through_podman() {
    if !have_root() || !have_podman() {
        return;
    }
    let switch = Switch::start();
    let pm = Podman::new(&switch, "10.44.0");
    let ports_before = switch.json(&["port", "list"]).as_array().unwrap().len();
    // bridge (tsnet) and container: the second joins the first's namespace.
    pm.start("first", &["--network", "tsnet"], &["sleep", "3600"]);
    pm.start(
        "joined",
        &["--network", "container:first"],
        &["sleep", "3600"],
    );
    let addr = pm.address("first");
    let joined = pm
        .exec("joined", &["ip", "-o", "-4", "addr", "show", "eth0"])
        .unwrap();
    assert!(joined.contains(&addr), "{joined}");
    assert_eq!(
        switch.json(&["port", "list"]).as_array().unwrap().len(),
        ports_before + 1,
        "one port for the two containers"
    );
    // none: only a loopback, no port.
    pm.start("alone", &["--network", "none"], &["sleep", "3600"]);
    let links = pm.exec("alone", &["ip", "-o", "link"]).unwrap();
    assert!(links.contains("lo") && !links.contains("eth0"), "{links}");
    // host: the host's own namespace (the test's), no port.
    pm.start("hosted", &["--network", "host"], &["sleep", "3600"]);
    let host_links = pm.exec("hosted", &["ip", "-o", "link"]).unwrap();
    let ours = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert_eq!(
        host_links.lines().count(),
        String::from_utf8_lossy(&ours.stdout).lines().count(),
        "the host's interfaces"
    );
    assert_eq!(
        switch.json(&["port", "list"]).as_array().unwrap().len(),
        ports_before + 1
    );
    for name in ["joined", "first", "alone", "hosted"] {
        pm.ok(&["rm", "-f", "-t", "0", name]);
    }
    assert_eq!(
        switch.json(&["port", "list"]).as_array().unwrap().len(),
        ports_before
    );
    assert_eq!(pm.leases(), 0);
}

/// `--ip` and `--mac-address` reach IPAM and the port; a conflist may chain the reference
/// tuning, bandwidth and portmap plugins after tapswitch; ports survive a restart of
/// tapswitch with their containers running.
#[test]
fn podman_capabilities_chaining_and_a_restart() {
    if !have_root() || !have_podman() {
        return;
    }
    let mut switch = Switch::start();
    let pm = Podman::new(&switch, "10.45.0");
    pm.start(
        "fixed",
        &[
            "--network",
            "tsnet",
            "--ip",
            "10.45.0.77",
            "--mac-address",
            "02:45:00:00:00:77",
        ],
        &["sleep", "3600"],
    );
    assert_eq!(pm.address("fixed"), "10.45.0.77");
    let link = pm
        .exec("fixed", &["ip", "-o", "link", "show", "eth0"])
        .unwrap();
    assert!(link.contains("02:45:00:00:00:77"), "{link}");
    // Chained: tuning's sysctl is set, the container is on tapswitch, -p still works.
    pm.start(
        "chained",
        &["--network", "tschain", "-p", "19090:80"],
        &["httpd", "-f", "-p", "80", "-h", "/etc"],
    );
    let sysctl = pm
        .exec(
            "chained",
            &["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"],
        )
        .unwrap();
    assert_eq!(sysctl.trim(), "1");
    let chained = pm.address("chained");
    pm.ok(&["exec", "fixed", "ping", "-c", "2", "-W", "2", &chained]);
    // A restart of tapswitch: the containers keep their interfaces and reach each other.
    switch.stop();
    switch.restart();
    pm.ok(&["exec", "fixed", "ping", "-c", "2", "-W", "2", &chained]);
    for name in ["fixed", "chained"] {
        pm.ok(&["rm", "-f", "-t", "0", name]);
    }
    assert_eq!(pm.leases(), 0);
    assert!(switch
        .json(&["port", "list"])
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["container_id"].is_null()));
}

/// An uplink to an outside namespace (VLAN 100, router address 10.200.0.1, masquerade of the
/// containers' subnet): a container reaches the outside through masquerade, and the outside
/// host reaches a published port on the router's uplink address.
#[test]
fn podman_masquerade_out_and_published_ports_in() {
    use std::io::{Read, Write};
    if !have_root() || !have_podman() {
        return;
    }
    let switch = Switch::start();
    let outside = container("pmout", false);
    let (up, out_if) = (unique("pmup"), unique("pmou"));
    ip(&[
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
    .unwrap();
    ip(&["link", "set", &up, "up"]).unwrap();
    outside.add_addr(&out_if, "10.200.0.254/24").unwrap();
    outside.ip(&["link", "set", &out_if, "up"]).unwrap();
    switch.cli(&["port", "add", &up, "--attach", "--vlan", "100"]);
    switch.cli(&["interface", "add", "100", "--address", "10.200.0.1/24"]);
    switch.cli(&[
        "snat",
        "add",
        "--source",
        "10.46.0.0/24",
        "--out-vlan",
        "100",
    ]);
    let pm = Podman::new(&switch, "10.46.0");
    let inspect = pm.ok(&["network", "inspect", "tsnet"]);
    // podman knows the network by its plugin (it shows subnets only for its own drivers).
    assert!(inspect.contains(r#""driver": "tapswitch""#), "{inspect}");
    let volume = format!("{}:/www", pm.dir.join("www").display());
    pm.start(
        "web",
        &["--network", "tsnet", "-p", "18081:80", "-v", &volume],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    pm.start("client", &["--network", "tsnet"], &["sleep", "3600"]);

    // Out through masquerade: the outside sees the uplink address.
    let listener = outside
        .run(|| std::net::TcpListener::bind(("10.200.0.254", 7000)))
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        (peer, got)
    });
    pm.ok(&[
        "exec",
        "client",
        "sh",
        "-c",
        "echo out-through-nat | nc -w 2 10.200.0.254 7000",
    ]);
    let (peer, got) = server.join().unwrap();
    assert_eq!(got.trim(), "out-through-nat");
    assert_eq!(peer.ip().to_string(), "10.200.0.1", "masqueraded");

    // In through the published port, from the outside host, on the router's uplink address.
    let page = outside
        .run(|| {
            let mut s = std::net::TcpStream::connect_timeout(
                &"10.200.0.1:18081".parse().unwrap(),
                Duration::from_secs(5),
            )?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            Ok(body)
        })
        .unwrap();
    assert!(page.contains("hello from a tapswitch container"), "{page}");
    for name in ["web", "client"] {
        pm.ok(&["rm", "-f", "-t", "0", name]);
    }
    switch.cli(&["port", "del", &up]);
}
