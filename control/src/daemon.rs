//! `tapswitch run`: the control thread.
//!
//! One mio poll loop over the control socket (its listener and every client connection, see
//! [`server`](crate::server)), the signals and a stop waker. Requests are carried out on this
//! thread one at a time, so the `Switch` never needs a lock; no client's I/O ever blocks the
//! loop, so signals are acted on at once.
//!
//! Lifecycle:
//! - start: the state directory is opened and locked, the saved running configuration merged
//!   with the file ([`Switch::restore`]), TAPs left by the last run adopted;
//! - SIGINT, SIGTERM, `tapswitch stop`, a [`StopHandle`]: a planned stop. Workers stop, ports
//!   are released (TAPs stay, with their workloads' addresses), the socket file goes;
//! - `tapswitch stop --purge`, [`StopHandle::purge`]: every port is removed (TAPs deleted) and
//!   the saved state forgotten;
//! - SIGHUP, `tapswitch reload`: the file is applied again (merged with runtime changes).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UnixListener as MioListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::api::{self, Request, Response};
use crate::config::Config;
use crate::server::{self, Access, Server};
use crate::state::{StateError, StateStore};
use crate::switch::{Switch, SwitchError};
use crate::takeover;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const STOP: Token = Token(2);

const STOP_NONE: u8 = 0;
const STOP_RELEASE: u8 = 1;
const STOP_PURGE: u8 = 2;

/// Stops a daemon started in-process (as `tapswitch demo` and tests do).
#[derive(Clone)]
pub struct StopHandle {
    waker: Arc<Waker>,
    mode: Arc<AtomicU8>,
}

