//! Many datagrams per system call: [`RxBatch`] fills up to [`BATCH`] buffers with one
//! `recvmmsg`, [`TxBatch`] collects packets and sends them with `sendmmsg`. Both are allocated
//! once per worker and reused: nothing is allocated per packet.
//!
//! With UDP segmentation offload, one message may carry many datagrams:
//!
//! - Sending ([`TxBatch::send`] with `gso`): consecutive packets to one destination through
//!   one socket, all of one length but the last (the segments of one TCP super-frame, each
//!   with its own VXLAN and inner headers), go as one message with `UDP_SEGMENT`. The kernel
//!   keeps them one packet (one skb) as far as it can: through its UDP and IP stacks, a veth,
//!   and into the receiving socket, and cuts it into datagrams only where it must.
//! - Receiving (a socket with `UDP_GRO`, see [`enable_gro`]): the kernel may hand over a run
//!   of datagrams of one flow as one message; [`RxBatch::get`] says the size of each.
//!
//! Used by the tunnel sockets (VXLAN's UDP sockets, IPIP's raw sockets), which carry one packet
//! per datagram: a TAP has no multi-frame read or write.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

pub use crate::pipeline::Sent;

/// Messages read or sent per system call, at most.
pub const BATCH: usize = 32;
/// Room for one received message: a run of datagrams the kernel joined (`UDP_GRO`, at most
/// 64 KiB), or one datagram of a jumbo-frame underlay. A longer one is cut and reported so.
pub const RX_ROOM: usize = 65_536;
/// Datagrams one `UDP_SEGMENT` message may carry (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_SEGMENTS_MAX: usize = 64;
/// Bytes one `UDP_SEGMENT` message may carry, headers of the outer UDP and IP included.
const GSO_BYTES_MAX: usize = 65_000;
/// Packets (and bytes) a [`TxBatch`] takes before it must be sent.
const TX_PACKETS_MAX: usize = 256;
const TX_BYTES_MAX: usize = 256 * 1024;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Control buffer per message: room for one `int` and one `u16` control message.
const CMSG_ROOM: usize = 64;

/// Asks the kernel to hand over runs of datagrams of one flow as one message (`UDP_GRO`).
/// Older kernels lack the option; then each datagram comes alone.
pub fn enable_gro(fd: RawFd) {
    let _ = super::raw::setsockopt(fd, SOL_UDP, UDP_GRO, &(1 as libc::c_int));
}

/// One received message, as [`RxBatch::get`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Got {
    len: usize,
    /// The sender's address (a raw IP socket's port is 0).
    src: SocketAddrV4,
    cut: bool,
    /// Size of each datagram of a joined run (`UDP_GRO`); the last may be shorter.
    segment: Option<usize>,
}

/// Receive buffers for one `recvmmsg`.
pub struct RxBatch {
    bufs: Vec<u8>,
    control: Vec<u64>,
    got: Vec<Got>,
}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            bufs: vec![0; BATCH * RX_ROOM],
            control: vec![0; BATCH * CMSG_ROOM / 8],
            got: Vec::with_capacity(BATCH),
        }
    }
}

impl RxBatch {
    /// Reads up to [`BATCH`] messages from `fd` with one `recvmmsg`; returns how many
    /// (0: nothing to read now).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.got.clear();
        // SAFETY: plain old data; all-zero is valid for each.
        let mut from: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iov: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let controls = self.control.chunks_mut(CMSG_ROOM / 8);
        for (i, (chunk, control)) in self.bufs.chunks_mut(RX_ROOM).zip(controls).enumerate() {
            iov[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut from[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = control.as_mut_ptr().cast();
            h.msg_controllen = CMSG_ROOM;
        }
        // SAFETY: every header points at a live buffer, iovec, address and control buffer of
        // the stated sizes for the whole call.
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
        for (m, from) in msgs.iter().zip(&from).take(n as usize) {
            self.got.push(Got {
                len: (m.msg_len as usize).min(RX_ROOM),
                src: SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
                    u16::from_be(from.sin_port),
                ),
                cut: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                segment: gro_segment(&m.msg_hdr),
            });
        }
        Ok(n as usize)
    }

    /// Message `i` of the last read: its bytes, its source, whether it was cut, and the size of
    /// each of its datagrams when it carries a joined run (else it is one datagram).
    pub fn get(&mut self, i: usize) -> (&mut [u8], SocketAddrV4, bool, Option<usize>) {
        let g = self.got[i];
        let start = i * RX_ROOM;
        (
            &mut self.bufs[start..start + g.len],
            g.src,
            g.cut,
            g.segment,
        )
    }
}

