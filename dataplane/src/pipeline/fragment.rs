//! IPv4 fragmentation (RFC 791 section 3.2, RFC 1812 5.2.6): splitting a packet without DF
//! that is larger than the egress MTU into fragments that fit.
//!
//! [`fragment_ipv4`] is sans-IO: it builds each fragment in a caller-owned scratch buffer and
//! hands it to a callback, so a caller that keeps the buffer allocates nothing per packet.
//! A packet that is itself a fragment is split further with its offset and MF bit kept right,
//! so that the destination reassembles the original datagram from the pieces of both.
//!
//! Options: the first fragment keeps all of them; later fragments carry only the options with
//! the copied flag set (RFC 791 "Options"; the type's top bit), padded with End-of-Options
//! to a whole header word.

use crate::wire::ipv4::{HEADER_LEN, MAX_HEADER_LEN};
use crate::wire::Ipv4Packet;

/// The End-of-Options-List option type: the options stop here.
const OPT_END: u8 = 0;
/// The No-Operation option type: one byte, not copied.
const OPT_NOP: u8 = 1;
/// The copied flag of an option type: the option goes into every fragment.
const OPT_COPIED: u8 = 0x80;
/// Fragment payloads, but the last, are a multiple of this.
const FRAG_UNIT: usize = 8;
/// The largest IPv4 datagram, which the reassembled fragments must not exceed.
const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Why a packet could not be fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FragmentError {
    /// The packet is larger than the MTU and has DF set: the caller should answer with ICMP
    /// "fragmentation needed" (RFC 1191).
    #[error("packet larger than the MTU has the don't-fragment flag set")]
    DontFragment,
    /// The bytes are not a well-formed IPv4 packet: a short buffer, a version other than 4, a
    /// bad IHL, total length or header checksum, an option running past the header, or an
    /// offset and payload past the largest datagram.
    #[error("malformed IPv4 packet")]
    Malformed,
    /// The MTU cannot carry the header and 8 bytes of payload.
    #[error("MTU too small for the header and 8 bytes of payload")]
    MtuTooSmall,
}

/// Writes into `out` the options of `options` that later fragments carry (those with the
/// copied flag), padded with End-of-Options to a multiple of 4, and returns their padded
/// length; NOPs are dropped and the walk stops at End-of-Options. `Malformed` if an option's
/// length is below 2 or runs past `options`.
fn copied_options(
    options: &[u8],
    out: &mut [u8; MAX_HEADER_LEN - HEADER_LEN],
) -> Result<usize, FragmentError> {
    let mut len = 0usize;
    let mut i = 0usize;
    while let Some(&kind) = options.get(i) {
        match kind {
            OPT_END => break,
            OPT_NOP => i += 1,
            _ => {
                let opt_len = usize::from(*options.get(i + 1).ok_or(FragmentError::Malformed)?);
                if opt_len < 2 {
                    return Err(FragmentError::Malformed);
                }
                let option = options
                    .get(i..i + opt_len)
                    .ok_or(FragmentError::Malformed)?;
                if kind & OPT_COPIED != 0 {
                    out.get_mut(len..len + opt_len)
                        .ok_or(FragmentError::Malformed)?
                        .copy_from_slice(option);
                    len += opt_len;
                }
                i += opt_len;
            }
        }
    }
    // `out` started zeroed past `len`: the padding is End-of-Options. The copied options are
    // no longer than the options, a multiple of 4 no longer than `out`, so this fits.
    Ok(len.next_multiple_of(4))
}

