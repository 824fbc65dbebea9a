//! The dry run of `tapswitch trace`: a frame through the pipeline against the live tables,
//! with no side effect.
//!
//! How "no side effect" is kept: the frame goes through a pipeline of its own, with fresh
//! counters and a copy of the shared tables ([`SharedTables::copy`]), against the
//! forwarding state the workers use now. What it learns, tracks or queues goes into the copy;
//! what it sends goes to a [`Recorder`]; the copy is dropped afterwards. The workers are never
//! asked anything, so the dry run does not wait on them either.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use tapswitch_dataplane::pipeline::{Pipeline, PortMode, RxMeta, WorkerCounters};
use tapswitch_dataplane::tables::{NeighKey, PortId};
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

use super::{Switch, SwitchError};
use crate::trace::{report, Probe, Recorder};

impl Switch {
    /// Traces one frame arriving on port `port`: `frame` as bytes, or `packet` described
    /// (see [`Probe::parse`]). Returns the report of [`crate::trace::report`].
    pub fn trace(
        &self,
        port: &str,
        packet: Option<&str>,
        frame: Option<Vec<u8>>,
    ) -> Result<Value, SwitchError> {
        let id = self
            .port_id(port)
            .ok_or_else(|| SwitchError::NoSuchPort(port.to_string()))?;
        let mut frame = match (packet, frame) {
            (Some(text), None) => {
                let probe = Probe::parse(text).map_err(SwitchError::Invalid)?;
                let (src, dst) = self.default_macs(id, &probe);
                probe.build(src, dst).map_err(SwitchError::Invalid)?
            }
            (None, Some(bytes)) => bytes,
            _ => {
                return Err(SwitchError::Invalid(
                    "trace: give either `packet` (a description) or `frame` (hex)".into(),
                ))
            }
        };
        if frame.len() > 65_535 {
            return Err(SwitchError::Invalid("frame: longer than 64 KiB".into()));
        }
        let input = frame.clone();
        let state = &self.published.forwarding;
        let tables = Arc::new(self.shared.copy());
        let mut pipeline = Pipeline::with_shared(Arc::new(WorkerCounters::default()), tables);
        let mut out = Recorder::default();
        let meta = RxMeta {
            len: frame.len(),
            ..RxMeta::default()
        };
        let trace = pipeline.trace(state, id, &mut frame, &meta, self.now(), &mut out);
        Ok(report(port, &input, &trace, &out.transmits))
    }

    /// The MAC addresses of a described packet that names none: the source is the sender's
    /// (its neighbour entry, else the port's configured MAC, else the MAC of the port with that
    /// address, else one learned on the port, else one made from its IP address); the
    /// destination is the router interface's when the packet is routed or for the router,
    /// broadcast for an ARP request, else the neighbour's, else that of the port with that
    /// address (else one made from the IP address: an unknown unicast).
    fn default_macs(&self, port: PortId, probe: &Probe) -> (EthernetAddress, EthernetAddress) {
        let (src_ip, dst_ip) = probe.addresses();
        let spec = self
            .ports
            .get(port.index())
            .and_then(Option::as_ref)
            .map(|p| &p.spec);
        let vlan = probe.vlan.and_then(VlanId::new).or_else(|| {
            spec.and_then(|s| match &s.mode {
                PortMode::Access(v) => Some(*v),
                PortMode::Trunk { native, .. } => *native,
            })
        });
        let now = self.now();
        let neighbour = |ip: IpAddr| -> Option<EthernetAddress> {
            let neigh = self.shared.neighbours();
            let same_vlan = vlan.and_then(|v| {
                neigh
                    .records(now)
                    .find(|r| r.key == NeighKey { vlan: v, ip })
                    .and_then(|r| r.mac)
            });
            let found = same_vlan.or_else(|| {
                neigh
                    .records(now)
                    .find(|r| r.key.ip == ip)
                    .and_then(|r| r.mac)
            });
            found
        };
        let made = |ip: IpAddr| {
            let b = match ip {
                IpAddr::V4(a) => a.octets(),
                IpAddr::V6(a) => {
                    let o = a.octets();
                    [o[12], o[13], o[14], o[15]]
                }
            };
            EthernetAddress([0x02, 0xfe, b[0], b[1], b[2], b[3]])
        };
        // The device MAC of the port that has the address (`[[port]] addresses`).
        let owner = |ip: IpAddr| -> Option<EthernetAddress> {
            self.ports.iter().flatten().find_map(|p| match &p.backend {
                super::Backend::Device(d) if p.spec.addresses.contains(&ip) => Some(d.mac()),
                _ => None,
            })
        };
        let src = neighbour(src_ip)
            .or_else(|| spec.and_then(|s| s.mac))
            .or_else(|| owner(src_ip))
            .or_else(|| {
                self.shared
                    .macs()
                    .iter()
                    .find(|(k, e)| e.port == port && vlan.is_none_or(|v| k.vlan() == v))
                    .map(|(k, _)| k.mac())
            })
            .unwrap_or_else(|| made(src_ip));
        let iface = vlan.and_then(|v| self.routing.interface(v));
        let dst = if matches!(
            probe.payload,
            crate::trace::Payload::Arp { reply: false, .. }
        ) {
            EthernetAddress::BROADCAST
        } else if let Some(i) = iface.filter(|i| !on_link(i, dst_ip) || is_own(i, dst_ip)) {
            i.mac
        } else {
            neighbour(dst_ip)
                .or_else(|| owner(dst_ip))
                .unwrap_or_else(|| made(dst_ip))
        };
        (src, dst)
    }
}

/// Whether `ip` is on a subnet of the interface.
fn on_link(i: &tapswitch_dataplane::pipeline::Interface, ip: IpAddr) -> bool {
    use tapswitch_dataplane::pipeline::routing::{same_subnet_v4, same_subnet_v6};
    match ip {
        IpAddr::V4(a) => i.v4.iter().any(|(b, l)| same_subnet_v4(a, *b, *l)),
        IpAddr::V6(a) => i.v6.iter().any(|(b, l)| same_subnet_v6(a, *b, *l)),
    }
}

/// Whether `ip` is one of the interface's own addresses.
fn is_own(i: &tapswitch_dataplane::pipeline::Interface, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => i.v4.iter().any(|(b, _)| *b == a),
        IpAddr::V6(a) => i.v6.iter().any(|(b, _)| *b == a),
    }
}
