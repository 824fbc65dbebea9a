//! vhost-user ports: a VM's virtio-net rings in shared memory, tapswitch as the backend.
//!
//! A frontend (QEMU's `-netdev vhost-user`, DPDK's `virtio_user`) hands tapswitch its memory
//! table, its rings and their eventfds over a Unix socket; from then on frames move by copying
//! between the guest's buffers and the worker's, with no system call per frame.
//!
//! - [`protocol`]: the vhost-user messages (framing, fd passing and feature gating by the
//!   `vhost` crate's `BackendReqHandler`; what each message does to the port, here), served by
//!   one thread per port that listens on the socket (server mode) or connects to it (client
//!   mode, QEMU `server=on`), and waits for the next frontend after each disconnect.
//! - [`vring`]: one virtqueue: the split ring, its kick and call eventfds, used-ring
//!   publication and the decision to interrupt the guest.
//! - [`frames`]: the data path the workers run: a frame from a guest TX chain into the
//!   worker's receive buffer, a frame into guest RX buffers (mergeable), offload metadata from
//!   and to the virtio-net header.
//! - [`features`]: the virtio-net feature bits offered and their names.
//!
//! # Threads and sharing
//!
//! The port's [`Device`] is shared by its protocol thread and the workers. Queue pair `q`
//! (vrings `2q`, the guest's RX, and `2q + 1`, its TX) is read by worker `q` like queue `q` of
//! a multiqueue TAP: the pair's "queue descriptor" is an epoll set that holds the kick eventfd
//! of its TX ring once the ring runs, so the worker polls it like any other port queue and
//! needs to know nothing of vhost-user. Any worker may write to the port; worker `w` writes
//! into the RX ring of pair `w mod pairs` (or the first pair the guest enabled).
//!
//! - Guest memory is a `GuestMemoryAtomic` (an `ArcSwap`): a worker takes the table with a
//!   ring and keeps it while it holds the ring; `SET_MEM_TABLE` or a disconnect swaps in a new
//!   one and the old regions stay mapped until the last worker lets go of them.
//! - Each vring is in a `Mutex`, taken by the protocol thread per message and by a worker for
//!   a batch of frames (uncontended but for ring setup, or two workers writing into one
//!   guest's ring). See [`vring`], and [`hold`] for why holding cannot deadlock.
//! - The negotiated features are an atomic: 0 while no frontend has negotiated. A port with no
//!   frontend (or whose rings are stopped) takes no frames from the workers: they are dropped
//!   and counted as transmit errors, as for a TAP whose carrier is off.
//!
//! The protocol thread stops when the [`VhostUserPort`] is dropped (the last snapshot that
//! holds the port's device is gone); in server mode the socket file is removed then.

pub mod features;
mod frames;
mod hold;
mod protocol;
mod vring;

pub use hold::Held;

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use vring::Vring;

/// The frontend's memory as a port maps it.
pub(crate) type Memory = GuestMemoryMmap<()>;

/// Who opens the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// tapswitch listens (QEMU `-chardev socket,path=...`; `virtio_user` by default).
    Server,
    /// tapswitch connects, and retries every half second while nobody listens (QEMU
    /// `-chardev socket,path=...,server=on`; `virtio_user` with `server=1`).
    Client,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Server => "server",
            Mode::Client => "client",
        }
    }
}

/// How to make a vhost-user port.
#[derive(Debug, Clone)]
pub struct VhostUserSpec {
    /// The port's name (threads and logs).
    pub name: String,
    pub socket: PathBuf,
    pub mode: Mode,
    /// Queue pairs offered (`GET_QUEUE_NUM`); 0 or 1 is one.
    pub pairs: usize,
}

/// A port's connection as `port show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserStatus {
    pub socket: PathBuf,
    pub mode: Mode,
    /// A frontend is connected and has negotiated features.
    pub connected: bool,
    /// The virtio features the frontend acknowledged (0 while not connected).
    pub features: u64,
    /// Queue pairs offered, and those whose two rings run.
    pub pairs: usize,
    pub pairs_enabled: usize,
    /// Frontends accepted (or connected to) since the port was made.
    pub connections: u64,
    /// Frames toward the guest dropped for want of guest RX buffers.
    pub rx_no_buffers: u64,
    /// Chains from the guest that were malformed (outside its memory, no header).
    pub tx_bad_chains: u64,
    /// Frames the guest sent, by the queue pair they came on.
    pub pair_frames: Vec<u64>,
}

