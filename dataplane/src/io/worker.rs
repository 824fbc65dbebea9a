//! A worker thread: one mio poll loop over its ports.
//!
//! A switch runs one or more workers. Worker `i` reads and writes queue `i` of every device
//! (a device with fewer queues is read by the first workers only; the IPIP socket by the
//! first), so the kernel spreads flows over workers and a flow stays on one. The worker owns
//! its [`Bridge`] (counters, router buffers) and its receive buffer; the learned tables are
//! the switch's [`SharedTables`], and the first worker keeps their time (aging, expiry,
//! probes) and applies a snapshot's changes to them. It takes commands from the control thread
//! over a bounded channel, woken by a mio [`Waker`], and handles them only between batches, so
//! every frame is processed against one whole [`Snapshot`]. Per frame it does no allocation:
//! read, `Bridge::process` (one short lock of the MAC table; the router's tables when routed),
//! `writev` to each egress device.
//!
//! Readiness is edge-triggered, so a port stays on the `ready` list until a read says
//! `WouldBlock`; each turn reads at most [`BATCH`] frames per port so one busy port cannot
//! starve the others or the control channel.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::batch::{self, RxBatch, Sent, TxBatch};
use super::ipip::IpipSocket;
use super::port::{PortDevice, HEADROOM, MAX_FRAME};
use super::tunnel::TunnelSocket;
use crate::pipeline::bridge::Egress;
use crate::pipeline::bridge::EgressFrame;
use crate::pipeline::gro::{Coalescer, Push};
use crate::pipeline::offload::{complete_checksum, segment, Offload};
use crate::pipeline::{
    Bridge, Decision, DropReason, ForwardingState, Generated, SharedTables, WorkerCounters,
};
use crate::pipeline::{PortCounters, TunnelEndpoint, VlanMember};
use crate::tables::{ConntrackStats, CtEntry, CtFilter, FdbKey, NeighRecord, PortId, Timestamp};
use crate::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use crate::wire::vlan::TAG_LEN;
use crate::wire::{EthernetAddress, VlanId};

/// Frames read from one port before the worker looks at its other ports and its commands.
pub const BATCH: usize = 32;
/// How often learned entries are aged.
const AGING_TICK: Duration = Duration::from_secs(1);
const WAKER: Token = Token(usize::MAX);
const IPIP: Token = Token(usize::MAX - 1);
/// Tokens of tunnel sockets start here (port tokens are port ids, below it).
const TUNNEL_TOKEN_BASE: usize = PortId::MAX_PORTS;
/// Bound of the command channel to a worker.
const COMMAND_QUEUE: usize = 64;

/// What a worker forwards with: the compiled state and the devices of its ports, both indexed
/// by [`PortId`]. Published whole by control.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub forwarding: ForwardingState,
    pub devices: Vec<Option<Arc<PortDevice>>>,
    /// One socket pair per VXLAN endpoint in use.
    pub tunnels: Vec<Arc<TunnelSocket>>,
    /// The host's IPIP sockets, while some route uses IPIP.
    pub ipip: Option<Arc<IpipSocket>>,
    /// Tracked connections to forget when this snapshot is adopted (those of removed
    /// backends, Services and port forwards), so none is translated to what is gone.
    pub purge: Vec<CtFilter>,
}

impl Snapshot {
    fn device(&self, port: PortId) -> Option<&Arc<PortDevice>> {
        self.devices.get(port.index()).and_then(Option::as_ref)
    }

    fn tunnel(&self, endpoint: TunnelEndpoint) -> Option<&TunnelSocket> {
        self.tunnels
            .iter()
            .find(|t| t.endpoint() == endpoint)
            .map(|t| &**t)
    }
}

/// A learned MAC table entry as a worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbRecord {
    pub vlan: VlanId,
    pub mac: EthernetAddress,
    pub port: PortId,
    /// Time since the station was last seen.
    pub age_ms: u64,
    /// For a MAC behind a VXLAN port: the remote VTEP it was learned (or configured) behind.
    pub remote: Option<std::net::Ipv4Addr>,
}

/// A worker's connection tracking table as it reports it.
#[derive(Debug, Clone, Default)]
pub struct ConntrackDump {
    pub entries: Vec<CtEntry>,
    /// The worker's clock when the dump was taken (entries' times are on it).
    pub now: Timestamp,
    pub stats: ConntrackStats,
    pub max: usize,
    /// Entries tracked (also when `entries` was not asked for).
    pub len: usize,
    /// For [`WorkerCommand::ConntrackSummary`]: the connections of each backend asked about.
    pub backend_connections: Vec<u32>,
}

