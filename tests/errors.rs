//! Bad configuration and bad CLI calls: a clear error naming what was wrong, a non-zero exit,
//! and nothing changed.

mod common;

use std::process::Command;

use common::*;

fn run_with_config(text: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("tapswitch-bad-")));
    std::fs::write(&path, text).unwrap();
    let socket = path.with_extension("sock");
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_is_refused_with_the_field_named() {
    for (text, want) in [
        (
            "[[port]]\nname = \"tap-x\"\nvlan = 4095\n",
            "port[0] (tap-x).vlan: 4095 is not a VLAN id",
        ),
        (
            "[switch]\nmac_table_max = 0\n",
            "switch.mac_table_max: 0 is out of range",
        ),
        (
            "[[port]]\nname = \"tap-x\"\nvlan = 10\ntrunk = [20]\n",
            "port[0] (tap-x).trunk",
        ),
        (
            "[[port]]\nname = \"tap-x\"\ncolour = \"red\"\n",
            "unknown field `colour`",
        ),
        (
            "[[fdb]]\nmac = \"02:00:00:00:00:01\"\nport = \"nope\"\n",
            "fdb[0].port: port nope: no such port",
        ),
        ("[[port]\nname = 1", "line 1"),
    ] {
        let (ok, stderr) = run_with_config(text);
        assert!(!ok, "accepted: {text}");
        assert!(stderr.contains(want), "for {text:?}: {stderr}");
    }
    let out = Command::new(BIN)
        .args([
            "--socket",
            "/tmp/tapswitch-none.sock",
            "run",
            "--config",
            "/nonexistent/x.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml"));
}

#[test]
fn bad_cli_calls_name_what_was_wrong_and_change_nothing() {
    if !have_root() {
        return;
    }
    let switch = Switch::start();
    let ns = container("tse", false);
    let good = unique("te");
    switch.add_container_port(&ns, &good, &["--vlan", "10"], &[]);
    let before = switch.cli(&["port", "list", "-j"]);
    let missing_ns = unique("nons");
    for (args, want) in [
        (
            vec!["port", "del", "tap-c9"],
            "port tap-c9: no such port".to_string(),
        ),
        (
            vec!["port", "add", "tap-q", "--vlan", "5000"],
            "port tap-q.vlan: 5000 is not a VLAN id".into(),
        ),
        (
            vec!["port", "add", "tap-q", "--mac", "ff:ff:ff:ff:ff:ff"],
            "port tap-q.mac".into(),
        ),
        (
            vec!["port", "add", "tap-q", "--netns", &missing_ns],
            format!("network namespace {missing_ns} does not exist"),
        ),
        (
            vec!["port", "add", &good],
            format!("port {good}: already exists"),
        ),
        (
            vec!["port", "add", "no-such-if", "--attach"],
            "port no-such-if: no device named no-such-if".into(),
        ),
        (
            vec!["port", "add", "a/b"],
            "not a valid interface name".into(),
        ),
        (
            vec!["fdb", "add", "02:00:00:00:00:01", "--port", "tap-c9"],
            "fdb.port: port tap-c9: no such port".into(),
        ),
        (
            vec![
                "fdb",
                "add",
                "02:00:00:00:00:01",
                "--port",
                &good,
                "--vlan",
                "20",
            ],
            format!("port {good} is not a member of VLAN 20"),
        ),
        (vec!["fdb", "add", "zz", "--port", &good], "fdb.mac".into()),
        (
            vec!["fdb", "del", "02:00:00:00:00:77"],
            "fdb 02:00:00:00:00:77: no such entry".into(),
        ),
    ] {
        let err = switch
            .try_cli(&args)
            .expect_err(&format!("accepted: {args:?}"));
        assert!(err.contains(&want), "{args:?}: {err}");
    }
    // Nothing changed: same ports, no stray device, no static entry.
    assert_eq!(switch.cli(&["port", "list", "-j"]), before);
    assert!(ip(&["link", "show", "dev", "tap-q"]).is_err());
    assert!(switch.fdb().iter().all(|e| e["type"] != "static"));
    // A CLI call with no daemon says where it looked.
    let out = cli(
        std::path::Path::new("/tmp/tapswitch-nothing-here.sock"),
        &["stats"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot reach tapswitch at /tmp/tapswitch-nothing-here.sock"));
}
