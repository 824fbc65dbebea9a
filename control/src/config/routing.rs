//! `[[interface]]` and `[[route]]`: the router's interfaces and static routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use tapswitch_dataplane::pipeline::routing::{mask_v4, mask_v6, same_subnet_v4, same_subnet_v6};
use tapswitch_dataplane::pipeline::{DhcpServer, Interface, NextHop};
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

use super::{parse_mac, parse_vlan, ConfigError, MTU_MAX, MTU_MIN};

/// One address or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Addresses {
    One(String),
    Many(Vec<String>),
}

impl Default for Addresses {
    fn default() -> Self {
        Addresses::Many(Vec::new())
    }
}

impl Addresses {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Addresses::One(a) => (Some(a.as_str()), &[][..]),
            Addresses::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }
}

/// `[[interface]]`: a router interface on a VLAN, holding the gateway address(es) of that
/// VLAN's hosts, like `cni0` or `docker0`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub vlan: u16,
    /// `"10.42.0.1/24"`, or a list mixing IPv4 and IPv6 (`["10.42.0.1/24", "fd42::1/64"]`).
    pub address: Addresses,
    /// Default: derived from the VLAN and the first address (stable across restarts, and
    /// different on two hosts sharing a VLAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Largest IP packet routed out of this interface; default 1500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Answer the VLAN's DHCP clients: each port gets its own address (`addresses`) on the
    /// interface's subnets, with the interface as gateway. Default: on when the interface
    /// has an IPv4 address. Off leaves DHCP to the VLAN (a server of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    /// DHCP: the DNS servers handed out (IPv4, at most 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// DHCP: the domain name handed out (option 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// DHCP: the lease time in seconds; default 86400 (a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u32>,
    /// The agent that manages this entry (`"cluster"`), set by the switch for the entries a
    /// `batch` with an `owner` adds. Such entries are not saved in the state directory (their
    /// agent restores them), are left out of `tapswitch config`, and only their agent may
    /// change or remove them. Never in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `[[route]]`: a static route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `"10.42.1.0/24"`, `"0.0.0.0/0"`, `"fd42:1::/64"`.
    pub prefix: String,
    /// The next hop: a gateway on an interface's subnet; with `encap = "ipip"`, the remote
    /// host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// `"ipip"`: IPv4-in-IPv4 to `via` through the host's routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<String>,
    /// IPIP: the outer source address; default: chosen by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// IPIP: the largest inner packet; default 1480 (1500 less the outer header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// IPIP: the outer TTL; default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    /// Instead of `via`: packets to the prefix are dropped with ICMP unreachable.
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub unreachable: bool,
    /// The VLAN whose interface `via` is reached on; default: the interface whose subnet
    /// holds `via`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// With `vlan`: `via` is on that VLAN's link even though no subnet of its interface holds
    /// it (like `ip route add ... via GW dev DEV onlink`; flannel's vxlan routes).
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub onlink: bool,
    /// The agent that manages this entry (`"cluster"`), set by the switch for the entries a
    /// `batch` with an `owner` adds. Such entries are not saved in the state directory (their
    /// agent restores them), are left out of `tapswitch config`, and only their agent may
    /// change or remove them. Never in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A validated interface.
pub type InterfaceSpec = Interface;

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub prefix: IpAddr,
    pub len: u8,
    pub next_hop: NextHop,
}

pub const INTERFACE_DEFAULT_MTU: u32 = 1500;
pub const IPIP_DEFAULT_MTU: u32 = 1480;

/// Parses `addr/len`; `len` is required when `need_len`, else a missing one means a host
/// prefix.
pub fn parse_cidr(field: &str, s: &str, need_len: bool) -> Result<(IpAddr, u8), ConfigError> {
    let bad = || {
        ConfigError::new(
            field,
            format!(
                "{s:?} is not an address with a prefix length, like 10.42.0.1/24 or fd42::1/64"
            ),
        )
    };
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
        None if need_len => return Err(bad()),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    if len > max {
        return Err(bad());
    }
    Ok((addr, len))
}

