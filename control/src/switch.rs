//! The [`Switch`]: the control thread's whole state and every change to it.
//!
//! Ownership: the control thread owns the `Switch` (configuration, port devices, port id
//! allocation, worker handles). Every operation validates the change against a copy of the
//! configuration first; only then does it create or remove devices, compile a new
//! [`Snapshot`] and publish it to the workers, so an error changes nothing. A publication
//! returns once every worker forwards with the new snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use serde::Serialize;
use tapswitch_dataplane::io::ipip::IpipSocket;
use tapswitch_dataplane::io::vhost_user::VhostUserSpec;
use tapswitch_dataplane::io::{
    PortDevice, PortError, Snapshot, TapSpec, TunnelSocket, WorkerHandle,
};
use tapswitch_dataplane::pipeline::rate::{ByteBucket, RateLimits, Shaper};
use tapswitch_dataplane::pipeline::{
    security, DropReason, ForwardingState, Limiter, NextHop, PortCounters, PortMode, PortSecurity,
    PortState, Route, RoutingState, SharedTables, StormControl, VxlanPort,
};
use tapswitch_dataplane::tables::{FdbKey, PortId};
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

use crate::config::{
    self, Config, ConfigError, FdbConfig, FdbTarget, NeighConfig, PortChange, PortConfig, PortSpec,
    RateSpec, VxlanConfig, VxlanSpec,
};
use crate::state::{StateError, StateStore, TapRef};

pub mod batch;
mod learned;
mod nat;
pub mod policy;
mod routing;
pub mod tap;
mod trace;
pub use learned::Restored;
pub use nat::{
    BackendInfo, ConnectionInfo, ConntrackShow, ConntrackSummary, DnatInfo, NatStats, ServiceInfo,
    SnatInfo, TupleInfo,
};
pub use routing::{InterfaceInfo, InterfaceStats, NeighInfo, RouteInfo};

/// How long a publication may take before it is an error.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of a change to the switch. The message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The configuration or request is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A port's device could not be set up.
    #[error("port {name}: {source}")]
    Port {
        name: String,
        #[source]
        source: PortError,
    },
    /// A change to an entry that another owner manages (see [`batch`]).
    #[error("{0}")]
    Owned(String),
    #[error("batch: {0}")]
    Batch(String),
    /// A request that cannot be carried out as asked (the message names the field).
    #[error("{0}")]
    Invalid(String),
    #[error("port {0}: no such port")]
    NoSuchPort(String),
    /// A port with that name exists.
    #[error("port {0}: already exists")]
    PortExists(String),
    /// No port id is free.
    #[error("port {0}: the switch already has the maximum of {max} ports", max = PortId::MAX_PORTS)]
    TooManyPorts(String),
    /// No FDB entry matched.
    #[error("fdb {0}: no such entry")]
    NoSuchFdbEntry(String),
    /// A VXLAN endpoint's sockets could not be opened.
    #[error("vxlan {vni}: {source}")]
    Tunnel {
        vni: u32,
        #[source]
        source: std::io::Error,
    },
    /// No VXLAN port has that VNI.
    #[error("vxlan {0}: no such VNI")]
    NoSuchVni(u32),
    /// `port del` on a VNI's port.
    #[error("port {0}: is VNI {1}; remove it with `vxlan del {1}`")]
    IsVxlan(String, u32),
    /// No neighbour entry matched.
    #[error("neigh {0}: no such entry")]
    NoSuchNeigh(String),
    /// The host's IPIP sockets could not be opened.
    #[error("route: opening the IPIP sockets: {0}")]
    Ipip(#[source] std::io::Error),
    /// No interface is on that VLAN.
    #[error("interface {0}: no such interface")]
    NoSuchInterface(u16),
    /// An interface on that VLAN exists.
    #[error("interface {0}: already exists")]
    InterfaceExists(u16),
    /// No route has that prefix.
    #[error("route {0}: no such route")]
    NoSuchRoute(String),
    /// No Service has that name.
    #[error("service {0}: no such service")]
    NoSuchService(String),
    /// No policy has that name.
    #[error("policy {0}: no such policy")]
    NoSuchPolicy(String),
    /// A Service with that name exists.
    #[error("service {0}: already exists")]
    ServiceExists(String),
    /// No port forward has that protocol, address and port.
    #[error("dnat {0}: no such rule")]
    NoSuchDnat(String),
    /// No source NAT rule has that source and VLAN.
    #[error("snat {0}: no such rule")]
    NoSuchSnat(String),
    /// A worker thread could not be reached or did not adopt a new state.
    #[error("dataplane: {0}")]
    Worker(#[source] std::io::Error),
    /// The change could not be written to the state directory, so it was not made.
    #[error("{0}; the change was not made")]
    State(#[source] StateError),
    /// The saved state could not be read.
    #[error(transparent)]
    Restore(StateError),
}

/// What carries a port's frames.
#[derive(Clone)]
enum Backend {
    /// A TAP or an attached interface.
    Device(Arc<PortDevice>),
    /// A VNI: frames go to remote VTEPs through the endpoint's tunnel socket.
    Vxlan(VxlanSpec),
}

impl Backend {
    fn kind(&self) -> &'static str {
        match self {
            Backend::Device(d) => d.kind().as_str(),
            Backend::Vxlan(_) => "vxlan",
        }
    }

    fn mtu(&self) -> u32 {
        match self {
            Backend::Device(d) => d.mtu(),
            Backend::Vxlan(v) => v.mtu,
        }
    }

    fn mac(&self) -> String {
        match self {
            Backend::Device(d) => d.mac().to_string(),
            Backend::Vxlan(_) => "-".into(),
        }
    }

    fn device(&self) -> Option<Arc<PortDevice>> {
        match self {
            Backend::Device(d) => Some(Arc::clone(d)),
            Backend::Vxlan(_) => None,
        }
    }

    fn vxlan(&self) -> Option<&VxlanSpec> {
        match self {
            Backend::Vxlan(v) => Some(v),
            Backend::Device(_) => None,
        }
    }
}

/// The bridge-port view of a VNI: an access port of its VLAN.
fn vxlan_port_spec(v: &VxlanSpec) -> PortSpec {
    PortSpec {
        name: v.port_name(),
        netns: None,
        attach: false,
        vhost_user: None,
        mac: None,
        mtu: Some(v.mtu),
        mode: PortMode::Access(v.vlan),
        max_macs: u32::MAX,
        offload: false,
        device: v.port_name(),
        security: None,
        storm: None,
        labels: Default::default(),
        addresses: Vec::new(),
        police: None,
        shape: None,
    }
}

/// A port as the switch holds it.
#[derive(Clone)]
struct Port {
    spec: PortSpec,
    backend: Backend,
    /// Counter values of this port id when the port was added (ids are reused).
    baseline: PortStats,
}

/// Traffic counters of one port, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    /// Frames not sent here because they exceed this port's MTU.
    pub tx_oversized: u64,
    /// Drop reason -> frames dropped on ingress at this port.
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}

impl PortStats {
    fn add(&mut self, c: &PortCounters) {
        self.rx_packets += c.rx_packets.get();
        self.rx_bytes += c.rx_bytes.get();
        self.tx_packets += c.tx_packets.get();
        self.tx_bytes += c.tx_bytes.get();
        self.tx_errors += c.tx_errors.get();
        self.tx_oversized += c.tx_oversized.get();
        for r in DropReason::ALL {
            *self.drops.entry(r.as_str()).or_default() += c.drops[r.index()].get();
        }
    }

