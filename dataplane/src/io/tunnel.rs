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
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::port::frame_iovecs;
use super::raw;
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
        raw::set_rcvbuf(udp.as_raw_fd(), RCVBUF);
        let raw = raw::open(libc::IPPROTO_RAW, "a raw IPv4 socket")?;
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
        raw::send_to(&self.raw, &frame_iovecs(outer, inner), remote)
    }
}