fn unusable(a: IpAddr) -> bool {
    a.is_unspecified() || a.is_loopback() || a.is_multicast() || a == Ipv4Addr::BROADCAST
}

/// A MAC for an interface that has none configured: locally administered, from a hash of the
/// VLAN and the first address.
pub fn derived_mac(vlan: VlanId, first: Option<IpAddr>) -> EthernetAddress {
    // FNV-1a over the VLAN and the address bytes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for b in vlan.get().to_be_bytes() {
        eat(b);
    }
    match first {
        Some(IpAddr::V4(a)) => a.octets().into_iter().for_each(&mut eat),
        Some(IpAddr::V6(a)) => a.octets().into_iter().for_each(&mut eat),
        None => {}
    }
    let b = h.to_be_bytes();
    EthernetAddress([0x02, b[1], b[2], b[3], b[4], b[5]])
}

impl InterfaceConfig {
    pub fn validate(&self, at: &str) -> Result<InterfaceSpec, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        let vlan = parse_vlan(&f("vlan"), self.vlan)?;
        let mut v4: Vec<(Ipv4Addr, u8)> = Vec::new();
        let mut v6: Vec<(Ipv6Addr, u8)> = Vec::new();
        for a in self.address.iter() {
            let (addr, len) = parse_cidr(&f("address"), a, true)?;
            if unusable(addr) {
                return Err(ConfigError::new(
                    f("address"),
                    format!("{addr} cannot be an interface address"),
                ));
            }
            let dup = match addr {
                IpAddr::V4(a) => v4.iter().any(|(o, _)| *o == a),
                IpAddr::V6(a) => v6.iter().any(|(o, _)| *o == a),
            };
            if dup {
                return Err(ConfigError::new(
                    f("address"),
                    format!("{addr} is listed twice"),
                ));
            }
            match addr {
                IpAddr::V4(a) => v4.push((a, len)),
                IpAddr::V6(a) => v6.push((a, len)),
            }
        }
        if v4.is_empty() && v6.is_empty() {
            return Err(ConfigError::new(f("address"), "names no address"));
        }
        let mtu = self.mtu.unwrap_or(INTERFACE_DEFAULT_MTU);
        if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
            return Err(ConfigError::new(
                f("mtu"),
                format!("{mtu} is out of range ({MTU_MIN}..={MTU_MAX})"),
            ));
        }
        if !v6.is_empty() && mtu < 1280 {
            return Err(ConfigError::new(
                f("mtu"),
                format!("{mtu} is below IPv6's minimum of 1280"),
            ));
        }
        let first = self
            .address
            .iter()
            .next()
            .and_then(|a| parse_cidr("", a, true).ok())
            .map(|(a, _)| a);
        let mac = match &self.mac {
            Some(m) => parse_mac(&f("mac"), m)?,
            None => derived_mac(vlan, first),
        };
        let dhcp = self.dhcp_server(&f, !v4.is_empty())?;
        Ok(Interface {
            vlan,
            mac,
            mtu: mtu.min(u32::from(u16::MAX)) as u16,
            v4,
            v6,
            dhcp,
        })
    }

    /// The interface's DHCP server, when on; `has_v4`: it has an IPv4 address.
    fn dhcp_server(
        &self,
        f: &dyn Fn(&str) -> String,
        has_v4: bool,
    ) -> Result<Option<DhcpServer>, ConfigError> {
        let on = match self.dhcp {
            Some(true) if !has_v4 => {
                return Err(ConfigError::new(
                    f("dhcp"),
                    "needs an IPv4 address on the interface",
                ))
            }
            Some(on) => on,
            None => has_v4,
        };
        let settings = if !self.dns.is_empty() {
            Some("dns")
        } else if self.domain.is_some() {
            Some("domain")
        } else if self.lease_secs.is_some() {
            Some("lease_secs")
        } else {
            None
        };
        if !on {
            if let Some(key) = settings {
                return Err(ConfigError::new(
                    f(key),
                    "is a DHCP setting, and the interface does not serve DHCP",
                ));
            }
            return Ok(None);
        }
        if self.dns.len() > DHCP_DNS_MAX {
            return Err(ConfigError::new(
                f("dns"),
                format!(
                    "lists {} servers; DHCP hands out at most {DHCP_DNS_MAX}",
                    self.dns.len()
                ),
            ));
        }
        let mut dns = Vec::new();
        for d in &self.dns {
            match d.parse::<Ipv4Addr>() {
                Ok(a) if !unusable(IpAddr::V4(a)) => dns.push(a),
                _ => {
                    return Err(ConfigError::new(
                        f("dns"),
                        format!("{d:?} is not a usable IPv4 address"),
                    ))
                }
            }
        }
        if let Some(d) = &self.domain {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if d.len() > 253 || !d.trim_end_matches('.').split('.').all(label_ok) {
                return Err(ConfigError::new(
                    f("domain"),
                    format!("{d:?} is not a domain name"),
                ));
            }
        }
        let lease_secs = self.lease_secs.unwrap_or(DHCP_LEASE_DEFAULT);
        if !(DHCP_LEASE_MIN..=DHCP_LEASE_MAX).contains(&lease_secs) {
            return Err(ConfigError::new(
                f("lease_secs"),
                format!("{lease_secs} is out of range ({DHCP_LEASE_MIN}..={DHCP_LEASE_MAX})"),
            ));
        }
        Ok(Some(DhcpServer {
            dns,
            domain: self
                .domain
                .as_ref()
                .map(|d| d.trim_end_matches('.').to_string()),
            lease_secs,
        }))
    }
}

