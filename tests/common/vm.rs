//! Real VMs for the tests: QEMU under TCG (no KVM needed) booting a Debian cloud kernel with a
//! busybox initramfs that this module builds, its NIC a virtio-net-pci device on any backend
//! (a TAP, a vhost-user socket, or raw `-netdev` arguments).
//!
//! - **Kernel**: the package `linux-image-cloud-amd64` points at is fetched once with
//!   `apt-get download` (never installed) and unpacked with `dpkg-deb -x`; its `vmlinuz` and the
//!   modules virtio-net needs (in load order) are kept in a cache directory shared by every
//!   test process and run (`$TAPSWITCH_TEST_VM_CACHE`, default `target/tmp/vm-cache`; delete it
//!   to fetch a newer kernel), filled under a lock file.
//! - **Initramfs**: written here (cpio newc) from the host's static busybox (Debian's
//!   `busybox-static`), an `/init` that loads the modules, configures `eth0` (static or DHCP
//!   with `udhcpc`) and then serves commands on the second serial port.
//! - **Control**: the kernel console (`ttyS0`) goes to a log file; `ttyS1` is QEMU's stdin and
//!   stdout, where a shell loop reads one command per line (base64) and answers with its
//!   output's length, the output and the exit status, each framed by markers, so
//!   [`Vm::run`] gets output and status exactly.
//! - **Cleanup**: dropping a [`Vm`] kills its QEMU (by PID) and removes its directory; a
//!   [`Tap`] deletes its device.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::unique;

/// The QEMU binary the harness runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// Modules the guest loads (with what they depend on) unless they are built in.
const GUEST_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// How long [`Vm::run`] waits for a command.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the VM tests can run here (QEMU installed). Without QEMU they are skipped with a
/// message, except under `CI=true`, where that fails: CI installs it (`tests/setup.sh`).
pub fn available() -> bool {
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("VM tests need {QEMU} (sh tests/setup.sh), and CI=true forbids skipping");
        }
        eprintln!("skipped: needs {QEMU} (sh tests/setup.sh installs qemu-system-x86)");
    }
    found
}

/// The guest NIC's backend; the device is always `virtio-net-pci` on netdev `n1`.
#[derive(Debug, Clone)]
pub enum Nic {
    /// An existing TAP device that QEMU opens (`-netdev tap,ifname=NAME,script=no`).
    Tap(String),
    /// A vhost-user socket (`-chardev socket` + `-netdev vhost-user`); with `server`, QEMU
    /// listens on it (and waits for the backend before the guest runs), else it connects.
    /// Guest memory is always shared memfd with this backend.
    VhostUser { socket: PathBuf, server: bool },
    /// Any other backend: QEMU arguments that define netdev `n1` (and whatever it needs).
    Args(Vec<String>),
}

/// How the guest configures `eth0` at boot.
#[derive(Debug, Clone)]
pub enum Net {
    /// Link up, no address.
    None,
    /// A fixed address (`10.0.0.2/24`) and optionally a default gateway.
    Static {
        address: String,
        gateway: Option<String>,
    },
    /// busybox `udhcpc` in the background, retrying every second until it gets a lease
    /// (see [`Vm::wait_for_lease`]); it asks for the MTU (option 26) besides the defaults.
    Dhcp,
}

impl Net {
    pub fn fixed(address: &str, gateway: Option<&str>) -> Net {
        Net::Static {
            address: address.to_string(),
            gateway: gateway.map(str::to_string),
        }
    }
}

/// What to boot. Fields are public; [`VmConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub nic: Nic,
    pub net: Net,
    /// The NIC's MAC (default: a unique `52:54:00:..`).
    pub mac: String,
    /// The guest's `eth0` MTU for a static configuration (DHCP takes the server's).
    pub mtu: Option<u32>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Queue pairs of a vhost-user NIC (`queues=N` and `mq=on`); 1: a single pair.
    pub queues: u32,
    /// Guest RAM as a shared memfd backend (`share=on`, one NUMA node); forced for vhost-user.
    pub shared_memory: bool,
    /// IPv6 on in the guest (off by default: the only traffic is what the test sends).
    pub ipv6: bool,
    /// More `virtio-net-pci` properties (`"mrg_rxbuf=off"`, `"host_mtu=9000"`...);
    /// `vectors=0` (no MSI-X) is added unless one of them sets `vectors`.
    pub device_opts: Vec<String>,
    pub boot_timeout: Duration,
}