/// Messages from control to a worker.
pub enum WorkerCommand {
    /// Forward with this snapshot from the next batch on.
    Adopt(Arc<Snapshot>),
    /// Report the learned MAC table.
    DumpFdb(Sender<Vec<FdbRecord>>),
    /// Report the router's neighbour table.
    DumpNeighbours(Sender<Vec<NeighRecord>>),
    /// Report the connection tracking table.
    DumpConntrack(Sender<ConntrackDump>),
    /// Report the connection tracking table's size and counters, and the connections of each
    /// (Service id, backend) asked about, without copying the entries.
    ConntrackSummary {
        backends: Vec<(u32, std::net::SocketAddrV4)>,
        reply: Sender<ConntrackDump>,
    },
    /// Forget the tracked connections the filter picks; reply with how many.
    FlushConntrack {
        filter: CtFilter,
        reply: Sender<usize>,
    },
    /// Forget learned entries for `mac` (in `vlan`, or every VLAN); reply with how many.
    FlushFdb {
        vlan: Option<VlanId>,
        mac: Option<EthernetAddress>,
        reply: Sender<usize>,
    },
    /// Leave the poll loop.
    Stop,
}

/// Control's side of a worker.
pub struct WorkerHandle {
    commands: Sender<WorkerCommand>,
    waker: Arc<Waker>,
    counters: Arc<WorkerCounters>,
    adopted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts worker number `index` forwarding with `snapshot`: it reads queue `index` of
    /// each device (and of each tunnel endpoint), and learns into and looks up in `shared`,
    /// with times counted from `epoch` (the same for every worker of a switch, as the tables
    /// they share keep times).
    pub fn spawn(
        index: usize,
        snapshot: Arc<Snapshot>,
        shared: Arc<SharedTables>,
        epoch: Instant,
    ) -> io::Result<WorkerHandle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let counters = Arc::new(WorkerCounters::default());
        let adopted = Arc::new(AtomicU64::new(0));
        let mut worker = Worker {
            index,
            poll,
            commands: rx,
            bridge: Bridge::with_shared(Arc::clone(&counters), shared),
            snapshot: Arc::new(Snapshot::default()),
            registered: Vec::new(),
            registered_tunnels: Vec::new(),
            ready_tunnels: Vec::new(),
            registered_ipip: None,
            ipip_ready: false,
            ready: Vec::new(),
            is_ready: vec![false; PortId::MAX_PORTS],
            scratch: Vec::with_capacity(MAX_FRAME),
            gro: Coalescer::new(),
            rx: RxBatch::default(),
            tx: Tx::default(),
            adopted: Arc::clone(&adopted),
            epoch,
        };
        worker.adopt(snapshot)?;
        let thread = std::thread::Builder::new()
            .name(format!("tapswitch-worker-{index}"))
            .spawn(move || worker.run())?;
        Ok(WorkerHandle {
            commands: tx,
            waker,
            counters,
            adopted,
            thread: Some(thread),
        })
    }

    /// Sends a command and wakes the worker. Blocks while the command queue is full.
    pub fn send(&self, cmd: WorkerCommand) -> io::Result<()> {
        let mut cmd = cmd;
        loop {
            match self.commands.try_send(cmd) {
                Ok(()) => return self.waker.wake(),
                Err(TrySendError::Full(c)) => {
                    self.waker.wake()?;
                    cmd = c;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(io::Error::other("worker thread has stopped"))
                }
            }
        }
    }

    /// Publishes `snapshot` and waits (up to `timeout`) until the worker forwards with it, so
    /// that devices dropped from it are no longer in use when this returns.
    pub fn publish(&self, snapshot: Arc<Snapshot>, timeout: Duration) -> io::Result<()> {
        let generation = snapshot.forwarding.generation;
        self.send(WorkerCommand::Adopt(snapshot))?;
        let deadline = Instant::now() + timeout;
        while self.adopted.load(Ordering::Acquire) < generation {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "worker did not adopt the new forwarding state in time",
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// Asks the worker for its learned MAC table.
    pub fn dump_fdb(&self) -> io::Result<Vec<FdbRecord>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(WorkerCommand::DumpFdb(tx))?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(io::Error::other)
    }

    /// Asks the worker for its connection tracking table.
    pub fn dump_conntrack(&self) -> io::Result<ConntrackDump> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(WorkerCommand::DumpConntrack(tx))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(io::Error::other)
    }

    /// Asks the worker for its table's size and counters and the connections of `backends`,
    /// without the entries.
    pub fn conntrack_summary(
        &self,
        backends: Vec<(u32, std::net::SocketAddrV4)>,
    ) -> io::Result<ConntrackDump> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(WorkerCommand::ConntrackSummary {
            backends,
            reply: tx,
        })?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(io::Error::other)
    }

    /// Asks the worker to forget the connections `filter` picks; returns how many.
    pub fn flush_conntrack(&self, filter: CtFilter) -> io::Result<usize> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(WorkerCommand::FlushConntrack { filter, reply: tx })?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(io::Error::other)
    }

    /// Asks the worker for its neighbour table.
    pub fn dump_neighbours(&self) -> io::Result<Vec<NeighRecord>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(WorkerCommand::DumpNeighbours(tx))?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(io::Error::other)
    }

    /// Asks the worker to forget learned entries; returns how many it removed.
    pub fn flush_fdb(
        &self,
        vlan: Option<VlanId>,
        mac: Option<EthernetAddress>,
    ) -> io::Result<usize> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(WorkerCommand::FlushFdb {
            vlan,
            mac,
            reply: tx,
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(io::Error::other)
    }

    /// Stops the worker and waits for its thread.
    pub fn stop(&mut self) {
        let _ = self.send(WorkerCommand::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    /// Which worker of the switch this is: the queue it reads and writes on every device.
    index: usize,
    poll: Poll,
    commands: Receiver<WorkerCommand>,
    bridge: Bridge,
    snapshot: Arc<Snapshot>,
    /// The device registered with the poll for each port id.
    registered: Vec<Option<Arc<PortDevice>>>,
    /// The tunnel sockets registered with the poll; a socket's token is its index here.
    registered_tunnels: Vec<Arc<TunnelSocket>>,
    /// Tunnel sockets that may have packets to read (indices into `registered_tunnels`).
    ready_tunnels: Vec<usize>,
    /// The IPIP socket registered with the poll.
    registered_ipip: Option<Arc<IpipSocket>>,
    /// The IPIP socket may have packets to read.
    ipip_ready: bool,
    /// Ports that may have frames to read.
    ready: Vec<PortId>,
    is_ready: Vec<bool>,
    /// Reused for segments of super-frames.
    scratch: Vec<u8>,
    /// Joins TCP segments decapsulated from one batch of tunnel packets.
    gro: Coalescer,
    /// Receive buffers of the tunnel sockets (one `recvmmsg` fills them).
    rx: RxBatch,
    /// Outer packets of the tunnels, sent in batches.
    tx: Tx,
    adopted: Arc<AtomicU64>,
    epoch: Instant,
}

impl Worker {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; HEADROOM + MAX_FRAME];
        let mut next_aging = Instant::now() + AGING_TICK;
        loop {
            let timeout =
                if self.ready.is_empty() && self.ready_tunnels.is_empty() && !self.ipip_ready {
                    next_aging.saturating_duration_since(Instant::now())
                } else {
                    Duration::ZERO
                };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker poll failed: {e}");
                    return;
                }
            }
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => woken = true,
                    IPIP => self.ipip_ready = true,
                    Token(i) if i >= TUNNEL_TOKEN_BASE => {
                        if !self.ready_tunnels.contains(&(i - TUNNEL_TOKEN_BASE)) {
                            self.ready_tunnels.push(i - TUNNEL_TOKEN_BASE);
                        }
                    }
                    Token(i) => self.mark_ready(PortId(i as u16)),
                }
            }
            if woken && !self.handle_commands() {
                return;
            }
            self.service_ready(&mut buf);
            self.service_tunnels();
            if self.ipip_ready {
                self.service_ipip();
            }
            if Instant::now() >= next_aging {
                // The first worker keeps the shared tables' time: aging, expiry, neighbour
                // probes.
                if self.index == 0 {
                    let now = self.now();
                    let snapshot = Arc::clone(&self.snapshot);
                    self.bridge.age(&snapshot.forwarding, now);
                    self.bridge.tick(&snapshot.forwarding, now);
                    let mut out = self.tx.out(&snapshot, self.index);
                    send_generated(&mut self.bridge, &mut out, now);
                    out.flush(self.bridge.counters());
                }
                next_aging = Instant::now() + AGING_TICK;
            }
        }
    }

    fn mark_ready(&mut self, port: PortId) {
        if let Some(flag) = self.is_ready.get_mut(port.index()) {
            if !*flag {
                *flag = true;
                self.ready.push(port);
            }
        }
    }

    /// Reads up to [`BATCH`] frames from each ready port; keeps on the list the ports that
    /// may have more.
    fn service_ready(&mut self, buf: &mut [u8]) {
        let now = self.now();
        let mut i = 0;
        while i < self.ready.len() {
            let port = self.ready[i];
            let drained = self.service_port(port, buf, now);
            if drained {
                self.is_ready[port.index()] = false;
                self.ready.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Reads up to a batch of packets (one `recvmmsg`) from each ready tunnel socket,
    /// decapsulates and switches them.
    fn service_tunnels(&mut self) {
        let now = self.now();
        let snapshot = Arc::clone(&self.snapshot);
        let Worker {
            index,
            registered_tunnels,
            ready_tunnels,
            bridge,
            gro,
            scratch,
            rx,
            tx,
            ..
        } = self;
        let mut out = tx.out(&snapshot, *index);
        let mut i = 0;
        while i < ready_tunnels.len() {
            let Some(socket) = registered_tunnels.get(ready_tunnels[i]).cloned() else {
                ready_tunnels.swap_remove(i);
                continue;
            };
            let n = match socket.recv(*index, rx) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("tunnel {:?}: read failed: {e}", socket.endpoint());
                    0
                }
            };
            for k in 0..n {
                let (message, src, cut, segment) = rx.get(k);
                if cut {
                    let c = &bridge.counters().tunnel;
                    c.rx_packets.add(1);
                    c.drop(DropReason::Oversized);
                    continue;
                }
                // A message is one datagram, or a run of them the kernel joined (UDP GRO).
                let size = segment.unwrap_or(message.len()).max(1);
                for payload in message.chunks_mut(size) {
                    let Ok((port, inner)) =
                        bridge.decap(&snapshot.forwarding, socket.endpoint(), src, payload, now)
                    else {
                        continue;
                    };
                    // Consecutive segments of one TCP flow are joined (GRO); anything else
                    // goes on alone, after what was joined before it.
                    if gro.push(port.0, inner) == Push::Alone {
                        flush_gro(gro, bridge, &mut out, scratch, now);
                        if gro.push(port.0, inner) == Push::Alone {
                            forward(bridge, &mut out, port, inner, now);
                        }
                    }
                }
            }
            flush_gro(gro, bridge, &mut out, scratch, now);
            // Fewer than a whole batch: the socket is empty for now.
            if n < batch::BATCH {
                ready_tunnels.swap_remove(i);
            } else {
                i += 1;
            }
        }
        out.flush(bridge.counters());
    }

    /// Reads up to a batch of packets (one `recvmmsg`) from the IPIP socket and routes their
    /// inner packets.
    fn service_ipip(&mut self) {
        let now = self.now();
        let snapshot = Arc::clone(&self.snapshot);
        let Some(socket) = self.registered_ipip.clone() else {
            self.ipip_ready = false;
            return;
        };
        let Worker {
            index,
            bridge,
            rx,
            tx,
            ipip_ready,
            ..
        } = self;
        let mut out = tx.out(&snapshot, *index);
        let n = match socket.recv(rx) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("ipip: read failed: {e}");
                0
            }
        };
        for k in 0..n {
            let (packet, src, cut, _) = rx.get(k);
            if cut {
                let c = &bridge.counters().ipip;
                c.rx_packets.add(1);
                c.drop(DropReason::Oversized);
                continue;
            }
            let (start, decision) = bridge.ipip_in(&snapshot.forwarding, src, packet, now);
            send_decision(bridge, &mut out, decision, &packet[start..], now);
        }
        if n < batch::BATCH {
            *ipip_ready = false;
        }
        out.flush(bridge.counters());
    }

    /// Returns true when the port has nothing more to read (or is gone).
    fn service_port(&mut self, port: PortId, buf: &mut [u8], now: Timestamp) -> bool {
        let snapshot = Arc::clone(&self.snapshot);
        let Some(device) = snapshot.device(port) else {
            return true;
        };
        let Worker {
            index,
            bridge,
            scratch,
            tx,
            ..
        } = self;
        let mut out = tx.out(&snapshot, *index);
        let mut drained = false;
        for _ in 0..BATCH {
            let rx = match device.recv(*index, buf) {
                Ok(Some(rx)) => rx,
                Ok(None) => {
                    drained = true;
                    break;
                }
                Err(e) => {
                    log::warn!("port {}: read failed: {e}", device.name());
                    drained = true;
                    break;
                }
            };
            let frame = &mut buf[rx.start..rx.start + rx.len];
            let offload = rx.offload;
            let bad = if rx.truncated {
                Some(DropReason::Oversized)
            } else if offload.gso_unsupported {
                Some(DropReason::BadOffload)
            } else if offload.is_pending()
                && forward_offloaded(bridge, &mut out, port, frame, &offload, scratch, now)
            {
                None
            } else if offload.gso_size.is_some() {
                segment(frame, &offload, scratch, |seg| {
                    forward(bridge, &mut out, port, seg, now)
                })
                .err()
            } else if let Some((start, offset)) = offload.csum {
                complete_checksum(frame, start, offset).err().or_else(|| {
                    forward(bridge, &mut out, port, frame, now);
                    None
                })
            } else {
                forward(bridge, &mut out, port, frame, now);
                None
            };
            if let Some(reason) = bad {
                let c = bridge.counters().port(port);
                c.rx_packets.add(1);
                c.rx_bytes.add(rx.len as u64);
                c.drop(reason);
            }
        }
        out.flush(bridge.counters());
        drained
    }

    /// Handles every queued command; returns false on `Stop`.
    fn handle_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                WorkerCommand::Adopt(snapshot) => {
                    if let Err(e) = self.adopt(snapshot) {
                        log::error!("worker could not register a port: {e}");
                    }
                }
                WorkerCommand::DumpFdb(reply) => {
                    let now = self.now();
                    let aging = self.snapshot.forwarding.mac_aging_ms;
                    let mut records: Vec<FdbRecord> = self
                        .bridge
                        .mac_table()
                        .iter()
                        .filter(|(_, e)| now.millis_since(e.last_seen) < aging)
                        .map(|(k, e)| FdbRecord {
                            vlan: k.vlan(),
                            mac: k.mac(),
                            port: e.port,
                            age_ms: now.millis_since(e.last_seen),
                            remote: None,
                        })
                        .collect();
                    // One table locked at a time: the remote VTEPs after the MACs.
                    let forwarding = &self.snapshot.forwarding;
                    let remotes = self.bridge.remote_table();
                    for r in &mut records {
                        if forwarding.vxlan_port(r.port).is_some() {
                            let k = FdbKey::new(r.vlan, r.mac);
                            r.remote = forwarding
                                .static_remotes
                                .get(&k)
                                .copied()
                                .or_else(|| remotes.lookup(k, now, aging));
                        }
                    }
                    drop(remotes);
                    let _ = reply.send(records);
                }
                WorkerCommand::DumpNeighbours(reply) => {
                    let now = self.now();
                    let records = self.bridge.shared().neighbours().records(now).collect();
                    let _ = reply.send(records);
                }
                WorkerCommand::FlushFdb { vlan, mac, reply } => {
                    let hit = |k: FdbKey| {
                        vlan.is_none_or(|v| v == k.vlan()) && mac.is_none_or(|m| m == k.mac())
                    };
                    let n = self.bridge.shared().macs().retain(|k, _| !hit(k));
                    // Where the MAC was learned behind a VTEP, forget that too.
                    self.bridge.shared().remotes().retain(|k, _| !hit(k));
                    let _ = reply.send(n);
                }
                WorkerCommand::DumpConntrack(reply) => {
                    let now = self.now();
                    let ct = self.bridge.conntrack();
                    let _ = reply.send(ConntrackDump {
                        entries: ct.iter().filter(|e| !e.is_expired(now)).cloned().collect(),
                        now,
                        stats: ct.stats,
                        max: ct.max_entries(),
                        len: ct.len(),
                        backend_connections: Vec::new(),
                    });
                }
                WorkerCommand::ConntrackSummary { backends, reply } => {
                    let ct = self.bridge.conntrack();
                    let _ = reply.send(ConntrackDump {
                        entries: Vec::new(),
                        now: self.now(),
                        stats: ct.stats,
                        max: ct.max_entries(),
                        len: ct.len(),
                        backend_connections: backends
                            .iter()
                            .map(|&(id, b)| ct.backend_connections(id, b))
                            .collect(),
                    });
                }
                WorkerCommand::FlushConntrack { filter, reply } => {
                    let n = self.bridge.conntrack().remove_where(|e| filter.matches(e));
                    let _ = reply.send(n);
                }
                WorkerCommand::Stop => return false,
            }
        }
        true
    }

    /// Switches to `snapshot`: registers new devices, deregisters removed ones, and brings
    /// the learned table in line.
    fn adopt(&mut self, snapshot: Arc<Snapshot>) -> io::Result<()> {
        let n = snapshot.devices.len().max(self.registered.len());
        self.registered.resize(n, None);
        let mut result = Ok(());
        for i in 0..n {
            let new = snapshot.devices.get(i).and_then(Option::as_ref);
            let old = self.registered[i].as_ref();
            let same = match (old, new) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            if let Some(fd) = self.registered[i]
                .take()
                .and_then(|old| old.queue_fd(self.index))
            {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            if let Some(new) = new {
                // A device with fewer queues than workers is read by the first ones only.
                let Some(fd) = new.queue_fd(self.index) else {
                    continue;
                };
                match self.poll.registry().register(
                    &mut SourceFd(&fd),
                    Token(i),
                    Interest::READABLE,
                ) {
                    Ok(()) => {
                        self.registered[i] = Some(Arc::clone(new));
                        // Frames may have queued before registration.
                        self.mark_ready(PortId(i as u16));
                    }
                    Err(e) => result = Err(e),
                }
            }
        }
        // Tunnel sockets: keep those still published, drop the others, add new ones; a
        // socket's token is its index, so all are registered afresh.
        for old in std::mem::take(&mut self.registered_tunnels) {
            if let Some(fd) = old.rx_fd(self.index) {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            if snapshot.tunnels.iter().any(|t| Arc::ptr_eq(t, &old)) {
                self.registered_tunnels.push(old);
            }
        }
        for t in &snapshot.tunnels {
            if !self.registered_tunnels.iter().any(|r| Arc::ptr_eq(r, t)) {
                self.registered_tunnels.push(Arc::clone(t));
            }
        }
        for (i, t) in self.registered_tunnels.iter().enumerate() {
            let Some(fd) = t.rx_fd(self.index) else {
                continue;
            };
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&fd),
                Token(TUNNEL_TOKEN_BASE + i),
                Interest::READABLE,
            ) {
                result = Err(e);
            }
        }
        // Packets may have queued before registration.
        self.ready_tunnels = (0..self.registered_tunnels.len()).collect();
        let same_ipip = match (&self.registered_ipip, &snapshot.ipip) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same_ipip {
            if let Some(old) = self.registered_ipip.take() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&old.rx_fd()));
            }
            // Every raw IPIP socket gets a copy of every packet: one worker reads.
            if let Some(new) = snapshot.ipip.as_ref().filter(|_| self.index == 0) {
                match self.poll.registry().register(
                    &mut SourceFd(&new.rx_fd()),
                    IPIP,
                    Interest::READABLE,
                ) {
                    Ok(()) => {
                        self.registered_ipip = Some(Arc::clone(new));
                        self.ipip_ready = true;
                    }
                    Err(e) => result = Err(e),
                }
            }
        }
        // The shared tables follow the new state once, by the first worker (control publishes
        // to it first and waits).
        if self.index == 0 {
            self.bridge.adopt(&snapshot.forwarding);
            for filter in &snapshot.purge {
                self.bridge.conntrack().remove_where(|e| filter.matches(e));
            }
        }
        self.adopted
            .store(snapshot.forwarding.generation, Ordering::Release);
        self.snapshot = snapshot;
        result
    }
}

