//! The etcd records of a cluster, in flannel's layout (flannel's `pkg/subnet`), plus the
//! Services tapswitch adds:
//!
//! - `<prefix>/config`: the network, written by the operator:
//!   `{"Network":"10.42.0.0/16","SubnetLen":24,"SubnetMin":"10.42.1.0","SubnetMax":"10.42.254.0",
//!   "Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":false}}`. Backend types:
//!   `vxlan`, `host-gw`, and `ipip` (a tapswitch extension: Calico-style IPv4-in-IPv4).
//! - `<prefix>/subnets/10.42.3.0-24`: a node's lease, attached to an etcd lease:
//!   `{"PublicIP":"192.168.205.2","PublicIPv6":null,"BackendType":"vxlan",
//!   "BackendData":{"VNI":1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}}`.
//! - `<prefix>/services/<name>`: a Service, the fields of `[[service]]` as JSON
//!   (`{"vip":"10.96.0.10","port":80,"backends":["10.42.3.5:8080"]}`); `name`, if given, must
//!   be the key's.
//!
//! Field names are matched without regard to case, as flannel's Go decoder does.

use std::net::Ipv4Addr;

use serde_json::{Map, Value};
use tapswitch_dataplane::pipeline::routing::mask_v4;
use tapswitch_dataplane::wire::EthernetAddress;

use crate::config::ServiceConfig;

/// flannel's default vxlan UDP port (the Linux kernel's default).
pub const FLANNEL_VXLAN_PORT: u16 = 8472;

/// An IPv4 prefix, host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, len: u8) -> Subnet {
        Subnet {
            addr: mask_v4(addr, len),
            len,
        }
    }

    /// The `n`th address of the subnet (0: the network address).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + n)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        mask_v4(ip, self.len) == self.addr
    }

    /// Whether the two overlap.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let len = self.len.min(other.len);
        mask_v4(self.addr, len) == mask_v4(other.addr, len)
    }

    /// The number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// The key name flannel gives a lease of this subnet: `10.42.3.0-24`.
    pub fn key_name(&self) -> String {
        format!("{}-{}", self.addr, self.len)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn parse_subnet(s: &str) -> Option<Subnet> {
    let (a, l) = s.split_once('/')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    (len <= 32 && mask_v4(addr, len) == addr).then_some(Subnet { addr, len })
}

/// The backend of the cluster network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vxlan {
        vni: u32,
        port: u16,
        direct_routing: bool,
    },
    HostGw,
    Ipip,
}

impl Backend {
    /// The `BackendType` of leases.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Ipip => "ipip",
        }
    }

    /// The pods' MTU on a 1500-byte underlay (flannel's FLANNEL_MTU).
    pub fn pod_mtu(&self) -> u32 {
        match self {
            Backend::Vxlan { .. } => 1450,
            Backend::HostGw => 1500,
            Backend::Ipip => 1480,
        }
    }
}

/// `<prefix>/config`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub network: Subnet,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: Backend,
}

/// A record that cannot be used, and why (naming the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError(pub String);

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, RecordError> {
    Err(RecordError(msg.into()))
}

/// The member `name` of `obj`, any case.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name)
        .or_else(|| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, RecordError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => err("not a JSON object"),
        Err(e) => err(format!("not JSON: {e}")),
    }
}

fn string<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, RecordError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => err(format!("{name}: not a string")),
    }
}

fn number(obj: &Map<String, Value>, name: &str, max: u64) -> Result<Option<u64>, RecordError> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => err(format!("{name}: {v} is not a number in 0..={max}")),
        },
    }
}