/// Default of `[[interface]] lease_secs`: a day.
pub const DHCP_LEASE_DEFAULT: u32 = 86_400;
const DHCP_LEASE_MIN: u32 = 60;
/// A year: longer is as good as forever.
const DHCP_LEASE_MAX: u32 = 31_536_000;
/// DNS servers a DHCP reply carries at most.
const DHCP_DNS_MAX: usize = 3;

/// Whether `prefix/len` is the subnet of one of `iface`'s addresses.
pub(super) fn is_connected(iface: &Interface, prefix: IpAddr, len: u8) -> bool {
    match prefix {
        IpAddr::V4(p) => iface
            .v4
            .iter()
            .any(|(a, l)| *l == len && mask_v4(*a, len) == p),
        IpAddr::V6(p) => iface
            .v6
            .iter()
            .any(|(a, l)| *l == len && mask_v6(*a, len) == p),
    }
}

/// Whether `addr` is on the subnet of one of `iface`'s addresses.
fn on_link(iface: &Interface, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => iface.v4.iter().any(|(o, l)| same_subnet_v4(*o, a, *l)),
        IpAddr::V6(a) => iface.v6.iter().any(|(o, l)| same_subnet_v6(*o, a, *l)),
    }
}

fn owns(iface: &Interface, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => iface.v4.iter().any(|(o, _)| *o == a),
        IpAddr::V6(a) => iface.v6.iter().any(|(o, _)| *o == a),
    }
}

