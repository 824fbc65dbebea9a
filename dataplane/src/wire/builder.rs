//! Building whole frames from parts: the one frame builder that tests, benches, fuzz seeds and
//! tools use.

use std::net::Ipv4Addr;

use super::arp::{ArpOperation, ArpPacket, ArpRepr};
use super::ethernet::HEADER_LEN;
use super::vlan::TAG_LEN;
use super::{EtherType, EthernetAddress, EthernetFrame, EthernetRepr, VlanTag, VlanTagRepr};

/// An Ethernet frame from `src` to `dst`, 802.1Q-tagged with `vid` when given, carrying
/// `ethertype` and `payload`.
pub fn ethernet_frame(
    dst: EthernetAddress,
    src: EthernetAddress,
    vid: Option<u16>,
    ethertype: EtherType,
    payload: &[u8],
) -> Vec<u8> {
    let tag_len = if vid.is_some() { TAG_LEN } else { 0 };
    let mut buf = vec![0u8; HEADER_LEN + tag_len + payload.len()];
    let len = ethernet_frame_into(&mut buf, dst, src, vid, ethertype, payload);
    debug_assert_eq!(len, Some(buf.len()));
    buf
}

/// [`ethernet_frame`] into `buf` without allocating; returns the frame's length, or `None` if
/// `buf` is too small.
pub fn ethernet_frame_into(
    buf: &mut [u8],
    dst: EthernetAddress,
    src: EthernetAddress,
    vid: Option<u16>,
    ethertype: EtherType,
    payload: &[u8],
) -> Option<usize> {
    let tag_len = if vid.is_some() { TAG_LEN } else { 0 };
    let len = HEADER_LEN + tag_len + payload.len();
    let buf = buf.get_mut(..len)?;
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    let outer = if vid.is_some() {
        EtherType::Vlan
    } else {
        ethertype
    };
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype: outer,
    }
    .emit(&mut frame);
    if let Some(vid) = vid {
        let repr = VlanTagRepr {
            pcp: 0,
            dei: false,
            vid,
            ethertype,
        };
        repr.emit(&mut VlanTag::new_unchecked(frame.payload_mut()));
    }
    buf[HEADER_LEN + tag_len..].copy_from_slice(payload);
    Some(len)
}

/// A broadcast ARP request from (`src_mac`, `src_ip`) for `target_ip`, tagged with `vid` when
/// given.
pub fn arp_request(
    src_mac: EthernetAddress,
    src_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
    vid: Option<u16>,
) -> Vec<u8> {
    let repr = ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: src_mac,
        source_protocol_addr: src_ip,
        target_hardware_addr: EthernetAddress::ZERO,
        target_protocol_addr: target_ip,
    };
    let mut arp = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut arp[..]));
    ethernet_frame(
        EthernetAddress::BROADCAST,
        src_mac,
        vid,
        EtherType::Arp,
        &arp,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_frame_layout() {
        let f = ethernet_frame(
            EthernetAddress::BROADCAST,
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            Some(10),
            EtherType::Ipv4,
            &[0x45],
        );
        assert_eq!(
            f,
            [
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x81, 0x00, 0x00, 0x0a, 0x08,
                0x00, 0x45
            ]
        );
    }
}