    fn since(&self, base: &PortStats) -> PortStats {
        PortStats {
            rx_packets: self.rx_packets - base.rx_packets,
            rx_bytes: self.rx_bytes - base.rx_bytes,
            tx_packets: self.tx_packets - base.tx_packets,
            tx_bytes: self.tx_bytes - base.tx_bytes,
            tx_errors: self.tx_errors - base.tx_errors,
            tx_oversized: self.tx_oversized - base.tx_oversized,
            drops: self
                .drops
                .iter()
                .map(|(k, v)| (*k, v - base.drops.get(k).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// `stats` output.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub ports: Vec<NamedPortStats>,
    pub fdb: FdbStats,
    /// The VXLAN tunnel sockets: outer packets in and out, drops before a frame reaches a
    /// VNI (`vxlan_*` reasons), and `tx_oversized` for frames too large for the underlay.
    pub vxlan: PortStats,
    /// The IPIP socket: outer packets in and out, drops of what it received
    /// (`ipip_*` reasons and what the router dropped of inner packets).
    pub ipip: PortStats,
    /// The router interfaces.
    pub interfaces: Vec<NamedInterfaceStats>,
    /// Connection tracking and NAT.
    pub nat: NatStats,
    /// What each worker thread forwarded: frames read from ports and tunnels, frames written.
    pub workers: Vec<WorkerStats>,
    /// The bounded tables: MACs, remote VTEPs, neighbours, connections.
    pub tables: Vec<TableStats>,
    /// The checkpoints of learned and connection state (when the switch keeps state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointStats>,
}

/// `stats`: the checkpoints written since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointStats {
    pub written: u64,
    pub failed: u64,
    /// Entries and bytes of the last one written.
    pub entries: u64,
    pub bytes: u64,
    /// Seconds since the last one was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<u64>,
}

/// One worker's share of the traffic (`stats`): how evenly the kernel spreads flows over
/// the queues.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerStats {
    pub worker: usize,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Rounds of the poll loop that read something from a port or socket.
    pub batches: u64,
    /// Frames read in those rounds.
    pub batch_frames: u64,
    /// Rounds by frames read: `[le, count]` with `le` the bucket's upper bound (`+Inf` last,
    /// as 0).
    pub batch_sizes: Vec<(u64, u64)>,
    /// Time spent on frames, not waiting for them.
    pub busy_ns: u64,
    pub wakeups: u64,
    /// Time spent polling on after traffic and finding nothing (`[switch] busy_poll_us`).
    pub busy_poll_ns: u64,
    /// Polls on after traffic that found frames: wake-ups saved.
    pub busy_poll_hits: u64,
}

/// `stats`: how full each bounded table is.
#[derive(Debug, Clone, Serialize)]
pub struct TableStats {
    pub table: &'static str,
    pub entries: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamedInterfaceStats {
    pub vlan: u16,
    #[serde(flatten)]
    pub stats: InterfaceStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamedPortStats {
    pub name: String,
    #[serde(flatten)]
    pub stats: PortStats,
}

/// Learning counters, summed over workers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FdbStats {
    pub learned_entries: u64,
    pub static_entries: u64,
    pub learned: u64,
    pub moved: u64,
    pub aged: u64,
    /// MACs not learned because the table held `mac_table_max` entries.
    pub table_full: u64,
    /// MACs not learned because their port held its `max_macs`.
    pub port_limit: u64,
    pub remote_learned: u64,
    pub remote_moved: u64,
    pub remote_table_full: u64,
    /// ARP requests and neighbour solicitations answered by the switch.
    pub neigh_suppressed: u64,
}

/// One line of `port list`.
#[derive(Debug, Clone, Serialize)]
pub struct PortInfo {
    pub name: String,
    pub id: u16,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub mac: String,
    pub mtu: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trunk: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_vlan: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_macs: Option<u32>,
    /// Super-frames and partial checksums are handed to the device.
    pub offload: bool,
    /// The device's name inside its namespace, when it is not the port's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// The container that owns the port (set by the CNI plugin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Port security in force on the port.
    pub port_security: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_pairs: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_ra: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_dhcp_server: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_control: Option<config::StormControlConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub police: Option<RateInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<RateInfo>,
    /// A vhost-user port's socket and connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<VhostUserInfo>,
}

/// A vhost-user port's connection as `port list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VhostUserInfo {
    pub socket: String,
    /// `server` (tapswitch listens) or `client` (tapswitch connects).
    pub mode: &'static str,
    /// A frontend (the VM's QEMU) is connected and has negotiated.
    pub connected: bool,
    /// The virtio-net features it acknowledged, as a number and by name.
    pub features: String,
    pub feature_names: Vec<&'static str>,
    /// Queue pairs offered, and those whose rings run.
    pub queue_pairs: usize,
    pub queue_pairs_enabled: usize,
    /// Frontends that connected since the port was made.
    pub connections: u64,
    /// Frames to the VM dropped for want of buffers in its RX rings.
    pub rx_no_buffers: u64,
    /// Malformed chains the VM sent.
    pub tx_bad_chains: u64,
    /// Frames the VM sent, by queue pair (how its flows spread over the workers).
    pub pair_frames: Vec<u64>,
}

impl VhostUserInfo {
    fn of(s: &tapswitch_dataplane::io::vhost_user::VhostUserStatus) -> VhostUserInfo {
        VhostUserInfo {
            socket: s.socket.display().to_string(),
            mode: s.mode.as_str(),
            connected: s.connected,
            features: format!("{:#x}", s.features),
            feature_names: tapswitch_dataplane::io::vhost_user::features::names(s.features),
            queue_pairs: s.pairs,
            queue_pairs_enabled: s.pairs_enabled,
            connections: s.connections,
            rx_no_buffers: s.rx_no_buffers,
            tx_bad_chains: s.tx_bad_chains,
            pair_frames: s.pair_frames.clone(),
        }
    }
}

/// A rate limit as `port list` shows it: as configured, and in bits and bytes.
#[derive(Debug, Clone, Serialize)]
pub struct RateInfo {
    /// As configured (`200mbit`).
    pub rate: String,
    pub rate_bits_per_sec: u64,
    pub burst_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
}

impl RateInfo {
    fn of(c: &config::RateConfig, spec: &RateSpec, shaping: bool) -> RateInfo {
        RateInfo {
            rate: c.rate.clone(),
            rate_bits_per_sec: spec.rate * 8,
            burst_bytes: spec.burst,
            latency_us: shaping.then_some(spec.latency_us),
        }
    }
}

/// One line of `vxlan list`.
#[derive(Debug, Clone, Serialize)]
pub struct VxlanInfo {
    pub vni: u32,
    pub vlan: u16,
    /// The bridge port name of the VNI (as `fdb show` names it).
    pub port: String,
    pub local: String,
    pub udp_port: u16,
    pub remotes: Vec<String>,
    pub learning: bool,
    pub allow: Vec<String>,
    pub mtu: u32,
    pub ttl: u8,
}

/// One line of `fdb show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbInfo {
    pub mac: String,
    pub port: String,
    pub vlan: u16,
    /// "learned" or "static".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Seconds since the station was last seen (learned entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<u64>,
    /// Entries behind a VXLAN port: the VNI and the remote VTEP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

pub struct Switch {
    /// The running configuration: `base` plus the runtime changes.
    config: Config,
    /// The configuration file as last applied (the base of [`config::merge`]).
    base: Config,
    /// Where `config` and `base` are persisted before a change is published; `None` for a
    /// switch that keeps nothing (in-process tests and benches).
    store: Option<StateStore>,
    /// The tables every worker shares (learned MACs, neighbours, conntrack, ...).
    shared: Arc<SharedTables>,
    /// Where the workers' clock starts (see [`Switch::now`]).
    epoch: Instant,
    /// Checkpoints may be written: the start restored the last one (a failed start must not
    /// overwrite it).
    checkpoints: bool,
    /// The workers read nothing (stopped, or paused for a takeover): a checkpoint now is
    /// complete.
    quiesced: bool,
    /// Checkpoints written and failed, the last one's size and time.
    checkpoint_stats: CheckpointStats,
    last_checkpoint: Option<Instant>,
    /// TAPs whose removal is saved but not done yet (persisted with the configuration, so a
    /// crash in between leaves no TAP that nothing knows about).
    deleting: Vec<TapRef>,
    /// TAP queues handed over by the process this one takes over from, used instead of
    /// opening new queues while starting.
    handed: HashMap<String, crate::takeover::HandedTap>,
    /// While starting: TAPs that exist are adopted, not refused, when the switch keeps state
    /// (they are what the last run left).
    starting: bool,
    /// Indexed by port id.
    ports: Vec<Option<Port>>,
    generation: u64,
    workers: Vec<WorkerHandle>,
    /// The sockets of the VXLAN endpoints in use.
    tunnels: Vec<Arc<TunnelSocket>>,
    /// The compiled routing state, rebuilt only when interfaces, routes or the neighbour
    /// bound change.
    pub(crate) routing: Arc<RoutingState>,
    /// The IPIP sockets, while some route uses IPIP.
    ipip: Option<Arc<IpipSocket>>,
    /// NAT rules and Services, kept compiled and indexed so that one change costs O(that
    /// change) (see [`nat`]).
    nat: nat::NatState,
    /// The agent whose `batch` is being carried out: entries added get it as their owner,
    /// and only entries it owns may be changed (see [`batch`]).
    acting_owner: Option<String>,
    /// Inside a `batch`: publications wait for its end (`Some(published anything?)`).
    deferred: Option<bool>,
    /// What the workers forward with now (a dry-run trace reads it).
    published: Arc<Snapshot>,
    /// Live traces and captures of clients (see [`tap`]).
    taps: Vec<tap::Session>,
    next_tap: u64,
    /// The storm control limits of ports, by port name: kept from one publication to the
    /// next while the port's settings stay the same, so that a change elsewhere does not
    /// refill their buckets.
    storm: HashMap<String, (config::StormSpec, Arc<StormControl>)>,
    /// The rate limits of ports, by port name, kept like `storm`.
    #[allow(clippy::type_complexity)]
    rate: HashMap<String, ((Option<RateSpec>, Option<RateSpec>), Arc<RateLimits>)>,
    /// Network policy, kept compiled so that one change costs O(that change) (see
    /// [`policy`]).
    policy: policy::PolicyState,
}

impl Switch {
    /// Validates `config`, creates its ports and starts the worker. On error nothing is left
    /// behind (devices created so far are removed).
    pub fn start(config: Config) -> Result<Switch, SwitchError> {
        Self::start_with(config.clone(), config, None, HashMap::new())
    }

    /// Starts from the state directory `store` and the configuration file `file`: the saved
    /// running configuration merged with the file ([`config::merge`]), or the file alone on a
    /// first start. TAPs left by the last run are adopted (their workload keeps its
    /// interface), attached interfaces attached again. A runtime port whose network namespace
    /// is gone (its workload was removed meanwhile) is dropped with a warning.
    pub fn restore(file: Config, store: StateStore) -> Result<Switch, SwitchError> {
        Self::restore_handed(file, store, HashMap::new())
    }

    /// [`restore`](Self::restore), taking the TAP queues in `handed` (a takeover) instead of
    /// opening new ones.
    pub fn restore_handed(
        file: Config,
        mut store: StateStore,
        handed: HashMap<String, crate::takeover::HandedTap>,
    ) -> Result<Switch, SwitchError> {
        file.validate()?;
        let saved_state = store.load_running().map_err(SwitchError::Restore)?;
        let mut running = match &saved_state {
            Some(saved) => {
                let merged = config::merge::merge(&saved.base, &saved.running, &file)?;
                if let Err(e) = merged.validate() {
                    return Err(ConfigError::new(
                        e.field,
                        format!(
                            "{} (in the running configuration merged from the file and {})",
                            e.message,
                            store.dir().join(crate::state::RUNNING_FILE).display()
                        ),
                    )
                    .into());
                }
                merged
            }
            None => file.clone(),
        };
        // TAPs the last run made that the configuration no longer has: the file dropped
        // their ports while tapswitch was down, or a crash interrupted their removal.
        let taps = |c: &Config| -> Vec<TapRef> {
            c.ports
                .iter()
                .filter(|p| p.is_tap())
                .map(|p| TapRef {
                    name: p.device().to_string(),
                    netns: p.netns.clone(),
                })
                .collect()
        };
        let keep = taps(&running);
        if let Some(saved) = &saved_state {
            for tap in taps(&saved.running).iter().chain(&saved.deleting) {
                if keep.contains(tap) {
                    continue;
                }
                match PortDevice::delete_tap(&tap.name, tap.netns.as_deref()) {
                    Ok(true) => log::info!("TAP {}: removed (its port is gone)", tap.name),
                    Ok(false) => {}
                    Err(e) => log::warn!("TAP {}: left in place: {e}", tap.name),
                }
            }
        }
        running.ports.retain(|p| {
            let from_file = file.ports.iter().any(|f| f.name == p.name);
            let gone = p
                .netns
                .as_deref()
                .is_some_and(|ns| !tapswitch_dataplane::io::netns::exists(ns));
            if gone && !from_file {
                log::warn!(
                    "port {}: network namespace {} is gone; the port is removed",
                    p.name,
                    p.netns.as_deref().unwrap_or_default()
                );
            }
            !gone || from_file
        });
        running.fdb.retain(|e| {
            e.port
                .as_ref()
                .is_none_or(|name| running.ports.iter().any(|p| &p.name == name))
        });
        // Read before anything is made, so that a bad checkpoint stops the start cleanly.
        let saved = store
            .load(
                crate::checkpoint::CHECKPOINT_FILE,
                crate::checkpoint::decode,
            )
            .map_err(SwitchError::Restore)?;
        let mut switch = Self::start_with(running, file, Some(store), handed)?;
        if let Some(saved) = saved {
            let gap_ms = learned::unix_ms().saturating_sub(saved.saved_unix_ms);
            let restored = switch.import_checkpoint(saved, gap_ms);
            log::info!(
                "restored {} learned and connection entries ({} skipped: gone or expired) \
                 after {} ms down",
                restored.entries,
                restored.skipped,
                restored.gap_ms
            );
        }
        switch.checkpoints = true;
        Ok(switch)
    }

    /// Records that the TAPs among `devices` are about to be deleted (saved with the next
    /// persist); returns how many were recorded.
    fn mark_deleting(&mut self, devices: &[Arc<PortDevice>]) -> usize {
        let before = self.deleting.len();
        for d in devices.iter().filter(|d| d.tap_queue_fds().is_some()) {
            self.deleting.push(TapRef {
                name: d.name().to_string(),
                netns: d.netns().map(str::to_string),
            });
        }
        self.deleting.len() - before
    }

    /// Deletes the TAPs among `devices` (this holds their last reference) and forgets that
    /// they were being deleted.
    fn delete_devices(&mut self, devices: Vec<Arc<PortDevice>>) {
        if devices.is_empty() {
            return;
        }
        for device in devices {
            delete_on_close(&device);
            let was = TapRef {
                name: device.name().to_string(),
                netns: device.netns().map(str::to_string),
            };
            drop(device);
            self.deleting.retain(|t| *t != was);
        }
        if let Err(e) = self.persist() {
            log::warn!("state: the removed TAPs are not saved as gone: {e}");
        }
    }

    /// Saves the running configuration (when the switch keeps state); a no-op when the file
    /// holds it already.
    fn persist(&mut self) -> Result<(), SwitchError> {
        match &mut self.store {
            Some(store) => store
                .save_running(&self.base, &self.config.user_view(), &self.deleting)
                .map_err(SwitchError::State),
            None => Ok(()),
        }
    }

    /// The workers' clock now.
    pub fn now(&self) -> tapswitch_dataplane::tables::Timestamp {
        tapswitch_dataplane::tables::Timestamp::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    fn start_with(
        config: Config,
        base: Config,
        store: Option<StateStore>,
        handed: HashMap<String, crate::takeover::HandedTap>,
    ) -> Result<Switch, SwitchError> {
        config.validate()?;
        // One set of learned tables for all workers, with one clock (see SharedTables). The
        // clock starts a week back, so that restored entries keep their ages.
        let shared = Arc::new(SharedTables::new(
            config.switch.mac_table_max,
            config.switch.neigh_table_max,
            config.switch.conntrack_max,
        ));
        let now = Instant::now();
        let epoch = now
            .checked_sub(Duration::from_secs(7 * 86_400))
            .unwrap_or(now);
        let mut switch = Switch {
            config: Config::default(),
            base,
            shared: Arc::clone(&shared),
            epoch,
            checkpoints: false,
            checkpoint_stats: CheckpointStats::default(),
            quiesced: false,
            last_checkpoint: None,
            deleting: Vec::new(),
            handed,
            starting: true,
            store,
            ports: Vec::new(),
            generation: 0,
            workers: Vec::new(),
            tunnels: Vec::new(),
            routing: Arc::new(RoutingState::default()),
            ipip: None,
            nat: nat::NatState::default(),
            acting_owner: None,
            deferred: None,
            published: Arc::default(),
            taps: Vec::new(),
            next_tap: 0,
            storm: HashMap::new(),
            rate: HashMap::new(),
            policy: policy::PolicyState::default(),
        };
        let snapshot = switch.compile();
        switch.published = Arc::clone(&snapshot);
        for index in 0..config.switch.workers() {
            let worker =
                WorkerHandle::spawn(index, Arc::clone(&snapshot), Arc::clone(&shared), epoch)
                    .map_err(SwitchError::Worker)?;
            switch.workers.push(worker);
        }
        switch.reload(config)?;
        switch.starting = false;
        // Queues handed over for ports that are gone close here (their TAPs stay).
        switch.handed.clear();
        Ok(switch)
    }

    /// The state directory, when this switch keeps one.
    pub fn store(&self) -> Option<&StateStore> {
        self.store.as_ref()
    }

    /// Applies the configuration file `file` (a reload): merged with the runtime changes
    /// ([`config::merge`]); it becomes the base of later merges.
    pub fn reload_file(&mut self, file: Config) -> Result<(usize, usize, usize), SwitchError> {
        file.validate()?;
        let merged = config::merge::merge(&self.base, &self.config, &file)?;
        let old_base = std::mem::replace(&mut self.base, file);
        let result = self.reload(merged);
        if result.is_err() {
            self.base = old_base;
        }
        result
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Compiles the current configuration, devices and tunnels into a new snapshot.
    fn compile(&mut self) -> Arc<Snapshot> {
        self.generation += 1;
        let mut forwarding = ForwardingState::with_ports(
            self.ports
                .iter()
                .map(|p| {
                    p.as_ref().map(|p| PortState {
                        name: p.spec.name.clone(),
                        mode: p.spec.mode.clone(),
                        mtu: p.backend.mtu().min(u16::MAX as u32) as u16,
                        max_macs: p.spec.max_macs,
                    })
                })
                .collect(),
        );
        forwarding.security = self
            .ports
            .iter()
            .map(|p| {
                let p = p.as_ref()?;
                let spec = p.spec.security.as_ref()?;
                let Backend::Device(d) = &p.backend else {
                    return None;
                };
                Some(port_security(spec, d.mac()))
            })
            .collect();
        forwarding.addresses = self
            .ports
            .iter()
            .map(|p| {
                let Some(p) = p else { return Vec::new() };
                p.spec
                    .addresses
                    .iter()
                    .filter_map(|a| match a {
                        std::net::IpAddr::V4(a) => Some(*a),
                        std::net::IpAddr::V6(_) => None,
                    })
                    .collect()
            })
            .collect();
        let mut storm = HashMap::new();
        forwarding.storm = self
            .ports
            .iter()
            .map(|p| {
                let p = p.as_ref()?;
                let spec = p.spec.storm?;
                let limits = match self.storm.remove(&p.spec.name) {
                    Some((s, limits)) if s == spec => limits,
                    _ => Arc::new(storm_control(&spec)),
                };
                storm.insert(p.spec.name.clone(), (spec, Arc::clone(&limits)));
                Some(limits)
            })
            .collect();
        self.storm = storm;
        let mut rate = HashMap::new();
        let limits = self
            .ports
            .iter()
            .map(|p| {
                let p = p.as_ref()?;
                let spec = (p.spec.police, p.spec.shape);
                if spec == (None, None) {
                    return None;
                }
                let limits = match self.rate.remove(&p.spec.name) {
                    Some((s, limits)) if s == spec => limits,
                    _ => Arc::new(rate_limits(spec)),
                };
                rate.insert(p.spec.name.clone(), (spec, Arc::clone(&limits)));
                Some(limits)
            })
            .collect();
        forwarding.set_rate_limits(limits);
        self.rate = rate;
        let views = self.policy_ports();
        self.policy.sync_ports(views);
        forwarding.set_policy(Arc::clone(self.policy.table()));
        forwarding.generation = self.generation;
        forwarding.mac_aging_ms = self.config.switch.mac_aging_secs * 1000;
        forwarding.mac_table_max = self.config.switch.mac_table_max;
        forwarding.vxlan = self
            .ports
            .iter()
            .map(|p| {
                p.as_ref()
                    .and_then(|p| p.backend.vxlan())
                    .map(|v| VxlanPort {
                        vni: v.vni,
                        endpoint: v.endpoint,
                        remotes: v.remotes.clone(),
                        learning: v.learning,
                        allow: v.allow.clone(),
                        ttl: v.ttl,
                    })
            })
            .collect();
        for (i, vx) in forwarding.vxlan.iter().enumerate() {
            if let Some(vx) = vx {
                forwarding
                    .vni_ports
                    .insert((vx.endpoint, vx.vni), PortId(i as u16));
            }
        }
        // The configuration was validated when it was accepted, so this cannot fail. The NAT
        // sections are not looked at: they are kept compiled in `self.nat`.
        if let Ok(v) = self.config.validate_without_nat() {
            for spec in &v.fdb {
                let key = FdbKey::new(spec.vlan, spec.mac);
                let port = match spec.target {
                    FdbTarget::Port(i) => self.port_id(&v.ports[i].name),
                    FdbTarget::Remote { vxlan, remote } => {
                        forwarding.static_remotes.insert(key, remote);
                        self.port_id(&v.vxlan[vxlan].port_name())
                    }
                };
                if let Some(id) = port {
                    forwarding.static_fdb.insert(key, id);
                }
            }
            for n in &v.neigh {
                forwarding.neighbours.insert((n.vlan, n.ip), n.mac);
            }
        }
        forwarding.routing = Arc::clone(&self.routing);
        // O(1): a clone of the persistent frontend map.
        forwarding.nat = self.nat.rules.clone();
        Arc::new(Snapshot {
            forwarding,
            devices: self
                .ports
                .iter()
                .map(|p| p.as_ref().and_then(|p| p.backend.device()))
                .collect(),
            tunnels: self.tunnels.clone(),
            ipip: self.ipip.clone(),
            purge: self.nat.take_purge(),
            busy_poll: self.config.switch.busy_poll(),
        })
    }

    /// Persists the running configuration (when the switch keeps state), then publishes a new
    /// snapshot to every worker. A change that cannot be persisted is not published: the
    /// caller puts its state back, and the workers never saw it.
    fn publish(&mut self) -> Result<(), SwitchError> {
        if let Some(pending) = &mut self.deferred {
            *pending = true;
            return Ok(());
        }
        self.persist()?;
        let snapshot = self.compile();
        self.published = Arc::clone(&snapshot);
        for w in &self.workers {
            w.publish(Arc::clone(&snapshot), PUBLISH_TIMEOUT)
                .map_err(SwitchError::Worker)?;
        }
        Ok(())
    }

    /// The worker through which the tables all workers share are read and flushed (learned
    /// MACs, neighbours, conntrack).
    pub(crate) fn tables(&self) -> &WorkerHandle {
        &self.workers[0]
    }

    fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.spec.name == name))
            .map(|i| PortId(i as u16))
    }

    fn port_name(&self, id: PortId) -> String {
        self.ports
            .get(id.index())
            .and_then(Option::as_ref)
            .map(|p| p.spec.name.clone())
            .unwrap_or_else(|| format!("#{}", id.0))
    }

    /// The routing state for `validated`: the current one when interfaces, routes and the
    /// neighbour bound are unchanged, else a new build.
    fn routing_for(
        &self,
        config: &Config,
        validated: &config::Validated,
    ) -> Result<Arc<RoutingState>, SwitchError> {
        if config.interfaces == self.config.interfaces
            && config.routes == self.config.routes
            && config.switch.neigh_table_max == self.config.switch.neigh_table_max
        {
            return Ok(Arc::clone(&self.routing));
        }
        let routes = validated
            .routes
            .iter()
            .map(|r| Route {
                prefix: r.prefix,
                len: r.len,
                next_hop: r.next_hop,
                connected: false,
            })
            .collect();
        RoutingState::build(
            validated.interfaces.clone(),
            routes,
            config.switch.neigh_table_max,
        )
        .map(Arc::new)
        .map_err(|e| {
            SwitchError::Config(ConfigError::new(
                format!("route[{}]", e.0),
                "the FIB refused this prefix",
            ))
        })
    }

    /// Replaces the whole configuration (a reload): ports whose device settings (`netns`,
    /// `attach`, `mac`, `mtu`) are unchanged keep their device, their id and their learned
    /// MACs, even if their VLANs or bounds change; VNIs that stay keep their id and learned
    /// remotes; other ports and VNIs are created or removed. If anything fails, nothing
    /// changes. Returns how many ports were (added, removed, kept).
    pub fn reload(&mut self, config: Config) -> Result<(usize, usize, usize), SwitchError> {
        let validated = config.validate_without_nat()?;
        if config
            .switch
            .workers
            .is_some_and(|n| n != self.workers.len())
        {
            return Err(ConfigError::new(
                "switch.workers",
                format!(
                    "{} workers run; their number cannot change while tapswitch runs \
                     (restart it)",
                    self.workers.len()
                ),
            )
            .into());
        }
        let queues = self.workers.len();
        // NAT: re-checked and rebuilt only when a NAT section or the interfaces changed.
        let nat = self.nat_for(&config, &validated)?;
        // Policies: re-checked only when a policy section changed.
        let policies = if self.starting
            || config.policies != self.config.policies
            || config.admin_policies != self.config.admin_policies
            || config.baseline_policies != self.config.baseline_policies
        {
            Some(config.validate_policies()?)
        } else {
            None
        };
        if config.metrics != self.config.metrics && !self.starting {
            return Err(ConfigError::new(
                "metrics",
                "metrics settings are read at start; restart tapswitch to change them",
            )
            .into());
        }
        if config.cluster != self.config.cluster && !self.starting {
            return Err(ConfigError::new(
                "cluster",
                "cluster settings are read at start; restart tapswitch to change them",
            )
            .into());
        }
        if config.switch.state_dir != self.config.switch.state_dir && !self.starting {
            return Err(ConfigError::new(
                "switch.state_dir",
                "the state directory cannot change while tapswitch runs (restart it)",
            )
            .into());
        }
        let same_device = |a: &PortSpec, b: &PortSpec| {
            a.name == b.name
                && a.device == b.device
                && a.netns == b.netns
                && a.attach == b.attach
                && a.vhost_user == b.vhost_user
                && a.mac == b.mac
                && a.mtu == b.mtu
                && a.offload == b.offload
        };
        // Devices and sockets first: a failure here leaves the switch as it was.
        let mut created = Vec::new();
        for spec in &validated.ports {
            let kept = self
                .ports
                .iter()
                .flatten()
                .any(|p| matches!(p.backend, Backend::Device(_)) && same_device(&p.spec, spec));
            if !kept {
                let device = match self.handed.remove(&spec.name) {
                    Some(h) if spec.is_tap() && h.offload == spec.offload => {
                        let tap = tap_spec(spec, queues, true);
                        PortDevice::from_tap_queues(&tap, h.queues, h.uso)
                            .map(Arc::new)
                            .map_err(|source| SwitchError::Port {
                                name: spec.name.clone(),
                                source,
                            })?
                    }
                    _ => open_device(spec, queues, self.starting && self.store.is_some())?,
                };
                created.push((spec.clone(), Backend::Device(device)));
            }
        }
        let mut tunnels = Vec::new();
        for v in &validated.vxlan {
            if tunnels
                .iter()
                .any(|t: &Arc<TunnelSocket>| t.endpoint() == v.endpoint)
            {
                continue;
            }
            match self.tunnels.iter().find(|t| t.endpoint() == v.endpoint) {
                Some(t) => tunnels.push(Arc::clone(t)),
                None => tunnels
                    .push(Arc::new(TunnelSocket::open(v.endpoint, queues).map_err(
                        |source| SwitchError::Tunnel { vni: v.vni, source },
                    )?)),
            }
        }
        for v in &validated.vxlan {
            let kept = self
                .ports
                .iter()
                .flatten()
                .any(|p| p.backend.vxlan().is_some_and(|o| o.vni == v.vni));
            if !kept {
                created.push((vxlan_port_spec(v), Backend::Vxlan(v.clone())));
            }
        }
        let routing = self.routing_for(&config, &validated)?;
        let wants_ipip = routing
            .routes
            .iter()
            .any(|r| matches!(r.next_hop, NextHop::Ipip { .. }));
        for r in &routing.routes {
            if let NextHop::Ipip {
                local: Some(local), ..
            } = r.next_hop
            {
                // Bound only to check the host has the address; closed at once.
                if let Err(e) = std::net::UdpSocket::bind((local, 0)) {
                    return Err(SwitchError::Config(ConfigError::new(
                        format!("route {}/{}.local", r.prefix, r.len),
                        format!("{local} is not an address of this host: {e}"),
                    )));
                }
            }
        }
        let ipip = match (&self.ipip, wants_ipip) {
            (_, false) => None,
            (Some(s), true) => Some(Arc::clone(s)),
            (None, true) => Some(Arc::new(IpipSocket::open().map_err(SwitchError::Ipip)?)),
        };
        let mut ports: Vec<Option<Port>> = self.ports.clone();
        // Devices of removed ports: deleted (a TAP) once the change is published.
        let mut gone = Vec::new();
        let mut removed = 0;
        let mut kept = 0;
        for slot in ports.iter_mut() {
            let Some(port) = slot else { continue };
            let keep = match &port.backend {
                Backend::Device(_) => validated
                    .ports
                    .iter()
                    .find(|s| same_device(&port.spec, s))
                    .map(|spec| (spec.clone(), port.backend.clone())),
                Backend::Vxlan(old) => validated
                    .vxlan
                    .iter()
                    .find(|v| v.vni == old.vni)
                    .map(|v| (vxlan_port_spec(v), Backend::Vxlan(v.clone()))),
            };
            match keep {
                Some((spec, backend)) => {
                    port.spec = spec;
                    port.backend = backend;
                    kept += 1;
                }
                None => {
                    if let Some(device) = slot.take().and_then(|p| p.backend.device()) {
                        gone.push(device);
                    }
                    removed += 1;
                }
            }
        }
        let added = created.len();
        for (spec, backend) in created {
            let slot = match ports.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    ports.push(None);
                    ports.len() - 1
                }
            };
            let baseline = self.counters_of(PortId(slot as u16));
            ports[slot] = Some(Port {
                spec,
                backend,
                baseline,
            });
        }
        let old_ports = std::mem::replace(&mut self.ports, ports);
        let old_tunnels = std::mem::replace(&mut self.tunnels, tunnels);
        let old_config = std::mem::replace(&mut self.config, config);
        let old_routing = std::mem::replace(&mut self.routing, routing);
        let old_ipip = std::mem::replace(&mut self.ipip, ipip);
        let old_nat = nat.map(|n| std::mem::replace(&mut self.nat, n));
        let policies_changed = policies.is_some();
        if let Some(specs) = policies {
            self.policy.set_policies(specs);
        }
        let marked = self.mark_deleting(&gone);
        if let Err(e) = self.publish() {
            if policies_changed {
                let specs = old_config.validate_policies().unwrap_or_default();
                self.policy.set_policies(specs);
            }
            self.deleting.truncate(self.deleting.len() - marked);
            // Put back what was there; new devices and sockets are dropped with the tables.
            self.ports = old_ports;
            self.tunnels = old_tunnels;
            self.config = old_config;
            self.routing = old_routing;
            self.ipip = old_ipip;
            if let Some(old) = old_nat {
                self.nat = old;
            }
            return Err(e);
        }
        // The change is saved and published: removed TAPs go as their last holder drops them.
        drop(old_ports);
        drop(old_tunnels);
        self.delete_devices(gone);
        Ok((added, removed, kept))
    }

    /// Applies a changed copy of the configuration, with errors about entry `at` of a list
    /// renamed to the runtime form (`fdb[3].port` -> `fdb.port`).
    fn apply(&mut self, candidate: Config, list: &str, at: usize) -> Result<(), SwitchError> {
        if let Err(e) = candidate.validate() {
            let field = e.field.replace(&format!("{list}[{at}]"), list);
            return Err(SwitchError::Config(ConfigError::new(field, e.message)));
        }
        self.reload(candidate).map(|_| ())
    }

    /// `vxlan add`.
    pub fn add_vxlan(&mut self, vxlan: VxlanConfig) -> Result<(), SwitchError> {
        let mut candidate = self.config.clone();
        candidate.vxlan.push(vxlan);
        let at = candidate.vxlan.len() - 1;
        let label = format!("vxlan[{at}] (vni {})", candidate.vxlan[at].vni);
        if let Err(e) = candidate.validate() {
            let field = e
                .field
                .replace(&label, &format!("vxlan {}", candidate.vxlan[at].vni));
            return Err(SwitchError::Config(ConfigError::new(field, e.message)));
        }
        self.reload(candidate).map(|_| ())
    }

    /// `vxlan del`: removes the VNI, its remote FDB entries and neighbour entries.
    pub fn del_vxlan(&mut self, vni: u32) -> Result<(), SwitchError> {
        let Some(v) = self.config.vxlan.iter().find(|v| v.vni == vni) else {
            return Err(SwitchError::NoSuchVni(vni));
        };
        self.may_change(|| format!("vxlan {vni}"), &v.owner)?;
        for e in self.config.fdb.iter().filter(|e| e.vni == Some(vni)) {
            self.may_change(|| format!("fdb {} (vni {vni})", e.mac), &e.owner)?;
        }
        for n in self.config.neigh.iter().filter(|n| n.vni == vni) {
            self.may_change(|| format!("neigh {} (vni {vni})", n.ip), &n.owner)?;
        }
        let mut candidate = self.config.clone();
        candidate.vxlan.retain(|v| v.vni != vni);
        candidate.fdb.retain(|e| e.vni != Some(vni));
        candidate.neigh.retain(|n| n.vni != vni);
        self.reload(candidate).map(|_| ())
    }

    /// `vxlan list`.
    pub fn list_vxlan(&self) -> Vec<VxlanInfo> {
        self.ports
            .iter()
            .flatten()
            .filter_map(|p| p.backend.vxlan().map(|v| (p, v)))
            .map(|(p, v)| VxlanInfo {
                vni: v.vni,
                vlan: v.vlan.get(),
                port: p.spec.name.clone(),
                local: v.endpoint.local.to_string(),
                udp_port: v.endpoint.port,
                remotes: v.remotes.iter().map(ToString::to_string).collect(),
                learning: v.learning,
                allow: v
                    .allow
                    .iter()
                    .map(|a| format!("{}/{}", a.addr, a.len))
                    .collect(),
                mtu: v.mtu,
                ttl: v.ttl,
            })
            .collect()
    }

    /// `neigh add`.
    pub fn add_neigh(&mut self, neigh: NeighConfig) -> Result<(), SwitchError> {
        let mut candidate = self.config.clone();
        candidate.neigh.push(neigh);
        let at = candidate.neigh.len() - 1;
        self.apply(candidate, "neigh", at)
    }

    /// `neigh del`.
    pub fn del_neigh(&mut self, ip: &str, vni: Option<u32>) -> Result<(), SwitchError> {
        for n in self
            .config
            .neigh
            .iter()
            .filter(|n| n.ip == ip && vni.is_none_or(|v| v == n.vni))
        {
            self.may_change(|| format!("neigh {ip}"), &n.owner)?;
        }
        let mut candidate = self.config.clone();
        candidate
            .neigh
            .retain(|n| !(n.ip == ip && vni.is_none_or(|v| v == n.vni)));
        if candidate.neigh.len() == self.config.neigh.len() {
            return Err(SwitchError::NoSuchNeigh(ip.to_string()));
        }
        self.reload(candidate).map(|_| ())
    }

    /// `port add`.
    pub fn add_port(&mut self, port: PortConfig) -> Result<(), SwitchError> {
        let spec = port.validate(&format!("port {}", port.name))?;
        if self.port_id(&spec.name).is_some() {
            return Err(SwitchError::PortExists(spec.name));
        }
        let slot = match self.ports.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.ports.len() < PortId::MAX_PORTS => {
                self.ports.push(None);
                self.ports.len() - 1
            }
            None => return Err(SwitchError::TooManyPorts(spec.name)),
        };
        // Saved before the TAP is made: a crash in between leaves a port that the next start
        // creates, never a TAP that nothing knows about.
        self.config.ports.push(port);
        if let Err(e) = self.persist() {
            self.config.ports.pop();
            return Err(e);
        }
        let backend = match open_device(&spec, self.workers.len(), false) {
            Ok(d) => Backend::Device(d),
            Err(e) => {
                self.config.ports.pop();
                if let Err(undo) = self.persist() {
                    log::error!("port {}: {undo}", spec.name);
                }
                return Err(e);
            }
        };
        let baseline = self.counters_of(PortId(slot as u16));
        self.ports[slot] = Some(Port {
            spec,
            backend,
            baseline,
        });
        if let Err(e) = self.publish() {
            // The TAP made for it goes again.
            if let Some(device) = self.ports[slot].take().and_then(|p| p.backend.device()) {
                delete_on_close(&device);
            }
            self.config.ports.pop();
            if let Err(undo) = self.persist() {
                log::error!("{undo}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The id of port `name`, which must be a device's (a VXLAN port goes with its VNI).
    fn device_port(&self, name: &str) -> Result<PortId, SwitchError> {
        let id = self
            .port_id(name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        if let Some(v) = self.ports[id.index()]
            .as_ref()
            .and_then(|p| p.backend.vxlan())
        {
            return Err(SwitchError::IsVxlan(name.to_string(), v.vni));
        }
        Ok(id)
    }

    /// `port set`: changes what a port is known as and what is checked of it (labels,
    /// addresses, port security, storm control), not its device. Validated as a whole first;
    /// a change that cannot be saved or published is undone.
    pub fn set_port(&mut self, name: &str, change: &PortChange) -> Result<(), SwitchError> {
        let id = self.device_port(name)?;
        let at = self
            .config
            .ports
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        let old = self.config.ports[at].clone();
        let new = change.apply(&old);
        let spec = new.validate(&format!("port {name}"))?;
        let port = self.ports[id.index()]
            .as_mut()
            .expect("the port found above");
        let old_spec = std::mem::replace(&mut port.spec, spec);
        self.config.ports[at] = new;
        if let Err(e) = self.publish() {
            self.config.ports[at] = old;
            if let Some(p) = self.ports[id.index()].as_mut() {
                p.spec = old_spec;
            }
            return Err(e);
        }
        Ok(())
    }

    /// `port del`: removes the port, its static FDB entries and what was learned on it.
    pub fn del_port(&mut self, name: &str) -> Result<(), SwitchError> {
        let id = self.device_port(name)?;
        let removed = self.ports[id.index()].take();
        let old_config = self.config.clone();
        self.config.ports.retain(|p| p.name != name);
        self.config.fdb.retain(|e| e.port.as_deref() != Some(name));
        let gone: Vec<_> = removed.iter().filter_map(|p| p.backend.device()).collect();
        let marked = self.mark_deleting(&gone);
        if let Err(e) = self.publish() {
            self.ports[id.index()] = removed;
            self.config = old_config;
            self.deleting.truncate(self.deleting.len() - marked);
            return Err(e);
        }
        // The change is saved and published: the TAP goes as the last holder drops it.
        drop(removed);
        self.delete_devices(gone);
        Ok(())
    }

    pub fn list_ports(&self) -> Vec<PortInfo> {
        let configured: HashMap<&str, &PortConfig> = self
            .config
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p))
            .collect();
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .map(|(i, p)| {
                let (vlan, trunk, native) = match &p.spec.mode {
                    PortMode::Access(v) => (Some(v.get()), None, None),
                    PortMode::Trunk { allowed, native } => (
                        None,
                        Some(allowed.iter().map(VlanId::get).collect()),
                        native.map(VlanId::get),
                    ),
                };
                let c = configured.get(p.spec.name.as_str());
                PortInfo {
                    name: p.spec.name.clone(),
                    id: i as u16,
                    kind: p.backend.kind(),
                    netns: p.spec.netns.clone(),
                    mac: p.backend.mac(),
                    mtu: p.backend.mtu(),
                    vlan,
                    trunk,
                    native_vlan: native,
                    max_macs: (p.spec.max_macs != u32::MAX).then_some(p.spec.max_macs),
                    offload: p.backend.device().is_some_and(|d| d.takes_offloads()),
                    ifname: (p.spec.device != p.spec.name).then(|| p.spec.device.clone()),
                    container_id: c.and_then(|c| c.container_id.clone()),
                    addresses: c.map(|c| c.addresses.clone()).unwrap_or_default(),
                    labels: c.map(|c| c.labels.clone()).unwrap_or_default(),
                    port_security: p.spec.security.is_some(),
                    allowed_pairs: c.map(|c| c.allowed_pairs.clone()).unwrap_or_default(),
                    allow_ra: c.is_some_and(|c| c.allow_ra),
                    allow_dhcp_server: c.is_some_and(|c| c.allow_dhcp_server),
                    storm_control: c.and_then(|c| c.storm_control.clone()),
                    police: c
                        .and_then(|c| c.police.as_ref())
                        .zip(p.spec.police.as_ref())
                        .map(|(c, s)| RateInfo::of(c, s, false)),
                    shape: c
                        .and_then(|c| c.shape.as_ref())
                        .zip(p.spec.shape.as_ref())
                        .map(|(c, s)| RateInfo::of(c, s, true)),
                    vhost_user: p
                        .backend
                        .device()
                        .and_then(|d| d.vhost_user_status())
                        .map(|s| VhostUserInfo::of(&s)),
                }
            })
            .collect()
    }

    /// `fdb add` (static).
    pub fn add_fdb(&mut self, entry: FdbConfig) -> Result<(), SwitchError> {
        let mut candidate = self.config.clone();
        candidate.fdb.push(entry);
        let at = candidate.fdb.len() - 1;
        candidate.validate().map_err(|e| {
            let field = e.field.replace(&format!("fdb[{at}]"), "fdb");
            SwitchError::Config(ConfigError::new(field, e.message))
        })?;
        let old = std::mem::replace(&mut self.config, candidate);
        if let Err(e) = self.publish() {
            self.config = old;
            return Err(e);
        }
        Ok(())
    }

    /// `fdb del`: removes static entries for `mac` (in `vlan`, or any VLAN) and forgets
    /// learned ones.
    pub fn del_fdb(&mut self, mac: &str, vlan: Option<u16>) -> Result<usize, SwitchError> {
        let mac = config::parse_mac("mac", mac)?;
        let vlan = vlan.map(|v| config::parse_vlan("vlan", v)).transpose()?;
        let validated = self.config.validate()?;
        let old = self.config.clone();
        let before = self.config.fdb.len();
        let mut keep = Vec::new();
        for (entry, spec) in self.config.fdb.iter().zip(validated.fdb.iter()) {
            let hit = spec.mac == mac && vlan.is_none_or(|v| v == spec.vlan);
            if hit {
                self.may_change(|| format!("fdb {mac} vlan {}", spec.vlan), &entry.owner)?;
            } else {
                keep.push(entry.clone());
            }
        }
        self.config.fdb = keep;
        let static_removed = before - self.config.fdb.len();
        if static_removed > 0 {
            if let Err(e) = self.publish() {
                self.config = old;
                return Err(e);
            }
        }
        let learned_removed = self
            .tables()
            .flush_fdb(vlan, Some(mac))
            .map_err(SwitchError::Worker)?;
        let total = static_removed + learned_removed;
        if total == 0 {
            let what = match vlan {
                Some(v) => format!("{mac} vlan {v}"),
                None => mac.to_string(),
            };
            return Err(SwitchError::NoSuchFdbEntry(what));
        }
        Ok(total)
    }

    /// `fdb show`: static entries, then learned ones, each sorted by VLAN and MAC.
    pub fn show_fdb(&self) -> Result<Vec<FdbInfo>, SwitchError> {
        let mut out = Vec::new();
        let validated = self.config.validate()?;
        let mut statics: Vec<FdbInfo> = self
            .config
            .fdb
            .iter()
            .zip(validated.fdb.iter())
            .map(|(e, spec)| {
                let (port, vni, remote) = match spec.target {
                    FdbTarget::Port(_) => (e.port.clone().unwrap_or_default(), None, None),
                    FdbTarget::Remote { vxlan, remote } => {
                        let v = &validated.vxlan[vxlan];
                        (v.port_name(), Some(v.vni), Some(remote.to_string()))
                    }
                };
                FdbInfo {
                    mac: spec.mac.to_string(),
                    port,
                    vlan: spec.vlan.get(),
                    kind: "static",
                    age_secs: None,
                    vni,
                    remote,
                }
            })
            .collect();
        statics.sort_by_key(|e| (e.vlan, e.mac.clone()));
        out.extend(statics);
        let mut learned: HashMap<(u16, EthernetAddress), FdbInfo> = HashMap::new();
        for r in self.tables().dump_fdb().map_err(SwitchError::Worker)? {
            let vni = self
                .ports
                .get(r.port.index())
                .and_then(Option::as_ref)
                .and_then(|p| p.backend.vxlan())
                .map(|v| v.vni);
            let info = FdbInfo {
                mac: r.mac.to_string(),
                port: self.port_name(r.port),
                vlan: r.vlan.get(),
                kind: "learned",
                age_secs: Some(r.age_ms / 1000),
                vni,
                remote: r.remote.map(|ip| ip.to_string()),
            };
            learned.insert((r.vlan.get(), r.mac), info);
        }
        let mut learned: Vec<_> = learned.into_iter().collect();
        learned.sort_by_key(|(k, _)| *k);
        out.extend(learned.into_iter().map(|(_, v)| v));
        Ok(out)
    }

    fn counters_of(&self, id: PortId) -> PortStats {
        let mut s = PortStats::default();
        for w in &self.workers {
            s.add(w.counters().port(id));
        }
        s
    }

    /// `stats`.
    pub fn stats(&self) -> Result<Stats, SwitchError> {
        let ports = self
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .map(|(i, p)| NamedPortStats {
                name: p.spec.name.clone(),
                stats: self.counters_of(PortId(i as u16)).since(&p.baseline),
            })
            .collect();
        let mut fdb = FdbStats {
            static_entries: self.config.fdb.len() as u64,
            ..FdbStats::default()
        };
        for w in &self.workers {
            let l = &w.counters().learn;
            fdb.learned += l.learned.get();
            fdb.moved += l.moved.get();
            fdb.aged += l.aged.get();
            fdb.table_full += l.table_full.get();
            fdb.port_limit += l.port_limit.get();
            fdb.remote_learned += l.remote_learned.get();
            fdb.remote_moved += l.remote_moved.get();
            fdb.remote_table_full += l.remote_table_full.get();
            fdb.neigh_suppressed += l.neigh_suppressed.get();
        }
        fdb.learned_entries = self.tables().dump_fdb().map_err(SwitchError::Worker)?.len() as u64;
        let mut vxlan = PortStats::default();
        for w in &self.workers {
            vxlan.add(&w.counters().tunnel);
        }
        let interfaces = self
            .list_interfaces()
            .into_iter()
            .map(|i| NamedInterfaceStats {
                vlan: i.vlan,
                stats: i.stats,
            })
            .collect();
        let workers = self
            .workers
            .iter()
            .enumerate()
            .map(|(worker, w)| {
                let mut s = PortStats::default();
                for id in 0..self.ports.len() {
                    s.add(w.counters().port(PortId(id as u16)));
                }
                s.add(&w.counters().tunnel);
                s.add(&w.counters().ipip);
                let poll = &w.counters().poll;
                let bounds = tapswitch_dataplane::pipeline::counters::BATCH_BUCKETS;
                WorkerStats {
                    worker,
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                    batches: poll.batches.get(),
                    batch_frames: poll.batch_frames.get(),
                    batch_sizes: poll
                        .batch_sizes
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (bounds.get(i).copied().unwrap_or(0), c.get()))
                        .collect(),
                    busy_ns: poll.busy_ns.get(),
                    wakeups: poll.wakeups.get(),
                    busy_poll_ns: poll.busy_poll_ns.get(),
                    busy_poll_hits: poll.busy_poll_hits.get(),
                }
            })
            .collect();
        let nat = self.nat_stats()?;
        let sw = &self.config.switch;
        let tables = vec![
            TableStats {
                table: "mac",
                entries: self.shared.macs().len() as u64,
                max: sw.mac_table_max as u64,
            },
            TableStats {
                table: "remote_vtep",
                entries: self.shared.remotes().len() as u64,
                max: sw.mac_table_max as u64,
            },
            TableStats {
                table: "neighbour",
                entries: self.shared.neighbours().len() as u64,
                max: sw.neigh_table_max as u64,
            },
            TableStats {
                table: "conntrack",
                entries: nat.entries,
                max: nat.max,
            },
        ];
        Ok(Stats {
            ports,
            fdb,
            vxlan,
            ipip: self.ipip_stats(),
            interfaces,
            nat,
            workers,
            tables,
            checkpoint: self.store.is_some().then(|| CheckpointStats {
                age_secs: self.last_checkpoint.map(|t| t.elapsed().as_secs()),
                ..self.checkpoint_stats.clone()
            }),
        })
    }

    /// Stops the workers, saves a last checkpoint of what they learned (when the switch keeps
    /// state) and releases every port: TAP devices stay, with their workloads' addresses, for
    /// the next start to adopt; attached interfaces are released. What is saved in the state
    /// directory stays.
    pub fn shutdown(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        for w in &mut self.workers {
            w.stop();
        }
        self.quiesced = true;
        match self.checkpoint() {
            Ok(n) if self.store.is_some() => log::info!("checkpoint: {n} entries saved"),
            Ok(_) => {}
            Err(e) => log::error!("the last checkpoint was not saved: {e}"),
        }
        self.workers.clear();
        self.ports.clear();
    }

    /// Stops the workers, removes every port (TAP devices are deleted, attached interfaces
    /// released) and forgets the saved state, so that the next start begins from the
    /// configuration file alone.
    pub fn purge(&mut self) {
        for device in self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.backend.device())
        {
            delete_on_close(&device);
        }
        self.shutdown();
        if let Some(store) = &mut self.store {
            if let Err(e) = store.purge() {
                log::error!("purging the saved state: {e}");
            }
        }
    }
}

