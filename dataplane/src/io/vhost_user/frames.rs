//! The data path of a vhost-user port, run by the workers: frames out of the guest's TX rings
//! ([`Device::recv`]) and into its RX rings ([`Device::send`]).
//!
//! Every frame carries the virtio-net header (`virtio_net_hdr_mrg_rxbuf`, 12 bytes with
//! `VERSION_1` or `MRG_RXBUF`, else 10), whose first 10 bytes are what TAP and AF_PACKET
//! carry: a frame from the guest keeps its checksum and segmentation work in its [`Offload`]
//! as a TAP's does, and a frame to the guest keeps its work only if the guest acknowledged it
//! can take it (`GUEST_CSUM`, `GUEST_TSO4`/`6`; see [`Device::takes`]), else the pipeline
//! finishes it in software first. Header and frame may be split over descriptors anywhere:
//! nothing here assumes where a descriptor ends.

use std::io;
use std::sync::atomic::Ordering;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::features::{
    header_len, NET_F_GUEST_CSUM, NET_F_GUEST_TSO4, NET_F_GUEST_TSO6, NET_F_MRG_RXBUF,
};
use super::hold::{Held, HeldRing};
use super::{Device, Memory};
use crate::io::port::{RxFrame, HEADROOM};
use crate::pipeline::offload::{Offload, VNET_HDR_LEN};
use crate::pipeline::EgressFrame;
use crate::wire::vnet::{GSO_ECN, GSO_TCPV4, GSO_TCPV6};

/// Used entries of a TX ring published at least this often (the worker's batch).
const PUBLISH_EVERY: u16 = 32;
/// Offset of `num_buffers` in the 12-byte header.
const NUM_BUFFERS: usize = 10;

impl Device {
    /// Whether a frame with `offload` still to do may be written to the guest: it
    /// acknowledged the checksum and segmentation features that the work needs.
    pub(crate) fn takes(&self, offload: &Offload) -> bool {
        let acked = self.features.load(Ordering::Relaxed);
        if offload.csum.is_some() && acked & NET_F_GUEST_CSUM == 0 {
            return false;
        }
        if offload.gso_size.is_none() {
            return true;
        }
        if offload.gso_udp || offload.gso_unsupported {
            return false;
        }
        match offload.header[1] & !GSO_ECN {
            GSO_TCPV4 => acked & NET_F_GUEST_TSO4 != 0,
            GSO_TCPV6 => acked & NET_F_GUEST_TSO6 != 0,
            _ => false,
        }
    }

    /// Whether the guest takes pending checksums (what `port list` shows as offload).
    pub(crate) fn takes_checksums(&self) -> bool {
        self.features.load(Ordering::Relaxed) & NET_F_GUEST_CSUM != 0
    }

