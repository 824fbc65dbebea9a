//! Ports for containers as a CNI runtime makes them: in a namespace given by path, with the
//! device named as the runtime asks (`eth0` in every container), owned by a container, with
//! its addresses and labels recorded.

mod common;

use std::time::Duration;

use common::*;

fn ifindex(ns: &Netns, dev: &str) -> Option<String> {
    let out = ns.ip(&["-o", "link", "show", dev]).ok()?;
    out.split(':').next().map(|s| s.trim().to_string())
}

#[test]
fn container_ports_by_namespace_path_with_their_own_device_names() {
    if !have_root() {
        return;
    }
    let mut switch = Switch::start();
    let (c1, c2) = (container("cnic", false), container("cnic", false));
    let (p1, p2) = (unique("cnip"), unique("cnip"));
    for (c, p, ip, id) in [
        (&c1, &p1, "10.42.0.5/24", "aaaa1111"),
        (&c2, &p2, "10.42.0.6/24", "bbbb2222"),
    ] {
        let path = format!("/run/netns/{}", c.name());
        switch.cli(&[
            "port",
            "add",
            p,
            "--netns",
            &path,
            "--ifname",
            "eth0",
            "--vlan",
            "10",
            "--container-id",
            id,
            "--address",
            ip,
            "--label",
            "app=web",
            "--label",
            "namespace=shop",
        ]);
        c.add_addr("eth0", ip).unwrap();
    }
    // Both containers have their eth0; they reach each other.
    assert!(ping(&c1, "10.42.0.6", 3) > 0);
    let port = listed_port(&switch, &p1);
    assert_eq!(port["ifname"], "eth0", "{port}");
    assert_eq!(port["container_id"], "aaaa1111");
    assert_eq!(port["addresses"][0], "10.42.0.5/24");
    assert_eq!(port["labels"]["app"], "web");
    assert_eq!(port["netns"], format!("/run/netns/{}", c1.name()));
    let text = switch.cli(&["port", "list"]);
    assert!(
        text.contains("ifname eth0") && text.contains("container aaaa1111"),
        "{text}"
    );

    // A restart adopts the same device in the same namespace, with its address.
    let before = ifindex(&c1, "eth0").expect("eth0");
    switch.stop();
    switch.restart();
    assert_eq!(ifindex(&c1, "eth0"), Some(before));
    assert_eq!(listed_port(&switch, &p1)["container_id"], "aaaa1111");
    assert!(ping(&c1, "10.42.0.6", 3) > 0);

    // Removal deletes the container's device.
    switch.cli(&["port", "del", &p1]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ifindex(&c1, "eth0"), None);
    // Errors name the field.
    let e = switch
        .try_cli(&["port", "add", &unique("cnip"), "--netns", "rel/path"])
        .unwrap_err();
    assert!(e.contains("netns"), "{e}");
    let e = switch
        .try_cli(&["port", "add", &unique("cnip"), "--ifname", "a/b"])
        .unwrap_err();
    assert!(e.contains("ifname"), "{e}");
}

/// Where Debian's containernetworking-plugins puts the reference plugins (host-local).
const CNI_PATH: &str = "/usr/lib/cni";

/// Runs the plugin as a runtime does: `CNI_*` in the environment, the configuration on stdin.
/// Returns stdout as JSON (null when empty) and the exit status.
fn cni(cmd: &str, id: &str, netns: &str, conf: &str) -> (serde_json::Value, i32) {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (v, out.status.code().unwrap_or(-1))
}

/// A conflist entry for the switch at `socket`, leasing from `subnet`.0/24 with host-local
/// keeping its leases in `data`.
fn conf(socket: &std::path::Path, data: &std::path::Path, subnet: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"tsnet","type":"tapswitch","socket":"{}","vlan":10,"mtu":1500,
            "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{subnet}.0/24","gateway":"{subnet}.1"}}]]}}}}"#,
        socket.display(),
        data.display()
    )
}

