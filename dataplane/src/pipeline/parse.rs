//! The parse stage: the Ethernet header and an 802.1Q tag, checked once for the stages after.

use super::DropReason;
use crate::wire::ethernet::HEADER_LEN;
use crate::wire::vlan::TAG_LEN;
use crate::wire::{EtherType, EthernetAddress, EthernetFrame, VlanId, VlanTag};

/// Offset of the EtherType of an untagged frame.
pub const UNTAGGED: usize = HEADER_LEN - 2;
/// Offset of the inner EtherType of a frame with one 802.1Q tag.
pub const TAGGED: usize = HEADER_LEN - 2 + TAG_LEN;

/// What the later stages need of a frame's L2 headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub dst: EthernetAddress,
    pub src: EthernetAddress,
    /// The 802.1Q tag, if it carries a VLAN (a priority tag, VID 0, does not).
    pub tag: Option<VlanId>,
    /// Whether the frame carries a tag at all (a priority tag included).
    pub tagged: bool,
    /// Offset of the inner EtherType: [`UNTAGGED`] or [`TAGGED`].
    pub inner_offset: usize,
}

/// Parses the Ethernet header and at most one 802.1Q tag: a frame shorter than a header, a
/// tag cut short or with VID 4095, and stacked tags (802.1ad or two 802.1Q) are dropped.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Headers, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Runt)?;
    let (tag, inner_offset) = match eth.ethertype() {
        EtherType::Vlan => {
            let tag = VlanTag::new_checked(eth.payload()).map_err(|_| DropReason::BadVlanTag)?;
            if matches!(tag.ethertype(), EtherType::Vlan | EtherType::QinQ) {
                return Err(DropReason::StackedVlan);
            }
            match tag.vid() {
                0xfff => return Err(DropReason::BadVlanTag),
                // Priority tag: untagged for VLAN purposes.
                0 => (None, TAGGED),
                vid => (VlanId::new(vid), TAGGED),
            }
        }
        EtherType::QinQ => return Err(DropReason::StackedVlan),
        _ => (None, UNTAGGED),
    };
    Ok(Headers {
        dst: eth.dst_addr(),
        src: eth.src_addr(),
        tag,
        tagged: inner_offset == TAGGED,
        inner_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::builder::ethernet_frame;

    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

    fn tagged(tpid: u16, vid: u16, inner: u16) -> Vec<u8> {
        let mut f = ethernet_frame(B, A, None, EtherType::from(tpid), &[0; 50]);
        f[14..16].copy_from_slice(&vid.to_be_bytes());
        f[16..18].copy_from_slice(&inner.to_be_bytes());
        f
    }

    #[test]
    fn untagged_frame() {
        let f = ethernet_frame(B, A, None, EtherType::Ipv4, &[0; 46]);
        let h = parse(&f).unwrap();
        assert_eq!((h.dst, h.src, h.tag, h.tagged), (B, A, None, false));
        assert_eq!(h.inner_offset, UNTAGGED);
    }

    #[test]
    fn one_tag_gives_its_vlan_and_a_priority_tag_none() {
        let h = parse(&tagged(0x8100, 42, 0x0800)).unwrap();
        assert_eq!(
            (h.tag, h.tagged, h.inner_offset),
            (VlanId::new(42), true, TAGGED)
        );
        let h = parse(&tagged(0x8100, 0, 0x0800)).unwrap();
        assert_eq!((h.tag, h.tagged, h.inner_offset), (None, true, TAGGED));
        // The priority bits are not part of the VID.
        let h = parse(&tagged(0x8100, 0xe000 | 7, 0x0800)).unwrap();
        assert_eq!(h.tag, VlanId::new(7));
    }

    #[test]
    fn malformed_headers_are_dropped_with_their_reason() {
        assert_eq!(parse(&[0; 13]), Err(DropReason::Runt));
        assert_eq!(
            parse(&tagged(0x8100, 4095, 0x0800)),
            Err(DropReason::BadVlanTag)
        );
        assert_eq!(
            parse(&tagged(0x8100, 5, 0x8100)),
            Err(DropReason::StackedVlan)
        );
        assert_eq!(
            parse(&tagged(0x8100, 5, 0x88a8)),
            Err(DropReason::StackedVlan)
        );
        assert_eq!(
            parse(&tagged(0x88a8, 5, 0x0800)),
            Err(DropReason::StackedVlan)
        );
        let mut cut = tagged(0x8100, 5, 0x0800);
        cut.truncate(16);
        assert_eq!(parse(&cut), Err(DropReason::BadVlanTag));
    }
}
