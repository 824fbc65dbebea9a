//! Command-line parsing and the output of each verb (tables for people, `-j` JSON for
//! scripts, like iproute2).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use tapswitch_control::api::{self, Request};
use tapswitch_control::config::{
    Addresses, BackendConfig, ConntrackFilter, DnatConfig, FdbConfig, InterfaceConfig, NeighConfig,
    PortConfig, RouteConfig, ServiceConfig, SnatConfig, VxlanConfig, DEFAULT_CONFIG,
};
use tapswitch_control::switch::tap::TapRequest;
use tapswitch_control::{daemon, Config};

#[derive(Debug, Parser)]
#[command(
    name = "tapswitch",
    version,
    about = "A userspace virtual switch for VM and container hosts"
)]
pub struct Cli {
    /// Control socket of the running switch.
    #[arg(long, global = true, default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON (for listings and stats).
    #[arg(short = 'j', long = "json", global = true)]
    pub json: bool,
    /// The log's format: `text` (default) or `json` (one object per line: ts, level, target,
    /// msg), for log collectors.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the switch in the foreground until SIGINT/SIGTERM or `stop`. It starts from the
    /// state it saved (ports added at runtime included, TAPs adopted) merged with the file.
    Run {
        /// TOML configuration; without it, the embedded default (no ports).
        #[arg(long)]
        config: Option<PathBuf>,
        /// State directory (running configuration, checkpoints); overrides `[switch]
        /// state_dir` (default /var/lib/tapswitch).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Replace the tapswitch running on --socket (an upgrade in place): it hands over its
        /// TAP queues, control socket and state, then exits; traffic pauses for a moment.
        #[arg(long)]
        takeover: bool,
    },
    /// Stop the running switch: ports are released and TAPs stay, with their workloads'
    /// addresses, for the next start to adopt. Returns once the switch is done.
    Stop {
        /// Remove every port instead (TAP devices are deleted) and forget the saved state.
        #[arg(long)]
        purge: bool,
    },
    /// Build three containers on a running switch, send real traffic between them, show what
    /// happened, and clean up.
    Demo,
    /// Ports: add, del, list.
    #[command(subcommand)]
    Port(PortCmd),
    /// The MAC table: show, add, del.
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// Per-port counters and drop reasons, and learning counters.
    Stats,
    /// VXLAN ports (VNIs): add, del, list.
    #[command(subcommand)]
    Vxlan(VxlanCmd),
    /// Neighbours: ARP/ND suppression entries on VNIs (add, del), and `show`, which also lists
    /// the next hops the router resolved, with their state.
    #[command(subcommand)]
    Neigh(NeighCmd),
    /// Router interfaces (gateway addresses on VLANs): add, del, list.
    #[command(subcommand)]
    Interface(InterfaceCmd),
    /// Static routes and the FIB: add, del, show.
    #[command(subcommand)]
    Route(RouteCmd),
    /// Cluster mode on etcd (the `[cluster]` section).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Source NAT and masquerade: add, del, list.
    #[command(subcommand)]
    Snat(SnatCmd),
    /// Port forwards: add, del, list.
    #[command(subcommand)]
    Dnat(DnatCmd),
    /// Load-balanced Services: add, del, list, set-backends.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Tracked connections: show, flush.
    #[command(subcommand)]
    Conntrack(ConntrackCmd),
    /// Network policy ([[policy]], [[admin_policy]], [[baseline_policy]]): add, del, list,
    /// show.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// What the pipeline does with a packet, stage by stage: a dry run of a described packet
    /// (or a hex dump, or a packet of a pcap file) against the live tables, changing nothing;
    /// or, with --live, the path of real packets as they pass.
    Trace(TraceArgs),
    /// Capture the frames a port receives and sends (or every port's, or the dropped ones, or a
    /// tunnel's outer packets) to a pcapng or pcap file, or live to stdout with `-w -`.
    Capture(CaptureArgs),
    /// The running configuration (file plus runtime changes) as TOML.
    Config,
    /// Re-read the configuration file and apply the differences (as SIGHUP does); learned
    /// MACs and unchanged ports are kept.
    Reload,
}

#[derive(Debug, Subcommand)]
pub enum PortCmd {
    /// Create a TAP port (or attach an existing interface with --attach, or serve a VM's
    /// vhost-user socket with --vhost-user PATH).
    Add(Box<PortAddArgs>),
    /// Change a port's labels, addresses, port security or storm control.
    Set(Box<PortSetArgs>),
    /// Remove a port (a TAP device is deleted).
    Del { name: String },
    /// List ports.
    #[command(alias = "show")]
    List,
}

#[derive(Debug, Args)]
pub struct PortAddArgs {
    pub name: String,
    /// Network namespace to create the TAP in (or where the attached interface is): a name
    /// as `ip netns` knows it, or the path of a namespace file.
    #[arg(long)]
    pub netns: Option<String>,
    /// Attach to an existing interface over AF_PACKET instead of creating a TAP.
    #[arg(long, conflicts_with = "vhost_user")]
    pub attach: bool,
    /// A vhost-user port: the VM's virtio-net device over the Unix socket PATH (absolute).
    /// tapswitch listens on it (QEMU `-chardev socket,path=PATH`) unless --vhost-user-client.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["netns", "ifname", "no_offload"])]
    pub vhost_user: Option<String>,
    /// With --vhost-user: QEMU listens on the socket (`server=on`) and tapswitch connects to
    /// it, and connects again whenever QEMU is restarted.
    #[arg(long, requires = "vhost_user")]
    pub vhost_user_client: bool,
    /// Access VLAN (untagged); default 1.
    #[arg(long, conflicts_with = "trunk")]
    pub vlan: Option<u16>,
    /// Trunk: these VLANs pass tagged, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub trunk: Option<Vec<u16>>,
    /// With --trunk: untagged frames belong to this VLAN.
    #[arg(long, requires = "trunk")]
    pub native_vlan: Option<u16>,
    /// MAC of the TAP device (with --vhost-user: the VM's, as given to QEMU, for port
    /// security).
    #[arg(long)]
    pub mac: Option<String>,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Bound on MACs learned on this port.
    #[arg(long)]
    pub max_macs: Option<u32>,
    /// Finish checksums and TCP segmentation in software for this port instead of handing
    /// 64 KiB super-frames to its device.
    #[arg(long)]
    pub no_offload: bool,
    /// The TAP's name inside its namespace (default: the port's name), e.g. eth0.
    #[arg(long)]
    pub ifname: Option<String>,
    /// The container that owns the port (shown by `port list`).
    #[arg(long)]
    pub container_id: Option<String>,
    /// An address of the port (10.42.0.5/24), repeatable or comma separated.
    #[arg(long = "address", value_delimiter = ',')]
    pub addresses: Vec<String>,
    /// A label KEY=VALUE, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Port security on (the default for a TAP port with addresses) or off.
    #[arg(long, value_parser = parse_on_off, value_name = "on|off")]
    pub port_security: Option<bool>,
    /// Another address the workload may send from: PREFIX[,MAC] (repeatable).
    #[arg(long = "allowed-pair")]
    pub allowed_pairs: Vec<String>,
    /// With port security: the workload may send router advertisements.
    #[arg(long)]
    pub allow_ra: bool,
    /// With port security: the workload may send DHCP server messages.
    #[arg(long)]
    pub allow_dhcp_server: bool,
    /// Limits on flooded frames per second: broadcast=N,multicast=N,unknown_unicast=N[,burst=N].
    #[arg(long, value_parser = parse_storm_control, value_name = "KIND=RATE,...")]
    pub storm_control: Option<tapswitch_control::config::StormControlConfig>,
    /// Ingress policing (what the workload sends): RATE[,burst=SIZE], e.g. 200mbit,burst=256kb.
    #[arg(long, value_parser = parse_rate_limit, value_name = "RATE[,burst=SIZE]")]
    pub police: Option<tapswitch_control::config::RateConfig>,
    /// Egress shaping (what the workload receives): RATE[,burst=SIZE][,latency=50ms].
    #[arg(long, value_parser = parse_rate_limit, value_name = "RATE[,burst=SIZE][,latency=T]")]
    pub shape: Option<tapswitch_control::config::RateConfig>,
}

