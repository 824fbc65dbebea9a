//! Cluster mode on a real etcd server: host namespaces joined by an underlay, each running a
//! tapswitch in cluster mode with pods behind it.
//!
//! Needs root and Debian's `etcd-server` (`etcd` and `etcdctl`, see tests/setup.sh). The
//! underlay namespace holds two bridges: the data underlay (192.168.77.0/24) that tunnels and
//! host-gw routes cross, and a management network (192.168.78.0/24) where etcd listens, so
//! that a test can cut a node off etcd without cutting its pods off each other. Every client
//! of etcd (the switches, `etcdctl`) reaches it through those namespaces.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// etcd's address on the management network.
const ETCD_IP: &str = "192.168.78.10";

/// A real etcd server inside namespace `ns`, removed (process and data) when dropped.
struct Etcd {
    child: Option<Child>,
    ns: String,
    data: PathBuf,
    pub url: String,
    peer_url: String,
    name: String,
    /// With TLS: the test's CA, and clients must show a certificate it signed.
    pki: Option<Pki>,
}

/// A CA made by the test, a server certificate for etcd's address and a client certificate,
/// in a directory removed when dropped.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `ca.pem`, `server.pem` + `server-key.pem` (for `ip`), `client.pem` + `client-key.pem`
    /// signed by the CA, and `rogue.pem` + `rogue-key.pem` signed by nobody.
    fn make(ip: &str) -> Pki {
        let dir = std::env::temp_dir().join(unique("pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&pki.dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = |name: &str| {
            run(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ])
        };
        key("ca-key.pem");
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            "/CN=tapswitch test CA",
            "-days",
            "2",
            "-out",
            "ca.pem",
        ]);
        let signed = |name: &str, cn: &str, ext: &str| {
            key(&format!("{name}-key.pem"));
            run(&[
                "req",
                "-new",
                "-key",
                &format!("{name}-key.pem"),
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &format!("{name}.csr"),
            ]);
            std::fs::write(pki.dir.join(format!("{name}.ext")), ext).unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ]);
        };
        signed(
            "server",
            "etcd",
            &format!(
                "subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
            ),
        );
        signed(
            "client",
            "tapswitch",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        );
        key("rogue-key.pem");
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "rogue-key.pem",
            "-subj",
            "/CN=rogue",
            "-days",
            "2",
            "-out",
            "rogue.pem",
        ]);
        pki
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Etcd {
    fn start_with(ns: &Netns, ip: &str, pki: Option<Pki>) -> Etcd {
        let name = unique("etcd");
        let data = std::env::temp_dir().join(format!("{name}.data"));
        // Ports from the pid, so that parallel test binaries do not meet.
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let scheme = if pki.is_some() { "https" } else { "http" };
        let mut e = Etcd {
            child: None,
            ns: ns.name().to_string(),
            data,
            url: format!("{scheme}://{ip}:{port}"),
            peer_url: format!("http://127.0.0.1:{}", port + 1),
            name,
            pki,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).expect("etcd log");
        let mut cmd = Command::new("ip");
        if let Some(p) = &self.pki {
            cmd.args(["netns", "exec", &self.ns, "etcd"])
                .args(["--cert-file", &p.file("server.pem")])
                .args(["--key-file", &p.file("server-key.pem")])
                .args(["--trusted-ca-file", &p.file("ca.pem")])
                .arg("--client-cert-auth");
        } else {
            cmd.args(["netns", "exec", &self.ns, "etcd"]);
        }
        let child = cmd
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args([
                "--initial-cluster",
                &format!("{}={}", self.name, self.peer_url),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ctl(&["endpoint", "health"]).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl ARGS` against this server, from inside its namespace.
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcdctl"]).args([
            "--endpoints",
            &self.url,
            "--dial-timeout",
            "2s",
        ]);
        if let Some(p) = &self.pki {
            cmd.args(["--cacert", &p.file("ca.pem")])
                .args(["--cert", &p.file("client.pem")])
                .args(["--key", &p.file("client-key.pem")]);
        }
        let out = cmd
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl (apt-get install etcd-client)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value])
            .unwrap_or_else(|e| panic!("etcdctl put {key}: {e}"));
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(self.data.with_extension("log"));
    }
}

/// The underlay namespace with its two bridges (data, management), and etcd.
struct Underlay {
    ns: Netns,
    bridge: String,
    mgmt: String,
    etcd: Etcd,
}

fn underlay() -> Underlay {
    underlay_with(false)
}

/// The underlay; with `tls`, etcd speaks https only to clients with a certificate from the
/// test's CA.
fn underlay_with(tls: bool) -> Underlay {
    let ns = container("clul", false);
    let bridge = unique("clbr");
    let mgmt = unique("clmg");
    for b in [&bridge, &mgmt] {
        ns.ip(&["link", "add", b, "type", "bridge"]).unwrap();
        ns.ip(&["link", "set", b, "up"]).unwrap();
    }
    ns.ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", &mgmt])
        .unwrap();
    let etcd = Etcd::start_with(&ns, ETCD_IP, tls.then(|| Pki::make(ETCD_IP)));
    Underlay {
        ns,
        bridge,
        mgmt,
        etcd,
    }
}

/// A host: its namespace, with `ul0` at 192.168.77.`n`/24 on the data underlay and `mg0` at
/// 192.168.78.`n`/24 on the management network.
fn host(ul: &Underlay, n: u8) -> Netns {
    let h = container("clh", false);
    for (dev, bridge, net) in [("ul0", &ul.bridge, 77), ("mg0", &ul.mgmt, 78)] {
        let peer = unique("clv");
        h.ip(&[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            ul.ns.name(),
        ])
        .unwrap();
        ul.ns.ip(&["link", "set", &peer, "master", bridge]).unwrap();
        ul.ns.ip(&["link", "set", &peer, "up"]).unwrap();
        h.ip(&["addr", "add", &format!("192.168.{net}.{n}/24"), "dev", dev])
            .unwrap();
        h.ip(&["link", "set", dev, "up"]).unwrap();
    }
    h
}

/// A tapswitch node in cluster mode on host `h`, with `pods` pods.
struct Node {
    /// The host's namespace (kept until the node goes).
    _host: Netns,
    switch: Switch,
    pods: Vec<(Netns, String)>,
}

fn cluster_config(ul: &Underlay, prefix: &str, public_ip: &str, ttl: u64) -> String {
    format!(
        r#"
[cluster]
etcd_endpoints = ["{url}"]
prefix = "{prefix}"
public_ip = "{public_ip}"
pod_vlan = 10
lease_ttl_secs = {ttl}
"#,
        url = ul.etcd.url
    )
}

fn status(s: &Switch) -> Value {
    s.json(&["cluster", "status"])
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node(ul: &Underlay, n: u8, prefix: &str, pods: usize) -> Node {
    node_with(ul, n, prefix, pods, Backend::Kernel)
}

/// A lease TTL short enough for a test to see one expire.
const SHORT_TTL: u64 = 5;

/// Where a node's PublicIP lives.
#[derive(Clone, Copy)]
enum Backend {
    /// The host's kernel holds it (vxlan, ipip: the tunnels go through the host's stack).
    Kernel,
    /// As `Kernel`, with a lease that outlives a test's outages.
    LongLease,
    /// tapswitch's interface on the underlay VLAN holds it (192.168.77.`100+n`), the
    /// underlay attached to that VLAN (host-gw).
    Underlay,
}

fn node_with(ul: &Underlay, n: u8, prefix: &str, pods: usize, backend: Backend) -> Node {
    let host = host(ul, n);
    let config = match backend {
        Backend::Kernel => cluster_config(ul, prefix, &format!("192.168.77.{n}"), SHORT_TTL),
        Backend::LongLease => cluster_config(ul, prefix, &format!("192.168.77.{n}"), 60),
        Backend::Underlay => format!(
            r#"
[[port]]
name = "ul0"
attach = true
vlan = 100
[[interface]]
vlan = 100
address = "192.168.77.{}/24"
[cluster]
etcd_endpoints = ["{}"]
prefix = "{prefix}"
underlay_vlan = 100
pod_vlan = 10
lease_ttl_secs = 5
"#,
            100 + n,
            ul.etcd.url
        ),
    };
    let switch = Switch::start_in(&host, Some(&config));
    eventually("the node holds a lease", 20, || {
        status(&switch)["lease"]["subnet"].is_string()
    });
    let st = status(&switch);
    let subnet = st["lease"]["subnet"].as_str().unwrap().to_string();
    let gateway = st["lease"]["gateway"].as_str().unwrap().to_string();
    let base: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    let len = subnet.split('/').nth(1).unwrap();
    let mut out = Vec::new();
    for i in 0..pods {
        let pod = container("clp", false);
        let port = unique("clt");
        let ip = std::net::Ipv4Addr::from(u32::from(base) + 2 + i as u32).to_string();
        switch.add_container_port(&pod, &port, &["--vlan", "10"], &[&format!("{ip}/{len}")]);
        pod.ip(&["link", "set", &port, "mtu", "1450"]).unwrap();
        pod.ip(&["route", "add", "default", "via", &gateway])
            .unwrap();
        out.push((pod, ip));
    }
    Node {
        _host: host,
        switch,
        pods: out,
    }
}

/// A fresh prefix with `<prefix>/config` written: 10.42.0.0/16 with `backend`.
fn network(ul: &Underlay, backend: &str) -> String {
    let prefix = format!("/{}/network", unique("ts"));
    ul.etcd.put(
        &format!("{prefix}/config"),
        &format!(r#"{{"Network":"10.42.0.0/16","Backend":{{"Type":"{backend}"}}}}"#),
    );
    prefix
}

/// Waits until each of `nodes` has programmed its `peers` peers, all reached by `route`.
fn wait_peers(nodes: &[Node], peers: usize, route: &str) {
    for n in nodes {
        eventually("the peers programmed", 10, || {
            let st = status(&n.switch);
            let list = st["peers"].as_array().cloned().unwrap_or_default();
            list.len() == peers && list.iter().all(|p| p["route"] == route)
        });
    }
}

fn all_pods(nodes: &[Node]) -> Vec<(&Netns, String)> {
    nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|(ns, ip)| (ns, ip.clone())))
        .collect()
}

fn assert_all_reach(nodes: &[Node]) {
    let pods = all_pods(nodes);
    for (from, from_ip) in &pods {
        for (_, to_ip) in &pods {
            if from_ip == to_ip {
                continue;
            }
            let got = ping(from, to_ip, 3);
            assert!(got > 0, "pod {from_ip} -> pod {to_ip}: no reply");
        }
    }
}

#[test]
fn three_vxlan_nodes_lease_subnets_and_reach_each_other() {
    if !have_root() {
        return;
    }
    let ul = underlay();
    let prefix = format!("/{}/network", unique("ts"));
    ul.etcd.put(
        &format!("{prefix}/config"),
        r#"{"Network":"10.42.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
    );
    let nodes: Vec<Node> = (1..=3).map(|n| node(&ul, n, &prefix, 2)).collect();
    // Each sees the two others, programmed over vxlan.
    for n in &nodes {
        eventually("two peers programmed", 10, || {
            let st = status(&n.switch);
            let peers = st["peers"].as_array().cloned().unwrap_or_default();
            peers.len() == 2 && peers.iter().all(|p| p["route"] == "vxlan")
        });
    }
    // The leases are flannel's records.
    let leases = ul
        .etcd
        .ctl(&["get", "--prefix", &format!("{prefix}/subnets/")])
        .unwrap();
    assert_eq!(
        leases.matches("\"BackendType\":\"vxlan\"").count(),
        3,
        "{leases}"
    );
    assert!(leases.contains("\"VtepMAC\""), "{leases}");
    assert_all_reach(&nodes);

    // A Service written to etcd reaches backends on other nodes, from every node.
    let backend = &nodes[2].pods[0];
    let svc = format!(
        r#"{{"vip":"10.96.0.10","port":80,"backends":["{}:8080"]}}"#,
        backend.1
    );
    ul.etcd.put(&format!("{prefix}/services/web"), &svc);
    for n in &nodes {
        eventually("the Service is programmed", 10, || {
            let list = n.switch.json(&["service", "list"]);
            list.as_array()
                .is_some_and(|l| l.iter().any(|s| s["name"] == "web"))
        });
    }
    for n in &nodes[..2] {
        // The backend answers with its own address: the VIP led there.
        let got = tcp_once(
            &backend.0,
            &backend.1,
            8080,
            &n.pods[0].0,
            "10.96.0.10:80",
            &backend.1,
        );
        assert_eq!(got, backend.1, "the VIP from node pod {}", n.pods[0].1);
    }
    let st = status(&nodes[0].switch);
    assert_eq!(st["services"], 1);
    // config shows none of it: it is the cluster's, not the file's.
    let config = nodes[0].switch.cli(&["config"]);
    assert!(!config.contains("10.96.0.10"), "{config}");
    assert!(config.contains("managed by agents"), "{config}");

    // A malformed record is ignored with a warning naming the key.
    ul.etcd
        .put(&format!("{prefix}/subnets/10.42.200.0-24"), "{not json");
    eventually("the warning", 10, || {
        status(&nodes[0].switch)["recent_warnings"]
            .to_string()
            .contains("10.42.200.0-24")
    });

    // A node stopped: its lease expires and the others drop its routes.
    let gone_subnet = status(&nodes[2].switch)["lease"]["subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let mut nodes = nodes;
    let mut last = nodes.pop().unwrap();
    let gone_ip = "192.168.77.3";
    let gone_base = gone_subnet.split('/').next().unwrap().to_string();
    for n in &nodes {
        assert!(n
            .switch
            .json(&["fdb", "show"])
            .to_string()
            .contains(gone_ip));
    }
    last.switch.stop();
    for n in &nodes {
        eventually("the stopped node's lease expires", 20, || {
            let routes = n.switch.json(&["route", "show"]);
            !routes.to_string().contains(&gone_subnet)
        });
        // Its neighbour and FDB entries went with the route.
        let fdb = n.switch.json(&["fdb", "show"]).to_string();
        assert!(!fdb.contains(gone_ip), "{fdb}");
        let neigh = n.switch.json(&["neigh", "show"]);
        assert!(
            !neigh
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["ip"] == gone_base.as_str() && e["state"] == "PERMANENT"),
            "{neigh}"
        );
        let peers = status(&n.switch)["peers"].as_array().unwrap().len();
        assert_eq!(peers, 1);
    }
    assert_all_reach(&nodes);
    drop(last);
}

/// A host set up as flanneld sets one up from the same records, with no tapswitch: the
/// kernel's vxlan device `flannel.1` (VNI 1, port 8472, no learning, subnet.0/32, its VtepMAC),
/// a `cni0` bridge holding subnet.1 with a pod behind it, its own lease in flannel's format,
/// and for every peer the neighbour, FDB entry and onlink route flanneld programs.
struct FlannelHost {
    host: Netns,
    pod: Netns,
    pod_ip: String,
}

const FLANNEL_SUBNET: &str = "10.42.250.0";
const FLANNEL_MAC: &str = "02:fa:00:00:00:04";

fn flannel_host(ul: &Underlay, prefix: &str, n: u8) -> FlannelHost {
    let host = host(ul, n);
    let public = format!("192.168.77.{n}");
    sysctl(&host, "net.ipv4.ip_forward", "1");
    for args in [
        vec![
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &public,
            "dev",
            "ul0",
            "dstport",
            "8472",
            "nolearning",
        ],
        vec![
            "link",
            "set",
            "flannel.1",
            "address",
            FLANNEL_MAC,
            "mtu",
            "1450",
        ],
        vec!["addr", "add", "10.42.250.0/32", "dev", "flannel.1"],
        vec!["link", "set", "flannel.1", "up"],
        vec!["link", "add", "cni0", "type", "bridge"],
        vec!["addr", "add", "10.42.250.1/24", "dev", "cni0"],
        vec!["link", "set", "cni0", "up"],
    ] {
        host.ip(&args)
            .unwrap_or_else(|e| panic!("flannel host: ip {}: {e}", args.join(" ")));
    }
    let pod = container("clfp", false);
    host.ip(&[
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])
    .unwrap();
    host.ip(&["link", "set", "veth0", "master", "cni0", "up"])
        .unwrap();
    pod.ip(&["addr", "add", "10.42.250.2/24", "dev", "eth0"])
        .unwrap();
    pod.ip(&["link", "set", "eth0", "mtu", "1450", "up"])
        .unwrap();
    pod.ip(&["route", "add", "default", "via", "10.42.250.1"])
        .unwrap();
    ul.etcd.put(
        &format!("{prefix}/subnets/{FLANNEL_SUBNET}-24"),
        &format!(
            r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{FLANNEL_MAC}"}}}}"#
        ),
    );
    FlannelHost {
        host,
        pod,
        pod_ip: "10.42.250.2".into(),
    }
}

impl FlannelHost {
    /// What flanneld programs for a peer's lease.
    fn add_peer(&self, subnet: &str, public_ip: &str, vtep_mac: &str) {
        let base = subnet.split('/').next().unwrap();
        for args in [
            vec![
                "neigh",
                "replace",
                base,
                "lladdr",
                vtep_mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ],
            vec![
                "route",
                "replace",
                subnet,
                "via",
                base,
                "dev",
                "flannel.1",
                "onlink",
            ],
        ] {
            self.host
                .ip(&args)
                .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
        }
        let out = Command::new("ip")
            .args(["netns", "exec", self.host.name(), "bridge", "fdb", "append"])
            .args([
                vtep_mac,
                "dev",
                "flannel.1",
                "dst",
                public_ip,
                "self",
                "permanent",
            ])
            .output()
            .expect("bridge fdb");
        assert!(
            out.status.success(),
            "bridge fdb append: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn tapswitch_nodes_and_a_flannel_kernel_node_share_one_pod_network() {
    if !have_root() {
        return;
    }
    let ul = underlay();
    let prefix = network(&ul, "vxlan");
    let flannel = flannel_host(&ul, &prefix, 4);
    let nodes: Vec<Node> = (1..=2).map(|n| node(&ul, n, &prefix, 1)).collect();
    for n in &nodes {
        // The tapswitch node programmed the flannel host from its record.
        eventually("the flannel host is a peer", 10, || {
            status(&n.switch)["peers"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p["subnet"] == "10.42.250.0/24" && p["route"] == "vxlan")
            })
        });
        // The flannel host programs the tapswitch node from its record, as flanneld would.
        let lease = status(&n.switch)["lease"].clone();
        let subnet = lease["subnet"].as_str().unwrap();
        let key = format!("{prefix}/subnets/{}", subnet.replace('/', "-"));
        let record: Value = serde_json::from_str(
            ul.etcd
                .ctl(&["get", &key, "--print-value-only"])
                .unwrap()
                .trim(),
        )
        .unwrap();
        assert_eq!(record["BackendType"], "vxlan");
        assert_eq!(record["BackendData"]["VNI"], 1);
        flannel.add_peer(
            subnet,
            record["PublicIP"].as_str().unwrap(),
            record["BackendData"]["VtepMAC"].as_str().unwrap(),
        );
    }
    for n in &nodes {
        let (pod, ip) = &n.pods[0];
        assert!(
            ping(pod, &flannel.pod_ip, 3) > 0,
            "tapswitch pod {ip} -> flannel pod {}",
            flannel.pod_ip
        );
        assert!(
            ping(&flannel.pod, ip, 3) > 0,
            "flannel pod {} -> tapswitch pod {ip}",
            flannel.pod_ip
        );
    }
    assert_all_reach(&nodes);
    drop(flannel.host);
}

/// host-gw and ipip: three nodes each, every pod reaches every other.
#[test]
fn host_gw_and_ipip_nodes_reach_each_other() {
    if !have_root() {
        return;
    }
    for (kind, backend, route) in [
        ("host-gw", Backend::Underlay, "direct"),
        ("ipip", Backend::Kernel, "ipip"),
    ] {
        let ul = underlay();
        let prefix = format!("/{}/network", unique("ts"));
        ul.etcd.put(
            &format!("{prefix}/config"),
            &format!(r#"{{"Network":"10.42.0.0/16","Backend":{{"Type":"{kind}"}}}}"#),
        );
        let nodes: Vec<Node> = (1..=3)
            .map(|n| node_with(&ul, n, &prefix, 2, backend))
            .collect();
        for n in &nodes {
            eventually("two peers programmed", 10, || {
                let peers = status(&n.switch)["peers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                peers.len() == 2 && peers.iter().all(|p| p["route"] == route)
            });
        }
        if let Backend::Underlay = backend {
            // The PublicIP is the underlay interface's address.
            let st = status(&nodes[0].switch);
            assert_eq!(st["lease"]["public_ip"], "192.168.77.101", "{st}");
        }
        assert_all_reach(&nodes);
    }
}

/// etcd stopped for 10 s under traffic: nothing is lost, the nodes reconnect. Then one node is
/// cut off etcd while a Service is written and the history compacted: when it is back, it
/// lists everything again and the Service arrives.
#[test]
fn etcd_outages_keep_forwarding_and_catch_up() {
    if !have_root() {
        return;
    }
    let mut ul = underlay();
    let prefix = network(&ul, "vxlan");
    let nodes: Vec<Node> = (1..=2)
        .map(|n| node_with(&ul, n, &prefix, 1, Backend::LongLease))
        .collect();
    wait_peers(&nodes, 1, "vxlan");
    let (a, b) = (&nodes[0].pods[0], &nodes[1].pods[0]);
    let target: std::net::Ipv4Addr = b.1.parse().unwrap();
    let count = 260; // 13 s at 50 ms
    let result = std::thread::scope(|s| {
        let pinger = s.spawn(|| {
            probe::ping(
                &a.0,
                target.into(),
                count,
                Duration::from_millis(50),
                Duration::from_secs(2),
            )
        });
        std::thread::sleep(Duration::from_secs(1));
        ul.etcd.stop();
        std::thread::sleep(Duration::from_secs(10));
        ul.etcd.spawn();
        pinger.join().unwrap().expect("ping")
    });
    assert_eq!(
        result.received, count,
        "pod to pod while etcd was down: {} of {} answered",
        result.received, result.sent
    );
    for n in &nodes {
        eventually("the node is back on etcd", 20, || {
            let st = status(&n.switch);
            st["state"] == "running" && st["reconnects"].as_u64().unwrap_or(0) >= 1
        });
    }

    // Node 1 cut off etcd; a Service is written and the history compacted meanwhile.
    let node1 = &nodes[0];
    let resyncs = status(&node1.switch)["resyncs"].as_u64().unwrap();
    node1._host.ip(&["link", "set", "mg0", "down"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let svc = format!(
        r#"{{"vip":"10.96.0.20","port":80,"backends":["{}:80"]}}"#,
        b.1
    );
    ul.etcd.put(&format!("{prefix}/services/late"), &svc);
    // One more revision, and everything before it compacted away: the Service's put is gone
    // from the history node 1 would resume from.
    let out = ul
        .etcd
        .ctl(&["-w", "json", "put", &format!("{prefix}/unrelated"), "x"])
        .unwrap();
    let revision = serde_json::from_str::<Value>(&out).unwrap()["header"]["revision"]
        .as_u64()
        .unwrap();
    ul.etcd.ctl(&["compact", &revision.to_string()]).unwrap();
    eventually("node 2 has the Service at once", 10, || {
        nodes[1]
            .switch
            .json(&["service", "list"])
            .to_string()
            .contains("late")
    });
    assert!(!node1
        .switch
        .json(&["service", "list"])
        .to_string()
        .contains("late"));
    std::thread::sleep(Duration::from_secs(6));
    node1._host.ip(&["link", "set", "mg0", "up"]).unwrap();
    eventually("node 1 catches up after the outage", 30, || {
        node1
            .switch
            .json(&["service", "list"])
            .to_string()
            .contains("late")
    });
    let st = status(&node1.switch);
    assert!(
        st["resyncs"].as_u64().unwrap() > resyncs,
        "a compacted revision means listing again: {st}"
    );
    assert!(ping(&a.0, &b.1, 3) > 0);
}

/// What is refused and what is ignored: a config that changes the Network, and two leases with
/// one PublicIP.
#[test]
fn network_changes_are_refused_and_duplicate_public_ips_ignored() {
    if !have_root() {
        return;
    }
    let ul = underlay();
    let prefix = network(&ul, "vxlan");
    let nodes: Vec<Node> = (1..=2).map(|n| node(&ul, n, &prefix, 1)).collect();
    wait_peers(&nodes, 1, "vxlan");
    let routes_before = nodes[0].switch.json(&["route", "show"]);
    ul.etcd.put(
        &format!("{prefix}/config"),
        r#"{"Network":"10.43.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    eventually("the change is refused", 10, || {
        status(&nodes[0].switch)["last_error"]
            .to_string()
            .contains("refused while running")
    });
    assert_eq!(nodes[0].switch.json(&["route", "show"]), routes_before);
    assert_all_reach(&nodes);

    // Someone else's record claims node 2's PublicIP.
    let node2 = status(&nodes[1].switch)["lease"].clone();
    let fake = format!("{prefix}/subnets/10.42.222.0-24");
    ul.etcd.put(
        &fake,
        &format!(
            r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:de:ad:00:00:01"}}}}"#,
            node2["public_ip"].as_str().unwrap()
        ),
    );
    eventually("node 1 programs neither", 10, || {
        let peers = status(&nodes[0].switch)["peers"].clone();
        peers.as_array().is_some_and(|p| {
            p.len() == 2
                && p.iter()
                    .all(|p| p["ignored"].to_string().contains("one PublicIP"))
        })
    });
    eventually("node 2 names the claim", 10, || {
        status(&nodes[1].switch)["recent_warnings"]
            .to_string()
            .contains("10.42.222.0-24")
    });
    ul.etcd.ctl(&["del", &fake]).unwrap();
    eventually("node 1 programs node 2 again", 10, || {
        let peers = status(&nodes[0].switch)["peers"].clone();
        peers
            .as_array()
            .is_some_and(|p| p.len() == 1 && p[0]["route"] == "vxlan")
    });
    assert_all_reach(&nodes);
}

/// TLS with client certificates: a node with the test CA's client certificate leases and
/// programs its peer; one with a certificate nobody signed gets nothing, and says why.
#[test]
fn etcd_over_tls_with_client_certificates() {
    if !have_root() {
        return;
    }
    let ul = underlay_with(true);
    let pki = ul.etcd.pki.as_ref().unwrap();
    let prefix = network(&ul, "vxlan");
    let config = |n: u8, cert: &str| {
        format!(
            r#"
[cluster]
etcd_endpoints = ["{url}"]
etcd_ca = "{ca}"
etcd_cert = "{cert_file}"
etcd_key = "{key_file}"
prefix = "{prefix}"
public_ip = "192.168.77.{n}"
pod_vlan = 10
lease_ttl_secs = {SHORT_TTL}
"#,
            url = ul.etcd.url,
            ca = pki.file("ca.pem"),
            cert_file = pki.file(&format!("{cert}.pem")),
            key_file = pki.file(&format!("{cert}-key.pem")),
        )
    };
    let hosts: Vec<Netns> = (1..=3).map(|n| host(&ul, n)).collect();
    let good: Vec<Switch> = (0..2)
        .map(|i| Switch::start_in(&hosts[i], Some(&config(i as u8 + 1, "client"))))
        .collect();
    for s in &good {
        eventually("a lease over TLS, and the peer", 20, || {
            let st = status(s);
            st["lease"]["subnet"].is_string() && st["peers"][0]["route"] == "vxlan"
        });
        assert_eq!(status(s)["endpoints"][0]["healthy"], true);
    }
    let rogue = Switch::start_in(&hosts[2], Some(&config(3, "rogue")));
    eventually("the rogue node says why it has no lease", 20, || {
        let st = status(&rogue);
        st["lease"].is_null() && !st["last_error"].is_null()
    });
    std::thread::sleep(Duration::from_secs(2));
    let st = status(&rogue);
    assert!(st["lease"].is_null(), "{st}");
    assert_eq!(st["endpoints"][0]["healthy"], false, "{st}");
    let leases = ul
        .etcd
        .ctl(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{prefix}/subnets/"),
        ])
        .unwrap();
    assert_eq!(
        leases.lines().filter(|l| !l.is_empty()).count(),
        2,
        "{leases}"
    );
}

/// A node restarted while etcd is down forwards as it last knew (its cache), gets its subnet
/// back when etcd returns, and `stop --purge` leaves the cluster at once (the lease revoked,
/// not left to expire).
#[test]
fn a_restart_while_etcd_is_down_forwards_from_the_cache() {
    if !have_root() {
        return;
    }
    let mut ul = underlay();
    let prefix = network(&ul, "vxlan");
    let mut nodes: Vec<Node> = (1..=2)
        .map(|n| node_with(&ul, n, &prefix, 1, Backend::LongLease))
        .collect();
    wait_peers(&nodes, 1, "vxlan");
    let subnet = status(&nodes[0].switch)["lease"]["subnet"].clone();
    // Let the cache be written (every 2 s at most).
    std::thread::sleep(Duration::from_secs(3));
    ul.etcd.stop();
    nodes[0].switch.stop();
    nodes[0].switch.restart();
    // The agent programs its cache as it starts (its own thread, through the socket).
    eventually("forwarding from the cache", 10, || {
        status(&nodes[0].switch)["state"]
            .as_str()
            .is_some_and(|s| s.contains("last known"))
    });
    let (a, b) = (&nodes[0].pods[0], &nodes[1].pods[0]);
    assert!(
        ping(&a.0, &b.1, 3) > 0,
        "pod to pod from the cache, etcd down"
    );
    assert!(ping(&b.0, &a.1, 3) > 0);
    ul.etcd.spawn();
    eventually("back on etcd", 20, || {
        status(&nodes[0].switch)["state"] == "running"
    });
    assert_eq!(status(&nodes[0].switch)["lease"]["subnet"], subnet);
    assert!(ping(&a.0, &b.1, 3) > 0);

    // Leaving: node 2 purged; node 1 drops it long before its 60 s lease would expire.
    let gone = nodes.pop().unwrap();
    let started = Instant::now();
    drop(gone);
    eventually("node 2's lease revoked", 10, || {
        status(&nodes[0].switch)["peers"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A node started before etcd: it says so and keeps retrying, its pods still switch among
/// themselves; once etcd answers it waits for the network config, then leases.
#[test]
fn a_node_started_before_etcd_waits_then_joins() {
    if !have_root() {
        return;
    }
    let mut ul = underlay();
    ul.etcd.stop();
    let prefix = format!("/{}/network", unique("ts"));
    let host = host(&ul, 1);
    let switch = Switch::start_in(
        &host,
        Some(&cluster_config(&ul, &prefix, "192.168.77.1", SHORT_TTL)),
    );
    eventually("the node says etcd is away", 20, || {
        let st = status(&switch);
        st["state"] == "reconnecting"
            && st["endpoints"][0]["healthy"] == false
            && st["last_error"].to_string().contains("connect")
    });
    // Local traffic: two pods on the pod VLAN reach each other meanwhile.
    let (p1, p2) = (container("clp", false), container("clp", false));
    let (t1, t2) = (unique("clt"), unique("clt"));
    switch.add_container_port(&p1, &t1, &["--vlan", "10"], &["192.168.199.1/24"]);
    switch.add_container_port(&p2, &t2, &["--vlan", "10"], &["192.168.199.2/24"]);
    assert!(ping(&p1, "192.168.199.2", 3) > 0);
    ul.etcd.spawn();
    eventually("waiting for the network config", 20, || {
        status(&switch)["state"]
            .to_string()
            .contains(&format!("waiting for {prefix}/config"))
    });
    ul.etcd.put(
        &format!("{prefix}/config"),
        r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    eventually("the lease", 20, || {
        status(&switch)["lease"]["subnet"].is_string()
    });
    assert_eq!(status(&switch)["state"], "running");
    assert!(ping(&p1, "192.168.199.2", 3) > 0);
}
