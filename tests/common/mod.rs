//! What the namespace tests share: a root check that fails under CI, unique names, the
//! tapswitch daemon as a child process, and the CLI; [`vm`]: QEMU VMs on its ports.
//!
//! Every namespace, device and process a test makes is owned by a guard whose `Drop` removes
//! it, so a failing assertion still cleans up.

#![allow(dead_code)]

pub mod vm;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use tapswitch::probe::{self, ip, Netns};

pub const BIN: &str = env!("CARGO_BIN_EXE_tapswitch");

/// Whether this test can run. Without root it is skipped with a message, except under
/// `CI=true`, where it fails: CI runs as root and must never skip silently.
pub fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0 && std::path::Path::new("/dev/net/tun").exists();
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("namespace tests need root and /dev/net/tun, and CI=true forbids skipping");
        }
        eprintln!("skipped: needs root and /dev/net/tun");
    }
    root
}

/// A short name unique to this process and call, for namespaces and devices
/// (interface names have at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// A `tapswitch run` child process with its own control socket and state directory. When
/// dropped it is stopped with `tapswitch stop --purge` (every port removed, TAPs deleted),
/// or killed if that fails, and its socket, configuration file and state directory are
/// removed.
pub struct Switch {
    pub socket: PathBuf,
    child: Option<Child>,
    pub config_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// The namespace the daemon runs in (`ip netns exec`), if any.
    netns: Option<String>,
}

impl Switch {
    /// Starts the daemon on the embedded default.
    pub fn start() -> Switch {
        Switch::start_with(None, None)
    }

    /// Starts the daemon with `config` (TOML text).
    pub fn with_config(config: &str) -> Switch {
        Switch::start_with(None, Some(config))
    }

    /// Starts the daemon inside namespace `host` (`ip netns exec HOST tapswitch ... run`), so
    /// its VXLAN sockets live there; with `config` (TOML text) if given. The CLI still reaches
    /// it from anywhere through the socket file.
    pub fn start_in(host: &Netns, config: Option<&str>) -> Switch {
        Switch::start_with(Some(host.name()), config)
    }

    fn start_with(netns: Option<&str>, config: Option<&str>) -> Switch {
        let socket = std::env::temp_dir().join(format!("{}.sock", unique("tapswitch-test-")));
        let config_file = config.map(|text| {
            let path = socket.with_extension("toml");
            std::fs::write(&path, text).expect("write config");
            path
        });
        let mut switch = Switch {
            state_dir: socket.with_extension("state"),
            socket,
            child: None,
            config_file,
            netns: netns.map(str::to_string),
        };
        switch.restart();
        switch
    }

    /// Starts the daemon again (after [`stop`](Self::stop) or [`kill`](Self::kill)) with the
    /// same socket, configuration file and state directory, and waits until it answers.
    pub fn restart(&mut self) {
        let child = self.spawn(&[]);
        self.child = Some(child);
        self.wait_ready();
    }

    /// Spawns `tapswitch run` with this switch's socket, file and state directory, and
    /// `extra` arguments of `run`.
    pub fn spawn(&self, extra: &[&str]) -> Child {
        self.command(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn tapswitch")
    }

    /// The command line of [`spawn`](Self::spawn).
    pub fn command(&self, extra: &[&str]) -> Command {
        // `ip netns exec` execs the program in place, so the child's PID is the daemon's own
        // and SIGTERM reaches it.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("--socket").arg(&self.socket).arg("run");
        cmd.arg("--state-dir").arg(&self.state_dir);
        if let Some(path) = &self.config_file {
            cmd.arg("--config").arg(path);
        }
        cmd.args(extra);
        cmd
    }

    /// Waits until the daemon answers on its socket.
    pub fn wait_ready(&mut self) {
        let switch = self;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !switch.socket.exists() || switch.try_cli(&["port", "list"]).is_err() {
            if let Some(status) = switch
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tapswitch exited during start: {status}");
            }
            assert!(Instant::now() < deadline, "tapswitch did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the running daemon by a new process of `binary` with `run --takeover`, and
    /// waits until the old one has exited (successfully) and the new one answers.
    pub fn take_over_with(&mut self, binary: &std::path::Path) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.arg("--socket").arg(&self.socket).arg("run");
        cmd.arg("--state-dir").arg(&self.state_dir);
        if let Some(path) = &self.config_file {
            cmd.arg("--config").arg(path);
        }
        cmd.arg("--takeover");
        let new = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn tapswitch --takeover");
        let mut old = self
            .child
            .replace(new)
            .expect("a running daemon to take over from");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(status)) = old.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = old.kill();
                panic!("the old daemon did not exit after the takeover");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            status.success(),
            "the old daemon exits 0 after a takeover: {status}"
        );
        self.wait_ready();
    }

