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

/// Asks for a receive buffer of `bytes`: SO_RCVBUFFORCE (root) is not capped by
/// net.core.rmem_max; without the privilege, SO_RCVBUF gets what the cap allows.
pub fn set_rcvbuf(fd: RawFd, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: value is a live c_int and the length matches it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &bytes as *const libc::c_int as *const libc::c_void,
                mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc == 0 {
            break;
        }
    }
}