impl Switch {
    /// Stops the workers from reading and writing any device (a takeover's switch-over):
    /// frames wait in the devices' queues. Tables and counters stay.
    pub fn pause(&mut self) -> Result<(), SwitchError> {
        let mut snapshot = self.compile();
        if let Some(s) = Arc::get_mut(&mut snapshot) {
            s.devices.iter_mut().for_each(|d| *d = None);
            s.tunnels.clear();
            s.ipip = None;
        }
        self.published = Arc::clone(&snapshot);
        for w in &self.workers {
            w.publish(Arc::clone(&snapshot), PUBLISH_TIMEOUT)
                .map_err(SwitchError::Worker)?;
        }
        self.quiesced = true;
        Ok(())
    }

    /// Undoes [`pause`](Self::pause).
    pub fn resume(&mut self) -> Result<(), SwitchError> {
        self.quiesced = false;
        self.publish()
    }

    /// Every TAP port's name, queue descriptors, offloads and UDP segmentation (for a
    /// takeover).
    pub fn tap_queues(&self) -> Vec<(String, Vec<std::os::fd::RawFd>, bool, bool)> {
        self.ports
            .iter()
            .flatten()
            .filter_map(|p| p.backend.device())
            .filter_map(|d| {
                d.tap_queue_fds().map(|fds| {
                    (
                        d.name().to_string(),
                        fds,
                        d.takes_offloads(),
                        d.takes_udp_segmentation(),
                    )
                })
            })
            .collect()
    }

