//! Raw IPv4 sockets, shared by the VXLAN and IPIP tunnels: opening one and sizing its receive
//! buffer (they send and receive in batches, see [`batch`](super::batch)).

use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Opens a non-blocking raw IPv4 socket of `protocol` (`IPPROTO_RAW` to send packets with
/// their IPv4 header included). `what` names it in errors.
pub fn open(protocol: libc::c_int, what: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("opening {what}: {e}")));
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(fd, level, opt, value)` for any plain value type (an `int`, a struct the
/// option takes).
pub fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value is a live T and the length given is its size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            value as *const T as *const libc::c_void,
            mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Asks for a receive buffer of `bytes`: SO_RCVBUFFORCE (root) is not capped by
/// net.core.rmem_max; without the privilege, SO_RCVBUF gets what the cap allows.
pub fn set_rcvbuf(fd: RawFd, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        if setsockopt(fd, libc::SOL_SOCKET, opt, &bytes).is_ok() {
            break;
        }
    }
}
