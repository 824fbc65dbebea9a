//! The router's share of the [`Switch`]: interfaces, routes, neighbours and their counters.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use tapswitch_dataplane::pipeline::{DropReason, InterfaceCounters, NextHop, Route};

use super::{Switch, SwitchError};
use crate::config::{parse_cidr, ConfigError, InterfaceConfig, RouteConfig};

/// One line of `interface list`.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceInfo {
    pub vlan: u16,
    pub mac: String,
    pub mtu: u16,
    pub addresses: Vec<String>,
    /// The DHCP server, when the interface answers DHCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpInfo>,
    pub stats: InterfaceStats,
}

/// What an interface's DHCP server hands out besides each port's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpInfo {
    pub dns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub lease_secs: u32,
}

/// Counters of one router interface, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InterfaceStats {
    /// Frames to the router through this interface (routed, ARP/ND, to its addresses).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets routed out of this interface.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// ARP requests / neighbour solicitations for the interface's addresses answered.
    pub neigh_replies: u64,
    /// ARP requests / neighbour solicitations sent to resolve next hops.
    pub neigh_probes: u64,
    pub echo_replies: u64,
    /// DHCP offers, acks and naks sent; declines received.
    pub dhcp_offers: u64,
    pub dhcp_acks: u64,
    pub dhcp_naks: u64,
    pub dhcp_declines: u64,
    /// ICMP errors sent about packets that came in here.
    pub icmp_errors: u64,
    /// ICMP errors not sent because of the rate limit (1000/s, burst 50 per worker).
    pub icmp_rate_limited: u64,
    /// IPv4 packets fragmented to fit this interface's MTU.
    pub fragmented: u64,
    /// Drop reason -> packets dropped by the router that came in here (or, for
    /// `neighbour_failed`, were going out here).
    pub drops: BTreeMap<&'static str, u64>,
}

impl InterfaceStats {
    fn add(&mut self, c: &InterfaceCounters) {
        self.rx_packets += c.rx_packets.get();
        self.rx_bytes += c.rx_bytes.get();
        self.tx_packets += c.tx_packets.get();
        self.tx_bytes += c.tx_bytes.get();
        self.neigh_replies += c.neigh_replies.get();
        self.neigh_probes += c.neigh_probes.get();
        self.echo_replies += c.echo_replies.get();
        self.dhcp_offers += c.dhcp_offers.get();
        self.dhcp_acks += c.dhcp_acks.get();
        self.dhcp_naks += c.dhcp_naks.get();
        self.dhcp_declines += c.dhcp_declines.get();
        self.icmp_errors += c.icmp_errors.get();
        self.icmp_rate_limited += c.icmp_rate_limited.get();
        self.fragmented += c.fragmented.get();
        for r in DropReason::ALL {
            let n = c.drops[r.index()].get();
            if n > 0 {
                *self.drops.entry(r.as_str()).or_default() += n;
            }
        }
    }
}