/// host-local's leases: the addresses it holds for containers.
fn leases(data: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for net in std::fs::read_dir(data).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(net.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have_host_local() -> bool {
    let there = std::path::Path::new(CNI_PATH).join("host-local").exists();
    if !there {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "host-local is missing: apt-get install containernetworking-plugins"
        );
        eprintln!("skipped: no {CNI_PATH}/host-local");
    }
    there
}

#[test]
fn cni_verbs_as_the_spec_drives_them() {
    if !have_root() || !have_host_local() {
        return;
    }
    let switch = Switch::start();
    let data = TempDir(std::env::temp_dir().join(unique("cniipam")));
    let conf = conf(&switch.socket, &data.0, "10.77.0");
    let (a, b) = (container("cnia", false), container("cnia", false));
    let (pa, pb) = (
        format!("/run/netns/{}", a.name()),
        format!("/run/netns/{}", b.name()),
    );

    // ADD: a spec result, the container configured, the gateway made on the VLAN.
    let (ra, code) = cni("ADD", "ctr-a", &pa, &conf);
    assert_eq!(code, 0, "{ra}");
    assert_eq!(ra["cniVersion"], "1.0.0");
    assert_eq!(ra["interfaces"][0]["name"], "eth0");
    assert_eq!(ra["interfaces"][0]["sandbox"], pa.as_str());
    assert_eq!(ra["ips"][0]["interface"], 0);
    assert_eq!(ra["ips"][0]["gateway"], "10.77.0.1");
    assert_eq!(ra["routes"][0]["dst"], "0.0.0.0/0");
    let (rb, code) = cni("ADD", "ctr-b", &pb, &conf);
    assert_eq!(code, 0, "{rb}");
    let ip_b = rb["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(ra["ips"][0]["address"], rb["ips"][0]["address"]);
    assert!(ping(&a, &ip_b, 3) > 0, "container to container");
    assert!(ping(&a, "10.77.0.1", 3) > 0, "container to its gateway");
    let mac = a.ip(&["-o", "link", "show", "eth0"]).unwrap();
    assert!(
        mac.contains(ra["interfaces"][0]["mac"].as_str().unwrap()),
        "{mac}"
    );
    let port = tapswitch_control::cni::port_name("ctr-a", "eth0");
    let listed = listed_port(&switch, &port);
    assert_eq!(listed["container_id"], "ctr-a");
    assert_eq!(listed["addresses"][0], ra["ips"][0]["address"]);
    assert_eq!(leases(&data.0).len(), 2);

    // CHECK against the result; then with the address gone.
    let mut with_prev: serde_json::Value = serde_json::from_str(&conf).unwrap();
    with_prev["prevResult"] = ra.clone();
    let (out, code) = cni("CHECK", "ctr-a", &pa, &with_prev.to_string());
    assert_eq!(code, 0, "{out}");
    let addr = ra["ips"][0]["address"].as_str().unwrap();
    a.ip(&["addr", "del", addr, "dev", "eth0"]).unwrap();
    let (out, code) = cni("CHECK", "ctr-a", &pa, &with_prev.to_string());
    assert_eq!((code, &out["code"]), (1, &101.into()), "{out}");
    assert!(out["msg"].as_str().unwrap().contains(addr), "{out}");

    // STATUS: ready; and not, for a switch that is not there.
    assert_eq!(cni("STATUS", "", "", &conf).1, 0);
    let elsewhere = conf.replace(switch.socket.to_str().unwrap(), "/nonexistent/ts.sock");
    let (out, code) = cni("STATUS", "", "", &elsewhere);
    assert_eq!((code, &out["code"]), (1, &50.into()), "{out}");

    // DEL: the port and the lease go; again, and without a namespace: no error.
    let (out, code) = cni("DEL", "ctr-a", &pa, &conf);
    assert_eq!(code, 0, "{out}");
    assert!(!port_names(&switch).contains(&port));
    assert_eq!(leases(&data.0).len(), 1);
    assert_eq!(cni("DEL", "ctr-a", &pa, &conf).1, 0);
    assert_eq!(cni("DEL", "ctr-a", "", &conf).1, 0);

    // GC: only ctr-c is valid: ctr-b's port and lease go.
    let c = container("cnia", false);
    let pc = format!("/run/netns/{}", c.name());
    assert_eq!(cni("ADD", "ctr-c", &pc, &conf).1, 0);
    let mut gc: serde_json::Value = serde_json::from_str(&conf).unwrap();
    gc["cniVersion"] = "1.1.0".into();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "ctr-c", "ifname": "eth0"}]);
    let (out, code) = cni("GC", "", "", &gc.to_string());
    assert_eq!(code, 0, "{out}");
    let names = port_names(&switch);
    assert!(!names.contains(&tapswitch_control::cni::port_name("ctr-b", "eth0")));
    assert!(names.contains(&tapswitch_control::cni::port_name("ctr-c", "eth0")));
    assert_eq!(leases(&data.0).len(), 1);
}