/// Setup errors of a vhost-user port. Each message names the socket.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The socket's directory does not exist.
    #[error("the directory of socket {0} does not exist")]
    NoDirectory(PathBuf),
    /// Server mode: a live socket answers at the path (another backend uses it).
    #[error("socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Server mode: something that is not a socket is at the path.
    #[error("{0} exists and is not a socket")]
    NotSocket(PathBuf),
    #[error("{what} {path}: {source}")]
    Os {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    rx_no_buffers: AtomicU64,
    tx_bad_chains: AtomicU64,
    /// Indexed by queue pair: frames the guest sent on that pair's TX ring (each pair is
    /// read by one worker, so the adds do not contend).
    from_guest: Box<[AtomicU64]>,
}

/// The state a port's protocol thread and the workers share.
pub(crate) struct Device {
    name: String,
    mem: GuestMemoryAtomic<Memory>,
    /// `2 * pairs` vrings: RX (switch to guest) at even indices, TX at odd.
    vrings: Vec<Mutex<Vring>>,
    /// One epoll set per pair, holding the kick of the pair's TX ring while it runs.
    epolls: Vec<OwnedFd>,
    /// Acknowledged virtio features; 0 while no frontend has negotiated.
    features: AtomicU64,
    connected: AtomicBool,
    /// The current frontend's connection, to shut down when the port goes.
    connection: Mutex<Option<UnixStream>>,
    counters: Counters,
}

impl Device {
    fn pairs(&self) -> usize {
        self.vrings.len() / 2
    }

