//! What a cluster node programs, as switch requests: its own entries (the pods' gateway, the
//! overlay, masquerade) and, for every other node's lease, what flanneld programs in the
//! kernel, in tapswitch's tables instead:
//!
//! - vxlan: `ip neigh replace <subnet.0> lladdr <VtepMAC> dev flannel.1 nud permanent` is a
//!   static neighbour on the overlay VNI; `bridge fdb replace <VtepMAC> dev flannel.1 dst
//!   <PublicIP>` a static FDB entry behind the VNI; `ip route replace <subnet> via <subnet.0>
//!   dev flannel.1 onlink` an onlink route on the overlay VLAN. The overlay VLAN's interface
//!   holds `<own subnet>.0/32` with this node's VtepMAC, as flannel.1 does. With
//!   `DirectRouting`, a node whose PublicIP is on the subnet of the underlay interface is
//!   routed to directly instead (`<subnet> via <PublicIP>`).
//! - host-gw: `<subnet> via <PublicIP>` on the underlay VLAN.
//! - ipip: `<subnet> via <PublicIP> encap ipip`.
//!
//! Every function here is pure: the agent diffs and sends what they return.

use std::net::Ipv4Addr;

use tapswitch_dataplane::pipeline::routing::same_subnet_v4;
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

use super::records::{Backend, Lease, Network, Subnet};
use crate::api::Request;
use crate::config::{
    Addresses, FdbConfig, InterfaceConfig, NeighConfig, RouteConfig, SnatConfig, VxlanConfig,
};

/// This node, once it holds a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub network: Network,
    pub subnet: Subnet,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: EthernetAddress,
    pub pod_vlan: VlanId,
    pub overlay_vlan: VlanId,
    pub underlay_vlan: Option<VlanId>,
    /// The addresses of the underlay VLAN's interface (direct routing, host-gw).
    pub underlay: Vec<(Ipv4Addr, u8)>,
    pub masquerade: bool,
}

impl Local {
    /// The lease this node publishes.
    pub fn lease(&self) -> Lease {
        let vxlan = match self.network.backend {
            Backend::Vxlan { vni, .. } => Some(vni),
            _ => None,
        };
        Lease {
            subnet: self.subnet,
            public_ip: self.public_ip,
            backend_type: self.network.backend.type_name().into(),
            vni: vxlan,
            vtep_mac: vxlan.map(|_| self.vtep_mac),
        }
    }

