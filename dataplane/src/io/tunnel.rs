//! A VXLAN tunnel endpoint's sockets.
//!
//! Receiving: one or more UDP sockets bound to (local address, port); the kernel hands them
//! the VXLAN header and inner frame with the outer source address. With more than one queue
//! the sockets share the address with `SO_REUSEPORT`, and a small eBPF program
//! ([`steering::load_reuseport`](super::steering::load_reuseport)) picks the socket by the
//! inner frame's flow hash, the same hash that picks a TAP's queue: worker `i` reads socket
//! `i`, so the worker that writes a flow's frames into a container's TAP is the one that reads
//! the container's answers, already running when the kernel answers at once. Without the
//! program (a kernel that refuses it) the kernel spreads packets by a hash of the outer
//! 4-tuple; a remote VTEP sets the outer UDP source port from the inner flow's hash (RFC 7348
//! section 5; tapswitch's own sending does the same), so the packets of one inner flow still
//! stay on one socket.
//!
//! Sending: [`TX_SOCKETS`] UDP sockets bound to the local address, each on its own source
//! port; a frame goes through the one its inner flow's hash picks, so a flow keeps one outer
//! source port and different flows spread over ports (RFC 7348 section 5, for ECMP in the
//! underlay). Each worker collects its packets per endpoint ([`TxBatch`]) and sends them with
//! `sendmmsg`; the segments of a TCP super-frame (equal sizes, one destination) go as one
//! `UDP_SEGMENT` message, so the kernel moves them as one packet as far as it can. The
//! sockets send with UDP checksums (segmentation offload needs them; a receiver accepts a
//! checksum or none alike), DF clear, and the TTL of the VXLAN port; the kernel refuses an
//! outer packet larger than the interface's MTU (`IP_PMTUDISC_INTERFACE`) instead of
//! fragmenting it, and the worker counts that as `tx_oversized`. The receiving sockets ask
//! for `UDP_GRO`, so runs of datagrams of one flow may arrive as one message.
//!
//! Created by control (inside the switch's network namespace), read and written only by
//! workers.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use std::sync::{Mutex, PoisonError};

use super::batch::{self, RxBatch, Sent, TxBatch};
use super::raw;
use crate::pipeline::EgressFrame;
use crate::pipeline::TunnelEndpoint;
use crate::wire::vxlan::HEADER_LEN as VXLAN_LEN;

/// Receive buffer asked for each UDP socket: room for bursts of encapsulated frames (runs of
/// datagrams joined by the kernel count 64 KiB or more each).
const RCVBUF: libc::c_int = 16 << 20;

/// Sending sockets of an endpoint: outer source ports for the flows to spread over.
pub const TX_SOCKETS: usize = 256;
/// Outer IPv4 (20) and UDP (8) headers: the kernel adds them to each packet.
const OUTER_IP_UDP: usize = 28;
const IP_PMTUDISC_INTERFACE: libc::c_int = 4;

pub struct TunnelSocket {
    endpoint: TunnelEndpoint,
    /// The receiving sockets, one per queue; never empty.
    udp: Vec<UdpSocket>,
    /// The sending sockets, each bound to its own source port.
    tx: Vec<RawFd>,
    /// The descriptors of `tx`, closed when the endpoint is dropped.
    _tx_open: Vec<OwnedFd>,
    /// Each worker's packets not sent yet (indexed by the worker's queue; uncontended).
    batches: Vec<Mutex<TxBatch>>,
}

impl std::fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelSocket")
            .field("endpoint", &self.endpoint)
            .field("queues", &self.udp.len())
            .finish()
    }
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
            // Socket i (worker i's) receives the flows whose frames TAP queue i gives out.
            let steer = super::steering::load_reuseport(count)
                .and_then(|p| super::steering::attach_reuseport(udp[0].as_raw_fd(), &p));
            if let Err(e) = steer {
                log::warn!("vxlan endpoint {addr}: receiving by inner flow hash unavailable: {e}");
            }
        }
        for socket in &udp {
            raw::set_rcvbuf(socket.as_raw_fd(), RCVBUF);
            batch::enable_gro(socket.as_raw_fd());
        }
        let mut tx_owned = Vec::with_capacity(TX_SOCKETS);
        for _ in 0..TX_SOCKETS {
            tx_owned.push(
                sending_socket(endpoint.local).map_err(|e| {
                    io::Error::new(e.kind(), format!("a VXLAN sending socket: {e}"))
                })?,
            );
        }
        Ok(TunnelSocket {
            endpoint,
            udp,
            tx: tx_owned.iter().map(AsRawFd::as_raw_fd).collect(),
            _tx_open: tx_owned,
            batches: (0..count).map(|_| Mutex::new(TxBatch::default())).collect(),
        })
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

    /// Queues, in worker `queue`'s batch, the VXLAN packet to `remote` that `outer` (the
    /// outer IPv4 + UDP + VXLAN headers the pipeline built) and `inner` make: its VXLAN header
    /// and frame, through the sending socket its outer source port picks, with its TTL. The
    /// batch is sent first when it is full.
    pub fn send(
        &self,
        queue: usize,
        outer: &[u8],
        inner: &EgressFrame<'_>,
        remote: Ipv4Addr,
    ) -> Sent {
        let mut batch = self.batch(queue);
        let sent = if batch.is_full() {
            self.send_batch(&mut batch)
        } else {
            Sent::default()
        };
        let sport = u16::from_be_bytes([outer[20], outer[21]]);
        let socket = (usize::from(sport) % self.tx.len()) as u16;
        let ttl = outer[8];
        let vxlan = &outer[outer.len() - VXLAN_LEN..];
        let tag: &[u8] = inner.tag.as_ref().map_or(&[], |t| &t[..]);
        batch.push(
            &[vxlan, inner.addresses, tag, inner.rest],
            remote,
            socket,
            ttl,
        );
        sent
    }

    /// Sends what worker `queue` has queued.
    pub fn flush(&self, queue: usize) -> Sent {
        let mut batch = self.batch(queue);
        if batch.is_empty() {
            return Sent::default();
        }
        self.send_batch(&mut batch)
    }

    fn batch(&self, queue: usize) -> std::sync::MutexGuard<'_, TxBatch> {
        self.batches[queue % self.batches.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn send_batch(&self, batch: &mut TxBatch) -> Sent {
        batch.send(&self.tx, self.endpoint.port, true, OUTER_IP_UDP)
    }
}

/// A sending socket: bound to `local` and a port of the kernel's choosing, checksums on,
/// DF clear and no fragmentation (`IP_PMTUDISC_INTERFACE`).
fn sending_socket(local: Ipv4Addr) -> io::Result<OwnedFd> {
    let socket = UdpSocket::bind(SocketAddrV4::new(local, 0))?;
    socket.set_nonblocking(true)?;
    let fd = OwnedFd::from(socket);
    raw::setsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        &IP_PMTUDISC_INTERFACE,
    )?;
    Ok(fd)
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
    raw::setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        &(1 as libc::c_int),
    )?;
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
