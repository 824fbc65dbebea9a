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
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::raw;

/// Receive buffer asked for: room for bursts.
const RCVBUF: libc::c_int = 4 << 20;

#[derive(Debug)]
pub struct IpipSocket {
    rx: OwnedFd,
    tx: OwnedFd,
}

impl IpipSocket {
    /// Opens both sockets in the calling thread's network namespace.
    pub fn open() -> io::Result<IpipSocket> {
        let rx = raw::open(libc::IPPROTO_IPIP, "a raw IPIP socket")?;
        raw::set_rcvbuf(rx.as_raw_fd(), RCVBUF);
        let tx = raw::open(libc::IPPROTO_RAW, "a raw IPv4 socket")?;
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
        raw::send_to(&self.tx, &iov, remote)
    }
}
