//! The forwarding state: the dataplane's public contract.
//!
//! Control compiles configuration into a [`ForwardingState`], wraps it in an `Arc` and publishes
//! it; workers adopt a new one between batches, so a frame is always processed against one
//! whole state, never half an update. It is immutable once published.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hashbrown::HashMap;

use super::rate::RateLimits;
use super::storm::StormControl;
use super::RoutingState;
use crate::tables::policy::PolicyTable;
use crate::tables::{FdbKey, NatRules, PortId};
use crate::wire::{EthernetAddress, VlanId};

/// A set of VLAN ids as a 4096-bit bitmap.
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet([u64; 64]);

impl Default for VlanSet {
    fn default() -> Self {
        VlanSet([0; 64])
    }
}

impl core::fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter().map(|v| v.get())).finish()
    }
}

impl VlanSet {
    pub fn insert(&mut self, vlan: VlanId) {
        let v = vlan.get() as usize;
        self.0[v / 64] |= 1 << (v % 64);
    }

    #[inline]
    pub fn contains(&self, vlan: VlanId) -> bool {
        let v = vlan.get() as usize;
        self.0[v / 64] & (1 << (v % 64)) != 0
    }

    pub fn iter(&self) -> impl Iterator<Item = VlanId> + '_ {
        (VlanId::MIN..=VlanId::MAX)
            .filter_map(VlanId::new)
            .filter(|v| self.contains(*v))
    }
}

impl FromIterator<VlanId> for VlanSet {
    fn from_iter<I: IntoIterator<Item = VlanId>>(iter: I) -> Self {
        let mut set = VlanSet::default();
        for v in iter {
            set.insert(v);
        }
        set
    }
}

/// How a port maps frames to VLANs.
// The trunk's 512-byte bitmap is inline on purpose: a state is built once per publication,
// and the per-frame membership test should not chase a pointer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMode {
    /// One VLAN, untagged on the wire. A tagged frame is accepted only if tagged with this
    /// VLAN (or priority-tagged, VID 0); egress frames leave untagged.
    Access(VlanId),
    /// 802.1Q-tagged frames of the `allowed` VLANs. Untagged frames belong to `native` (and
    /// leave untagged for it) or are dropped when there is none.
    Trunk {
        allowed: VlanSet,
        native: Option<VlanId>,
    },
}

impl PortMode {
    pub fn is_member(&self, vlan: VlanId) -> bool {
        match self {
            PortMode::Access(v) => *v == vlan,
            PortMode::Trunk { allowed, native } => allowed.contains(vlan) || *native == Some(vlan),
        }
    }

    /// Whether frames of `vlan` leave this port with an 802.1Q tag.
    pub fn tags_egress(&self, vlan: VlanId) -> bool {
        match self {
            PortMode::Access(_) => false,
            PortMode::Trunk { native, .. } => *native != Some(vlan),
        }
    }
}

/// What the pipeline knows about one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortState {
    pub name: String,
    pub mode: PortMode,
    /// Largest L3 payload (IP packet) accepted; the frame may add 14 bytes, 18 when tagged.
    pub mtu: u16,
    /// Bound on MACs learned on this port.
    pub max_macs: u32,
}

/// An IPv4 prefix, for VXLAN `allow` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Prefix {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len.min(32))
        };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

/// Where a VXLAN port's frames are sent from and received at: one UDP socket each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelEndpoint {
    pub local: Ipv4Addr,
    pub port: u16,
}

/// What a port with port security may send (see [`security`](super::security)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSecurity {
    /// The port's own MAC: the only source MAC it may send from, besides `pairs`.
    pub mac: EthernetAddress,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// Its IPv6 addresses, its link-local address included.
    pub ipv6: Vec<Ipv6Addr>,
    /// Allowed address pairs: a prefix it may also send from, with the MAC it may use for
    /// it (`None`: its own MAC).
    pub pairs: Vec<AllowedPair>,
    /// May send router advertisements.
    pub allow_ra: bool,
    /// May send DHCP server messages (UDP from port 67 or 547).
    pub allow_dhcp_server: bool,
}

/// An allowed address pair: `prefix/len` from `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedPair {
    pub prefix: IpAddr,
    pub len: u8,
    pub mac: Option<EthernetAddress>,
}

