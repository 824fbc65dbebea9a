//! The virtio-net header (`struct virtio_net_hdr`, virtio 1.x §5.1.6): the offload metadata
//! that TAP (`IFF_VNET_HDR`) and AF_PACKET (`PACKET_VNET_HDR`) put in front of a frame, and
//! that a virtio-net device exchanges with its driver. Little-endian fields, as on every
//! virtio 1.0 device and on x86 in legacy mode.
//!
//! ```text
//! 0      1         2         4          6           8            10
//! +------+---------+---------+----------+-----------+------------+
//! |flags |gso_type | hdr_len | gso_size | csum_start| csum_offset|
//! +------+---------+---------+----------+-----------+------------+
//! ```

/// Length of the header without `num_buffers` (the form TAP and AF_PACKET use).
pub const HEADER_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` to the end is still to be computed and stored at
/// `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
/// UDP segmentation (`UDP_SEGMENT`): each segment a datagram.
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` flag: the TCP super-frame carries ECN (CWR on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// The header's fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    /// Bytes of headers in front of the payload (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> VnetHeader {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        }
    }

    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// The segmentation asked for, without the ECN flag.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCPv4 super-frame as the kernel hands it over: checksum partial from byte 34, store
    /// at +16; 1448-byte segments; 66 bytes of headers.
    const TSO: [u8; HEADER_LEN] = [0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];

    #[test]
    fn parse_then_emit_is_the_same_bytes() {
        let h = VnetHeader::parse(&TSO);
        assert_eq!(
            h,
            VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert_eq!(h.emit(), TSO);
        assert!(h.needs_csum());
        let ecn = VnetHeader {
            gso_type: GSO_TCPV6 | GSO_ECN,
            ..h
        };
        assert_eq!(ecn.gso_kind(), GSO_TCPV6);
    }
}