/// Sends on what the receive coalescer joined: a super-frame with its offloads left to the
/// egress (or finished here where the egress cannot take them), or a lone segment.
fn flush_gro(
    gro: &mut Coalescer,
    bridge: &mut Bridge,
    out: &mut Out<'_>,
    scratch: &mut Vec<u8>,
    now: Timestamp,
) {
    gro.take(|tag, frame, offload| {
        let port = PortId(tag);
        match offload {
            None => forward(bridge, out, port, frame, now),
            Some(o) => {
                if !forward_offloaded(bridge, out, port, frame, &o, scratch, now) {
                    let _ = segment(frame, &o, scratch, |seg| {
                        forward(bridge, out, port, seg, now)
                    });
                }
            }
        }
    });
}

/// A worker's batch of outer IPIP packets, reused from round to round.
#[derive(Default)]
struct Tx {
    ipip: TxBatch,
}

impl Tx {
    fn out<'a>(&'a mut self, snapshot: &'a Snapshot, queue: usize) -> Out<'a> {
        Out {
            snapshot,
            queue,
            ipip: &mut self.ipip,
        }
    }
}

/// Runs one finished frame through the pipeline and sends what it decided, then whatever the
/// router generated on the way.
fn forward(bridge: &mut Bridge, out: &mut Out<'_>, port: PortId, frame: &mut [u8], now: Timestamp) {
    let snapshot = out.snapshot;
    let decision = bridge.process(&snapshot.forwarding, port, frame, now);
    send_decision(bridge, out, decision, frame, now);
}

