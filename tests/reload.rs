//! Reloading the configuration file: what is unchanged keeps its device and its learned MACs;
//! a bad file changes nothing.

mod common;

use common::*;

fn ifindex(ns: &Netns, dev: &str) -> String {
    ns.ip(&["-o", "link", "show", "dev", dev])
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

fn port_toml(name: &str, ns: &Netns, extra: &str) -> String {
    format!(
        "[[port]]\nname = \"{name}\"\nnetns = \"{}\"\n{extra}\n",
        ns.name()
    )
}

#[test]
fn reload_keeps_what_is_unchanged_and_refuses_bad_files() {
    if !have_root() {
        return;
    }
    let (n1, n2, n3) = (
        container("tsh", false),
        container("tsh", false),
        container("tsh", false),
    );
    let (p1, p2, p3) = (unique("th"), unique("th"), unique("th"));
    let base = format!(
        "[switch]\nmac_aging_secs = 600\n{}{}",
        port_toml(&p1, &n1, "mac = \"02:00:00:00:69:01\""),
        port_toml(&p2, &n2, "")
    );
    let switch = Switch::with_config(&base);
    let file = switch.config_file.clone().unwrap();
    n1.add_addr(&p1, "10.69.0.1/24").unwrap();
    n2.add_addr(&p2, "10.69.0.2/24").unwrap();
    assert_eq!(ping(&n1, "10.69.0.2", 2), 2);
    let (idx1, idx2) = (ifindex(&n1, &p1), ifindex(&n2, &p2));

    // Add a port and change p2's learning bound.
    let grown = format!(
        "[switch]\nmac_aging_secs = 600\n{}{}{}",
        port_toml(&p1, &n1, "mac = \"02:00:00:00:69:01\""),
        port_toml(&p2, &n2, "max_macs = 8"),
        port_toml(&p3, &n3, "")
    );
    std::fs::write(&file, &grown).unwrap();
    let out = switch.cli(&["reload"]);
    assert!(out.contains("1 ports added, 0 removed, 2 kept"), "{out}");
    assert_eq!(
        (ifindex(&n1, &p1), ifindex(&n2, &p2)),
        (idx1.clone(), idx2),
        "devices kept"
    );
    let learned = switch.fdb();
    assert!(
        learned
            .iter()
            .any(|e| e["mac"] == "02:00:00:00:69:01" && e["type"] == "learned"),
        "learned MACs survive a reload: {learned:?}"
    );
    n3.add_addr(&p3, "10.69.0.3/24").unwrap();
    assert_eq!(ping(&n3, "10.69.0.1", 2), 2, "the added port forwards");

    // A bad file is refused with the field named; nothing changes.
    std::fs::write(
        &file,
        format!("{grown}\n[[fdb]]\nmac = \"02:00:00:00:69:09\"\nport = \"nope\"\n"),
    )
    .unwrap();
    let err = switch.try_cli(&["reload"]).unwrap_err();
    assert!(
        err.contains("fdb[0].port: port nope: no such port"),
        "{err}"
    );
    assert_eq!(switch.json(&["port", "list"]).as_array().unwrap().len(), 3);

    // SIGHUP does the same: back to the first file removes p3 and keeps the others.
    std::fs::write(&file, &base).unwrap();
    switch.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while switch.json(&["port", "list"]).as_array().unwrap().len() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        n3.ip(&["link", "show", "dev", &p3]).is_err(),
        "removed port's TAP deleted"
    );
    assert_eq!(ifindex(&n1, &p1), idx1);
    assert_eq!(ping(&n1, "10.69.0.2", 2), 2);
}
