//! Offload metadata and its software fallbacks.
//!
//! A frame may arrive with work left undone by its sender, described by the virtio-net header
//! ([`wire::vnet`](crate::wire::vnet)) that AF_PACKET with `PACKET_VNET_HDR` (and TAP with
//! `IFF_VNET_HDR`) put in front of it: a checksum still to be computed (`NEEDS_CSUM`), or a
//! TCP or UDP super-frame still to be segmented (GSO: TCP segmentation, or UDP segmentation
//! as an application's `UDP_SEGMENT` asks for). An egress that cannot take that metadata gets
//! the finished frames instead; this module does the finishing, without I/O and without
//! allocating beyond the caller's reusable scratch buffer.

use super::DropReason;
use crate::wire::checksum;
use crate::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, PseudoHeader, TcpFlags, TcpPacket};

/// Length of `struct virtio_net_hdr` (without `num_buffers`); the format is in
/// [`wire::vnet`](crate::wire::vnet).
pub use crate::wire::vnet::HEADER_LEN as VNET_HDR_LEN;
use crate::wire::vnet::{VnetHeader, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};

/// What is left to do for a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// A partial checksum: sum from `start` to the end, store at `start + offset`.
    pub csum: Option<(u16, u16)>,
    /// Segmentation into segments of at most `gso_size` payload bytes: TCP, or UDP with
    /// `gso_udp`.
    pub gso_size: Option<u16>,
    /// The segmentation is UDP's (`VIRTIO_NET_HDR_GSO_UDP_L4`): each segment a datagram.
    pub gso_udp: bool,
    /// A GSO type this switch does not segment (UDP fragmentation offload, ...).
    pub gso_unsupported: bool,
    /// The header as it came, for passing the frame on with its offloads still to do.
    pub header: [u8; VNET_HDR_LEN],
}

impl Offload {
    /// Reads a virtio-net header (little-endian fields, as on x86 and every virtio 1.0 device).
    pub fn from_vnet_hdr(h: &[u8; VNET_HDR_LEN]) -> Offload {
        let v = VnetHeader::parse(h);
        let gso_type = v.gso_kind();
        Offload {
            csum: v.needs_csum().then_some((v.csum_start, v.csum_offset)),
            gso_size: matches!(gso_type, GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4).then_some(v.gso_size),
            gso_udp: gso_type == GSO_UDP_L4,
            gso_unsupported: !matches!(gso_type, GSO_NONE | GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4),
            header: *h,
        }
    }

    /// Whether anything is left to do (a checksum or a segmentation).
    pub fn is_pending(&self) -> bool {
        self.csum.is_some() || self.gso_size.is_some()
    }

    /// The length of the first (largest) frame the sender's segmentation will make: the
    /// headers up to the TCP (UDP) payload plus one segment; the frame's own length without
    /// GSO.
    pub fn wire_len(&self, frame: &[u8]) -> usize {
        match (self.gso_size, self.csum) {
            (Some(mss), Some((start, _))) => {
                let thl = if self.gso_udp {
                    8
                } else {
                    frame
                        .get(usize::from(start) + 12)
                        .map_or(20, |b| usize::from(b >> 4) * 4)
                };
                (usize::from(start) + thl + usize::from(mss)).min(frame.len())
            }
            _ => frame.len(),
        }
    }

    /// The bytes on the wire of the frames `frame` stands for: of a super-frame, every
    /// segment with its headers; else its own length.
    pub fn wire_bytes(&self, frame: &[u8]) -> usize {
        let (Some(mss), Some(_)) = (self.gso_size, self.csum) else {
            return frame.len();
        };
        let largest = self.wire_len(frame);
        let mss = usize::from(mss.max(1));
        let headers = largest.saturating_sub(mss).min(frame.len());
        let payload = frame.len() - headers;
        let segments = payload.div_ceil(mss).max(1);
        payload + segments * headers
    }