impl Network {
    /// Parses and checks `<prefix>/config` with flannel's defaults: `SubnetLen` 24 (or the
    /// network's length + 2 for networks smaller than a /22), `SubnetMin` the second subnet,
    /// `SubnetMax` the last, backend vxlan with VNI 1 and port 8472.
    pub fn parse(bytes: &[u8]) -> Result<Network, RecordError> {
        let obj = object(bytes)?;
        let Some(net) = string(&obj, "Network")? else {
            return err("Network: missing (an IPv4 prefix like 10.42.0.0/16)");
        };
        let Some(network) = parse_subnet(net) else {
            return err(format!(
                "Network: {net:?} is not an IPv4 prefix like 10.42.0.0/16 (host bits clear)"
            ));
        };
        if network.len > 28 {
            return err(format!("Network: {network} is too small (at most /28)"));
        }
        let subnet_len = match number(&obj, "SubnetLen", 32)? {
            Some(l) => {
                let l = l as u8;
                if l > 30 || l < network.len + 2 {
                    return err(format!(
                        "SubnetLen: {l} must be between {} and 30",
                        network.len + 2
                    ));
                }
                l
            }
            None if network.len <= 22 => 24,
            None => network.len + 2,
        };
        let step = 1u32 << (32 - u32::from(subnet_len));
        let first = u32::from(network.addr);
        let last = first + (network.size() as u32).wrapping_sub(step);
        let bound = |name: &str, default: u32| -> Result<Ipv4Addr, RecordError> {
            match string(&obj, name)? {
                None => Ok(Ipv4Addr::from(default)),
                Some(s) => {
                    let Ok(a) = s.parse::<Ipv4Addr>() else {
                        return err(format!("{name}: {s:?} is not an IPv4 address"));
                    };
                    if !network.contains(a) || u32::from(a) % step != 0 {
                        return err(format!(
                            "{name}: {a} is not a /{subnet_len} subnet of {network}"
                        ));
                    }
                    Ok(a)
                }
            }
        };
        let subnet_min = bound("SubnetMin", first + step)?;
        let subnet_max = bound("SubnetMax", last)?;
        if subnet_min > subnet_max {
            return err(format!(
                "SubnetMin: {subnet_min} is above SubnetMax {subnet_max}"
            ));
        }
        let backend = match field(&obj, "Backend") {
            None => Backend::Vxlan {
                vni: 1,
                port: FLANNEL_VXLAN_PORT,
                direct_routing: false,
            },
            Some(Value::Object(b)) => {
                let kind = string(b, "Type")?.unwrap_or("vxlan");
                match kind {
                    "vxlan" => {
                        let vni = number(b, "VNI", crate::config::VNI_MAX.into())?.unwrap_or(1);
                        let port = number(b, "Port", 65_535)?.unwrap_or(0) as u16;
                        let direct_routing = match field(b, "DirectRouting") {
                            None => false,
                            Some(Value::Bool(d)) => *d,
                            Some(_) => return err("Backend.DirectRouting: not true or false"),
                        };
                        Backend::Vxlan {
                            vni: vni as u32,
                            port: if port == 0 { FLANNEL_VXLAN_PORT } else { port },
                            direct_routing,
                        }
                    }
                    "host-gw" => Backend::HostGw,
                    "ipip" => Backend::Ipip,
                    other => {
                        return err(format!(
                            "Backend.Type: {other:?} is not a backend tapswitch runs (vxlan, host-gw, ipip)"
                        ))
                    }
                }
            }
            Some(_) => return err("Backend: not an object"),
        };
        Ok(Network {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// Whether `subnet` is one this network leases.
    pub fn leases(&self, subnet: &Subnet) -> bool {
        subnet.len == self.subnet_len
            && subnet.addr >= self.subnet_min
            && subnet.addr <= self.subnet_max
    }

    /// The subnets it leases, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Subnet> + '_ {
        let step = 1u64 << (32 - u32::from(self.subnet_len));
        let (min, max) = (
            u64::from(u32::from(self.subnet_min)),
            u64::from(u32::from(self.subnet_max)),
        );
        (0..)
            .map(move |i| min + i * step)
            .take_while(move |a| *a <= max)
            .map(move |a| Subnet::new(Ipv4Addr::from(a as u32), self.subnet_len))
    }
}

/// A node's lease: `<prefix>/subnets/<subnet>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Subnet,
    pub public_ip: Ipv4Addr,
    pub backend_type: String,
    /// vxlan: the VNI and the node's VTEP MAC.
    pub vni: Option<u32>,
    pub vtep_mac: Option<EthernetAddress>,
}

/// The subnet a key of `<prefix>/subnets/` names: `10.42.3.0-24` (an IPv6 part after `&`, as
/// dual-stack flannel writes, is ignored).
pub fn parse_subnet_key(name: &str) -> Option<Subnet> {
    let v4 = name.split('&').next()?;
    let (a, l) = v4.rsplit_once('-')?;
    parse_subnet(&format!("{a}/{l}"))
}

impl Lease {
    /// Parses the value of the lease of `subnet`.
    pub fn parse(subnet: Subnet, bytes: &[u8]) -> Result<Lease, RecordError> {
        let obj = object(bytes)?;
        let Some(ip) = string(&obj, "PublicIP")? else {
            return err("PublicIP: missing");
        };
        let Ok(public_ip) = ip.parse::<Ipv4Addr>() else {
            return err(format!("PublicIP: {ip:?} is not an IPv4 address"));
        };
        if public_ip.is_unspecified() || public_ip.is_multicast() || public_ip.is_broadcast() {
            return err(format!("PublicIP: {public_ip} cannot be a node's address"));
        }
        // flannel's default backend is udp; a lease without a type is not one we can reach.
        let backend_type = string(&obj, "BackendType")?.unwrap_or("udp").to_string();
        let (mut vni, mut vtep_mac) = (None, None);
        if backend_type == "vxlan" {
            let Some(Value::Object(data)) = field(&obj, "BackendData") else {
                return err("BackendData: missing (vxlan leases carry VNI and VtepMAC)");
            };
            vni = Some(
                number(data, "VNI", crate::config::VNI_MAX.into())?
                    .ok_or_else(|| RecordError("BackendData.VNI: missing".into()))?
                    as u32,
            );
            let Some(mac) = string(data, "VtepMAC")? else {
                return err("BackendData.VtepMAC: missing");
            };
            let mac: EthernetAddress = mac.parse().map_err(|_| {
                RecordError(format!("BackendData.VtepMAC: {mac:?} is not a MAC address"))
            })?;
            if !mac.is_unicast() || mac.is_zero() {
                return err(format!("BackendData.VtepMAC: {mac} is not a unicast MAC"));
            }
            vtep_mac = Some(mac);
        }
        Ok(Lease {
            subnet,
            public_ip,
            backend_type,
            vni,
            vtep_mac,
        })
    }

