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
