//! `tapswitch run`: the control thread.
//!
//! One mio poll loop over the control socket's listener and a signal pipe. Each connection
//! carries one request, served to completion on this thread (requests are short), so the
//! `Switch` never needs a lock. SIGINT and SIGTERM end the loop; then workers stop, every port
//! is removed (TAPs are deleted) and the socket file is removed.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use mio::net::UnixListener as MioListener;
use std::sync::Arc;

use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::api;
use crate::config::Config;
use crate::switch::{Switch, SwitchError};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const STOP: Token = Token(2);

/// Stops a daemon started in-process (as `tapswitch demo` and tests do) the way SIGTERM does.
#[derive(Clone)]
pub struct StopHandle(Arc<Waker>);

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.wake();
    }
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error("control socket {path}: another tapswitch is listening there")]
    SocketInUse { path: String },
    #[error("control socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("control loop: {0}")]
    Io(#[from] io::Error),
}

/// Removes the socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Runs the switch until SIGINT or SIGTERM (or a [`StopHandle`]). SIGHUP re-reads
/// `config_file` and applies it, keeping what is unchanged. `ready` is called once the control
/// socket accepts requests.
pub fn run(
    config: Config,
    config_file: Option<&Path>,
    socket: &Path,
    ready: impl FnOnce(StopHandle),
) -> Result<(), DaemonError> {
    let listener = bind(socket)?;
    let _socket_file = SocketFile(socket.to_path_buf());
    raise_fd_limit();
    let mut switch = Switch::start(config)?;
    log::info!(
        "tapswitch running: {} ports, control socket {}",
        switch.list_ports().len(),
        socket.display()
    );
    listener.set_nonblocking(true)?;
    let mut listener = MioListener::from_std(listener);
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    ready(StopHandle(Arc::new(Waker::new(poll.registry(), STOP)?)));
    let mut events = Events::with_capacity(16);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let stream = into_blocking(stream)?;
                            if let Err(e) = api::serve(&mut switch, config_file, stream) {
                                log::warn!("control connection: {e}");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                },
                SIGNALS => {
                    for sig in signals.pending() {
                        if sig == SIGHUP {
                            if let Err(e) = api::reload(&mut switch, config_file) {
                                log::error!("reload refused, nothing changed: {e}");
                            }
                            continue;
                        }
                        log::info!("signal {sig}: removing ports and exiting");
                        switch.shutdown();
                        return Ok(());
                    }
                }
                STOP => {
                    log::info!("stop requested: removing ports and exiting");
                    switch.shutdown();
                    return Ok(());
                }
                _ => {}
            }
        }
    }
}

fn into_blocking(stream: mio::net::UnixStream) -> io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor comes from a mio stream we own and give up here.
    let stream = unsafe { UnixStream::from_raw_fd(stream.into_raw_fd()) };
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Raises the soft limit on open descriptors to the hard one: every TAP queue, tunnel socket
/// (a VXLAN endpoint sends through 256) and packet socket is a descriptor.
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