/// Splits `packet`, a whole IPv4 packet starting at its header, into fragments of at most
/// `mtu` bytes and calls `emit` with each, in order of offset; returns how many there were.
///
/// A packet of at most `mtu` bytes is passed to `emit` unchanged, as the one fragment (any
/// bytes after its total length, such as Ethernet padding, are left out), whatever its DF
/// flag. Otherwise each fragment's payload but the last is a multiple of 8 bytes; every
/// fragment keeps the original's identification, TTL, protocol, TOS and addresses, and gets
/// its own total length, flags, offset and header checksum. If `packet` is itself a fragment,
/// the offsets continue from its offset and the last piece keeps its MF flag. The first
/// fragment keeps all options; later ones only those with the copied flag, padded to a
/// 4-byte multiple with End-of-Options (NOPs are dropped).
///
/// `scratch` is the work buffer the fragments are built in: it is cleared and reused, so no
/// allocation happens once it has `mtu` bytes of capacity. Fragments are passed to `emit` as
/// slices of it.
///
/// # Errors
///
/// [`FragmentError::Malformed`] if `packet` is not a well-formed IPv4 packet with a correct
/// header checksum (or, when it must be split, its options are malformed);
/// [`FragmentError::DontFragment`] if it must be split but has DF set;
/// [`FragmentError::MtuTooSmall`] if it must be split but `mtu` is below its header length
/// plus 8. Nothing is emitted on error. Never panics.
pub fn fragment_ipv4(
    packet: &[u8],
    mtu: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, FragmentError> {
    let view = Ipv4Packet::new_checked(packet).map_err(|_| FragmentError::Malformed)?;
    if view.version() != 4 || !view.verify_checksum() {
        return Err(FragmentError::Malformed);
    }
    let header_len = usize::from(view.header_len());
    let total_len = usize::from(view.total_len());
    let payload = view.payload();
    let base_offset = usize::from(view.frag_offset());
    if base_offset + payload.len() > MAX_DATAGRAM {
        return Err(FragmentError::Malformed);
    }

    if total_len <= mtu {
        emit(packet.get(..total_len).ok_or(FragmentError::Malformed)?);
        return Ok(1);
    }
    if view.dont_frag() {
        return Err(FragmentError::DontFragment);
    }
    if mtu < header_len + FRAG_UNIT {
        return Err(FragmentError::MtuTooSmall);
    }
    let mut later_options = [0u8; MAX_HEADER_LEN - HEADER_LEN];
    let later_options_len = copied_options(view.options(), &mut later_options)?;
    let later_options = later_options
        .get(..later_options_len)
        .ok_or(FragmentError::Malformed)?;
    let later_header_len = HEADER_LEN + later_options_len;
    let first_header = packet.get(..header_len).ok_or(FragmentError::Malformed)?;
    let fixed_header = packet.get(..HEADER_LEN).ok_or(FragmentError::Malformed)?;
    let more_after = view.more_frags();

    let mut offset = 0usize;
    let mut count = 0usize;
    while offset < payload.len() {
        let this_header_len = if offset == 0 {
            header_len
        } else {
            later_header_len
        };
        // At least 8: `mtu` holds the first header and 8 bytes, later headers are no longer.
        let room = (mtu - this_header_len) / FRAG_UNIT * FRAG_UNIT;
        let end = payload.len().min(offset + room);
        let data = payload.get(offset..end).ok_or(FragmentError::Malformed)?;

        scratch.clear();
        if offset == 0 {
            scratch.extend_from_slice(first_header);
        } else {
            scratch.extend_from_slice(fixed_header);
            scratch.extend_from_slice(later_options);
        }
        scratch.extend_from_slice(data);
        let mut fragment = Ipv4Packet::new_unchecked(&mut scratch[..]);
        // Both fit: the header is at most 60 bytes, the fragment no longer than the packet;
        // the offset is a multiple of 8 below `MAX_DATAGRAM`.
        fragment.set_header_len(this_header_len as u8);
        fragment.set_total_len((this_header_len + data.len()) as u16);
        fragment.set_frag(
            false,
            end < payload.len() || more_after,
            (base_offset + offset) as u16,
        );
        fragment.fill_checksum();
        emit(scratch);
        count += 1;
        offset = end;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::wire::ip::HeaderOptions;
    use crate::wire::{IpProtocol, Ipv4Repr};

    fn repr(payload_len: usize, options: &[u8]) -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(192, 168, 122, 10),
            dst_addr: Ipv4Addr::new(198, 51, 100, 7),
            protocol: IpProtocol::Udp,
            payload_len,
            ttl: 63,
            dscp: 46,
            ecn: 2,
            ident: 0xbeef,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
            options: HeaderOptions::new(options).unwrap(),
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 256) as u8).collect()
    }

    fn packet(repr: &Ipv4Repr, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; repr.buffer_len()];
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(payload);
        bytes
    }

    fn fragments(packet: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, FragmentError> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let count = fragment_ipv4(packet, mtu, &mut scratch, |f| out.push(f.to_vec()))?;
        assert_eq!(count, out.len());
        Ok(out)
    }

    /// Checks the headers of `frags`, pieces of a datagram with `original`'s header fields
    /// whose payload starts at `base` and whose last piece has MF `more_after`, and
    /// reassembles their payload.
    fn reassemble(
        frags: &[Vec<u8>],
        original: &Ipv4Repr,
        mtu: usize,
        base: usize,
        more_after: bool,
        later_options: &[u8],
    ) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, frag) in frags.iter().enumerate() {
            let view = Ipv4Packet::new_checked(&frag[..]).unwrap();
            assert!(frag.len() <= mtu, "fragment {i} is {} bytes", frag.len());
            assert_eq!(usize::from(view.total_len()), frag.len());
            assert!(view.verify_checksum(), "fragment {i}");
            let repr = Ipv4Repr::parse(&view).unwrap();
            let last = i + 1 == frags.len();
            assert_eq!(repr.src_addr, original.src_addr);
            assert_eq!(repr.dst_addr, original.dst_addr);
            assert_eq!(repr.protocol, original.protocol);
            assert_eq!(repr.ttl, original.ttl);
            assert_eq!(repr.dscp, original.dscp);
            assert_eq!(repr.ecn, original.ecn);
            assert_eq!(repr.ident, original.ident);
            assert!(!repr.dont_frag);
            assert_eq!(repr.more_frags, !last || more_after, "fragment {i}");
            assert_eq!(
                usize::from(repr.frag_offset),
                base + data.len(),
                "fragment {i}"
            );
            if i == 0 {
                assert_eq!(repr.options, original.options);
            } else {
                assert_eq!(repr.options.as_bytes(), later_options, "fragment {i}");
            }
            if !last {
                assert_eq!(view.payload().len() % 8, 0, "fragment {i}");
                // Each fragment but the last is as full as the MTU allows.
                assert!(frag.len() + 8 > mtu, "fragment {i} could carry more");
            }
            data.extend_from_slice(view.payload());
        }
        data
    }

    #[test]
    fn splits_and_reassembles() {
        for (payload_len, mtu) in [
            (1480, 576),
            (1480, 1000),
            (1481, 1500 - 1),
            (4000, 1500),
            (65515, 1500),
            (65515, 68),
            (100, 28),
            (17, 28),
        ] {
            let data = payload(payload_len);
            let original = repr(payload_len, &[]);
            let bytes = packet(&original, &data);
            let frags = fragments(&bytes, mtu).unwrap();
            let room = (mtu - 20) / 8 * 8;
            assert_eq!(
                frags.len(),
                payload_len.div_ceil(room),
                "{payload_len}/{mtu}"
            );
            assert_eq!(
                reassemble(&frags, &original, mtu, 0, false, &[]),
                data,
                "{payload_len}/{mtu}"
            );
        }
    }

    #[test]
    fn fragment_lengths_and_offsets() {
        let data = payload(4000);
        let bytes = packet(&repr(4000, &[]), &data);
        let frags = fragments(&bytes, 1500).unwrap();
        let fields: Vec<(usize, bool, u16)> = frags
            .iter()
            .map(|f| {
                let v = Ipv4Packet::new_checked(&f[..]).unwrap();
                (f.len(), v.more_frags(), v.frag_offset())
            })
            .collect();
        assert_eq!(
            fields,
            [(1500, true, 0), (1500, true, 1480), (1060, false, 2960)]
        );
        // The raw flags/offset field: MF and 1480 / 8 = 185.
        assert_eq!(&frags[1][6..8], &[0x20, 185]);
        // Offset 2960 / 8 = 370 = 0x172, MF clear.
        assert_eq!(&frags[2][6..8], &[0x01, 0x72]);
        // An MTU that is not 20 + a multiple of 8 rounds the payload down.
        let frags = fragments(&bytes, 1499).unwrap();
        assert_eq!(frags[0].len(), 20 + 1472);
    }

    #[test]
    fn refragments_a_fragment() {
        // The middle piece of a datagram: offset 1480, more fragments after it.
        let data = payload(1480);
        let mut original = repr(1480, &[]);
        original.more_frags = true;
        original.frag_offset = 1480;
        let bytes = packet(&original, &data);
        let frags = fragments(&bytes, 576).unwrap();
        assert_eq!(frags.len(), 3);
        assert_eq!(reassemble(&frags, &original, 576, 1480, true, &[]), data);
        for frag in &frags {
            assert!(Ipv4Packet::new_checked(&frag[..]).unwrap().more_frags());
        }

        // The last piece of a datagram: the last of its fragments has MF clear.
        original.more_frags = false;
        original.frag_offset = 2960;
        let bytes = packet(&original, &data);
        let frags = fragments(&bytes, 576).unwrap();
        assert_eq!(reassemble(&frags, &original, 576, 2960, false, &[]), data);
        let last = Ipv4Packet::new_checked(&frags[2][..]).unwrap();
        assert!(!last.more_frags());
        assert_eq!(last.frag_offset(), 2960 + 1104);

        // An offset at the top of the range still fits with a small payload.
        let data = payload(15);
        original.payload_len = 15;
        original.frag_offset = 65520;
        let bytes = packet(&original, &data);
        let frags = fragments(&bytes, 28).unwrap();
        assert_eq!(reassemble(&frags, &original, 28, 65520, false, &[]), data);
    }

    #[test]
    fn copies_only_copied_options() {
        // Router alert (copied, 4) + NOP + record route (not copied, 7) + loose source route
        // (copied, 7) + End-of-Options: 20 bytes of options.
        let options = [
            0x94, 0x04, 0x00, 0x00, // router alert
            0x01, // NOP
            0x07, 0x07, 0x04, 0x00, 0x00, 0x00, 0x00, // record route, one slot
            0x83, 0x07, 0x04, 0x0a, 0x00, 0x00, 0x01, // LSRR via 10.0.0.1
            0x00, // EOL
        ];
        let later = [
            0x94, 0x04, 0x00, 0x00, 0x83, 0x07, 0x04, 0x0a, 0x00, 0x00, 0x01, 0x00,
        ];
        let data = payload(3000);
        let original = repr(3000, &options);
        let bytes = packet(&original, &data);
        let frags = fragments(&bytes, 1000).unwrap();
        assert_eq!(frags[0].len(), 40 + 960);
        assert_eq!(
            Ipv4Packet::new_checked(&frags[0][..]).unwrap().header_len(),
            40
        );
        for frag in &frags[1..] {
            assert_eq!(Ipv4Packet::new_checked(&frag[..]).unwrap().header_len(), 32);
        }
        assert_eq!(frags[1].len(), 32 + 968);
        assert_eq!(reassemble(&frags, &original, 1000, 0, false, &later), data);

        // Options of which none is copied: later headers are 20 bytes.
        let data = payload(200);
        let original = repr(200, &[0x07, 0x07, 0x04, 0, 0, 0, 0, 0x01]);
        let frags = fragments(&packet(&original, &data), 100).unwrap();
        assert_eq!(reassemble(&frags, &original, 100, 0, false, &[]), data);
        assert_eq!(frags[1].len(), 20 + 80);

        // Only a copied option (security, 11 bytes) and a trailing NOP: later headers are as
        // long, the NOP turned into End-of-Options padding.
        let options = [0x82, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
        let later = [0x82, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00];
        let data = payload(200);
        let original = repr(200, &options);
        let frags = fragments(&packet(&original, &data), 100).unwrap();
        assert_eq!(reassemble(&frags, &original, 100, 0, false, &later), data);
    }

    #[test]
    fn options_stop_at_end_of_list() {
        // Bytes after End-of-Options are not options, even if they look like copied ones.
        let options = [0x94, 0x04, 0x00, 0x00, 0x00, 0x83, 0x07, 0x04];
        let data = payload(200);
        let original = repr(200, &options);
        let frags = fragments(&packet(&original, &data), 100).unwrap();
        assert_eq!(
            reassemble(&frags, &original, 100, 0, false, &[0x94, 0x04, 0x00, 0x00]),
            data
        );
    }

    #[test]
    fn malformed_options_are_refused() {
        for options in [
            [0x83, 0x00, 0x00, 0x00], // length 0
            [0x83, 0x01, 0x00, 0x00], // length 1
            [0x83, 0x05, 0x00, 0x00], // past the header
            [0x01, 0x01, 0x01, 0x94], // length cut off
        ] {
            let bytes = packet(&repr(200, &options), &payload(200));
            assert_eq!(fragments(&bytes, 100), Err(FragmentError::Malformed));
            // The same packet goes through whole when it fits.
            assert_eq!(
                fragments(&bytes, 1500).unwrap(),
                std::slice::from_ref(&bytes)
            );
        }
    }

    #[test]
    fn exact_fit_is_one_identical_fragment() {
        for dont_frag in [false, true] {
            let mut original = repr(1480, &[0x94, 0x04, 0x00, 0x00]);
            original.dont_frag = dont_frag;
            original.payload_len = 1476;
            let bytes = packet(&original, &payload(1476));
            assert_eq!(bytes.len(), 1500);
            assert_eq!(
                fragments(&bytes, 1500).unwrap(),
                std::slice::from_ref(&bytes)
            );
            assert_eq!(
                fragments(&bytes, 9000).unwrap(),
                std::slice::from_ref(&bytes)
            );
            assert_eq!(
                fragments(&bytes, usize::MAX).unwrap(),
                std::slice::from_ref(&bytes)
            );
            // Ethernet padding after the packet is left out.
            let mut padded = bytes.clone();
            padded.extend_from_slice(&[0xee; 6]);
            assert_eq!(
                fragments(&padded, 1500).unwrap(),
                std::slice::from_ref(&bytes)
            );
            // One byte less of MTU needs two fragments, or DF refuses.
            let split = fragments(&bytes, 1499);
            if dont_frag {
                assert_eq!(split, Err(FragmentError::DontFragment));
            } else {
                assert_eq!(split.unwrap().len(), 2);
            }
        }
    }

    #[test]
    fn dont_fragment_is_refused() {
        let mut original = repr(2000, &[]);
        original.dont_frag = true;
        let bytes = packet(&original, &payload(2000));
        let mut emitted = 0;
        let mut scratch = Vec::new();
        assert_eq!(
            fragment_ipv4(&bytes, 1500, &mut scratch, |_| emitted += 1),
            Err(FragmentError::DontFragment)
        );
        assert_eq!(emitted, 0);
    }

    #[test]
    fn tiny_mtu_is_refused() {
        let bytes = packet(&repr(100, &[]), &payload(100));
        for mtu in [0, 1, 20, 27] {
            assert_eq!(
                fragments(&bytes, mtu),
                Err(FragmentError::MtuTooSmall),
                "{mtu}"
            );
        }
        assert_eq!(fragments(&bytes, 28).unwrap().len(), 13);
        // The first header counts, options and all.
        let bytes = packet(&repr(100, &[0x94, 0x04, 0x00, 0x00]), &payload(100));
        assert_eq!(fragments(&bytes, 31), Err(FragmentError::MtuTooSmall));
        let frags = fragments(&bytes, 32).unwrap();
        assert_eq!(frags[0].len(), 32);
    }

    #[test]
    fn malformed_packets_are_refused() {
        let good = packet(&repr(100, &[]), &payload(100));
        for len in 0..good.len() {
            assert_eq!(
                fragments(&good[..len], 60),
                Err(FragmentError::Malformed),
                "{len}"
            );
        }
        let mut bad = good.clone();
        bad[0] = 0x65;
        assert_eq!(fragments(&bad, 60), Err(FragmentError::Malformed));
        let mut bad = good.clone();
        bad[0] = 0x44;
        assert_eq!(fragments(&bad, 60), Err(FragmentError::Malformed));
        let mut bad = good.clone();
        bad[10] ^= 0xff;
        assert_eq!(fragments(&bad, 60), Err(FragmentError::Malformed));
        assert_eq!(fragments(&bad, 1500), Err(FragmentError::Malformed));
        // An offset and payload past 65535 bytes.
        let mut original = repr(100, &[]);
        original.frag_offset = 65440;
        let bytes = packet(&original, &payload(100));
        assert_eq!(fragments(&bytes, 60), Err(FragmentError::Malformed));
    }

    #[test]
    fn scratch_is_reused() {
        let bytes = packet(&repr(9000, &[]), &payload(9000));
        let mut scratch = Vec::with_capacity(1500);
        let capacity = scratch.capacity();
        let mut count = 0;
        fragment_ipv4(&bytes, 1500, &mut scratch, |_| count += 1).unwrap();
        assert_eq!(count, 7);
        assert_eq!(scratch.capacity(), capacity);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9u32;
        let mut scratch = Vec::new();
        for round in 0..20000usize {
            let len = round % 128;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            // Mostly plausible headers: version 4, total length the buffer, DF clear, and a
            // right checksum, so that the option and offset paths are reached.
            if bytes.len() >= 20 {
                bytes[0] = 0x40 | (bytes[0] & 0x0f);
                let total = bytes.len() as u16;
                bytes[2..4].copy_from_slice(&total.to_be_bytes());
                bytes[6] &= 0xbf;
                Ipv4Packet::new_unchecked(&mut bytes[..20]).set_checksum(0);
                let header_len = usize::from(bytes[0] & 0x0f) * 4;
                if header_len <= bytes.len() && header_len >= 20 {
                    Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
                }
            }
            let mtu = round % 97;
            let _ = fragment_ipv4(&bytes, mtu, &mut scratch, |f| {
                assert!(f.len() <= mtu.max(bytes.len()));
            });
        }
    }
}
