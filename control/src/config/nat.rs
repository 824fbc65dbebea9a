//! `[[snat]]`, `[[dnat]]` and `[[service]]`: source NAT and masquerade, port forwards, and
//! load-balanced Services (a ClusterIP, optionally a NodePort). All IPv4.
//!
//! Each entry is first checked on its own against the router interfaces (`validate`), then
//! against the others through a [`NatIndex`] of Service names and frontends. The full
//! validation ([`Config::validate_nat`](super::Config::validate_nat)) builds the index from
//! scratch; the switch keeps its own so that adding, changing or removing one Service is
//! checked in O(that Service's backends), however many other Services there are.
//!
//! Rules a frontend obeys:
//! - a (protocol, address, port) is the frontend of one Service or one port forward;
//! - a node port is unique per protocol, and no frontend on a router interface address has
//!   the node port's port (the node port listens on every such address);
//! - a Service VIP or port forward address on a connected subnet must be the router
//!   interface's own address: hosts on that subnet ARP for it and only the router answers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Deserializer, Serialize};
use tapswitch_dataplane::pipeline::routing::{mask_v4, same_subnet_v4};
use tapswitch_dataplane::pipeline::Interface;
use tapswitch_dataplane::tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use tapswitch_dataplane::tables::{Frontend, Scheduler, SnatRule};

use super::{parse_cidr, parse_vlan, ConfigError};

/// Largest `affinity_secs`: one day.
pub const AFFINITY_MAX_SECS: u64 = 86_400;
/// Longest Service name.
pub const SERVICE_NAME_MAX: usize = 63;
/// Largest `[switch] conntrack_max` (the bound of the other tables too).
pub const CONNTRACK_MAX_LIMIT: usize = 16_777_216;

/// `[[snat]]`: connections from `source` leaving through the router interface of `out_vlan`
/// get the source address `to`, or the interface's own address (masquerade).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnatConfig {
    /// `"10.42.0.0/16"`.
    pub source: String,
    /// The VLAN whose router interface the connections leave through.
    pub out_vlan: u16,
    /// A fixed source address; without it, masquerade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Connections to this prefix keep their source (`"10.42.0.0/16"`: pod to pod is not
    /// translated, like flannel's `-s Network -d Network -j RETURN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
    /// The agent that manages this entry (`"cluster"`), set by the switch for the entries a
    /// `batch` with an `owner` adds. Such entries are not saved in the state directory (their
    /// agent restores them), are left out of `tapswitch config`, and only their agent may
    /// change or remove them. Never in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `[[dnat]]`: a port forward.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnatConfig {
    /// `"tcp"` (default) or `"udp"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub address: String,
    pub port: u32,
    /// `"IP:PORT"`, or `"IP"` for the same port.
    pub to: String,
    /// The container whose port mapping this is (the CNI plugin sets it, and removes the
    /// container's forwards with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// `[[service]]`: a load-balanced Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique; `[A-Za-z0-9._-]`, 1 to 63 characters.
    pub name: String,
    pub vip: String,
    pub port: u32,
    /// `"tcp"` (default) or `"udp"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `"maglev"` (default), `"random"`, `"round-robin"`, `"least-conn"`, `"source-hash"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// ClientIP session affinity: a client stays with its backend this long (1..=86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_secs: Option<u64>,
    /// The Service also listens on this port of every router interface address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u32>,
    /// Without backends the Service rejects connections (TCP RST, ICMP port unreachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
    /// The agent that manages this entry (`"cluster"`), set by the switch for the entries a
    /// `batch` with an `owner` adds. Such entries are not saved in the state directory (their
    /// agent restores them), are left out of `tapswitch config`, and only their agent may
    /// change or remove them. Never in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One backend of a Service, as a string or as a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BackendConfig {
    /// `"10.42.0.2:8080"`, `"10.42.0.2:8080,weight=3"`, `"10.42.0.2:8080,drain"`.
    Text(String),
    /// `{ address = "10.42.0.2:8080", weight = 3, drain = true }`.
    Table(BackendTable),
}

impl From<&str> for BackendConfig {
    fn from(s: &str) -> Self {
        BackendConfig::Text(s.to_string())
    }
}

/// The table form of a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTable {
    /// `"IP:PORT"`.
    pub address: String,
    /// Relative share of new connections, 0..=65535; default 1; 0 drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// No new connections; tracked ones stay.
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub drain: bool,
}