/// Sends `frame` as `decision` says, then the router's generated frames.
fn send_decision(
    bridge: &mut Bridge,
    out: &mut Out<'_>,
    decision: Decision<'_>,
    frame: &[u8],
    now: Timestamp,
) {
    match decision {
        Decision::Forward(egress) => send_egress(bridge, out, &egress, frame, now),
        Decision::Reply(egress, built) => send_egress(bridge, out, &egress, built.as_bytes(), now),
        Decision::Tunnel(t) => {
            let inner = &frame[t.start..t.start + t.len];
            send_ipip(bridge.counters(), out, &t.outer, inner, t.remote);
        }
        Decision::Local | Decision::Drop(_) => {}
    }
    send_generated(bridge, out, now);
}

/// Sends every frame the router has generated (replies, ICMP errors, probes, packets released
/// by a resolved neighbour).
fn send_generated(bridge: &mut Bridge, out: &mut Out<'_>, now: Timestamp) {
    let snapshot = out.snapshot;
    while let Some(generated) = bridge.take_generated() {
        match &generated {
            Generated::Frame { vlan, bytes } => {
                let egress = bridge.router_egress(&snapshot.forwarding, *vlan, bytes, now);
                send_egress(bridge, out, &egress, bytes, now);
            }
            Generated::Ipip {
                remote,
                outer,
                bytes,
                start,
            } => send_ipip(bridge.counters(), out, outer, &bytes[*start..], *remote),
        }
        bridge.recycle(generated);
    }
}

