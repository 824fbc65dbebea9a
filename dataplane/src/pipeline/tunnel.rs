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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::{Ipv4Prefix, PortState, SharedTables, Stage, Trace};
    use crate::wire::builder::ethernet_frame;
    use crate::wire::{EtherType, Ipv4Packet};

    const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const VTEP_A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
    const VTEP_B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
    const ENDPOINT: TunnelEndpoint = TunnelEndpoint {
        local: LOCAL,
        port: 4789,
    };
    const PORT: PortId = PortId(1);
    const NOW: Timestamp = Timestamp::from_secs(1);
    const HOST: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x11]);

    fn vlan() -> VlanId {
        VlanId::new(10).unwrap()
    }

    /// An access port and a VXLAN port (VNI 42) in VLAN 10, flooding to two VTEPs, taking
    /// VXLAN from 192.168.1.0/24 only.
    fn state() -> ForwardingState {
        let port = |name: &str| {
            Some(PortState {
                name: name.into(),
                mode: PortMode::Access(vlan()),
                mtu: 1500,
                max_macs: u32::MAX,
            })
        };
        let mut s = ForwardingState::with_ports(vec![port("c1"), port("vxlan42")]);
        s.vxlan = vec![
            None,
            Some(VxlanPort {
                vni: 42,
                endpoint: ENDPOINT,
                remotes: vec![VTEP_A, VTEP_B],
                learning: true,
                allow: vec![Ipv4Prefix {
                    addr: Ipv4Addr::new(192, 168, 1, 0),
                    len: 24,
                }],
                ttl: 64,
            }),
        ];
        s.vni_ports.insert((ENDPOINT, 42), PORT);
        s
    }

    fn cx(s: &ForwardingState) -> Context {
        let shared = SharedTables::new(s.mac_table_max, 16, 16);
        Context::new(Arc::default(), Arc::new(shared))
    }

    /// A VXLAN payload: flags, VNI, and a 64-byte frame from `HOST`.
    fn payload(flags: u8, vni: u32) -> Vec<u8> {
        let mut p = vec![flags, 0, 0, 0];
        p.extend_from_slice(&(vni << 8).to_be_bytes());
        p.extend(ethernet_frame(
            EthernetAddress::BROADCAST,
            HOST,
            None,
            EtherType::Ipv4,
            &[0x45; 50],
        ));
        p
    }

    #[test]
    fn decap_gives_the_vni_port_and_inner_frame_and_learns_the_remote() {
        let s = state();
        let mut cx = cx(&s);
        cx.trace = Some(Box::<Trace>::default());
        let mut p = payload(0x08, 42);
        let (port, inner) = Tunnel
            .decap(&mut cx, &s, ENDPOINT, VTEP_A, &mut p, NOW)
            .unwrap();
        assert_eq!(port, PORT);
        assert_eq!(inner.len(), 64);
        assert_eq!(&inner[6..12], HOST.as_bytes());
        let key = FdbKey::new(vlan(), HOST);
        assert_eq!(cx.shared.remotes().lookup(key, NOW, 300_000), Some(VTEP_A));
        assert_eq!(cx.counters.learn.remote_learned.get(), 1);
        assert_eq!(cx.counters.tunnel.rx_packets.get(), 1);
        let step = &cx.trace.as_ref().unwrap().steps[0];
        assert_eq!((step.stage, step.action), (Stage::Tunnel, "vxlan_decap"));
        assert_eq!(step.field("vni"), Some("42"));
        assert_eq!(step.field("remote"), Some("192.168.1.2"));
    }

    #[test]
    fn decap_drops_what_is_not_for_a_vxlan_port_with_its_reason() {
        let s = state();
        let mut cx = cx(&s);
        let mut decap = |mut p: Vec<u8>, src: Ipv4Addr| {
            Tunnel
                .decap(&mut cx, &s, ENDPOINT, src, &mut p, NOW)
                .map(|(port, _)| port)
        };
        assert_eq!(
            decap(vec![0x08; 7], VTEP_A),
            Err(DropReason::VxlanTruncated)
        );
        assert_eq!(
            decap(payload(0x00, 42), VTEP_A),
            Err(DropReason::VxlanBadFlags)
        );
        assert_eq!(
            decap(payload(0x08, 43), VTEP_A),
            Err(DropReason::VxlanUnknownVni)
        );
        let outside = Ipv4Addr::new(10, 9, 9, 9);
        assert_eq!(
            decap(payload(0x08, 42), outside),
            Err(DropReason::VxlanSourceNotAllowed)
        );
        let mut short = payload(0x08, 42);
        short.truncate(8 + 13);
        assert_eq!(decap(short, VTEP_A), Err(DropReason::VxlanTruncated));
        let c = &cx.counters.tunnel;
        assert_eq!(c.rx_packets.get(), 5);
        assert_eq!(c.drops[DropReason::VxlanTruncated.index()].get(), 2);
        assert_eq!(c.drops[DropReason::VxlanSourceNotAllowed.index()].get(), 1);
        // Nothing was learned from any of them.
        assert_eq!(cx.shared.remotes().len(), 0);
    }

    #[test]
    fn encapsulation_goes_to_the_learned_remote_or_floods_with_valid_outer_headers() {
        let s = state();
        let mut cx = cx(&s);
        let frame = ethernet_frame(
            HOST,
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            None,
            EtherType::Ipv4,
            &[0x45; 50],
        );
        let mut sent = Vec::new();
        let encap = |cx: &mut Context, sent: &mut Vec<(Ipv4Addr, [u8; OUTER_LEN])>| {
            Tunnel.encapsulate(
                cx,
                &s,
                PORT,
                &frame,
                frame.len(),
                NOW,
                |remote, outer, _| sent.push((remote, *outer)),
            );
        };
        // HOST is not known: head-end replication to both VTEPs.
        encap(&mut cx, &mut sent);
        assert_eq!(
            sent.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            [VTEP_A, VTEP_B]
        );
        // Learned behind VTEP B: to it alone.
        cx.shared
            .remotes()
            .learn(FdbKey::new(vlan(), HOST), VTEP_B, NOW);
        sent.clear();
        encap(&mut cx, &mut sent);
        assert_eq!(sent.len(), 1);
        let (remote, outer) = sent[0];
        assert_eq!(remote, VTEP_B);
        let ip = Ipv4Packet::new_unchecked(&outer[..20]);
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.ttl()),
            (LOCAL, VTEP_B, 64)
        );
        assert_eq!(usize::from(ip.total_len()), OUTER_LEN + frame.len());
        // Three headers built so far, each with the next identification.
        assert_eq!(ip.ident(), 3);
        assert_eq!(u16::from_be_bytes([outer[22], outer[23]]), 4789);
        let sport = u16::from_be_bytes([outer[20], outer[21]]);
        assert!((vxlan::SOURCE_PORT_MIN..=vxlan::SOURCE_PORT_MAX).contains(&sport));
        assert_eq!(outer[28], 0x08);
        assert_eq!(&outer[32..35], &[0, 0, 42]);
    }
}
