//! Offload metadata and its software fallbacks.
//!
//! A frame may arrive with work left undone by its sender, described by the virtio-net header
//! (`struct virtio_net_hdr`) that AF_PACKET with `PACKET_VNET_HDR` (and TAP with
//! `IFF_VNET_HDR`) put in front of it: a checksum still to be computed (`NEEDS_CSUM`), or a
//! TCP super-frame still to be segmented (GSO). An egress that cannot take that metadata gets
//! the finished frames instead; this module does the finishing, without I/O and without
//! allocating beyond the caller's reusable scratch buffer.

use super::DropReason;
use crate::wire::checksum;
use crate::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, PseudoHeader, TcpFlags, TcpPacket};

/// Length of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// What is left to do for a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// A partial checksum: sum from `start` to the end, store at `start + offset`.
    pub csum: Option<(u16, u16)>,
    /// TCP segmentation into segments of at most `gso_size` payload bytes.
    pub gso_size: Option<u16>,
    /// A GSO type this switch does not segment (UDP fragmentation offload, ...).
    pub gso_unsupported: bool,
    /// The header as it came, for passing the frame on with its offloads still to do.
    pub header: [u8; VNET_HDR_LEN],
}

impl Offload {
    /// Reads a virtio-net header (little-endian fields, as on x86 and every virtio 1.0 device).
    pub fn from_vnet_hdr(h: &[u8; VNET_HDR_LEN]) -> Offload {
        let flags = h[0];
        let gso_type = h[1] & !GSO_ECN;
        let gso_size = u16::from_le_bytes([h[4], h[5]]);
        let csum_start = u16::from_le_bytes([h[6], h[7]]);
        let csum_offset = u16::from_le_bytes([h[8], h[9]]);
        Offload {
            csum: (flags & F_NEEDS_CSUM != 0).then_some((csum_start, csum_offset)),
            gso_size: matches!(gso_type, GSO_TCPV4 | GSO_TCPV6).then_some(gso_size),
            gso_unsupported: !matches!(gso_type, GSO_NONE | GSO_TCPV4 | GSO_TCPV6),
            header: *h,
        }
    }

    /// Whether anything is left to do (a checksum or a segmentation).
    pub fn is_pending(&self) -> bool {
        self.csum.is_some() || self.gso_size.is_some()
    }

    /// The length of the first (largest) frame the sender's segmentation will make: the
    /// headers up to the TCP payload plus one segment; the frame's own length without GSO.
    pub fn wire_len(&self, frame: &[u8]) -> usize {
        match (self.gso_size, self.csum) {
            (Some(mss), Some((start, _))) => {
                let thl = frame
                    .get(usize::from(start) + 12)
                    .map_or(20, |b| usize::from(b >> 4) * 4);
                (usize::from(start) + thl + usize::from(mss)).min(frame.len())
            }
            _ => frame.len(),
        }
    }

    /// The header to send the frame with after `delta` bytes were inserted (a VLAN tag, +4)
    /// or removed (-4) in front of its L3 header: checksum start and header length move.
    pub fn header_moved(&self, delta: isize) -> [u8; VNET_HDR_LEN] {
        let mut h = self.header;
        for at in [2, 6] {
            let v = u16::from_le_bytes([h[at], h[at + 1]]);
            if v != 0 {
                let moved = (v as isize + delta).clamp(0, u16::MAX as isize) as u16;
                h[at..at + 2].copy_from_slice(&moved.to_le_bytes());
            }
        }
        h
    }

    /// Moves checksum offsets after `n` bytes were inserted before them (a VLAN tag put back).
    pub fn shift(&mut self, n: u16) {
        if let Some((start, _)) = &mut self.csum {
            *start += n;
        }
        self.header = self.header_moved(n as isize);
    }
}

