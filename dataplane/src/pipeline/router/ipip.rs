//! IPIP (RFC 2003) on the router: routes with `encap = "ipip"` wrap the packet in an outer
//! IPv4 header to the route's host; packets from configured peers are unwrapped and routed.

use std::net::Ipv4Addr;

use super::super::icmp::Icmpv4Error;
use super::super::{Decision, DropReason, ForwardingState};
use super::Generated;
use super::L3;
use crate::tables::Timestamp;
use crate::wire::ipip::{self, OUTER_LEN};
use crate::wire::{Ipv4Packet, VlanId};

/// The tunnel of an IPIP route.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tunnel {
    pub remote: Ipv4Addr,
    pub local: Option<Ipv4Addr>,
    pub mtu: u16,
    pub ttl: u8,
}

/// A routed packet to send through the IPIP socket: `outer` then `frame[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpipEgress {
    pub remote: Ipv4Addr,
    pub outer: [u8; OUTER_LEN],
    pub start: usize,
    pub len: usize,
}

impl L3<'_> {
    /// Encapsulates the IPv4 packet at `frame[off + 2..]` (`total` bytes) for `tunnel`, with
    /// the checks of any forwarding: TTL, then the tunnel's MTU (fragmentation needed with DF,
    /// else fragments).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ipip_out<'s>(
        &mut self,
        state: &'s ForwardingState,
        in_vlan: Option<VlanId>,
        off: usize,
        total: usize,
        frame: &mut [u8],
        tunnel: Tunnel,
        now: Timestamp,
    ) -> Decision<'s> {
        let l3 = off + 2;
        if frame[l3 + 8] <= 1 {
            self.icmpv4_error(
                state,
                in_vlan,
                l3,
                total,
                frame,
                Icmpv4Error::TimeExceeded,
                now,
            );
            return Decision::Drop(DropReason::TtlExceeded);
        }
        if total > usize::from(tunnel.mtu) {
            if frame[l3 + 6] & 0x40 != 0 {
                self.icmpv4_error(
                    state,
                    in_vlan,
                    l3,
                    total,
                    frame,
                    Icmpv4Error::FragNeeded { mtu: tunnel.mtu },
                    now,
                );
                return Decision::Drop(DropReason::FragNeeded);
            }
            Ipv4Packet::new_unchecked(&mut frame[l3..l3 + total]).decrement_ttl();
            let Some(fragments) = self.fragments(&frame[l3..l3 + total], usize::from(tunnel.mtu))
            else {
                return Decision::Drop(DropReason::IpHeaderBad);
            };
            // A tunnel has no interface of its own: counted where the packet came in.
            if let Some(v) = in_vlan {
                self.counters.interface(v).fragmented.add(1);
            }
            for f in fragments {
                let outer = self.outer(tunnel, &f[super::L2..]);
                self.r.generated.push_back(Generated::Ipip {
                    remote: tunnel.remote,
                    outer,
                    bytes: f,
                    start: super::L2,
                });
            }
            return Decision::Local;
        }
        Ipv4Packet::new_unchecked(&mut frame[l3..l3 + total]).decrement_ttl();
        let outer = self.outer(tunnel, &frame[l3..l3 + total]);
        crate::pipeline::trace::record(
            self.trace,
            crate::pipeline::Stage::Tunnel,
            "ipip_encap",
            move |s| {
                s.with("remote", tunnel.remote).with("ttl", frame[l3 + 8]);
                if let Some(l) = tunnel.local {
                    s.with("local", l);
                }
            },
        );
        Decision::Tunnel(IpipEgress {
            remote: tunnel.remote,
            outer,
            start: l3,
            len: total,
        })
    }

    pub(super) fn outer(&mut self, tunnel: Tunnel, inner: &[u8]) -> [u8; OUTER_LEN] {
        ipip::outer_header(
            tunnel.local.unwrap_or(Ipv4Addr::UNSPECIFIED),
            tunnel.remote,
            inner.len(),
            inner[1],
            self.next_ip_ident(),
            tunnel.ttl,
        )
    }

    /// Takes an IPIP packet the host received from `src` (`packet` is the whole outer packet)
    /// and routes its inner packet. The 14 bytes in front of the inner packet (part of the
    /// outer header) are overwritten with the Ethernet header the routed frame leaves with;
    /// the returned decision refers to `packet[start - 14..]` where `start` is returned too.
    pub fn ipip_in<'s>(
        &mut self,
        state: &'s ForwardingState,
        src: Ipv4Addr,
        packet: &mut [u8],
        now: Timestamp,
    ) -> (usize, Decision<'s>) {
        let c = &self.counters.ipip;
        c.rx_packets.add(1);
        c.rx_bytes.add(packet.len() as u64);
        let decision = match self.check_ipip(state, src, packet) {
            Ok(start) => {
                crate::pipeline::trace::record(
                    self.trace,
                    crate::pipeline::Stage::Tunnel,
                    "ipip_decap",
                    move |s| {
                        s.with("remote", src);
                    },
                );
                let frame = &mut packet[start - super::L2..];
                frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                let d = self.ipv4_in(state, None, 12, frame, now);
                let d = match d {
                    // A malformed inner header is the tunnel's fault.
                    Decision::Drop(DropReason::IpHeaderBad) => {
                        Decision::Drop(DropReason::IpipMalformed)
                    }
                    d => d,
                };
                return match d {
                    Decision::Drop(r) => {
                        self.counters.ipip.drop(r);
                        if let Some(t) = self.trace.as_deref_mut() {
                            t.dropped(r);
                        }
                        (start - super::L2, d)
                    }
                    d => (start - super::L2, d),
                };
            }
            Err(reason) => Decision::Drop(reason),
        };
        if let Decision::Drop(r) = decision {
            self.counters.ipip.drop(r);
            if let Some(t) = self.trace.as_deref_mut() {
                t.dropped(r);
            }
        }
        (0, decision)
    }

    fn check_ipip(
        &self,
        state: &ForwardingState,
        src: Ipv4Addr,
        packet: &[u8],
    ) -> Result<usize, DropReason> {
        if !state.routing.ipip_peers.contains(&src) {
            return Err(DropReason::IpipSourceNotAllowed);
        }
        let (start, _) = ipip::inner(packet).map_err(|_| DropReason::IpipMalformed)?;
        if start < super::L2 {
            return Err(DropReason::IpipMalformed);
        }
        Ok(start)
    }
}