// A string or a table; the table's own errors (an unknown key) come through as they are.
impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BackendConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a backend: \"IP:PORT[,weight=N][,drain]\" or \
                     { address = \"IP:PORT\", weight = N, drain = true }",
                )
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<BackendConfig, E> {
                Ok(BackendConfig::Text(s.to_string()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BackendConfig, A::Error> {
                BackendTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(BackendConfig::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Filters of `conntrack show` and `conntrack flush`: every one given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackFilter {
    /// `"tcp"`, `"udp"` or `"icmp"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Any of the connection's four addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Any of the connection's four ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Connections balanced by this Service ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// ... to this backend (`"IP:PORT"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// A validated port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnatSpec {
    pub proto: u8,
    pub address: Ipv4Addr,
    pub port: u16,
    pub to: SocketAddrV4,
}

impl DnatSpec {
    pub fn frontend(&self) -> Frontend {
        Frontend {
            proto: self.proto,
            addr: self.address,
            port: self.port,
        }
    }
}

/// A validated backend: the configured weight is kept while draining, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddrV4,
    pub weight: u16,
    pub drain: bool,
}

impl BackendSpec {
    /// The weight the scheduler uses: 0 while draining.
    pub fn effective_weight(&self) -> u16 {
        if self.drain {
            0
        } else {
            self.weight
        }
    }
}

/// A validated Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub proto: u8,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub scheduler: Scheduler,
    pub affinity_secs: Option<u64>,
    pub backends: Vec<BackendSpec>,
}

impl ServiceSpec {
    pub fn frontend(&self) -> Frontend {
        Frontend {
            proto: self.proto,
            addr: self.vip,
            port: self.port,
        }
    }

    /// The keys the Service is found under: its VIP, and its node port if it has one.
    pub fn frontends(&self) -> impl Iterator<Item = Frontend> {
        let proto = self.proto;
        std::iter::once(self.frontend())
            .chain(self.node_port.map(|p| Frontend::node_port(proto, p)))
    }
}

/// The validated NAT sections.
#[derive(Debug, Clone)]
pub struct ValidatedNat {
    /// In configuration order (the first match applies).
    pub snat: Vec<SnatRule>,
    pub dnat: Vec<DnatSpec>,
    pub services: Vec<ServiceSpec>,
    pub conntrack_max: usize,
    /// Names and frontends of `services` and `dnat`.
    pub index: NatIndex,
}

impl Default for ValidatedNat {
    fn default() -> Self {
        ValidatedNat {
            snat: Vec::new(),
            dnat: Vec::new(),
            services: Vec::new(),
            conntrack_max: tapswitch_dataplane::tables::conntrack::DEFAULT_MAX,
            index: NatIndex::default(),
        }
    }
}

/// `"tcp"` or `"udp"` (default `"tcp"`).
pub fn parse_protocol(field: &str, s: Option<&str>) -> Result<u8, ConfigError> {
    match s.unwrap_or("tcp") {
        "tcp" => Ok(PROTO_TCP),
        "udp" => Ok(PROTO_UDP),
        other => Err(ConfigError::new(
            field,
            format!("{other:?} is not a protocol (tcp, udp)"),
        )),
    }
}

/// `"tcp"`, `"udp"` or `"icmp"`: what connection tracking follows.
pub fn parse_tracked_protocol(field: &str, s: &str) -> Result<u8, ConfigError> {
    match s {
        "tcp" => Ok(PROTO_TCP),
        "udp" => Ok(PROTO_UDP),
        "icmp" => Ok(PROTO_ICMP),
        other => Err(ConfigError::new(
            field,
            format!("{other:?} is not a protocol (tcp, udp, icmp)"),
        )),
    }
}

pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "ip",
    }
}

/// A port, 1..=65535.
pub fn parse_port(field: &str, port: u32) -> Result<u16, ConfigError> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::new(
            field,
            format!("{port} is not a port (1..=65535)"),
        )),
    }
}

/// A unicast IPv4 address a connection can be addressed to.
pub fn parse_unicast_v4(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    let addr = match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a,
        Ok(IpAddr::V6(_)) => {
            return Err(ConfigError::new(
                field,
                format!("{s}: NAT and Services are IPv4 only"),
            ))
        }
        Err(_) => {
            return Err(ConfigError::new(
                field,
                format!("{s:?} is not an IPv4 address"),
            ))
        }
    };
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() {
        return Err(ConfigError::new(
            field,
            format!("{addr} is not a unicast address"),
        ));
    }
    Ok(addr)
}

/// `"IP:PORT"` with a unicast IPv4 address and a port above 0.
pub fn parse_socket(field: &str, s: &str) -> Result<SocketAddrV4, ConfigError> {
    let Some((ip, port)) = s.rsplit_once(':') else {
        return Err(ConfigError::new(
            field,
            format!("{s:?} is not IP:PORT, like 10.42.0.2:8080"),
        ));
    };
    let ip = parse_unicast_v4(field, ip)?;
    let port = port
        .parse::<u32>()
        .map_err(|_| ConfigError::new(field, format!("{s:?} is not IP:PORT, like 10.42.0.2:8080")))
        .and_then(|p| parse_port(field, p))?;
    Ok(SocketAddrV4::new(ip, port))
}