impl RouteConfig {
    /// Checks this route against the validated interfaces.
    pub fn validate(&self, at: &str, interfaces: &[Interface]) -> Result<RouteSpec, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        let (prefix, len) = parse_cidr(&f("prefix"), &self.prefix, true)?;
        let masked = match prefix {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(a, len)),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(a, len)),
        };
        if masked != prefix {
            return Err(ConfigError::new(
                f("prefix"),
                format!("{prefix}/{len} has host bits set; the prefix is {masked}/{len}"),
            ));
        }
        let ipip = match self.encap.as_deref() {
            None | Some("none") => false,
            Some("ipip") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    f("encap"),
                    format!("{other:?} is not an encapsulation (ipip)"),
                ))
            }
        };
        if !ipip {
            for (key, set) in [
                ("local", self.local.is_some()),
                ("mtu", self.mtu.is_some()),
                ("ttl", self.ttl.is_some()),
            ] {
                if set {
                    return Err(ConfigError::new(f(key), "only for encap = \"ipip\""));
                }
            }
        }
        if ipip || self.unreachable {
            for (key, set) in [("vlan", self.vlan.is_some()), ("onlink", self.onlink)] {
                if set {
                    return Err(ConfigError::new(
                        f(key),
                        "only for a route via a gateway (not ipip or unreachable)",
                    ));
                }
            }
        }
        if self.unreachable {
            if self.via.is_some() || ipip {
                return Err(ConfigError::new(
                    f("unreachable"),
                    "an unreachable route has no via or encap",
                ));
            }
            return Ok(RouteSpec {
                prefix,
                len,
                next_hop: NextHop::Unreachable,
            });
        }
        let Some(via) = &self.via else {
            return Err(ConfigError::new(f("via"), "missing: the next hop"));
        };
        let via: IpAddr = via
            .parse()
            .map_err(|_| ConfigError::new(f("via"), format!("{via:?} is not an IP address")))?;
        if unusable(via) {
            return Err(ConfigError::new(
                f("via"),
                format!("{via} cannot be a next hop"),
            ));
        }
        if interfaces.iter().any(|i| owns(i, via)) {
            return Err(ConfigError::new(
                f("via"),
                format!("{via} is one of the router's own addresses"),
            ));
        }
        if ipip {
            let (IpAddr::V4(_), IpAddr::V4(remote)) = (prefix, via) else {
                return Err(ConfigError::new(
                    f("encap"),
                    "ipip carries IPv4: the prefix and via must be IPv4",
                ));
            };
            let local = match &self.local {
                Some(l) => Some(super::parse_ipv4(&f("local"), l)?),
                None => None,
            };
            let mtu = self.mtu.unwrap_or(IPIP_DEFAULT_MTU);
            if !(MTU_MIN..=65_515).contains(&mtu) {
                return Err(ConfigError::new(
                    f("mtu"),
                    format!("{mtu} is out of range ({MTU_MIN}..=65515)"),
                ));
            }
            let ttl = self.ttl.unwrap_or(64);
            if ttl == 0 {
                return Err(ConfigError::new(f("ttl"), "0 is not a TTL"));
            }
            return Ok(RouteSpec {
                prefix,
                len,
                next_hop: NextHop::Ipip {
                    remote,
                    local,
                    mtu: mtu as u16,
                    ttl,
                },
            });
        }
        if prefix.is_ipv4() != via.is_ipv4() {
            return Err(ConfigError::new(
                f("via"),
                format!("{via} is not of the prefix's address family"),
            ));
        }
        let iface = match self.vlan {
            Some(v) => {
                let vlan = parse_vlan(&f("vlan"), v)?;
                let Some(iface) = interfaces.iter().find(|i| i.vlan == vlan) else {
                    return Err(ConfigError::new(
                        f("vlan"),
                        format!("VLAN {vlan} has no interface"),
                    ));
                };
                if self.onlink {
                    let has_family = match via {
                        IpAddr::V4(_) => !iface.v4.is_empty(),
                        IpAddr::V6(_) => !iface.v6.is_empty(),
                    };
                    if !has_family {
                        return Err(ConfigError::new(
                            f("via"),
                            format!(
                                "the interface on VLAN {vlan} has no address of {via}'s family"
                            ),
                        ));
                    }
                } else if !on_link(iface, via) {
                    return Err(ConfigError::new(
                        f("via"),
                        format!(
                            "{via} is not on the subnet of the interface on VLAN {vlan} \
                             (onlink = true says it is on its link anyway)"
                        ),
                    ));
                }
                iface
            }
            None if self.onlink => {
                return Err(ConfigError::new(
                    f("onlink"),
                    "needs vlan: the interface whose link the gateway is on",
                ))
            }
            None => match interfaces.iter().find(|i| on_link(i, via)) {
                Some(iface) => iface,
                None => {
                    return Err(ConfigError::new(
                        f("via"),
                        format!("{via} is not on the subnet of any interface"),
                    ))
                }
            },
        };
        Ok(RouteSpec {
            prefix,
            len,
            next_hop: NextHop::Gateway {
                vlan: iface.vlan,
                via,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    /// The issue's example, with the interfaces its gateways need.
    const EXAMPLE: &str = r#"
[[interface]]
vlan = 10
address = "10.42.0.1/24"
mac = "02:00:00:00:00:fe"
[[interface]]
vlan = 100
address = ["10.200.0.1/24", "192.168.205.2/24", "fd00:200::1/64"]
[[route]]
prefix = "10.42.1.0/24"
via = "192.168.205.3"
[[route]]
prefix = "10.42.2.0/24"
via = "192.168.205.5"
encap = "ipip"
[[route]]
prefix = "0.0.0.0/0"
via = "10.200.0.254"
[[route]]
prefix = "fd42:1::/64"
via = "fd00:200::3"
[[route]]
prefix = "10.99.0.0/16"
unreachable = true
"#;

    fn err(extra: &str) -> String {
        let text = format!("{EXAMPLE}{extra}");
        match Config::from_toml(&text).and_then(|c| c.validate().map(|_| ())) {
            Ok(()) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_issue_example_validates() {
        let v = Config::from_toml(EXAMPLE).unwrap().validate().unwrap();
        assert_eq!(v.interfaces.len(), 2);
        assert_eq!(v.interfaces[1].v4.len(), 2);
        assert_eq!(v.interfaces[1].v6.len(), 1);
        assert_eq!(v.routes.len(), 5);
        assert_ne!(v.interfaces[0].mac, v.interfaces[1].mac);
        // Round trip through TOML.
        let again = Config::from_toml(&Config::from_toml(EXAMPLE).unwrap().to_toml()).unwrap();
        assert_eq!(again, Config::from_toml(EXAMPLE).unwrap());
    }

    #[test]
    fn dhcp_is_on_where_there_is_ipv4() {
        let text = format!(
            "{EXAMPLE}[[interface]]\nvlan = 11\naddress = \"fd11::1/64\"\n\
             [[interface]]\nvlan = 12\naddress = \"10.12.0.1/24\"\ndhcp = false\n\
             [[interface]]\nvlan = 13\naddress = \"10.13.0.1/24\"\ndns = [\"10.13.0.53\"]\n\
             domain = \"pods.example.\"\nlease_secs = 600\n"
        );
        let v = Config::from_toml(&text).unwrap().validate().unwrap();
        let dhcp: Vec<_> = v.interfaces.iter().map(|i| i.dhcp.clone()).collect();
        let default = DhcpServer {
            dns: vec![],
            domain: None,
            lease_secs: DHCP_LEASE_DEFAULT,
        };
        assert_eq!(dhcp[0], Some(default.clone()));
        assert_eq!(dhcp[1], Some(default));
        assert_eq!((&dhcp[2], &dhcp[3]), (&None, &None));
        assert_eq!(
            dhcp[4],
            Some(DhcpServer {
                dns: vec![Ipv4Addr::new(10, 13, 0, 53)],
                domain: Some("pods.example".into()),
                lease_secs: 600,
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (extra, want) in [
            (
                "[[route]]\nprefix = \"10.7.0.0/16\"\nvia = \"10.9.9.9\"\n",
                "route[5] (10.7.0.0/16).via: 10.9.9.9 is not on the subnet of any interface",
            ),
            (
                "[[route]]\nprefix = \"10.7.0.1/16\"\nvia = \"10.200.0.9\"\n",
                "route[5] (10.7.0.1/16).prefix: 10.7.0.1/16 has host bits set",
            ),
            (
                "[[route]]\nprefix = \"10.42.1.0/24\"\nvia = \"10.200.0.9\"\n",
                "route[5] (10.42.1.0/24).prefix: 10.42.1.0/24 is defined twice",
            ),
            (
                "[[route]]\nprefix = \"10.42.0.0/24\"\nvia = \"10.200.0.9\"\n",
                "route[5] (10.42.0.0/24).prefix: 10.42.0.0/24 is the connected subnet of the interface on VLAN 10",
            ),
            (
                "[[route]]\nprefix = \"fd99::/64\"\nvia = \"192.168.205.7\"\nencap = \"ipip\"\n",
                "route[5] (fd99::/64).encap: ipip carries IPv4",
            ),
            (
                "[[route]]\nprefix = \"10.8.0.0/16\"\nvia = \"10.200.0.9\"\nencap = \"gre\"\n",
                "route[5] (10.8.0.0/16).encap: \"gre\" is not an encapsulation",
            ),
            (
                "[[route]]\nprefix = \"10.8.0.0/16\"\nvia = \"10.200.0.9\"\nmtu = 1400\n",
                "route[5] (10.8.0.0/16).mtu: only for encap = \"ipip\"",
            ),
            (
                "[[route]]\nprefix = \"10.8.0.0/16\"\nvia = \"10.200.0.1\"\n",
                "route[5] (10.8.0.0/16).via: 10.200.0.1 is one of the router's own addresses",
            ),
            (
                "[[interface]]\nvlan = 10\naddress = \"10.43.0.1/24\"\n",
                "interface[2] (vlan 10).vlan: VLAN 10 already has an interface",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"10.42.0.9/24\"\n",
                "interface[2] (vlan 11).address: 10.42.0.9/24 clashes with 10.42.0.1/24",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"bogus\"\n",
                "interface[2] (vlan 11).address: \"bogus\" is not an address",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"10.43.0.1\"\n",
                "interface[2] (vlan 11).address: \"10.43.0.1\" is not an address with a prefix",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = []\n",
                "interface[2] (vlan 11).address: names no address",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"fd11::1/64\"\nmtu = 1200\n",
                "interface[2] (vlan 11).mtu: 1200 is below IPv6's minimum",
            ),
            (
                "[[interface]]\nvlan = 4095\naddress = \"10.43.0.1/24\"\n",
                "interface[2] (vlan 4095).vlan",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"fd11::1/64\"\ndhcp = true\n",
                "interface[2] (vlan 11).dhcp: needs an IPv4 address on the interface",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"10.43.0.1/24\"\ndhcp = false\ndns = [\"10.43.0.53\"]\n",
                "interface[2] (vlan 11).dns: is a DHCP setting, and the interface does not serve DHCP",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"10.43.0.1/24\"\ndns = [\"1.1.1.1\", \"1.0.0.1\", \"8.8.8.8\", \"9.9.9.9\"]\n",
                "interface[2] (vlan 11).dns: lists 4 servers; DHCP hands out at most 3",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"10.43.0.1/24\"\ndns = [\"fd00::53\"]\n",
                "interface[2] (vlan 11).dns: \"fd00::53\" is not a usable IPv4 address",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"10.43.0.1/24\"\ndomain = \"bad domain\"\n",
                "interface[2] (vlan 11).domain: \"bad domain\" is not a domain name",
            ),
            (
                "[[interface]]\nvlan = 11\naddress = \"10.43.0.1/24\"\nlease_secs = 5\n",
                "interface[2] (vlan 11).lease_secs: 5 is out of range (60..=31536000)",
            ),
        ] {
            let e = err(extra);
            assert!(e.starts_with(want), "{extra}\n  got: {e}\n want: {want}");
        }
    }
}
