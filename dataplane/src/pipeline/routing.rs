//! The compiled routing state: router interfaces, the FIB and the IPIP peers. Part of the
//! published [`ForwardingState`](super::ForwardingState), behind its own `Arc` so that a
//! change elsewhere (a port, an FDB entry) reuses it instead of rebuilding a large FIB.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::{HashMap, HashSet};

use crate::tables::Fib;
use crate::wire::{EthernetAddress, VlanId};

/// A router interface: the switch's own address(es) on one VLAN, like `cni0` or `docker0`
/// holding the containers' gateway address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub vlan: VlanId,
    pub mac: EthernetAddress,
    /// Largest IP packet routed out of this interface.
    pub mtu: u16,
    /// IPv4 addresses with their prefix lengths, the first one primary.
    pub v4: Vec<(Ipv4Addr, u8)>,
    /// IPv6 addresses with their prefix lengths, the first one primary.
    pub v6: Vec<(Ipv6Addr, u8)>,
    /// DHCPv4 served on this VLAN (see [`router::dhcp`](super::router::dhcp)), when on.
    pub dhcp: Option<DhcpServer>,
}

/// What the DHCP server of an interface hands out besides the address, prefix, gateway and
/// MTU it derives from the interface and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpServer {
    /// DNS servers (option 6), at most three.
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Lease time in seconds (option 51); renewal (T1) at half, rebinding (T2) at 7/8.
    pub lease_secs: u32,
}

impl Interface {
    /// The interface's IPv4 address for talking to `peer`: the one whose subnet holds it,
    /// else the primary.
    pub fn v4_source_for(&self, peer: Ipv4Addr) -> Option<Ipv4Addr> {
        self.v4
            .iter()
            .find(|(a, len)| same_subnet_v4(*a, peer, *len))
            .or(self.v4.first())
            .map(|(a, _)| *a)
    }

    /// The interface's IPv6 address for talking to `peer`, chosen as for IPv4.
    pub fn v6_source_for(&self, peer: Ipv6Addr) -> Option<Ipv6Addr> {
        self.v6
            .iter()
            .find(|(a, len)| same_subnet_v6(*a, peer, *len))
            .or(self.v6.first())
            .map(|(a, _)| *a)
    }

    pub fn source_for(&self, peer: IpAddr) -> Option<IpAddr> {
        match peer {
            IpAddr::V4(p) => self.v4_source_for(p).map(IpAddr::V4),
            IpAddr::V6(p) => self.v6_source_for(p).map(IpAddr::V6),
        }
    }
}

pub fn same_subnet_v4(a: Ipv4Addr, b: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(a) & mask == u32::from(b) & mask
}

pub fn same_subnet_v6(a: Ipv6Addr, b: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    };
    u128::from(a) & mask == u128::from(b) & mask
}

/// Where a route sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// The destination is on the subnet of the interface on `vlan`: resolve it directly.
    Connected { vlan: VlanId },
    /// Through the gateway `via`, on the subnet of the interface on `vlan` (host-gw).
    Gateway { vlan: VlanId, via: IpAddr },
    /// IPv4-in-IPv4 (RFC 2003) to the host `remote`, sent through the host's own routing.
    Ipip {
        remote: Ipv4Addr,
        /// Outer source; `None` lets the host choose.
        local: Option<Ipv4Addr>,
        /// Largest inner packet (the underlay MTU less the 20-byte outer header).
        mtu: u16,
        /// Outer TTL.
        ttl: u8,
    },
    /// Dropped, answered with ICMP unreachable (like `ip route add unreachable`).
    Unreachable,
}

/// One FIB entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The prefix, host bits clear.
    pub prefix: IpAddr,
    pub len: u8,
    pub next_hop: NextHop,
    /// A connected route of an interface address (not configured as a `[[route]]`).
    pub connected: bool,
}

/// Upper bound on resolved next hops each worker keeps, unless configured otherwise.
pub const NEIGH_MAX_DEFAULT: usize = 16_384;

/// Everything the L3 stage reads.
#[derive(Debug, Clone)]
pub struct RoutingState {
    pub interfaces: Vec<Interface>,
    /// Indexed by VLAN id: the index of that VLAN's interface in `interfaces`.
    by_vlan: Vec<Option<u16>>,
    /// Addresses owned by the router -> the VLAN of the interface holding them.
    pub local: HashMap<IpAddr, VlanId>,
    /// Indexed by the values stored in `fib`.
    pub routes: Vec<Route>,
    pub fib: Fib,
    /// IPIP is accepted only from these outer sources (the hosts of `ipip` routes).
    pub ipip_peers: HashSet<Ipv4Addr>,
    /// Bound on each worker's neighbour table.
    pub neigh_max: usize,
}

