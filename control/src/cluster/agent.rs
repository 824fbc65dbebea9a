//! The cluster agent: one thread, off the control thread, running the etcd client.
//!
//! 1. Connects to etcd (retrying with backoff from 100 ms to 5 s; the switch forwards local
//!    traffic meanwhile) and reads `<prefix>/config` (waiting until it exists).
//! 2. Leases a subnet as flanneld does, in a transaction that cannot hand one subnet to two
//!    nodes: its previous subnet (kept in the state directory) if still free or still its
//!    own, else the lease that carries its PublicIP, else one at random among the first 100
//!    free. The key is attached to an etcd lease of `lease_ttl_secs`, kept alive every third
//!    of it.
//! 3. Programs its own entries and every peer's (see [`plan`]), then watches `<prefix>/` from
//!    the revision it listed and applies each change as it comes, as one batch per burst.
//! 4. When etcd is lost it keeps the last state, reconnects and resumes the watch where it
//!    was; a compacted revision means a full re-list, diffed against what is programmed. If
//!    its own key is gone (its lease expired while etcd was away, or someone deleted it), it
//!    leases again, its previous subnet first.
//!
//! Records written by someone else that cannot be used are ignored with a counted warning
//! naming the key. A `<prefix>/config` that changes the network while the agent runs is
//! refused (nothing is torn down): restart tapswitch to move to the new network.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tapswitch_dataplane::wire::EthernetAddress;

use super::plan::{Local, Reach};
use super::records::{parse_service, parse_subnet_key, Lease, Network, Subnet};
use crate::api::{self, Request};
use crate::config::cluster::ClusterSpec;
use crate::config::{ServiceConfig, MTU_MAX};
use crate::switch::batch::BatchResult;

/// The owner of everything the agent programs.
pub const OWNER: &str = "cluster";
/// The agent's file in the state directory.
pub const CACHE_FILE: &str = "cluster.json";
/// Largest batch sent at once (the control socket takes requests up to 64 KiB).
const BATCH_BYTES: usize = 56 * 1024;
/// Warnings kept for `cluster status`.
const WARNINGS_KEPT: usize = 16;

/// What `tapswitch cluster status` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    pub prefix: String,
    /// `connecting`, `waiting for <prefix>/config`, `leasing`, `running`, `reconnecting`.
    pub state: String,
    pub endpoints: Vec<EndpointStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    pub peers: Vec<PeerStatus>,
    pub services: usize,
    /// The etcd revision the dataplane reflects.
    pub revision: i64,
    /// Batches sent to the switch and the changes in them; changes the switch refused.
    pub batches: u64,
    pub changes: u64,
    pub refused: u64,
    /// Records ignored because they could not be used, in all; the last few by key.
    pub warnings: u64,
    pub recent_warnings: Vec<String>,
    /// Times the watch was resumed after losing etcd, and full re-lists (compaction, start).
    pub reconnects: u64,
    pub resyncs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkStatus {
    pub network: String,
    pub subnet_len: u8,
    pub subnet_min: String,
    pub subnet_max: String,
    pub backend: String,
    /// The MTU pods should use (flannel's FLANNEL_MTU).
    pub pod_mtu: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaseStatus {
    pub subnet: String,
    pub gateway: String,
    pub public_ip: String,
    pub backend_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    pub lease_id: i64,
    pub ttl_secs: u64,
    /// Seconds until the lease expires unless kept alive.
    pub ttl_left_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub subnet: String,
    pub public_ip: String,
    pub backend_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_data: Option<serde_json::Value>,
    /// How it is reached (`vxlan`, `direct`, `ipip`), or null when it is not programmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'static str>,
    /// Why it is not programmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    /// Seconds since its record last changed or was last listed.
    pub last_seen_secs: u64,
}

/// What the agent keeps in the state directory: the subnet it held and its VTEP MAC, so that
/// a restart gets both back, and the last known network, peers and Services (the etcd
/// records as they were), so that a restart while etcd is away forwards as before.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cache {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    vtep_mac: Option<String>,
    /// `<prefix>/config` as it was.
    #[serde(default)]
    network: Option<String>,
    /// Peers' lease values by subnet key name (`10.42.3.0-24`).
    #[serde(default)]
    peers: BTreeMap<String, String>,
    /// Services' records by name.
    #[serde(default)]
    services: BTreeMap<String, String>,
}