    /// The daemon's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the daemon with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a CLI verb against this switch; Ok(stdout) or Err(stderr).
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = cli(&self.socket, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs a CLI verb that must succeed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("tapswitch {}: {e}", args.join(" ")))
    }

    /// Runs a CLI verb with `-j` and parses its JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.push("-j");
        serde_json::from_str(&self.cli(&full)).expect("JSON output")
    }

    /// Each worker's counter `key` (`rx_packets`, `busy_poll_ns`, ...) from `stats -j`.
    pub fn worker_counters(&self, key: &str) -> Vec<u64> {
        self.json(&["stats"])["workers"]
            .as_array()
            .expect("stats -j has workers")
            .iter()
            .map(|w| w[key].as_u64().unwrap_or(0))
            .collect()
    }

    /// The sum of one counter over every worker.
    pub fn workers_sum(&self, key: &str) -> u64 {
        self.worker_counters(key).iter().sum()
    }

    /// Adds a TAP port in `ns` and gives it `addrs`.
    pub fn add_container_port(&self, ns: &Netns, port: &str, extra: &[&str], addrs: &[&str]) {
        let mut args = vec!["port", "add", port, "--netns", ns.name()];
        args.extend_from_slice(extra);
        self.cli(&args);
        for a in addrs {
            ns.add_addr(port, a).expect("address");
        }
    }

    /// Counters of one port from `stats -j`.
    pub fn port_stats(&self, port: &str) -> serde_json::Value {
        let stats = self.json(&["stats"]);
        stats["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["name"] == port).cloned())
            .unwrap_or_else(|| panic!("no stats for port {port}: {stats}"))
    }

    /// Learned and static entries from `fdb show -j`.
    pub fn fdb(&self) -> Vec<serde_json::Value> {
        self.json(&["fdb", "show"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill on the PID of a child this guard started and has not reaped.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill on the PID of a child this guard started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Remove every port (TAPs in the root namespace would outlive the test), then wait.
            let purged = cli(&self.socket, &["stop", "--purge"]).status.success();
            let deadline = Instant::now() + Duration::from_secs(10);
            while purged && Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(p) = &self.config_file {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Runs the CLI against `socket`.
pub fn cli(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run tapswitch CLI")
}

/// A namespace as a container: IPv6 off (so the only traffic is what the test sends) unless
/// `ipv6` is true.
pub fn container(prefix: &str, ipv6: bool) -> Netns {
    let ns = Netns::create(&unique(prefix)).expect("create namespace");
    if !ipv6 {
        sysctl(&ns, "net.ipv6.conf.all.disable_ipv6", "1");
        sysctl(&ns, "net.ipv6.conf.default.disable_ipv6", "1");
    }
    ns
}

pub fn sysctl(ns: &Netns, key: &str, value: &str) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={value}"),
        ])
        .output()
        .expect("sysctl");
    assert!(
        out.status.success(),
        "sysctl {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pings `dst` (IPv4 or IPv6) from `ns` `count` times (the kernel answers); returns replies
/// received.
pub fn ping(ns: &Netns, dst: &str, count: u32) -> u32 {
    probe::ping(
        ns,
        dst.parse().expect("IP address"),
        count,
        Duration::from_millis(50),
        Duration::from_millis(500),
    )
    .expect("ping")
    .received
}

/// The drop counter `reason` of `port`.
/// The sum of a counters object's `drops` (a port, `vxlan`, `ipip` from `stats -j`).
pub fn all_drops(counters: &serde_json::Value) -> u64 {
    counters["drops"]
        .as_object()
        .unwrap_or_else(|| panic!("no drops: {counters}"))
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// The names in `port list -j`, in the switch's order.
pub fn port_names(switch: &Switch) -> Vec<String> {
    switch
        .json(&["port", "list"])
        .as_array()
        .unwrap_or_else(|| panic!("port list is not a list"))
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A port's entry in `port list -j`.
pub fn listed_port(switch: &Switch, port: &str) -> serde_json::Value {
    let listed = switch.json(&["port", "list"]);
    listed
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == port))
        .cloned()
        .unwrap_or_else(|| panic!("{port} not listed: {listed}"))
}

pub fn drops(switch: &Switch, port: &str, reason: &str) -> u64 {
    switch.port_stats(port)["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// A TCP server on `ip`:`port` inside `server` answers one connection with `reply`; connects
/// from `client` to `to` and returns what it read.
pub fn tcp_once(
    server: &Netns,
    ip: &str,
    port: u16,
    client: &Netns,
    to: &str,
    reply: &str,
) -> String {
    use std::io::{Read, Write};
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let listener = server
        .run(|| std::net::TcpListener::bind((ip, port)))
        .expect("listen");
    let reply = reply.to_string();
    let srv = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(reply.as_bytes());
        }
    });
    let to: std::net::SocketAddr = to.parse().unwrap();
    let mut got = String::new();
    match client.run(|| std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))) {
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.read_to_string(&mut got);
        }
        Err(e) => {
            let _ = server.run(|| std::net::TcpStream::connect((ip, port)));
            srv.join().unwrap();
            panic!("connect to {to}: {e}");
        }
    }
    srv.join().unwrap();
    got
}

