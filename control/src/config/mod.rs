//! The configuration model: what `tapswitch run --config FILE` reads and what the API's
//! `port add`, `fdb add`, `service add` ... take (the same structs, so a key means the same
//! everywhere).
//!
//! Parsing (serde) accepts only known keys; [`Config::validate`] then checks meaning and turns
//! raw values into typed specs. Every error names the field: `port[1] (tap-c2).vlan: ...`.
//! The NAT sections (`[[snat]]`, `[[dnat]]`, `[[service]]`, in [`nat`]) are checked by
//! [`Config::validate_nat`], which `validate` includes.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod merge;
pub mod nat;
pub mod policy;
mod routing;
pub use nat::{
    BackendConfig, BackendSpec, BackendTable, ConntrackFilter, DnatConfig, DnatSpec, NatIndex,
    ServiceConfig, ServiceSpec, SnatConfig, ValidatedNat,
};
pub use routing::{parse_cidr, Addresses, InterfaceConfig, InterfaceSpec, RouteConfig, RouteSpec};
use tapswitch_dataplane::io::port::valid_ifname;
pub use tapswitch_dataplane::io::vhost_user::Mode as VhostUserMode;
use tapswitch_dataplane::pipeline::routing::{same_subnet_v4, same_subnet_v6};
use tapswitch_dataplane::pipeline::{AllowedPair, Ipv4Prefix, PortMode, TunnelEndpoint, VlanSet};
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

/// The embedded default: a switch with no ports, ready for `port add`.
pub const DEFAULT_CONFIG: &str =
    "# tapswitch embedded default: no ports yet; add them with `tapswitch port add`.
[switch]
mac_aging_secs = 300
mac_table_max = 65536
";

/// A configuration error, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `switch.mac_table_max`, `port[0] (tap-c1).vlan`, `fdb[2].port`, or the file.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub switch: SwitchConfig,
    #[serde(default, rename = "port", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    #[serde(default, rename = "fdb", skip_serializing_if = "Vec::is_empty")]
    pub fdb: Vec<FdbConfig>,
    #[serde(default, rename = "vxlan", skip_serializing_if = "Vec::is_empty")]
    pub vxlan: Vec<VxlanConfig>,
    #[serde(default, rename = "neigh", skip_serializing_if = "Vec::is_empty")]
    pub neigh: Vec<NeighConfig>,
    #[serde(default, rename = "interface", skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(default, rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, rename = "snat", skip_serializing_if = "Vec::is_empty")]
    pub snat: Vec<SnatConfig>,
    #[serde(default, rename = "dnat", skip_serializing_if = "Vec::is_empty")]
    pub dnat: Vec<DnatConfig>,
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceConfig>,
    /// Network policy (Kubernetes NetworkPolicy semantics).
    #[serde(default, rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<policy::PolicyConfig>,
    /// The admin tier of network policy: evaluated first, by priority.
    #[serde(
        default,
        rename = "admin_policy",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub admin_policies: Vec<policy::PolicyConfig>,
    /// The baseline tier: what neither the admin tier nor a `[[policy]]` decided.
    #[serde(
        default,
        rename = "baseline_policy",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub baseline_policies: Vec<policy::PolicyConfig>,
    /// Cluster mode on etcd; read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<cluster::ClusterConfig>,
    /// The Prometheus metrics server; read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// `[metrics]`: `/metrics` in the Prometheus text format (see [`crate::metrics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `"127.0.0.1:9469"` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// The address to listen on.
    pub fn listen(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let text = self
            .listen
            .as_deref()
            .unwrap_or(crate::metrics::DEFAULT_LISTEN);
        text.parse().map_err(|_| {
            ConfigError::new(
                "metrics.listen",
                format!("{text:?} is not an address and port like 127.0.0.1:9469"),
            )
        })
    }
}

/// `[switch]`: switch-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// Learned entries expire after this idle time.
    #[serde(default = "default_aging")]
    pub mac_aging_secs: u64,
    /// Bound on learned MAC entries (the whole table).
    #[serde(default = "default_table_max")]
    pub mac_table_max: usize,
    /// Bound on the router's neighbour table (resolved next hops).
    #[serde(default = "default_neigh_max")]
    pub neigh_table_max: usize,
    /// Bound on the connection tracking table (one for the switch, shared by its workers).
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max: usize,
    /// Worker threads forwarding in parallel; each TAP port has one queue per worker.
    /// Unset: the number of CPUs ([`SwitchConfig::workers`]). Fixed while tapswitch runs: a
    /// reload may leave it out or repeat it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Where the running configuration and the checkpoints of learned and connection state
    /// are kept (see [`crate::state`]); default `/var/lib/tapswitch`. Read at start only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// Seconds between checkpoints of learned and connection state (0: only on a planned
    /// stop); default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_secs: Option<u64>,
    /// Members of this group (a name or a number) may use the control socket besides root;
    /// unset: root only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Adaptive polling: microseconds a worker keeps polling its ports after its last frame
    /// before it sleeps (0: off, sleep as soon as they run dry); at most 10000. Default
    /// [`BUSY_POLL_US_DEFAULT`] (off: on a host whose CPUs the workloads use, polling takes
    /// CPU from them; see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_poll_us: Option<u64>,
    /// Share of a CPU (percent, 0-100) that each worker's polling on may take when it finds
    /// nothing, counted over every 100 ms. Default [`BUSY_POLL_BUDGET_PERCENT_DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_poll_budget_percent: Option<u8>,
}

/// Default of `[switch] busy_poll_us`.
pub const BUSY_POLL_US_DEFAULT: u64 = 0;
/// Default of `[switch] busy_poll_budget_percent`.
pub const BUSY_POLL_BUDGET_PERCENT_DEFAULT: u8 = 20;

/// Most worker threads a switch runs.
pub const WORKERS_MAX: usize = 64;

impl SwitchConfig {
    /// The number of workers to run: as configured, else one per CPU this process may run on.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, WORKERS_MAX)
        })
    }

    /// The state directory: as configured, else [`DEFAULT_STATE_DIR`](crate::state::DEFAULT_STATE_DIR).
    pub fn state_dir(&self) -> &str {
        self.state_dir
            .as_deref()
            .unwrap_or(crate::state::DEFAULT_STATE_DIR)
    }

    /// Seconds between checkpoints; 0: none but the one of a planned stop.
    pub fn checkpoint_secs(&self) -> u64 {
        self.checkpoint_secs.unwrap_or(CHECKPOINT_SECS_DEFAULT)
    }

    /// How workers poll on after traffic (`busy_poll_us`, `busy_poll_budget_percent`).
    pub fn busy_poll(&self) -> tapswitch_dataplane::io::BusyPoll {
        tapswitch_dataplane::io::BusyPoll {
            window: std::time::Duration::from_micros(
                self.busy_poll_us.unwrap_or(BUSY_POLL_US_DEFAULT),
            ),
            budget_percent: self
                .busy_poll_budget_percent
                .unwrap_or(BUSY_POLL_BUDGET_PERCENT_DEFAULT),
        }
    }
}

/// Default of `[switch] checkpoint_secs`.
pub const CHECKPOINT_SECS_DEFAULT: u64 = 30;

fn default_conntrack_max() -> usize {
    tapswitch_dataplane::tables::conntrack::DEFAULT_MAX
}

fn default_neigh_max() -> usize {
    tapswitch_dataplane::pipeline::routing::NEIGH_MAX_DEFAULT
}

fn default_aging() -> u64 {
    300
}

fn default_table_max() -> usize {
    65_536
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            mac_aging_secs: default_aging(),
            mac_table_max: default_table_max(),
            neigh_table_max: default_neigh_max(),
            conntrack_max: default_conntrack_max(),
            workers: None,
            state_dir: None,
            checkpoint_secs: None,
            socket_group: None,
            busy_poll_us: None,
            busy_poll_budget_percent: None,
        }
    }
}

