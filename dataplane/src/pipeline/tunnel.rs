//! The VXLAN stage: decapsulation on the way in, remote choice and outer headers on the way
//! out. Sans-IO like the rest of the pipeline: the worker hands in what a tunnel socket
//! received and sends what this stage builds.
//!
//! The stage keeps no state of its own: the VXLAN ports are in the published
//! [`ForwardingState`], the learned remote VTEPs in the tables every worker shares.
//!
//! A VNI is a bridge port (an access port of its VLAN), so between decapsulation and
//! encapsulation frames are switched like any other; split horizon comes for free, since a
//! flood never goes back out of its ingress port.

use std::net::Ipv4Addr;

use super::context::Context;
use super::shared::SharedTables;
use super::trace::{record, Stage};
use super::{DropReason, ForwardingState, PortMode, TunnelEndpoint, VxlanPort, WorkerCounters};
use crate::tables::{FdbKey, PortId, RemoteLearn, Timestamp};
use crate::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use crate::wire::vxlan::{self, VxlanHeader, VxlanRepr};
use crate::wire::{EthernetAddress, EthernetFrame, IpProtocol, Ipv4Packet, VlanId};

/// Outer IPv4 (20) + UDP (8) + VXLAN (8) bytes in front of every encapsulated frame.
pub const OUTER_LEN: usize = 20 + 8 + vxlan::HEADER_LEN;

/// Where an encapsulated frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remotes<'s> {
    /// The inner destination is known behind one VTEP.
    One(Ipv4Addr),
    /// Broadcast, multicast or unknown unicast: head-end replication to the flood list.
    Flood(&'s [Ipv4Addr]),
}

impl Remotes<'_> {
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (one, many) = match self {
            Remotes::One(ip) => (Some(*ip), &[][..]),
            Remotes::Flood(list) => (None, *list),
        };
        one.into_iter().chain(many.iter().copied())
    }
}

/// The VLAN a VXLAN port extends.
fn port_vlan(state: &ForwardingState, port: PortId) -> Option<VlanId> {
    match state.port(port)?.mode {
        PortMode::Access(v) => Some(v),
        PortMode::Trunk { native, .. } => native,
    }
}

/// The VXLAN stage.
#[derive(Debug, Default)]
pub struct Tunnel;

impl Tunnel {
    /// Validates a VXLAN packet that `endpoint` received from `src`, learns where its inner
    /// source lives, and returns the VXLAN port and the inner frame to switch. Counts the
    /// outer packet and any drop on the tunnel counters.
    pub fn decap<'f>(
        &self,
        cx: &mut Context,
        state: &ForwardingState,
        endpoint: TunnelEndpoint,
        src: Ipv4Addr,
        payload: &'f mut [u8],
        now: Timestamp,
    ) -> Result<(PortId, &'f mut [u8]), DropReason> {
        let tunnel = &cx.counters.tunnel;
        tunnel.rx_packets.add(1);
        tunnel.rx_bytes.add(payload.len() as u64);
        let result = check_vxlan(state, endpoint, src, payload);
        let port = match result {
            Ok(ok) => ok,
            Err(reason) => {
                cx.counters.tunnel.drop(reason);
                if let Some(t) = cx.trace_mut() {
                    t.step(Stage::Tunnel, "vxlan_decap").with("remote", src);
                    t.dropped(reason);
                }
                return Err(reason);
            }
        };
        record(&mut cx.trace, Stage::Tunnel, "vxlan_decap", move |s| {
            s.with("remote", src)
                .with("vni", state.vxlan_port(port).map_or(0, |vx| vx.vni))
                .with("port", state.port(port).map_or("?", |p| p.name.as_str()));
        });
        let inner = &mut payload[vxlan::HEADER_LEN..];
        if let (Some(vx), Some(vlan)) = (state.vxlan_port(port), port_vlan(state, port)) {
            let inner_src = EthernetFrame::new_unchecked(&inner[..]).src_addr();
            let key = FdbKey::new(vlan, inner_src);
            if vx.learning && inner_src.is_unicast() && !state.static_remotes.contains_key(&key) {
                let learn = &cx.counters.learn;
                match cx.shared.remotes().learn(key, src, now) {
                    RemoteLearn::Learned => learn.remote_learned.add(1),
                    RemoteLearn::Moved => learn.remote_moved.add(1),
                    RemoteLearn::TableFull => learn.remote_table_full.add(1),
                    RemoteLearn::Refreshed => {}
                }
            }
        }
        Ok((port, inner))
    }

    /// The remote VTEPs a frame to `dst` in `vlan` goes to through `vx`: a static entry, a
    /// learned one, or else the flood list.
    pub fn remotes_for<'s>(
        &self,
        shared: &SharedTables,
        state: &'s ForwardingState,
        vx: &'s VxlanPort,
        vlan: VlanId,
        dst: EthernetAddress,
        now: Timestamp,
    ) -> Remotes<'s> {
        if dst.is_unicast() {
            let key = FdbKey::new(vlan, dst);
            if let Some(ip) = state.static_remotes.get(&key) {
                return Remotes::One(*ip);
            }
            let learned = shared.remotes().lookup(key, now, state.mac_aging_ms);
            if let Some(ip) = learned {
                return Remotes::One(ip);
            }
        }
        Remotes::Flood(&vx.remotes)
    }

    /// Encapsulates `frame` (switched to the VXLAN port `port`; `out_len` bytes as that port
    /// sends it): for each remote VTEP it goes to (see [`remotes_for`](Self::remotes_for)), builds the
    /// outer headers and hands them to `send`, with this worker's counters. The caller does
    /// the I/O; this is the whole encapsulation stage otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn encapsulate(
        &self,
        cx: &mut Context,
        state: &ForwardingState,
        port: PortId,
        frame: &[u8],
        out_len: usize,
        now: Timestamp,
        mut send: impl FnMut(Ipv4Addr, &[u8; OUTER_LEN], &WorkerCounters),
    ) {
        let (Some(vx), Some(vlan)) = (state.vxlan_port(port), port_vlan(state, port)) else {
            return;
        };
        let dst = EthernetAddress::from_bytes(&frame[..6]);
        let hash = vxlan::inner_flow_hash(frame);
        let remotes = self.remotes_for(&cx.shared, state, vx, vlan, dst, now);
        record(&mut cx.trace, Stage::Tunnel, "vxlan_encap", move |s| {
            s.with("vni", vx.vni)
                .with("port", state.port(port).map_or("?", |p| p.name.as_str()));
            match remotes {
                Remotes::One(ip) => {
                    let table = if state.static_remotes.contains_key(&FdbKey::new(vlan, dst)) {
                        "static_fdb"
                    } else {
                        "remote_table"
                    };
                    s.with("remote", ip).with("table", table);
                }
                Remotes::Flood(list) => {
                    s.with("table", "flood_list").with("remotes", list.len());
                }
            }
        });
        for remote in remotes.iter() {
            let outer = outer_headers(vx, remote, out_len, hash, cx.next_ip_ident());
            send(remote, &outer, &cx.counters);
        }
    }
}