/// A VXLAN port: one VNI extending one VLAN to remote VTEPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPort {
    pub vni: u32,
    pub endpoint: TunnelEndpoint,
    /// Head-end replication list for broadcast, multicast and unknown unicast.
    pub remotes: Vec<Ipv4Addr>,
    /// Learn inner source MAC -> outer source IP.
    pub learning: bool,
    /// When not empty, VXLAN from any other source is dropped.
    pub allow: Vec<Ipv4Prefix>,
    /// Outer IPv4 TTL.
    pub ttl: u8,
}

impl VxlanPort {
    pub fn allows(&self, src: Ipv4Addr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|p| p.contains(src))
    }
}

/// A port in a VLAN's flood list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanMember {
    pub port: PortId,
    /// The frame leaves this port with an 802.1Q tag.
    pub tagged: bool,
}

/// [`ForwardingState::checks`]: some port has network policy.
pub const CHECK_POLICY: u8 = 1;
/// [`ForwardingState::checks`]: some port has rate limits.
pub const CHECK_RATE: u8 = 2;

/// Immutable forwarding state, compiled by control.
#[derive(Debug, Clone)]
pub struct ForwardingState {
    /// Increases with every publication.
    pub generation: u64,
    /// Indexed by [`PortId`]; `None` for free ids.
    pub ports: Vec<Option<PortState>>,
    /// Indexed by VLAN id (0..4096): the ports of that VLAN, in port id order.
    pub vlan_members: Vec<Vec<VlanMember>>,
    /// Static FDB entries: never age, never overwritten by learning.
    pub static_fdb: HashMap<FdbKey, PortId>,
    /// Learned entries idle this long are gone.
    pub mac_aging_ms: u64,
    /// Bound on the learned MAC table of each worker.
    pub mac_table_max: usize,
    /// Indexed by [`PortId`]: the VXLAN settings of ports that are VNIs.
    pub vxlan: Vec<Option<VxlanPort>>,
    /// Decapsulation: (endpoint, VNI) -> the VXLAN port.
    pub vni_ports: HashMap<(TunnelEndpoint, u32), PortId>,
    /// Static remote entries (`[[fdb]]` with `vni` and `remote`), keyed by the VNI's VLAN.
    pub static_remotes: HashMap<FdbKey, Ipv4Addr>,
    /// ARP/ND suppression: addresses answered locally, per VLAN.
    pub neighbours: HashMap<(VlanId, IpAddr), EthernetAddress>,
    /// Router interfaces, routes and IPIP peers; shared between publications that do not
    /// change them.
    pub routing: Arc<RoutingState>,
    /// Source NAT rules, port forwards and Services.
    pub nat: NatRules,
    /// Network policy: the classifiers of each port (shared between publications that do
    /// not change them). Set with [`set_policy`](Self::set_policy).
    pub policy: Arc<PolicyTable>,
    /// Which optional checks some port has ([`CHECK_POLICY`], [`CHECK_RATE`]): one byte the
    /// hot path reads, so that a switch without them pays one test per frame.
    pub checks: u8,
    /// Indexed by [`PortId`]: the port security of ports that have it.
    pub security: Vec<Option<PortSecurity>>,
    /// Indexed by [`PortId`]: the IPv4 addresses of each port's workload (its `addresses`),
    /// what the DHCP server of an interface hands out ([`router::dhcp`](super::router::dhcp)).
    pub addresses: Vec<Vec<Ipv4Addr>>,
    /// Indexed by [`PortId`]: the storm control of ports that have it (its limits' state is
    /// shared with the states published before and after).
    pub storm: Vec<Option<Arc<StormControl>>>,
    /// Indexed by [`PortId`]: the rate limits of ports that have them (their buckets' state
    /// is shared with the states published before and after); empty when no port has any.
    /// Set with [`set_rate_limits`](Self::set_rate_limits).
    pub rate: Vec<Option<Arc<RateLimits>>>,
}