/// The datagram size of a `UDP_GRO` control message in `h`, if there is one.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: h's control buffer was filled by recvmmsg; the CMSG macros walk it within
    // msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(h) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and within the control buffer.
        let c = unsafe { &*cmsg };
        if c.cmsg_level == SOL_UDP && c.cmsg_type == UDP_GRO {
            // SAFETY: a UDP_GRO control message carries an int.
            let size: libc::c_int =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            return usize::try_from(size).ok().filter(|&s| s > 0);
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(h, cmsg) };
    }
    None
}

/// One packet of a [`TxBatch`].
#[derive(Debug, Clone, Copy)]
struct Packet {
    start: usize,
    len: usize,
    remote: Ipv4Addr,
    /// Index of the socket it goes through (in the slice given to [`TxBatch::send`]).
    socket: u16,
    /// IPv4 TTL to send it with (a control message); 0: the socket's.
    ttl: u8,
}

/// Packets collected for `sendmmsg`, each copied into one arena.
#[derive(Default)]
pub struct TxBatch {
    data: Vec<u8>,
    packets: Vec<Packet>,
}

impl TxBatch {
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Whether the batch must be sent before it takes another packet.
    pub fn is_full(&self) -> bool {
        self.packets.len() >= TX_PACKETS_MAX || self.data.len() >= TX_BYTES_MAX
    }

    /// Forgets the packets (when there is no socket left to send them through).
    pub fn clear(&mut self) {
        self.packets.clear();
        self.data.clear();
    }

    /// Adds the packet made of `pieces` for `remote`, to go through socket `socket` with TTL
    /// `ttl` (0: the socket's).
    pub fn push(&mut self, pieces: &[&[u8]], remote: Ipv4Addr, socket: u16, ttl: u8) {
        let start = self.data.len();
        for p in pieces {
            self.data.extend_from_slice(p);
        }
        self.packets.push(Packet {
            start,
            len: self.data.len() - start,
            remote,
            socket,
            ttl,
        });
    }

    /// Sends every packet through `sockets` to port `port` of its destination (with
    /// `sendmmsg`, one call per run of packets for one socket, and more where a packet fails)
    /// and empties the batch. With `gso` (UDP
    /// sockets), runs of equal-sized packets to one destination go as one `UDP_SEGMENT`
    /// message. `overhead` is what the kernel adds to each packet (outer UDP and IPv4
    /// headers), for the byte count.
    pub fn send(&mut self, sockets: &[RawFd], port: u16, gso: bool, overhead: usize) -> Sent {
        let mut sent = Sent::default();
        let mut i = 0;
        while i < self.packets.len() {
            let socket = self.packets[i].socket;
            let mut end = i;
            while end < self.packets.len() && self.packets[end].socket == socket {
                end += 1;
            }
            match sockets.get(usize::from(socket)) {
                Some(&fd) => self.send_run(fd, port, i, end, gso, overhead, &mut sent),
                None => sent.errors += (end - i) as u64,
            }
            i = end;
        }
        self.clear();
        sent
    }

    /// Sends packets `from..to` (all for socket `fd`) to port `port` of their destinations.
    #[allow(clippy::too_many_arguments)]
    fn send_run(
        &mut self,
        fd: RawFd,
        port: u16,
        from: usize,
        to: usize,
        gso: bool,
        overhead: usize,
        sent: &mut Sent,
    ) {
        // Messages: (first packet, packets, segment size when joined).
        let mut messages: Vec<(usize, usize, usize)> = Vec::with_capacity(BATCH);
        let mut i = from;
        while i < to {
            let first = self.packets[i];
            let mut n = 1;
            if gso {
                let mut bytes = first.len + overhead;
                while i + n < to && n < GSO_SEGMENTS_MAX {
                    let p = self.packets[i + n];
                    let prev = self.packets[i + n - 1];
                    let joins = p.remote == first.remote
                        && p.ttl == first.ttl
                        && p.start == prev.start + prev.len
                        && prev.len == first.len
                        && p.len <= first.len
                        && bytes + p.len + overhead <= GSO_BYTES_MAX;
                    if !joins {
                        break;
                    }
                    bytes += p.len + overhead;
                    n += 1;
                }
            }
            messages.push((i, n, first.len));
            i += n;
            if messages.len() == BATCH || i == to {
                self.send_messages(fd, port, &messages, overhead, sent);
                messages.clear();
            }
        }
    }