/// The running agent.
pub struct Agent {
    status: Arc<Mutex<ClusterStatus>>,
    stop: Arc<AtomicBool>,
    leave: Arc<AtomicBool>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent for `spec`, talking to the switch on the control socket `socket`,
    /// keeping its cache in `state_dir`.
    pub fn start(spec: ClusterSpec, socket: PathBuf, state_dir: Option<PathBuf>) -> Agent {
        let status = Arc::new(Mutex::new(ClusterStatus {
            prefix: spec.prefix.clone(),
            state: "connecting".into(),
            endpoints: spec
                .endpoints
                .iter()
                .map(|e| EndpointStatus {
                    endpoint: e.url.clone(),
                    healthy: false,
                    error: Some("not contacted yet".into()),
                })
                .collect(),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let leave = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = std::sync::mpsc::channel();
        let (st, sp, lv) = (Arc::clone(&status), Arc::clone(&stop), Arc::clone(&leave));
        let thread = std::thread::Builder::new()
            .name("cluster-agent".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::error!("cluster: cannot start the agent's runtime: {e}");
                        return;
                    }
                };
                let mut node = Node::new(spec, socket, state_dir, st, sp, lv);
                rt.block_on(node.run());
                let _ = done_tx.send(());
            })
            .ok();
        Agent {
            status,
            stop,
            leave,
            done,
            thread,
        }
    }

    /// Leaves the cluster (`tapswitch stop --purge`): the lease is revoked, so that the
    /// others drop this node at once, and the cache forgotten. Waits up to `wait` for it.
    pub fn leave(&self, wait: Duration) {
        self.leave.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.done.recv_timeout(wait);
    }

    /// A copy of the status, TTL left computed now.
    pub fn status(&self) -> ClusterStatus {
        lock(&self.status).clone()
    }
}

impl Drop for Agent {
    /// Tells the agent to stop; it does within 200 ms. Not waited for: it may be waiting on
    /// the control thread that drops it. Its lease stays until it expires, so that a restart
    /// gets the same subnet back.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.thread.take());
    }
}

fn lock(m: &Mutex<ClusterStatus>) -> std::sync::MutexGuard<'_, ClusterStatus> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listed key: its name, value and mod revision.
type Record3 = (String, Vec<u8>, i64);

/// A peer as the agent knows it.
struct Peer {
    lease: Lease,
    reach: Result<Reach, String>,
    seen: Instant,
}

/// Why the watch loop ended.
enum Ended {
    Stop,
    /// etcd was lost: reconnect, resume from the revision.
    Lost(String),
    /// The revision was compacted away: re-list.
    Compacted,
    /// Our key is gone: lease again.
    LeaseLost,
}

