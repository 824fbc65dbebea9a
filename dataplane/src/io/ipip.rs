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
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::batch::{RxBatch, Sent, TxBatch};
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

    /// Reads up to a batch of IPIP packets (outer header and all, with their outer source)
    /// with one `recvmmsg`; returns how many (0: nothing more to read now).
    pub fn recv(&self, batch: &mut RxBatch) -> io::Result<usize> {
        batch.recv(self.rx.as_raw_fd())
    }

    /// Queues `outer` followed by `inner` for `remote` in `batch`, sending the batch first
    /// when it is full.
    pub fn send(&self, batch: &mut TxBatch, outer: &[u8], inner: &[u8], remote: Ipv4Addr) -> Sent {
        let sent = if batch.is_full() {
            self.flush(batch)
        } else {
            Sent::default()
        };
        batch.push(&[outer, inner], remote, 0, 0);
        sent
    }

    /// Sends what `batch` holds with one `sendmmsg` (more if some packet fails).
    pub fn flush(&self, batch: &mut TxBatch) -> Sent {
        batch.send(&[self.tx.as_raw_fd()], 0, false, 0)
    }
}