/// `[[port]]`: a TAP port that tapswitch creates, an existing interface it attaches to, or a
/// VM's vhost-user socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub name: String,
    /// Named network namespace (as `ip netns` names it): where the TAP is created, or where
    /// the attached interface is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Attach to an existing interface over AF_PACKET instead of creating a TAP.
    #[serde(default, skip_serializing_if = "is_false")]
    pub attach: bool,
    /// What the port is: `"tap"` (the default), `"attach"` (as `attach = true`) or
    /// `"vhost-user"` (a VM's virtio-net device over the vhost-user socket `socket`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `type = "vhost-user"`: the socket's path (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// `type = "vhost-user"`: `"server"` (the default: tapswitch listens on `socket`, QEMU
    /// connects) or `"client"` (QEMU listens, `server=on`; tapswitch connects and reconnects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user_mode: Option<String>,
    /// The workload's MAC: a TAP's (set on the device), or a VM's on a vhost-user port (as
    /// given to QEMU; for port security).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Access VLAN (untagged on the wire); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Instead of `vlan`: these VLANs pass 802.1Q-tagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<Vec<u16>>,
    /// With `trunk`: untagged frames belong to this VLAN (and leave untagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_vlan: Option<u16>,
    /// Bound on MACs learned on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_macs: Option<u32>,
    /// `false`: frames to this port are finished in software (checksums, TCP segmentation)
    /// and a TAP is opened without the virtio-net header. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<bool>,
    /// The device's name inside its namespace (`eth0` in a container); default: the port's
    /// name. Ports are named uniquely in the switch; devices only within their namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// The container the port belongs to (the CNI plugin sets it), as `port list` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The port's addresses (`10.42.0.5/24`), as recorded by whoever made it (the CNI plugin
    /// records what IPAM gave).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Labels (`app = "web"`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Port security: the workload may send only from the port's MAC and `addresses` (and
    /// `allowed_pairs`). Default: on for a TAP port with addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<bool>,
    /// More addresses the workload may send from, each `PREFIX[,MAC]` (`10.42.0.100/32,
    /// 00:00:5e:00:01:01` for a VRRP address; without a MAC, the port's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_pairs: Vec<String>,
    /// With port security: the workload may send IPv6 router advertisements.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_ra: bool,
    /// With port security: the workload may send DHCP server messages (UDP from port 67,
    /// DHCPv6 from 547).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_dhcp_server: bool,
    /// Limits on what the port floods, in frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_control: Option<StormControlConfig>,
    /// Ingress policing: the rate the port's workload may send at (more is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub police: Option<RateConfig>,
    /// Egress shaping: the rate the port's workload receives at (more waits, up to a latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<RateConfig>,
}

/// `port set`: what changes on a port that exists (its identity and the checks made of
/// it; not its device). A field left out stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortChange {
    /// Labels to set (added, or replacing the value of the same key).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub del_labels: Vec<String>,
    /// The port's addresses, all of them (replacing the ones it has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<bool>,
    /// The allowed pairs, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_pairs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_ra: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_dhcp_server: Option<bool>,
    /// Storm control, replacing the port's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_control: Option<StormControlConfig>,
    /// Removes the port's storm control.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_storm_control: bool,
    /// Ingress policing, replacing the port's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub police: Option<RateConfig>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_police: bool,
    /// Egress shaping, replacing the port's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<RateConfig>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_shape: bool,
}

impl PortChange {
    /// `port` with this change made (not validated).
    pub fn apply(&self, port: &PortConfig) -> PortConfig {
        let mut p = port.clone();
        for k in &self.del_labels {
            p.labels.remove(k);
        }
        p.labels
            .extend(self.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(a) = &self.addresses {
            p.addresses = a.clone();
        }
        if let Some(s) = self.port_security {
            p.port_security = Some(s);
        }
        if let Some(a) = &self.allowed_pairs {
            p.allowed_pairs = a.clone();
        }
        if let Some(b) = self.allow_ra {
            p.allow_ra = b;
        }
        if let Some(b) = self.allow_dhcp_server {
            p.allow_dhcp_server = b;
        }
        if self.no_storm_control {
            p.storm_control = None;
        }
        if let Some(c) = &self.storm_control {
            p.storm_control = Some(c.clone());
        }
        if self.no_police {
            p.police = None;
        }
        if let Some(c) = &self.police {
            p.police = Some(c.clone());
        }
        if self.no_shape {
            p.shape = None;
        }
        if let Some(c) = &self.shape {
            p.shape = Some(c.clone());
        }
        p
    }
}

/// A rate limit, in tc's units: `police = { rate = "200mbit", burst = "256kb" }`,
/// `shape = { rate = "200mbit", burst = "256kb", latency = "50ms" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// `bit`, `kbit`, `mbit`, `gbit` (bits per second, powers of 1000), `bps`, `kbps`,
    /// `mbps`, `gbps` (bytes per second); `kibit`, `mibit`, `gibit` in powers of 1024.
    pub rate: String,
    /// Bytes at once: `b`, `kb`/`k`, `mb`/`m`, `gb` (powers of 1024), `kbit`, `mbit`
    /// (bits); default: 250 ms at the rate for policing, 10 ms for shaping, at least
    /// 128 KiB (two super-frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<String>,
    /// Shaping only: the longest a frame waits (`ms`, `us`, `s`); default 50 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
}

/// A validated rate limit: bytes per second, burst bytes, and (shaping) the longest wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub rate: u64,
    pub burst: u64,
    pub latency_us: u64,
}

/// Rates from 8 kbit/s to 1 Tbit/s.
pub const RATE_MIN: u64 = 1_000;
pub const RATE_MAX: u64 = 125_000_000_000;

fn number_unit(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| (n, unit.trim().to_ascii_lowercase()))
}

/// A rate in tc's units, in bytes per second.
pub fn parse_rate(field: &str, s: &str) -> Result<u64, ConfigError> {
    let bad = || {
        ConfigError::new(
            field,
            format!("{s:?} is not a rate like 200mbit, 1gbit or 25mbps"),
        )
    };
    let (n, unit) = number_unit(s).ok_or_else(bad)?;
    let bits = |m: f64| n * m / 8.0;
    let bytes = match unit.as_str() {
        "bit" => bits(1.0),
        "kbit" => bits(1e3),
        "mbit" => bits(1e6),
        "gbit" => bits(1e9),
        "tbit" => bits(1e12),
        "kibit" => bits(1024.0),
        "mibit" => bits(1024.0 * 1024.0),
        "gibit" => bits(1024.0 * 1024.0 * 1024.0),
        "bps" => n,
        "kbps" => n * 1e3,
        "mbps" => n * 1e6,
        "gbps" => n * 1e9,
        _ => return Err(bad()),
    };
    let bytes = bytes.round() as u64;
    if !(RATE_MIN..=RATE_MAX).contains(&bytes) {
        return Err(ConfigError::new(
            field,
            format!("{s:?} is out of range (8kbit..=1tbit)"),
        ));
    }
    Ok(bytes)
}

/// A size in tc's units, in bytes.
pub fn parse_size(field: &str, s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::new(field, format!("{s:?} is not a size like 256kb or 2mbit"));
    let (n, unit) = number_unit(s).ok_or_else(bad)?;
    let k = 1024.0;
    let bytes = match unit.as_str() {
        "" | "b" => n,
        "k" | "kb" => n * k,
        "m" | "mb" => n * k * k,
        "g" | "gb" => n * k * k * k,
        "kbit" => n * 1e3 / 8.0,
        "mbit" => n * 1e6 / 8.0,
        "gbit" => n * 1e9 / 8.0,
        _ => return Err(bad()),
    };
    let bytes = bytes.round() as u64;
    if !(1_514..=(1 << 32)).contains(&bytes) {
        return Err(ConfigError::new(
            field,
            format!("{s:?} is out of range (one full frame, 1514 bytes, up to 4 GiB)"),
        ));
    }
    Ok(bytes)
}

