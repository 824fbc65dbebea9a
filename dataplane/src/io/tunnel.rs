//! A VXLAN tunnel endpoint's sockets.
//!
//! Receiving: one or more UDP sockets bound to (local address, port); the kernel hands them
//! the VXLAN header and inner frame with the outer source address. With more than one queue
//! the sockets share the address with `SO_REUSEPORT`, and the kernel spreads received packets
//! over them by a hash of the outer 4-tuple. A remote VTEP sets the outer UDP source port from
//! the inner flow's hash (RFC 7348 section 5; tapswitch's own sending does the same), so the
//! packets of one inner flow from one remote stay on one socket; worker `i` reads socket `i`
//! (modulo the number of sockets).
//!
//! Sending: one raw IPv4 socket (`IPPROTO_RAW`, header included), shared by all workers,
//! through which tapswitch writes the whole outer IPv4 and UDP header itself, because the UDP
//! source port must follow each inner flow's hash (as the kernel's vxlan device does) and one
//! bound UDP socket has one source port. The kernel refuses (EMSGSIZE) an outer packet larger
//! than the route's MTU instead of fragmenting it; the worker counts that.
//!
//! Created by control (inside the switch's network namespace), read and written only by
//! workers.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::batch::{RxBatch, Sent, TxBatch};
use super::raw;
use crate::pipeline::bridge::EgressFrame;
use crate::pipeline::TunnelEndpoint;

/// Receive buffer asked for each UDP socket: room for bursts of encapsulated frames.
const RCVBUF: libc::c_int = 4 << 20;

#[derive(Debug)]
pub struct TunnelSocket {
    endpoint: TunnelEndpoint,
    /// The receiving sockets, one per queue; never empty.
    udp: Vec<UdpSocket>,
    raw: OwnedFd,
}

impl TunnelSocket {
    /// Binds the endpoint with `queues` receiving sockets (0 or 1: one plain socket; more:
    /// `SO_REUSEPORT` sockets on the same address and port). Errors say which address and
    /// port.
    pub fn open(endpoint: TunnelEndpoint, queues: usize) -> io::Result<TunnelSocket> {
        let addr = SocketAddrV4::new(endpoint.local, endpoint.port);
        let bind_error =
            |e: io::Error| io::Error::new(e.kind(), format!("binding UDP {addr}: {e}"));
        let count = queues.max(1);
        let mut udp = Vec::with_capacity(count);
        if count == 1 {
            let socket = UdpSocket::bind(addr).map_err(bind_error)?;
            socket.set_nonblocking(true)?;
            udp.push(socket);
        } else {
            // Sockets with SO_REUSEPORT of the same user share a port silently, so a second
            // switch on this endpoint would take part of its packets: a plain bind first
            // refuses an address in use (and picks the port when it is 0).
            let probe = UdpSocket::bind(addr).map_err(bind_error)?;
            let bound = match probe.local_addr()? {
                std::net::SocketAddr::V4(a) => a,
                std::net::SocketAddr::V6(_) => addr,
            };
            drop(probe);
            for _ in 0..count {
                udp.push(bind_reuseport(bound).map_err(bind_error)?);
            }
        }
        for socket in &udp {
            raw::set_rcvbuf(socket.as_raw_fd(), RCVBUF);
        }
        let raw = raw::open(libc::IPPROTO_RAW, "a raw IPv4 socket")?;
        Ok(TunnelSocket { endpoint, udp, raw })
    }

    pub fn endpoint(&self) -> TunnelEndpoint {
        self.endpoint
    }

    /// How many receiving sockets (queues) the endpoint has; at least 1.
    pub fn queues(&self) -> usize {
        self.udp.len()
    }

    /// The descriptor to poll for packets received on queue `queue`, or `None` when
    /// `queue >= queues()`.
    pub fn rx_fd(&self, queue: usize) -> Option<RawFd> {
        self.udp.get(queue).map(AsRawFd::as_raw_fd)
    }

    /// Reads up to [`BATCH`](super::batch::BATCH) UDP payloads (VXLAN header and inner
    /// frame) from queue `queue` (modulo [`queues`](Self::queues)) with one `recvmmsg`;
    /// returns how many (0: nothing more to read there now).
    pub fn recv(&self, queue: usize, batch: &mut RxBatch) -> io::Result<usize> {
        batch.recv(self.udp[queue % self.udp.len()].as_raw_fd())
    }

    /// Queues `outer` (IPv4 + UDP + VXLAN headers) followed by `inner` for `remote` in
    /// `batch`, sending the batch first when it is full.
    pub fn send(
        &self,
        batch: &mut TxBatch,
        outer: &[u8],
        inner: &EgressFrame<'_>,
        remote: Ipv4Addr,
    ) -> Sent {
        let sent = if batch.is_full() {
            self.flush(batch)
        } else {
            Sent::default()
        };
        let tag: &[u8] = inner.tag.as_ref().map_or(&[], |t| &t[..]);
        batch.push(&[outer, inner.addresses, tag, inner.rest], remote);
        sent
    }

    /// Sends what `batch` holds with one `sendmmsg` (more if some packet fails).
    pub fn flush(&self, batch: &mut TxBatch) -> Sent {
        batch.send(self.raw.as_raw_fd())
    }
}

/// A non-blocking UDP socket with `SO_REUSEPORT`, bound to `addr`.
fn bind_reuseport(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: one is a live c_int and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            &one as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
    sin.sin_family = libc::AF_INET as u16;
    sin.sin_port = addr.port().to_be();
    sin.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    // SAFETY: sin is a valid sockaddr_in and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}