    /// The header to send the frame with after `delta` bytes were inserted (a VLAN tag, +4)
    /// or removed (-4) in front of its L3 header: checksum start and header length move.
    pub fn header_moved(&self, delta: isize) -> [u8; VNET_HDR_LEN] {
        let mut h = VnetHeader::parse(&self.header);
        for v in [&mut h.hdr_len, &mut h.csum_start] {
            if *v != 0 {
                *v = (*v as isize + delta).clamp(0, u16::MAX as isize) as u16;
            }
        }
        h.emit()
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

/// Cuts a super-frame as `offload` says (TCP or UDP segmentation) and passes each resulting
/// frame to `emit`; see [`segment_tcp`] and [`segment_udp`].
pub fn segment(
    frame: &[u8],
    offload: &Offload,
    scratch: &mut Vec<u8>,
    emit: impl FnMut(&mut [u8]),
) -> Result<(), DropReason> {
    let size = offload.gso_size.ok_or(DropReason::BadOffload)?;
    if offload.gso_udp {
        segment_udp(frame, size, scratch, emit)
    } else {
        segment_tcp(frame, size, scratch, emit)
    }
}

/// Where the L3 header of `frame` starts (after an optional 802.1Q tag) and its EtherType.
fn l3_of(frame: &[u8]) -> Result<(usize, u16), DropReason> {
    let bad = DropReason::BadOffload;
    if frame.len() < 14 {
        return Err(bad);
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == 0x8100 {
        if frame.len() < 18 {
            return Err(bad);
        }
        return Ok((18, u16::from_be_bytes([frame[16], frame[17]])));
    }
    Ok((14, ethertype))
}

/// Sets the length (and for IPv4 the identification and header checksum) of the IP header of
/// a segment, `packet` being the segment from its IP header on; returns its pseudo-header.
fn fix_ip_header(packet: &mut [u8], v4: bool, ident: u16) -> PseudoHeader {
    let len = packet.len();
    if v4 {
        let mut ip = Ipv4Packet::new_unchecked(packet);
        ip.set_total_len(len as u16);
        ip.set_ident(ident);
        ip.fill_checksum();
        PseudoHeader::V4 {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
        }
    } else {
        let mut ip = Ipv6Packet::new_unchecked(packet);
        ip.set_payload_len((len - 40) as u16);
        PseudoHeader::V6 {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
        }
    }
}

/// Splits a UDP super-frame into datagrams carrying at most `size` payload bytes each, with
/// IP lengths, IPv4 identification, UDP lengths and checksums right, and passes each to
/// `emit`. `scratch` is reused between calls.
pub fn segment_udp(
    frame: &[u8],
    size: u16,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&mut [u8]),
) -> Result<(), DropReason> {
    let bad = DropReason::BadOffload;
    if size == 0 {
        return Err(bad);
    }
    let (l3, ethertype) = l3_of(frame)?;
    let (l4, v4) = match ethertype {
        0x0800 => {
            let ip = Ipv4Packet::new_checked(&frame[l3..]).map_err(|_| bad)?;
            if ip.protocol() != IpProtocol::Udp {
                return Err(bad);
            }
            (l3 + ip.header_len() as usize, true)
        }
        0x86dd => {
            let ip = Ipv6Packet::new_checked(&frame[l3..]).map_err(|_| bad)?;
            if ip.next_header() != IpProtocol::Udp {
                return Err(bad);
            }
            (l3 + 40, false)
        }
        _ => return Err(bad),
    };
    let headers = l4 + 8;
    if frame.len() < headers {
        return Err(bad);
    }
    let payload = &frame[headers..];
    let ident = if v4 {
        Ipv4Packet::new_unchecked(&frame[l3..]).ident()
    } else {
        0
    };
    for (i, chunk) in payload.chunks(size as usize).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&frame[..headers]);
        scratch.extend_from_slice(chunk);
        let pseudo = fix_ip_header(&mut scratch[l3..], v4, ident.wrapping_add(i as u16));
        let udp_len = (scratch.len() - l4) as u16;
        scratch[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        scratch[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        let sum = checksum::combine(&[
            pseudo.sum(IpProtocol::Udp, u32::from(udp_len)),
            checksum::sum(&scratch[l4..]),
        ]);
        let mut value = !sum;
        if value == 0 {
            // Zero would mean "no checksum": a computed zero is sent as all ones.
            value = 0xffff;
        }
        scratch[l4 + 6..l4 + 8].copy_from_slice(&value.to_be_bytes());
        emit(&mut scratch[..]);
    }
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
    if mss == 0 {
        return Err(bad);
    }
    let (l3, ethertype) = l3_of(frame)?;
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
        let pseudo = fix_ip_header(&mut scratch[l3..], v4, ident.wrapping_add(i as u16));
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

    /// An IPv4 UDP super-frame (UDP length and IP length of the whole) with `payload_len`
    /// bytes of payload numbered 0, 1, 2, ...
    fn udp_super_frame(payload_len: usize) -> Vec<u8> {
        let mut l3 = vec![0u8; 20 + 8 + payload_len];
        l3[0] = 0x45;
        l3[2..4].copy_from_slice(&((28 + payload_len) as u16).to_be_bytes());
        l3[4..6].copy_from_slice(&0x4321u16.to_be_bytes());
        l3[8] = 64;
        l3[9] = 17;
        l3[12..16].copy_from_slice(&[10, 0, 0, 1]);
        l3[16..20].copy_from_slice(&[10, 0, 0, 2]);
        Ipv4Packet::new_unchecked(&mut l3[..]).fill_checksum();
        l3[20..22].copy_from_slice(&4433u16.to_be_bytes());
        l3[22..24].copy_from_slice(&443u16.to_be_bytes());
        l3[24..26].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        for (i, b) in l3[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
        ethernet_frame(mac, mac, None, EtherType::Ipv4, &l3)
    }

    #[test]
    fn udp_segments_are_whole_datagrams() {
        let frame = udp_super_frame(2500);
        // GSO_UDP_L4, NEEDS_CSUM at the UDP header, 1000 bytes per datagram.
        let o = Offload::from_vnet_hdr(&[1, 5, 42, 0, 0xe8, 0x03, 34, 0, 6, 0]);
        assert!(o.gso_udp && !o.gso_unsupported);
        assert_eq!(o.gso_size, Some(1000));
        assert_eq!(o.wire_len(&frame), 14 + 20 + 8 + 1000);
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        segment(&frame, &o, &mut scratch, |d| got.push(d.to_vec())).unwrap();
        assert_eq!(got.len(), 3);
        let mut payload = Vec::new();
        for (i, d) in got.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&d[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.ident(), 0x4321u16.wrapping_add(i as u16));
            let len = if i < 2 { 1000 } else { 500 };
            assert_eq!(usize::from(ip.total_len()), 28 + len);
            let udp = &d[34..];
            assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, 8 + len);
            let pseudo = PseudoHeader::V4 {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
            };
            let sum = checksum::combine(&[
                pseudo.sum(IpProtocol::Udp, (8 + len) as u32),
                checksum::sum(udp),
            ]);
            assert_eq!(sum, 0xffff, "datagram {i}: checksum");
            payload.extend_from_slice(&udp[8..]);
        }
        assert_eq!(payload, frame[42..].to_vec());
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