/// A duration: `ms`, `us`, `s`, in microseconds.
fn parse_latency(field: &str, s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::new(field, format!("{s:?} is not a latency like 50ms"));
    let (n, unit) = number_unit(s).ok_or_else(bad)?;
    let us = match unit.as_str() {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return Err(bad()),
    };
    let us = us.round() as u64;
    if !(100..=10_000_000).contains(&us) {
        return Err(ConfigError::new(
            field,
            format!("{s:?} is out of range (100us..=10s)"),
        ));
    }
    Ok(us)
}

impl RateConfig {
    /// Validates a limit; `shaping`: `latency` is allowed.
    pub fn validate(&self, field: &str, shaping: bool) -> Result<RateSpec, ConfigError> {
        let rate = parse_rate(&format!("{field}.rate"), &self.rate)?;
        let burst = match &self.burst {
            Some(b) => parse_size(&format!("{field}.burst"), b)?,
            // A shaper's bucket: 10 ms at the rate. A policer's: 250 ms, because TCP on a
            // short path that loses the tail of a flight to an empty bucket waits out a
            // retransmission timeout (200 ms) before it sends again; a smaller bucket caps it
            // at about one bucket per timeout (see the README's Rate limits).
            None if shaping => (rate / 100).max(128 * 1024),
            None => (rate / 4).max(128 * 1024),
        };
        let latency_us = match (&self.latency, shaping) {
            (Some(_), false) => {
                return Err(ConfigError::new(
                    format!("{field}.latency"),
                    "only for shape: a policer drops what is over its rate, it does not delay",
                ))
            }
            (Some(l), true) => parse_latency(&format!("{field}.latency"), l)?,
            (None, _) => 50_000,
        };
        Ok(RateSpec {
            rate,
            burst,
            latency_us,
        })
    }
}

/// `storm_control = { broadcast = 1000, multicast = 5000, unknown_unicast = 1000, burst = 100 }`:
/// frames per second of each kind the port may flood (a kind left out is not limited), and
/// how many may come at once (default: a tenth of a second's worth of each rate).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormControlConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicast: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_unicast: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A port's validated storm control: (rate, burst) of each kind it limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormSpec {
    pub broadcast: Option<(u32, u32)>,
    pub multicast: Option<(u32, u32)>,
    pub unknown_unicast: Option<(u32, u32)>,
}

/// The most frames per second a storm control limit may name.
pub const STORM_RATE_MAX: u32 = 100_000_000;

fn is_false(b: &bool) -> bool {
    !*b
}

/// `[[fdb]]`: a static MAC entry, either on a local port (`port`, `vlan`) or behind a remote
/// VTEP of a VXLAN port (`vni`, `remote`), like `bridge fdb append MAC dev vxlan42 dst IP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbConfig {
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Default: the port's access VLAN (or its native VLAN for a trunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The agent that manages this entry (`"cluster"`), set by the switch for the entries a
    /// `batch` with an `owner` adds. Such entries are not saved in the state directory (their
    /// agent restores them), are left out of `tapswitch config`, and only their agent may
    /// change or remove them. Never in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `[[vxlan]]`: a VNI extending a local VLAN to remote VTEPs over UDP (RFC 7348).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanConfig {
    /// 24-bit VXLAN network identifier.
    pub vni: u32,
    /// The local VLAN (bridge domain) this VNI extends; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Local VTEP address: the UDP socket's address and the outer source.
    pub local: String,
    /// UDP port; default 4789 (IANA); 8472 for flannel / the Linux default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Flood list: broadcast, multicast and unknown unicast go to each (head-end replication).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<String>,
    /// Learn inner source MAC -> outer source IP; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning: Option<bool>,
    /// When set, VXLAN from any other source is dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// MTU of inner frames; default 1450 (1500 less the 50 bytes of outer headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Outer IPv4 TTL; default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    /// The agent that manages this entry (`"cluster"`), set by the switch for the entries a
    /// `batch` with an `owner` adds. Such entries are not saved in the state directory (their
    /// agent restores them), are left out of `tapswitch config`, and only their agent may
    /// change or remove them. Never in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `[[neigh]]`: an address answered locally (ARP/ND suppression) on a VNI's VLAN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighConfig {
    pub ip: String,
    pub mac: String,
    pub vni: u32,
    /// The agent that manages this entry (`"cluster"`), set by the switch for the entries a
    /// `batch` with an `owner` adds. Such entries are not saved in the state directory (their
    /// agent restores them), are left out of `tapswitch config`, and only their agent may
    /// change or remove them. Never in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A validated VXLAN port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub vlan: VlanId,
    pub endpoint: TunnelEndpoint,
    pub remotes: Vec<Ipv4Addr>,
    pub learning: bool,
    pub allow: Vec<Ipv4Prefix>,
    pub mtu: u32,
    pub ttl: u8,
}

impl VxlanSpec {
    /// The bridge port name of this VNI, as listings show it.
    pub fn port_name(&self) -> String {
        format!("vxlan{}", self.vni)
    }
}

/// Where a static entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbTarget {
    /// A local port, by index in [`Validated::ports`].
    Port(usize),
    /// A remote VTEP behind a VXLAN port, by index in [`Validated::vxlan`].
    Remote { vxlan: usize, remote: Ipv4Addr },
}

/// A validated ARP/ND suppression entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighSpec {
    pub vlan: VlanId,
    pub ip: IpAddr,
    pub mac: EthernetAddress,
}

pub const VXLAN_DEFAULT_MTU: u32 = 1450;
pub const VNI_MAX: u32 = (1 << 24) - 1;

pub fn parse_ipv4(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::new(field, format!("{s:?} is not an IPv4 address")))
}

pub fn parse_prefix(field: &str, s: &str) -> Result<Ipv4Prefix, ConfigError> {
    let bad = || {
        ConfigError::new(
            field,
            format!("{s:?} is not an IPv4 prefix like 192.168.77.0/24"),
        )
    };
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad())?),
        None => (s, 32),
    };
    if len > 32 {
        return Err(bad());
    }
    Ok(Ipv4Prefix {
        addr: addr.parse().map_err(|_| bad())?,
        len,
    })
}

impl VxlanConfig {
    pub fn validate(&self, at: &str) -> Result<VxlanSpec, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        if self.vni > VNI_MAX {
            return Err(ConfigError::new(
                f("vni"),
                format!("{} is not a 24-bit VNI (0..={VNI_MAX})", self.vni),
            ));
        }
        let vlan = parse_vlan(&f("vlan"), self.vlan.unwrap_or(1))?;
        let local = parse_ipv4(&f("local"), &self.local)?;
        if local.is_unspecified() || local.is_multicast() {
            return Err(ConfigError::new(
                f("local"),
                format!("{local} cannot be a VTEP address"),
            ));
        }
        let port = self.port.unwrap_or(4789);
        if port == 0 {
            return Err(ConfigError::new(f("port"), "0 is not a UDP port"));
        }
        let mut remotes = Vec::new();
        for r in &self.remotes {
            let ip = parse_ipv4(&f("remotes"), r)?;
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip == local {
                return Err(ConfigError::new(
                    f("remotes"),
                    format!("{ip} cannot be a remote VTEP"),
                ));
            }
            if !remotes.contains(&ip) {
                remotes.push(ip);
            }
        }
        let allow = self
            .allow
            .iter()
            .map(|a| parse_prefix(&f("allow"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let mtu = self.mtu.unwrap_or(VXLAN_DEFAULT_MTU);
        if !(MTU_MIN..=MTU_MAX - 50).contains(&mtu) {
            return Err(ConfigError::new(
                f("mtu"),
                format!("{mtu} is out of range ({MTU_MIN}..={})", MTU_MAX - 50),
            ));
        }
        let ttl = self.ttl.unwrap_or(64);
        if ttl == 0 {
            return Err(ConfigError::new(f("ttl"), "0 is not a TTL"));
        }
        Ok(VxlanSpec {
            vni: self.vni,
            vlan,
            endpoint: TunnelEndpoint { local, port },
            remotes,
            learning: self.learning.unwrap_or(true),
            allow,
            mtu,
            ttl,
        })
    }
}

/// A validated port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub netns: Option<String>,
    pub attach: bool,
    /// A vhost-user port: its socket and who opens it.
    pub vhost_user: Option<VhostUserPortSpec>,
    pub mac: Option<EthernetAddress>,
    pub mtu: Option<u32>,
    pub mode: PortMode,
    pub max_macs: u32,
    /// Frames with offloads left to do (64 KiB TCP super-frames, partial checksums) may be
    /// handed to this port's device.
    pub offload: bool,
    /// The device's name in its namespace (`ifname`, else the port's name).
    pub device: String,
    /// Port security, when on.
    pub security: Option<SecuritySpec>,
    /// Storm control, when set.
    pub storm: Option<StormSpec>,
    /// Ingress policing and egress shaping, when set.
    pub police: Option<RateSpec>,
    pub shape: Option<RateSpec>,
    /// What network policies select it by.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its addresses: what policy peers that select it match.
    pub addresses: Vec<IpAddr>,
}

impl PortSpec {
    /// A TAP that tapswitch creates (not an attached interface, not a vhost-user socket).
    pub fn is_tap(&self) -> bool {
        !self.attach && self.vhost_user.is_none()
    }
}

/// A vhost-user port's validated socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserPortSpec {
    pub socket: std::path::PathBuf,
    pub mode: VhostUserMode,
}

