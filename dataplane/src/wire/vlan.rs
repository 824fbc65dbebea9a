//! IEEE 802.1Q VLAN tags: the 4 bytes after the MAC addresses when the outer EtherType is
//! 0x8100. The view covers the tag control information (TCI) and the encapsulated EtherType,
//! i.e. the payload of an [`EthernetFrame`](super::EthernetFrame) whose EtherType is `Vlan`.

use core::fmt;

use super::{EtherType, Result, WireError};

/// A VLAN identifier, 1..=4094. 0 (priority tag) and 4095 (reserved) are not VLANs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

impl VlanId {
    pub const MIN: u16 = 1;
    pub const MAX: u16 = 4094;
    /// The default VLAN of an access port that names none.
    pub const DEFAULT: VlanId = VlanId(1);

    /// A VLAN id, or `None` outside 1..=4094.
    pub const fn new(id: u16) -> Option<VlanId> {
        if id >= Self::MIN && id <= Self::MAX {
            Some(VlanId(id))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

mod field {
    use core::ops::{Range, RangeFrom};

    pub const TCI: Range<usize> = 0..2;
    pub const ETHERTYPE: Range<usize> = 2..4;
    pub const PAYLOAD: RangeFrom<usize> = 4..;
}

/// The length of an 802.1Q tag.
pub const TAG_LEN: usize = field::PAYLOAD.start;

/// A view of an 802.1Q tag and what follows it.
#[derive(Debug, Clone)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    pub const fn new_unchecked(buffer: T) -> VlanTag<T> {
        VlanTag { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<VlanTag<T>> {
        let tag = Self::new_unchecked(buffer);
        tag.check_len()?;
        Ok(tag)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < TAG_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    fn tci(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::TCI];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Priority code point (802.1p), 0..=7.
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// The raw 12-bit VLAN identifier, 0..=4095.
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    pub fn set_tci(&mut self, pcp: u8, dei: bool, vid: u16) {
        let tci = (u16::from(pcp & 7) << 13) | (u16::from(dei) << 12) | (vid & 0x0fff);
        self.buffer.as_mut()[field::TCI].copy_from_slice(&tci.to_be_bytes());
    }

    pub fn set_ethertype(&mut self, value: EtherType) {
        let v: u16 = value.into();
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&v.to_be_bytes());
    }
}

/// The owned form of an 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTagRepr {
    pub pcp: u8,
    pub dei: bool,
    pub vid: u16,
    pub ethertype: EtherType,
}

impl VlanTagRepr {
    pub fn parse<T: AsRef<[u8]>>(tag: &VlanTag<T>) -> Result<VlanTagRepr> {
        tag.check_len()?;
        Ok(VlanTagRepr {
            pcp: tag.pcp(),
            dei: tag.dei(),
            vid: tag.vid(),
            ethertype: tag.ethertype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        TAG_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, tag: &mut VlanTag<T>) {
        tag.set_tci(self.pcp, self.dei, self.vid);
        tag.set_ethertype(self.ethertype);
    }

    /// The 4 bytes an egress trunk port inserts after the MAC addresses: the 802.1Q TPID
    /// (0x8100) and a TCI with VLAN `vid`, priority 0.
    pub fn insertion(vid: VlanId) -> [u8; 4] {
        let tci = vid.get().to_be_bytes();
        [0x81, 0x00, tci[0], tci[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // TCI: PCP 5, DEI 1, VID 0x00a (10); inner EtherType IPv4; one payload byte.
    static TAG: [u8; 5] = [0xb0, 0x0a, 0x08, 0x00, 0x45];

    #[test]
    fn parse_fixture() {
        let tag = VlanTag::new_checked(&TAG[..]).unwrap();
        let repr = VlanTagRepr::parse(&tag).unwrap();
        assert_eq!(
            repr,
            VlanTagRepr {
                pcp: 5,
                dei: true,
                vid: 10,
                ethertype: EtherType::Ipv4
            }
        );
        assert_eq!(tag.payload(), &[0x45]);
    }

    #[test]
    fn emit_matches_fixture() {
        let repr = VlanTagRepr {
            pcp: 5,
            dei: true,
            vid: 10,
            ethertype: EtherType::Ipv4,
        };
        let mut bytes = [0u8; 5];
        bytes[4] = 0x45;
        repr.emit(&mut VlanTag::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, TAG);
        assert_eq!(
            VlanTagRepr::insertion(VlanId::new(10).unwrap()),
            [0x81, 0x00, 0x00, 0x0a]
        );
    }

    #[test]
    fn short_tag_is_truncated() {
        for len in 0..TAG_LEN {
            assert!(VlanTag::new_checked(&TAG[..len]).is_err());
        }
    }

    #[test]
    fn vlan_id_range() {
        assert!(VlanId::new(0).is_none());
        assert!(VlanId::new(4095).is_none());
        assert_eq!(VlanId::new(4094).unwrap().get(), 4094);
    }
}
