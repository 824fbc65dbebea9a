//! Running setup code inside a named network namespace (as `ip netns` names them, under
//! `/run/netns`).
//!
//! The network namespace is a per-thread attribute, so [`run_in`] runs its closure on a
//! short-lived thread that joins the namespace; the caller's thread never changes namespace.
//! File descriptors made there (a TAP, a packet socket) keep working from any thread afterwards.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The path of a named namespace; an absolute path (`/proc/PID/ns/net`, a CNI runtime's
/// `/run/netns/cni-…`) is taken as it is.
pub fn path(name: &str) -> PathBuf {
    if name.starts_with('/') {
        return PathBuf::from(name);
    }
    PathBuf::from(NETNS_RUN_DIR).join(name)
}

/// Whether `name` is a namespace `ip netns` knows, or the path of one.
pub fn exists(name: &str) -> bool {
    !name.is_empty() && (!name.contains('/') || name.starts_with('/')) && path(name).exists()
}

/// Runs `f` inside namespace `netns` (or right here when `None`) and returns its result.
pub fn run_in<T: Send>(
    netns: Option<&str>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(name) = netns else { return f() };
    if !exists(name) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("network namespace {name} does not exist"),
        ));
    }
    let ns = File::open(path(name))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns with a valid namespace fd affects only this thread, which exits
            // when the closure returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("setup thread panicked")))
    })
}
