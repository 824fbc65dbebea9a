//! The L2 stage: MAC learning, ARP/ND suppression, and the destination lookup that gives a
//! frame its egress set, or hands it to the router.
//!
//! Its state, the learned MAC and remote VTEP tables, is shared by every worker of a switch
//! (in [`SharedTables`]); the stage itself is the code that learns into it and looks up in
//! it, with this worker's counters.

use super::context::Context;
use super::decision::{Decision, Egress, Targets};
use super::ingress::Admitted;
use super::parse::Headers;
use super::router;
use super::shared::SharedTables;
use super::storm::Flood;
use super::suppress;
use super::trace::{record_if, Stage};
use super::{DropReason, ForwardingState, VlanMember};
use crate::tables::{FdbKey, LearnOutcome, MacTable, PortId, Timestamp};
use crate::wire::{EthernetAddress, VlanId};

/// What the L2 stage decided: done, or on to the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched<'s> {
    Done(Decision<'s>),
    /// For the router interface of `vlan`; the frame's EtherType is at `inner_offset`.
    Route {
        vlan: VlanId,
        inner_offset: usize,
    },
    /// A DHCP client's message for the DHCP server of `vlan`'s interface.
    Dhcp {
        vlan: VlanId,
        inner_offset: usize,
    },
}

/// The L2 stage.
#[derive(Debug, Default)]
pub struct Bridge;

impl Bridge {
    /// Learns the source of a frame the ingress stage admitted (`headers` parsed from
    /// `frame`, received on `ingress`), and decides where it goes. `TRACE`: record each
    /// decision (a separate copy of this function, so that the one frames normally take has
    /// no trace code at all).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn switch<'s, const TRACE: bool>(
        &self,
        cx: &mut Context,
        state: &'s ForwardingState,
        ingress: PortId,
        admitted: Admitted<'s>,
        headers: &Headers,
        frame: &[u8],
        now: Timestamp,
    ) -> Result<Switched<'s>, DropReason> {
        let vlan = admitted.vlan;
        let inner_offset = headers.inner_offset;
        // Learning.
        let src = headers.src;
        let src_key = FdbKey::new(vlan, src);
        // Held until the destination is looked up: one lock per frame.
        let mut macs = cx.shared.macs();
        let learned = if !state.static_fdb.contains_key(&src_key) {
            let learn = &cx.counters.learn;
            let outcome = macs.learn(src_key, ingress, now, admitted.port.max_macs);
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
        record_if::<TRACE, _>(&mut cx.trace, Stage::L2, "learn", move |s| {
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
        let claim = router::for_router(&state.routing, vlan, frame, inner_offset);
        if claim == router::Claim::Dhcp {
            record_if::<TRACE, _>(&mut cx.trace, Stage::L2, "to_dhcp", move |s| {
                s.with("vlan", vlan);
            });
            return Ok(Switched::Dhcp { vlan, inner_offset });
        }
        if claim == router::Claim::Route {
            record_if::<TRACE, _>(&mut cx.trace, Stage::L2, "to_router", move |s| {
                s.with("vlan", vlan);
                if let Some(i) = state.routing.interface(vlan) {
                    s.with("interface_mac", i.mac);
                }
            });
            return Ok(Switched::Route { vlan, inner_offset });
        }

        // ARP/ND suppression: answer for addresses in the neighbour table.
        if let Some(reply) = suppress::reply_for(state, vlan, frame, inner_offset) {
            record_if::<TRACE, _>(&mut cx.trace, Stage::L2, "suppressed", move |s| {
                s.with("table", "neigh")
                    .with("reply_len", reply.as_bytes().len());
            });
            cx.counters.learn.neigh_suppressed.add(1);
            let back = VlanMember {
                port: ingress,
                tagged: admitted.port.mode.tags_egress(vlan),
            };
            let egress = Egress {
                vlan,
                inner_offset: 12,
                targets: Targets::One(back),
            };
            return Ok(Switched::Done(Decision::Reply(egress, reply)));
        }

        // Destination.
        let dst = headers.dst;
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
            match lookup(&macs, state, vlan, dst, now) {
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
        // Storm control: looked up only for what floods.
        if let Targets::Flood { .. } = targets {
            if let Some(storm) = state.storm_control(ingress) {
                let kind = if dst.is_broadcast() {
                    Flood::Broadcast
                } else if dst.is_multicast() {
                    Flood::Multicast
                } else {
                    Flood::UnknownUnicast
                };
                if !storm.allow(kind, now) {
                    return Err(DropReason::Storm);
                }
            }
        }
        record_if::<TRACE, _>(&mut cx.trace, Stage::L2, "lookup", move |s| {
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
        Ok(Switched::Done(Decision::Forward(Egress {
            vlan,
            inner_offset,
            targets,
        })))
    }

    /// Brings learned state in line with a newly published state: entries on ports that are
    /// gone or no longer members of the entry's VLAN are flushed, entries shadowed by a static
    /// entry are removed, and the table bound follows `mac_table_max`. Everything else learned
    /// is kept.
    pub fn adopt(&self, shared: &SharedTables, state: &ForwardingState) {
        let mut macs = shared.macs();
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
        let mut remotes = shared.remotes();
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
    }

    /// Removes learned entries idle for the state's aging time; returns how many.
    pub fn age(&self, cx: &Context, state: &ForwardingState, now: Timestamp) -> usize {
        let n = cx.shared.macs().age(now, state.mac_aging_ms)
            + cx.shared.remotes().age(now, state.mac_aging_ms);
        cx.counters.learn.aged.add(n as u64);
        n
    }
}

/// The port `dst` is known on in `vlan`: static entry, else learned.
#[inline]
pub fn lookup_mac(
    shared: &SharedTables,
    state: &ForwardingState,
    vlan: VlanId,
    dst: EthernetAddress,
    now: Timestamp,
) -> Option<PortId> {
    lookup(&shared.macs(), state, vlan, dst, now)
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

#[cfg(test)]
mod tests;
