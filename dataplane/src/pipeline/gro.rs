//! Receive coalescing (what the kernel's GRO does): consecutive TCP segments of one flow,
//! decapsulated from a batch of VXLAN packets, are joined into one super-frame that goes on
//! with a virtio-net header (checksum and segmentation left to the device), so a port that
//! takes offloads gets one write instead of one per segment.
//!
//! Only plain IPv4 TCP data segments join: untagged Ethernet, no IP options, not fragments,
//! flags ACK (PSH allowed on the last one), the same addresses, TTL, TOS, ports, ack, window
//! and TCP options as the first, each starting where the previous one ended, and with a valid
//! IP and TCP checksum (the device will compute a new one, so a corrupted segment must not
//! slip in). All segments but the last carry the same payload length, the segment size; a
//! shorter one ends the super-frame. Anything else is passed on as it came.

use super::offload::{Offload, VNET_HDR_LEN};
use crate::wire::checksum;
use crate::wire::IpProtocol;

/// Largest super-frame built: an IPv4 total length fits 16 bits.
const MAX_IP_LEN: usize = 65_535;
const ETH: usize = 14;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// What the coalescer did with a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Joined (or started) the super-frame being built.
    Joined,
    /// Joinable, but not to what is built: the caller flushes that, then pushes this frame
    /// again to start a new one.
    Apart,
    /// Never joinable (not a plain TCP segment): the caller flushes what is built and passes
    /// this frame on alone.
    Alone,
}

/// A super-frame being built, with the key its segments must share.
#[derive(Default)]
pub struct Coalescer {
    buf: Vec<u8>,
    /// Ingress port (or any tag the caller gives) of the frames in `buf`.
    tag: u16,
    segments: u16,
    mss: usize,
    next_seq: u32,
    /// Header length (Ethernet + IP + TCP) of the first segment.
    headers: usize,
    /// The last joined segment was shorter than `mss` or had PSH: nothing may follow.
    closed: bool,
}

/// Bytes of a frame that must match the first segment's for it to join: Ethernet header, IP
/// TOS, TTL, protocol and addresses, TCP ports, ack, flags, window and options.
fn same_flow(a: &[u8], b: &[u8], thl: usize) -> bool {
    let ip = ETH;
    let tcp = ETH + 20;
    a[..ETH] == b[..ETH]
        && a[ip + 1] == b[ip + 1]
        && a[ip + 8..ip + 10] == b[ip + 8..ip + 10]
        && a[ip + 12..ip + 20] == b[ip + 12..ip + 20]
        && a[tcp..tcp + 4] == b[tcp..tcp + 4]
        && a[tcp + 8..tcp + 12] == b[tcp + 8..tcp + 12]
        && a[tcp + 12] == b[tcp + 12]
        && a[tcp + 14..tcp + 16] == b[tcp + 14..tcp + 16]
        && a[tcp + 20..tcp + thl] == b[tcp + 20..tcp + thl]
}

