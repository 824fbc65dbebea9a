//! Raw IPv4 sockets, shared by the VXLAN and IPIP tunnels: opening one, sizing its receive
//! buffer, and sending a packet given as iovecs to an address.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

/// Sends the concatenation of `iov` to `remote` with one `sendmsg`.
pub fn send_to(fd: &OwnedFd, iov: &[libc::iovec], remote: Ipv4Addr) -> io::Result<()> {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut dst: libc::sockaddr_in = unsafe { mem::zeroed() };
    dst.sin_family = libc::AF_INET as u16;
    dst.sin_addr.s_addr = u32::from(remote).to_be();
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut dst as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    // SAFETY: msg points at live buffers of the stated sizes for the whole call; sendmsg
    // only reads them.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