impl Default for ForwardingState {
    fn default() -> Self {
        ForwardingState {
            generation: 0,
            ports: Vec::new(),
            vlan_members: vec![Vec::new(); 4096],
            static_fdb: HashMap::new(),
            mac_aging_ms: 300_000,
            mac_table_max: 65_536,
            vxlan: Vec::new(),
            vni_ports: HashMap::new(),
            static_remotes: HashMap::new(),
            neighbours: HashMap::new(),
            routing: Arc::new(RoutingState::default()),
            nat: NatRules::default(),
            policy: Arc::default(),
            checks: 0,
            security: Vec::new(),
            addresses: Vec::new(),
            storm: Vec::new(),
            rate: Vec::new(),
        }
    }
}

impl ForwardingState {
    /// A state with `ports` (indexed by id) and their VLAN flood lists derived from them.
    pub fn with_ports(ports: Vec<Option<PortState>>) -> ForwardingState {
        let mut state = ForwardingState {
            ports,
            ..ForwardingState::default()
        };
        state.rebuild_vlan_members();
        state
    }

    /// Recomputes the VLAN flood lists from the ports.
    pub fn rebuild_vlan_members(&mut self) {
        for members in &mut self.vlan_members {
            members.clear();
        }
        for (i, port) in self.ports.iter().enumerate() {
            let Some(port) = port else { continue };
            let id = PortId(i as u16);
            let vlans: Vec<VlanId> = match &port.mode {
                PortMode::Access(v) => vec![*v],
                PortMode::Trunk { allowed, native } => {
                    let mut v: Vec<VlanId> = allowed.iter().collect();
                    if let Some(n) = native {
                        if !allowed.contains(*n) {
                            v.push(*n);
                        }
                    }
                    v
                }
            };
            for vlan in vlans {
                self.vlan_members[vlan.get() as usize].push(VlanMember {
                    port: id,
                    tagged: port.mode.tags_egress(vlan),
                });
            }
        }
    }

    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortState> {
        self.ports.get(id.index()).and_then(Option::as_ref)
    }

    pub fn port_by_name(&self, name: &str) -> Option<(PortId, &PortState)> {
        self.ports.iter().enumerate().find_map(|(i, p)| match p {
            Some(p) if p.name == name => Some((PortId(i as u16), p)),
            _ => None,
        })
    }

    /// The storm control of `id`, if it has any.
    #[inline]
    pub fn storm_control(&self, id: PortId) -> Option<&StormControl> {
        self.storm.get(id.index()).and_then(Option::as_deref)
    }

    /// Publishes network policy.
    pub fn set_policy(&mut self, table: Arc<PolicyTable>) {
        self.checks = (self.checks & !CHECK_POLICY) | if table.active { CHECK_POLICY } else { 0 };
        self.policy = table;
    }

    /// Whether some port has network policy.
    #[inline(always)]
    pub fn policy_active(&self) -> bool {
        self.checks & CHECK_POLICY != 0
    }

    /// Whether some port has rate limits.
    #[inline(always)]
    pub fn rate_active(&self) -> bool {
        self.checks & CHECK_RATE != 0
    }

    /// Sets the ports' rate limits (by port id); none at all leaves the list empty.
    pub fn set_rate_limits(&mut self, rate: Vec<Option<Arc<RateLimits>>>) {
        self.rate = if rate.iter().any(Option::is_some) {
            rate
        } else {
            Vec::new()
        };
        self.checks =
            (self.checks & !CHECK_RATE) | if self.rate.is_empty() { 0 } else { CHECK_RATE };
    }

    /// The rate limits of `id`, if it has any.
    #[inline]
    pub fn rate_limits(&self, id: PortId) -> Option<&RateLimits> {
        self.rate.get(id.index()).and_then(Option::as_deref)
    }

    /// The port security of `id`, if it has any.
    #[inline]
    pub fn port_security(&self, id: PortId) -> Option<&PortSecurity> {
        self.security.get(id.index()).and_then(Option::as_ref)
    }

    /// The VXLAN settings of `id`, if it is a VXLAN port.
    #[inline]
    pub fn vxlan_port(&self, id: PortId) -> Option<&VxlanPort> {
        self.vxlan.get(id.index()).and_then(Option::as_ref)
    }

    #[inline]
    pub fn members(&self, vlan: VlanId) -> &[VlanMember] {
        &self.vlan_members[vlan.get() as usize]
    }
}