/// Queues an IPIP packet for the host's IPIP socket.
fn send_ipip(
    counters: &WorkerCounters,
    out: &mut Out<'_>,
    outer: &[u8],
    inner: &[u8],
    remote: std::net::Ipv4Addr,
) {
    let Some(socket) = &out.snapshot.ipip else {
        counters.ipip.tx_errors.add(1);
        return;
    };
    let sent = socket.send(out.ipip, outer, inner, remote);
    count_sent(&counters.ipip, sent);
}

/// Adds what a batch send did to a tunnel's counters.
fn count_sent(c: &PortCounters, sent: Sent) {
    c.tx_packets.add(sent.packets);
    c.tx_bytes.add(sent.bytes);
    c.tx_oversized.add(sent.oversized);
    c.tx_errors.add(sent.errors);
}

/// Where a worker's frames go: the devices of `snapshot`, through this worker's queue of
/// each; the tunnels' outer packets into batches (the VXLAN endpoints keep one per worker),
/// sent with `sendmmsg` when full and at the end of each round ([`flush`](Out::flush)).
struct Out<'a> {
    snapshot: &'a Snapshot,
    queue: usize,
    ipip: &'a mut TxBatch,
}

impl Out<'_> {
    /// Sends what the tunnel batches hold.
    fn flush(&mut self, counters: &WorkerCounters) {
        for t in &self.snapshot.tunnels {
            count_sent(&counters.tunnel, t.flush(self.queue));
        }
        if !self.ipip.is_empty() {
            match &self.snapshot.ipip {
                Some(s) => count_sent(&counters.ipip, s.flush(self.ipip)),
                None => self.ipip.clear(),
            }
        }
    }
}