impl VmConfig {
    pub fn new(nic: Nic, net: Net) -> VmConfig {
        VmConfig {
            nic,
            net,
            mac: unique_mac(),
            mtu: None,
            memory_mib: 256,
            cpus: 1,
            queues: 1,
            shared_memory: false,
            ipv6: false,
            device_opts: Vec::new(),
            boot_timeout: Duration::from_secs(120),
        }
    }
}

/// A locally administered MAC unique to this process and call (QEMU's OUI).
pub fn unique_mac() -> String {
    let id = unique("");
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (h >> 16) as u8,
        (h >> 8) as u8,
        h as u8
    )
}

/// A command's result in the guest: its exit status and its stdout and stderr together.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub status: i32,
    pub output: String,
}

/// What `udhcpc` got, as its script wrote it to `/run/udhcpc.lease`.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    pub ip: String,
    /// Prefix length.
    pub prefix: u8,
    pub router: Option<String>,
    pub dns: Vec<String>,
    pub domain: Option<String>,
    pub mtu: Option<u32>,
    pub server: Option<String>,
    pub lease_secs: Option<u32>,
    /// Every variable the script saw (`ip`, `mask`, `router`, `dns`, `mtu`, `serverid`...).
    pub raw: BTreeMap<String, String>,
}

/// A persistent TAP device (`ip tuntap add NAME mode tap`), up, deleted when dropped: what a
/// VM host makes for a VM before starting QEMU on it.
pub struct Tap {
    name: String,
}