/// `200mbit,burst=256kb,latency=50ms`: checked by the switch.
fn parse_rate_limit(s: &str) -> Result<tapswitch_control::config::RateConfig, String> {
    let mut parts = s.split(',');
    let mut c = tapswitch_control::config::RateConfig {
        rate: parts.next().unwrap_or_default().trim().to_string(),
        ..Default::default()
    };
    for part in parts {
        match part.split_once('=') {
            Some(("burst", v)) => c.burst = Some(v.trim().to_string()),
            Some(("latency", v)) => c.latency = Some(v.trim().to_string()),
            _ => return Err(format!("{part:?}: burst=SIZE or latency=TIME")),
        }
    }
    Ok(c)
}

fn parse_storm_control(s: &str) -> Result<tapswitch_control::config::StormControlConfig, String> {
    let mut c = tapswitch_control::config::StormControlConfig::default();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not KIND=RATE"))?;
        let n: u32 = v
            .trim()
            .parse()
            .map_err(|_| format!("{k}: {v:?} is not a number"))?;
        match k.trim().replace('-', "_").as_str() {
            "broadcast" => c.broadcast = Some(n),
            "multicast" => c.multicast = Some(n),
            "unknown_unicast" => c.unknown_unicast = Some(n),
            "burst" => c.burst = Some(n),
            other => {
                return Err(format!(
                    "{other:?}: broadcast, multicast, unknown_unicast or burst"
                ))
            }
        }
    }
    Ok(c)
}

#[derive(Debug, Args)]
pub struct PortSetArgs {
    pub name: String,
    /// Set a label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Remove the label KEY (repeatable).
    #[arg(long = "del-label")]
    pub del_labels: Vec<String>,
    /// The port's addresses: these replace the ones it has (repeatable or comma separated).
    #[arg(long = "address", value_delimiter = ',')]
    pub addresses: Vec<String>,
    /// Remove every address of the port.
    #[arg(long, conflicts_with = "addresses")]
    pub no_addresses: bool,
    /// Port security on or off.
    #[arg(long, value_parser = parse_on_off, value_name = "on|off")]
    pub port_security: Option<bool>,
    /// The allowed pairs: these replace the ones it has (repeatable).
    #[arg(long = "allowed-pair")]
    pub allowed_pairs: Vec<String>,
    /// Remove every allowed pair.
    #[arg(long, conflicts_with = "allowed_pairs")]
    pub no_allowed_pairs: bool,
    #[arg(long, value_parser = parse_on_off, value_name = "on|off")]
    pub allow_ra: Option<bool>,
    #[arg(long, value_parser = parse_on_off, value_name = "on|off")]
    pub allow_dhcp_server: Option<bool>,
    /// Storm control limits, replacing the port's: KIND=RATE,...[,burst=N].
    #[arg(long, value_parser = parse_storm_control, value_name = "KIND=RATE,...")]
    pub storm_control: Option<tapswitch_control::config::StormControlConfig>,
    /// Remove the port's storm control.
    #[arg(long, conflicts_with = "storm_control")]
    pub no_storm_control: bool,
    /// Ingress policing, replacing the port's: RATE[,burst=SIZE].
    #[arg(long, value_parser = parse_rate_limit, value_name = "RATE[,burst=SIZE]")]
    pub police: Option<tapswitch_control::config::RateConfig>,
    /// Remove the port's policing.
    #[arg(long, conflicts_with = "police")]
    pub no_police: bool,
    /// Egress shaping, replacing the port's: RATE[,burst=SIZE][,latency=T].
    #[arg(long, value_parser = parse_rate_limit, value_name = "RATE[,burst=SIZE][,latency=T]")]
    pub shape: Option<tapswitch_control::config::RateConfig>,
    /// Remove the port's shaping.
    #[arg(long, conflicts_with = "shape")]
    pub no_shape: bool,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: on or off")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, Subcommand)]
pub enum VxlanCmd {
    /// Extend a VLAN to remote VTEPs with a VNI.
    Add(VxlanAddArgs),
    /// Remove a VNI (and its remote FDB and neigh entries).
    Del { vni: u32 },
    /// List VNIs.
    #[command(alias = "show")]
    List,
}

#[derive(Debug, Args)]
pub struct VxlanAddArgs {
    pub vni: u32,
    /// Local VTEP address.
    #[arg(long)]
    pub local: String,
    /// The local VLAN this VNI extends; default 1.
    #[arg(long)]
    pub vlan: Option<u16>,
    /// UDP port; default 4789 (8472 for flannel / Linux default).
    #[arg(long)]
    pub port: Option<u16>,
    /// Flood list of remote VTEPs, comma separated.
    #[arg(long = "remote", alias = "remotes", value_delimiter = ',')]
    pub remotes: Vec<String>,
    /// Do not learn remote MACs (static entries only).
    #[arg(long)]
    pub no_learning: bool,
    /// Accept VXLAN only from these prefixes, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Inner MTU; default 1450.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Outer TTL; default 64.
    #[arg(long)]
    pub ttl: Option<u8>,
}

#[derive(Debug, Subcommand)]
pub enum InterfaceCmd {
    /// Give the router an interface on a VLAN, with one or more addresses (IPv4 and IPv6).
    Add {
        vlan: u16,
        /// Addresses with prefix length, comma separated: 10.42.0.1/24,fd42::1/64.
        #[arg(
            long = "address",
            alias = "addresses",
            value_delimiter = ',',
            required = true
        )]
        addresses: Vec<String>,
        /// Default: derived from the VLAN and the first address.
        #[arg(long)]
        mac: Option<String>,
        /// Largest IP packet routed out of it; default 1500.
        #[arg(long)]
        mtu: Option<u32>,
        /// Do not answer DHCP on this VLAN (on by default when the interface has an IPv4
        /// address): leave it to a DHCP server of the VLAN's own.
        #[arg(long)]
        no_dhcp: bool,
        /// DHCP: DNS servers to hand out, comma separated (IPv4, at most 3).
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        /// DHCP: the domain name to hand out.
        #[arg(long)]
        domain: Option<String>,
        /// DHCP: the lease time in seconds; default 86400.
        #[arg(long)]
        lease_secs: Option<u32>,
    },
    /// Remove the interface of a VLAN.
    Del { vlan: u16 },
    /// List interfaces with their counters.
    #[command(alias = "show")]
    List,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// etcd endpoints' health, this node's lease (subnet, TTL left), the peers with their
    /// subnets, PublicIPs, backend data and when last seen, Services, the last error.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum RouteCmd {
    /// Add a static route: via a gateway on an interface's subnet (host-gw), or with
    /// --encap ipip to a remote host, or --unreachable.
    Add {
        /// Destination prefix: 10.42.1.0/24, 0.0.0.0/0, fd42:1::/64.
        prefix: String,
        #[arg(long)]
        via: Option<String>,
        /// ipip: IPv4-in-IPv4 to the --via host.
        #[arg(long)]
        encap: Option<String>,
        /// IPIP: outer source address; default: chosen by the host.
        #[arg(long)]
        local: Option<String>,
        /// IPIP: largest inner packet; default 1480.
        #[arg(long)]
        mtu: Option<u32>,
        /// IPIP: outer TTL; default 64.
        #[arg(long)]
        ttl: Option<u8>,
        /// Drop packets to the prefix with ICMP unreachable.
        #[arg(long, conflicts_with_all = ["via", "encap"])]
        unreachable: bool,
        /// The VLAN whose interface the gateway is reached on (default: the interface whose
        /// subnet holds it).
        #[arg(long)]
        vlan: Option<u16>,
        /// With --vlan: the gateway is on that link although no subnet of the interface
        /// holds it (`ip route ... onlink`).
        #[arg(long, requires = "vlan")]
        onlink: bool,
    },
    /// Remove the static route of a prefix.
    Del { prefix: String },
    /// The FIB: connected and static routes.
    #[command(alias = "list")]
    Show,
}

#[derive(Debug, Subcommand)]
pub enum SnatCmd {
    /// Connections from a source prefix leaving through a VLAN's router interface get a fixed
    /// source address (--to), or the interface's own (masquerade).
    Add {
        /// Source prefix: 10.42.0.0/16.
        #[arg(long)]
        source: String,
        /// The VLAN whose router interface the connections leave through.
        #[arg(long)]
        out_vlan: u16,
        /// Fixed source address; without it, masquerade.
        #[arg(long)]
        to: Option<String>,
        /// Connections to this prefix keep their source (10.42.0.0/16: pod to pod).
        #[arg(long)]
        except: Option<String>,
    },
    /// Remove the rule of a source prefix and VLAN.
    Del {
        #[arg(long)]
        source: String,
        #[arg(long)]
        out_vlan: u16,
    },
    /// List rules in the order they apply.
    #[command(alias = "show")]
    List,
}

