//! The ingress stage: what a port may send. A frame must come from a known port, fit the
//! port's MTU, belong to a VLAN the port is a member of (by its mode: an access port's VLAN,
//! a trunk's allowed tags and native VLAN), and carry a unicast source MAC.
//!
//! A port with port security ([`security`](super::security)) may besides send only as
//! itself: its MAC, its addresses, no router advertisements or DHCP server messages unless
//! allowed.
//!
//! The stage keeps no state of its own: what it checks against is the port's configuration
//! in the published [`ForwardingState`].

use super::parse::Headers;
use super::security;
use super::trace::{record_if, Stage, Trace};
use super::{DropReason, ForwardingState, PortMode, PortState};
use crate::tables::PortId;
use crate::wire::ethernet::HEADER_LEN;
use crate::wire::vlan::TAG_LEN;
use crate::wire::VlanId;

/// A frame the ingress stage let in.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'s> {
    pub port: &'s PortState,
    /// The VLAN the frame is classified into.
    pub vlan: VlanId,
}

/// The ingress stage.
#[derive(Debug, Default)]
pub struct Ingress;

impl Ingress {
    /// Admits `frame` with `headers` (`wire_len` bytes on the wire, the largest segment of a
    /// super-frame) received on `ingress`, and classifies it into its VLAN.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn admit<'s, const TRACE: bool>(
        &self,
        trace: &mut Option<Box<Trace>>,
        state: &'s ForwardingState,
        ingress: PortId,
        headers: &Headers,
        frame: &[u8],
        wire_len: usize,
    ) -> Result<Admitted<'s>, DropReason> {
        let port = state.port(ingress).ok_or(DropReason::UnknownPort)?;
        let max_len = port.mtu as usize + HEADER_LEN + if headers.tagged { TAG_LEN } else { 0 };
        if wire_len > max_len {
            return Err(DropReason::Oversized);
        }
        let tag = headers.tag;
        let vlan = classify(&port.mode, tag)?;
        record_if::<TRACE, _>(trace, Stage::Ingress, "classified", move |s| {
            s.with("port", &port.name).with("vlan", vlan);
            match tag {
                Some(t) => s.with("tag", t),
                None => s.with("tag", "none"),
            };
            s.with(
                "mode",
                match port.mode {
                    PortMode::Access(_) => "access",
                    PortMode::Trunk { .. } => "trunk",
                },
            );
        });
        if headers.src.is_multicast() || headers.src.is_zero() {
            return Err(DropReason::BadSourceMac);
        }
        if let Some(sec) = state.port_security(ingress) {
            security::check(sec, headers, frame)?;
            record_if::<TRACE, _>(trace, Stage::Ingress, "port_security", move |s| {
                s.with("result", "allowed").with("mac", sec.mac);
            });
        }
        Ok(Admitted { port, vlan })
    }
}

/// The VLAN a frame with 802.1Q VLAN `tag` (`None`: untagged or priority-tagged) belongs to on
/// a port in `mode`.
#[inline]
pub fn classify(mode: &PortMode, tag: Option<VlanId>) -> Result<VlanId, DropReason> {
    match (mode, tag) {
        (PortMode::Access(v), None) => Ok(*v),
        (PortMode::Access(v), Some(t)) if *v == t => Ok(t),
        (PortMode::Access(_), Some(_)) => Err(DropReason::VlanNotAllowed),
        (
            PortMode::Trunk {
                native: Some(n), ..
            },
            None,
        ) => Ok(*n),
        (PortMode::Trunk { native: None, .. }, None) => Err(DropReason::UntaggedOnTrunk),
        (PortMode::Trunk { allowed, .. }, Some(t)) if allowed.contains(t) => Ok(t),
        (PortMode::Trunk { .. }, Some(_)) => Err(DropReason::VlanNotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::{TAGGED, UNTAGGED};
    use super::super::VlanSet;
    use super::*;
    use crate::wire::EthernetAddress;

    fn vlan(v: u16) -> VlanId {
        VlanId::new(v).unwrap()
    }

    fn trunk(allowed: &[u16], native: Option<u16>) -> PortMode {
        PortMode::Trunk {
            allowed: VlanSet::from_iter(allowed.iter().map(|&v| vlan(v))),
            native: native.map(vlan),
        }
    }

    fn headers(src: [u8; 6], tag: Option<u16>, tagged: bool) -> Headers {
        Headers {
            dst: EthernetAddress([2, 0, 0, 0, 0, 9]),
            src: EthernetAddress(src),
            tag: tag.map(vlan),
            tagged,
            inner_offset: if tagged { TAGGED } else { UNTAGGED },
        }
    }

    fn state(mode: PortMode) -> ForwardingState {
        ForwardingState::with_ports(vec![Some(PortState {
            name: "p0".into(),
            mode,
            mtu: 1500,
            max_macs: u32::MAX,
        })])
    }

    #[test]
    fn access_ports_take_untagged_their_own_tag_and_priority_tags() {
        let m = PortMode::Access(vlan(10));
        assert_eq!(classify(&m, None), Ok(vlan(10)));
        assert_eq!(classify(&m, Some(vlan(10))), Ok(vlan(10)));
        assert_eq!(
            classify(&m, Some(vlan(11))),
            Err(DropReason::VlanNotAllowed)
        );
    }

    #[test]
    fn trunks_take_allowed_tags_and_untagged_only_with_a_native_vlan() {
        let m = trunk(&[10, 20], Some(30));
        assert_eq!(classify(&m, Some(vlan(20))), Ok(vlan(20)));
        assert_eq!(classify(&m, None), Ok(vlan(30)));
        assert_eq!(
            classify(&m, Some(vlan(40))),
            Err(DropReason::VlanNotAllowed)
        );
        let m = trunk(&[10], None);
        assert_eq!(classify(&m, None), Err(DropReason::UntaggedOnTrunk));
    }

    #[test]
    fn admit_checks_port_mtu_and_source() {
        let s = state(PortMode::Access(vlan(10)));
        let ok = headers([2, 0, 0, 0, 0, 1], None, false);
        let admit = |h: &Headers, port: u16, len: usize| {
            Ingress
                .admit::<false>(&mut None, &s, PortId(port), h, &[], len)
                .map(|a| a.vlan)
        };
        assert_eq!(admit(&ok, 0, 1514), Ok(vlan(10)));
        assert_eq!(admit(&ok, 0, 1515), Err(DropReason::Oversized));
        assert_eq!(admit(&ok, 1, 64), Err(DropReason::UnknownPort));
        // A tag adds its four bytes to what the MTU allows.
        let tagged = headers([2, 0, 0, 0, 0, 1], Some(10), true);
        assert_eq!(admit(&tagged, 0, 1518), Ok(vlan(10)));
        assert_eq!(admit(&tagged, 0, 1519), Err(DropReason::Oversized));
        let multicast = headers([1, 0, 0x5e, 0, 0, 1], None, false);
        assert_eq!(admit(&multicast, 0, 64), Err(DropReason::BadSourceMac));
        let zero = headers([0; 6], None, false);
        assert_eq!(admit(&zero, 0, 64), Err(DropReason::BadSourceMac));
        // Traced: the classification is recorded.
        let mut trace = Some(Box::default());
        Ingress
            .admit::<true>(&mut trace, &s, PortId(0), &ok, &[], 64)
            .unwrap();
        let step = &trace.unwrap().steps[0];
        assert_eq!((step.stage, step.action), (Stage::Ingress, "classified"));
        assert_eq!(step.field("vlan"), Some("10"));
        assert_eq!(step.field("mode"), Some("access"));
    }
}