/// An IPv4 source prefix: `"10.42.0.0/16"`, or an address alone for one host.
pub fn parse_source(field: &str, s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let (addr, len) = parse_cidr(field, s, false)?;
    let IpAddr::V4(addr) = addr else {
        return Err(ConfigError::new(field, format!("{s}: NAT is IPv4 only")));
    };
    let masked = mask_v4(addr, len);
    if masked != addr {
        return Err(ConfigError::new(
            field,
            format!("{addr}/{len} has host bits set; the prefix is {masked}/{len}"),
        ));
    }
    Ok((addr, len))
}

/// `[A-Za-z0-9._-]{1,63}`.
pub fn valid_service_name(name: &str) -> bool {
    (1..=SERVICE_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Refuses a frontend address on a connected subnet that is not the interface's own address:
/// hosts on that subnet would ARP for it, and nothing answers.
fn check_on_subnet(
    field: &str,
    addr: Ipv4Addr,
    interfaces: &[Interface],
) -> Result<(), ConfigError> {
    if is_interface_address(addr, interfaces) {
        return Ok(());
    }
    for i in interfaces {
        if let Some((a, l)) = i.v4.iter().find(|(a, l)| same_subnet_v4(*a, addr, *l)) {
            return Err(ConfigError::new(
                field,
                format!(
                    "{addr} is on the subnet of the interface on VLAN {} ({a}/{l}) but is not \
                     its address: clients on that subnet would ARP for it",
                    i.vlan
                ),
            ));
        }
    }
    Ok(())
}

fn is_interface_address(addr: Ipv4Addr, interfaces: &[Interface]) -> bool {
    interfaces
        .iter()
        .any(|i| i.v4.iter().any(|(a, _)| *a == addr))
}

impl BackendConfig {
    /// Checks one backend; `at` names it (`service web.backends[1]`).
    pub fn validate(&self, at: &str) -> Result<BackendSpec, ConfigError> {
        let weight_of = |w: u32| {
            u16::try_from(w).map_err(|_| {
                ConfigError::new(at, format!("weight {w} is out of range (0..=65535)"))
            })
        };
        match self {
            BackendConfig::Text(s) => {
                let mut parts = s.split(',');
                let addr = parse_socket(at, parts.next().unwrap_or_default().trim())?;
                let mut spec = BackendSpec {
                    addr,
                    weight: 1,
                    drain: false,
                };
                for opt in parts.map(str::trim) {
                    if opt == "drain" {
                        spec.drain = true;
                    } else if let Some(w) = opt.strip_prefix("weight=") {
                        let w = w.parse::<u32>().map_err(|_| {
                            ConfigError::new(at, format!("{opt:?}: the weight is a number"))
                        })?;
                        spec.weight = weight_of(w)?;
                    } else {
                        return Err(ConfigError::new(
                            at,
                            format!("{opt:?} is not an option (weight=N, drain) in {s:?}"),
                        ));
                    }
                }
                Ok(spec)
            }
            BackendConfig::Table(t) => Ok(BackendSpec {
                addr: parse_socket(&format!("{at}.address"), &t.address)?,
                weight: match t.weight {
                    Some(w) => weight_of(w)?,
                    None => 1,
                },
                drain: t.drain,
            }),
        }
    }
}

/// Checks a backend list: each backend, and no address twice. `at` names the Service.
pub fn validate_backends(
    at: &str,
    backends: &[BackendConfig],
) -> Result<Vec<BackendSpec>, ConfigError> {
    let mut seen = HashSet::with_capacity(backends.len());
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let field = format!("{at}.backends[{i}]");
            let spec = b.validate(&field)?;
            if !seen.insert(spec.addr) {
                return Err(ConfigError::new(
                    field,
                    format!("{} is listed twice", spec.addr),
                ));
            }
            Ok(spec)
        })
        .collect()
}

impl ServiceConfig {
    /// Checks this Service on its own and against the router interfaces; `at` names it
    /// (`service[0] (web)` or `service web`). O(its backends + the interfaces).
    pub fn validate(&self, at: &str, interfaces: &[Interface]) -> Result<ServiceSpec, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        if !valid_service_name(&self.name) {
            return Err(ConfigError::new(
                f("name"),
                format!(
                    "{:?} is not a Service name (1 to {SERVICE_NAME_MAX} of A-Z a-z 0-9 . _ -)",
                    self.name
                ),
            ));
        }
        let proto = parse_protocol(&f("protocol"), self.protocol.as_deref())?;
        let vip = parse_unicast_v4(&f("vip"), &self.vip)?;
        check_on_subnet(&f("vip"), vip, interfaces)?;
        let port = parse_port(&f("port"), self.port)?;
        let node_port = self
            .node_port
            .map(|p| parse_port(&f("node_port"), p))
            .transpose()?;
        let scheduler = match self.scheduler.as_deref() {
            None => Scheduler::default(),
            Some(s) => Scheduler::from_name(s).ok_or_else(|| {
                ConfigError::new(
                    f("scheduler"),
                    format!(
                        "{s:?} is not a scheduler (maglev, random, round-robin, least-conn, \
                         source-hash)"
                    ),
                )
            })?,
        };
        if let Some(s) = self.affinity_secs {
            if !(1..=AFFINITY_MAX_SECS).contains(&s) {
                return Err(ConfigError::new(
                    f("affinity_secs"),
                    format!("{s} is out of range (1..={AFFINITY_MAX_SECS})"),
                ));
            }
        }
        let backends = validate_backends(at, &self.backends)?;
        if let Some(i) = backends
            .iter()
            .position(|b| *b.addr.ip() == vip && b.addr.port() == port)
        {
            return Err(ConfigError::new(
                format!("{at}.backends[{i}]"),
                format!("{vip}:{port} is the Service's own frontend"),
            ));
        }
        Ok(ServiceSpec {
            name: self.name.clone(),
            proto,
            vip,
            port,
            node_port,
            scheduler,
            affinity_secs: self.affinity_secs,
            backends,
        })
    }
}