impl StopHandle {
    /// A planned stop, as SIGTERM: ports are released, TAPs stay.
    pub fn stop(&self) {
        self.mode.fetch_max(STOP_RELEASE, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// Stops and removes every port and the saved state, as `tapswitch stop --purge`.
    pub fn purge(&self) {
        self.mode.fetch_max(STOP_PURGE, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("control socket {path}: another tapswitch is listening there")]
    SocketInUse { path: String },
    #[error("control socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("switch.socket_group: no group named {0:?}")]
    NoSuchGroup(String),
    #[error("takeover: {0}")]
    Takeover(String),
    #[error("metrics.listen {0}: {1}")]
    Metrics(String, #[source] io::Error),
    #[error("control loop: {0}")]
    Io(#[from] io::Error),
}

/// What `tapswitch run` was given.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The configuration file's contents (or the embedded default).
    pub config: Config,
    /// The file that `reload` and SIGHUP re-read.
    pub config_file: Option<PathBuf>,
    pub socket: PathBuf,
    /// Overrides `[switch] state_dir`.
    pub state_dir: Option<PathBuf>,
    /// Take over from the tapswitch running on `socket` (see [`crate::takeover`]) instead of
    /// starting beside it.
    pub takeover: bool,
}

/// Removes the socket file when dropped, unless disarmed (after a takeover the file is the
/// new process's).
struct SocketFile(Option<PathBuf>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse {
                path: path.display().to_string(),
            });
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// The access rule of `config` and the socket file's owner group and mode to match it.
fn apply_access(config: &Config, socket: &Path) -> Result<Access, DaemonError> {
    let group = match &config.switch.socket_group {
        Some(name) => {
            Some(server::group_id(name).ok_or_else(|| DaemonError::NoSuchGroup(name.clone()))?)
        }
        None => None,
    };
    let err = |source| DaemonError::Socket {
        path: socket.display().to_string(),
        source,
    };
    std::os::unix::fs::chown(socket, None, Some(group.unwrap_or(0))).map_err(err)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(Access { group })
}

/// Runs the switch until a stop (see the module docs). `ready` is called once the control
/// socket accepts requests.
pub fn run(opts: RunOptions, ready: impl FnOnce(StopHandle)) -> Result<(), DaemonError> {
    opts.config.validate().map_err(SwitchError::from)?;
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(opts.config.switch.state_dir()));
    raise_fd_limit();
    let (listener, mut socket_file, mut switch) = if opts.takeover {
        let mut handed = takeover::take_over(&opts.socket).map_err(DaemonError::Takeover)?;
        if handed.state_dir != state_dir {
            log::warn!(
                "takeover: using the running switch's state directory {}",
                handed.state_dir.display()
            );
        }
        let lock = handed.lock.try_clone()?;
        let listener = handed.listener.try_clone()?;
        let taps = std::mem::take(&mut handed.taps).into_iter().collect();
        let started = StateStore::from_handed_lock(&handed.state_dir, lock)
            .map_err(SwitchError::Restore)
            .and_then(|store| Switch::restore_handed(opts.config.clone(), store, taps));
        match started {
            Ok(switch) => {
                handed.confirm(Ok(()));
                log::info!("took over from the running tapswitch");
                (listener, SocketFile(Some(opts.socket.clone())), switch)
            }
            Err(e) => {
                handed.confirm(Err(e.to_string()));
                return Err(e.into());
            }
        }
    } else {
        let listener = bind(&opts.socket)?;
        let socket_file = SocketFile(Some(opts.socket.clone()));
        let store = StateStore::open(&state_dir)?;
        let switch = Switch::restore(opts.config.clone(), store)?;
        (listener, socket_file, switch)
    };
    let access = apply_access(switch.config(), &opts.socket)?;
    log::info!(
        "tapswitch running: {} ports, control socket {}, state in {}",
        switch.list_ports().len(),
        opts.socket.display(),
        state_dir.display()
    );
    listener.set_nonblocking(true)?;
    let mut server = Server::new(MioListener::from_std(listener), access);
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(server.listener(), LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let stop = StopHandle {
        waker: Arc::new(Waker::new(poll.registry(), STOP)?),
        mode: Arc::new(AtomicU8::new(STOP_NONE)),
    };
    // The metrics server and the cluster agent talk to this loop through the socket, like
    // any client.
    let _metrics = match &switch.config().metrics {
        Some(m) => {
            let listen = m.listen().map_err(SwitchError::from)?;
            let server = crate::metrics::MetricsServer::start(listen, opts.socket.clone())
                .map_err(|e| DaemonError::Metrics(listen.to_string(), e))?;
            log::info!("metrics on http://{}/metrics", server.addr);
            Some(server)
        }
        None => None,
    };
    let agent = match &switch.config().cluster {
        Some(c) => Some(crate::cluster::Agent::start(
            c.validate().map_err(SwitchError::from)?,
            opts.socket.clone(),
            switch.store().map(|s| s.dir().to_path_buf()),
        )),
        None => None,
    };
    ready(stop.clone());
    let mut events = Events::with_capacity(256);
    let mut next_deadline: Option<Instant> = None;
    let mut requests = RequestStats::default();
    let every = Duration::from_secs(switch.config().switch.checkpoint_secs());
    let mut next_checkpoint = (!every.is_zero()).then(|| Instant::now() + every);
    loop {
        let due = match (next_deadline, next_checkpoint) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = due.map(|d| d.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let mut incoming = Vec::new();
        for event in events.iter() {
            match event.token() {
                LISTENER => server.accept(poll.registry())?,
                SIGNALS => {
                    for sig in signals.pending() {
                        if sig == SIGHUP {
                            match reload(&mut switch, opts.config_file.as_deref()) {
                                Ok(_) => {
                                    server.set_access(apply_access(switch.config(), &opts.socket)?)
                                }
                                Err(e) => log::error!("reload refused, nothing changed: {e}"),
                            }
                            continue;
                        }
                        log::info!("signal {sig}: stopping; ports stay for the next start");
                        stop.stop();
                    }
                }
                STOP => {}
                token => incoming.extend(server.ready(poll.registry(), token)),
            }
        }
        for req in incoming {
            let started = Instant::now();
            let parsed = std::str::from_utf8(&req.line)
                .map_err(|_| "bad request: not UTF-8".to_string())
                .and_then(|line| api::parse_request(line.trim()));
            // The request's name, for the control metrics (only names of valid requests).
            let name = parsed
                .as_ref()
                .ok()
                .and_then(|_| api::command_name(&req.line));
            let response = match parsed {
                Ok(Request::Stop { purge }) => {
                    let how = if purge { STOP_PURGE } else { STOP_RELEASE };
                    stop.mode.fetch_max(how, Ordering::SeqCst);
                    leave_if_purged(agent.as_ref(), stop.mode.load(Ordering::SeqCst));
                    finish(&mut switch, stop.mode.load(Ordering::SeqCst));
                    server.respond_now(
                        poll.registry(),
                        req.token,
                        &Response::ok(()),
                        Duration::from_secs(1),
                    );
                    return Ok(());
                }
                Ok(Request::Takeover) => {
                    let Some(stream) = server.take(poll.registry(), req.token) else {
                        continue;
                    };
                    let listener = server.listener().as_raw_fd();
                    match takeover::hand_over(&mut switch, stream, listener) {
                        Ok(()) => {
                            log::info!("handed over to the new tapswitch; exiting");
                            switch.abandon();
                            socket_file.0 = None;
                            return Ok(());
                        }
                        Err(e) => {
                            log::warn!("takeover refused or failed, running on: {e}");
                            continue;
                        }
                    }
                }
                Ok(Request::Reload) => match reload(&mut switch, opts.config_file.as_deref()) {
                    Ok(summary) => {
                        server.set_access(apply_access(switch.config(), &opts.socket)?);
                        Response::ok(summary)
                    }
                    Err(e) => Response::error(e),
                },
                Ok(Request::Stats) => match switch.stats() {
                    Ok(stats) => {
                        let mut v = serde_json::to_value(stats).unwrap_or_default();
                        v["control"] = serde_json::json!({
                            "connections": server.connections(),
                            "max_connections": server::MAX_CONNECTIONS,
                            "refused": server.refused,
                            "timed_out": server.timed_out,
                            "requests": requests.to_json(),
                        });
                        Response::ok(v)
                    }
                    Err(e) => Response::error(e),
                },
                Ok(Request::ClusterStatus) => match &agent {
                    Some(a) => Response::ok(a.status()),
                    None => Response::error(
                        "cluster mode is off: the configuration has no [cluster] section",
                    ),
                },
                Ok(req) => api::handle(&mut switch, req),
                Err(e) => Response::error(e),
            };
            requests.observe(
                name.as_deref().unwrap_or("invalid"),
                started.elapsed(),
                response.ok,
            );
            server.respond(poll.registry(), req.token, &response);
        }
        let mode = stop.mode.load(Ordering::SeqCst);
        if mode != STOP_NONE {
            leave_if_purged(agent.as_ref(), mode);
            finish(&mut switch, mode);
            return Ok(());
        }
        let now = Instant::now();
        next_deadline = server.expire(poll.registry(), now);
        // Live traces and captures whose client went away end.
        if let Some(at) = switch.expire_taps(now) {
            next_deadline = Some(next_deadline.map_or(at, |d| d.min(at)));
        }
        if let Some(at) = next_checkpoint.filter(|at| *at <= now) {
            if let Err(e) = switch.checkpoint() {
                log::warn!("checkpoint: {e}");
            }
            let every = Duration::from_secs(switch.config().switch.checkpoint_secs().max(1));
            next_checkpoint = Some(at.max(now - every) + every);
        }
    }
}

/// A purge also leaves the cluster: the lease is revoked (the others drop this node at once).
/// A planned stop keeps it, so that the next start gets the same subnet back.
fn leave_if_purged(agent: Option<&crate::cluster::Agent>, mode: u8) {
    if let (Some(a), STOP_PURGE) = (agent, mode) {
        a.leave(Duration::from_secs(3));
    }
}

/// The end of a run: a planned stop releases the ports, a purge removes them and the state.
fn finish(switch: &mut Switch, mode: u8) {
    if mode == STOP_PURGE {
        log::info!("stopping: removing every port and the saved state");
        switch.purge();
    } else {
        log::info!("stopping: ports stay for the next start");
        switch.shutdown();
    }
}

/// Re-reads `config_file` and applies it (merged with the runtime changes).
pub fn reload(
    switch: &mut Switch,
    config_file: Option<&Path>,
) -> Result<api::ReloadSummary, SwitchError> {
    let Some(path) = config_file else {
        return Err(SwitchError::Config(crate::config::ConfigError::new(
            "reload",
            "the switch was started without --config: there is no file to re-read",
        )));
    };
    let config = Config::load(path)?;
    let (added, removed, kept) = switch.reload_file(config)?;
    log::info!(
        "reloaded {}: {added} ports added, {removed} removed, {kept} kept",
        path.display()
    );
    Ok(api::ReloadSummary {
        added,
        removed,
        kept,
    })
}

/// Raises the soft limit on open descriptors to the hard one: every TAP queue, tunnel socket
/// (a VXLAN endpoint sends through 256), packet socket and control connection is a
/// descriptor.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a live rlimit for getrlimit to fill and setrlimit to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Upper bounds, in seconds, of the buckets of the control requests' latency.
pub const LATENCY_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Control requests carried out, by name: how many, how many failed, how long they took.
#[derive(Debug, Default)]
pub struct RequestStats {
    by_name: std::collections::BTreeMap<String, RequestStat>,
}

#[derive(Debug, Default)]
struct RequestStat {
    count: u64,
    errors: u64,
    seconds: f64,
    /// Requests of at most `LATENCY_BUCKETS[i]` seconds (not cumulative).
    buckets: [u64; LATENCY_BUCKETS.len()],
}

impl RequestStats {
    pub fn observe(&mut self, name: &str, took: Duration, ok: bool) {
        let s = self.by_name.entry(name.to_string()).or_default();
        let secs = took.as_secs_f64();
        s.count += 1;
        s.errors += u64::from(!ok);
        s.seconds += secs;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            s.buckets[i] += 1;
        }
    }

    /// `[{cmd, count, errors, seconds, buckets: [[le, cumulative count], ...]}]`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.by_name
                .iter()
                .map(|(name, s)| {
                    let mut total = 0;
                    let buckets: Vec<serde_json::Value> = LATENCY_BUCKETS
                        .iter()
                        .zip(s.buckets)
                        .map(|(le, n)| {
                            total += n;
                            serde_json::json!([le, total])
                        })
                        .collect();
                    serde_json::json!({
                        "cmd": name,
                        "count": s.count,
                        "errors": s.errors,
                        "seconds": s.seconds,
                        "buckets": buckets,
                    })
                })
                .collect(),
        )
    }
}
