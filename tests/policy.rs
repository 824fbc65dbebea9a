//! Network policy with real kernel stacks: the NetworkPolicy cases of the Kubernetes
//! documentation, and the admin and baseline tiers, checked with real TCP connections and
//! UDP exchanges between namespaces (both ways, replies included).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// A pod: a namespace with one port on the switch, its address and labels.
struct Pod {
    ns: probe::Netns,
    port: String,
    ip: &'static str,
}

fn pod(sw: &Switch, prefix: &str, ip: &'static str, labels: &[&str]) -> Pod {
    routed_pod(sw, prefix, ip, 1, None, labels)
}

/// A pod on `vlan` whose default route is `gateway` (the switch's router).
fn routed_pod(
    sw: &Switch,
    prefix: &str,
    ip: &'static str,
    vlan: u16,
    gateway: Option<&str>,
    labels: &[&str],
) -> Pod {
    let v6 = ip.contains(':');
    let ns = container(prefix, v6);
    let port = unique(prefix);
    let cidr = format!("{ip}/{}", if v6 { 64 } else { 24 });
    let vlan = vlan.to_string();
    let mut args = vec![
        "port",
        "add",
        &port,
        "--netns",
        ns.name(),
        "--address",
        &cidr,
        "--vlan",
        &vlan,
    ];
    for l in labels {
        args.push("--label");
        args.push(l);
    }
    sw.cli(&args);
    ns.add_addr(&port, &cidr).unwrap();
    if let Some(gw) = gateway {
        ns.ip(&["route", "add", "default", "via", gw]).unwrap();
    }
    Pod { ns, port, ip }
}

/// Whether a TCP connection from `client` to `server` port `port` opens and carries data
/// both ways (the server answers what it read).
fn tcp(client: &Pod, server: &Pod, port: u16) -> bool {
    let to = match server.ip.contains(':') {
        true => format!("[{}]:{port}", server.ip),
        false => format!("{}:{port}", server.ip),
    };
    tcp_to(client, server, port, &to)
}

/// [`tcp`] to the address `to` (a Service's VIP, say) that reaches `server` on `port`.
fn tcp_to(client: &Pod, server: &Pod, port: u16, to: &str) -> bool {
    let any: std::net::IpAddr = if server.ip.contains(':') {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let listener = server
        .ns
        .run(|| TcpListener::bind((any, port)))
        .expect("listen");
    listener.set_nonblocking(true).unwrap();
    let srv = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 5];
                    if s.read_exact(&mut buf).is_ok() {
                        let _ = s.write_all(&buf);
                    }
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let to: SocketAddr = to.parse().unwrap();
    let ok = client
        .ns
        .run(|| {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(1000))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"hello")?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"hello")
        })
        .unwrap_or(false);
    srv.join().unwrap();
    ok
}

/// Whether a UDP datagram from `client` to `server` port `port` is answered (the answer is
/// the reply direction of the exchange).
fn udp(client: &Pod, server: &Pod, port: u16) -> bool {
    let sock = server
        .ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let srv = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    let to: SocketAddr = format!("{}:{port}", server.ip).parse().unwrap();
    let ok = client
        .ns
        .run(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            s.set_read_timeout(Some(Duration::from_millis(1000)))?;
            s.send_to(b"ping", to)?;
            let mut buf = [0u8; 64];
            let (n, _) = s.recv_from(&mut buf)?;
            Ok(&buf[..n] == b"ping")
        })
        .unwrap_or(false);
    srv.join().unwrap();
    ok
}

/// Adds the policies in `toml` (a policy file).
fn add(sw: &Switch, toml: &str) {
    let dir = std::env::temp_dir().join(unique("pol"));
    std::fs::write(&dir, toml).unwrap();
    let out = sw.try_cli(&["policy", "add", dir.to_str().unwrap()]);
    std::fs::remove_file(&dir).unwrap();
    out.unwrap_or_else(|e| panic!("policy add: {e}"));
}