    /// Reads the next frame the guest sent on the TX ring of pair `pair` (modulo the pairs)
    /// into `buf[HEADROOM..]`. `Ok(None)` when the ring is empty (the guest's kicks are on
    /// again then) or not running.
    /// The ring stays in `held` (locked) until the batch ends.
    pub(crate) fn recv<'a>(
        &'a self,
        pair: usize,
        buf: &mut [u8],
        held: &mut Held<'a>,
    ) -> io::Result<Option<RxFrame>> {
        let acked = self.features.load(Ordering::Acquire);
        if acked == 0 {
            return Ok(None);
        }
        let index = 2 * (pair % self.pairs()) + 1;
        let HeldRing { vring, mem, .. } = held.tx(self, index);
        let mem: &Memory = mem;
        if !vring.usable() {
            return Ok(None);
        }
        let hdr_len = header_len(acked);
        loop {
            let Some(chain) = vring.queue.pop_descriptor_chain(mem) else {
                vring.publish(mem);
                // Kicks are counted before the ring is looked at again: a kick after this
                // read wakes the worker; buffers posted before it are seen just below.
                vring.drain_kick();
                match vring.queue.enable_notification(mem) {
                    Ok(true) => {
                        // The driver raced us: more to read, kicks off again.
                        let _ = vring.queue.disable_notification(mem);
                        continue;
                    }
                    _ => return Ok(None),
                }
            };
            let head = chain.head_index();
            let room = &mut buf[HEADROOM..];
            let mut header = [0u8; 12];
            let (mut got, mut len, mut truncated, mut ok) = (0, 0, false, true);
            for d in chain {
                if d.is_write_only() {
                    continue;
                }
                let left = d.len() as usize;
                let Some(took) = read_descriptor(
                    mem,
                    d.addr(),
                    left,
                    &mut header[got..hdr_len],
                    &mut room[len..],
                ) else {
                    ok = false;
                    break;
                };
                let into_header = left.min(hdr_len - got);
                got += into_header;
                truncated |= took < left - into_header;
                len += took;
            }
            vring.push_used(mem, head, 0);
            if vring.unpublished() >= PUBLISH_EVERY {
                vring.publish(mem);
            }
            if !ok || got < hdr_len {
                self.counters.tx_bad_chains.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(n) = self.counters.from_guest.get(index / 2) {
                n.fetch_add(1, Ordering::Relaxed);
            }
            let mut vnet = [0u8; VNET_HDR_LEN];
            vnet.copy_from_slice(&header[..VNET_HDR_LEN]);
            return Ok(Some(RxFrame {
                start: HEADROOM,
                len,
                truncated,
                offload: Offload::from_vnet_hdr(&vnet),
            }));
        }
    }

    /// Writes `frame` with the virtio-net header `vnet` into the guest's RX ring of pair
    /// `queue` modulo the pairs (or of the first running pair, when the guest did not enable
    /// that one), over as many buffers as it needs with mergeable RX buffers, else into one.
    /// The ring stays in `held` (locked) until the batch ends, and the guest sees the frame
    /// when it is let go of.
    /// Errors: `ENOTCONN` (no frontend, no running ring), `ENOBUFS` (the guest has not posted
    /// enough buffers), `EMSGSIZE` (does not fit one buffer without mergeable buffers).
    pub(crate) fn send<'a>(
        &'a self,
        queue: usize,
        frame: &EgressFrame<'_>,
        vnet: &[u8; VNET_HDR_LEN],
        held: &mut Held<'a>,
    ) -> io::Result<()> {
        let acked = self.features.load(Ordering::Acquire);
        if acked == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        let hdr_len = header_len(acked);
        let mergeable = acked & NET_F_MRG_RXBUF != 0;
        let mut header = [0u8; 12];
        header[..VNET_HDR_LEN].copy_from_slice(vnet);
        header[NUM_BUFFERS..].copy_from_slice(&1u16.to_le_bytes());
        let tag: &[u8] = frame.tag.as_ref().map_or(&[], |t| &t[..]);
        let mut source = Pieces::new([&header[..hdr_len], frame.addresses, tag, frame.rest]);

        let pairs = self.pairs();
        let first = queue % pairs;
        let mut slot = held.rx(self, 2 * first);
        if !held.rx_ring(slot).vring.usable() {
            let other = (0..pairs).filter(|&p| p != first).find_map(|p| {
                let s = held.rx(self, 2 * p);
                held.rx_ring(s).vring.usable().then_some(s)
            });
            let Some(s) = other else {
                return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
            };
            slot = s;
        }
        let HeldRing { vring, mem, .. } = held.rx_ring(slot);
        let mem: &Memory = mem;

        // Where bytes 10 and 11 of the header (num_buffers) landed: patched at the end.
        let mut num_buffers_at = [None; 2];
        let mut chains: u16 = 0;
        let mut failure = None;
        while !source.done() {
            let Some(chain) = vring.queue.pop_descriptor_chain(mem) else {
                self.counters.rx_no_buffers.fetch_add(1, Ordering::Relaxed);
                failure = Some(libc::ENOBUFS);
                break;
            };
            let head = chain.head_index();
            chains += 1;
            let mut written = 0u32;
            for d in chain {
                if !d.is_write_only() || source.done() {
                    continue;
                }
                let at = source.position();
                let Some(n) = source.copy_to(mem, d.addr(), d.len() as usize) else {
                    failure = Some(libc::EFAULT);
                    break;
                };
                if hdr_len == 12 {
                    for (k, slot) in num_buffers_at.iter_mut().enumerate() {
                        let byte = NUM_BUFFERS + k;
                        if (at..at + n).contains(&byte) {
                            *slot = Some(GuestAddress(d.addr().0.wrapping_add((byte - at) as u64)));
                        }
                    }
                }
                written += n as u32;
            }
            vring.push_used(mem, head, written);
            if failure.is_some() {
                break;
            }
            if !mergeable && !source.done() {
                failure = Some(libc::EMSGSIZE);
                break;
            }
        }
        if let Some(errno) = failure {
            // Nothing of this frame was published: give its buffers back.
            for _ in 0..chains {
                vring.queue.go_to_previous_position();
            }
            vring.unpush_used(chains);
            return Err(io::Error::from_raw_os_error(errno));
        }
        if chains > 1 {
            for (k, at) in num_buffers_at.iter().enumerate() {
                if let Some(at) = at {
                    let _ = mem.write_obj(chains.to_le_bytes()[k], *at);
                }
            }
        }
        // Published, and the guest signalled, when the batch lets go of the ring.
        Ok(())
    }
}