    fn vring(&self, index: usize) -> MutexGuard<'_, Vring> {
        self.vrings[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts the kick of vring `index` into its pair's epoll set, or takes it out, as the ring's
    /// state says. Only guest TX rings (odd) are polled; RX buffers are taken when a frame
    /// must go out.
    fn update_polling(&self, index: usize, vring: &mut Vring) {
        if index % 2 == 0 {
            return;
        }
        let epoll = self.epolls[index / 2].as_raw_fd();
        let want = vring.usable() && vring.kick.is_some();
        if want && !vring.polled {
            let Some(kick) = &vring.kick else { return };
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: index as u64,
            };
            // SAFETY: both descriptors are open; event is a valid epoll_event.
            let rc = unsafe {
                libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, kick.as_raw_fd(), &mut event)
            };
            if rc < 0 {
                log::error!(
                    "port {}: cannot poll the kick of vring {index}: {}",
                    self.name,
                    io::Error::last_os_error()
                );
                return;
            }
            vring.polled = true;
            // Buffers may have been posted before the ring was polled.
            vring.self_kick();
        } else if !want && vring.polled {
            if let Some(kick) = &vring.kick {
                // SAFETY: as above; the event argument is ignored for EPOLL_CTL_DEL.
                unsafe {
                    libc::epoll_ctl(
                        epoll,
                        libc::EPOLL_CTL_DEL,
                        kick.as_raw_fd(),
                        std::ptr::null_mut(),
                    )
                };
            }
            vring.polled = false;
        }
    }

    /// The frontend went away (or reset the device): every ring stops (each lock taken, so no
    /// worker is inside one), its eventfds are closed, the features forgotten and the memory
    /// dropped (unmapped when the last worker lets go of it). The port stays, link down.
    fn disconnect(&self) {
        self.connected.store(false, Ordering::Release);
        self.features.store(0, Ordering::Release);
        for index in 0..self.vrings.len() {
            let mut vring = self.vring(index);
            vring.started = false;
            vring.enabled = false;
            self.update_polling(index, &mut vring);
            vring.reset();
        }
        self.mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(GuestMemoryMmap::new());
    }

    fn status(&self, socket: &Path, mode: Mode) -> VhostUserStatus {
        let features = self.features.load(Ordering::Acquire);
        // One ring locked at a time (see `hold`: nobody waits for a ring holding another).
        let pairs_enabled = (0..self.pairs())
            .filter(|&p| {
                let rx = self.vring(2 * p).usable();
                rx && self.vring(2 * p + 1).usable()
            })
            .count();
        VhostUserStatus {
            socket: socket.to_path_buf(),
            mode,
            connected: self.connected.load(Ordering::Acquire) && features != 0,
            features,
            pairs: self.pairs(),
            pairs_enabled,
            connections: self.counters.connections.load(Ordering::Relaxed),
            rx_no_buffers: self.counters.rx_no_buffers.load(Ordering::Relaxed),
            tx_bad_chains: self.counters.tx_bad_chains.load(Ordering::Relaxed),
            pair_frames: self
                .counters
                .from_guest
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A vhost-user port's device as [`PortDevice`](super::PortDevice) holds it: the shared state
/// and the protocol thread, stopped when this is dropped.
pub struct VhostUserPort {
    device: Arc<Device>,
    socket: PathBuf,
    mode: Mode,
    /// An eventfd the protocol thread polls: written to stop it.
    stop: File,
    /// Server mode: the socket file this port made (device, inode), removed on drop if it
    /// is still that file.
    bound: Option<(u64, u64)>,
}

impl fmt::Debug for VhostUserPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhostUserPort")
            .field("name", &self.device.name)
            .field("socket", &self.socket)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl VhostUserPort {
    /// Makes the port: in server mode binds the socket now (replacing a stale socket file,
    /// refusing one another process listens on), then starts the protocol thread. Returns the
    /// port and one epoll descriptor per queue pair (the port's queues, for the workers).
    pub fn create(spec: &VhostUserSpec) -> Result<(VhostUserPort, Vec<OwnedFd>), VhostUserError> {
        let path = spec.socket.clone();
        let err = |what: &'static str| {
            let path = path.clone();
            move |source| VhostUserError::Os { what, path, source }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(VhostUserError::NoDirectory(path));
        }
        let pairs = spec.pairs.max(1);
        let mut epolls = Vec::with_capacity(pairs);
        let mut queues = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            // SAFETY: plain epoll_create1; the result is checked.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(err("creating an epoll set for")(io::Error::last_os_error()));
            }
            // SAFETY: fd is a fresh descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            queues.push(
                fd.try_clone()
                    .map_err(err("duplicating an epoll set for"))?,
            );
            epolls.push(fd);
        }
        // SAFETY: plain eventfd; the result is checked.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(err("creating an eventfd for")(io::Error::last_os_error()));
        }
        // SAFETY: stop is a fresh descriptor that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let (endpoint, bound) = match spec.mode {
            Mode::Server => {
                let listener = bind(&path)?;
                let meta = std::fs::metadata(&path).map_err(err("reading"))?;
                (
                    protocol::Endpoint::Listen(listener),
                    Some((meta.dev(), meta.ino())),
                )
            }
            Mode::Client => (protocol::Endpoint::Connect(path.clone()), None),
        };
        let device = Arc::new(Device {
            name: spec.name.clone(),
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            vrings: (0..2 * pairs).map(|_| Mutex::new(Vring::new())).collect(),
            epolls,
            features: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            connection: Mutex::new(None),
            counters: Counters {
                from_guest: (0..pairs.max(1)).map(|_| AtomicU64::new(0)).collect(),
                ..Counters::default()
            },
        });
        let thread_stop = stop
            .try_clone()
            .map_err(err("duplicating an eventfd for"))?;
        let shared = Arc::clone(&device);
        std::thread::Builder::new()
            .name(format!("vhost-user-{}", spec.name))
            .spawn(move || protocol::run(shared, endpoint, thread_stop))
            .map_err(err("starting the protocol thread of"))?;
        let port = VhostUserPort {
            device,
            socket: path,
            mode: spec.mode,
            stop: File::from(stop),
            bound,
        };
        Ok((port, queues))
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    pub fn status(&self) -> VhostUserStatus {
        self.device.status(&self.socket, self.mode)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        let _ = (&self.stop).write(&1u64.to_ne_bytes());
        if let Some(conn) = self
            .device
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        if let Some((dev, ino)) = self.bound {
            // Only the file this port made: a new port may have bound the path since.
            if std::fs::metadata(&self.socket).is_ok_and(|m| m.dev() == dev && m.ino() == ino) {
                let _ = std::fs::remove_file(&self.socket);
            }
        }
    }
}

/// Binds the server socket at `path`: a socket file nobody answers on (left by a crash) is
/// replaced; a live one, or a file that is not a socket, is refused.
fn bind(path: &Path) -> Result<UnixListener, VhostUserError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(VhostUserError::NotSocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(VhostUserError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|source| VhostUserError::Os {
            what: "removing the stale socket",
            path: path.to_path_buf(),
            source,
        })?;
    }
    UnixListener::bind(path).map_err(|source| VhostUserError::Os {
        what: "listening on",
        path: path.to_path_buf(),
        source,
    })
}