    /// The pods' gateway: the subnet's first address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.host(1)
    }

    /// This node's own entries, in the order they can be added.
    pub fn own(&self) -> Vec<Request> {
        let mut out = vec![Request::InterfaceAdd {
            interface: InterfaceConfig {
                vlan: self.pod_vlan.get(),
                address: Addresses::One(format!("{}/{}", self.gateway(), self.subnet.len)),
                ..Default::default()
            },
        }];
        if let Backend::Vxlan { vni, port, .. } = self.network.backend {
            out.push(Request::InterfaceAdd {
                interface: InterfaceConfig {
                    vlan: self.overlay_vlan.get(),
                    address: Addresses::One(format!("{}/32", self.subnet.addr)),
                    mac: Some(self.vtep_mac.to_string()),
                    mtu: Some(self.network.backend.pod_mtu()),
                    // The VTEP's /32 has no clients.
                    dhcp: Some(false),
                    ..Default::default()
                },
            });
            out.push(Request::VxlanAdd {
                vxlan: VxlanConfig {
                    vni,
                    vlan: Some(self.overlay_vlan.get()),
                    local: self.public_ip.to_string(),
                    port: Some(port),
                    learning: Some(false),
                    mtu: Some(self.network.backend.pod_mtu()),
                    ..Default::default()
                },
            });
        }
        if let (true, Some(out_vlan)) = (self.masquerade, self.underlay_vlan) {
            out.push(Request::SnatAdd {
                snat: SnatConfig {
                    source: self.network.network.to_string(),
                    out_vlan: out_vlan.get(),
                    except: Some(self.network.network.to_string()),
                    ..Default::default()
                },
            });
        }
        out
    }

    /// The removal of [`own`](Self::own), in the order it can be done.
    pub fn own_removal(&self) -> Vec<Request> {
        let mut out = Vec::new();
        if let (true, Some(out_vlan)) = (self.masquerade, self.underlay_vlan) {
            out.push(Request::SnatDel {
                source: self.network.network.to_string(),
                out_vlan: out_vlan.get(),
            });
        }
        if let Backend::Vxlan { vni, .. } = self.network.backend {
            out.push(Request::VxlanDel { vni });
            out.push(Request::InterfaceDel {
                vlan: self.overlay_vlan.get(),
            });
        }
        out.push(Request::InterfaceDel {
            vlan: self.pod_vlan.get(),
        });
        out
    }

    /// How `peer` is reached, or why it is not.
    pub fn reach(&self, peer: &Lease) -> Result<Reach, String> {
        if peer.subnet == self.subnet {
            return Err("this node's own subnet".into());
        }
        if !self.network.network.contains(peer.subnet.addr)
            || peer.subnet.len != self.network.subnet_len
        {
            return Err(format!(
                "{} is not a /{} subnet of the network {}",
                peer.subnet, self.network.subnet_len, self.network.network
            ));
        }
        if peer.public_ip == self.public_ip {
            return Err(format!(
                "claims this node's PublicIP {} (two nodes with one address)",
                self.public_ip
            ));
        }
        let on_underlay = self
            .underlay
            .iter()
            .any(|(a, l)| same_subnet_v4(*a, peer.public_ip, *l));
        let want = self.network.backend.type_name();
        if peer.backend_type != want {
            return Err(format!(
                "its backend is {:?}, the network's is {want:?}",
                peer.backend_type
            ));
        }
        match self.network.backend {
            Backend::Vxlan {
                vni,
                direct_routing,
                ..
            } => {
                if direct_routing && on_underlay {
                    return Ok(Reach::Direct);
                }
                if peer.vni != Some(vni) {
                    return Err(format!("its VNI is {:?}, the network's is {vni}", peer.vni));
                }
                match peer.vtep_mac {
                    Some(mac) => Ok(Reach::Vxlan { vni, mac }),
                    None => Err("no VtepMAC".into()),
                }
            }
            Backend::HostGw if on_underlay => Ok(Reach::Direct),
            Backend::HostGw => Err(format!(
                "host-gw needs its PublicIP {} on the subnet of the underlay interface{}",
                peer.public_ip,
                match self.underlay_vlan {
                    Some(v) => format!(" (VLAN {v})"),
                    None => " (cluster.underlay_vlan is not set)".into(),
                }
            )),
            Backend::Ipip => Ok(Reach::Ipip),
        }
    }

    /// The entries that reach `peer` (see [`reach`](Self::reach)).
    pub fn peer_entries(&self, peer: &Lease, reach: Reach) -> Vec<Request> {
        let prefix = peer.subnet.to_string();
        let via = peer.subnet.addr.to_string();
        match reach {
            Reach::Vxlan { vni, mac } => vec![
                Request::NeighAdd {
                    neigh: NeighConfig {
                        ip: via.clone(),
                        mac: mac.to_string(),
                        vni,
                        owner: None,
                    },
                },
                Request::FdbAdd {
                    entry: FdbConfig {
                        mac: mac.to_string(),
                        vni: Some(vni),
                        remote: Some(peer.public_ip.to_string()),
                        ..Default::default()
                    },
                },
                Request::RouteAdd {
                    route: RouteConfig {
                        prefix,
                        via: Some(via),
                        vlan: Some(self.overlay_vlan.get()),
                        onlink: true,
                        ..Default::default()
                    },
                },
            ],
            Reach::Direct => vec![Request::RouteAdd {
                route: RouteConfig {
                    prefix,
                    via: Some(peer.public_ip.to_string()),
                    vlan: self.underlay_vlan.map(VlanId::get),
                    ..Default::default()
                },
            }],
            Reach::Ipip => vec![Request::RouteAdd {
                route: RouteConfig {
                    prefix,
                    via: Some(peer.public_ip.to_string()),
                    encap: Some("ipip".into()),
                    ..Default::default()
                },
            }],
        }
    }

    /// The removal of [`peer_entries`](Self::peer_entries).
    pub fn peer_removal(&self, peer: &Lease, reach: Reach) -> Vec<Request> {
        let route = Request::RouteDel {
            prefix: peer.subnet.to_string(),
        };
        match reach {
            Reach::Vxlan { vni, mac } => vec![
                route,
                Request::FdbDel {
                    mac: mac.to_string(),
                    vlan: Some(self.overlay_vlan.get()),
                },
                Request::NeighDel {
                    ip: peer.subnet.addr.to_string(),
                    vni: Some(vni),
                },
            ],
            Reach::Direct | Reach::Ipip => vec![route],
        }
    }
}

/// How a peer's subnet is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Through the overlay to its VTEP.
    Vxlan { vni: u32, mac: EthernetAddress },
    /// Via its PublicIP on the underlay VLAN (host-gw, vxlan direct routing).
    Direct,
    /// IPIP to its PublicIP.
    Ipip,
}