/// Copies descriptor `[addr, addr + len)` of guest memory into `header` first and what follows
/// into `rest`, as much as fits; returns the bytes put into `rest`, or `None` if the
/// descriptor is not in the guest's memory. A descriptor in one memory region (all of them,
/// in practice) is looked up once, with no per-copy region walk; one that spans regions is
/// read piece by piece.
fn read_descriptor(
    mem: &Memory,
    addr: GuestAddress,
    len: usize,
    header: &mut [u8],
    rest: &mut [u8],
) -> Option<usize> {
    let h = len.min(header.len());
    let r = (len - h).min(rest.len());
    if len == 0 {
        return Some(0);
    }
    if let Ok(slice) = mem.get_slice(addr, len) {
        slice.subslice(0, h).ok()?.copy_to(&mut header[..h]);
        slice.subslice(h, r).ok()?.copy_to(&mut rest[..r]);
        return Some(r);
    }
    // A guest's descriptor may name any address: no arithmetic that can overflow.
    let after = GuestAddress(addr.0.checked_add(h as u64)?);
    if h > 0 {
        mem.read_slice(&mut header[..h], addr).ok()?;
    }
    if r > 0 {
        mem.read_slice(&mut rest[..r], after).ok()?;
    }
    Some(r)
}

/// The bytes of a frame in pieces (header, addresses, VLAN tag, rest), copied out in order.
struct Pieces<'a> {
    pieces: [&'a [u8]; 4],
    /// The piece being copied and the offset in it.
    piece: usize,
    offset: usize,
    /// Bytes copied so far, and in all.
    position: usize,
    total: usize,
}

