//! A VXLAN tunnel endpoint's sockets.
//!
//! Receiving: a UDP socket bound to (local address, port); the kernel hands it the VXLAN
//! header and inner frame with the outer source address. Sending: a raw IPv4 socket
//! (`IPPROTO_RAW`, header included) through which tapswitch writes the whole outer IPv4 and
//! UDP header itself, because the UDP source port must follow each inner flow's hash (RFC 7348
//! section 5, as the kernel's vxlan device does) and one bound UDP socket has one source port.
//! The kernel refuses (EMSGSIZE) an outer packet larger than the route's MTU instead of
//! fragmenting it; the worker counts that.
//!
//! Created by control (inside the switch's network namespace), read and written only by the
//! worker.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::port::frame_iovecs;
use crate::pipeline::bridge::EgressFrame;
use crate::pipeline::TunnelEndpoint;

/// Receive buffer asked for the UDP socket: room for bursts of encapsulated frames.
const RCVBUF: libc::c_int = 4 << 20;

#[derive(Debug)]
pub struct TunnelSocket {
    endpoint: TunnelEndpoint,
    udp: UdpSocket,
    raw: OwnedFd,
}

impl TunnelSocket {
    /// Binds the endpoint. Errors say which address and port.
    pub fn open(endpoint: TunnelEndpoint) -> io::Result<TunnelSocket> {
        let addr = SocketAddrV4::new(endpoint.local, endpoint.port);
        let udp = UdpSocket::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("binding UDP {addr}: {e}")))?;
        udp.set_nonblocking(true)?;
        // SO_RCVBUFFORCE (root) is not capped by net.core.rmem_max; without the privilege,
        // SO_RCVBUF gets what the cap allows.
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: value is a live c_int and the length matches it.
            let rc = unsafe {
                libc::setsockopt(
                    udp.as_raw_fd(),
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
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("opening a raw IPv4 socket: {e}"),
            ));
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let raw = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TunnelSocket { endpoint, udp, raw })
    }

    pub fn endpoint(&self) -> TunnelEndpoint {
        self.endpoint
    }

    /// The descriptor to poll for received packets.
    pub fn rx_fd(&self) -> RawFd {
        self.udp.as_raw_fd()
    }

    /// Reads one UDP payload (VXLAN header and inner frame) into `buf`; `Ok(None)` when there
    /// is nothing more to read now.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Ipv4Addr)>> {
        match self.udp.recv_from(buf) {
            Ok((n, std::net::SocketAddr::V4(from))) => Ok(Some((n, *from.ip()))),
            Ok((_, _)) => Ok(Some((0, Ipv4Addr::UNSPECIFIED))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `outer` (IPv4 + UDP + VXLAN headers) followed by `inner` to `remote`.
    pub fn send(&self, outer: &[u8], inner: &EgressFrame<'_>, remote: Ipv4Addr) -> io::Result<()> {
        let iov = frame_iovecs(outer, inner);
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
        let n = unsafe { libc::sendmsg(self.raw.as_raw_fd(), &msg, 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