/// The VXLAN port of a valid packet; its inner frame starts at `vxlan::HEADER_LEN`.
fn check_vxlan(
    state: &ForwardingState,
    endpoint: TunnelEndpoint,
    src: Ipv4Addr,
    payload: &[u8],
) -> Result<PortId, DropReason> {
    let header = VxlanHeader::new_checked(payload).map_err(|_| DropReason::VxlanTruncated)?;
    let repr = VxlanRepr::parse(&header).map_err(|_| DropReason::VxlanBadFlags)?;
    let inner = header.payload();
    if inner.len() < ETHERNET_HEADER_LEN {
        return Err(DropReason::VxlanTruncated);
    }
    let port = *state
        .vni_ports
        .get(&(endpoint, repr.vni.get()))
        .ok_or(DropReason::VxlanUnknownVni)?;
    let vx = state.vxlan_port(port).ok_or(DropReason::VxlanUnknownVni)?;
    if !vx.allows(src) {
        return Err(DropReason::VxlanSourceNotAllowed);
    }
    Ok(port)
}

/// The outer IPv4, UDP and VXLAN headers for an inner frame of `inner_len` bytes to `remote`.
/// The UDP source port comes from `flow_hash` (same flow, same port, so ECMP in the underlay
/// keeps a flow on one path); the UDP checksum is zero and DF is clear, as the Linux vxlan
/// device sends over IPv4 by default.
pub fn outer_headers(
    vx: &VxlanPort,
    remote: Ipv4Addr,
    inner_len: usize,
    flow_hash: u32,
    ident: u16,
) -> [u8; OUTER_LEN] {
    let mut h = [0u8; OUTER_LEN];
    let total = OUTER_LEN + inner_len;
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut h[..20]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(total as u16);
        ip.set_ident(ident);
        ip.set_ttl(vx.ttl);
        ip.set_protocol(IpProtocol::Udp);
        ip.set_src_addr(vx.endpoint.local);
        ip.set_dst_addr(remote);
        ip.fill_checksum();
    }
    let sport = vxlan::source_port(flow_hash, vxlan::SOURCE_PORT_MIN, vxlan::SOURCE_PORT_MAX);
    h[20..22].copy_from_slice(&sport.to_be_bytes());
    h[22..24].copy_from_slice(&vx.endpoint.port.to_be_bytes());
    h[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
    // h[26..28]: UDP checksum 0 (none), allowed for IPv4.
    h[28] = 0x08;
    h[32..35].copy_from_slice(&vx.vni.to_be_bytes()[1..4]);
    h
}