    /// One or more `sendmmsg` calls for `messages`.
    fn send_messages(
        &mut self,
        fd: RawFd,
        port: u16,
        messages: &[(usize, usize, usize)],
        overhead: usize,
        sent: &mut Sent,
    ) {
        // SAFETY: plain old data; all-zero is valid for each.
        let mut to: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iov: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let mut control = [[0u64; CMSG_ROOM / 8]; BATCH];
        for (k, &(first, n, segment)) in messages.iter().enumerate() {
            let p = self.packets[first];
            let last = self.packets[first + n - 1];
            to[k].sin_family = libc::AF_INET as u16;
            to[k].sin_port = port.to_be();
            to[k].sin_addr.s_addr = u32::from(p.remote).to_be();
            iov[k] = libc::iovec {
                iov_base: self.data[p.start..].as_mut_ptr().cast(),
                iov_len: last.start + last.len - p.start,
            };
            let h = &mut msgs[k].msg_hdr;
            h.msg_name = (&mut to[k] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut iov[k];
            h.msg_iovlen = 1;
            let mut cmsgs: Vec<(libc::c_int, libc::c_int, [u8; 4], usize)> = Vec::new();
            if p.ttl != 0 {
                cmsgs.push((
                    libc::IPPROTO_IP,
                    libc::IP_TTL,
                    libc::c_int::from(p.ttl).to_ne_bytes(),
                    4,
                ));
            }
            if n > 1 {
                let s = (segment as u16).to_ne_bytes();
                cmsgs.push((SOL_UDP, UDP_SEGMENT, [s[0], s[1], 0, 0], 2));
            }
            if !cmsgs.is_empty() {
                fill_control(h, &mut control[k], &cmsgs);
            }
        }
        let count = messages.len();
        let mut done = 0;
        while done < count {
            // SAFETY: every header points at live data, iovec, address and control buffer of
            // the stated sizes for the whole call; sendmmsg only reads them.
            let rc =
                unsafe { libc::sendmmsg(fd, msgs[done..].as_mut_ptr(), (count - done) as u32, 0) };
            if rc > 0 {
                for &(first, n, _) in &messages[done..done + rc as usize] {
                    for p in &self.packets[first..first + n] {
                        sent.packets += 1;
                        sent.bytes += (p.len + overhead) as u64;
                    }
                }
                done += rc as usize;
                continue;
            }
            // The first message of this call failed: count it and go on with the next.
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let n = messages[done].1 as u64;
            // EMSGSIZE: larger than the MTU; EINVAL for a joined message whose datagrams
            // would be.
            match e.raw_os_error() {
                Some(libc::EMSGSIZE) => sent.oversized += n,
                Some(libc::EINVAL) if n > 1 => sent.oversized += n,
                _ => sent.errors += n,
            }
            done += 1;
        }
    }
}

/// Writes control messages (level, type, data, data length) into `buf` for `h`.
fn fill_control(
    h: &mut libc::msghdr,
    buf: &mut [u64; CMSG_ROOM / 8],
    cmsgs: &[(libc::c_int, libc::c_int, [u8; 4], usize)],
) {
    h.msg_control = buf.as_mut_ptr().cast();
    h.msg_controllen = CMSG_ROOM;
    let mut used = 0;
    // SAFETY: the control buffer is CMSG_ROOM bytes, enough for the two small messages this
    // module sends; the CMSG macros stay within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        for (level, ty, data, len) in cmsgs {
            (*c).cmsg_level = *level;
            (*c).cmsg_type = *ty;
            (*c).cmsg_len = libc::CMSG_LEN(*len as u32) as usize;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), *len);
            used += libc::CMSG_SPACE(*len as u32) as usize;
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    h.msg_controllen = used;
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
                let (bytes, src, cut, segment) = batch.get(i);
                assert!(!cut);
                assert_eq!(segment, None);
                assert_eq!(*src.ip(), Ipv4Addr::LOCALHOST);
                assert_eq!(src.port(), tx.local_addr().unwrap().port());
                assert_eq!(bytes.len(), 100);
                seen.push(bytes[0]);
            }
        }
        assert_eq!(seen, (0..40).collect::<Vec<u8>>());
    }

    /// Equal-sized packets to one address go as one UDP_SEGMENT message; with UDP_GRO on the
    /// receiving socket they may come back joined: either way every datagram arrives, in
    /// order, whole.
    #[test]
    fn segmented_sends_and_joined_receives() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_gro(rx.as_raw_fd());
        let port = rx.local_addr().unwrap().port();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = TxBatch::default();
        for i in 0..50u8 {
            let len = if i == 49 { 300 } else { 1000 };
            batch.push(&[&vec![i; len]], Ipv4Addr::LOCALHOST, 0, 0);
        }
        let sent = batch.send(&[tx.as_raw_fd()], port, true, 28);
        assert_eq!(sent.packets, 50, "{sent:?}");
        assert_eq!(sent.bytes, 49 * 1028 + 328);
        let mut got = Vec::new();
        let mut rb = RxBatch::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 50 && std::time::Instant::now() < deadline {
            let n = rb.recv(rx.as_raw_fd()).unwrap();
            for i in 0..n {
                let (bytes, _, cut, segment) = rb.get(i);
                assert!(!cut);
                for d in bytes.chunks(segment.unwrap_or(bytes.len())) {
                    got.push((d[0], d.len()));
                }
            }
        }
        let want: Vec<(u8, usize)> = (0..50u8)
            .map(|i| (i, if i == 49 { 300 } else { 1000 }))
            .collect();
        assert_eq!(got, want);
    }
}