/// A port's validated port security; the MAC is the device's, known once it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecuritySpec {
    pub addresses: Vec<IpAddr>,
    pub pairs: Vec<AllowedPair>,
    pub allow_ra: bool,
    pub allow_dhcp_server: bool,
}

/// A validated static FDB entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbSpec {
    pub mac: EthernetAddress,
    pub vlan: VlanId,
    pub target: FdbTarget,
}

/// Largest MTU a port may have: a 64 KiB frame less the Ethernet and 802.1Q headers.
pub const MTU_MAX: u32 = 65_518;
pub const MTU_MIN: u32 = 68;

pub fn parse_vlan(field: &str, v: u16) -> Result<VlanId, ConfigError> {
    VlanId::new(v)
        .ok_or_else(|| ConfigError::new(field, format!("{v} is not a VLAN id (1..=4094)")))
}

pub fn parse_mac(field: &str, s: &str) -> Result<EthernetAddress, ConfigError> {
    let mac: EthernetAddress = s
        .parse()
        .map_err(|e| ConfigError::new(field, format!("{s:?}: {e}")))?;
    if mac.is_multicast() || mac.is_zero() {
        return Err(ConfigError::new(
            field,
            format!("{mac} is not a unicast MAC address"),
        ));
    }
    Ok(mac)
}

/// Longest path of a Unix socket (`sun_path` less its NUL).
const SOCKET_PATH_MAX: usize = 107;

impl PortConfig {
    /// The device's name in its namespace: `ifname`, else the port's name.
    pub fn device(&self) -> &str {
        self.ifname.as_deref().unwrap_or(&self.name)
    }

    /// A TAP that tapswitch creates (not an attached interface, not a vhost-user socket).
    pub fn is_tap(&self) -> bool {
        !self.attach && matches!(self.kind.as_deref(), None | Some("tap"))
    }

    /// `type`, `attach`, `socket` and `vhost_user_mode` checked together: whether the port
    /// attaches an interface, and its vhost-user socket.
    fn validate_kind(
        &self,
        f: &dyn Fn(&str) -> String,
    ) -> Result<(bool, Option<VhostUserPortSpec>), ConfigError> {
        let only_vhost_user =
            |key: &str| ConfigError::new(f(key), "only with type = \"vhost-user\"");
        match self.kind.as_deref() {
            None | Some("tap") | Some("attach") => {
                if self.kind.as_deref() == Some("tap") && self.attach {
                    return Err(ConfigError::new(
                        f("attach"),
                        "not with type = \"tap\" (type = \"attach\" attaches an interface)",
                    ));
                }
                if self.socket.is_some() {
                    return Err(only_vhost_user("socket"));
                }
                if self.vhost_user_mode.is_some() {
                    return Err(only_vhost_user("vhost_user_mode"));
                }
                Ok((self.attach || self.kind.as_deref() == Some("attach"), None))
            }
            Some("vhost-user") => {
                let Some(socket) = &self.socket else {
                    return Err(ConfigError::new(
                        f("socket"),
                        "missing: a vhost-user port needs the path of its socket",
                    ));
                };
                if !socket.starts_with('/') || socket.contains('\0') || socket.ends_with('/') {
                    return Err(ConfigError::new(
                        f("socket"),
                        format!("{socket:?} is not an absolute path of a file"),
                    ));
                }
                if socket.len() > SOCKET_PATH_MAX {
                    return Err(ConfigError::new(
                        f("socket"),
                        format!("longer than a Unix socket path may be ({SOCKET_PATH_MAX} bytes)"),
                    ));
                }
                let mode = match self.vhost_user_mode.as_deref() {
                    None | Some("server") => VhostUserMode::Server,
                    Some("client") => VhostUserMode::Client,
                    Some(other) => {
                        return Err(ConfigError::new(
                            f("vhost_user_mode"),
                            format!("{other:?}: \"server\" or \"client\""),
                        ))
                    }
                };
                for (set, key, why) in [
                    (
                        self.attach,
                        "attach",
                        "a vhost-user port attaches no interface",
                    ),
                    (
                        self.netns.is_some(),
                        "netns",
                        "a vhost-user port has no device in a namespace",
                    ),
                    (
                        self.ifname.is_some(),
                        "ifname",
                        "a vhost-user port has no device to name",
                    ),
                    (
                        self.offload.is_some(),
                        "offload",
                        "the VM negotiates its offloads when it connects",
                    ),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            f(key),
                            format!("not with type = \"vhost-user\": {why}"),
                        ));
                    }
                }
                Ok((
                    false,
                    Some(VhostUserPortSpec {
                        socket: socket.into(),
                        mode,
                    }),
                ))
            }
            Some(other) => Err(ConfigError::new(
                f("type"),
                format!("{other:?}: \"tap\", \"attach\" or \"vhost-user\""),
            )),
        }
    }

    /// Checks this port on its own; `at` is how errors name it (`port[0] (tap-c1)` or
    /// `port tap-c1`).
    pub fn validate(&self, at: &str) -> Result<PortSpec, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        let (attach, vhost_user) = self.validate_kind(&f)?;
        if !valid_ifname(&self.name) {
            return Err(ConfigError::new(
                f("name"),
                format!(
                    "{:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)",
                    self.name
                ),
            ));
        }
        if let Some(ns) = &self.netns {
            // A name as `ip netns` knows it, or the path of a namespace file
            // (`/run/netns/cni-…`, `/proc/PID/ns/net`), as CNI runtimes give it.
            let path_ok = ns.starts_with('/') && !ns.contains("/../") && !ns.ends_with("/..");
            if ns.is_empty()
                || (ns.contains('/') && !path_ok)
                || ns == "."
                || ns == ".."
                || ns.contains(['\n', '\0'])
            {
                return Err(ConfigError::new(
                    f("netns"),
                    format!("{ns:?} is not a namespace name or an absolute namespace path"),
                ));
            }
        }
        if let Some(ifname) = &self.ifname {
            if !valid_ifname(ifname) {
                return Err(ConfigError::new(
                    f("ifname"),
                    format!("{ifname:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)"),
                ));
            }
            if attach {
                return Err(ConfigError::new(
                    f("ifname"),
                    "not with attach: the port is named for the interface it attaches",
                ));
            }
        }
        if let Some(id) = &self.container_id {
            if id.is_empty() || id.len() > 256 || id.contains(['\n', '\0']) {
                return Err(ConfigError::new(
                    f("container_id"),
                    "1 to 256 bytes, no newline",
                ));
            }
        }
        let mut addresses = Vec::with_capacity(self.addresses.len());
        for a in &self.addresses {
            addresses.push(routing::parse_cidr(&f("addresses"), a, false)?.0);
        }
        let mut pairs = Vec::with_capacity(self.allowed_pairs.len());
        for pair in &self.allowed_pairs {
            let (prefix, mac) = match pair.split_once(',') {
                Some((p, m)) => (p.trim(), Some(parse_mac(&f("allowed_pairs"), m.trim())?)),
                None => (pair.trim(), None),
            };
            let (prefix, len) = routing::parse_cidr(&f("allowed_pairs"), prefix, false)?;
            pairs.push(AllowedPair { prefix, len, mac });
        }
        let security = self.port_security.unwrap_or(
            !self.addresses.is_empty() && !attach && (vhost_user.is_none() || self.mac.is_some()),
        );
        if security && attach {
            return Err(ConfigError::new(
                f("port_security"),
                "not with attach: the workload behind an attached interface has a MAC of its own that the switch does not know",
            ));
        }
        if security && vhost_user.is_some() && self.mac.is_none() {
            return Err(ConfigError::new(
                f("port_security"),
                "a vhost-user port needs the VM's mac for port security",
            ));
        }
        if !security {
            for (set, name) in [
                (!self.allowed_pairs.is_empty(), "allowed_pairs"),
                (self.allow_ra, "allow_ra"),
                (self.allow_dhcp_server, "allow_dhcp_server"),
            ] {
                if set {
                    return Err(ConfigError::new(
                        f(name),
                        "only with port security (addresses, or port_security = true)",
                    ));
                }
            }
        }
        let storm = self
            .storm_control
            .as_ref()
            .map(|c| c.validate(&f("storm_control")))
            .transpose()?;
        let security = security.then_some(SecuritySpec {
            addresses: addresses.clone(),
            pairs,
            allow_ra: self.allow_ra,
            allow_dhcp_server: self.allow_dhcp_server,
        });
        check_labels(&f("labels"), &self.labels)?;
        let police = self
            .police
            .as_ref()
            .map(|r| r.validate(&f("police"), false))
            .transpose()?;
        let shape = self
            .shape
            .as_ref()
            .map(|r| r.validate(&f("shape"), true))
            .transpose()?;
        let mac = self
            .mac
            .as_deref()
            .map(|m| parse_mac(&f("mac"), m))
            .transpose()?;
        if attach && mac.is_some() {
            return Err(ConfigError::new(
                f("mac"),
                "not allowed with attach: an attached interface keeps its own MAC",
            ));
        }
        if let Some(mtu) = self.mtu {
            if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
                return Err(ConfigError::new(
                    f("mtu"),
                    format!("{mtu} is out of range ({MTU_MIN}..={MTU_MAX})"),
                ));
            }
        }
        let mode = match (&self.vlan, &self.trunk) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    f("trunk"),
                    "a port has either vlan or trunk, not both",
                ))
            }
            (_, Some(list)) => {
                if list.is_empty() {
                    return Err(ConfigError::new(f("trunk"), "names no VLAN"));
                }
                let allowed = list
                    .iter()
                    .map(|v| parse_vlan(&f("trunk"), *v))
                    .collect::<Result<VlanSet, _>>()?;
                let native = self
                    .native_vlan
                    .map(|v| parse_vlan(&f("native_vlan"), v))
                    .transpose()?;
                PortMode::Trunk { allowed, native }
            }
            (vlan, None) => {
                if self.native_vlan.is_some() {
                    return Err(ConfigError::new(
                        f("native_vlan"),
                        "only a trunk port has a native VLAN",
                    ));
                }
                PortMode::Access(match vlan {
                    Some(v) => parse_vlan(&f("vlan"), *v)?,
                    None => VlanId::DEFAULT,
                })
            }
        };
        Ok(PortSpec {
            name: self.name.clone(),
            netns: self.netns.clone(),
            attach,
            vhost_user,
            mac,
            mtu: self.mtu,
            mode,
            max_macs: self.max_macs.unwrap_or(u32::MAX),
            offload: self.offload.unwrap_or(true),
            device: self.device().to_string(),
            security,
            storm,
            labels: self.labels.clone(),
            addresses,
            police,
            shape,
        })
    }
}

