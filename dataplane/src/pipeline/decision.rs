//! What the pipeline decides about a frame, before its egress: the types the stages hand
//! each other and the egress takes.

use super::router::IpipEgress;
use super::suppress::ReplyFrame;
use super::{DropReason, VlanMember};
use crate::tables::PortId;
use crate::wire::{VlanId, VlanTagRepr};

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets<'s> {
    /// Known unicast: one port.
    One(VlanMember),
    /// Broadcast, multicast or unknown unicast: every member of the VLAN but `except`.
    Flood {
        members: &'s [VlanMember],
        except: PortId,
    },
}

/// A forwarding decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress<'s> {
    /// The VLAN the frame was classified into.
    pub vlan: VlanId,
    /// Offset of the frame's inner EtherType: 12 when it arrived untagged, 16 when tagged.
    pub inner_offset: usize,
    pub targets: Targets<'s>,
}

/// The outcome of [`Pipeline::decide`](super::Pipeline::decide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'s> {
    Drop(DropReason),
    Forward(Egress<'s>),
    /// The switch answers the frame itself (ARP/ND suppression): send this reply, untagged
    /// as built, through `Egress` (back out of the ingress port, tagged as that port wants).
    Reply(Egress<'s>, ReplyFrame),
    /// Taken by the router: answered, or waiting on next-hop resolution. Whatever it sends is
    /// in the router's queue of generated frames.
    Local,
    /// Routed into an IPIP tunnel: send `outer` then the frame's bytes `start..start + len`
    /// through the IPIP socket.
    Tunnel(IpipEgress),
}

/// The bytes of a frame as one egress port sends it, in up to three pieces (for `writev`):
/// the MAC addresses, an optional 802.1Q tag, and the rest from the inner EtherType on.
#[derive(Debug, Clone, Copy)]
pub struct EgressFrame<'a> {
    pub addresses: &'a [u8],
    pub tag: Option<[u8; 4]>,
    pub rest: &'a [u8],
}

impl EgressFrame<'_> {
    pub fn len(&self) -> usize {
        self.addresses.len() + self.tag.map_or(0, |t| t.len()) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame in one buffer (for tests and tools; the worker uses the pieces).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(self.addresses);
        if let Some(tag) = &self.tag {
            v.extend_from_slice(tag);
        }
        v.extend_from_slice(self.rest);
        v
    }
}

impl<'s> Egress<'s> {
    /// The ports the frame goes out of, with their tagging.
    pub fn ports(&self) -> impl Iterator<Item = VlanMember> + 's {
        let (one, members, except) = match self.targets {
            Targets::One(m) => (Some(m), &[][..], None),
            Targets::Flood { members, except } => (None, members, Some(except)),
        };
        one.into_iter().chain(
            members
                .iter()
                .copied()
                .filter(move |m| Some(m.port) != except),
        )
    }

    /// The frame as `member` sends it. `frame` is the frame this decision was made for.
    pub fn frame_for<'a>(&self, member: VlanMember, frame: &'a [u8]) -> EgressFrame<'a> {
        let tag = member.tagged.then(|| VlanTagRepr::insertion(self.vlan));
        EgressFrame {
            addresses: &frame[..12],
            tag,
            rest: &frame[self.inner_offset..],
        }
    }
}
