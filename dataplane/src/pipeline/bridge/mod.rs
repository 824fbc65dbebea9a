//! The L2 stage: VLAN classification, learning, lookup, and the egress set.
//!
//! A [`Bridge`] belongs to one worker thread: it writes that worker's [`WorkerCounters`] and
//! learns into, and looks up in, the switch's [`SharedTables`].

use crate::pipeline::offload::Offload;
use std::sync::Arc;

use super::router::{self, IpipEgress, Router};
use super::shared::{ConntrackGuard, SharedTables};
use super::suppress::{self, ReplyFrame};
use super::trace::{record_if, Stage, Trace};
use super::{DropReason, ForwardingState, PortMode, VlanMember, WorkerCounters};
use crate::tables::{FdbKey, LearnOutcome, MacTable, PortId, RemoteTable, Timestamp};
use crate::wire::ethernet::HEADER_LEN;
use crate::wire::vlan::TAG_LEN;
use crate::wire::{EtherType, EthernetAddress, EthernetFrame, VlanId, VlanTag, VlanTagRepr};
use std::sync::MutexGuard;

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

/// The outcome of [`Bridge::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'s> {
    Drop(DropReason),
    Forward(Egress<'s>),
    /// The switch answers the frame itself (ARP/ND suppression): send this reply, untagged
    /// as built, through `Egress` (back out of the ingress port, tagged as that port wants).
    Reply(Egress<'s>, ReplyFrame),
    /// Taken by the router: answered, or waiting on next-hop resolution. Whatever it sends is
    /// in [`Bridge::take_generated`].
    Local,
    /// Routed into an IPIP tunnel: send `outer` then the frame's bytes `start..start + len`
    /// through the IPIP socket.
    Tunnel(IpipEgress),
}

/// What the L2 stage decided: done, or on to the router.
enum Step<'s> {
    Done(Decision<'s>),
    Route { vlan: VlanId, inner_offset: usize },
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

/// One worker's L2 switch.
pub struct Bridge {
    /// Learned MACs and remote VTEPs, neighbours, conntrack: one set for all workers.
    pub(super) shared: Arc<SharedTables>,
    pub(super) counters: Arc<WorkerCounters>,
    /// IPv4 identification of the next outer header this worker builds.
    ident: u16,
    /// The L3 stage's own state: neighbours, frames to send.
    pub(super) router: Router,
    /// The offloads still to do on the frame being routed (a TCP super-frame, a partial
    /// checksum), while [`process_offloaded`](Self::process_offloaded) has one in the router.
    pub(super) offload: Option<Offload>,
    /// The record of the frame being traced, while one is ([`trace_on`](Self::trace_on)).
    pub(super) trace: Option<Box<Trace>>,
}

impl Bridge {
    /// A bridge with tables of its own (one worker).
    pub fn new(state: &ForwardingState, counters: Arc<WorkerCounters>) -> Bridge {
        let shared = SharedTables::new(
            state.mac_table_max,
            state.routing.neigh_max,
            state.nat.conntrack_max,
        );
        Bridge::with_shared(counters, Arc::new(shared))
    }

    /// A bridge of one of several workers that share `shared`.
    pub fn with_shared(counters: Arc<WorkerCounters>, shared: Arc<SharedTables>) -> Bridge {
        Bridge {
            shared,
            counters,
            ident: 0,
            router: Router::new(),
            offload: None,
            trace: None,
        }
    }

    /// Records what every stage decides about the frames that follow, until
    /// [`take_trace`](Self::take_trace).
    pub fn trace_on(&mut self) {
        match &mut self.trace {
            Some(t) => t.clear(),
            None => self.trace = Some(Box::default()),
        }
    }

    /// Stops recording and returns the record.
    pub fn take_trace(&mut self) -> Option<Box<Trace>> {
        self.trace.take()
    }

    /// The record being made, if tracing is on.
    pub fn trace_mut(&mut self) -> Option<&mut Trace> {
        self.trace.as_deref_mut()
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// The tables this bridge shares with the other workers.
    pub fn shared(&self) -> &Arc<SharedTables> {
        &self.shared
    }

    /// The learned MAC table (locked while the guard lives).
    pub fn mac_table(&self) -> MutexGuard<'_, MacTable> {
        self.shared.macs()
    }

    /// Brings learned state in line with a newly published state: entries on ports that are
    /// gone or no longer members of the entry's VLAN are flushed, entries shadowed by a static
    /// entry are removed, and the table bound follows `mac_table_max`. Everything else learned
    /// is kept.
    pub fn adopt(&mut self, state: &ForwardingState) {
        let mut macs = self.shared.macs();
        macs.set_max_entries(state.mac_table_max);
        macs.retain(|key, entry| {
            state
                .port(entry.port)
                .is_some_and(|p| p.mode.is_member(key.vlan()))
                && !state.static_fdb.contains_key(&key)
        });
        drop(macs);
        // Remote entries stay while some VXLAN port still extends their VLAN and no static
        // entry shadows them.
        let mut remotes = self.shared.remotes();
        remotes.set_max_entries(state.mac_table_max);
        remotes.retain(|key, _| {
            state.vxlan.iter().enumerate().any(|(i, vx)| {
                vx.is_some()
                    && state
                        .port(PortId(i as u16))
                        .is_some_and(|p| p.mode.is_member(key.vlan()))
            }) && !state.static_remotes.contains_key(&key)
        });
        drop(remotes);
        self.adopt_routing(state);
    }

    /// The connection tracking table (locked while the guard lives).
    pub fn conntrack(&self) -> ConntrackGuard<'_> {
        self.shared.conntrack()
    }

    /// The router's state: the neighbour table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// Removes learned entries idle for the state's aging time; returns how many.
    pub fn age(&mut self, state: &ForwardingState, now: Timestamp) -> usize {
        let n = self.shared.macs().age(now, state.mac_aging_ms)
            + self.shared.remotes().age(now, state.mac_aging_ms);
        self.counters.learn.aged.add(n as u64);
        n
    }

    /// The IPv4 identification for the next outer header.
    pub fn next_ip_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    /// The learned remote VTEP table (locked while the guard lives).
    pub fn remote_table(&self) -> MutexGuard<'_, RemoteTable> {
        self.shared.remotes()
    }

    /// Classifies, learns from and decides the fate of one frame received on `ingress`. The
    /// frame is mutable because a routed frame is rewritten in place (MAC addresses, TTL,
    /// checksum) before it leaves.
    pub fn process<'s>(
        &mut self,
        state: &'s ForwardingState,
        ingress: PortId,
        frame: &mut [u8],
        now: Timestamp,
    ) -> Decision<'s> {
        // Split borrows: the tables are used while the counters are read, with no refcount
        // traffic per frame.
        let Bridge {
            shared,
            counters,
            trace,
            ..
        } = self;
        let port_counters = counters.port(ingress);
        port_counters.rx_packets.add(1);
        port_counters.rx_bytes.add(frame.len() as u64);
        let wire_len = frame.len();
        let decided = if trace.is_some() {
            Self::decide::<true>(
                shared, counters, trace, state, ingress, frame, wire_len, now,
            )
        } else {
            Self::decide::<false>(
                shared, counters, trace, state, ingress, frame, wire_len, now,
            )
        };
        let (vlan, inner_offset) = match decided {
            Ok(Step::Done(decision)) => return decision,
            Ok(Step::Route { vlan, inner_offset }) => (vlan, inner_offset),
            Err(reason) => {
                port_counters.drop(reason);
                if let Some(t) = trace {
                    t.dropped(reason);
                }
                return Decision::Drop(reason);
            }
        };
        let decision = self.route_in(state, vlan, inner_offset, frame, now);
        if let Decision::Drop(reason) = decision {
            self.counters.port(ingress).drop(reason);
            if let Some(t) = self.trace_mut() {
                t.dropped(reason);
            }
        }
        decision
    }

    /// [`process`](Self::process) for a frame with offloads still to do (`offload`: a TCP
    /// super-frame, a partial checksum), without doing them: `wire_len` is the largest frame
    /// its segmentation will make, which the ingress MTU is checked against. A switched frame
    /// is decided whole. An IPv4 or IPv6 frame for the router is routed whole too: the NAT
    /// stage updates a partial checksum as such, and where it cannot leave whole (an IPIP
    /// route, a next hop still resolving, fragmentation) the router cuts it and sends the
    /// pieces as generated frames. `None`, with nothing counted, for anything else for the
    /// router (ARP, suppression): the caller finishes the offloads and passes each resulting
    /// frame to `process`.
    pub fn process_offloaded<'s>(
        &mut self,
        state: &'s ForwardingState,
        ingress: PortId,
        frame: &mut [u8],
        offload: &Offload,
        wire_len: usize,
        now: Timestamp,
    ) -> Option<Decision<'s>> {
        let Bridge {
            shared,
            counters,
            trace,
            ..
        } = self;
        let traced = trace.is_some();
        let decided = if traced {
            Self::decide::<true>(
                shared, counters, trace, state, ingress, frame, wire_len, now,
            )
        } else {
            Self::decide::<false>(
                shared, counters, trace, state, ingress, frame, wire_len, now,
            )
        };
        let decision = match decided {
            Ok(Step::Done(d @ (Decision::Forward(_) | Decision::Drop(_)))) => d,
            Ok(Step::Route { vlan, inner_offset })
                if matches!(
                    frame.get(inner_offset..inner_offset + 2),
                    Some(&[0x08, 0x00] | &[0x86, 0xdd])
                ) =>
            {
                counters.port(ingress).rx_packets.add(1);
                counters.port(ingress).rx_bytes.add(frame.len() as u64);
                self.offload = Some(*offload);
                let decision = self.route_in(state, vlan, inner_offset, frame, now);
                self.offload = None;
                if let Decision::Drop(reason) = decision {
                    self.counters.port(ingress).drop(reason);
                    if let Some(t) = self.trace_mut() {
                        t.dropped(reason);
                    }
                }
                return Some(decision);
            }
            Ok(_) => {
                // Decided again, frame by frame, once the offloads are done.
                if traced {
                    if let Some(t) = self.trace_mut() {
                        t.rewind_to_receive();
                    }
                }
                return None;
            }
            Err(reason) => Decision::Drop(reason),
        };
        let port_counters = self.counters.port(ingress);
        port_counters.rx_packets.add(1);
        port_counters.rx_bytes.add(frame.len() as u64);
        if let Decision::Drop(reason) = decision {
            port_counters.drop(reason);
            if let Some(t) = self.trace.as_deref_mut() {
                t.dropped(reason);
            }
        }
        Some(decision)
    }

    /// The L2 stage. `TRACE`: record each decision in `trace` (a separate copy of this
    /// function, so that the one frames normally take has no trace code at all).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn decide<'s, const TRACE: bool>(
        shared: &SharedTables,
        counters: &WorkerCounters,
        trace: &mut Option<Box<Trace>>,
        state: &'s ForwardingState,
        ingress: PortId,
        frame: &[u8],
        wire_len: usize,
        now: Timestamp,
    ) -> Result<Step<'s>, DropReason> {
        let port = state.port(ingress).ok_or(DropReason::UnknownPort)?;
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Runt)?;

        // Ingress VLAN classification.
        let (tag_vid, inner_offset) = match eth.ethertype() {
            EtherType::Vlan => {
                let tag =
                    VlanTag::new_checked(eth.payload()).map_err(|_| DropReason::BadVlanTag)?;
                if matches!(tag.ethertype(), EtherType::Vlan | EtherType::QinQ) {
                    return Err(DropReason::StackedVlan);
                }
                match tag.vid() {
                    0xfff => return Err(DropReason::BadVlanTag),
                    // Priority tag: untagged for VLAN purposes.
                    0 => (None, HEADER_LEN - 2 + TAG_LEN),
                    vid => (VlanId::new(vid), HEADER_LEN - 2 + TAG_LEN),
                }
            }
            EtherType::QinQ => return Err(DropReason::StackedVlan),
            _ => (None, HEADER_LEN - 2),
        };
        let tagged = inner_offset != HEADER_LEN - 2;
        let max_len = port.mtu as usize + HEADER_LEN + if tagged { TAG_LEN } else { 0 };
        if wire_len > max_len {
            return Err(DropReason::Oversized);
        }
        let vlan = match (&port.mode, tag_vid) {
            (PortMode::Access(v), None) => *v,
            (PortMode::Access(v), Some(t)) if *v == t => t,
            (PortMode::Access(_), Some(_)) => return Err(DropReason::VlanNotAllowed),
            (
                PortMode::Trunk {
                    native: Some(n), ..
                },
                None,
            ) => *n,
            (PortMode::Trunk { native: None, .. }, None) => {
                return Err(DropReason::UntaggedOnTrunk)
            }
            (PortMode::Trunk { allowed, .. }, Some(t)) if allowed.contains(t) => t,
            (PortMode::Trunk { .. }, Some(_)) => return Err(DropReason::VlanNotAllowed),
        };
        record_if::<TRACE, _>(trace, Stage::Ingress, "classified", move |s| {
            s.with("port", &port.name).with("vlan", vlan);
            match tag_vid {
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

        // Source checks and learning.
        let src = eth.src_addr();
        if src.is_multicast() || src.is_zero() {
            return Err(DropReason::BadSourceMac);
        }
        let src_key = FdbKey::new(vlan, src);
        // Held until the destination is looked up: one lock per frame.
        let mut macs = shared.macs();
        let learned = if !state.static_fdb.contains_key(&src_key) {
            let learn = &counters.learn;
            let outcome = macs.learn(src_key, ingress, now, port.max_macs);
            match outcome {
                LearnOutcome::Refreshed => {}
                LearnOutcome::Learned => learn.learned.add(1),
                LearnOutcome::Moved { .. } => learn.moved.add(1),
                LearnOutcome::TableFull => learn.table_full.add(1),
                LearnOutcome::PortLimit => learn.port_limit.add(1),
            }
            Some(outcome)
        } else {
            None
        };
        record_if::<TRACE, _>(trace, Stage::L2, "learn", move |s| {
            s.with("mac", src).with(
                "outcome",
                match learned {
                    None => "static",
                    Some(LearnOutcome::Refreshed) => "refreshed",
                    Some(LearnOutcome::Learned) => "learned",
                    Some(LearnOutcome::Moved { .. }) => "moved",
                    Some(LearnOutcome::TableFull) => "table_full",
                    Some(LearnOutcome::PortLimit) => "port_limit",
                },
            );
        });

        // The router interface of this VLAN, if any, takes what is addressed to it.
        if router::for_router(&state.routing, vlan, frame, inner_offset) {
            record_if::<TRACE, _>(trace, Stage::L2, "to_router", move |s| {
                s.with("vlan", vlan);
                if let Some(i) = state.routing.interface(vlan) {
                    s.with("interface_mac", i.mac);
                }
            });
            return Ok(Step::Route { vlan, inner_offset });
        }

        // ARP/ND suppression: answer for addresses in the neighbour table.
        if let Some(reply) = suppress::reply_for(state, vlan, frame, inner_offset) {
            record_if::<TRACE, _>(trace, Stage::L2, "suppressed", move |s| {
                s.with("table", "neigh")
                    .with("reply_len", reply.as_bytes().len());
            });
            counters.learn.neigh_suppressed.add(1);
            let back = VlanMember {
                port: ingress,
                tagged: port.mode.tags_egress(vlan),
            };
            let egress = Egress {
                vlan,
                inner_offset: 12,
                targets: Targets::One(back),
            };
            return Ok(Step::Done(Decision::Reply(egress, reply)));
        }

        // Destination.
        let dst = eth.dst_addr();
        let members = state.members(vlan);
        let flood = Targets::Flood {
            members,
            except: ingress,
        };
        let targets = if dst.is_multicast() {
            if dst.is_link_local() {
                return Err(DropReason::LinkLocal);
            }
            flood
        } else {
            match Self::lookup(&macs, state, vlan, dst, now) {
                Some(out) if out == ingress => return Err(DropReason::SamePort),
                Some(out) => match state.port(out) {
                    Some(p) if p.mode.is_member(vlan) => Targets::One(VlanMember {
                        port: out,
                        tagged: p.mode.tags_egress(vlan),
                    }),
                    _ => flood,
                },
                None => flood,
            }
        };
        record_if::<TRACE, _>(trace, Stage::L2, "lookup", move |s| {
            s.with("dst", dst);
            match targets {
                Targets::One(m) => {
                    let table = if state.static_fdb.contains_key(&FdbKey::new(vlan, dst)) {
                        "static_fdb"
                    } else {
                        "mac_table"
                    };
                    s.with("result", "hit")
                        .with("table", table)
                        .with("port", state.port(m.port).map_or("?", |p| p.name.as_str()));
                }
                Targets::Flood { members, .. } => {
                    let why = if dst.is_broadcast() {
                        "broadcast"
                    } else if dst.is_multicast() {
                        "multicast"
                    } else {
                        "unknown_unicast"
                    };
                    let n = members.iter().filter(|m| m.port != ingress).count();
                    s.with("result", "flood").with("why", why).with("ports", n);
                }
            }
        });
        Ok(Step::Done(Decision::Forward(Egress {
            vlan,
            inner_offset,
            targets,
        })))
    }

    /// The port `dst` is known on in `vlan`: static entry, else learned.
    #[inline]
    pub(super) fn lookup_mac(
        &self,
        state: &ForwardingState,
        vlan: VlanId,
        dst: EthernetAddress,
        now: Timestamp,
    ) -> Option<PortId> {
        Self::lookup(&self.shared.macs(), state, vlan, dst, now)
    }

    #[inline]
    fn lookup(
        macs: &MacTable,
        state: &ForwardingState,
        vlan: VlanId,
        dst: EthernetAddress,
        now: Timestamp,
    ) -> Option<PortId> {
        let key = FdbKey::new(vlan, dst);
        state
            .static_fdb
            .get(&key)
            .copied()
            .or_else(|| macs.lookup(key, now, state.mac_aging_ms))
    }
}

#[cfg(test)]
mod tests;
