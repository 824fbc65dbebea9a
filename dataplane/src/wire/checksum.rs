//! The internet checksum (RFC 1071), its incremental update (RFC 1624) and the pseudo-header
//! sums of IPv4 (RFC 768, RFC 793) and IPv6 (RFC 8200 section 8.1).
//!
//! Sums are kept as the folded 16-bit ones'-complement sum, not complemented; the checksum
//! field holds the complement: `!combine(&[pseudo, sum(segment)])`. A region whose checksum
//! field is right sums to `0xffff`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::IpProtocol;

/// Folds a wide ones'-complement accumulator to 16 bits by adding the carries back in
/// (end-around carry). The result is not complemented.
pub const fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The ones'-complement sum of `data` as big-endian 16-bit words, an odd last byte padded
/// with a zero byte, folded to 16 bits (RFC 1071). Sums of several slices can be
/// [`combine`]d when each slice starts at an even offset of the checksummed region.
pub fn sum(data: &[u8]) -> u16 {
    // Summed in the machine's byte order and swapped at the end: the ones'-complement sum of
    // byte-swapped words is the byte-swapped sum (RFC 1071 section 2(B)), and without a swap
    // per word the loop vectorizes into plain widening adds. A 32-bit word hi * 2^16 + lo is
    // congruent to hi + lo modulo 0xffff, so summing 32-bit words and folding gives the sum
    // of the 16-bit words. The lanes, and their total, cannot overflow before 2^32 words
    // (16 GiB).
    let mut lanes = [0u64; 4];
    let mut blocks = data.chunks_exact(16);
    for b in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(b.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let mut acc: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    // The last bytes, padded with zeros after them: in either byte order the padding lands
    // where a big-endian sum pads an odd last byte.
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    // The folded sum's bytes are those of the big-endian sum: read them as such.
    u16::from_be(fold(acc))
}

/// The ones'-complement sum of partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The checksum field value for `data` alone: the complement of its sum.
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new`,
/// without summing the data again: RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`.
pub const fn update16(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(!checksum as u64 + !old as u64 + new as u64)
}

/// [`update16`] for a 32-bit field (an IPv4 address, a TCP sequence number) at an even
/// offset.
pub const fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    !fold(
        !checksum as u64
            + !(old >> 16) as u16 as u64
            + !(old as u16) as u64
            + (new >> 16) as u64
            + (new & 0xffff) as u64,
    )
}

/// The sum of the IPv4 pseudo header of a TCP or UDP segment: source, destination, zero,
/// protocol, upper-layer length. `length` fits 16 bits in any IPv4 packet.
pub fn pseudo_header_v4(src: &Ipv4Addr, dst: &Ipv4Addr, protocol: IpProtocol, length: u32) -> u16 {
    fold(
        u64::from(sum(&src.octets()))
            + u64::from(sum(&dst.octets()))
            + u64::from(u8::from(protocol))
            + u64::from(length >> 16)
            + u64::from(length & 0xffff),
    )
}

/// The sum of the IPv6 pseudo header of an upper-layer packet: source, destination, 32-bit
/// upper-layer length, three zero bytes, next header.
pub fn pseudo_header_v6(
    src: &Ipv6Addr,
    dst: &Ipv6Addr,
    next_header: IpProtocol,
    length: u32,
) -> u16 {
    fold(
        u64::from(sum(&src.octets()))
            + u64::from(sum(&dst.octets()))
            + u64::from(u8::from(next_header))
            + u64::from(length >> 16)
            + u64::from(length & 0xffff),
    )
}