    /// The value flannel writes for this lease, byte for byte (its fields in its order).
    pub fn to_json(&self) -> String {
        let mut out = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":{}"#,
            self.public_ip,
            Value::String(self.backend_type.clone())
        );
        if let (Some(vni), Some(mac)) = (self.vni, self.vtep_mac) {
            out.push_str(&format!(
                r#","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}"#
            ));
        }
        out.push('}');
        out
    }
}

/// Parses `<prefix>/services/<name>`.
pub fn parse_service(name: &str, bytes: &[u8]) -> Result<ServiceConfig, RecordError> {
    let mut obj = object(bytes)?;
    match obj.get("name") {
        None => {
            obj.insert("name".into(), Value::String(name.to_string()));
        }
        Some(Value::String(n)) if n == name => {}
        Some(other) => return err(format!("name: {other} is not the key's name {name:?}")),
    }
    if obj.contains_key("owner") {
        return err("owner: not a field of a Service record");
    }
    let service: ServiceConfig =
        serde_json::from_value(Value::Object(obj)).map_err(|e| RecordError(e.to_string()))?;
    // The checks of `[[service]]` itself (addresses, ports, scheduler) are the switch's.
    Ok(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_config_with_flannel_defaults() {
        let n =
            Network::parse(br#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(n.subnet_len, 24);
        assert_eq!(n.subnet_min, Ipv4Addr::new(10, 42, 1, 0));
        assert_eq!(n.subnet_max, Ipv4Addr::new(10, 42, 255, 0));
        assert_eq!(
            n.backend,
            Backend::Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false
            }
        );
        assert_eq!(n.subnets().count(), 255);
        let n = Network::parse(
            br#"{"network":"10.42.0.0/24","subnetlen":26,"SubnetMax":"10.42.0.128",
                 "backend":{"type":"vxlan","vni":7,"port":4789,"directRouting":true}}"#,
        )
        .unwrap();
        assert_eq!(
            n.subnets().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["10.42.0.64/26", "10.42.0.128/26"]
        );
        assert_eq!(
            n.backend,
            Backend::Vxlan {
                vni: 7,
                port: 4789,
                direct_routing: true
            }
        );
        let n = Network::parse(br#"{"Network":"10.42.0.0/23","Backend":{"Type":"ipip"}}"#).unwrap();
        assert_eq!((n.subnet_len, n.backend), (25, Backend::Ipip));
        assert_eq!(
            Network::parse(br#"{"Network":"10.42.0.0/16","Backend":{"Type":"host-gw"}}"#)
                .unwrap()
                .backend,
            Backend::HostGw
        );
    }

    #[test]
    fn bad_network_configs_name_the_field() {
        for (text, want) in [
            (&b"nope"[..], "not JSON"),
            (b"[]", "not a JSON object"),
            (b"{}", "Network: missing"),
            (
                br#"{"Network":"10.42.0.1/16"}"#,
                "Network: \"10.42.0.1/16\"",
            ),
            (br#"{"Network":"10.42.0.0/30"}"#, "too small"),
            (
                br#"{"Network":"10.42.0.0/16","SubnetLen":17}"#,
                "SubnetLen: 17",
            ),
            (
                br#"{"Network":"10.42.0.0/16","SubnetMin":"10.43.0.0"}"#,
                "SubnetMin: 10.43.0.0 is not a /24 subnet",
            ),
            (
                br#"{"Network":"10.42.0.0/16","SubnetMin":"10.42.9.0","SubnetMax":"10.42.8.0"}"#,
                "SubnetMin: 10.42.9.0 is above",
            ),
            (
                br#"{"Network":"10.42.0.0/16","Backend":{"Type":"udp"}}"#,
                "Backend.Type: \"udp\"",
            ),
            (
                br#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan","VNI":-1}}"#,
                "VNI: -1",
            ),
        ] {
            let e = Network::parse(text).unwrap_err().0;
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn leases_in_flannels_format() {
        let s = parse_subnet_key("10.42.3.0-24").unwrap();
        assert_eq!(s.to_string(), "10.42.3.0/24");
        assert_eq!(s.key_name(), "10.42.3.0-24");
        assert_eq!(
            parse_subnet_key("10.42.3.0-24&fc00:0:0:3::-64"),
            Some(s),
            "dual-stack keys"
        );
        assert_eq!(parse_subnet_key("10.42.3.1-24"), None);
        assert_eq!(parse_subnet_key("garbage"), None);
        let flannel = br#"{"PublicIP":"192.168.205.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}}"#;
        let l = Lease::parse(s, flannel).unwrap();
        assert_eq!(l.public_ip, Ipv4Addr::new(192, 168, 205, 2));
        assert_eq!(l.vni, Some(1));
        assert_eq!(l.vtep_mac.unwrap().to_string(), "0a:1b:2c:3d:4e:5f");
        assert_eq!(l.to_json().as_bytes(), &flannel[..]);
        assert_eq!(Lease::parse(s, l.to_json().as_bytes()).unwrap(), l);
        let hostgw = Lease::parse(
            s,
            br#"{"PublicIP":"192.168.205.3","BackendType":"host-gw"}"#,
        )
        .unwrap();
        assert_eq!(hostgw.vtep_mac, None);
        for (text, want) in [
            (&br#"{"BackendType":"vxlan"}"#[..], "PublicIP: missing"),
            (br#"{"PublicIP":"x"}"#, "PublicIP: \"x\""),
            (br#"{"PublicIP":"1.2.3.4","BackendType":"vxlan"}"#, "BackendData: missing"),
            (
                br#"{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}}"#,
                "not a unicast MAC",
            ),
        ] {
            let e = Lease::parse(s, text).unwrap_err().0;
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn services_are_service_sections_as_json() {
        let s = parse_service(
            "web",
            br#"{"vip":"10.96.0.10","port":80,"backends":["10.42.3.5:8080",{"address":"10.42.4.5:8080","weight":2}]}"#,
        )
        .unwrap();
        assert_eq!((s.name.as_str(), s.port, s.backends.len()), ("web", 80, 2));
        assert!(
            parse_service("web", br#"{"name":"api","vip":"10.96.0.10","port":80}"#)
                .unwrap_err()
                .0
                .contains("not the key's name")
        );
        assert!(parse_service("web", br#"{"vip":"10.96.0.10","prot":80}"#)
            .unwrap_err()
            .0
            .contains("prot"));
        assert!(parse_service("web", br#"{"vip":"10.96.0.10","port":80,"owner":"x"}"#).is_err());
    }
}