/// Checks label keys (up to 253 bytes) and values (up to 63, or empty): letters, digits
/// and `._-/`.
pub fn check_labels(
    field: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (k, v) in labels {
        let ok = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        };
        if !ok(k, 253) || !(v.is_empty() || ok(v, 63)) {
            return Err(ConfigError::new(
                field,
                format!("{k:?} = {v:?}: keys and values are letters, digits and ._-/"),
            ));
        }
    }
    Ok(())
}

impl StormControlConfig {
    fn validate(&self, field: &str) -> Result<StormSpec, ConfigError> {
        let mut any = false;
        let mut limit =
            |name: &str, rate: Option<u32>| -> Result<Option<(u32, u32)>, ConfigError> {
                let Some(rate) = rate else {
                    return Ok(None);
                };
                if !(1..=STORM_RATE_MAX).contains(&rate) {
                    return Err(ConfigError::new(
                        format!("{field}.{name}"),
                        format!("{rate} frames per second is out of range (1..={STORM_RATE_MAX})"),
                    ));
                }
                any = true;
                Ok(Some((rate, self.burst.unwrap_or((rate / 10).max(1)))))
            };
        let spec = StormSpec {
            broadcast: limit("broadcast", self.broadcast)?,
            multicast: limit("multicast", self.multicast)?,
            unknown_unicast: limit("unknown_unicast", self.unknown_unicast)?,
        };
        if !any {
            return Err(ConfigError::new(
                field,
                "names no limit: give broadcast, multicast or unknown_unicast (frames per second)",
            ));
        }
        if let Some(b) = self.burst {
            if !(1..=STORM_RATE_MAX).contains(&b) {
                return Err(ConfigError::new(
                    format!("{field}.burst"),
                    format!("{b} is out of range (1..={STORM_RATE_MAX})"),
                ));
            }
        }
        Ok(spec)
    }
}

impl FdbConfig {
    /// Checks this entry against the validated ports and VXLAN ports.
    pub fn validate(
        &self,
        at: &str,
        ports: &[PortSpec],
        vxlans: &[VxlanSpec],
    ) -> Result<FdbSpec, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        let mac = parse_mac(&f("mac"), &self.mac)?;
        let name = match (&self.port, self.vni, &self.remote) {
            (Some(_), None, None) => self.port.as_deref().unwrap_or_default(),
            (None, Some(vni), Some(remote)) => {
                let Some(i) = vxlans.iter().position(|v| v.vni == vni) else {
                    return Err(ConfigError::new(
                        f("vni"),
                        format!("vxlan {vni}: no such VNI"),
                    ));
                };
                let remote = parse_ipv4(&f("remote"), remote)?;
                if self.vlan.is_some_and(|v| v != vxlans[i].vlan.get()) {
                    return Err(ConfigError::new(
                        f("vlan"),
                        format!("VNI {vni} extends VLAN {}", vxlans[i].vlan),
                    ));
                }
                return Ok(FdbSpec {
                    mac,
                    vlan: vxlans[i].vlan,
                    target: FdbTarget::Remote { vxlan: i, remote },
                });
            }
            (None, None, None) => {
                return Err(ConfigError::new(
                    f("port"),
                    "name a port, or a vni and a remote",
                ))
            }
            (Some(_), _, _) => {
                return Err(ConfigError::new(
                    f("port"),
                    "a port entry takes no vni or remote",
                ))
            }
            (None, Some(_), None) => {
                return Err(ConfigError::new(
                    f("remote"),
                    "missing: the VTEP the MAC is behind",
                ))
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::new(
                    f("vni"),
                    "missing: the VNI the remote is in",
                ))
            }
        };
        let Some((index, port)) = ports.iter().enumerate().find(|(_, p)| p.name == name) else {
            return Err(ConfigError::new(
                f("port"),
                format!("port {name}: no such port"),
            ));
        };
        let vlan = match self.vlan {
            Some(v) => parse_vlan(&f("vlan"), v)?,
            None => match &port.mode {
                PortMode::Access(v) => *v,
                PortMode::Trunk {
                    native: Some(v), ..
                } => *v,
                PortMode::Trunk { native: None, .. } => {
                    return Err(ConfigError::new(
                        f("vlan"),
                        format!("port {} is a trunk: name the VLAN", port.name),
                    ))
                }
            },
        };
        if !port.mode.is_member(vlan) {
            return Err(ConfigError::new(
                f("vlan"),
                format!("port {} is not a member of VLAN {vlan}", port.name),
            ));
        }
        Ok(FdbSpec {
            mac,
            vlan,
            target: FdbTarget::Port(index),
        })
    }
}

