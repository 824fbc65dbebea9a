//! Many datagrams per system call: [`RxBatch`] fills up to [`BATCH`] buffers with one
//! `recvmmsg`, [`TxBatch`] collects packets and sends them with one `sendmmsg`. Both are
//! allocated once per worker and reused: nothing is allocated per packet.
//!
//! Used by the tunnel sockets (VXLAN's UDP and raw sockets, IPIP's raw sockets), which carry
//! one packet per datagram: a TAP has no multi-frame read or write.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

/// Datagrams read or sent per system call, at most.
pub const BATCH: usize = 32;
/// Room for one received datagram: a VXLAN or IPIP packet of a jumbo-frame underlay (9000)
/// with room to spare. A longer one is cut and reported as truncated.
pub const RX_ROOM: usize = 16 * 1024;

/// Receive buffers for one `recvmmsg`.
pub struct RxBatch {
    bufs: Vec<u8>,
    /// Length, source and whether it was cut, of each datagram the last read returned.
    got: Vec<(usize, Ipv4Addr, bool)>,
}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            bufs: vec![0; BATCH * RX_ROOM],
            got: Vec::with_capacity(BATCH),
        }
    }
}

impl RxBatch {
    /// Reads up to [`BATCH`] datagrams from `fd` with one `recvmmsg`; returns how many
    /// (0: nothing to read now).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.got.clear();
        // SAFETY: plain old data; all-zero is valid for each.
        let mut from: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iov: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (i, chunk) in self.bufs.chunks_mut(RX_ROOM).enumerate() {
            iov[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut from[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live buffer, iovec and address of the stated sizes
        // for the whole call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        for i in 0..n as usize {
            let cut = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let len = (msgs[i].msg_len as usize).min(RX_ROOM);
            let src = Ipv4Addr::from(u32::from_be(from[i].sin_addr.s_addr));
            self.got.push((len, src, cut));
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last read: its bytes, its source, and whether it was cut.
    pub fn get(&mut self, i: usize) -> (&mut [u8], Ipv4Addr, bool) {
        let (len, src, cut) = self.got[i];
        (&mut self.bufs[i * RX_ROOM..i * RX_ROOM + len], src, cut)
    }
}

/// Packets collected for one `sendmmsg`, each copied (headers and payload) into one arena.
#[derive(Default)]
pub struct TxBatch {
    data: Vec<u8>,
    /// (start, length, destination) of each packet in `data`.
    packets: Vec<(usize, usize, Ipv4Addr)>,
}

/// What a [`TxBatch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub packets: u64,
    pub bytes: u64,
    /// Refused as larger than the route's MTU (`EMSGSIZE`).
    pub oversized: u64,
    pub errors: u64,
}

impl TxBatch {
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.packets.len() >= BATCH
    }

    /// Forgets the packets (when there is no socket left to send them through).
    pub fn clear(&mut self) {
        self.packets.clear();
        self.data.clear();
    }

    /// Adds the packet made of `pieces` for `remote`.
    pub fn push(&mut self, pieces: &[&[u8]], remote: Ipv4Addr) {
        let start = self.data.len();
        for p in pieces {
            self.data.extend_from_slice(p);
        }
        self.packets.push((start, self.data.len() - start, remote));
    }

    /// Sends every packet through `fd` (`sendmmsg`, as many calls as errors need) and
    /// empties the batch.
    pub fn send(&mut self, fd: RawFd) -> Sent {
        let mut sent = Sent::default();
        let n = self.packets.len();
        // SAFETY: plain old data; all-zero is valid for each.
        let mut to: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iov: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let mut done = 0;
        while done < n {
            let count = (n - done).min(BATCH);
            for i in 0..count {
                let (start, len, remote) = self.packets[done + i];
                to[i].sin_family = libc::AF_INET as u16;
                to[i].sin_addr.s_addr = u32::from(remote).to_be();
                iov[i] = libc::iovec {
                    iov_base: self.data[start..].as_mut_ptr().cast(),
                    iov_len: len,
                };
                let h = &mut msgs[i].msg_hdr;
                h.msg_name = (&mut to[i] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_iov = &mut iov[i];
                h.msg_iovlen = 1;
            }
            // SAFETY: every header points at live data, iovec and address of the stated
            // sizes for the whole call; sendmmsg only reads the data.
            let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), count as u32, 0) };
            if rc > 0 {
                for i in 0..rc as usize {
                    sent.packets += 1;
                    sent.bytes += self.packets[done + i].1 as u64;
                }
                done += rc as usize;
                continue;
            }
            // The first packet of this call failed: count it and go on with the next.
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if e.raw_os_error() == Some(libc::EMSGSIZE) {
                sent.oversized += 1;
            } else {
                sent.errors += 1;
            }
            done += 1;
        }
        self.clear();
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_over_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        for i in 0..40u8 {
            tx.send(&[i; 100]).unwrap();
        }
        let mut batch = RxBatch::default();
        let mut seen = Vec::new();
        loop {
            let n = batch.recv(rx.as_raw_fd()).unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= BATCH);
            for i in 0..n {
                let (bytes, src, cut) = batch.get(i);
                assert!(!cut);
                assert_eq!(src, Ipv4Addr::LOCALHOST);
                assert_eq!(bytes.len(), 100);
                seen.push(bytes[0]);
            }
        }
        assert_eq!(seen, (0..40).collect::<Vec<u8>>());
    }
}