struct Node {
    spec: ClusterSpec,
    socket: PathBuf,
    state_dir: Option<PathBuf>,
    status: Arc<Mutex<ClusterStatus>>,
    stop: Arc<AtomicBool>,
    leave: Arc<AtomicBool>,
    /// The cache has changes not written yet; when it was last written.
    cache_dirty: bool,
    cache_saved: Instant,
    network: Option<Network>,
    local: Option<Local>,
    /// Whether `local`'s own entries are programmed.
    own_programmed: bool,
    lease_id: i64,
    lease_expiry: Instant,
    peers: BTreeMap<Subnet, Peer>,
    services: BTreeMap<String, ServiceConfig>,
    revision: i64,
    cache: Cache,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    fn new(
        spec: ClusterSpec,
        socket: PathBuf,
        state_dir: Option<PathBuf>,
        status: Arc<Mutex<ClusterStatus>>,
        stop: Arc<AtomicBool>,
        leave: Arc<AtomicBool>,
    ) -> Node {
        let cache = state_dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join(CACHE_FILE)).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Node {
            spec,
            socket,
            state_dir,
            status,
            stop,
            leave,
            cache_dirty: false,
            cache_saved: Instant::now(),
            network: None,
            local: None,
            own_programmed: false,
            lease_id: 0,
            lease_expiry: Instant::now(),
            peers: BTreeMap::new(),
            services: BTreeMap::new(),
            revision: 0,
            cache,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.spec.prefix)
    }

    fn set_state(&self, state: &str) {
        lock(&self.status).state = state.into();
    }

    fn error(&self, msg: String) {
        log::warn!("cluster: {msg}");
        lock(&self.status).last_error = Some(msg);
    }

    fn warn_record(&self, key: &str, why: &str) {
        let msg = format!("{key}: ignored: {why}");
        log::warn!("cluster: {msg}");
        let mut s = lock(&self.status);
        s.warnings += 1;
        if s.recent_warnings.len() == WARNINGS_KEPT {
            s.recent_warnings.remove(0);
        }
        s.recent_warnings.push(msg);
    }

    /// Sleeps up to `d`, waking early to stop. Returns whether to stop.
    async fn pause(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopping() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100).min(end - Instant::now())).await;
        }
        self.stopping()
    }

    async fn connect(&self) -> Result<Client, String> {
        let urls: Vec<String> = self.spec.endpoints.iter().map(|e| e.url.clone()).collect();
        Client::connect(&urls, Some(self.options()?))
            .await
            .map_err(|e| format!("connecting to etcd at {}: {e}", urls.join(", ")))
    }

    fn options(&self) -> Result<ConnectOptions, String> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(ca) = &self.spec.ca {
            let read = |p: &str| std::fs::read(p).map_err(|e| format!("cluster: reading {p}: {e}"));
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let Some((cert, key)) = &self.spec.identity {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }

    /// Each endpoint on its own: reachable and answering?
    async fn check_endpoints(&self) {
        let mut out = Vec::new();
        for e in &self.spec.endpoints {
            let result = async {
                let o = self.options()?;
                let mut c = Client::connect([e.url.as_str()], Some(o))
                    .await
                    .map_err(|e| e.to_string())?;
                c.status().await.map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            };
            let result = tokio::time::timeout(Duration::from_secs(3), result)
                .await
                .unwrap_or_else(|_| Err("no answer within 3 s".into()));
            out.push(EndpointStatus {
                endpoint: e.url.clone(),
                healthy: result.is_ok(),
                error: result.err(),
            });
        }
        lock(&self.status).endpoints = out;
    }

    async fn run(&mut self) {
        self.restore_cache();
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stopping() {
                return;
            }
            let ended = match self.connect().await {
                Ok(client) => self.session(client).await,
                Err(e) => Ended::Lost(e),
            };
            match ended {
                Ended::Stop => return,
                Ended::Lost(e) => {
                    self.error(e);
                    self.set_state(if self.local.is_some() {
                        "reconnecting (forwarding as last known)"
                    } else {
                        "reconnecting"
                    });
                    lock(&self.status).reconnects += 1;
                    self.check_endpoints().await;
                    if self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Ended::Compacted => self.revision = 0,
                Ended::LeaseLost => {
                    self.lease_id = 0;
                }
            }
            backoff = Duration::from_millis(100);
        }
    }

    /// One connection to etcd: (re)list if needed, lease if needed, then watch.
    async fn session(&mut self, mut client: Client) -> Ended {
        self.check_endpoints().await;
        if self.network.is_none() {
            self.set_state(&format!("waiting for {}", self.key("config")));
            loop {
                match client.get(self.key("config"), None).await {
                    Ok(r) => match r.kvs().first() {
                        Some(kv) => match Network::parse(kv.value()) {
                            Ok(n) => {
                                self.network = Some(n);
                                self.cache.network =
                                    Some(String::from_utf8_lossy(kv.value()).into_owned());
                                break;
                            }
                            Err(e) => self.error(format!("{}: {e}", self.key("config"))),
                        },
                        None => self.error(format!("{} does not exist yet", self.key("config"))),
                    },
                    Err(e) => return Ended::Lost(format!("reading {}: {e}", self.key("config"))),
                }
                if self.pause(Duration::from_secs(1)).await {
                    return Ended::Stop;
                }
            }
            lock(&self.status).last_error = None;
        }
        if self.lease_id == 0 {
            let records = match self.list(&mut client).await {
                Ok((records, _)) => records,
                Err(e) => return Ended::Lost(e),
            };
            self.set_state("leasing");
            if let Err(e) = self.acquire(&mut client, &records).await {
                return Ended::Lost(e);
            }
            // That listing predates our own write: the one below is from now on.
            self.revision = 0;
        }
        if self.revision == 0 {
            match self.list(&mut client).await {
                Ok((records, revision)) => {
                    self.resync(&records);
                    self.revision = revision;
                    lock(&self.status).resyncs += 1;
                }
                Err(e) => return Ended::Lost(e),
            }
        }
        self.watch(client).await
    }

    /// Everything below the prefix, at one revision: each key with its value and mod
    /// revision, and the revision.
    async fn list(&self, client: &mut Client) -> Result<(Vec<Record3>, i64), String> {
        let listed = client
            .get(
                format!("{}/", self.spec.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| format!("listing {}/: {e}", self.spec.prefix))?;
        let records = listed
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                )
            })
            .collect();
        Ok((records, listed.header().map_or(0, |h| h.revision())))
    }

    /// This node's PublicIP: configured, else the underlay interface's first address, else
    /// the address the host sends from towards the first etcd endpoint.
    fn public_ip(&self) -> Result<Ipv4Addr, String> {
        if let Some(ip) = self.spec.public_ip {
            return Ok(ip);
        }
        if let Some((ip, _)) = self.underlay().first() {
            return Ok(*ip);
        }
        let e = &self.spec.endpoints[0];
        let probe = UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect((e.host.as_str(), e.port)).map(|()| s))
            .and_then(|s| s.local_addr());
        match probe.map(|a| a.ip()) {
            Ok(std::net::IpAddr::V4(ip)) if !ip.is_unspecified() => Ok(ip),
            other => Err(format!(
                "cluster.public_ip is not set and cannot be found from the route to {} ({other:?})",
                e.host
            )),
        }
    }

    /// The addresses of the underlay VLAN's interface (read from the switch).
    fn underlay(&self) -> Vec<(Ipv4Addr, u8)> {
        let Some(vlan) = self.spec.underlay_vlan else {
            return Vec::new();
        };
        let Ok(list) = api::call(&self.socket, &Request::InterfaceList) else {
            return Vec::new();
        };
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["vlan"].as_u64() == Some(u64::from(vlan.get())))
            .flat_map(|i| i["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| {
                let (ip, len) = a.as_str()?.split_once('/')?;
                Some((ip.parse().ok()?, len.parse().ok()?))
            })
            .collect()
    }

    fn vtep_mac(&mut self) -> EthernetAddress {
        if let Some(m) = self.spec.vtep_mac {
            return m;
        }
        if let Some(m) = self.cache.vtep_mac.as_deref().and_then(|m| m.parse().ok()) {
            return m;
        }
        // Locally administered, unicast, random: made once and kept.
        let mut b = [0u8; 6];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut b);
        }
        b[0] = (b[0] & 0xfe) | 0x02;
        let mac = EthernetAddress(b);
        self.cache.vtep_mac = Some(mac.to_string());
        mac
    }

    /// Revokes the lease (its key goes with it) and forgets the cache.
    async fn leave_cluster(&mut self, client: &mut Client) {
        if self.lease_id != 0 {
            match client.lease_revoke(self.lease_id).await {
                Ok(_) => log::info!("cluster: left the cluster (lease revoked)"),
                Err(e) => log::warn!("cluster: revoking the lease: {e}"),
            }
        }
        if let Some(dir) = &self.state_dir {
            let _ = std::fs::remove_file(dir.join(CACHE_FILE));
        }
    }

    /// Programs what the cache says (before etcd answers): this node's own entries, its peers
    /// and the Services, as they were when it last knew.
    fn restore_cache(&mut self) {
        let Some(network) = self
            .cache
            .network
            .as_deref()
            .and_then(|n| Network::parse(n.as_bytes()).ok())
        else {
            return;
        };
        let Some(subnet) = self
            .cache
            .subnet
            .as_deref()
            .and_then(|s| parse_subnet_key(&s.replace('/', "-")))
        else {
            return;
        };
        let Ok(public_ip) = self.public_ip() else {
            return;
        };
        let vtep_mac = self.vtep_mac();
        self.network = Some(network.clone());
        self.local = Some(self.local_for(network, subnet, public_ip, vtep_mac));
        let mut reqs = self.local.as_ref().map(Local::own).unwrap_or_default();
        self.own_programmed = true;
        let peers = std::mem::take(&mut self.cache.peers);
        for (name, value) in &peers {
            if let Some(s) = parse_subnet_key(name) {
                if let Ok(l) = Lease::parse(s, value.as_bytes()) {
                    reqs.extend(self.peer_put(l));
                }
            }
        }
        self.cache.peers = peers;
        let services = std::mem::take(&mut self.cache.services);
        for (name, value) in &services {
            if let Ok(svc) = parse_service(name, value.as_bytes()) {
                reqs.extend(self.service_put(svc));
            }
        }
        self.cache.services = services;
        let n = reqs.len();
        self.send(reqs);
        log::info!(
            "cluster: restored {subnet}, {} peers and {} Services from {CACHE_FILE} ({n} changes) \
             while etcd is asked",
            self.peers.len(),
            self.services.len()
        );
        self.set_state("connecting (forwarding as last known)");
        self.refresh_status();
    }

    fn save_cache(&mut self) {
        self.cache_dirty = false;
        self.cache_saved = Instant::now();
        let Some(dir) = &self.state_dir else { return };
        let bytes = serde_json::to_vec_pretty(&self.cache).unwrap_or_default();
        if let Err(e) = crate::state::write_atomic(dir, CACHE_FILE, &bytes) {
            self.error(format!("saving {}: {e}", dir.join(CACHE_FILE).display()));
        }
    }

    /// This node as it is with `subnet` of `network`.
    fn local_for(
        &self,
        network: Network,
        subnet: Subnet,
        public_ip: Ipv4Addr,
        vtep_mac: EthernetAddress,
    ) -> Local {
        Local {
            network,
            subnet,
            public_ip,
            vtep_mac,
            pod_vlan: self.spec.pod_vlan,
            overlay_vlan: self.spec.overlay_vlan,
            underlay_vlan: self.spec.underlay_vlan,
            underlay: self.underlay(),
            masquerade: self.spec.masquerade,
        }
    }

    /// Leases a subnet (see the module documentation).
    async fn acquire(&mut self, client: &mut Client, records: &[Record3]) -> Result<(), String> {
        let Some(network) = self.network.clone() else {
            return Err("no network".into());
        };
        let public_ip = self.public_ip()?;
        let vtep_mac = self.vtep_mac();
        let subnets_prefix = self.key("subnets/");
        // The leases there now, by subnet, with their mod revisions.
        let mut taken: BTreeMap<Subnet, (Option<Lease>, i64)> = BTreeMap::new();
        for (key, value, rev) in records {
            let Some(name) = key.strip_prefix(&subnets_prefix) else {
                continue;
            };
            if let Some(s) = parse_subnet_key(name) {
                taken.insert(s, (Lease::parse(s, value).ok(), *rev));
            }
        }
        let cached = self
            .cache
            .subnet
            .as_deref()
            .and_then(|s| s.replace('/', "-").parse::<String>().ok())
            .and_then(|s| parse_subnet_key(&s))
            .filter(|s| network.leases(s));
        let ours = |s: &Subnet| {
            taken
                .get(s)
                .and_then(|(l, _)| l.as_ref())
                .is_some_and(|l| l.public_ip == public_ip)
        };
        let free = |s: &Subnet| !taken.keys().any(|t| t.overlaps(s));
        let mut choice = cached.filter(|s| free(s) || ours(s));
        if choice.is_none() {
            choice = taken.keys().find(|s| network.leases(s) && ours(s)).copied();
        }
        if choice.is_none() {
            let candidates: Vec<Subnet> = network.subnets().filter(|s| free(s)).take(100).collect();
            if candidates.is_empty() {
                return Err(format!(
                    "no free subnet in {} ({} leases)",
                    network.network,
                    taken.len()
                ));
            }
            let pick =
                (now_secs() as usize ^ std::process::id() as usize ^ u32::from(public_ip) as usize)
                    % candidates.len();
            choice = Some(candidates[pick]);
        }
        let subnet = choice.unwrap_or_else(|| unreachable!());
        let local = self.local_for(network.clone(), subnet, public_ip, vtep_mac);
        let value = local.lease().to_json();
        let key = format!("{subnets_prefix}{}", subnet.key_name());
        let grant = client
            .lease_grant(self.spec.lease_ttl as i64, None)
            .await
            .map_err(|e| format!("granting a lease: {e}"))?;
        let id = grant.id();
        let guard = match taken.get(&subnet) {
            Some((_, rev)) => Compare::mod_revision(key.clone(), CompareOp::Equal, *rev),
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new().when([guard]).and_then([TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(id)),
        )]);
        let done = client
            .txn(txn)
            .await
            .map_err(|e| format!("writing {key}: {e}"))?;
        if !done.succeeded() {
            let _ = client.lease_revoke(id).await;
            // Someone took it first: the next session lists and tries again.
            self.lease_id = 0;
            return Err(format!(
                "{key} was taken by another node first; trying again"
            ));
        }
        log::info!(
            "cluster: leased {subnet} ({key}), PublicIP {public_ip}, backend {}",
            network.backend.type_name()
        );
        self.lease_id = id;
        self.lease_expiry = Instant::now() + Duration::from_secs(self.spec.lease_ttl);
        if self.local.as_ref().is_some_and(|l| *l != local) && self.own_programmed {
            // Another subnet than before: the old own entries go first.
            let old = self
                .local
                .take()
                .map(|l| l.own_removal())
                .unwrap_or_default();
            self.send(old);
            self.own_programmed = false;
        }
        self.local = Some(local);
        self.cache.subnet = Some(subnet.to_string());
        self.save_cache();
        self.write_subnet_file();
        if !self.own_programmed {
            let own = self.local.as_ref().map(Local::own).unwrap_or_default();
            let result = self.send(own);
            self.own_programmed = true;
            if result.failed > 0 {
                self.error(format!(
                    "programming this node's own entries: {}",
                    first_error(&result)
                ));
            }
        }
        self.refresh_status();
        Ok(())
    }

    fn write_subnet_file(&self) {
        let (Some(path), Some(l)) = (&self.spec.subnet_file, &self.local) else {
            return;
        };
        let text = format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            l.network.network,
            l.gateway(),
            l.subnet.len,
            l.network.backend.pod_mtu().min(MTU_MAX),
            self.spec.masquerade
        );
        let path = std::path::Path::new(path);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, text));
        if let Err(e) = written {
            self.error(format!("writing {}: {e}", path.display()));
        }
    }

    /// Applies a full listing: every peer and Service that changed, appeared or went away.
    fn resync(&mut self, records: &[Record3]) {
        let mut peers = BTreeMap::new();
        let mut services = BTreeMap::new();
        for (key, value, _) in records {
            match self.classify(key) {
                Some(Record::Subnet(s)) => match Lease::parse(s, value) {
                    Ok(l) => {
                        peers.insert(s, l);
                    }
                    Err(e) => self.warn_record(key, &e.0),
                },
                Some(Record::Service(name)) => match parse_service(&name, value) {
                    Ok(svc) => {
                        services.insert(name, svc);
                    }
                    Err(e) => self.warn_record(key, &e.0),
                },
                Some(Record::Config) => self.config_changed(value),
                Some(Record::Bad(why)) => self.warn_record(key, &why),
                None => {}
            }
        }
        let mut reqs = Vec::new();
        let gone: Vec<Subnet> = self
            .peers
            .keys()
            .filter(|s| !peers.contains_key(s))
            .copied()
            .collect();
        for s in gone {
            reqs.extend(self.peer_gone(s));
        }
        for (_, lease) in peers {
            reqs.extend(self.peer_put(lease));
        }
        let gone: Vec<String> = self
            .services
            .keys()
            .filter(|n| !services.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            reqs.extend(self.service_gone(&name));
        }
        for (_, svc) in services {
            reqs.extend(self.service_put(svc));
        }
        self.send(reqs);
        self.refresh_status();
    }

    fn classify(&self, key: &str) -> Option<Record> {
        let rest = key.strip_prefix(&self.spec.prefix)?.strip_prefix('/')?;
        if rest == "config" {
            return Some(Record::Config);
        }
        if let Some(name) = rest.strip_prefix("subnets/") {
            return Some(match parse_subnet_key(name) {
                Some(s) => Record::Subnet(s),
                None => Record::Bad(format!("{name:?} is not a subnet key like 10.42.3.0-24")),
            });
        }
        if let Some(name) = rest.strip_prefix("services/") {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            return Some(if ok {
                Record::Service(name.to_string())
            } else {
                Record::Bad(format!(
                    "{name:?} is not a Service name ([A-Za-z0-9._-], 1 to 63)"
                ))
            });
        }
        None
    }

    fn config_changed(&mut self, value: &[u8]) {
        let key = self.key("config");
        match Network::parse(value) {
            Ok(n) if Some(&n) == self.network.as_ref() => {}
            Ok(n) => {
                let old = self.network.as_ref().map_or("none".into(), |o| {
                    format!("{} backend {}", o.network, o.backend.type_name())
                });
                self.error(format!(
                    "{key} changed to network {} backend {} (was {old}): refused while running, \
                     nothing was torn down; restart tapswitch to move to the new network",
                    n.network,
                    n.backend.type_name()
                ));
            }
            Err(e) => self.warn_record(&key, &e.0),
        }
    }

    /// The changes for a (new or changed) lease record.
    fn peer_put(&mut self, lease: Lease) -> Vec<Request> {
        let Some(local) = self.local.clone() else {
            return Vec::new();
        };
        if lease.subnet == local.subnet {
            let ours = local.lease();
            if lease.public_ip != ours.public_ip || lease.vtep_mac != ours.vtep_mac {
                self.error(format!(
                    "{}{}: this node's lease was rewritten by another node (PublicIP {}): \
                     two nodes claim one subnet or one PublicIP",
                    self.key("subnets/"),
                    lease.subnet.key_name(),
                    lease.public_ip
                ));
            }
            return Vec::new();
        }
        let mut reqs = Vec::new();
        if let Some(old) = self.peers.get_mut(&lease.subnet) {
            old.seen = Instant::now();
            if old.lease == lease {
                return reqs;
            }
        }
        if let Some(s) = self.peers.get(&lease.subnet).map(|p| p.lease.subnet) {
            reqs.extend(self.peer_gone(s));
        }
        let mut reach = local.reach(&lease);
        // Two live nodes with one PublicIP: neither is programmed.
        if let Some(other) = self
            .peers
            .values_mut()
            .find(|p| p.lease.public_ip == lease.public_ip && p.lease.subnet != lease.subnet)
        {
            let why = format!(
                "{} and {} claim one PublicIP {}",
                other.lease.subnet, lease.subnet, lease.public_ip
            );
            if let Ok(r) = other.reach {
                reqs.extend(local.peer_removal(&other.lease, r));
            }
            other.reach = Err(why.clone());
            reach = Err(why);
        }
        match reach {
            Ok(r) => reqs.extend(local.peer_entries(&lease, r)),
            Err(ref why) => {
                if !why.contains("own subnet") {
                    let key = format!("{}{}", self.key("subnets/"), lease.subnet.key_name());
                    self.warn_record(&key, why);
                }
            }
        }
        self.cache
            .peers
            .insert(lease.subnet.key_name(), lease.to_json());
        self.cache_dirty = true;
        self.peers.insert(
            lease.subnet,
            Peer {
                lease,
                reach,
                seen: Instant::now(),
            },
        );
        reqs
    }

    fn peer_gone(&mut self, subnet: Subnet) -> Vec<Request> {
        if self.cache.peers.remove(&subnet.key_name()).is_some() {
            self.cache_dirty = true;
        }
        let (Some(peer), Some(local)) = (self.peers.remove(&subnet), self.local.clone()) else {
            return Vec::new();
        };
        log::info!(
            "cluster: peer {} ({}) is gone",
            subnet,
            peer.lease.public_ip
        );
        let mut reqs = match peer.reach {
            Ok(r) => local.peer_removal(&peer.lease, r),
            Err(_) => Vec::new(),
        };
        // A peer left out for sharing this one's PublicIP may be reachable now.
        let blocked: Vec<Lease> = self
            .peers
            .values()
            .filter(|p| p.lease.public_ip == peer.lease.public_ip && p.reach.is_err())
            .map(|p| p.lease.clone())
            .collect();
        for lease in blocked {
            self.peers.remove(&lease.subnet);
            reqs.extend(self.peer_put(lease));
        }
        reqs
    }

    fn service_put(&mut self, svc: ServiceConfig) -> Vec<Request> {
        let name = svc.name.clone();
        let reqs = match self.services.get(&name) {
            Some(old) if *old == svc => return Vec::new(),
            Some(old) => {
                let mut same = old.clone();
                same.backends = svc.backends.clone();
                if same == svc {
                    vec![Request::ServiceSetBackends {
                        name: name.clone(),
                        backends: svc.backends.clone(),
                    }]
                } else {
                    vec![
                        Request::ServiceDel { name: name.clone() },
                        Request::ServiceAdd {
                            service: svc.clone(),
                        },
                    ]
                }
            }
            None => vec![Request::ServiceAdd {
                service: svc.clone(),
            }],
        };
        if let Ok(v) = serde_json::to_string(&svc) {
            self.cache.services.insert(name.clone(), v);
            self.cache_dirty = true;
        }
        self.services.insert(name, svc);
        reqs
    }

    fn service_gone(&mut self, name: &str) -> Vec<Request> {
        if self.cache.services.remove(name).is_some() {
            self.cache_dirty = true;
        }
        match self.services.remove(name) {
            Some(_) => vec![Request::ServiceDel { name: name.into() }],
            None => Vec::new(),
        }
    }

    /// Sends `reqs` to the switch as owned batches of at most [`BATCH_BYTES`].
    fn send(&self, reqs: Vec<Request>) -> BatchResult {
        let mut total = BatchResult {
            applied: 0,
            failed: 0,
            results: Vec::new(),
        };
        if reqs.is_empty() {
            return total;
        }
        let mut chunk: Vec<Request> = Vec::new();
        let mut size = 0;
        let mut chunks = Vec::new();
        for r in reqs {
            let len = serde_json::to_vec(&r).map_or(0, |v| v.len()) + 1;
            if !chunk.is_empty() && size + len > BATCH_BYTES {
                chunks.push(std::mem::take(&mut chunk));
                size = 0;
            }
            size += len;
            chunk.push(r);
        }
        chunks.push(chunk);
        for requests in chunks {
            let n = requests.len();
            let batch = Request::Batch {
                owner: Some(OWNER.into()),
                requests,
            };
            match api::call(&self.socket, &batch) {
                Ok(v) => {
                    let results: Vec<api::Response> =
                        serde_json::from_value(v["results"].clone()).unwrap_or_default();
                    for r in &results {
                        if let Some(e) = &r.error {
                            log::warn!("cluster: the switch refused a change: {e}");
                        }
                    }
                    let failed = results.iter().filter(|r| !r.ok).count();
                    total.applied += n - failed;
                    total.failed += failed;
                    total.results.extend(results);
                }
                Err(e) => {
                    total.failed += n;
                    self.error(format!("sending {n} changes to the switch: {e}"));
                }
            }
        }
        let mut s = lock(&self.status);
        s.batches += 1;
        s.changes += (total.applied + total.failed) as u64;
        s.refused += total.failed as u64;
        if let Some(e) = total.results.iter().find_map(|r| r.error.clone()) {
            s.last_error = Some(format!("the switch refused a change: {e}"));
        }
        total
    }

    /// Watches `<prefix>/` from the revision after the one applied, keeping the lease alive.
    async fn watch(&mut self, mut client: Client) -> Ended {
        self.set_state("running");
        lock(&self.status).last_error = None;
        let mut stream = match client
            .watch(
                format!("{}/", self.spec.prefix),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(self.revision + 1)
                        .with_progress_notify(),
                ),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => return Ended::Lost(format!("watching {}/: {e}", self.spec.prefix)),
        };
        let (mut keeper, mut alive) = match client.lease_keep_alive(self.lease_id).await {
            Ok(k) => k,
            Err(e) => return Ended::Lost(format!("keeping the lease alive: {e}")),
        };
        let period = Duration::from_millis((self.spec.lease_ttl * 1000 / 3).max(500));
        let mut keep_tick = tokio::time::interval(period);
        let mut check = tokio::time::interval(Duration::from_millis(200));
        let mut health = tokio::time::interval(Duration::from_secs(10));
        health.tick().await;
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => return Ended::Lost("the watch ended".into()),
                        Err(e) => return Ended::Lost(format!("watch: {e}")),
                    };
                    if resp.compact_revision() > 0 {
                        self.error(format!(
                            "revision {} was compacted (now {}): listing everything again",
                            self.revision + 1,
                            resp.compact_revision()
                        ));
                        return Ended::Compacted;
                    }
                    if resp.canceled() {
                        return Ended::Lost(format!("watch canceled: {}", resp.cancel_reason()));
                    }
                    let mut reqs = Vec::new();
                    let mut lost = false;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        let put = ev.event_type() == EventType::Put;
                        match self.classify(&key) {
                            Some(Record::Subnet(s)) => {
                                let own = self.local.as_ref().is_some_and(|l| l.subnet == s);
                                if !put && own {
                                    lost = true;
                                } else if put {
                                    match Lease::parse(s, kv.value()) {
                                        Ok(l) => reqs.extend(self.peer_put(l)),
                                        Err(e) => self.warn_record(&key, &e.0),
                                    }
                                } else {
                                    reqs.extend(self.peer_gone(s));
                                }
                            }
                            Some(Record::Service(name)) => {
                                if put {
                                    match parse_service(&name, kv.value()) {
                                        Ok(svc) => reqs.extend(self.service_put(svc)),
                                        Err(e) => self.warn_record(&key, &e.0),
                                    }
                                } else {
                                    reqs.extend(self.service_gone(&name));
                                }
                            }
                            Some(Record::Config) if put => self.config_changed(kv.value()),
                            Some(Record::Config) => self.error(format!(
                                "{key} was deleted: keeping the network in effect"
                            )),
                            Some(Record::Bad(why)) if put => self.warn_record(&key, &why),
                            _ => {}
                        }
                    }
                    self.send(reqs);
                    if let Some(h) = resp.header() {
                        self.revision = self.revision.max(h.revision());
                    }
                    self.refresh_status();
                    if lost {
                        self.error("this node's lease record is gone: leasing again".into());
                        return Ended::LeaseLost;
                    }
                }
                _ = keep_tick.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        return Ended::Lost(format!("keeping the lease alive: {e}"));
                    }
                    match tokio::time::timeout(Duration::from_secs(3), alive.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {
                            self.lease_expiry = Instant::now() + Duration::from_secs(r.ttl() as u64);
                            self.refresh_status();
                        }
                        Ok(Ok(Some(_))) => {
                            self.error("this node's etcd lease expired: leasing again".into());
                            return Ended::LeaseLost;
                        }
                        Ok(Ok(None)) => return Ended::Lost("the keep-alive stream ended".into()),
                        Ok(Err(e)) => return Ended::Lost(format!("keeping the lease alive: {e}")),
                        Err(_) => return Ended::Lost("no keep-alive answer within 3 s".into()),
                    }
                }
                _ = health.tick() => self.check_endpoints().await,
                _ = check.tick() => {
                    if self.stopping() {
                        if self.leave.load(Ordering::SeqCst) {
                            self.leave_cluster(&mut client).await;
                        }
                        return Ended::Stop;
                    }
                    // The cache is rewritten whole: at most every 2 s.
                    if self.cache_dirty && self.cache_saved.elapsed() >= Duration::from_secs(2) {
                        self.save_cache();
                    }
                }
            }
        }
    }

    fn refresh_status(&self) {
        let mut s = lock(&self.status);
        s.revision = self.revision;
        s.services = self.services.len();
        s.network = self.network.as_ref().map(|n| NetworkStatus {
            network: n.network.to_string(),
            subnet_len: n.subnet_len,
            subnet_min: n.subnet_min.to_string(),
            subnet_max: n.subnet_max.to_string(),
            backend: n.backend.type_name().into(),
            pod_mtu: n.backend.pod_mtu(),
        });
        s.lease = self.local.as_ref().map(|l| {
            let lease = l.lease();
            LeaseStatus {
                subnet: l.subnet.to_string(),
                gateway: l.gateway().to_string(),
                public_ip: l.public_ip.to_string(),
                backend_type: lease.backend_type,
                vtep_mac: lease.vtep_mac.map(|m| m.to_string()),
                lease_id: self.lease_id,
                ttl_secs: self.spec.lease_ttl,
                ttl_left_secs: self
                    .lease_expiry
                    .saturating_duration_since(Instant::now())
                    .as_secs(),
            }
        });
        s.peers = self
            .peers
            .values()
            .map(|p| PeerStatus {
                subnet: p.lease.subnet.to_string(),
                public_ip: p.lease.public_ip.to_string(),
                backend_type: p.lease.backend_type.clone(),
                backend_data: p.lease.vni.map(|vni| {
                    serde_json::json!({
                        "VNI": vni,
                        "VtepMAC": p.lease.vtep_mac.map(|m| m.to_string()),
                    })
                }),
                route: p.reach.as_ref().ok().map(Reach::describe),
                ignored: p.reach.as_ref().err().cloned(),
                last_seen_secs: p.seen.elapsed().as_secs(),
            })
            .collect();
    }
}

enum Record {
    Config,
    Subnet(Subnet),
    Service(String),
    /// A key below `subnets/` or `services/` that names nothing.
    Bad(String),
}

fn first_error(r: &BatchResult) -> String {
    r.results
        .iter()
        .find_map(|r| r.error.clone())
        .unwrap_or_default()
}