/// Writes `frame` to each egress port of `egress`. A frame larger than an egress port's MTU
/// is not sent there (counted as `tx_oversized`), as the Linux bridge does.
fn send_egress(
    bridge: &mut Bridge,
    out: &mut Out<'_>,
    egress: &Egress<'_>,
    frame: &[u8],
    now: Timestamp,
) {
    for member in egress.ports() {
        send_member(bridge, out, egress, member, frame, None, now);
    }
}

/// Sends `frame` out of one member of its egress set: a finished frame, or (`pending`) one
/// with its checksum or segmentation left to the egress device, with the virtio-net header
/// moved for the VLAN tag the egress adds or removes.
#[allow(clippy::too_many_arguments)]
fn send_member(
    bridge: &mut Bridge,
    out: &mut Out<'_>,
    egress: &Egress<'_>,
    member: VlanMember,
    frame: &[u8],
    pending: Option<&Offload>,
    now: Timestamp,
) {
    let snapshot = out.snapshot;
    let out_frame = egress.frame_for(member, frame);
    let c = bridge.counters().port(member.port);
    let mtu = snapshot
        .forwarding
        .port(member.port)
        .map_or(u16::MAX, |p| p.mtu);
    let tag = if member.tagged { TAG_LEN } else { 0 };
    let max_len = mtu as usize + ETHERNET_HEADER_LEN + tag;
    // Where the EtherType moves to: a tag inserted or removed shifts the L3 header.
    let delta = (ETHERNET_HEADER_LEN - 2 + tag) as isize - egress.inner_offset as isize;
    let wire_len = match pending {
        Some(o) => (o.wire_len(frame) as isize + delta) as usize,
        None => out_frame.len(),
    };
    if wire_len > max_len {
        c.tx_oversized.add(1);
        return;
    }
    if pending.is_none() && snapshot.forwarding.vxlan_port(member.port).is_some() {
        encap(bridge, out, member.port, frame, &out_frame, now);
        return;
    }
    let Some(device) = snapshot.device(member.port) else {
        return;
    };
    let sent = match pending {
        Some(o) => device.send_with(out.queue, &out_frame, &o.header_moved(delta)),
        None => device.send(out.queue, &out_frame),
    };
    match sent {
        Ok(()) => {
            c.tx_packets.add(1);
            c.tx_bytes.add(out_frame.len() as u64);
        }
        Err(_) => c.tx_errors.add(1),
    }
}