/// Computes a partial checksum in place: the ones'-complement sum from `start` to the end of
/// the frame (the field already holds the pseudo-header sum) is stored at `start + offset`.
pub fn complete_checksum(frame: &mut [u8], start: u16, offset: u16) -> Result<(), DropReason> {
    let (start, at) = (start as usize, start as usize + offset as usize);
    if at + 2 > frame.len() || start >= frame.len() {
        return Err(DropReason::BadOffload);
    }
    let mut value = checksum::checksum(&frame[start..]);
    if value == 0 && offset == 6 {
        // A UDP checksum of zero means "none"; the computed zero is sent as all ones.
        value = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Splits a TCP super-frame into frames carrying at most `mss` payload bytes each, with IP
/// lengths, IPv4 identification, sequence numbers, flags and checksums right, and passes each
/// to `emit`. `scratch` is reused between calls.
pub fn segment_tcp(
    frame: &[u8],
    mss: u16,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&mut [u8]),
) -> Result<(), DropReason> {
    let bad = DropReason::BadOffload;
    if frame.len() < 14 || mss == 0 {
        return Err(bad);
    }
    let mut l3 = 12;
    let mut ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == 0x8100 {
        if frame.len() < 18 {
            return Err(bad);
        }
        l3 = 16;
        ethertype = u16::from_be_bytes([frame[16], frame[17]]);
    }
    l3 += 2;
    let (l4, v4) = match ethertype {
        0x0800 => {
            let ip = Ipv4Packet::new_checked(&frame[l3..]).map_err(|_| bad)?;
            if ip.protocol() != IpProtocol::Tcp {
                return Err(bad);
            }
            (l3 + ip.header_len() as usize, true)
        }
        0x86dd => {
            let ip = Ipv6Packet::new_checked(&frame[l3..]).map_err(|_| bad)?;
            if ip.next_header() != IpProtocol::Tcp {
                return Err(bad);
            }
            (l3 + 40, false)
        }
        _ => return Err(bad),
    };
    let tcp = TcpPacket::new_checked(&frame[l4..]).map_err(|_| bad)?;
    let headers = l4 + tcp.header_len() as usize;
    let payload = &frame[headers..];
    let flags = tcp.flags();
    let seq = tcp.seq_number();
    let ident = if v4 {
        Ipv4Packet::new_unchecked(&frame[l3..]).ident()
    } else {
        0
    };
    let count = payload.len().div_ceil(mss as usize).max(1);
    for (i, chunk) in payload.chunks(mss as usize).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&frame[..headers]);
        scratch.extend_from_slice(chunk);
        let l3_len = scratch.len() - l3;
        let pseudo = if v4 {
            let mut ip = Ipv4Packet::new_unchecked(&mut scratch[l3..]);
            ip.set_total_len(l3_len as u16);
            ip.set_ident(ident.wrapping_add(i as u16));
            ip.fill_checksum();
            PseudoHeader::V4 {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
            }
        } else {
            let mut ip = Ipv6Packet::new_unchecked(&mut scratch[l3..]);
            ip.set_payload_len((l3_len - 40) as u16);
            PseudoHeader::V6 {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
            }
        };
        let mut seg = TcpPacket::new_unchecked(&mut scratch[l4..]);
        seg.set_seq_number(seq.wrapping_add((i * mss as usize) as u32));
        let mut f = flags.bits();
        if i + 1 < count {
            f &= !(TcpFlags::FIN.bits() | TcpFlags::PSH.bits());
        }
        if i > 0 {
            f &= !TcpFlags::CWR.bits();
        }
        seg.set_flags(TcpFlags::from_bits_truncate(f));
        seg.fill_checksum(&pseudo);
        emit(&mut scratch[..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::wire::builder::ethernet_frame;
    use crate::wire::{EtherType, EthernetAddress, Ipv4Repr, TcpRepr};

    fn tcp_super_frame(payload_len: usize, flags: TcpFlags) -> Vec<u8> {
        let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 5201,
            seq_number: 1000,
            ack_number: 7,
            flags,
            window_len: 512,
            urgent_pointer: 0,
            options: Default::default(),
            payload_len,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0x1234,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            options: Default::default(),
        };
        let mut l3 = vec![0u8; ip.buffer_len()];
        let hl = ip.header_len();
        for (i, b) in l3[hl + 20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut l3[hl..]),
            &PseudoHeader::V4 { src, dst },
        );
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut l3[..]));
        let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
        ethernet_frame(mac, mac, None, EtherType::Ipv4, &l3)
    }

    #[test]
    fn segments_have_right_lengths_sequence_flags_and_checksums() {
        let frame = tcp_super_frame(3000, TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN);
        let mut scratch = Vec::new();
        let mut segs = Vec::new();
        segment_tcp(&frame, 1448, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        let mut data = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&s[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.total_len() as usize, s.len() - 14);
            assert_eq!(ip.ident(), 0x1234 + i as u16);
            let pseudo = PseudoHeader::V4 {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
            };
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(tcp.verify_checksum(&pseudo), "segment {i}");
            assert_eq!(tcp.seq_number(), 1000 + 1448 * i as u32);
            let last = i == 2;
            assert_eq!(tcp.flags().contains(TcpFlags::FIN), last);
            assert_eq!(tcp.flags().contains(TcpFlags::PSH), last);
            data.extend_from_slice(tcp.payload());
        }
        assert_eq!(data, (0..3000).map(|i| i as u8).collect::<Vec<_>>());
    }

    #[test]
    fn partial_checksum_is_completed() {
        let mut frame = tcp_super_frame(100, TcpFlags::ACK);
        let (start, offset) = (14 + 20, 16);
        let good = frame.clone();
        // What a sender with checksum offload leaves: the pseudo-header sum, not complemented.
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let pseudo =
            checksum::pseudo_header_v4(&ip.src_addr(), &ip.dst_addr(), IpProtocol::Tcp, 120);
        frame[start + offset..start + offset + 2].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut frame, start as u16, offset as u16).unwrap();
        assert_eq!(frame, good);
        assert_eq!(
            complete_checksum(&mut frame, 200, 16),
            Err(DropReason::BadOffload)
        );
    }

    #[test]
    fn vnet_header_fields() {
        let h = [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0];
        let o = Offload::from_vnet_hdr(&h);
        assert_eq!(o.csum, Some((34, 16)));
        assert_eq!(o.gso_size, Some(1448));
        assert!(!o.gso_unsupported);
        assert!(Offload::from_vnet_hdr(&[0, 3, 0, 0, 0, 0, 0, 0, 0, 0]).gso_unsupported);
    }
}