/// The hits of rule `index` of `direction` of the policy `name`.
fn hits(sw: &Switch, name: &str, direction: &str, index: u64) -> u64 {
    let list = sw.json(&["policy", "list"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| {
            p["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["direction"] == direction && r["index"] == index)
                .and_then(|r| r["hits"].as_u64())
        })
        .unwrap_or_else(|| panic!("no rule {name}/{direction}[{index}] in {list:#}"))
}

#[test]
fn kubernetes_network_policy_cases_with_real_tcp_and_udp() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let web = pod(&sw, "pweb", "10.79.0.10", &["app=web", "namespace=shop"]);
    let front = pod(
        &sw,
        "pfront",
        "10.79.0.11",
        &["role=frontend", "namespace=shop"],
    );
    let other = pod(
        &sw,
        "pother",
        "10.79.0.12",
        &["role=frontend", "namespace=other"],
    );
    let guest = pod(
        &sw,
        "pguest",
        "10.79.0.13",
        &["tier=guest", "namespace=shop"],
    );

    // No policy: everything connects.
    assert!(tcp(&front, &web, 80));
    assert!(tcp(&other, &web, 80));

    // Default deny ingress for web: nothing gets in; web still connects out, and the
    // replies of its connections get back in.
    add(
        &sw,
        r#"
[[policy]]
name = "default-deny-web"
select = { app = "web" }
types = ["ingress"]
"#,
    );
    assert!(!tcp(&front, &web, 80));
    assert!(!udp(&front, &web, 53));
    assert!(
        tcp(&web, &front, 8080),
        "web's own connection and its replies"
    );
    assert!(udp(&web, &guest, 5353), "web's UDP exchange and its reply");
    assert!(drops(&sw, &front.port, "policy_denied") > 0);

    // Allow from a namespace label AND a pod label, to one port.
    add(
        &sw,
        r#"
[[policy]]
name = "web-from-frontend"
select = { app = "web", namespace = "shop" }
  [[policy.ingress]]
  from = [ { select = { role = "frontend", namespace = "shop" } } ]
  ports = [ { protocol = "tcp", port = 80 } ]
"#,
    );
    assert!(tcp(&front, &web, 80));
    assert!(!tcp(&other, &web, 80), "a frontend of another namespace");
    assert!(!tcp(&guest, &web, 80), "not a frontend");
    assert!(!tcp(&front, &web, 81), "another port");
    assert!(hits(&sw, "web-from-frontend", "ingress", 0) >= 1);

    // A CIDR with an exception, to a port range: the two policies add up.
    add(
        &sw,
        r#"
[[policy]]
name = "web-from-subnet"
select = { app = "web" }
  [[policy.ingress]]
  from = [ { cidr = "10.79.0.0/24", except = ["10.79.0.12/32"] } ]
  ports = [ { protocol = "tcp", port = 8000, end_port = 8100 } ]
"#,
    );
    assert!(tcp(&guest, &web, 8050));
    assert!(tcp(&guest, &web, 8000));
    assert!(!tcp(&guest, &web, 8101), "above the range");
    assert!(!tcp(&other, &web, 8050), "the exception");
    assert!(tcp(&front, &web, 80), "the first policy still allows");
    assert!(!udp(&guest, &web, 8050), "TCP only");

    // A denied packet's dry-run trace names the tier and the isolating policies.
    let t = sw.json(&[
        "trace",
        "--in-port",
        &other.port,
        "tcp 10.79.0.12:40000 > 10.79.0.10:80",
    ]);
    let step = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "policy" && s["action"] == "denied")
        .cloned()
        .unwrap_or_else(|| panic!("no policy denial in {t:#}"));
    assert_eq!(step["tier"], "policy", "{t:#}");
    assert!(
        step["policy"]
            .as_str()
            .unwrap()
            .contains("web-from-frontend"),
        "{t:#}"
    );
    assert_eq!(t["verdict"], "dropped", "{t:#}");
    // And an allowed one names the rule.
    let t = sw.json(&[
        "trace",
        "--in-port",
        &front.port,
        "tcp 10.79.0.11:40000 > 10.79.0.10:80",
    ]);
    assert!(
        t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["stage"] == "policy"
                && s["action"] == "allowed"
                && s["rule"] == "policy/web-from-frontend/ingress[0]"),
        "{t:#}"
    );

    // Egress to DNS only, for the shop's frontends: UDP 53 out (and its reply), nothing else.
    add(
        &sw,
        r#"
[[policy]]
name = "frontend-dns-only"
select = { role = "frontend", namespace = "shop" }
types = ["egress"]
  [[policy.egress]]
  to = [ { cidr = "0.0.0.0/0" } ]
  ports = [ { protocol = "udp", port = 53 } ]
"#,
    );
    assert!(udp(&front, &guest, 53), "DNS and its reply");
    assert!(!udp(&front, &guest, 54));
    assert!(!tcp(&front, &web, 80), "egress isolated now");
    assert!(
        tcp(&guest, &front, 9000),
        "ingress is not isolated by an egress policy"
    );

    // Deleting policies takes their isolation away.
    for name in [
        "frontend-dns-only",
        "default-deny-web",
        "web-from-frontend",
        "web-from-subnet",
    ] {
        sw.cli(&["policy", "del", name]);
    }
    assert!(tcp(&other, &web, 80));
    assert!(sw.json(&["policy", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn admin_deny_overrides_a_policy_allow_pass_delegates_and_baseline_decides_the_rest() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let db = pod(&sw, "adb", "10.79.1.10", &["app=db", "namespace=shop"]);
    let front = pod(
        &sw,
        "afront",
        "10.79.1.11",
        &["role=frontend", "namespace=shop"],
    );
    let guest = pod(
        &sw,
        "aguest",
        "10.79.1.13",
        &["tier=guest", "namespace=shop"],
    );
    let mon = pod(&sw, "amon", "10.79.1.14", &["app=monitor", "namespace=ops"]);

    // Baseline: the shop denies ingress by default; nothing isolates db yet, so it decides.
    add(
        &sw,
        r#"
[[baseline_policy]]
name = "default-deny-shop"
select = { namespace = "shop" }
  [[baseline_policy.ingress]]
  action = "deny"
  from = [ { cidr = "0.0.0.0/0" } ]
"#,
    );
    assert!(!tcp(&front, &db, 5432));
    assert!(!tcp(&mon, &front, 80));
    assert!(tcp(&db, &mon, 80), "ops is not in the baseline's selection");

    // A NetworkPolicy isolating db takes over from the baseline: the shop may connect.
    add(
        &sw,
        r#"
[[policy]]
name = "db-from-shop"
select = { app = "db" }
  [[policy.ingress]]
  from = [ { select = { namespace = "shop" } } ]
"#,
    );
    assert!(tcp(&front, &db, 5432));
    assert!(tcp(&guest, &db, 5432));
    assert!(!tcp(&mon, &db, 5432), "isolated, and ops is not allowed");

    // Admin deny beats the NetworkPolicy's allow; an admin allow beats its isolation; a pass
    // before a deny-all hands the frontends to the NetworkPolicy.
    add(
        &sw,
        r#"
[[admin_policy]]
name = "no-guests-to-db"
priority = 10
select = { app = "db" }
  [[admin_policy.ingress]]
  action = "deny"
  from = [ { select = { tier = "guest" } } ]

[[admin_policy]]
name = "monitoring"
priority = 1
select = {}
  [[admin_policy.ingress]]
  action = "allow"
  from = [ { select = { app = "monitor" } } ]
  ports = [ { protocol = "tcp", port = 5432 } ]
"#,
    );
    assert!(!tcp(&guest, &db, 5432), "admin deny");
    assert!(tcp(&front, &db, 5432), "not matched by the admin deny");
    assert!(tcp(&mon, &db, 5432), "admin allow");
    assert!(!tcp(&mon, &db, 5433), "the admin allow is for one port");
    assert!(hits(&sw, "no-guests-to-db", "ingress", 0) >= 1);
    add(
        &sw,
        r#"
[[admin_policy]]
name = "frontends-to-policy"
priority = 20
select = { app = "db" }
  [[admin_policy.ingress]]
  action = "pass"
  from = [ { select = { role = "frontend" } } ]

[[admin_policy]]
name = "db-lockdown"
priority = 30
select = { app = "db" }
  [[admin_policy.ingress]]
  action = "deny"
"#,
    );
    assert!(
        tcp(&front, &db, 5432),
        "passed to the NetworkPolicy, which allows"
    );
    assert!(!tcp(&guest, &db, 5432));
    // Without the pass, the lockdown denies the frontends too.
    sw.cli(&["policy", "del", "frontends-to-policy", "--tier", "admin"]);
    assert!(!tcp(&front, &db, 5432));
    let t = sw.json(&[
        "trace",
        "--in-port",
        &front.port,
        "tcp 10.79.1.11:40000 > 10.79.1.10:5432",
    ]);
    assert!(
        t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["stage"] == "policy"
                && s["tier"] == "admin"
                && s["rule"] == "admin/db-lockdown/ingress[0]"),
        "{t:#}"
    );

    // A bad policy is refused naming the field; nothing changes.
    let before = sw.json(&["policy", "list"]);
    let dir = std::env::temp_dir().join(unique("pol"));
    std::fs::write(
        &dir,
        "[[policy]]\nname = \"bad\"\n[[policy.ingress]]\nfrom = [ { cidr = \"10.0.0.0/8\", except = [\"11.0.0.0/24\"] } ]\n",
    )
    .unwrap();
    let err = sw
        .try_cli(&["policy", "add", dir.to_str().unwrap()])
        .unwrap_err();
    std::fs::remove_file(&dir).unwrap();
    assert!(
        err.contains("policy[0] (bad).ingress[0].from[0].except[0]"),
        "{err}"
    );
    let after = sw.json(&["policy", "list"]);
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len()
    );
    // The policies are part of the running configuration, and survive a restart.
    let config = sw.cli(&["config"]);
    assert!(
        config.contains("[[admin_policy]]") && config.contains("db-lockdown"),
        "{config}"
    );
    let mut sw = sw;
    sw.stop();
    sw.restart();
    let restored = sw.json(&["policy", "list"]);
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&restored), names(&after));
    assert!(
        !tcp(&front, &db, 5432),
        "the lockdown holds after the restart"
    );
    assert!(tcp(&mon, &db, 5432), "and the monitoring allow");
}