/// A CLI verb running in the background (a capture, a live trace), killed on drop if it is
/// still running.
pub struct Background {
    pub child: Child,
    /// The rest of its stderr, read by a thread.
    err: Option<std::thread::JoinHandle<String>>,
}

impl Background {
    /// Starts `tapswitch --socket S ARGS...` with stdout and stderr piped, and waits for the
    /// first line of its stderr (`tapswitch: capturing on ...`): from then on it records.
    pub fn start(switch: &Switch, args: &[&str]) -> Background {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .arg("--socket")
            .arg(&switch.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the CLI");
        let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let _ = err.read_line(&mut line);
        assert!(
            line.starts_with("tapswitch: "),
            "tapswitch {}: {line}",
            args.join(" ")
        );
        // The rest of stderr is read when the verb ends.
        child.stderr = None;
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Background {
            child,
            err: Some(rest),
        }
    }

    /// Waits for it to end (it must end by itself: a count or a duration); returns (stdout,
    /// stderr).
    pub fn finish(mut self, within: Duration) -> (Vec<u8>, String) {
        use std::io::Read;
        let deadline = std::time::Instant::now() + within;
        let mut out = Vec::new();
        let mut stdout = self.child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let _ = stdout.read_to_end(&mut out);
            out
        });
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let out = reader.join().unwrap_or_default();
                let err = self
                    .err
                    .take()
                    .map(|h| h.join().unwrap_or_default())
                    .unwrap_or_default();
                assert!(status.success(), "the CLI failed: {err}");
                return (out, err);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the CLI did not end within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `tshark -r FILE` with `args`; its stdout.
pub fn tshark(file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