    /// Lets go of everything after a takeover: workers stop, descriptors close, nothing is
    /// written or removed (the new process owns the devices, the socket and the state).
    pub fn abandon(&mut self) {
        self.checkpoints = false;
        self.store = None;
        for w in &mut self.workers {
            w.stop();
        }
        self.workers.clear();
        self.ports.clear();
    }
}

/// How to open the TAP of `spec`.
fn tap_spec(spec: &PortSpec, queues: usize, adopt: bool) -> TapSpec {
    TapSpec {
        name: spec.device.clone(),
        netns: spec.netns.clone(),
        mac: spec.mac,
        mtu: spec.mtu,
        offload: spec.offload,
        queues,
        adopt,
    }
}

/// Marks a removed port's device to go when its last holder drops it (see
/// [`PortDevice::delete_on_close`]); a failure leaves the TAP behind, which is only logged:
/// the port is gone from the switch either way.
fn delete_on_close(device: &PortDevice) {
    if let Err(e) = device.delete_on_close() {
        log::warn!("port {}: the TAP stays: {e}", device.name());
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Opens a port's device with one queue per worker.
/// With `adopt`, a TAP that exists (left by the last run) is adopted.
fn open_device(
    spec: &PortSpec,
    queues: usize,
    adopt: bool,
) -> Result<Arc<PortDevice>, SwitchError> {
    let device = if let Some(v) = &spec.vhost_user {
        let vhost = VhostUserSpec {
            name: spec.name.clone(),
            socket: v.socket.clone(),
            mode: v.mode,
            pairs: queues,
        };
        PortDevice::create_vhost_user(&vhost, spec.mac, spec.mtu)
    } else if spec.attach {
        PortDevice::attach_with(
            &spec.name,
            spec.netns.as_deref(),
            spec.mtu,
            spec.offload,
            queues,
        )
    } else {
        PortDevice::create_tap(&tap_spec(spec, queues, adopt))
    };
    device.map(Arc::new).map_err(|source| SwitchError::Port {
        name: spec.name.clone(),
        source,
    })
}

/// The dataplane's rate limits for a port's (policing, shaping).
fn rate_limits((police, shape): (Option<RateSpec>, Option<RateSpec>)) -> RateLimits {
    RateLimits {
        police: police.map(|p| ByteBucket::new(p.rate, p.burst)),
        shape: shape.map(|s| Shaper {
            bucket: ByteBucket::new(s.rate, s.burst),
            latency_ns: s.latency_us * 1000,
        }),
    }
}

/// The dataplane's limits for a port's storm control.
fn storm_control(spec: &config::StormSpec) -> StormControl {
    let limiter = |l: Option<(u32, u32)>| l.map(|(rate, burst)| Limiter::new(rate, burst));
    StormControl {
        broadcast: limiter(spec.broadcast),
        multicast: limiter(spec.multicast),
        unknown_unicast: limiter(spec.unknown_unicast),
    }
}

/// What the dataplane checks for a port with port security whose device has `mac`: its
/// addresses, its EUI-64 link-local address, its allowed pairs.
fn port_security(spec: &config::SecuritySpec, mac: EthernetAddress) -> PortSecurity {
    use std::net::IpAddr;
    let mut ipv4 = Vec::new();
    let mut ipv6 = vec![security::link_local(mac)];
    for a in &spec.addresses {
        match a {
            IpAddr::V4(a) => ipv4.push(*a),
            IpAddr::V6(a) => ipv6.push(*a),
        }
    }
    PortSecurity {
        mac,
        ipv4,
        ipv6,
        pairs: spec.pairs.clone(),
        allow_ra: spec.allow_ra,
        allow_dhcp_server: spec.allow_dhcp_server,
    }
}