#[derive(Debug, Subcommand)]
pub enum DnatCmd {
    /// Forward connections to an address and port to another (IP:PORT, or IP for the same
    /// port).
    Add {
        /// tcp or udp; default tcp.
        #[arg(long)]
        protocol: Option<String>,
        #[arg(long)]
        address: String,
        #[arg(long)]
        port: u32,
        #[arg(long)]
        to: String,
    },
    /// Remove a port forward (and forget its connections).
    Del {
        /// tcp or udp; default tcp.
        #[arg(long)]
        protocol: Option<String>,
        #[arg(long)]
        address: String,
        #[arg(long)]
        port: u32,
    },
    /// List port forwards with their tracked connections.
    #[command(alias = "show")]
    List,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Add the policies of a TOML file (`-`: standard input) with [[policy]],
    /// [[admin_policy]] and [[baseline_policy]] sections, replacing those of the same tier and
    /// name. All are checked before any is applied.
    Add { file: String },
    /// Remove a policy.
    Del {
        name: String,
        /// admin, policy or baseline: needed only when two tiers have the name.
        #[arg(long)]
        tier: Option<String>,
    },
    /// List policies, admin tier first, each tier in evaluation order, with the ports they
    /// apply to and each rule's hits.
    List,
    /// One policy: its rules as resolved now, and their hits.
    Show {
        name: String,
        #[arg(long)]
        tier: Option<String>,
    },
}

/// The request of a `policy` verb (reading the file of `policy add`).
fn policy_request(cmd: PolicyCmd) -> Result<Request, Error> {
    Ok(match cmd {
        PolicyCmd::Add { file } => {
            let text = if file == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
                t
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?
            };
            let f = tapswitch_control::config::policy::PolicyFile::from_toml(&text)
                .map_err(|e| format!("{file}: {e}"))?;
            Request::PolicyAdd {
                policy: f.policy,
                admin_policy: f.admin_policy,
                baseline_policy: f.baseline_policy,
            }
        }
        PolicyCmd::Del { name, tier } => Request::PolicyDel { name, tier },
        PolicyCmd::List => Request::PolicyList,
        PolicyCmd::Show { name, tier } => Request::PolicyShow { name, tier },
    })
}