impl DnatConfig {
    /// Checks this port forward on its own and against the router interfaces.
    pub fn validate(&self, at: &str, interfaces: &[Interface]) -> Result<DnatSpec, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        let proto = parse_protocol(&f("protocol"), self.protocol.as_deref())?;
        // 0.0.0.0: every address of the router's interfaces, as `docker run -p` listens on
        // every address of the host.
        let address = if self.address == "0.0.0.0" {
            Ipv4Addr::UNSPECIFIED
        } else {
            let a = parse_unicast_v4(&f("address"), &self.address)?;
            check_on_subnet(&f("address"), a, interfaces)?;
            a
        };
        let port = parse_port(&f("port"), self.port)?;
        let to = if self.to.contains(':') {
            parse_socket(&f("to"), &self.to)?
        } else {
            SocketAddrV4::new(parse_unicast_v4(&f("to"), &self.to)?, port)
        };
        if to == SocketAddrV4::new(address, port) {
            return Err(ConfigError::new(
                f("to"),
                format!("{to} forwards to itself"),
            ));
        }
        Ok(DnatSpec {
            proto,
            address,
            port,
            to,
        })
    }
}

impl SnatConfig {
    /// Checks this rule against the router interfaces.
    pub fn validate(&self, at: &str, interfaces: &[Interface]) -> Result<SnatRule, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        let (source, source_len) = parse_source(&f("source"), &self.source)?;
        let out_vlan = parse_vlan(&f("out_vlan"), self.out_vlan)?;
        let Some(iface) = interfaces.iter().find(|i| i.vlan == out_vlan) else {
            return Err(ConfigError::new(
                f("out_vlan"),
                format!("VLAN {out_vlan} has no router interface (add an [[interface]] for it)"),
            ));
        };
        let to = self
            .to
            .as_deref()
            .map(|t| parse_unicast_v4(&f("to"), t))
            .transpose()?;
        if to.is_none() && iface.v4.is_empty() {
            return Err(ConfigError::new(
                f("to"),
                format!(
                    "missing, and the interface on VLAN {out_vlan} has no IPv4 address to \
                     masquerade behind"
                ),
            ));
        }
        let except = self
            .except
            .as_deref()
            .map(|e| parse_source(&f("except"), e))
            .transpose()?;
        Ok(SnatRule {
            source,
            source_len,
            out_vlan,
            to,
            except,
        })
    }
}

/// Refuses a second rule for the same source prefix and VLAN (`snat del` names a rule so).
pub fn check_snat_unique(at: &str, rule: &SnatRule, rules: &[SnatRule]) -> Result<(), ConfigError> {
    if rules.iter().any(|r| {
        (r.source, r.source_len, r.out_vlan) == (rule.source, rule.source_len, rule.out_vlan)
    }) {
        return Err(ConfigError::new(
            format!("{at}.source"),
            format!(
                "{}/{} out of VLAN {} is defined twice",
                rule.source, rule.source_len, rule.out_vlan
            ),
        ));
    }
    Ok(())
}

/// Who holds a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendOwner {
    /// A Service's VIP and port.
    Service(String),
    /// A Service's node port.
    NodePort(String),
    Dnat,
}

impl fmt::Display for FrontendOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrontendOwner::Service(n) => write!(f, "service {n}"),
            FrontendOwner::NodePort(n) => write!(f, "the node port of service {n}"),
            FrontendOwner::Dnat => f.write_str("a dnat rule"),
        }
    }
}

/// `tcp 10.96.0.10:80`, or `tcp node port 30080`.
pub fn describe_frontend(f: &Frontend) -> String {
    if f.addr.is_unspecified() {
        format!("{} node port {}", protocol_name(f.proto), f.port)
    } else {
        format!("{} {}:{}", protocol_name(f.proto), f.addr, f.port)
    }
}