impl Reach {
    pub fn describe(&self) -> &'static str {
        match self {
            Reach::Vxlan { .. } => "vxlan",
            Reach::Direct => "direct",
            Reach::Ipip => "ipip",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn local(backend: &str) -> Local {
        let network = Network::parse(
            format!(r#"{{"Network":"10.42.0.0/16","Backend":{backend}}}"#).as_bytes(),
        )
        .unwrap();
        Local {
            network,
            subnet: Subnet::new(Ipv4Addr::new(10, 42, 1, 0), 24),
            public_ip: Ipv4Addr::new(192, 168, 205, 2),
            vtep_mac: "02:aa:00:00:00:01".parse().unwrap(),
            pod_vlan: VlanId::new(10).unwrap(),
            overlay_vlan: VlanId::new(4094).unwrap(),
            underlay_vlan: Some(VlanId::new(100).unwrap()),
            underlay: vec![(Ipv4Addr::new(192, 168, 205, 2), 24)],
            masquerade: true,
        }
    }

    fn peer(n: u8, ip: [u8; 4], kind: &str) -> Lease {
        let text = format!(
            r#"{{"PublicIP":"{}","BackendType":"{kind}","BackendData":{{"VNI":1,"VtepMAC":"02:bb:00:00:00:{n:02x}"}}}}"#,
            Ipv4Addr::from(ip)
        );
        Lease::parse(
            Subnet::new(Ipv4Addr::new(10, 42, n, 0), 24),
            text.as_bytes(),
        )
        .unwrap()
    }

    /// A switch with the underlay interface the node's masquerade leaves by.
    fn switch() -> crate::Switch {
        let c = Config::from_toml("[[interface]]\nvlan = 100\naddress = \"192.168.205.2/24\"\n");
        crate::Switch::start(c.unwrap()).unwrap()
    }

    /// Applies requests to a configuration the way the switch's batch does, then validates.
    fn apply(reqs: Vec<Request>) -> Config {
        let mut s = switch();
        let r = s.batch(Some("cluster".into()), reqs).unwrap();
        assert_eq!(r.failed, 0, "{:?}", r.results);
        s.config().clone()
    }

    #[test]
    fn vxlan_peers_get_flannels_three_entries() {
        let mut l = local(r#"{"Type":"vxlan","Port":31011}"#);
        // The VTEP's socket is bound to the PublicIP: one this host has.
        l.public_ip = Ipv4Addr::LOCALHOST;
        let p = peer(7, [192, 168, 9, 7], "vxlan");
        let reach = l.reach(&p).unwrap();
        assert_eq!(
            reach,
            Reach::Vxlan {
                vni: 1,
                mac: "02:bb:00:00:00:07".parse().unwrap()
            }
        );
        let mut reqs = l.own();
        reqs.extend(l.peer_entries(&p, reach));
        let c = apply(reqs);
        assert_eq!(
            c.interfaces[1].address,
            Addresses::One("10.42.1.1/24".into())
        );
        assert_eq!(
            c.interfaces[2].address,
            Addresses::One("10.42.1.0/32".into())
        );
        assert_eq!(c.routes[0].via.as_deref(), Some("10.42.7.0"));
        assert!(c.routes[0].onlink);
        assert_eq!(c.fdb[0].remote.as_deref(), Some("192.168.9.7"));
        assert_eq!(c.neigh[0].ip, "10.42.7.0");
        assert_eq!(c.snat[0].source, "10.42.0.0/16");
        assert_eq!(c.snat[0].except.as_deref(), Some("10.42.0.0/16"));
        // Removal leaves nothing of the peer, and then nothing of the node.
        let mut s = switch();
        let mut reqs = l.own();
        reqs.extend(l.peer_entries(&p, reach));
        s.batch(Some("cluster".into()), reqs).unwrap();
        let r = s
            .batch(Some("cluster".into()), l.peer_removal(&p, reach))
            .unwrap();
        assert_eq!(r.failed, 0, "{:?}", r.results);
        assert_eq!(s.config().owned_entries(), 4, "the node's own four");
        let r = s.batch(Some("cluster".into()), l.own_removal()).unwrap();
        assert_eq!(r.failed, 0, "{:?}", r.results);
        assert_eq!(s.config().owned_entries(), 0);
    }

    #[test]
    fn direct_routing_host_gw_and_ipip() {
        let l = local(r#"{"Type":"vxlan","DirectRouting":true,"Port":31012}"#);
        assert_eq!(
            l.reach(&peer(3, [192, 168, 205, 3], "vxlan")),
            Ok(Reach::Direct)
        );
        assert!(matches!(
            l.reach(&peer(4, [192, 168, 9, 4], "vxlan")),
            Ok(Reach::Vxlan { .. })
        ));
        let l = local(r#"{"Type":"host-gw"}"#);
        assert_eq!(
            l.reach(&peer(3, [192, 168, 205, 3], "host-gw")),
            Ok(Reach::Direct)
        );
        let e = l.reach(&peer(4, [192, 168, 9, 4], "host-gw")).unwrap_err();
        assert!(e.contains("underlay interface (VLAN 100)"), "{e}");
        let e = l.reach(&peer(4, [192, 168, 9, 4], "vxlan")).unwrap_err();
        assert!(e.contains("its backend is \"vxlan\""), "{e}");
        let l = local(r#"{"Type":"ipip"}"#);
        let p = peer(5, [192, 168, 9, 5], "ipip");
        assert_eq!(l.reach(&p), Ok(Reach::Ipip));
        match &l.peer_entries(&p, Reach::Ipip)[0] {
            Request::RouteAdd { route } => {
                assert_eq!(route.encap.as_deref(), Some("ipip"));
                assert_eq!(route.via.as_deref(), Some("192.168.9.5"));
            }
            other => panic!("{other:?}"),
        }
        // Conflicts and strangers are not programmed.
        assert!(
            l.reach(&peer(1, [192, 168, 9, 9], "ipip")).is_err(),
            "own subnet"
        );
        assert!(l
            .reach(&peer(6, [192, 168, 205, 2], "ipip"))
            .unwrap_err()
            .contains("two nodes with one address"));
    }
}