/// The strings of a JSON array (none for anything else).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// `policy list`: one line per policy, one per rule.
pub fn print_policies(data: &Value) {
    let list = match data {
        Value::Array(a) => a.clone(),
        v => vec![v.clone()],
    };
    println!(
        "{:<9} {:<24} {:>8}  {:<30} PORTS",
        "TIER", "NAME", "PRIORITY", "SELECT"
    );
    for p in &list {
        let select: Vec<String> = p["select"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        let ports = strings(&p["ports"]);
        println!(
            "{:<9} {:<24} {:>8}  {:<30} {}",
            s(p, "tier"),
            s(p, "name"),
            p["priority"].as_u64().map_or("-".into(), |n| n.to_string()),
            if select.is_empty() {
                "{} (all)".to_string()
            } else {
                select.join(",")
            },
            ports.join(",")
        );
        for r in p["rules"].as_array().into_iter().flatten() {
            let peers = match r["peers"].is_array() {
                true => strings(&r["peers"]).join(","),
                false => "all".into(),
            };
            let ports = strings(&r["ports"]);
            println!(
                "    {}[{}] {:<5} peers {}  ports {}  hits {}",
                s(r, "direction"),
                s(r, "index"),
                s(r, "action"),
                if peers.is_empty() { "none" } else { &peers },
                if ports.is_empty() {
                    "all".to_string()
                } else {
                    ports.join(",")
                },
                s(r, "hits")
            );
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Add a Service: a VIP and port balanced over backends.
    Add(ServiceAddArgs),
    /// Remove a Service (and forget its connections).
    Del { name: String },
    /// List Services with their backends and tracked connections.
    #[command(alias = "show")]
    List,
    /// Replace a Service's backends (none: it rejects new connections). Removed backends'
    /// connections are forgotten; drained ones keep theirs.
    SetBackends {
        name: String,
        /// ADDR:PORT[,weight=N][,drain]
        backends: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServiceAddArgs {
    pub name: String,
    #[arg(long)]
    pub vip: String,
    #[arg(long)]
    pub port: u32,
    /// tcp or udp; default tcp.
    #[arg(long)]
    pub protocol: Option<String>,
    /// ADDR:PORT[,weight=N][,drain]; repeat for each backend.
    #[arg(long = "backend")]
    pub backends: Vec<String>,
    /// maglev (default), random, round-robin, least-conn, source-hash.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// ClientIP affinity: a client stays with its backend this long (1..=86400).
    #[arg(long)]
    pub affinity_secs: Option<u64>,
    /// Also listen on this port of every router interface address.
    #[arg(long)]
    pub node_port: Option<u32>,
}

impl ServiceAddArgs {
    pub fn service(self) -> ServiceConfig {
        ServiceConfig {
            name: self.name,
            vip: self.vip,
            port: self.port,
            protocol: self.protocol,
            scheduler: self.scheduler,
            affinity_secs: self.affinity_secs,
            node_port: self.node_port,
            backends: self.backends.into_iter().map(BackendConfig::Text).collect(),
            owner: None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConntrackCmd {
    /// Tracked connections, one per line (as conntrack -L prints them), and the counters.
    #[command(alias = "list")]
    Show(ConntrackFilterArgs),
    /// Forget the tracked connections the filters pick (all of them without filters).
    Flush(ConntrackFilterArgs),
}

/// Every filter given must match.
#[derive(Debug, Args)]
pub struct ConntrackFilterArgs {
    /// tcp, udp or icmp.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Any of the connection's addresses.
    #[arg(long)]
    pub address: Option<String>,
    /// Any of the connection's ports.
    #[arg(long)]
    pub port: Option<u32>,
    /// Connections balanced by this Service ...
    #[arg(long)]
    pub service: Option<String>,
    /// ... to this backend (IP:PORT).
    #[arg(long)]
    pub backend: Option<String>,
}

impl ConntrackFilterArgs {
    pub fn filter(self) -> ConntrackFilter {
        ConntrackFilter {
            protocol: self.protocol,
            address: self.address,
            port: self.port,
            service: self.service,
            backend: self.backend,
        }
    }
}

/// What prints an answer as a table.
pub type Printer = fn(&Value);

/// The request of a NAT verb, and the printer of its answer (`None` for changes).
pub fn nat_request(cmd: Command) -> Option<(Request, Option<Printer>)> {
    Some(match cmd {
        Command::Snat(SnatCmd::Add {
            source,
            out_vlan,
            to,
            except,
        }) => (
            Request::SnatAdd {
                snat: SnatConfig {
                    source,
                    out_vlan,
                    to,
                    except,
                    owner: None,
                },
            },
            None,
        ),
        Command::Snat(SnatCmd::Del { source, out_vlan }) => {
            (Request::SnatDel { source, out_vlan }, None)
        }
        Command::Snat(SnatCmd::List) => (Request::SnatList, Some(print_snat as Printer)),
        Command::Dnat(DnatCmd::Add {
            protocol,
            address,
            port,
            to,
        }) => (
            Request::DnatAdd {
                dnat: DnatConfig {
                    protocol,
                    address,
                    port,
                    to,
                    container_id: None,
                },
            },
            None,
        ),
        Command::Dnat(DnatCmd::Del {
            protocol,
            address,
            port,
        }) => (
            Request::DnatDel {
                protocol,
                address,
                port,
            },
            None,
        ),
        Command::Dnat(DnatCmd::List) => (Request::DnatList, Some(print_dnat)),
        Command::Service(ServiceCmd::Add(a)) => (
            Request::ServiceAdd {
                service: a.service(),
            },
            None,
        ),
        Command::Service(ServiceCmd::Del { name }) => (Request::ServiceDel { name }, None),
        Command::Service(ServiceCmd::List) => (Request::ServiceList, Some(print_services)),
        Command::Service(ServiceCmd::SetBackends { name, backends }) => (
            Request::ServiceSetBackends {
                name,
                backends: backends.into_iter().map(BackendConfig::Text).collect(),
            },
            None,
        ),
        Command::Conntrack(ConntrackCmd::Show(f)) => (
            Request::ConntrackShow { filter: f.filter() },
            Some(print_conntrack),
        ),
        Command::Conntrack(ConntrackCmd::Flush(f)) => (
            Request::ConntrackFlush { filter: f.filter() },
            Some(print_flushed),
        ),
        _ => return None,
    })
}

#[derive(Debug, Subcommand)]
pub enum NeighCmd {
    /// Answer ARP/ND for IP with MAC on the VNI's VLAN instead of flooding.
    Add {
        ip: String,
        #[arg(long)]
        mac: String,
        #[arg(long)]
        vni: u32,
    },
    /// Remove an entry.
    Del {
        ip: String,
        #[arg(long)]
        vni: Option<u32>,
    },
    /// List suppression entries and the router's resolved next hops with their state.
    #[command(alias = "list")]
    Show,
}

#[derive(Debug, Subcommand)]
pub enum FdbCmd {
    /// Static and learned entries.
    #[command(alias = "list")]
    Show,
    /// Add a static entry: on a local port, or behind a remote VTEP of a VNI.
    Add {
        mac: String,
        #[arg(long, required_unless_present = "vni")]
        port: Option<String>,
        #[arg(long)]
        vlan: Option<u16>,
        #[arg(long, requires = "remote", conflicts_with = "port")]
        vni: Option<u32>,
        #[arg(long, requires = "vni")]
        remote: Option<String>,
    },
    /// Remove static and learned entries for a MAC.
    Del {
        mac: String,
        #[arg(long)]
        vlan: Option<u16>,
    },
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The packet, described: `tcp 10.42.0.2:40000 > 10.96.0.10:80 syn`, `udp A:P > B:P`,
    /// `icmp A > B`, `icmp6 A > B`, `arp who-has B tell A`, `arp reply A to B`; before the
    /// protocol `vlan N` (an 802.1Q tag), `src-mac MAC`, `dst-mac MAC`; after it `ttl N`,
    /// `len N` (payload bytes). Without MACs, the switch picks them (the sender's, and the
    /// router's for a routed packet). Quote it, or give it as several words.
    pub packet: Vec<String>,
    /// The port the packet arrives on (dry run).
    #[arg(long = "in-port")]
    pub in_port: Option<String>,
    /// The frame as a hex dump (plain hex, or `tcpdump -xx` / `xxd` output).
    #[arg(long, conflicts_with_all = ["packet", "pcap"])]
    pub hex: Option<String>,
    /// The frame from a pcap or pcapng file (an Ethernet capture).
    #[arg(long, conflicts_with = "packet")]
    pub pcap: Option<PathBuf>,
    /// Which packet of the --pcap file, counting from 1.
    #[arg(long, default_value_t = 1, requires = "pcap")]
    pub index: usize,
    /// Trace real packets as they pass, until --count or Ctrl-C.
    #[arg(long, conflicts_with_all = ["packet", "hex", "pcap", "in_port"])]
    pub live: bool,
    /// --live: only packets received on this port.
    #[arg(long, requires = "live")]
    pub port: Option<String>,
    /// --live: only packets this filter accepts (tcpdump's filter language).
    #[arg(long, requires = "live")]
    pub filter: Option<String>,
    /// --live: stop after this many packets.
    #[arg(long, requires = "live")]
    pub count: Option<u64>,
    /// --live: stop after this many seconds.
    #[arg(long, requires = "live")]
    pub duration: Option<f64>,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The port; without it, every port.
    pub port: Option<String>,
    /// Where to write: a file, or `-` for stdout (`-w - | tcpdump -r -`).
    #[arg(short = 'w', long = "write")]
    pub write: String,
    /// Frames received (`in`), sent (`out`) or `both`.
    #[arg(long, default_value = "both", value_parser = ["in", "out", "both"])]
    pub direction: String,
    /// Only packets this filter accepts (tcpdump's filter language, e.g. `tcp port 80`).
    #[arg(long)]
    pub filter: Option<String>,
    /// Bytes kept of each packet.
    #[arg(long, short = 's', default_value_t = 262_144)]
    pub snaplen: usize,
    /// Every frame dropped (on the port, or anywhere), with its stage and reason as a comment.
    #[arg(long)]
    pub drops: bool,
    /// A VXLAN port's (or, without a port, every tunnel's) outer packets, in place of frames.
    #[arg(long)]
    pub underlay: bool,
    /// Stop after this many packets.
    #[arg(long, short = 'c')]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// The file format.
    #[arg(long, default_value = "pcapng", value_parser = ["pcapng", "pcap"])]
    pub format: String,
}

pub type Error = Box<dyn std::error::Error>;

pub fn execute(cli: Cli) -> Result<(), Error> {
    let socket = cli.socket.as_path();
    match cli.command {
        Command::Run {
            config: path,
            state_dir,
            takeover,
        } => {
            let config = match &path {
                Some(path) => Config::load(path)?,
                None => Config::from_toml(DEFAULT_CONFIG)?,
            };
            let opts = daemon::RunOptions {
                config,
                config_file: path,
                socket: socket.to_path_buf(),
                state_dir,
                takeover,
            };
            daemon::run(opts, |_| {})?;
            Ok(())
        }
        Command::Stop { purge } => {
            api::call(socket, &Request::Stop { purge })?;
            Ok(())
        }
        Command::Demo => crate::demo::run(),
        Command::Port(PortCmd::Add(a)) => {
            let a = *a;
            let port = PortConfig {
                name: a.name,
                netns: a.netns,
                attach: a.attach,
                kind: a.vhost_user.is_some().then(|| "vhost-user".to_string()),
                socket: a.vhost_user,
                vhost_user_mode: a.vhost_user_client.then(|| "client".to_string()),
                mac: a.mac,
                mtu: a.mtu,
                vlan: a.vlan,
                trunk: a.trunk,
                native_vlan: a.native_vlan,
                max_macs: a.max_macs,
                offload: a.no_offload.then_some(false),
                ifname: a.ifname,
                container_id: a.container_id,
                addresses: a.addresses,
                labels: a.labels.into_iter().collect(),
                port_security: a.port_security,
                allowed_pairs: a.allowed_pairs,
                allow_ra: a.allow_ra,
                allow_dhcp_server: a.allow_dhcp_server,
                storm_control: a.storm_control,
                police: a.police,
                shape: a.shape,
            };
            api::call(socket, &Request::PortAdd { port })?;
            Ok(())
        }
        Command::Port(PortCmd::Set(a)) => {
            let a = *a;
            let change = tapswitch_control::config::PortChange {
                labels: a.labels.into_iter().collect(),
                del_labels: a.del_labels,
                addresses: (a.no_addresses || !a.addresses.is_empty()).then_some(a.addresses),
                port_security: a.port_security,
                allowed_pairs: (a.no_allowed_pairs || !a.allowed_pairs.is_empty())
                    .then_some(a.allowed_pairs),
                allow_ra: a.allow_ra,
                allow_dhcp_server: a.allow_dhcp_server,
                storm_control: a.storm_control,
                no_storm_control: a.no_storm_control,
                police: a.police,
                no_police: a.no_police,
                shape: a.shape,
                no_shape: a.no_shape,
            };
            api::call(
                socket,
                &Request::PortSet {
                    name: a.name,
                    change,
                },
            )?;
            Ok(())
        }
        Command::Port(PortCmd::Del { name }) => {
            api::call(socket, &Request::PortDel { name })?;
            Ok(())
        }
        Command::Port(PortCmd::List) => show(socket, &Request::PortList, cli.json, print_ports),
        Command::Fdb(FdbCmd::Show) => show(socket, &Request::FdbShow, cli.json, print_fdb),
        Command::Fdb(FdbCmd::Add {
            mac,
            port,
            vlan,
            vni,
            remote,
        }) => {
            let entry = FdbConfig {
                mac,
                port,
                vlan,
                vni,
                remote,
                owner: None,
            };
            api::call(socket, &Request::FdbAdd { entry })?;
            Ok(())
        }
        Command::Vxlan(VxlanCmd::Add(a)) => {
            let vxlan = VxlanConfig {
                vni: a.vni,
                vlan: a.vlan,
                local: a.local,
                port: a.port,
                remotes: a.remotes,
                learning: Some(!a.no_learning),
                allow: a.allow,
                mtu: a.mtu,
                ttl: a.ttl,
                owner: None,
            };
            api::call(socket, &Request::VxlanAdd { vxlan })?;
            Ok(())
        }
        Command::Vxlan(VxlanCmd::Del { vni }) => {
            api::call(socket, &Request::VxlanDel { vni })?;
            Ok(())
        }
        Command::Vxlan(VxlanCmd::List) => show(socket, &Request::VxlanList, cli.json, print_vxlan),
        Command::Neigh(NeighCmd::Add { ip, mac, vni }) => {
            api::call(
                socket,
                &Request::NeighAdd {
                    neigh: NeighConfig {
                        ip,
                        mac,
                        vni,
                        owner: None,
                    },
                },
            )?;
            Ok(())
        }
        Command::Neigh(NeighCmd::Del { ip, vni }) => {
            api::call(socket, &Request::NeighDel { ip, vni })?;
            Ok(())
        }
        Command::Neigh(NeighCmd::Show) => show(socket, &Request::NeighShow, cli.json, print_neigh),
        Command::Fdb(FdbCmd::Del { mac, vlan }) => {
            api::call(socket, &Request::FdbDel { mac, vlan })?;
            Ok(())
        }
        Command::Stats => show(socket, &Request::Stats, cli.json, print_stats),
        Command::Cluster(ClusterCmd::Status) => {
            show(socket, &Request::ClusterStatus, cli.json, print_cluster)
        }
        Command::Interface(InterfaceCmd::Add {
            vlan,
            addresses,
            mac,
            mtu,
            no_dhcp,
            dns,
            domain,
            lease_secs,
        }) => {
            let interface = InterfaceConfig {
                vlan,
                address: Addresses::Many(addresses),
                mac,
                mtu,
                dhcp: no_dhcp.then_some(false),
                dns,
                domain,
                lease_secs,
                owner: None,
            };
            api::call(socket, &Request::InterfaceAdd { interface })?;
            Ok(())
        }
        Command::Interface(InterfaceCmd::Del { vlan }) => {
            api::call(socket, &Request::InterfaceDel { vlan })?;
            Ok(())
        }
        Command::Interface(InterfaceCmd::List) => {
            show(socket, &Request::InterfaceList, cli.json, print_interfaces)
        }
        Command::Route(RouteCmd::Add {
            prefix,
            via,
            encap,
            local,
            mtu,
            ttl,
            unreachable,
            vlan,
            onlink,
        }) => {
            let route = RouteConfig {
                prefix,
                via,
                encap,
                local,
                mtu,
                ttl,
                unreachable,
                vlan,
                onlink,
                owner: None,
            };
            api::call(socket, &Request::RouteAdd { route })?;
            Ok(())
        }
        Command::Route(RouteCmd::Del { prefix }) => {
            api::call(socket, &Request::RouteDel { prefix })?;
            Ok(())
        }
        Command::Route(RouteCmd::Show) => show(socket, &Request::RouteShow, cli.json, print_routes),
        Command::Reload => {
            let v = api::call(socket, &Request::Reload)?;
            println!(
                "reloaded: {} ports added, {} removed, {} kept",
                v["added"], v["removed"], v["kept"]
            );
            Ok(())
        }
        Command::Trace(a) if a.live => trace_live(socket, a, cli.json),
        Command::Trace(a) => trace(socket, a, cli.json),
        Command::Capture(a) => capture(socket, a),
        Command::Policy(cmd) => {
            let printer = matches!(cmd, PolicyCmd::List | PolicyCmd::Show { .. });
            let req = policy_request(cmd)?;
            if printer {
                show(socket, &req, cli.json, print_policies)
            } else {
                api::call(socket, &req)?;
                Ok(())
            }
        }
        Command::Config => {
            let v = api::call(socket, &Request::ConfigShow)?;
            print!("{}", v.as_str().unwrap_or_default());
            Ok(())
        }
        cmd @ (Command::Snat(_)
        | Command::Dnat(_)
        | Command::Service(_)
        | Command::Conntrack(_)) => match nat_request(cmd) {
            Some((req, Some(table))) => show(socket, &req, cli.json, table),
            Some((req, None)) => {
                api::call(socket, &req)?;
                Ok(())
            }
            None => Ok(()),
        },
    }
}

fn trace(socket: &Path, a: TraceArgs, json: bool) -> Result<(), Error> {
    let Some(port) = a.in_port else {
        return Err("trace: --in-port PORT names the port the packet arrives on".into());
    };
    let (packet, frame) = match (a.hex, a.pcap) {
        (Some(hex), _) => (None, Some(hex)),
        (None, Some(path)) => {
            let bytes = tapswitch_control::trace::read_capture(&path, a.index)?;
            (None, Some(tapswitch_control::trace::to_hex(&bytes)))
        }
        (None, None) if !a.packet.is_empty() => (Some(a.packet.join(" ")), None),
        (None, None) => {
            return Err("trace: describe the packet, or give --hex or --pcap".into());
        }
    };
    let report = api::call(
        socket,
        &Request::Trace {
            port,
            packet,
            frame,
        },
    )?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", tapswitch_control::trace::render(&report));
    }
    Ok(())
}

/// Runs a tap session: starts it, polls it every 100 ms and hands each record to `each`
/// (which returns false to stop), until the session is done, `duration` passes, Ctrl-C, or
/// `each` stops; then stops it. Returns (records, lost).
fn tap_session(
    socket: &Path,
    tap: TapRequest,
    duration: Option<f64>,
    mut each: impl FnMut(&Value) -> Result<bool, Error>,
) -> Result<(u64, u64), Error> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
    }
    let deadline =
        duration.map(|d| std::time::Instant::now() + std::time::Duration::from_secs_f64(d));
    let what = format!(
        "{} on {}{}",
        if tap.kind == "trace" {
            "tracing"
        } else {
            "capturing"
        },
        tap.port.as_deref().unwrap_or("every port"),
        if tap.drops {
            " (drops)"
        } else if tap.underlay {
            " (underlay)"
        } else {
            ""
        }
    );
    let started = api::call(socket, &Request::TapStart { tap })?;
    let id = started["id"].as_u64().ok_or("tap: no session id")?;
    // As tcpdump's "listening on": the session is in force from here on.
    eprintln!("tapswitch: {what}");
    let (mut n, mut lost) = (0u64, 0u64);
    let result = (|| -> Result<(), Error> {
        loop {
            let polled = api::call(socket, &Request::TapPoll { id })?;
            lost = polled["lost"].as_u64().unwrap_or(0);
            for r in polled["records"].as_array().into_iter().flatten() {
                n += 1;
                if !each(r)? {
                    return Ok(());
                }
            }
            let idle = polled["records"].as_array().is_none_or(|a| a.is_empty());
            if polled["done"] == true
                || stop.load(std::sync::atomic::Ordering::Relaxed)
                || deadline.is_some_and(|d| std::time::Instant::now() >= d)
            {
                return Ok(());
            }
            if idle {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    })();
    if let Ok(v) = api::call(socket, &Request::TapStop { id }) {
        lost = lost.max(v["lost"].as_u64().unwrap_or(0));
    }
    result.map(|()| (n, lost))
}

fn trace_live(socket: &Path, a: TraceArgs, json: bool) -> Result<(), Error> {
    let tap = TapRequest {
        kind: "trace".into(),
        port: a.port,
        direction: Some("in".into()),
        filter: a.filter,
        count: a.count,
        ..TapRequest::default()
    };
    let mut out = std::io::stdout().lock();
    let (_, lost) = tap_session(socket, tap, a.duration, |r| {
        let t = &r["trace"];
        let written = if json {
            writeln!(out, "{}", serde_json::to_string(t)?)
        } else {
            write!(out, "{}", tapswitch_control::trace::render(t))
        };
        // The reader went away (a closed pipe): stop.
        Ok(written.and_then(|()| out.flush()).is_ok())
    })?;
    if lost > 0 {
        eprintln!("{lost} traces lost (the reader was too slow)");
    }
    Ok(())
}

fn capture(socket: &Path, a: CaptureArgs) -> Result<(), Error> {
    use std::os::fd::AsFd;
    let out: std::fs::File = if a.write == "-" {
        std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?)
    } else {
        std::fs::File::create(&a.write).map_err(|e| format!("{}: {e}", a.write))?
    };
    let name = a.port.clone().unwrap_or_else(|| "tapswitch".into());
    let snaplen = a.snaplen.min(u32::MAX as usize) as u32;
    let mut file = tapswitch_control::capture::CaptureFile::new(
        std::io::BufWriter::new(out),
        a.format == "pcapng",
        &name,
        snaplen,
        a.underlay,
    )?;
    let tap = TapRequest {
        kind: "capture".into(),
        port: a.port,
        direction: Some(a.direction),
        filter: a.filter,
        snaplen: Some(a.snaplen),
        drops: a.drops,
        underlay: a.underlay,
        count: a.count,
    };
    let mut skipped = 0u64;
    let mut flushed = std::time::Instant::now();
    let (n, lost) = tap_session(socket, tap, a.duration, |r| {
        if !file.write(r)? {
            skipped += 1;
        }
        // Live readers (`-w - | tcpdump -r -`) see packets within a tenth of a second.
        if flushed.elapsed() >= std::time::Duration::from_millis(100) {
            flushed = std::time::Instant::now();
            if file.flush().is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    let _ = file.flush();
    eprintln!("{} packets captured", n - skipped);
    if lost > 0 {
        eprintln!(
            "{lost} packets lost by the capture (the reader was too slow; none by the switch)"
        );
    }
    if skipped > 0 {
        eprintln!("{skipped} packets of the other link type left out");
    }
    Ok(())
}

fn show(socket: &Path, req: &Request, json: bool, table: Printer) -> Result<(), Error> {
    let data = api::call(socket, req)?;
    if json {
        println!("{}", serde_json::to_string(&data)?);
    } else {
        table(&data);
    }
    Ok(())
}

fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

pub fn print_ports(data: &Value) {
    println!(
        "{:<16} {:>4} {:<10} {:<12} {:<18} {:>6}  VLANS",
        "NAME", "ID", "KIND", "NETNS", "MAC", "MTU"
    );
    for p in data.as_array().into_iter().flatten() {
        let vlans = if p["trunk"].is_null() {
            format!("access {}", s(p, "vlan"))
        } else if p["native_vlan"].is_null() {
            format!("trunk {}", s(p, "trunk"))
        } else {
            format!("trunk {} native {}", s(p, "trunk"), s(p, "native_vlan"))
        };
        let mut extra = String::new();
        if !p["ifname"].is_null() {
            extra.push_str(&format!("  ifname {}", s(p, "ifname")));
        }
        if !p["container_id"].is_null() {
            let id = s(p, "container_id");
            extra.push_str(&format!("  container {}", &id[..id.len().min(12)]));
        }
        if let Some(a) = p["addresses"].as_array().filter(|a| !a.is_empty()) {
            let a: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            extra.push_str(&format!("  addresses {}", a.join(",")));
        }
        let vu = &p["vhost_user"];
        if !vu.is_null() {
            let state = if vu["connected"].as_bool() == Some(true) {
                let names: Vec<&str> = vu["feature_names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!(
                    "connected, queue pairs {}/{}, features {} ({})",
                    s(vu, "queue_pairs_enabled"),
                    s(vu, "queue_pairs"),
                    s(vu, "features"),
                    names.join(",")
                )
            } else {
                "not connected".to_string()
            };
            extra.push_str(&format!(
                "  socket {} ({}): {state}",
                s(vu, "socket"),
                s(vu, "mode")
            ));
        }
        if let Some(labels) = p["labels"].as_object() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            extra.push_str(&format!("  labels {}", l.join(",")));
        }
        println!(
            "{:<16} {:>4} {:<10} {:<12} {:<18} {:>6}  {}{extra}",
            s(p, "name"),
            s(p, "id"),
            s(p, "kind"),
            s(p, "netns"),
            s(p, "mac"),
            s(p, "mtu"),
            vlans
        );
    }
}

pub fn print_fdb(data: &Value) {
    println!(
        "{:<18} {:>5} {:<16} {:<8} {:>6}  REMOTE",
        "MAC", "VLAN", "PORT", "TYPE", "AGE"
    );
    for e in data.as_array().into_iter().flatten() {
        let age = if e["age_secs"].is_null() {
            "-".into()
        } else {
            format!("{}s", s(e, "age_secs"))
        };
        let remote = if e["vni"].is_null() {
            String::new()
        } else {
            format!("vni {} dst {}", s(e, "vni"), s(e, "remote"))
        };
        println!(
            "{:<18} {:>5} {:<16} {:<8} {:>6}  {remote}",
            s(e, "mac"),
            s(e, "vlan"),
            s(e, "port"),
            s(e, "type"),
            age
        );
    }
}

pub fn print_stats(data: &Value) {
    println!(
        "{:<16} {:>10} {:>12} {:>10} {:>12} {:>8}  DROPS",
        "PORT", "RX_PKTS", "RX_BYTES", "TX_PKTS", "TX_BYTES", "TX_ERR"
    );
    for p in data["ports"].as_array().into_iter().flatten() {
        let drops: Vec<String> = p["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<16} {:>10} {:>12} {:>10} {:>12} {:>8}  {}",
            s(p, "name"),
            s(p, "rx_packets"),
            s(p, "rx_bytes"),
            s(p, "tx_packets"),
            s(p, "tx_bytes"),
            s(p, "tx_errors"),
            if drops.is_empty() {
                "-".into()
            } else {
                drops.join(" ")
            }
        );
    }
    let workers = data["workers"].as_array().map_or(&[][..], |w| &w[..]);
    if workers.len() > 1 {
        let each: Vec<String> = workers
            .iter()
            .map(|w| {
                format!(
                    "{}: rx {} tx {}",
                    s(w, "worker"),
                    s(w, "rx_packets"),
                    s(w, "tx_packets")
                )
            })
            .collect();
        println!("workers: {}", each.join(", "));
    }
    let v = &data["vxlan"];
    if v["rx_packets"].as_u64().unwrap_or(0) + v["tx_packets"].as_u64().unwrap_or(0) > 0 {
        let drops: Vec<String> = v["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!(
            "vxlan: rx {} packets, tx {} packets, tx_oversized {}, tx_errors {}; drops: {}",
            s(v, "rx_packets"),
            s(v, "tx_packets"),
            s(v, "tx_oversized"),
            s(v, "tx_errors"),
            if drops.is_empty() {
                "-".into()
            } else {
                drops.join(" ")
            }
        );
    }
    let v = &data["ipip"];
    if v["rx_packets"].as_u64().unwrap_or(0) + v["tx_packets"].as_u64().unwrap_or(0) > 0 {
        println!(
            "ipip: rx {} packets, tx {} packets, tx_oversized {}, tx_errors {}; drops: {}",
            s(v, "rx_packets"),
            s(v, "tx_packets"),
            s(v, "tx_oversized"),
            s(v, "tx_errors"),
            drops_of(v)
        );
    }
    for i in data["interfaces"].as_array().into_iter().flatten() {
        println!(
            "interface vlan {}: rx {} tx {} packets; neigh replies {} probes {}; echo replies {}; icmp errors {} (rate limited {}); fragmented {}; drops: {}",
            s(i, "vlan"),
            s(i, "rx_packets"),
            s(i, "tx_packets"),
            s(i, "neigh_replies"),
            s(i, "neigh_probes"),
            s(i, "echo_replies"),
            s(i, "icmp_errors"),
            s(i, "icmp_rate_limited"),
            s(i, "fragmented"),
            drops_of(i)
        );
    }
    let n = &data["nat"];
    if !n.is_null() {
        println!(
            "nat: {} connections tracked (max {}); {} connections, {} packets translated, {} icmp errors translated; rejected {} invalid {} insert_failed {}",
            s(n, "entries"),
            s(n, "max"),
            s(n, "connections"),
            s(n, "translated"),
            s(n, "icmp_translated"),
            s(n, "rejected"),
            s(n, "invalid"),
            s(n, "insert_failed")
        );
    }
    let c = &data["checkpoint"];
    if !c.is_null() {
        println!(
            "checkpoint: {} written ({} failed); last: {} entries, {} bytes, {} s ago",
            s(c, "written"),
            s(c, "failed"),
            s(c, "entries"),
            s(c, "bytes"),
            s(c, "age_secs"),
        );
    }
    let c = &data["control"];
    if !c.is_null() {
        println!(
            "control: {} connections open (max {}); refused {} timed out {}",
            s(c, "connections"),
            s(c, "max_connections"),
            s(c, "refused"),
            s(c, "timed_out"),
        );
    }
    let f = &data["fdb"];
    println!(
        "fdb: {} learned, {} static entries; learned {} moved {} aged {}; not learned: table_full {} port_limit {}",
        s(f, "learned_entries"),
        s(f, "static_entries"),
        s(f, "learned"),
        s(f, "moved"),
        s(f, "aged"),
        s(f, "table_full"),
        s(f, "port_limit")
    );
}

pub fn print_vxlan(data: &Value) {
    println!(
        "{:>8} {:>5} {:<14} {:<22} {:<8} {:>5}  REMOTES",
        "VNI", "VLAN", "PORT", "LOCAL", "LEARNING", "MTU"
    );
    for v in data.as_array().into_iter().flatten() {
        println!(
            "{:>8} {:>5} {:<14} {:<22} {:<8} {:>5}  {}",
            s(v, "vni"),
            s(v, "vlan"),
            s(v, "port"),
            format!("{}:{}", s(v, "local"), s(v, "udp_port")),
            s(v, "learning"),
            s(v, "mtu"),
            s(v, "remotes").replace('"', "")
        );
    }
}

pub fn print_neigh(data: &Value) {
    println!(
        "{:<40} {:<18} {:<11} {:<10} {:>8}  QUEUED",
        "IP", "MAC", "STATE", "ON", "AGE"
    );
    for n in data.as_array().into_iter().flatten() {
        let on = if n["vni"].is_null() {
            format!("vlan {}", s(n, "vlan"))
        } else {
            format!("vni {}", s(n, "vni"))
        };
        let age = match n["age_ms"].as_u64() {
            Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
            None => "-".into(),
        };
        println!(
            "{:<40} {:<18} {:<11} {:<10} {:>8}  {}",
            s(n, "ip"),
            s(n, "mac"),
            s(n, "state"),
            on,
            age,
            s(n, "queued")
        );
    }
}

fn drops_of(v: &Value) -> String {
    let drops: Vec<String> = v["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if drops.is_empty() {
        "-".into()
    } else {
        drops.join(" ")
    }
}

pub fn print_interfaces(data: &Value) {
    println!(
        "{:>5} {:<18} {:>6} {:>10} {:>10}  ADDRESSES",
        "VLAN", "MAC", "MTU", "RX_PKTS", "TX_PKTS"
    );
    for i in data.as_array().into_iter().flatten() {
        println!(
            "{:>5} {:<18} {:>6} {:>10} {:>10}  {}",
            s(i, "vlan"),
            s(i, "mac"),
            s(i, "mtu"),
            s(&i["stats"], "rx_packets"),
            s(&i["stats"], "tx_packets"),
            s(i, "addresses").replace('"', "")
        );
        let d = &i["dhcp"];
        if !d.is_null() {
            let st = &i["stats"];
            println!(
                "{:>5} dhcp: dns [{}] domain {} lease {} s; offers {} acks {} naks {} declines {}",
                "",
                strings(&d["dns"]).join(", "),
                d["domain"].as_str().unwrap_or("-"),
                s(d, "lease_secs"),
                s(st, "dhcp_offers"),
                s(st, "dhcp_acks"),
                s(st, "dhcp_naks"),
                s(st, "dhcp_declines"),
            );
        }
        println!("{:>5} drops: {}", "", drops_of(&i["stats"]));
    }
}

pub fn print_cluster(d: &Value) {
    println!("prefix {}  state {}", s(d, "prefix"), s(d, "state"));
    for e in d["endpoints"].as_array().into_iter().flatten() {
        let health = if e["healthy"].as_bool() == Some(true) {
            "healthy".to_string()
        } else {
            format!("unhealthy: {}", s(e, "error"))
        };
        println!("endpoint {} {health}", s(e, "endpoint"));
    }
    let n = &d["network"];
    if !n.is_null() {
        println!(
            "network {} subnets /{} from {} to {} backend {} pod mtu {}",
            s(n, "network"),
            s(n, "subnet_len"),
            s(n, "subnet_min"),
            s(n, "subnet_max"),
            s(n, "backend"),
            s(n, "pod_mtu")
        );
    }
    let l = &d["lease"];
    if !l.is_null() {
        let mac = if l["vtep_mac"].is_null() {
            String::new()
        } else {
            format!(" vtep {}", s(l, "vtep_mac"))
        };
        println!(
            "lease {} gateway {} public {}{mac} ttl {}s left of {}s",
            s(l, "subnet"),
            s(l, "gateway"),
            s(l, "public_ip"),
            s(l, "ttl_left_secs"),
            s(l, "ttl_secs")
        );
    }
    let peers = d["peers"].as_array().cloned().unwrap_or_default();
    println!("peers {}", peers.len());
    for p in &peers {
        let how = match p["route"].as_str() {
            Some(r) => format!("via {r}"),
            None => format!("ignored: {}", s(p, "ignored")),
        };
        let data = if p["backend_data"].is_null() {
            String::new()
        } else {
            format!(" {}", p["backend_data"])
        };
        println!(
            "  {} public {} {}{data} {how}, seen {}s ago",
            s(p, "subnet"),
            s(p, "public_ip"),
            s(p, "backend_type"),
            s(p, "last_seen_secs")
        );
    }
    println!(
        "services {}  revision {}  batches {} changes {} refused {}  warnings {}  reconnects {} resyncs {}",
        s(d, "services"),
        s(d, "revision"),
        s(d, "batches"),
        s(d, "changes"),
        s(d, "refused"),
        s(d, "warnings"),
        s(d, "reconnects"),
        s(d, "resyncs")
    );
    for w in d["recent_warnings"].as_array().into_iter().flatten() {
        println!("  warning: {}", w.as_str().unwrap_or_default());
    }
    if !d["last_error"].is_null() {
        println!("last error: {}", s(d, "last_error"));
    }
}

pub fn print_routes(data: &Value) {
    for r in data.as_array().into_iter().flatten() {
        let mut line = s(r, "prefix");
        match r["type"].as_str() {
            Some("unreachable") => line = format!("unreachable {line}"),
            _ => {
                if !r["via"].is_null() {
                    line.push_str(&format!(" via {}", s(r, "via")));
                }
                if !r["vlan"].is_null() {
                    line.push_str(&format!(" vlan {}", s(r, "vlan")));
                }
                if !r["encap"].is_null() {
                    line.push_str(&format!(" encap {} mtu {}", s(r, "encap"), s(r, "mtu")));
                }
                if r["onlink"].as_bool() == Some(true) {
                    line.push_str(" onlink");
                }
                if !r["owner"].is_null() {
                    line.push_str(&format!(" owner {}", s(r, "owner")));
                }
                if r["type"].as_str() == Some("connected") {
                    line.push_str(" proto kernel scope link");
                }
            }
        }
        println!("{line}");
    }
}

pub fn print_snat(data: &Value) {
    for r in data.as_array().into_iter().flatten() {
        let action = if r["masquerade"].as_bool() == Some(true) {
            "masquerade".to_string()
        } else {
            format!("to {}", s(r, "to"))
        };
        let except = if r["except"].is_null() {
            String::new()
        } else {
            format!(" except to {}", s(r, "except"))
        };
        println!(
            "{} out-vlan {} {action}{except}",
            s(r, "source"),
            s(r, "out_vlan")
        );
    }
}

pub fn print_dnat(data: &Value) {
    println!(
        "{:<5} {:<22} {:<22} {:>11}",
        "PROTO", "ADDRESS", "TO", "CONNECTIONS"
    );
    for d in data.as_array().into_iter().flatten() {
        println!(
            "{:<5} {:<22} {:<22} {:>11}",
            s(d, "protocol"),
            format!("{}:{}", s(d, "address"), s(d, "port")),
            s(d, "to"),
            s(d, "connections")
        );
    }
}

pub fn print_services(data: &Value) {
    println!(
        "{:<20} {:<5} {:<22} {:>8} {:<12} {:>8}  BACKENDS",
        "NAME", "PROTO", "VIP", "NODEPORT", "SCHEDULER", "AFFINITY"
    );
    for v in data.as_array().into_iter().flatten() {
        let backends = v["backends"].as_array().map_or(0, Vec::len);
        let affinity = match v["affinity_secs"].as_u64() {
            Some(secs) => format!("{secs}s"),
            None => "-".into(),
        };
        println!(
            "{:<20} {:<5} {:<22} {:>8} {:<12} {:>8}  {backends}",
            s(v, "name"),
            s(v, "protocol"),
            format!("{}:{}", s(v, "vip"), s(v, "port")),
            s(v, "node_port"),
            s(v, "scheduler"),
            affinity
        );
        for b in v["backends"].as_array().into_iter().flatten() {
            println!(
                "    {:<22} weight {:<5} {:<8} connections {}",
                s(b, "address"),
                s(b, "weight"),
                s(b, "state"),
                s(b, "connections")
            );
        }
    }
}

/// One connection as conntrack(8) prints it.
pub fn conntrack_line(c: &Value) -> String {
    let icmp = c["protocol"].as_str() == Some("icmp");
    let tuple = |t: &Value| {
        if icmp {
            format!(
                "src={} dst={} id={}",
                s(t, "src"),
                s(t, "dst"),
                s(t, "sport")
            )
        } else {
            format!(
                "src={} dst={} sport={} dport={}",
                s(t, "src"),
                s(t, "dst"),
                s(t, "sport"),
                s(t, "dport")
            )
        }
    };
    let mut line = format!(
        "{} {} {}s {} {}",
        s(c, "protocol"),
        s(c, "state"),
        s(c, "expires_secs"),
        tuple(&c["orig"]),
        tuple(&c["reply"])
    );
    for flag in c["nat"].as_array().into_iter().flatten() {
        line.push_str(&format!(
            " [{}]",
            flag.as_str().unwrap_or_default().to_uppercase()
        ));
    }
    if c["replied"].as_bool() == Some(false) {
        line.push_str(" [UNREPLIED]");
    } else if c["assured"].as_bool() == Some(true) {
        line.push_str(" [ASSURED]");
    }
    let pair = |key: &str| format!("{}/{}", c[key][0], c[key][1]);
    line.push_str(&format!(
        " packets={} bytes={}",
        pair("packets"),
        pair("bytes")
    ));
    if !c["service"].is_null() {
        line.push_str(&format!(
            " service={} backend={}",
            s(c, "service"),
            s(c, "backend")
        ));
    }
    line
}

pub fn print_conntrack(data: &Value) {
    for c in data["entries"].as_array().into_iter().flatten() {
        println!("{}", conntrack_line(c));
    }
    let m = &data["summary"];
    println!(
        "conntrack: {} shown of {} entries (max {}); inserted {} insert_failed {} clashes {} expired {} early_drops {} deleted {}",
        s(m, "shown"),
        s(m, "entries"),
        s(m, "max"),
        s(m, "inserted"),
        s(m, "insert_failed"),
        s(m, "clashes"),
        s(m, "expired"),
        s(m, "early_drops"),
        s(m, "deleted")
    );
}

pub fn print_flushed(data: &Value) {
    println!("conntrack: {data} connections flushed");
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    fn request(args: &[&str]) -> Request {
        let cli = Cli::try_parse_from(std::iter::once("tapswitch").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        nat_request(cli.command).expect("a NAT verb").0
    }

    #[test]
    fn nat_verbs_parse_into_requests() {
        assert_eq!(
            request(&[
                "snat",
                "add",
                "--source",
                "10.42.0.0/16",
                "--out-vlan",
                "100"
            ]),
            Request::SnatAdd {
                snat: SnatConfig {
                    source: "10.42.0.0/16".into(),
                    out_vlan: 100,
                    to: None,
                    except: None,
                    owner: None
                }
            }
        );
        assert_eq!(
            request(&[
                "snat",
                "del",
                "--source",
                "10.42.0.0/16",
                "--out-vlan",
                "100"
            ]),
            Request::SnatDel {
                source: "10.42.0.0/16".into(),
                out_vlan: 100
            }
        );
        assert_eq!(
            request(&[
                "dnat",
                "add",
                "--protocol",
                "udp",
                "--address",
                "10.200.0.1",
                "--port",
                "53",
                "--to",
                "10.42.0.3:5353"
            ]),
            Request::DnatAdd {
                dnat: DnatConfig {
                    protocol: Some("udp".into()),
                    address: "10.200.0.1".into(),
                    port: 53,
                    to: "10.42.0.3:5353".into(),
                    container_id: None
                }
            }
        );
        assert_eq!(
            request(&["dnat", "del", "--address", "10.200.0.1", "--port", "8080"]),
            Request::DnatDel {
                protocol: None,
                address: "10.200.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(
            request(&[
                "service",
                "add",
                "web",
                "--vip",
                "10.96.0.10",
                "--port",
                "80",
                "--backend",
                "10.42.0.2:8080",
                "--backend",
                "10.42.1.3:8080,weight=3",
                "--backend",
                "10.42.1.4:8080,drain",
                "--scheduler",
                "least-conn",
                "--affinity-secs",
                "10800",
                "--node-port",
                "30080"
            ]),
            Request::ServiceAdd {
                service: ServiceConfig {
                    name: "web".into(),
                    vip: "10.96.0.10".into(),
                    port: 80,
                    protocol: None,
                    scheduler: Some("least-conn".into()),
                    affinity_secs: Some(10800),
                    node_port: Some(30080),
                    backends: vec![
                        "10.42.0.2:8080".into(),
                        "10.42.1.3:8080,weight=3".into(),
                        "10.42.1.4:8080,drain".into()
                    ],
                    owner: None,
                }
            }
        );
        assert_eq!(
            request(&[
                "service",
                "set-backends",
                "web",
                "10.42.0.2:8080,weight=2",
                "10.42.0.3:8080"
            ]),
            Request::ServiceSetBackends {
                name: "web".into(),
                backends: vec!["10.42.0.2:8080,weight=2".into(), "10.42.0.3:8080".into()]
            }
        );
        assert_eq!(
            request(&["service", "set-backends", "web"]),
            Request::ServiceSetBackends {
                name: "web".into(),
                backends: Vec::new()
            }
        );
        assert_eq!(
            request(&["service", "del", "web"]),
            Request::ServiceDel { name: "web".into() }
        );
        assert_eq!(request(&["service", "list", "-j"]), Request::ServiceList);
        assert_eq!(
            request(&[
                "conntrack",
                "show",
                "--protocol",
                "tcp",
                "--service",
                "web",
                "--backend",
                "10.42.0.2:8080",
                "--address",
                "10.42.0.9",
                "--port",
                "80"
            ]),
            Request::ConntrackShow {
                filter: ConntrackFilter {
                    protocol: Some("tcp".into()),
                    address: Some("10.42.0.9".into()),
                    port: Some(80),
                    service: Some("web".into()),
                    backend: Some("10.42.0.2:8080".into())
                }
            }
        );
        assert_eq!(
            request(&["conntrack", "flush"]),
            Request::ConntrackFlush {
                filter: ConntrackFilter::default()
            }
        );
        assert!(
            Cli::try_parse_from(["tapswitch", "service", "add", "web", "--port", "80"]).is_err()
        );
    }

    #[test]
    fn conntrack_lines_read_like_conntrack8() {
        let c = json!({
            "protocol": "tcp", "state": "ESTABLISHED", "expires_secs": 431999,
            "orig": {"src": "10.42.0.2", "dst": "192.0.2.1", "sport": 40000, "dport": 80},
            "reply": {"src": "192.0.2.1", "dst": "10.200.0.1", "sport": 80, "dport": 61234},
            "nat": ["snat"], "replied": true, "assured": true,
            "packets": [3, 2], "bytes": [180, 120]
        });
        assert_eq!(
            conntrack_line(&c),
            "tcp ESTABLISHED 431999s src=10.42.0.2 dst=192.0.2.1 sport=40000 dport=80 \
             src=192.0.2.1 dst=10.200.0.1 sport=80 dport=61234 [SNAT] [ASSURED] \
             packets=3/2 bytes=180/120"
        );
        let c = json!({
            "protocol": "icmp", "state": "UNREPLIED", "expires_secs": 29,
            "orig": {"src": "10.42.0.2", "dst": "10.96.0.10", "sport": 7, "dport": 0},
            "reply": {"src": "10.42.0.5", "dst": "10.42.0.2", "sport": 7, "dport": 0},
            "nat": ["dnat"], "replied": false, "assured": false,
            "service": "web", "backend": "10.42.0.5:0",
            "packets": [1, 0], "bytes": [84, 0]
        });
        assert_eq!(
            conntrack_line(&c),
            "icmp UNREPLIED 29s src=10.42.0.2 dst=10.96.0.10 id=7 src=10.42.0.5 dst=10.42.0.2 id=7 \
             [DNAT] [UNREPLIED] packets=1/0 bytes=84/0 service=web backend=10.42.0.5:0"
        );
    }
}