impl NeighConfig {
    pub fn validate(&self, at: &str, vxlans: &[VxlanSpec]) -> Result<NeighSpec, ConfigError> {
        let f = |key: &str| format!("{at}.{key}");
        let ip: IpAddr = self.ip.parse().map_err(|_| {
            ConfigError::new(f("ip"), format!("{:?} is not an IP address", self.ip))
        })?;
        let mac = parse_mac(&f("mac"), &self.mac)?;
        let Some(vx) = vxlans.iter().find(|v| v.vni == self.vni) else {
            return Err(ConfigError::new(
                f("vni"),
                format!("vxlan {}: no such VNI", self.vni),
            ));
        };
        Ok(NeighSpec {
            vlan: vx.vlan,
            ip,
            mac,
        })
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Validated {
    pub ports: Vec<PortSpec>,
    pub fdb: Vec<FdbSpec>,
    pub vxlan: Vec<VxlanSpec>,
    pub neigh: Vec<NeighSpec>,
    pub interfaces: Vec<InterfaceSpec>,
    pub routes: Vec<RouteSpec>,
    /// Empty (unchecked) from [`Config::validate_without_nat`].
    pub nat: ValidatedNat,
}

impl Config {
    /// Parses TOML text; errors say where in the text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::new("config", e.to_string().trim_end().to_string()))?;
        if let Some(field) = config.owner_field() {
            return Err(ConfigError::new(
                field,
                "is set by tapswitch for the entries an agent manages, never in a file",
            ));
        }
        Ok(config)
    }

    /// Reads and parses a file; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        Config::from_toml(&text)
            .map_err(|e| ConfigError::new(path.display().to_string(), e.message))
    }