/// One line of `route show`.
#[derive(Debug, Clone, Serialize)]
pub struct RouteInfo {
    pub prefix: String,
    /// "connected" (an interface's subnet), "static", or "unreachable".
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The VLAN of the interface the route leaves by (not for IPIP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encap: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// A gateway on the VLAN's link that no subnet of its interface holds.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub onlink: bool,
    /// The agent that manages the route (`"cluster"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One line of `neigh show`: a static suppression entry (`[[neigh]]`, state "PERMANENT") or
/// a next hop the router resolved.
#[derive(Debug, Clone, Serialize)]
pub struct NeighInfo {
    pub ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Resolved entries: milliseconds since last confirmed or updated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    /// Resolved entries: probes sent without an answer so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u8>,
    /// Resolved entries: packets waiting on the resolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
}

impl Switch {
    /// `interface add`.
    pub fn add_interface(&mut self, interface: InterfaceConfig) -> Result<(), SwitchError> {
        if self
            .config
            .interfaces
            .iter()
            .any(|i| i.vlan == interface.vlan)
        {
            return Err(SwitchError::InterfaceExists(interface.vlan));
        }
        let vlan = interface.vlan;
        let mut candidate = self.config.clone();
        candidate.interfaces.push(interface);
        let at = candidate.interfaces.len() - 1;
        let label = format!("interface[{at}] (vlan {vlan})");
        if let Err(e) = candidate.validate() {
            let field = e.field.replace(&label, &format!("interface {vlan}"));
            return Err(SwitchError::Config(ConfigError::new(field, e.message)));
        }
        self.reload(candidate).map(|_| ())
    }

    /// `interface del`: fails (naming the route) while a route's next hop is on its subnet.
    pub fn del_interface(&mut self, vlan: u16) -> Result<(), SwitchError> {
        if let Some(i) = self.config.interfaces.iter().find(|i| i.vlan == vlan) {
            self.may_change(|| format!("interface {vlan}"), &i.owner)?;
        }
        let mut candidate = self.config.clone();
        candidate.interfaces.retain(|i| i.vlan != vlan);
        if candidate.interfaces.len() == self.config.interfaces.len() {
            return Err(SwitchError::NoSuchInterface(vlan));
        }
        self.reload(candidate).map(|_| ())
    }

    /// `interface list`, with counters.
    pub fn list_interfaces(&self) -> Vec<InterfaceInfo> {
        self.routing
            .interfaces
            .iter()
            .map(|i| {
                let mut stats = InterfaceStats::default();
                for w in &self.workers {
                    stats.add(w.counters().interface(i.vlan));
                }
                InterfaceInfo {
                    vlan: i.vlan.get(),
                    mac: i.mac.to_string(),
                    mtu: i.mtu,
                    addresses: i
                        .v4
                        .iter()
                        .map(|(a, l)| format!("{a}/{l}"))
                        .chain(i.v6.iter().map(|(a, l)| format!("{a}/{l}")))
                        .collect(),
                    dhcp: i.dhcp.as_ref().map(|d| DhcpInfo {
                        dns: d.dns.iter().map(ToString::to_string).collect(),
                        domain: d.domain.clone(),
                        lease_secs: d.lease_secs,
                    }),
                    stats,
                }
            })
            .collect()
    }

    /// `route add`.
    pub fn add_route(&mut self, route: RouteConfig) -> Result<(), SwitchError> {
        let mut candidate = self.config.clone();
        let prefix = route.prefix.clone();
        candidate.routes.push(route);
        let at = candidate.routes.len() - 1;
        let label = format!("route[{at}] ({prefix})");
        if let Err(e) = candidate.validate() {
            let field = e.field.replace(&label, &format!("route {prefix}"));
            return Err(SwitchError::Config(ConfigError::new(field, e.message)));
        }
        self.reload(candidate).map(|_| ())
    }

    /// `route del PREFIX`.
    pub fn del_route(&mut self, prefix: &str) -> Result<(), SwitchError> {
        let (addr, len) = parse_cidr("route.prefix", prefix, true)?;
        if let Some(r) = self
            .config
            .routes
            .iter()
            .find(|r| parse_cidr("", &r.prefix, true).is_ok_and(|p| p == (addr, len)))
        {
            self.may_change(|| format!("route {prefix}"), &r.owner)?;
        }
        let mut candidate = self.config.clone();
        candidate.routes.retain(|r| {
            parse_cidr("", &r.prefix, true).map_or(true, |(a, l)| (a, l) != (addr, len))
        });
        if candidate.routes.len() == self.config.routes.len() {
            return Err(SwitchError::NoSuchRoute(prefix.to_string()));
        }
        self.reload(candidate).map(|_| ())
    }

    /// `route show`: the FIB, connected routes included, sorted by family and prefix.
    pub fn show_routes(&self) -> Vec<RouteInfo> {
        let mut routes: Vec<_> = self
            .routing
            .fib
            .iter()
            .filter_map(|(_, _, i)| self.routing.routes.get(i as usize))
            .collect();
        routes.sort_by(|a, b| {
            (a.prefix.is_ipv6(), a.prefix, a.len).cmp(&(b.prefix.is_ipv6(), b.prefix, b.len))
        });
        // The configured routes' onlink flag and owner, by prefix.
        let configured: hashbrown::HashMap<(IpAddr, u8), (bool, Option<String>)> = self
            .config
            .routes
            .iter()
            .filter_map(|r| {
                let p = parse_cidr("", &r.prefix, true).ok()?;
                Some((p, (r.onlink, r.owner.clone())))
            })
            .collect();
        routes
            .into_iter()
            .map(|r| {
                let (onlink, owner) = configured
                    .get(&(r.prefix, r.len))
                    .filter(|_| !r.connected)
                    .cloned()
                    .unwrap_or_default();
                let mut info = route_info(r);
                info.onlink = onlink;
                info.owner = owner;
                info
            })
            .collect()
    }

    /// `neigh show`: the static suppression entries, then the router's resolved next hops
    /// (from every worker), sorted by VLAN and address.
    pub fn show_neighbours(&self) -> Result<Vec<NeighInfo>, SwitchError> {
        let mut out: Vec<NeighInfo> = self
            .config
            .neigh
            .iter()
            .map(|n| NeighInfo {
                ip: n.ip.clone(),
                mac: Some(n.mac.clone()),
                state: "PERMANENT",
                vni: Some(n.vni),
                vlan: None,
                age_ms: None,
                probes: None,
                queued: None,
            })
            .collect();
        let mut resolved = BTreeMap::new();
        for r in self
            .tables()
            .dump_neighbours()
            .map_err(SwitchError::Worker)?
        {
            resolved.entry((r.key.vlan, r.key.ip)).or_insert(r);
        }
        out.extend(resolved.into_values().map(|r| NeighInfo {
            ip: r.key.ip.to_string(),
            mac: r.mac.map(|m| m.to_string()),
            state: r.state.as_str(),
            vni: None,
            vlan: Some(r.key.vlan.get()),
            age_ms: Some(r.age_ms),
            probes: Some(r.probes),
            queued: Some(r.queued),
        }));
        Ok(out)
    }

    /// Counters of the IPIP socket, summed over workers.
    pub(super) fn ipip_stats(&self) -> super::PortStats {
        let mut s = super::PortStats::default();
        for w in &self.workers {
            s.add(&w.counters().ipip);
        }
        s
    }
}

/// A FIB entry as `route show` prints it.
fn route_info(r: &Route) -> RouteInfo {
    let prefix = format!("{}/{}", r.prefix, r.len);
    let kind = if r.connected { "connected" } else { "static" };
    let base = RouteInfo {
        prefix,
        kind,
        via: None,
        vlan: None,
        encap: None,
        mtu: None,
        onlink: false,
        owner: None,
    };
    match r.next_hop {
        NextHop::Connected { vlan } => RouteInfo {
            vlan: Some(vlan.get()),
            ..base
        },
        NextHop::Gateway { vlan, via } => RouteInfo {
            via: Some(via.to_string()),
            vlan: Some(vlan.get()),
            ..base
        },
        NextHop::Ipip { remote, mtu, .. } => RouteInfo {
            via: Some(remote.to_string()),
            encap: Some("ipip"),
            mtu: Some(mtu),
            ..base
        },
        NextHop::Unreachable => RouteInfo {
            kind: "unreachable",
            ..base
        },
    }
}