/// The addresses of the IP header a TCP or UDP segment travels in, which its checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PseudoHeader {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl PseudoHeader {
    /// The pseudo-header sum for an upper-layer packet of `protocol` and `length` bytes.
    pub fn sum(&self, protocol: IpProtocol, length: u32) -> u16 {
        match self {
            PseudoHeader::V4 { src, dst } => pseudo_header_v4(src, dst, protocol, length),
            PseudoHeader::V6 { src, dst } => pseudo_header_v6(src, dst, protocol, length),
        }
    }

    pub const fn is_ipv6(&self) -> bool {
        matches!(self, PseudoHeader::V6 { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), 0x220d);
        // Split at even offsets, the partial sums combine to the same.
        assert_eq!(
            combine(&[sum(&data[..2]), sum(&data[2..6]), sum(&data[6..])]),
            0xddf2
        );
    }

    /// RFC 1071 word by word, big-endian, as the reference for [`sum`].
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            acc += hi | pair.get(1).copied().map_or(0, u64::from);
        }
        fold(acc)
    }

    #[test]
    fn sum_agrees_with_word_by_word_at_every_length_and_offset() {
        let data: Vec<u8> = (0..2100u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..4 {
            for len in (0..300).chain([1447, 1448, 1449, 2048, 2095]) {
                let d = &data[start..start + len];
                assert_eq!(sum(d), reference_sum(d), "start {start}, len {len}");
            }
        }
        // Carries: all ones, long enough to wrap every lane many times.
        let ones = vec![0xffu8; 65_537];
        assert_eq!(sum(&ones), reference_sum(&ones));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(sum(&[0x01, 0x02, 0x03]), 0x0102 + 0x0300);
        assert_eq!(
            sum(&[0x01, 0x02, 0x03, 0x04, 0x05]),
            0x0102 + 0x0304 + 0x0500
        );
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn carries_fold_back() {
        assert_eq!(sum(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(0xffff_ffff_ffff), 0xffff);
        let big = [0xffu8; 1000];
        assert_eq!(sum(&big), 0xffff);
    }

    // The IPv4 header of an ICMP echo request, generated with scapy 2.8.0:
    // IP(src="192.168.122.10", dst="192.168.122.1", id=0x1c46, flags="DF", ttl=64)/ICMP(...)
    const IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0xa9, 0x2e, 0xc0, 0xa8, 0x7a,
        0x0a, 0xc0, 0xa8, 0x7a, 0x01,
    ];

    #[test]
    fn header_with_right_checksum_sums_to_ffff() {
        assert_eq!(sum(&IPV4_HEADER), 0xffff);
        let mut h = IPV4_HEADER;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xa92e);
    }

    #[test]
    fn incremental_update_matches_recompute() {
        // Decrement the TTL (the TTL/protocol word at offset 8).
        let mut h = IPV4_HEADER;
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let updated = update16(0xa92e, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(updated, checksum(&h));

        // Rewrite the source address (NAT-style), a 32-bit field at offset 12.
        let mut h = IPV4_HEADER;
        let old = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let new = u32::from(Ipv4Addr::new(10, 1, 2, 3));
        h[12..16].copy_from_slice(&new.to_be_bytes());
        let updated = update32(0xa92e, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(updated, checksum(&h));
        h[10..12].copy_from_slice(&updated.to_be_bytes());
        assert_eq!(sum(&h), 0xffff);
    }

    #[test]
    fn incremental_update_keeps_header_valid() {
        // Every TTL value and protocol: the updated checksum always verifies.
        for ttl in 0..=255u8 {
            let mut h = IPV4_HEADER;
            let old = u16::from_be_bytes([h[8], h[9]]);
            h[8] = ttl;
            let new = u16::from_be_bytes([h[8], h[9]]);
            let c = update16(0xa92e, old, new);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            assert_eq!(sum(&h), 0xffff, "ttl {ttl}");
        }
    }

    #[test]
    fn pseudo_headers() {
        let src = Ipv4Addr::new(192, 168, 122, 10);
        let dst = Ipv4Addr::new(192, 168, 122, 1);
        // c0a8 + 7a0a + c0a8 + 7a01 + 0011 + 0025
        let expect = fold(0xc0a8 + 0x7a0a + 0xc0a8 + 0x7a01 + 0x11 + 0x25);
        assert_eq!(pseudo_header_v4(&src, &dst, IpProtocol::Udp, 0x25), expect);
        let ph = PseudoHeader::V4 { src, dst };
        assert_eq!(ph.sum(IpProtocol::Udp, 0x25), expect);
        assert!(!ph.is_ipv6());

        let src6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst6: Ipv6Addr = "2001:db8::2".parse().unwrap();
        // The length 0x1_0000 sums as the words 0x0001 and 0x0000.
        let expect6 = fold(0x2001 + 0x0db8 + 1 + 0x2001 + 0x0db8 + 2 + 0x0001 + 58);
        assert_eq!(
            pseudo_header_v6(&src6, &dst6, IpProtocol::Icmpv6, 0x1_0000),
            expect6
        );
        assert!(PseudoHeader::V6 {
            src: src6,
            dst: dst6
        }
        .is_ipv6());
    }
}