    /// The configuration without the entries an agent owns (see [`RouteConfig::owner`]):
    /// what is saved, and what `tapswitch config` prints.
    pub fn user_view(&self) -> Config {
        fn mine<T: Clone>(list: &[T], owner: impl Fn(&T) -> bool) -> Vec<T> {
            list.iter().filter(|e| !owner(e)).cloned().collect()
        }
        Config {
            switch: self.switch.clone(),
            ports: self.ports.clone(),
            fdb: mine(&self.fdb, |e| e.owner.is_some()),
            vxlan: mine(&self.vxlan, |e| e.owner.is_some()),
            neigh: mine(&self.neigh, |e| e.owner.is_some()),
            interfaces: mine(&self.interfaces, |e| e.owner.is_some()),
            routes: mine(&self.routes, |e| e.owner.is_some()),
            snat: mine(&self.snat, |e| e.owner.is_some()),
            dnat: self.dnat.clone(),
            services: mine(&self.services, |e| e.owner.is_some()),
            policies: self.policies.clone(),
            admin_policies: self.admin_policies.clone(),
            baseline_policies: self.baseline_policies.clone(),
            cluster: self.cluster.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// How many entries agents own.
    pub fn owned_entries(&self) -> usize {
        self.fdb.iter().filter(|e| e.owner.is_some()).count()
            + self.vxlan.iter().filter(|e| e.owner.is_some()).count()
            + self.neigh.iter().filter(|e| e.owner.is_some()).count()
            + self.interfaces.iter().filter(|e| e.owner.is_some()).count()
            + self.routes.iter().filter(|e| e.owner.is_some()).count()
            + self.snat.iter().filter(|e| e.owner.is_some()).count()
            + self.services.iter().filter(|e| e.owner.is_some()).count()
    }

    /// The first entry that names an owner, as a field: owners are set by the switch for an
    /// agent's batch, never in a file or a single request.
    pub fn owner_field(&self) -> Option<String> {
        fn at<T>(list: &[T], name: &str, owned: impl Fn(&T) -> bool) -> Option<String> {
            list.iter()
                .position(owned)
                .map(|i| format!("{name}[{i}].owner"))
        }
        at(&self.fdb, "fdb", |e| e.owner.is_some())
            .or_else(|| at(&self.vxlan, "vxlan", |e| e.owner.is_some()))
            .or_else(|| at(&self.neigh, "neigh", |e| e.owner.is_some()))
            .or_else(|| at(&self.interfaces, "interface", |e| e.owner.is_some()))
            .or_else(|| at(&self.routes, "route", |e| e.owner.is_some()))
            .or_else(|| at(&self.snat, "snat", |e| e.owner.is_some()))
            .or_else(|| at(&self.services, "service", |e| e.owner.is_some()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks the whole configuration.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let mut v = self.validate_without_nat()?;
        v.nat = self.validate_nat(&v.interfaces)?;
        self.validate_policies()?;
        Ok(v)
    }

    /// The policies of one tier, as configured.
    pub fn policies_of(&self, tier: policy::Tier) -> &Vec<policy::PolicyConfig> {
        match tier {
            policy::Tier::Admin => &self.admin_policies,
            policy::Tier::Policy => &self.policies,
            policy::Tier::Baseline => &self.baseline_policies,
        }
    }

    /// The policies of one tier, to change.
    pub fn policies_of_mut(&mut self, tier: policy::Tier) -> &mut Vec<policy::PolicyConfig> {
        match tier {
            policy::Tier::Admin => &mut self.admin_policies,
            policy::Tier::Policy => &mut self.policies,
            policy::Tier::Baseline => &mut self.baseline_policies,
        }
    }

    /// Checks the policy sections: every policy, and names unique within a tier. Returns them
    /// validated, tier by tier, in file order.
    pub fn validate_policies(&self) -> Result<Vec<policy::PolicySpec>, ConfigError> {
        let mut out = Vec::new();
        for tier in [
            policy::Tier::Admin,
            policy::Tier::Policy,
            policy::Tier::Baseline,
        ] {
            let section = policy::section(tier);
            let mut names = std::collections::HashSet::new();
            for (i, p) in self.policies_of(tier).iter().enumerate() {
                let at = format!("{section}[{i}] ({})", p.name);
                if !names.insert(p.name.as_str()) {
                    return Err(ConfigError::new(
                        format!("{at}.name"),
                        format!("{:?} is named twice in [[{section}]]", p.name),
                    ));
                }
                out.push(p.validate(tier, &at)?);
            }
        }
        Ok(out)
    }

    /// Checks everything but the NAT sections, leaving [`Validated::nat`] empty: for callers
    /// that keep the NAT sections checked by other means (the switch keeps an index, so that
    /// publishing a change does not re-check every Service).
    pub fn validate_without_nat(&self) -> Result<Validated, ConfigError> {
        let s = &self.switch;
        if !(1..=1_000_000).contains(&s.mac_aging_secs) {
            return Err(ConfigError::new(
                "switch.mac_aging_secs",
                format!("{} is out of range (1..=1000000)", s.mac_aging_secs),
            ));
        }
        if let Some(n) = s.workers.filter(|n| !(1..=WORKERS_MAX).contains(n)) {
            return Err(ConfigError::new(
                "switch.workers",
                format!("{n} is out of range (1..={WORKERS_MAX})"),
            ));
        }
        if let Some(dir) = &s.state_dir {
            if dir.is_empty() || !dir.starts_with('/') {
                return Err(ConfigError::new(
                    "switch.state_dir",
                    format!("{dir:?} is not an absolute path"),
                ));
            }
        }
        if let Some(n) = s.checkpoint_secs.filter(|n| *n > 86_400) {
            return Err(ConfigError::new(
                "switch.checkpoint_secs",
                format!("{n} is out of range (0..=86400)"),
            ));
        }
        let window_max = tapswitch_dataplane::io::busy_poll::WINDOW_MAX.as_micros() as u64;
        if let Some(n) = s.busy_poll_us.filter(|n| *n > window_max) {
            return Err(ConfigError::new(
                "switch.busy_poll_us",
                format!("{n} is out of range (0..={window_max})"),
            ));
        }
        if let Some(n) = s.busy_poll_budget_percent.filter(|n| *n > 100) {
            return Err(ConfigError::new(
                "switch.busy_poll_budget_percent",
                format!("{n} is out of range (0..=100)"),
            ));
        }
        if let Some(g) = &s.socket_group {
            if g.is_empty() || g.contains(['/', ':', ' ', '\n']) {
                return Err(ConfigError::new(
                    "switch.socket_group",
                    format!("{g:?} is not a group name"),
                ));
            }
        }
        if !(1..=16_777_216).contains(&s.mac_table_max) {
            return Err(ConfigError::new(
                "switch.mac_table_max",
                format!("{} is out of range (1..=16777216)", s.mac_table_max),
            ));
        }
        if self.ports.len() > tapswitch_dataplane::tables::PortId::MAX_PORTS {
            return Err(ConfigError::new(
                "port",
                format!(
                    "{} ports; at most {}",
                    self.ports.len(),
                    tapswitch_dataplane::tables::PortId::MAX_PORTS
                ),
            ));
        }
        let mut ports = Vec::with_capacity(self.ports.len());
        let mut names = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let at = format!("port[{i}] ({})", p.name);
            let spec = p.validate(&at)?;
            if !names.insert(spec.name.clone()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("port {} is defined twice", p.name),
                ));
            }
            ports.push(spec);
        }
        let mut vxlan: Vec<VxlanSpec> = Vec::with_capacity(self.vxlan.len());
        for (i, v) in self.vxlan.iter().enumerate() {
            let at = format!("vxlan[{i}] (vni {})", v.vni);
            let spec = v.validate(&at)?;
            if vxlan.iter().any(|o| o.vni == spec.vni) {
                return Err(ConfigError::new(
                    format!("{at}.vni"),
                    format!("VNI {} is defined twice", spec.vni),
                ));
            }
            if vxlan.iter().any(|o| o.vlan == spec.vlan) {
                return Err(ConfigError::new(
                    format!("{at}.vlan"),
                    format!("VLAN {} is already extended by another VNI", spec.vlan),
                ));
            }
            if ports.iter().any(|p| p.name == spec.port_name()) {
                return Err(ConfigError::new(
                    format!("{at}.vni"),
                    format!("a port is already named {}", spec.port_name()),
                ));
            }
            vxlan.push(spec);
        }
        if ports.len() + vxlan.len() > tapswitch_dataplane::tables::PortId::MAX_PORTS {
            return Err(ConfigError::new(
                "vxlan",
                format!(
                    "ports and VNIs together: at most {}",
                    tapswitch_dataplane::tables::PortId::MAX_PORTS
                ),
            ));
        }
        let mut fdb = Vec::with_capacity(self.fdb.len());
        let mut keys = HashSet::new();
        for (i, e) in self.fdb.iter().enumerate() {
            let at = format!("fdb[{i}]");
            let spec = e.validate(&at, &ports, &vxlan)?;
            if !keys.insert((spec.vlan, spec.mac)) {
                return Err(ConfigError::new(
                    format!("{at}.mac"),
                    format!("{} in VLAN {} is defined twice", spec.mac, spec.vlan),
                ));
            }
            fdb.push(spec);
        }
        let mut neigh: Vec<NeighSpec> = Vec::with_capacity(self.neigh.len());
        let mut addresses = HashSet::with_capacity(self.neigh.len());
        for (i, n) in self.neigh.iter().enumerate() {
            let at = format!("neigh[{i}]");
            let spec = n.validate(&at, &vxlan)?;
            if !addresses.insert((spec.vlan, spec.ip)) {
                return Err(ConfigError::new(
                    format!("{at}.ip"),
                    format!("{} is defined twice for VNI {}", spec.ip, n.vni),
                ));
            }
            neigh.push(spec);
        }
        let (interfaces, routes) = self.validate_routing()?;
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        if let Some(m) = &self.metrics {
            m.listen()?;
        }
        Ok(Validated {
            ports,
            fdb,
            vxlan,
            neigh,
            interfaces,
            routes,
            nat: ValidatedNat::default(),
        })
    }

    /// Checks `[[interface]]` and `[[route]]`.
    fn validate_routing(&self) -> Result<(Vec<InterfaceSpec>, Vec<RouteSpec>), ConfigError> {
        if !(1..=16_777_216).contains(&self.switch.neigh_table_max) {
            return Err(ConfigError::new(
                "switch.neigh_table_max",
                format!(
                    "{} is out of range (1..=16777216)",
                    self.switch.neigh_table_max
                ),
            ));
        }
        let mut interfaces: Vec<InterfaceSpec> = Vec::with_capacity(self.interfaces.len());
        for (i, c) in self.interfaces.iter().enumerate() {
            let at = format!("interface[{i}] (vlan {})", c.vlan);
            let spec = c.validate(&at)?;
            if interfaces.iter().any(|o| o.vlan == spec.vlan) {
                return Err(ConfigError::new(
                    format!("{at}.vlan"),
                    format!("VLAN {} already has an interface", spec.vlan),
                ));
            }
            for o in &interfaces {
                let clash = spec.v4.iter().find_map(|(a, l)| {
                    o.v4.iter()
                        .find(|(b, m)| a == b || (l == m && same_subnet_v4(*a, *b, *l)))
                        .map(|(b, m)| format!("{a}/{l} clashes with {b}/{m} of VLAN {}", o.vlan))
                });
                let clash = clash.or_else(|| {
                    spec.v6.iter().find_map(|(a, l)| {
                        o.v6.iter()
                            .find(|(b, m)| a == b || (l == m && same_subnet_v6(*a, *b, *l)))
                            .map(|(b, m)| {
                                format!("{a}/{l} clashes with {b}/{m} of VLAN {}", o.vlan)
                            })
                    })
                });
                if let Some(msg) = clash {
                    return Err(ConfigError::new(format!("{at}.address"), msg));
                }
            }
            interfaces.push(spec);
        }
        let mut routes: Vec<RouteSpec> = Vec::with_capacity(self.routes.len());
        let mut prefixes = HashSet::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("route[{i}] ({})", r.prefix);
            let spec = r.validate(&at, &interfaces)?;
            if let Some(i) = interfaces
                .iter()
                .find(|i| routing::is_connected(i, spec.prefix, spec.len))
            {
                return Err(ConfigError::new(
                    format!("{at}.prefix"),
                    format!(
                        "{}/{} is the connected subnet of the interface on VLAN {}",
                        spec.prefix, spec.len, i.vlan
                    ),
                ));
            }
            if !prefixes.insert((spec.prefix, spec.len)) {
                return Err(ConfigError::new(
                    format!("{at}.prefix"),
                    format!("{}/{} is defined twice", spec.prefix, spec.len),
                ));
            }
            routes.push(spec);
        }
        Ok((interfaces, routes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::from_toml(text).and_then(|c| c.validate().map(|_| ())) {
            Ok(()) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_issue_example_validates() {
        let c = Config::from_toml(
            r#"
            [switch]
            mac_aging_secs = 300
            mac_table_max = 65536
            [[port]]
            name = "tap-c1"
            netns = "c1"
            mac = "02:00:00:00:00:01"
            mtu = 1500
            vlan = 10
            max_macs = 256
            [[port]]
            name = "tap-t"
            trunk = [10, 20]
            [[port]]
            name = "veth-x"
            attach = true
            [[fdb]]
            mac = "02:00:00:00:00:09"
            port = "tap-c1"
            vlan = 10
            "#,
        )
        .unwrap();
        let v = c.validate().unwrap();
        assert_eq!(v.ports.len(), 3);
        assert_eq!(v.ports[0].mode, PortMode::Access(VlanId::new(10).unwrap()));
        assert_eq!(v.ports[0].max_macs, 256);
        assert!(v.ports[2].attach);
        assert_eq!(v.fdb[0].target, FdbTarget::Port(0));
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c, "round trip");
    }

    #[test]
    fn default_config_is_valid() {
        let c = Config::from_toml(DEFAULT_CONFIG).unwrap();
        assert!(c.validate().unwrap().ports.is_empty());
    }

    #[test]
    fn overlay_example_validates() {
        let c = Config::from_toml(
            r#"
            [[port]]
            name = "tap-c1"
            vlan = 10
            [[vxlan]]
            vni = 42
            vlan = 10
            local = "192.168.77.1"
            port = 8472
            remotes = ["192.168.77.2", "192.168.77.3"]
            learning = false
            allow = ["192.168.77.0/24"]
            [[fdb]]
            mac = "86:a7:37:e5:4f:e0"
            vni = 42
            remote = "192.168.77.2"
            [[neigh]]
            ip = "10.42.1.0"
            mac = "62:c8:a9:ce:ca:4e"
            vni = 42
            [[neigh]]
            ip = "fd42::1"
            mac = "62:c8:a9:ce:ca:4e"
            vni = 42
            "#,
        )
        .unwrap();
        let v = c.validate().unwrap();
        let vx = &v.vxlan[0];
        assert_eq!(
            (vx.vni, vx.vlan.get(), vx.endpoint.port, vx.mtu),
            (42, 10, 8472, 1450)
        );
        assert!(!vx.learning);
        assert_eq!(vx.remotes.len(), 2);
        assert!(vx.allow[0].contains("192.168.77.9".parse().unwrap()));
        assert!(!vx.allow[0].contains("192.168.78.9".parse().unwrap()));
        assert_eq!(
            v.fdb[0].target,
            FdbTarget::Remote {
                vxlan: 0,
                remote: "192.168.77.2".parse().unwrap()
            }
        );
        assert_eq!(v.neigh.len(), 2);
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c, "round trip");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[[port]]\nname = \"a\"\nvlan = 5000", "port[0] (a).vlan: 5000 is not a VLAN id"),
            ("[[port]]\nname = \"a\"\nvlan = 1\ntrunk = [2]", "port[0] (a).trunk: a port has either"),
            ("[[port]]\nname = \"a\"\ntrunk = []", "port[0] (a).trunk: names no VLAN"),
            ("[[port]]\nname = \"a\"\nmac = \"zz\"", "port[0] (a).mac:"),
            ("[[port]]\nname = \"a\"\nmac = \"01:00:00:00:00:01\"", "not a unicast MAC"),
            ("[[port]]\nname = \"a\"\nmtu = 10", "port[0] (a).mtu: 10 is out of range"),
            ("[[port]]\nname = \"a/b\"", "port[0] (a/b).name:"),
            ("[[port]]\nname = \"a\"\n[[port]]\nname = \"a\"", "port[1] (a).name: port a is defined twice"),
            ("[[port]]\nname = \"a\"\nattach = true\nmac = \"02:00:00:00:00:01\"", "not allowed with attach"),
            ("[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"", "port[0] (vm1).socket: missing"),
            ("[[port]]\nname = \"a\"\nsocket = \"/run/a.sock\"", "port[0] (a).socket: only with type = \"vhost-user\""),
            ("[[port]]\nname = \"a\"\nattach = true\nsocket = \"/run/a.sock\"", "port[0] (a).socket: only with"),
            ("[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\nsocket = \"vm1.sock\"", "port[0] (vm1).socket: \"vm1.sock\" is not an absolute path"),
            ("[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\nsocket = \"/run/vm1.sock\"\nvhost_user_mode = \"listen\"", "port[0] (vm1).vhost_user_mode: \"listen\""),
            ("[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\nsocket = \"/run/vm1.sock\"\nnetns = \"x\"", "port[0] (vm1).netns: not with type = \"vhost-user\""),
            ("[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\nsocket = \"/run/vm1.sock\"\nport_security = true", "port[0] (vm1).port_security: a vhost-user port needs the VM's mac"),
            ("[[port]]\nname = \"vm1\"\ntype = \"virtio\"", "port[0] (vm1).type: \"virtio\""),
            ("[[port]]\nname = \"a\"\ntype = \"tap\"\nattach = true", "port[0] (a).attach: not with type = \"tap\""),
            ("[switch]\nmac_table_max = 0", "switch.mac_table_max: 0 is out of range"),
            ("[switch]\nmac_aging_secs = 0", "switch.mac_aging_secs"),
            ("[switch]\nworkers = 0", "switch.workers"),
            ("[switch]\nworkers = 65", "switch.workers"),
            ("[switch]\nbusy_poll_us = 10001", "switch.busy_poll_us"),
            (
                "[switch]\nbusy_poll_budget_percent = 101",
                "switch.busy_poll_budget_percent",
            ),
            ("[[fdb]]\nmac = \"02:00:00:00:00:01\"\nport = \"nope\"", "fdb[0].port: port nope: no such port"),
            (
                "[[port]]\nname = \"a\"\nvlan = 10\n[[fdb]]\nmac = \"02:00:00:00:00:01\"\nport = \"a\"\nvlan = 20",
                "fdb[0].vlan: port a is not a member of VLAN 20",
            ),
            ("[[port]]\nname = \"a\"\nvlna = 10", "unknown field `vlna`"),
            ("[[vxlan]]\nvni = 16777216\nlocal = \"10.0.0.1\"", "vxlan[0] (vni 16777216).vni: 16777216 is not a 24-bit VNI"),
            ("[[vxlan]]\nvni = 1\nlocal = \"nope\"", "vxlan[0] (vni 1).local: \"nope\" is not an IPv4 address"),
            ("[[vxlan]]\nvni = 1\nlocal = \"10.0.0.1\"\nremotes = [\"10.0.0.1\"]", "vxlan[0] (vni 1).remotes: 10.0.0.1 cannot be a remote VTEP"),
            ("[[vxlan]]\nvni = 1\nlocal = \"10.0.0.1\"\nallow = [\"10.0.0.0/33\"]", "vxlan[0] (vni 1).allow"),
            ("[[vxlan]]\nvni = 1\nlocal = \"10.0.0.1\"\n[[vxlan]]\nvni = 1\nvlan = 2\nlocal = \"10.0.0.1\"", "vxlan[1] (vni 1).vni: VNI 1 is defined twice"),
            ("[[vxlan]]\nvni = 1\nlocal = \"10.0.0.1\"\n[[vxlan]]\nvni = 2\nlocal = \"10.0.0.1\"", "vxlan[1] (vni 2).vlan: VLAN 1 is already extended"),
            ("[[fdb]]\nmac = \"02:00:00:00:00:01\"\nvni = 9\nremote = \"10.0.0.2\"", "fdb[0].vni: vxlan 9: no such VNI"),
            ("[[fdb]]\nmac = \"02:00:00:00:00:01\"\nvni = 9", "fdb[0].remote: missing"),
            ("[[fdb]]\nmac = \"02:00:00:00:00:01\"", "fdb[0].port: name a port, or a vni and a remote"),
            ("[[neigh]]\nip = \"10.0.0.9\"\nmac = \"02:00:00:00:00:01\"\nvni = 3", "neigh[0].vni: vxlan 3: no such VNI"),
            ("[[vxlan]]\nvni = 1\nlocal = \"10.0.0.1\"\n[[neigh]]\nip = \"10.0.0\"\nmac = \"02:00:00:00:00:01\"\nvni = 1", "neigh[0].ip"),
            ("[swtich]\n", "unknown field `swtich`"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.contains(want),
                "for {text:?}\n got: {got}\nwant: {want}"
            );
        }
    }
}