/// Whether a frame with `offload` left to do may go out of `port` as it is.
fn takes_offloads(snapshot: &Snapshot, port: PortId, offload: &Offload) -> bool {
    snapshot.forwarding.vxlan_port(port).is_none()
        && snapshot
            .device(port)
            .is_some_and(|d| d.takes_offloads() && (!offload.gso_udp || d.takes_udp_segmentation()))
}

/// Switches a frame whose checksum or TCP segmentation is still to do (`offload`) without
/// doing it, where that is possible: it is switched whole, members whose device takes
/// offloads get it as it is (one write for up to 64 KiB), the others (VXLAN, ports with
/// offloads off) get the finished frames, cut here in software. Returns false, having done
/// nothing, when the frame is for the router: then the caller finishes the offloads first.
#[allow(clippy::too_many_arguments)]
fn forward_offloaded(
    bridge: &mut Bridge,
    out: &mut Out<'_>,
    port: PortId,
    frame: &mut [u8],
    offload: &Offload,
    scratch: &mut Vec<u8>,
    now: Timestamp,
) -> bool {
    let snapshot = out.snapshot;
    let wire_len = offload.wire_len(frame);
    let Some(decision) =
        bridge.process_offloaded(&snapshot.forwarding, port, frame, offload, wire_len, now)
    else {
        return false;
    };
    let Decision::Forward(egress) = decision else {
        // The router cut what it could not send whole into generated frames.
        send_decision(bridge, out, decision, frame, now);
        return true;
    };
    let mut finish = false;
    for member in egress.ports() {
        if takes_offloads(snapshot, member.port, offload) {
            send_member(bridge, out, &egress, member, frame, Some(offload), now);
        } else {
            finish = true;
        }
    }
    if !finish {
        send_generated(bridge, out, now);
        return true;
    }
    let mut emit = |done: &mut [u8]| {
        for member in egress.ports() {
            if !takes_offloads(snapshot, member.port, offload) {
                send_member(bridge, out, &egress, member, done, None, now);
            }
        }
    };
    let result = match (offload.gso_size, offload.csum) {
        (Some(_), _) => segment(frame, offload, scratch, emit),
        (None, Some((start, offset))) => {
            scratch.clear();
            scratch.extend_from_slice(frame);
            complete_checksum(scratch, start, offset).map(|()| emit(scratch))
        }
        (None, None) => {
            emit(frame);
            Ok(())
        }
    };
    if let Err(reason) = result {
        bridge.counters().port(port).drop(reason);
    }
    send_generated(bridge, out, now);
    true
}

/// Sends a frame out of a VXLAN port: to the remote its destination is known behind, or to
/// every remote of the flood list (head-end replication). An outer packet too large for the
/// underlay is not fragmented: the kernel refuses it and it counts as `tx_oversized` on the
/// tunnel.
fn encap(
    bridge: &mut Bridge,
    out: &mut Out<'_>,
    port: PortId,
    frame: &[u8],
    out_frame: &EgressFrame<'_>,
    now: Timestamp,
) {
    let snapshot = out.snapshot;
    let forwarding = &snapshot.forwarding;
    let Some(socket) = forwarding
        .vxlan_port(port)
        .and_then(|vx| snapshot.tunnel(vx.endpoint))
    else {
        return;
    };
    let len = out_frame.len();
    let queue = out.queue;
    // The port counts frames handed to the tunnel; the tunnel counts outer packets sent.
    bridge.encapsulate(
        forwarding,
        port,
        frame,
        len,
        now,
        |remote, outer, counters| {
            let c = counters.port(port);
            c.tx_packets.add(1);
            c.tx_bytes.add(len as u64);
            count_sent(
                &counters.tunnel,
                socket.send(queue, outer, out_frame, remote),
            );
        },
    );
}