#[test]
fn cni_errors_leave_nothing_behind() {
    if !have_root() || !have_host_local() {
        return;
    }
    let switch = Switch::start();
    let data = TempDir(std::env::temp_dir().join(unique("cniipam")));
    let conf = conf(&switch.socket, &data.0, "10.78.0");
    let ns = container("cnie", false);
    let path = format!("/run/netns/{}", ns.name());
    let ports_before = port_names(&switch).len();
    let cases: Vec<(&str, String, String, u64, &str)> = vec![
        ("bad JSON", path.clone(), "{nope".into(), 6, "not JSON"),
        (
            "unknown version",
            path.clone(),
            conf.replace("\"1.0.0\"", "\"0.9.9\""),
            1,
            "0.9.9",
        ),
        (
            "missing netns",
            "/run/netns/no-such-ns".into(),
            conf.clone(),
            3,
            "no-such-ns",
        ),
        (
            "daemon down",
            path.clone(),
            conf.replace(switch.socket.to_str().unwrap(), "/nonexistent/ts.sock"),
            11,
            "not reachable",
        ),
        (
            "IPAM failure",
            path.clone(),
            conf.replace("10.78.0.0/24", "10.78.0.0/33"),
            0,
            "ipam host-local",
        ),
        (
            "unknown IPAM plugin",
            path.clone(),
            conf.replace("host-local", "no-such-ipam"),
            7,
            "no-such-ipam",
        ),
    ];
    for (what, netns, stdin, want_code, want_msg) in cases {
        let (out, code) = cni("ADD", "ctr-e", &netns, &stdin);
        assert_eq!(code, 1, "{what}: {out}");
        if want_code != 0 {
            assert_eq!(out["code"], want_code, "{what}: {out}");
        }
        assert!(
            out["msg"].as_str().unwrap_or_default().contains(want_msg),
            "{what}: {out}"
        );
        assert_eq!(
            port_names(&switch).len(),
            ports_before,
            "{what}: a port was left"
        );
        assert!(leases(&data.0).is_empty(), "{what}: a lease was left");
    }
}