impl Default for RoutingState {
    fn default() -> Self {
        RoutingState {
            interfaces: Vec::new(),
            by_vlan: vec![None; 4096],
            local: HashMap::new(),
            routes: Vec::new(),
            fib: Fib::new(),
            ipip_peers: HashSet::new(),
            neigh_max: NEIGH_MAX_DEFAULT,
        }
    }
}

/// A route that the FIB refused (its prefix length does not fit its family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRoute(pub usize);

impl RoutingState {
    /// Builds the state from interfaces and configured routes: each interface address adds a
    /// connected route for its subnet; configured routes override connected ones of the same
    /// prefix. IPIP peers are the remotes of the IPIP routes.
    pub fn build(
        interfaces: Vec<Interface>,
        configured: Vec<Route>,
        neigh_max: usize,
    ) -> Result<RoutingState, BadRoute> {
        let mut state = RoutingState {
            neigh_max,
            ..RoutingState::default()
        };
        for (i, iface) in interfaces.iter().enumerate() {
            state.by_vlan[iface.vlan.get() as usize] = Some(i as u16);
            for (a, len) in &iface.v4 {
                state.local.insert(IpAddr::V4(*a), iface.vlan);
                let net = mask_v4(*a, *len);
                state.routes.push(Route {
                    prefix: IpAddr::V4(net),
                    len: *len,
                    next_hop: NextHop::Connected { vlan: iface.vlan },
                    connected: true,
                });
            }
            for (a, len) in &iface.v6 {
                state.local.insert(IpAddr::V6(*a), iface.vlan);
                state.routes.push(Route {
                    prefix: IpAddr::V6(mask_v6(*a, *len)),
                    len: *len,
                    next_hop: NextHop::Connected { vlan: iface.vlan },
                    connected: true,
                });
            }
        }
        state.interfaces = interfaces;
        for mut r in configured {
            r.prefix = match r.prefix {
                IpAddr::V4(a) => IpAddr::V4(mask_v4(a, r.len)),
                IpAddr::V6(a) => IpAddr::V6(mask_v6(a, r.len)),
            };
            if let NextHop::Ipip { remote, .. } = r.next_hop {
                state.ipip_peers.insert(remote);
            }
            state.routes.push(r);
        }
        // Later entries win for the same prefix: configured routes over connected ones.
        for (i, r) in state.routes.iter().enumerate() {
            state
                .fib
                .insert(r.prefix, r.len, i as u32)
                .map_err(|_| BadRoute(i))?;
        }
        Ok(state)
    }

    /// The interface on `vlan`.
    #[inline]
    pub fn interface(&self, vlan: VlanId) -> Option<&Interface> {
        self.by_vlan[vlan.get() as usize].map(|i| &self.interfaces[i as usize])
    }

    /// Whether any interface exists (the L3 stage is skipped when none does).
    #[inline]
    pub fn is_enabled(&self) -> bool {
        !self.interfaces.is_empty() || !self.routes.is_empty()
    }

    /// The route for `dst`, by longest prefix match.
    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<&Route> {
        self.fib
            .lookup(dst)
            .and_then(|i| self.routes.get(i as usize))
    }

    /// The address the router sends from to reach `peer`: that of the interface the route to
    /// `peer` leaves by, else the first address of the family on any interface.
    pub fn source_for(&self, peer: IpAddr) -> Option<IpAddr> {
        let via_route = self.lookup(peer).and_then(|r| match r.next_hop {
            NextHop::Connected { vlan } | NextHop::Gateway { vlan, .. } => {
                self.interface(vlan).and_then(|i| i.source_for(peer))
            }
            NextHop::Ipip { local, .. } => local.map(IpAddr::V4),
            NextHop::Unreachable => None,
        });
        via_route.or_else(|| self.interfaces.iter().find_map(|i| i.source_for(peer)))
    }
}

pub fn mask_v4(a: Ipv4Addr, len: u8) -> Ipv4Addr {
    if len == 0 {
        return Ipv4Addr::UNSPECIFIED;
    }
    Ipv4Addr::from(u32::from(a) & (u32::MAX << (32 - u32::from(len.min(32)))))
}

pub fn mask_v6(a: Ipv6Addr, len: u8) -> Ipv6Addr {
    if len == 0 {
        return Ipv6Addr::UNSPECIFIED;
    }
    Ipv6Addr::from(u128::from(a) & (u128::MAX << (128 - u32::from(len.min(128)))))
}