impl<'a> Pieces<'a> {
    fn new(pieces: [&'a [u8]; 4]) -> Pieces<'a> {
        let mut p = Pieces {
            pieces,
            piece: 0,
            offset: 0,
            position: 0,
            total: pieces.iter().map(|p| p.len()).sum(),
        };
        p.skip_empty();
        p
    }

    fn skip_empty(&mut self) {
        while self.piece < self.pieces.len() && self.offset >= self.pieces[self.piece].len() {
            self.piece += 1;
            self.offset = 0;
        }
    }

    fn done(&self) -> bool {
        self.piece >= self.pieces.len()
    }

    fn position(&self) -> usize {
        self.position
    }

    /// Copies up to `room` bytes into guest memory at `addr`; returns how many, or `None` if
    /// the buffer is not in the guest's memory. A buffer in one memory region (all of them, in
    /// practice) is looked up once for all the pieces; one that spans regions piece by piece.
    fn copy_to(&mut self, mem: &Memory, addr: GuestAddress, room: usize) -> Option<usize> {
        let want = room.min(self.total - self.position);
        if want == 0 {
            return Some(0);
        }
        let whole = mem.get_slice(addr, want).ok();
        let mut n = 0;
        while n < want {
            let piece = &self.pieces[self.piece][self.offset..];
            let k = piece.len().min(want - n);
            match &whole {
                Some(slice) => slice.subslice(n, k).ok()?.copy_from(&piece[..k]),
                None => {
                    // A guest's descriptor may name any address: no arithmetic that can
                    // overflow.
                    let at = GuestAddress(addr.0.checked_add(n as u64)?);
                    mem.write_slice(&piece[..k], at).ok()?;
                }
            }
            n += k;
            self.offset += k;
            self.position += k;
            self.skip_empty();
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_copy_across_buffers_of_any_size() {
        let region =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        let header = [9u8; 12];
        let mut p = Pieces::new([&header[..], &[1, 2, 3], &[], &[4, 5, 6, 7]]);
        // Descriptors of 5, 7 and 100 bytes: the header spans the first two.
        assert_eq!(p.copy_to(&region, GuestAddress(0), 5), Some(5));
        assert_eq!(p.position(), 5);
        assert_eq!(p.copy_to(&region, GuestAddress(100), 7), Some(7));
        assert_eq!(p.copy_to(&region, GuestAddress(200), 100), Some(7));
        assert!(p.done());
        let mut got = [0u8; 7];
        region.read_slice(&mut got, GuestAddress(200)).unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7]);
    }

    /// Two regions back to back, 4 KiB each, the second with different contents.
    fn two_regions() -> Memory {
        let mem =
            Memory::from_ranges(&[(GuestAddress(0), 4096), (GuestAddress(4096), 4096)]).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem
    }

    #[test]
    fn pieces_copy_into_a_buffer_that_spans_two_regions_or_none() {
        let mem = two_regions();
        let header = [9u8; 12];
        let rest: Vec<u8> = (0..40).collect();
        let mut p = Pieces::new([&header[..], &[], &[], &rest]);
        // 52 bytes from 4090: 6 in the first region, 46 in the second.
        assert_eq!(p.copy_to(&mem, GuestAddress(4090), 100), Some(52));
        assert!(p.done());
        let mut got = [0u8; 52];
        mem.read_slice(&mut got, GuestAddress(4090)).unwrap();
        assert_eq!(&got[..12], &header);
        assert_eq!(&got[12..], &rest[..]);
        // A buffer outside guest memory is refused, one that runs past its end too.
        let mut p = Pieces::new([&header[..], &[], &[], &rest]);
        assert_eq!(p.copy_to(&mem, GuestAddress(1 << 20), 100), None);
        let mut p = Pieces::new([&header[..], &[], &[], &rest]);
        assert_eq!(p.copy_to(&mem, GuestAddress(8192 - 10), 100), None);
        let mut p = Pieces::new([&header[..], &[], &[], &rest]);
        assert_eq!(p.copy_to(&mem, GuestAddress(u64::MAX - 4), 100), None);
    }

    #[test]
    fn a_descriptor_is_read_into_header_then_frame_in_one_region_or_two() {
        let mem = two_regions();
        let bytes: Vec<u8> = (0..=255).cycle().take(8192).collect();
        mem.write_slice(&bytes, GuestAddress(0)).unwrap();
        for (at, len) in [(100u64, 64usize), (4090, 64), (4096, 12), (0, 5), (4094, 2)] {
            let mut header = [0u8; 12];
            let mut rest = [0u8; 32];
            let took = read_descriptor(&mem, GuestAddress(at), len, &mut header, &mut rest);
            let h = len.min(12);
            let r = (len - h).min(32);
            assert_eq!(took, Some(r), "at {at} len {len}");
            let at = at as usize;
            assert_eq!(&header[..h], &bytes[at..at + h], "at {at} len {len}");
            assert_eq!(&rest[..r], &bytes[at + h..at + h + r], "at {at} len {len}");
        }
        let (mut header, mut rest) = ([0u8; 12], [0u8; 32]);
        assert_eq!(
            read_descriptor(&mem, GuestAddress(8190), 64, &mut header, &mut rest),
            None
        );
        assert_eq!(
            read_descriptor(&mem, GuestAddress(u64::MAX - 4), 64, &mut header, &mut rest),
            None
        );
        assert_eq!(
            read_descriptor(&mem, GuestAddress(0), 0, &mut header, &mut rest),
            Some(0)
        );
    }
}