/// `cmd` for container `par-I` in each of `containers`, all at once, as a kubelet does;
/// the results in order.
fn in_parallel(cmd: &str, containers: &[Netns], conf: &str) -> Vec<(serde_json::Value, i32)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                s.spawn(move || {
                    let netns = format!("/run/netns/{}", c.name());
                    cni(cmd, &format!("par-{i}"), &netns, conf)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn fifty_adds_and_dels_in_parallel() {
    if !have_root() || !have_host_local() {
        return;
    }
    let switch = Switch::start();
    let data = TempDir(std::env::temp_dir().join(unique("cniipam")));
    let conf = conf(&switch.socket, &data.0, "10.79.0");
    let containers: Vec<Netns> = (0..50).map(|_| container("cnip", false)).collect();
    let results = in_parallel("ADD", &containers, &conf);
    let mut addresses = std::collections::HashSet::new();
    for (i, (out, code)) in results.iter().enumerate() {
        assert_eq!(*code, 0, "ADD {i}: {out}");
        assert!(addresses.insert(out["ips"][0]["address"].as_str().unwrap().to_string()));
    }
    let names = port_names(&switch);
    for i in 0..50 {
        assert!(names.contains(&tapswitch_control::cni::port_name(
            &format!("par-{i}"),
            "eth0"
        )));
    }
    assert_eq!(leases(&data.0).len(), 50);
    assert!(ping(&containers[0], "10.79.0.1", 2) > 0);
    let dels: Vec<i32> = in_parallel("DEL", &containers, &conf)
        .into_iter()
        .map(|(_, code)| code)
        .collect();
    assert!(dels.iter().all(|c| *c == 0), "{dels:?}");
    assert!(leases(&data.0).is_empty());
    let left = port_names(&switch);
    assert!(!left.iter().any(|n| n.starts_with("ts")), "{left:?}");
}

#[test]
fn port_mappings_forward_and_go_with_the_container() {
    if !have_root() || !have_host_local() {
        return;
    }
    let switch = Switch::start();
    let data = TempDir(std::env::temp_dir().join(unique("cniipam")));
    let base = conf(&switch.socket, &data.0, "10.76.0");
    let (web, other) = (container("cnim", false), container("cnim", false));
    let (pw, po) = (
        format!("/run/netns/{}", web.name()),
        format!("/run/netns/{}", other.name()),
    );
    let mut with_ports: serde_json::Value = serde_json::from_str(&base).unwrap();
    with_ports["runtimeConfig"] = serde_json::json!({"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "10.76.0.1"}
    ]});
    let (rw, code) = cni("ADD", "web", &pw, &with_ports.to_string());
    assert_eq!(code, 0, "{rw}");
    assert_eq!(cni("ADD", "other", &po, &base).1, 0);
    let web_ip = rw["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let forwards = switch.json(&["dnat", "list"]);
    let list = forwards.as_array().unwrap();
    assert_eq!(list.len(), 2, "{forwards}");
    assert!(
        list.iter().all(|d| d["container_id"] == "web"),
        "{forwards}"
    );
    assert!(list
        .iter()
        .any(|d| d["address"] == "0.0.0.0" && d["port"] == 8080));
    assert!(list
        .iter()
        .any(|d| d["address"] == "10.76.0.1" && d["port"] == 8443));
    // From another container on the host (hairpin through the router), on the gateway's
    // address: the mapping without hostIP answers on every router address.
    let got = tcp_once(
        &web,
        &web_ip,
        80,
        &other,
        "10.76.0.1:8080",
        "hello from web",
    );
    assert_eq!(got, "hello from web");
    let got = tcp_once(&web, &web_ip, 443, &other, "10.76.0.1:8443", "tls-ish");
    assert_eq!(got, "tls-ish");
    // DEL takes the forwards with the port.
    assert_eq!(cni("DEL", "web", &pw, &with_ports.to_string()).1, 0);
    assert_eq!(switch.json(&["dnat", "list"]), serde_json::json!([]));
    // A mapping that cannot be made undoes the whole ADD.
    let mut clash = with_ports.clone();
    clash["runtimeConfig"]["portMappings"] = serde_json::json!([{"hostPort": 8080, "containerPort": 80}, {"hostPort": 8080, "containerPort": 81}]);
    let (out, code) = cni("ADD", "web", &pw, &clash.to_string());
    assert_eq!(code, 1, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("8080"), "{out}");
    assert_eq!(switch.json(&["dnat", "list"]), serde_json::json!([]));
    assert!(!port_names(&switch).contains(&tapswitch_control::cni::port_name("web", "eth0")));
    assert_eq!(leases(&data.0).len(), 1, "only the other container's lease");
}