#[test]
fn routed_and_service_traffic_is_decided_after_translation_and_the_router_is_not_restricted() {
    if !have_root() {
        return;
    }
    let sw = Switch::with_config(
        r#"
[[interface]]
vlan = 10
address = "10.80.0.1/24"

[[interface]]
vlan = 20
address = "10.80.1.1/24"

[[service]]
name = "api"
vip = "10.96.80.10"
port = 80
backends = ["10.80.1.2:8080"]
"#,
    );
    let front = routed_pod(
        &sw,
        "rfront",
        "10.80.0.2",
        10,
        Some("10.80.0.1"),
        &["role=frontend"],
    );
    let guest = routed_pod(
        &sw,
        "rguest",
        "10.80.0.3",
        10,
        Some("10.80.0.1"),
        &["role=guest"],
    );
    let api = routed_pod(
        &sw,
        "rapi",
        "10.80.1.2",
        20,
        Some("10.80.1.1"),
        &["app=api"],
    );
    add(
        &sw,
        r#"
[[policy]]
name = "api-from-frontends"
select = { app = "api" }
  [[policy.ingress]]
  from = [ { select = { role = "frontend" } } ]
  ports = [ { protocol = "tcp", port = 8080 } ]

[[policy]]
name = "frontends-to-api-only"
select = { role = "frontend" }
types = ["egress"]
  [[policy.egress]]
  to = [ { select = { app = "api" } } ]
  ports = [ { protocol = "tcp", port = 8080 } ]
"#,
    );
    // Routed, first packets waiting on ARP for the backend: allowed from a frontend only.
    assert!(tcp(&front, &api, 8080));
    assert!(!tcp(&guest, &api, 8080));
    // Through the Service's VIP: decided on the backend's address and port after DNAT.
    assert!(tcp_to(&front, &api, 8080, "10.96.80.10:80"));
    assert!(!tcp_to(&guest, &api, 8080, "10.96.80.10:80"));
    // The router's own address is not restricted (node traffic); ICMP to the backend is not
    // in the frontend's egress rule.
    assert_eq!(ping(&front.ns, "10.80.0.1", 2), 2);
    assert_eq!(ping(&front.ns, "10.80.1.2", 1), 0);
    // The backend connects out to a frontend? Its egress is open, but the frontend's
    // ingress is not isolated either: allowed, and the frontend's egress-isolated replies
    // pass as replies.
    assert!(tcp(&api, &front, 9090));
    assert!(hits(&sw, "api-from-frontends", "ingress", 0) >= 2);
}

#[test]
fn ipv6_is_decided_per_packet_and_replies_pass_as_answers() {
    if !have_root() {
        return;
    }
    let sw = Switch::start();
    let web = pod(&sw, "6web", "fd79::10", &["app=web"]);
    let front = pod(&sw, "6front", "fd79::11", &["role=frontend"]);
    let other = pod(&sw, "6other", "fd79::12", &["role=other"]);
    add(
        &sw,
        r#"
[[policy]]
name = "web6"
select = { app = "web" }
  [[policy.ingress]]
  from = [ { select = { role = "frontend" } }, { cidr = "fd00::/8", except = ["fd79::12/128"] } ]
  ports = [ { protocol = "tcp", port = 80 } ]
"#,
    );
    assert!(tcp(&front, &web, 80));
    assert!(!tcp(&other, &web, 80));
    assert!(!tcp(&front, &web, 81));
    // web's own connection out: its replies come back into the isolated port as answers
    // to what web's rules would allow (no IPv6 conntrack: see the README).
    assert!(tcp(&web, &front, 80));
    // Neighbour discovery is never restricted: web resolved its neighbours meanwhile.
    assert!(web.ns.neighbour("fd79::11").is_some());
}