/// The TCP header length and payload length of a joinable segment, or `None`.
fn joinable(frame: &[u8]) -> Option<(usize, usize)> {
    if frame.len() < ETH + 40 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH..];
    if ip[0] != 0x45 || ip[9] != u8::from(IpProtocol::Tcp) {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // Not a fragment (DF may be set), and the frame holds exactly the packet.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 || total != ip.len() {
        return None;
    }
    let thl = usize::from(ip[32] >> 4) * 4;
    let flags = ip[33];
    if thl < 20 || 20 + thl > total || flags & !PSH != ACK {
        return None;
    }
    if checksum::sum(&ip[..20]) != 0xffff {
        return None;
    }
    let src = [ip[12], ip[13], ip[14], ip[15]].into();
    let dst = [ip[16], ip[17], ip[18], ip[19]].into();
    let seg = &ip[20..];
    let pseudo = checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, seg.len() as u32);
    if checksum::combine(&[pseudo, checksum::sum(seg)]) != 0xffff {
        return None;
    }
    let payload = total - 20 - thl;
    (payload > 0).then_some((thl, payload))
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer {
            buf: Vec::with_capacity(ETH + MAX_IP_LEN),
            ..Coalescer::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// Offers a frame that arrived with `tag`; joins it to the super-frame being built, starts
    /// a new one (after the caller flushed), or says it must go alone. When it returns
    /// `Alone` and something is built, the caller must [`take`](Self::take) that first.
    pub fn push(&mut self, tag: u16, frame: &[u8]) -> Push {
        let Some((thl, payload)) = joinable(frame) else {
            return Push::Alone;
        };
        let tcp = ETH + 20;
        let seq = u32::from_be_bytes([
            frame[tcp + 4],
            frame[tcp + 5],
            frame[tcp + 6],
            frame[tcp + 7],
        ]);
        let psh = frame[tcp + 13] & PSH != 0;
        if self.segments > 0 {
            let fits = !self.closed
                && tag == self.tag
                && thl + ETH + 20 == self.headers
                && seq == self.next_seq
                && payload <= self.mss
                && self.buf.len() + payload <= ETH + MAX_IP_LEN
                && same_flow(&self.buf, frame, thl);
            if !fits {
                return Push::Apart;
            }
            self.buf.extend_from_slice(&frame[self.headers..]);
            self.segments += 1;
            self.next_seq = seq.wrapping_add(payload as u32);
            self.closed = payload < self.mss || psh;
            if psh {
                self.buf[tcp + 13] |= PSH;
            }
            return Push::Joined;
        }
        self.buf.clear();
        self.buf.extend_from_slice(frame);
        self.tag = tag;
        self.segments = 1;
        self.mss = payload;
        self.headers = ETH + 20 + thl;
        self.next_seq = seq.wrapping_add(payload as u32);
        self.closed = psh;
        Push::Joined
    }

    /// Whether a frame with `tag` could extend what is built (the caller may then hold on).
    pub fn tag(&self) -> Option<u16> {
        (self.segments > 0).then_some(self.tag)
    }

    /// Hands over what is built: the frame (IP length and checksum fixed) and, for more than
    /// one segment, the offloads left to do (the TCP checksum field holds the pseudo-header
    /// sum; segmentation at the first segment's size). Empties the coalescer.
    pub fn take(&mut self, out: impl FnOnce(u16, &mut [u8], Option<Offload>)) {
        if self.segments == 0 {
            return;
        }
        let segments = self.segments;
        self.segments = 0;
        if segments == 1 {
            out(self.tag, &mut self.buf, None);
            return;
        }
        let total = self.buf.len() - ETH;
        let ip = &mut self.buf[ETH..];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let ip_sum = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let src = [ip[12], ip[13], ip[14], ip[15]].into();
        let dst = [ip[16], ip[17], ip[18], ip[19]].into();
        let pseudo = checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, (total - 20) as u32);
        ip[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let csum_start = (ETH + 20) as u16;
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = 1; // NEEDS_CSUM
        h[1] = crate::wire::vnet::GSO_TCPV4;
        h[2..4].copy_from_slice(&(self.headers as u16).to_le_bytes());
        h[4..6].copy_from_slice(&(self.mss as u16).to_le_bytes());
        h[6..8].copy_from_slice(&csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        out(self.tag, &mut self.buf, Some(Offload::from_vnet_hdr(&h)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::offload::{complete_checksum, segment_tcp};
    use super::*;

    /// An Ethernet + IPv4 + TCP segment with valid checksums.
    fn segment(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH + 40 + 12];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = ETH;
        f[ip] = 0x45;
        f[ip + 6] = 0x40;
        f[ip + 8] = 64;
        f[ip + 9] = 6;
        f[ip + 12..ip + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[ip + 16..ip + 20].copy_from_slice(&[10, 0, 0, 2]);
        let t = ip + 20;
        f[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        f[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        f[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
        f[t + 12] = 8 << 4;
        f[t + 13] = flags;
        f[t + 14..t + 16].copy_from_slice(&502u16.to_be_bytes());
        // Timestamps option: NOP NOP TS.
        f[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
        f.extend_from_slice(payload);
        let total = (f.len() - ETH) as u16;
        f[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        let s = checksum::checksum(&f[ip..ip + 20]);
        f[ip + 10..ip + 12].copy_from_slice(&s.to_be_bytes());
        let pseudo = checksum::pseudo_header_v4(
            &[10, 0, 0, 1].into(),
            &[10, 0, 0, 2].into(),
            IpProtocol::Tcp,
            (f.len() - t) as u32,
        );
        let s = !checksum::combine(&[pseudo, checksum::sum(&f[t..])]);
        f[t + 16..t + 18].copy_from_slice(&s.to_be_bytes());
        f
    }

    fn payload(n: usize, k: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(k)).collect()
    }

    #[test]
    fn joins_a_run_and_cuts_back_to_the_same_segments() {
        let segs = [
            segment(1000, ACK, &payload(1400, 3)),
            segment(2400, ACK, &payload(1400, 5)),
            segment(3800, ACK | PSH, &payload(600, 7)),
        ];
        let mut c = Coalescer::new();
        for s in &segs {
            assert_eq!(c.push(3, s), Push::Joined);
        }
        let mut got = Vec::new();
        c.take(|tag, frame, offload| {
            assert_eq!(tag, 3);
            let o = offload.expect("offloads left to do");
            assert_eq!(o.gso_size, Some(1400));
            let mut whole = frame.to_vec();
            let (start, off) = o.csum.unwrap();
            complete_checksum(&mut whole, start, off).unwrap();
            let mut scratch = Vec::new();
            segment_tcp(&whole, 1400, &mut scratch, |s| got.push(s.to_vec())).unwrap();
        });
        assert!(c.is_empty());
        assert_eq!(got.len(), 3);
        for (g, s) in got.iter().zip(&segs) {
            // Identification differs (segment_tcp numbers them); everything else is equal.
            assert_eq!(g[..18], s[..18]);
            assert_eq!(g[20..24], s[20..24]);
            assert_eq!(g[26..], s[26..]);
        }
    }

    #[test]
    fn what_may_not_join() {
        let mut c = Coalescer::new();
        assert_eq!(
            c.push(1, &segment(1000, ACK, &payload(1000, 1))),
            Push::Joined
        );
        // A gap in sequence, another port, a bigger segment: apart; a SYN: alone.
        assert_eq!(
            c.push(1, &segment(5000, ACK, &payload(1000, 1))),
            Push::Apart
        );
        assert_eq!(
            c.push(2, &segment(2000, ACK, &payload(1000, 1))),
            Push::Apart
        );
        assert_eq!(
            c.push(1, &segment(2000, 0x02, &payload(1000, 1))),
            Push::Alone
        );
        assert_eq!(
            c.push(1, &segment(2000, ACK, &payload(1200, 1))),
            Push::Apart
        );
        // A corrupted segment never joins.
        let mut bad = segment(2000, ACK, &payload(1000, 1));
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert_eq!(c.push(1, &bad), Push::Alone);
        // A shorter segment ends the run.
        assert_eq!(
            c.push(1, &segment(2000, ACK, &payload(500, 1))),
            Push::Joined
        );
        assert_eq!(
            c.push(1, &segment(2500, ACK, &payload(500, 1))),
            Push::Apart
        );
        let mut n = 0;
        c.take(|_, frame, o| {
            assert!(o.is_some());
            n = frame.len();
        });
        assert_eq!(n, ETH + 40 + 12 + 1500);
        // One segment alone goes on as it came, without offloads.
        assert_eq!(c.push(1, &segment(1, ACK, &payload(10, 1))), Push::Joined);
        c.take(|_, _, o| assert!(o.is_none()));
    }

    #[test]
    fn never_beyond_64_kib() {
        let mut c = Coalescer::new();
        let mut seq = 1u32;
        let mut joined = 0;
        for _ in 0..60 {
            if c.push(0, &segment(seq, ACK, &payload(1400, 1))) != Push::Joined {
                break;
            }
            joined += 1;
            seq += 1400;
        }
        assert!(joined < 60);
        c.take(|_, frame, _| assert!(frame.len() - ETH <= MAX_IP_LEN));
    }
}