/// Service names and frontends in use: what makes checking one Service or port forward
/// against all the others O(1) (plus the router interface addresses, for node ports).
#[derive(Debug, Clone, Default)]
pub struct NatIndex {
    names: HashSet<String>,
    frontends: HashMap<Frontend, FrontendOwner>,
}

impl NatIndex {
    pub fn has_service(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn owner(&self, frontend: &Frontend) -> Option<&FrontendOwner> {
        self.frontends.get(frontend)
    }

    /// Checks that a frontend on an address is free, and that no node port listens on its
    /// port when the address is a router interface's.
    fn check_frontend(
        &self,
        field: String,
        f: Frontend,
        interfaces: &[Interface],
    ) -> Result<(), ConfigError> {
        if let Some(o) = self.frontends.get(&f) {
            return Err(ConfigError::new(
                field,
                format!("{} is already the frontend of {o}", describe_frontend(&f)),
            ));
        }
        if is_interface_address(f.addr, interfaces) {
            if let Some(o) = self.frontends.get(&Frontend::node_port(f.proto, f.port)) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{} is on a router interface address, and {o} listens on every one",
                        describe_frontend(&f),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that a node port is free and that no frontend on a router interface address
    /// has its port.
    fn check_node_port(
        &self,
        field: String,
        proto: u8,
        port: u16,
        interfaces: &[Interface],
    ) -> Result<(), ConfigError> {
        let key = Frontend::node_port(proto, port);
        if let Some(o) = self.frontends.get(&key) {
            return Err(ConfigError::new(
                field,
                format!("{} is already {o}", describe_frontend(&key)),
            ));
        }
        for i in interfaces {
            for (a, _) in &i.v4 {
                let f = Frontend {
                    proto,
                    addr: *a,
                    port,
                };
                if let Some(o) = self.frontends.get(&f) {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "{} would listen on the router interface address {a}, where \
                             {} is the frontend of {o}",
                            describe_frontend(&key),
                            describe_frontend(&f)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that `spec` can join: its name, its frontend and its node port are free.
    pub fn check_service(
        &self,
        at: &str,
        spec: &ServiceSpec,
        interfaces: &[Interface],
    ) -> Result<(), ConfigError> {
        if self.names.contains(&spec.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("service {} is defined twice", spec.name),
            ));
        }
        self.check_frontend(format!("{at}.vip"), spec.frontend(), interfaces)?;
        if let Some(p) = spec.node_port {
            self.check_node_port(format!("{at}.node_port"), spec.proto, p, interfaces)?;
            if is_interface_address(spec.vip, interfaces) && p == spec.port {
                return Err(ConfigError::new(
                    format!("{at}.node_port"),
                    format!("{p} is also the port of the VIP, a router interface address"),
                ));
            }
        }
        Ok(())
    }

    pub fn insert_service(&mut self, spec: &ServiceSpec) {
        self.names.insert(spec.name.clone());
        self.frontends
            .insert(spec.frontend(), FrontendOwner::Service(spec.name.clone()));
        if let Some(p) = spec.node_port {
            self.frontends.insert(
                Frontend::node_port(spec.proto, p),
                FrontendOwner::NodePort(spec.name.clone()),
            );
        }
    }

    pub fn remove_service(&mut self, spec: &ServiceSpec) {
        self.names.remove(&spec.name);
        for f in spec.frontends() {
            self.frontends.remove(&f);
        }
    }

    /// Checks that `spec`'s frontend is free.
    pub fn check_dnat(
        &self,
        at: &str,
        spec: &DnatSpec,
        interfaces: &[Interface],
    ) -> Result<(), ConfigError> {
        if spec.address.is_unspecified() {
            return self.check_node_port(
                format!("{at}.address"),
                spec.proto,
                spec.port,
                interfaces,
            );
        }
        self.check_frontend(format!("{at}.address"), spec.frontend(), interfaces)
    }

    pub fn insert_dnat(&mut self, spec: &DnatSpec) {
        self.frontends.insert(spec.frontend(), FrontendOwner::Dnat);
    }

    pub fn remove_dnat(&mut self, spec: &DnatSpec) {
        self.frontends.remove(&spec.frontend());
    }
}

impl super::Config {
    /// Checks `[switch] conntrack_max`, `[[snat]]`, `[[service]]` and `[[dnat]]` against the
    /// validated router interfaces.
    pub fn validate_nat(&self, interfaces: &[Interface]) -> Result<ValidatedNat, ConfigError> {
        let max = self.switch.conntrack_max;
        if !(1..=CONNTRACK_MAX_LIMIT).contains(&max) {
            return Err(ConfigError::new(
                "switch.conntrack_max",
                format!("{max} is out of range (1..={CONNTRACK_MAX_LIMIT})"),
            ));
        }
        let mut snat: Vec<SnatRule> = Vec::with_capacity(self.snat.len());
        for (i, s) in self.snat.iter().enumerate() {
            let at = format!("snat[{i}]");
            let rule = s.validate(&at, interfaces)?;
            check_snat_unique(&at, &rule, &snat)?;
            snat.push(rule);
        }
        let mut index = NatIndex::default();
        let mut services = Vec::with_capacity(self.services.len());
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("service[{i}] ({})", s.name);
            let spec = s.validate(&at, interfaces)?;
            index.check_service(&at, &spec, interfaces)?;
            index.insert_service(&spec);
            services.push(spec);
        }
        let mut dnat = Vec::with_capacity(self.dnat.len());
        for (i, d) in self.dnat.iter().enumerate() {
            let at = format!("dnat[{i}]");
            let spec = d.validate(&at, interfaces)?;
            index.check_dnat(&at, &spec, interfaces)?;
            index.insert_dnat(&spec);
            dnat.push(spec);
        }
        Ok(ValidatedNat {
            snat,
            dnat,
            services,
            conntrack_max: max,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const BASE: &str = r#"
[switch]
conntrack_max = 4096
[[interface]]
vlan = 10
address = "10.42.0.1/24"
[[interface]]
vlan = 100
address = ["10.200.0.1/24", "fd00:200::1/64"]
[[interface]]
vlan = 200
address = "fd00:300::1/64"
"#;

    const EXAMPLE: &str = r#"
[[snat]]
source = "10.42.0.0/16"
out_vlan = 100
[[snat]]
source = "10.43.0.0/16"
out_vlan = 100
to = "10.200.0.9"
[[dnat]]
protocol = "tcp"
address = "10.200.0.1"
port = 8080
to = "10.42.0.2:80"
[[dnat]]
protocol = "udp"
address = "10.200.0.1"
port = 53
to = "10.42.0.3"
[[service]]
name = "web"
vip = "10.96.0.10"
port = 80
protocol = "tcp"
backends = ["10.42.0.2:8080", "10.42.1.3:8080,weight=3", "10.42.1.4:8080,drain", { address = "10.42.1.5:8080", weight = 2, drain = true }]
scheduler = "round-robin"
affinity_secs = 10800
node_port = 30080
[[service]]
name = "dns"
vip = "10.96.0.10"
port = 53
protocol = "udp"
backends = [{ address = "10.42.0.3:53" }]
"#;

    fn validate(text: &str) -> Result<ValidatedNat, ConfigError> {
        let c = Config::from_toml(text)?;
        c.validate().map(|v| v.nat)
    }

    fn err(extra: &str) -> String {
        match validate(&format!("{BASE}{EXAMPLE}{extra}")) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_example_validates_and_round_trips() {
        let text = format!("{BASE}{EXAMPLE}");
        let v = validate(&text).unwrap();
        assert_eq!(v.conntrack_max, 4096);
        assert_eq!(v.snat.len(), 2);
        assert_eq!(v.snat[0].source_len, 16);
        assert_eq!(v.snat[0].to, None);
        assert_eq!(v.snat[1].to, Some(Ipv4Addr::new(10, 200, 0, 9)));
        assert_eq!(v.dnat[1].to, "10.42.0.3:53".parse().unwrap());
        assert_eq!(v.dnat[1].proto, PROTO_UDP);
        let web = &v.services[0];
        assert_eq!(web.scheduler, Scheduler::RoundRobin);
        assert_eq!(web.node_port, Some(30080));
        assert_eq!(
            web.backends
                .iter()
                .map(|b| (b.weight, b.drain, b.effective_weight()))
                .collect::<Vec<_>>(),
            [(1, false, 1), (3, false, 3), (1, true, 0), (2, true, 0)]
        );
        assert_eq!(v.services[1].scheduler, Scheduler::Maglev);
        assert_eq!(v.services[1].proto, PROTO_UDP);
        assert_eq!(
            v.index.owner(&Frontend::node_port(PROTO_TCP, 30080)),
            Some(&FrontendOwner::NodePort("web".into()))
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c, "round trip");
    }

    #[test]
    fn defaults() {
        let c = Config::from_toml(
            "[[service]]\nname = \"a\"\nvip = \"10.96.0.1\"\nport = 80\n\
             [[dnat]]\naddress = \"10.200.0.1\"\nport = 80\nto = \"10.42.0.2\"\n",
        )
        .unwrap();
        assert_eq!(
            c.switch.conntrack_max,
            tapswitch_dataplane::tables::conntrack::DEFAULT_MAX
        );
        let v = c.validate().unwrap().nat;
        assert_eq!(v.services[0].proto, PROTO_TCP);
        assert!(v.services[0].backends.is_empty());
        assert_eq!(v.dnat[0].proto, PROTO_TCP);
        assert_eq!(v.dnat[0].to.port(), 80);
    }

    #[test]
    fn errors_name_the_field() {
        let svc = |body: &str| {
            format!("[[service]]\nname = \"x\"\nvip = \"10.96.1.1\"\nport = 80\n{body}")
        };
        let cases: Vec<(String, &str)> = vec![
            (svc("backends = [\"10.42.0.2:8080\", \"10.42.0.2:8080,weight=2\"]"),
             "service[2] (x).backends[1]: 10.42.0.2:8080 is listed twice"),
            (svc("backends = [\"10.42.0.2\"]"), "service[2] (x).backends[0]: \"10.42.0.2\" is not IP:PORT"),
            (svc("backends = [\"10.42.0.2:0\"]"), "service[2] (x).backends[0]: 0 is not a port"),
            (svc("backends = [\"10.42.0.2:80,weight=70000\"]"), "service[2] (x).backends[0]: weight 70000 is out of range"),
            (svc("backends = [\"10.42.0.2:80,heavy\"]"), "service[2] (x).backends[0]: \"heavy\" is not an option"),
            (svc("backends = [{ address = \"10.42.0.2:80\", wieght = 2 }]"), "~unknown field `wieght`"),
            (svc("backends = [{ address = \"nope\" }]"), "service[2] (x).backends[0].address: \"nope\" is not IP:PORT"),
            (svc("backends = [7]"), "~expected a backend"),
            (svc("scheduler = \"fastest\""), "service[2] (x).scheduler: \"fastest\" is not a scheduler"),
            (svc("affinity_secs = 0"), "service[2] (x).affinity_secs: 0 is out of range"),
            (svc("affinity_secs = 86401"), "service[2] (x).affinity_secs: 86401 is out of range"),
            (svc("node_port = 70000"), "service[2] (x).node_port: 70000 is not a port"),
            (svc("protocol = \"sctp\""), "service[2] (x).protocol: \"sctp\" is not a protocol"),
            (svc("node_port = 30080"), "service[2] (x).node_port: tcp node port 30080 is already the node port of service web"),
            (svc("node_port = 8080"), "dnat[0].address: tcp 10.200.0.1:8080 is on a router interface address, and the node port of service x listens on every one"),
            ("[[service]]\nname = \"y\"\nvip = \"10.200.0.1\"\nport = 9090\n[[service]]\nname = \"z\"\nvip = \"10.96.0.50\"\nport = 1\nnode_port = 9090\n".into(),
             "service[3] (z).node_port: tcp node port 9090 would listen on the router interface address 10.200.0.1, where tcp 10.200.0.1:9090 is the frontend of service y"),
            ("[[service]]\nname = \"y\"\nvip = \"10.200.0.1\"\nport = 9090\nnode_port = 9090\n".into(),
             "service[2] (y).node_port: 9090 is also the port of the VIP, a router interface address"),
            (svc("protocol = \"udp\"\nnode_port = 30080"), ""),
            ("[[service]]\nname = \"web\"\nvip = \"10.96.0.11\"\nport = 80\n".into(), "service[2] (web).name: service web is defined twice"),
            ("[[service]]\nname = \"y\"\nvip = \"10.96.0.10\"\nport = 80\n".into(), "service[2] (y).vip: tcp 10.96.0.10:80 is already the frontend of service web"),
            ("[[service]]\nname = \"a b\"\nvip = \"10.96.0.11\"\nport = 80\n".into(), "service[2] (a b).name: \"a b\" is not a Service name"),
            (format!("[[service]]\nname = \"{}\"\nvip = \"10.96.0.11\"\nport = 80\n", "n".repeat(64)), "~is not a Service name"),
            ("[[service]]\nname = \"y\"\nvip = \"fd00::10\"\nport = 80\n".into(), "service[2] (y).vip: fd00::10: NAT and Services are IPv4 only"),
            ("[[service]]\nname = \"y\"\nvip = \"10.42.0.50\"\nport = 80\n".into(),
             "service[2] (y).vip: 10.42.0.50 is on the subnet of the interface on VLAN 10 (10.42.0.1/24) but is not its address: clients on that subnet would ARP for it"),
            ("[[service]]\nname = \"y\"\nvip = \"10.200.0.1\"\nport = 30080\n".into(),
             "service[2] (y).vip: tcp 10.200.0.1:30080 is on a router interface address, and the node port of service web listens on every one"),
            ("[[service]]\nname = \"y\"\nvip = \"10.96.0.12\"\nport = 80\nbackends = [\"10.96.0.12:80\"]\n".into(),
             "service[2] (y).backends[0]: 10.96.0.12:80 is the Service's own frontend"),
            ("[[service]]\nname = \"y\"\nvip = \"10.96.0.12\"\nport = 0\n".into(), "service[2] (y).port: 0 is not a port"),
            ("[[dnat]]\naddress = \"10.96.0.10\"\nport = 80\nto = \"10.42.0.2\"\n".into(),
             "dnat[2].address: tcp 10.96.0.10:80 is already the frontend of service web"),
            ("[[dnat]]\naddress = \"10.200.0.1\"\nport = 30080\nto = \"10.42.0.2\"\n".into(),
             "dnat[2].address: tcp 10.200.0.1:30080 is on a router interface address"),
            ("[[dnat]]\naddress = \"10.200.0.7\"\nport = 80\nto = \"10.42.0.2\"\n".into(),
             "dnat[2].address: 10.200.0.7 is on the subnet of the interface on VLAN 100"),
            ("[[dnat]]\naddress = \"10.200.0.1\"\nport = 8080\nto = \"10.42.0.9:80\"\n".into(),
             "dnat[2].address: tcp 10.200.0.1:8080 is already the frontend of a dnat rule"),
            ("[[dnat]]\nprotocol = \"icmp\"\naddress = \"192.0.2.1\"\nport = 1\nto = \"10.42.0.9:80\"\n".into(),
             "dnat[2].protocol: \"icmp\" is not a protocol (tcp, udp)"),
            ("[[dnat]]\naddress = \"192.0.2.1\"\nport = 80\nto = \"10.42.0.9:80:1\"\n".into(), "dnat[2].to:"),
            ("[[dnat]]\naddress = \"192.0.2.1\"\nport = 80\nto = \"192.0.2.1\"\n".into(), "dnat[2].to: 192.0.2.1:80 forwards to itself"),
            ("[[dnat]]\naddress = \"255.255.255.255\"\nport = 80\nto = \"10.42.0.2\"\n".into(),
             "dnat[2].address: 255.255.255.255 is not a unicast address"),
            ("[[snat]]\nsource = \"10.44.0.0/16\"\nout_vlan = 300\n".into(),
             "snat[2].out_vlan: VLAN 300 has no router interface"),
            ("[[snat]]\nsource = \"10.44.0.0/16\"\nout_vlan = 200\n".into(),
             "snat[2].to: missing, and the interface on VLAN 200 has no IPv4 address to masquerade behind"),
            ("[[snat]]\nsource = \"10.44.0.1/16\"\nout_vlan = 100\n".into(),
             "snat[2].source: 10.44.0.1/16 has host bits set; the prefix is 10.44.0.0/16"),
            ("[[snat]]\nsource = \"fd42::/64\"\nout_vlan = 100\n".into(), "snat[2].source: fd42::/64: NAT is IPv4 only"),
            ("[[snat]]\nsource = \"10.42.0.0/16\"\nout_vlan = 100\nto = \"10.200.0.2\"\n".into(),
             "snat[2].source: 10.42.0.0/16 out of VLAN 100 is defined twice"),
            ("[[snat]]\nsource = \"10.44.0.0/16\"\nout_vlan = 100\nto = \"nope\"\n".into(), "snat[2].to: \"nope\" is not an IPv4 address"),
        ];
        for (extra, want) in cases {
            if want.is_empty() {
                validate(&format!("{BASE}{EXAMPLE}{extra}")).unwrap();
                continue;
            }
            let got = err(&extra);
            // `~`: a parse error, which says where in the text rather than naming the field.
            let ok = match want.strip_prefix('~') {
                Some(w) => got.contains(w),
                None => got.starts_with(want),
            };
            assert!(ok, "{extra}\n  got: {got}\n want: {want}");
        }
    }

    #[test]
    fn conntrack_max_is_bounded() {
        for (max, ok) in [(0, false), (1, true), (CONNTRACK_MAX_LIMIT + 1, false)] {
            let r = validate(&format!("[switch]\nconntrack_max = {max}\n"));
            match r {
                Ok(v) => assert!(ok && v.conntrack_max == max),
                Err(e) => {
                    assert!(!ok, "{max}: {e}");
                    assert!(e.to_string().starts_with("switch.conntrack_max: "), "{e}");
                }
            }
        }
    }

    #[test]
    fn removing_an_interface_a_rule_needs_is_refused() {
        let text = format!("{BASE}{EXAMPLE}").replace("vlan = 100\naddress", "vlan = 101\naddress");
        let e = validate(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("snat[0].out_vlan: VLAN 100 has no router interface"),
            "{e}"
        );
    }

    #[test]
    fn backend_strings() {
        let ok = |s: &str| BackendConfig::from(s).validate("b").unwrap();
        assert_eq!(
            ok("10.42.0.2:8080"),
            BackendSpec {
                addr: "10.42.0.2:8080".parse().unwrap(),
                weight: 1,
                drain: false
            }
        );
        assert_eq!(ok("10.42.0.2:8080,weight=0").effective_weight(), 0);
        assert_eq!(ok(" 10.42.0.2:8080 , weight=7 ").weight, 7);
        let d = ok("10.42.0.2:8080,weight=5,drain");
        assert_eq!((d.weight, d.drain, d.effective_weight()), (5, true, 0));
        for bad in [
            "",
            "10.42.0.2",
            "10.42.0.2:x",
            "[::1]:80",
            "0.0.0.0:80",
            "10.42.0.2:80,weight=-1",
        ] {
            assert!(BackendConfig::from(bad).validate("b").is_err(), "{bad}");
        }
    }
}
