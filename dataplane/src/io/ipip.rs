//! The IPIP socket pair of the host (RFC 2003 tunnels, as Calico's and flannel's IPIP modes
//! use).
//!
//! Receiving: a raw IPv4 socket of protocol 4 (`IPPROTO_IPIP`). The kernel hands it every
//! IPIP packet addressed to the host, whole (outer header included, reassembled), with the
//! outer source address. Sending: a raw socket with the header included (`IPPROTO_RAW`), so
//! the outer header is tapswitch's; an unspecified outer source is filled in by the host, and
//! the host routes the packet. An outer packet larger than the route's MTU is refused with
//! `EMSGSIZE`, never fragmented (the router checks the tunnel's MTU first).
//!
//! If the kernel's own `ipip` module is loaded, the kernel also sees these packets; with no
//! `ipip` device matching them it answers with ICMP port unreachable. The README says how to
//! quiet that.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Receive buffer asked for: room for bursts.
const RCVBUF: libc::c_int = 4 << 20;

#[derive(Debug)]
pub struct IpipSocket {
    rx: OwnedFd,
    tx: OwnedFd,
}

fn raw_socket(protocol: libc::c_int, what: &str) -> io::Result<OwnedFd> {
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

impl IpipSocket {
    /// Opens both sockets in the calling thread's network namespace.
    pub fn open() -> io::Result<IpipSocket> {
        let rx = raw_socket(libc::IPPROTO_IPIP, "a raw IPIP socket")?;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: value is a live c_int and the length matches it.
            let rc = unsafe {
                libc::setsockopt(
                    rx.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &RCVBUF as *const libc::c_int as *const libc::c_void,
                    mem::size_of::<libc::c_int>() as u32,
                )
            };
            if rc == 0 {
                break;
            }
        }
        let tx = raw_socket(libc::IPPROTO_RAW, "a raw IPv4 socket")?;
        Ok(IpipSocket { rx, tx })
    }

    /// The descriptor to poll for received packets.
    pub fn rx_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Reads one IPIP packet (outer header and all) into `buf`; `Ok(None)` when there is
    /// nothing more to read now. Returns its length and outer source.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Ipv4Addr)>> {
        // SAFETY: sockaddr_in is plain old data; all-zero is valid.
        let mut from: libc::sockaddr_in = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: buf and from are live for the call, with the lengths given.
        let n = unsafe {
            libc::recvfrom(
                self.rx.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some((
            n as usize,
            Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
        )))
    }

    /// Sends `outer` followed by `inner` to `remote`.
    pub fn send(&self, outer: &[u8], inner: &[u8], remote: Ipv4Addr) -> io::Result<()> {
        let iov = [outer, inner].map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        });
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
        let n = unsafe { libc::sendmsg(self.tx.as_raw_fd(), &msg, 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