impl Tap {
    pub fn create(name: &str) -> Tap {
        super::ip(&["tuntap", "add", "dev", name, "mode", "tap"]).expect("create the VM's TAP");
        let tap = Tap {
            name: name.to_string(),
        };
        super::ip(&["link", "set", name, "up"]).expect("set the VM's TAP up");
        tap
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Err(e) = super::ip(&["link", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A running VM. Dropping it kills QEMU and removes its files.
pub struct Vm {
    name: String,
    dir: PathBuf,
    mac: String,
    child: Child,
    control: Mutex<Control>,
    boot_time: Duration,
    /// The vhost-user socket QEMU listens on (its file is removed with the VM).
    listening: Option<PathBuf>,
}

/// The guest's command channel (`ttyS1`) and what has been read from it.
struct Control {
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Read and not yet consumed.
    rx: Vec<u8>,
    next_id: u64,
}

impl Vm {
    /// Boots a VM and waits until its command channel answers (`eth0` configured; with DHCP,
    /// `udhcpc` started). Panics with QEMU's output and the console log if it does not.
    pub fn boot(config: VmConfig) -> Vm {
        let kernel = kernel().unwrap_or_else(|e| panic!("VM kernel: {e}"));
        let name = unique("tsvm");
        let dir = std::env::temp_dir().join(format!("tapswitch-{name}"));
        std::fs::create_dir_all(&dir).expect("VM directory");
        let initrd = dir.join("initramfs.cpio");
        write_initramfs(&initrd, kernel, &config).unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("VM initramfs: {e}")
        });
        let console = dir.join("console.log");
        let qemu_log = File::create(dir.join("qemu.log")).expect("QEMU log file");

        let mut cmd = Command::new(QEMU);
        cmd.args(["-accel", "tcg", "-cpu", "max", "-machine", "pc"]);
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none"]);
        cmd.args(["-no-reboot", "-name", &name]);
        cmd.arg("-m").arg(config.memory_mib.to_string());
        cmd.arg("-smp").arg(config.cpus.to_string());
        cmd.arg("-kernel").arg(&kernel.vmlinuz);
        cmd.arg("-initrd").arg(&initrd);
        cmd.args([
            "-append",
            "console=ttyS0 panic=-1 loglevel=4 i8042.noaux i8042.nokbd i8042.nopnp rdinit=/init",
        ]);
        // ttyS0: the kernel console, to a file; ttyS1: the command channel, on stdin/stdout.
        cmd.arg("-serial")
            .arg(format!("file:{}", console.display()));
        cmd.args(["-serial", "stdio"]);
        let shared = config.shared_memory || matches!(config.nic, Nic::VhostUser { .. });
        if shared {
            cmd.arg("-object").arg(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                config.memory_mib
            ));
            cmd.args(["-numa", "node,memdev=mem"]);
        }
        match &config.nic {
            Nic::Tap(ifname) => {
                cmd.arg("-netdev")
                    .arg(format!("tap,id=n1,ifname={ifname},script=no,downscript=no"));
            }
            Nic::VhostUser { socket, server } => {
                let server = if *server { ",server=on" } else { "" };
                cmd.arg("-chardev")
                    .arg(format!("socket,id=c1,path={}{server}", socket.display()));
                let queues = if config.queues > 1 {
                    format!(",queues={}", config.queues)
                } else {
                    String::new()
                };
                cmd.arg("-netdev")
                    .arg(format!("vhost-user,id=n1,chardev=c1{queues}"));
            }
            Nic::Args(args) => {
                cmd.args(args);
            }
        }
        // No MSI-X (vectors=0: legacy INTx) unless asked, the setting known to work for
        // vhost-user under TCG (no KVM irqfd); on a TAP, MSI-X works under TCG as well.
        let mut device = format!("virtio-net-pci,netdev=n1,mac={}", config.mac);
        if config.queues > 1 {
            device.push_str(",mq=on");
        }
        if !config.device_opts.iter().any(|o| o.starts_with("vectors=")) {
            device.push_str(",vectors=0");
        }
        for opt in &config.device_opts {
            device.push(',');
            device.push_str(opt);
        }
        cmd.arg("-device").arg(device);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(qemu_log));

        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("spawn {QEMU}: {e} (sh tests/setup.sh installs it)")
        });
        let control = Control {
            stdin: child.stdin.take().expect("QEMU stdin"),
            stdout: child.stdout.take().expect("QEMU stdout"),
            rx: Vec::new(),
            next_id: 1,
        };
        let mut vm = Vm {
            name,
            dir,
            mac: config.mac.clone(),
            child,
            control: Mutex::new(control),
            boot_time: Duration::ZERO,
            listening: match &config.nic {
                Nic::VhostUser {
                    socket,
                    server: true,
                } => Some(socket.clone()),
                _ => None,
            },
        };
        let deadline = started + config.boot_timeout;
        let ready = vm.wait_output(deadline, |rx| {
            find(rx, b"TSVM-READY\n").map(|at| (at + b"TSVM-READY\n".len(), ()))
        });
        if let Err(e) = ready {
            panic!("VM {} did not boot: {e} (its logs follow)", vm.name);
        }
        vm.boot_time = started.elapsed();
        vm
    }

    /// Runs `cmd` with `sh` in the guest (stdin `/dev/null`); waits up to [`RUN_TIMEOUT`].
    /// Panics if it does not end in time (with the logs); a failing status is returned.
    pub fn run(&self, cmd: &str) -> RunOutput {
        self.try_run(cmd, RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("VM {}: `{cmd}`: {e} (its logs follow)", self.name))
    }

    /// Runs `cmd` that must exit 0; returns its output.
    pub fn ok(&self, cmd: &str) -> String {
        let out = self.run(cmd);
        assert_eq!(
            out.status, 0,
            "VM {}: `{cmd}` exited {}: {}",
            self.name, out.status, out.output
        );
        out.output
    }

    /// Runs `cmd` and waits up to `timeout`. After a timeout the command goes on in the guest
    /// and later commands wait behind it; end it with one that does (`timeout 5 ...`).
    pub fn try_run(&self, cmd: &str, timeout: Duration) -> Result<RunOutput, String> {
        let deadline = Instant::now() + timeout;
        let id = {
            let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
            let id = control.next_id;
            control.next_id += 1;
            let line = format!("{id} {}\n", base64(cmd.as_bytes()));
            control
                .stdin
                .write_all(line.as_bytes())
                .and_then(|()| control.stdin.flush())
                .map_err(|e| format!("writing to the guest: {e}"))?;
            id
        };
        self.wait_output(deadline, |rx| parse_answer(rx, id))
    }

    /// Waits up to `timeout` for `udhcpc` to write a lease (see [`Net::Dhcp`]).
    pub fn wait_for_lease(&self, timeout: Duration) -> Result<Lease, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run("cat /run/udhcpc.lease 2>/dev/null");
            if out.status == 0 && !out.output.is_empty() {
                return parse_lease(&out.output);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no DHCP lease within {timeout:?}; udhcpc said:\n{}",
                    self.dhcp_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the `udhcpc` script printed (`tsvm-dhcp: bound ip=... mask=... router=...`), from
    /// the console log.
    pub fn dhcp_log(&self) -> String {
        self.console()
            .lines()
            .filter(|l| l.contains("udhcpc") || l.contains("tsvm-dhcp"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How long the boot took, from spawning QEMU to the command channel answering.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    pub fn mac(&self) -> &str {
        &self.mac
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The kernel console so far (`ttyS0`: the kernel log, `/init`, `udhcpc`).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// QEMU's own stderr, and the console's last 60 lines: for failure messages.
    pub fn logs(&self) -> String {
        let qemu = std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- QEMU stderr ---\n{qemu}--- console (last 60 lines) ---\n{tail}\n---")
    }

    /// Reads the command channel until `parse` finds what it wants in the unconsumed bytes
    /// (returning how many bytes it consumed and the value), the deadline passes or QEMU exits.
    fn wait_output<T>(
        &self,
        deadline: Instant,
        mut parse: impl FnMut(&[u8]) -> Option<(usize, T)>,
    ) -> Result<T, String> {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some((used, value)) = parse(&control.rx) {
                control.rx.drain(..used);
                return Ok(value);
            }
            let now = Instant::now();
            if now >= deadline {
                let seen = String::from_utf8_lossy(&control.rx);
                let start = seen.len().saturating_sub(2000);
                let start = (start..seen.len())
                    .find(|i| seen.is_char_boundary(*i))
                    .unwrap_or(seen.len());
                return Err(format!(
                    "timed out; the command channel's unread output ends with:\n{}",
                    &seen[start..]
                ));
            }
            let wait = (deadline - now).as_millis().clamp(1, 500) as i32;
            let mut pfd = libc::pollfd {
                fd: control.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd that lives across the call.
            let n = unsafe { libc::poll(&mut pfd, 1, wait) };
            if n > 0 {
                let got = control
                    .stdout
                    .read(&mut buf)
                    .map_err(|e| format!("reading the guest: {e}"))?;
                if got == 0 {
                    return Err("QEMU closed the command channel (it exited)".to_string());
                }
                control.rx.extend_from_slice(&buf[..got]);
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("VM {}:\n{}", self.name, self.logs());
        }
        // Only the QEMU this guard started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(socket) = &self.listening {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// `TSVM-OUT <id> <len>\n<len bytes>TSVM-END <id> <status>\n` in `rx`, after anything left
/// by earlier commands.
fn parse_answer(rx: &[u8], id: u64) -> Option<(usize, RunOutput)> {
    let head = format!("TSVM-OUT {id} ");
    let start = find(rx, head.as_bytes())?;
    let after = start + head.len();
    let nl = after + find(&rx[after..], b"\n")?;
    let len: usize = std::str::from_utf8(&rx[after..nl])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let body = nl + 1;
    if rx.len() < body + len {
        return None;
    }
    let tail = &rx[body + len..];
    let end = format!("TSVM-END {id} ");
    if !tail.starts_with(end.as_bytes()) {
        return None;
    }
    let nl2 = find(&tail[end.len()..], b"\n")?;
    let status = std::str::from_utf8(&tail[end.len()..end.len() + nl2])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((
        body + len + end.len() + nl2 + 1,
        RunOutput {
            status,
            output: String::from_utf8_lossy(&rx[body..body + len]).into_owned(),
        },
    ))
}

fn parse_lease(text: &str) -> Result<Lease, String> {
    let raw: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    let get = |k: &str| raw.get(k).filter(|v| !v.is_empty()).cloned();
    let ip = get("ip").ok_or_else(|| format!("lease without ip: {text}"))?;
    let prefix = get("mask")
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("lease without a prefix length (mask): {text}"))?;
    Ok(Lease {
        ip,
        prefix,
        router: get("router").map(|r| r.split_whitespace().next().unwrap_or("").to_string()),
        dns: get("dns")
            .map(|d| d.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        domain: get("domain"),
        mtu: get("mtu").and_then(|m| m.parse().ok()),
        server: get("serverid"),
        lease_secs: get("lease").and_then(|m| m.parse().ok()),
        raw,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- the kernel ----

/// The cached kernel and the modules the guest loads, in load order.
struct Kernel {
    vmlinuz: PathBuf,
    modules: Vec<PathBuf>,
}

/// The cache directory shared by test processes and runs.
fn cache_dir() -> PathBuf {
    match std::env::var_os("TAPSWITCH_TEST_VM_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-cache"),
    }
}

/// The kernel, fetched into the cache on first use (by whichever test process gets the lock
/// first; the others wait and then use it).
fn kernel() -> Result<&'static Kernel, String> {
    static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let cache = cache_dir();
            std::fs::create_dir_all(&cache)
                .map_err(|e| format!("cache {}: {e}", cache.display()))?;
            let lock = File::create(cache.join("lock"))
                .map_err(|e| format!("cache lock {}: {e}", cache.display()))?;
            // SAFETY: flock on a descriptor this function owns; released when it is closed.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(format!(
                    "lock {}: {}",
                    cache.display(),
                    std::io::Error::last_os_error()
                ));
            }
            let dir = cache.join("kernel");
            if !dir.join("modules.order").exists() {
                fetch_kernel(&cache, &dir)?;
            }
            load_kernel(&dir)
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn load_kernel(dir: &Path) -> Result<Kernel, String> {
    let order = std::fs::read_to_string(dir.join("modules.order"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(Kernel {
        vmlinuz: dir.join("vmlinuz"),
        modules: order.lines().map(|m| dir.join(m)).collect(),
    })
}

fn run_tool(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads the current Debian cloud kernel package and keeps its `vmlinuz` and the modules
/// of [`GUEST_MODULES`] (with their dependencies, in load order) in `dir`.
fn fetch_kernel(cache: &Path, dir: &Path) -> Result<(), String> {
    let depends = run_tool(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| {
            format!("apt-cache depends linux-image-cloud-amd64 names no kernel (apt-get update?): {depends}")
        })?
        .to_string();
    let work = cache.join(format!("fetch.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let result = (|| {
        run_tool(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
                .current_dir(&work),
        )?;
        let deb = std::fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
        let root = work.join("root");
        run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;

        let staged = work.join("kernel");
        std::fs::create_dir_all(&staged).map_err(|e| e.to_string())?;
        let vmlinuz = std::fs::read_dir(root.join("boot"))
            .map_err(|e| format!("{package}: no /boot: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .ok_or_else(|| format!("{package}: no vmlinuz"))?;
        std::fs::copy(&vmlinuz, staged.join("vmlinuz")).map_err(|e| e.to_string())?;

        let version =
            vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
        let moddir = [root.join("lib/modules"), root.join("usr/lib/modules")]
            .into_iter()
            .map(|d| d.join(&version))
            .find(|d| d.is_dir())
            .ok_or_else(|| format!("{package}: no modules for {version}"))?;
        let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
        let builtin: Vec<String> = builtin
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(|f| f.trim_end_matches(".ko").replace('-', "_"))
            .collect();
        let mut files = BTreeMap::new();
        index_modules(&moddir, &mut files);
        let mut order = Vec::new();
        for m in GUEST_MODULES {
            resolve_module(m, &files, &builtin, &mut order)?;
        }
        let mut names = String::new();
        for (i, m) in order.iter().enumerate() {
            let file = format!("{:02}-{m}.ko", i);
            std::fs::copy(&files[m], staged.join(&file)).map_err(|e| e.to_string())?;
            names.push_str(&file);
            names.push('\n');
        }
        std::fs::write(staged.join("package"), format!("{package}\n"))
            .map_err(|e| e.to_string())?;
        std::fs::write(staged.join("modules.order"), names).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&staged, dir).map_err(|e| format!("{}: {e}", dir.display()))
    })();
    let _ = std::fs::remove_dir_all(&work);
    result.map_err(|e| format!("fetching the kernel {package}: {e}"))
}

/// Module name (`virtio_net`) -> file, for every `.ko` under `dir`.
fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, files);
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if let Some(stem) = name.strip_suffix(".ko") {
                files.insert(stem.replace('-', "_"), path.clone());
            }
        }
    }
}

/// Appends `name`'s dependencies, then `name`, to `order` (built-in modules are skipped). The
/// dependencies are read from the module's own `.modinfo` (`depends=a,b`).
fn resolve_module(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &[String],
    order: &mut Vec<String>,
) -> Result<(), String> {
    if order.iter().any(|m| m == name) || builtin.iter().any(|m| m == name) {
        return Ok(());
    }
    let file = files.get(name).ok_or_else(|| {
        format!("module {name}: neither built in nor a .ko (compressed modules are not supported)")
    })?;
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(at) = find(&bytes, b"\0depends=") {
        let rest = &bytes[at + b"\0depends=".len()..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let deps = String::from_utf8_lossy(&rest[..end]).into_owned();
        for dep in deps.split(',').filter(|d| !d.is_empty()) {
            resolve_module(&dep.replace('-', "_"), files, builtin, order)?;
        }
    }
    order.push(name.to_string());
    Ok(())
}

// ---- the initramfs ----

/// The guest's `/init`: mounts, modules, `eth0`, then the command loop on `ttyS1`.
fn init_script(config: &VmConfig, modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo 'tsvm: init'\n",
    );
    if !config.ipv6 {
        s.push_str(
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1\n",
        );
    }
    for m in modules {
        s.push_str(&format!(
            "insmod /lib/modules/{m} || echo 'tsvm: insmod {m} failed'\n"
        ));
    }
    s.push_str(
        "ip link set lo up\n\
         i=0\n\
         while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done\n\
         [ -e /sys/class/net/eth0 ] || echo 'tsvm: no eth0'\n",
    );
    if let (Some(mtu), false) = (config.mtu, matches!(config.net, Net::Dhcp)) {
        s.push_str(&format!("ip link set eth0 mtu {mtu}\n"));
    }
    s.push_str("ip link set eth0 up\n");
    match &config.net {
        Net::None => {}
        Net::Static { address, gateway } => {
            s.push_str(&format!("ip addr add {address} dev eth0\n"));
            if let Some(gw) = gateway {
                s.push_str(&format!("ip route add default via {gw}\n"));
            }
        }
        Net::Dhcp => s.push_str(
            "udhcpc -f -i eth0 -s /etc/udhcpc.script -O mtu -t 5 -T 1 -A 1 -x hostname:tsvm \
             >/dev/console 2>&1 &\n",
        ),
    }
    s.push_str(
        "echo 'tsvm: network configured'\n\
         while :; do sh /agent </dev/ttyS1 >/dev/ttyS1 2>/dev/console; sleep 1; done\n",
    );
    s
}

/// The command loop: a line `ID BASE64` runs the decoded script and answers
/// `TSVM-OUT ID LEN\n`, the output, `TSVM-END ID STATUS\n`.
const AGENT: &str = r#"stty raw -echo
echo TSVM-READY
while read -r id cmd; do
  [ -n "$id" ] || continue
  echo "$cmd" | base64 -d > /run/cmd.$id
  sh /run/cmd.$id </dev/null >/run/out.$id 2>&1
  rc=$?
  echo "TSVM-OUT $id $(wc -c </run/out.$id)"
  cat /run/out.$id
  echo "TSVM-END $id $rc"
  rm -f /run/cmd.$id /run/out.$id
done
"#;

/// udhcpc's event script: configures `eth0` from the lease (address, prefix, router, MTU,
/// resolv.conf), writes what it got to `/run/udhcpc.lease` and prints it on the console.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
  ip addr flush dev "$interface"
  ip link set "$interface" up
  echo "tsvm-dhcp: deconfig $interface"
  ;;
bound|renew)
  [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
  if ! ip -4 addr show dev "$interface" | grep -q " $ip/$mask "; then
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" ${broadcast:+broadcast "$broadcast"} dev "$interface"
  fi
  for r in $router; do
    ip route replace default via "$r" dev "$interface"
    break
  done
  {
    [ -n "$domain" ] && echo "search $domain"
    for d in $dns; do echo "nameserver $d"; done
  } > /etc/resolv.conf
  {
    echo "event=$1"
    echo "ip=$ip"
    echo "mask=$mask"
    echo "subnet=$subnet"
    echo "broadcast=$broadcast"
    echo "router=$router"
    echo "dns=$dns"
    echo "domain=$domain"
    echo "mtu=$mtu"
    echo "serverid=$serverid"
    echo "lease=$lease"
    echo "hostname=$hostname"
  } > /run/udhcpc.lease.new
  mv /run/udhcpc.lease.new /run/udhcpc.lease
  echo "tsvm-dhcp: $1 ip=$ip mask=$mask router=$router dns=$dns domain=$domain mtu=$mtu serverid=$serverid lease=$lease"
  ;;
leasefail|nak)
  echo "tsvm-dhcp: $1 $message"
  ;;
esac
exit 0
"#;

fn write_initramfs(path: &Path, kernel: &Kernel, config: &VmConfig) -> Result<(), String> {
    let busybox =
        std::fs::read("/bin/busybox").map_err(|e| format!("/bin/busybox: {e} (busybox-static)"))?;
    if !is_static_elf(&busybox) {
        return Err("/bin/busybox is dynamically linked; the guest needs busybox-static".into());
    }
    let names: Vec<String> = kernel
        .modules
        .iter()
        .map(|m| m.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut cpio = Cpio::default();
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "etc",
        "lib",
        "lib/modules",
        "root",
    ] {
        cpio.dir(dir);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, init_script(config, &names).as_bytes());
    cpio.file("agent", 0o644, AGENT.as_bytes());
    cpio.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes());
    for (file, name) in kernel.modules.iter().zip(&names) {
        let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        cpio.file(&format!("lib/modules/{name}"), 0o644, &bytes);
    }
    std::fs::write(path, cpio.finish()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether an ELF executable has no interpreter (`PT_INTERP`): statically linked.
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        elf.get(at..at + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

/// A cpio archive in the "newc" format the kernel unpacks as its initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// `len` bytes of a fixed pseudo-random sequence.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The md5 of `data` in hex, by the host's `md5sum`.
pub fn md5(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("md5sum output");
    writer.join().unwrap().expect("feed md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The container in `ns` (at `ns_ip`) sends 4 MiB to the VM (at `vm_ip`) over TCP (busybox
/// `nc` listening in the guest), checked by md5sum in the guest; then the VM sends it back,
/// compared byte by byte. Panics on any difference.
pub fn exchange_tcp(vm: &Vm, ns: &super::Netns, vm_ip: &str, ns_ip: &str) {
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    // The container sends 4 MiB to the VM (busybox nc), checked by md5sum in the guest.
    let data = pattern(4 << 20);
    vm.ok("rm -f /run/in; nc -l -p 5001 >/run/in 2>/run/nc.err </dev/null &");
    vm.ok("i=0; while ! netstat -ltn | grep -q ':5001 '; do \
         i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done");
    let to: SocketAddr = format!("{vm_ip}:5001").parse().unwrap();
    let mut conn = ns
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))
        .expect("connect to the VM");
    conn.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(&data).expect("send to the VM");
    conn.shutdown(Shutdown::Write).unwrap();
    // nc closes its side when it has read everything.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("the VM closes");
    drop(conn);
    let got = vm.ok(
        "i=0; while pidof nc >/dev/null; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done; \
         wc -c </run/in; md5sum </run/in; cat /run/nc.err",
    );
    let mut lines = got.lines();
    assert_eq!(lines.next().map(str::trim), Some("4194304"), "{got}");
    let guest_md5 = lines.next().unwrap_or("").split_whitespace().next();
    assert_eq!(guest_md5, Some(md5(&data).as_str()), "{got}");

    // And the VM sends it back to the container, compared byte by byte.
    let listener = ns
        .run(|| TcpListener::bind(format!("{ns_ip}:5002")))
        .expect("listen in the container");
    let receiver = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        Ok(got)
    });
    vm.ok(&format!("nc {ns_ip} 5002 </run/in"));
    let back = receiver.join().unwrap().expect("receive from the VM");
    assert_eq!(back.len(), data.len(), "bytes back from the VM");
    assert!(back == data, "the stream from the VM is byte-exact");
}
