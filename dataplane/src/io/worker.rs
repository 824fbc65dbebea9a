//! A worker thread: one mio poll loop over its ports.
//!
//! A switch runs one or more workers. Worker `i` reads and writes queue `i` of every device
//! (a device with fewer queues is read by the first workers only; the IPIP socket by the
//! first), so the kernel spreads flows over workers and a flow stays on one. The worker owns
//! its [`Pipeline`] (counters, router buffers) and its receive buffer; the learned tables are
//! the switch's [`SharedTables`], and the first worker keeps their time (aging, expiry,
//! probes) and applies a snapshot's changes to them. It takes commands from the control thread
//! over a bounded channel, woken by a mio [`Waker`], and handles them only between batches, so
//! every frame is processed against one whole [`Snapshot`]. Per frame it does no allocation:
//! read, [`Pipeline::receive`] (one short lock of the MAC table; the router's tables when
//! routed), and its output writes each transmit: `writev` to a device, a VXLAN or IPIP batch
//! for `sendmmsg` at the end of the round.
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
use super::busy_poll::{BusyPoll, Spinner};
use super::ipip::IpipSocket;
use super::port::{PortDevice, HEADROOM, MAX_FRAME};
use super::tunnel::TunnelSocket;
use super::vhost_user::Held;
use crate::pipeline::offload::{Offload, VNET_HDR_LEN};
use crate::pipeline::{
    ForwardingState, Output, Pipeline, RxMeta, SharedTables, Transmit, TunnelEndpoint,
    WorkerCounters,
};
use crate::tables::{ConntrackStats, CtEntry, CtFilter, FdbKey, NeighRecord, PortId, Timestamp};
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
    /// How the worker polls on after traffic before it sleeps.
    pub busy_poll: BusyPoll,
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
    /// Serve these live traces and captures from the next frame on (none: stop serving).
    SetTaps(crate::pipeline::observe::Taps),
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
            pipeline: Pipeline::with_shared(Arc::clone(&counters), shared),
            snapshot: Arc::new(Snapshot::default()),
            registered: Vec::new(),
            registered_tunnels: Vec::new(),
            ready_tunnels: Vec::new(),
            registered_ipip: None,
            ipip_ready: false,
            ready: Vec::new(),
            is_ready: vec![false; PortId::MAX_PORTS],
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

    /// Has the worker serve `taps` (live traces and captures) from its next batch on.
    pub fn set_taps(&self, taps: crate::pipeline::observe::Taps) -> io::Result<()> {
        self.send(WorkerCommand::SetTaps(taps))
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
    pipeline: Pipeline,
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
        let mut spinner = Spinner::new(Instant::now());
        loop {
            let idle = self.ready.is_empty() && self.ready_tunnels.is_empty() && !self.ipip_ready;
            // The clock is read for polling on only when it is configured. A poll that finds
            // nothing is charged from here: the loop around the poll is part of its cost.
            let busy_poll = self.snapshot.busy_poll;
            let polled = (idle && busy_poll.is_on())
                .then(Instant::now)
                .filter(|&now| spinner.should_poll(&busy_poll, now));
            let polling_on = polled.is_some();
            let timeout = if idle && !polling_on {
                let aging = next_aging.saturating_duration_since(Instant::now());
                // Shaped frames wait for their time (the poll sleeps whole milliseconds).
                match self.pipeline.next_release() {
                    Some(at) => aging.min(Duration::from_millis(
                        at.millis().saturating_sub(self.now().millis()),
                    )),
                    None => aging,
                }
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker {}: poll failed: {e}", self.index);
                    return;
                }
            }
            // (Shaped frames waiting for their time go round the whole loop.)
            if let Some(polled) =
                polled.filter(|_| events.is_empty() && self.pipeline.next_release().is_none())
            {
                let spent = polled.elapsed();
                spinner.idle_poll(spent);
                self.pipeline
                    .counters()
                    .poll
                    .busy_poll_ns
                    .add(spent.as_nanos() as u64);
                continue;
            }
            let mut woken = false;
            let mut traffic = !idle;
            for event in events.iter() {
                match event.token() {
                    WAKER => woken = true,
                    IPIP => {
                        self.ipip_ready = true;
                        traffic = true;
                    }
                    Token(i) if i >= TUNNEL_TOKEN_BASE => {
                        traffic = true;
                        if !self.ready_tunnels.contains(&(i - TUNNEL_TOKEN_BASE)) {
                            self.ready_tunnels.push(i - TUNNEL_TOKEN_BASE);
                        }
                    }
                    Token(i) => {
                        traffic = true;
                        self.mark_ready(PortId(i as u16));
                    }
                }
            }
            if woken && !self.handle_commands() {
                return;
            }
            let busy = Instant::now();
            if traffic {
                spinner.worked(busy);
                if polling_on {
                    self.pipeline.counters().poll.busy_poll_hits.add(1);
                }
            }
            self.service_ready(&mut buf);
            self.service_tunnels();
            if self.ipip_ready {
                self.service_ipip();
            }
            if self.pipeline.next_release().is_some() {
                self.release_shaped();
            }
            let poll = &self.pipeline.counters().poll;
            poll.wakeups.add(1);
            poll.busy_ns.add(busy.elapsed().as_nanos() as u64);
            if Instant::now() >= next_aging {
                // The first worker keeps the shared tables' time: aging, expiry, neighbour
                // probes.
                if self.index == 0 {
                    let now = self.now();
                    let snapshot = Arc::clone(&self.snapshot);
                    let mut out = self.tx.out(&snapshot, self.index);
                    self.pipeline.tick(&snapshot.forwarding, now, &mut out);
                    out.flush(self.pipeline.counters());
                }
                next_aging = Instant::now() + AGING_TICK;
            }
        }
    }

    /// Sends the shaped frames whose time has come.
    fn release_shaped(&mut self) {
        let now = self.now();
        let snapshot = Arc::clone(&self.snapshot);
        let mut out = self.tx.out(&snapshot, self.index);
        self.pipeline.release_shaped(now, &mut out);
        out.flush(self.pipeline.counters());
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

    /// Reads up to a batch of packets (one `recvmmsg`) from each ready tunnel socket and
    /// passes them to the pipeline.
    fn service_tunnels(&mut self) {
        let now = self.now();
        let snapshot = Arc::clone(&self.snapshot);
        let state = &snapshot.forwarding;
        let Worker {
            index,
            registered_tunnels,
            ready_tunnels,
            pipeline,
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
                    let ep = socket.endpoint();
                    log::warn!("vxlan endpoint {}:{}: read failed: {e}", ep.local, ep.port);
                    0
                }
            };
            for k in 0..n {
                let (message, src, cut, segment) = rx.get(k);
                let endpoint = socket.endpoint();
                pipeline.receive_vxlan(state, endpoint, src, message, segment, cut, now, &mut out);
            }
            pipeline.flush(state, now, &mut out);
            pipeline.counters().poll.batch(n as u64);
            // Fewer than a whole batch: the socket is empty for now.
            if n < batch::BATCH {
                ready_tunnels.swap_remove(i);
            } else {
                i += 1;
            }
        }
        out.flush(pipeline.counters());
    }

    /// Reads up to a batch of packets (one `recvmmsg`) from the IPIP socket and passes them
    /// to the pipeline.
    fn service_ipip(&mut self) {
        let now = self.now();
        let snapshot = Arc::clone(&self.snapshot);
        let Some(socket) = self.registered_ipip.clone() else {
            self.ipip_ready = false;
            return;
        };
        let Worker {
            index,
            pipeline,
            rx,
            tx,
            ipip_ready,
            ..
        } = self;
        let mut out = tx.out(&snapshot, *index);
        let n = match socket.recv(rx) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("ipip socket: read failed: {e}");
                0
            }
        };
        for k in 0..n {
            let (packet, src, cut, _) = rx.get(k);
            pipeline.receive_ipip(&snapshot.forwarding, *src.ip(), packet, cut, now, &mut out);
        }
        if n < batch::BATCH {
            *ipip_ready = false;
        }
        out.flush(pipeline.counters());
        pipeline.counters().poll.batch(n as u64);
    }

    /// Reads up to [`BATCH`] frames from `port` and passes them to the pipeline. Returns true
    /// when the port has nothing more to read (or is gone).
    fn service_port(&mut self, port: PortId, buf: &mut [u8], now: Timestamp) -> bool {
        let snapshot = Arc::clone(&self.snapshot);
        let Some(device) = snapshot.device(port) else {
            return true;
        };
        let Worker {
            index,
            pipeline,
            tx,
            ..
        } = self;
        let mut out = tx.out(&snapshot, *index);
        let mut drained = false;
        let mut frames = 0;
        for _ in 0..BATCH {
            let rx = match device.recv(*index, buf, &mut out.held) {
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
            let meta = RxMeta {
                offload: rx.offload,
                truncated: rx.truncated,
                len: rx.len,
            };
            pipeline.receive(&snapshot.forwarding, port, frame, &meta, now, &mut out);
            frames += 1;
        }
        out.flush(pipeline.counters());
        pipeline.counters().poll.batch(frames);
        drained
    }

    /// Handles every queued command; returns false on `Stop`.
    fn handle_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                WorkerCommand::Adopt(snapshot) => {
                    if let Err(e) = self.adopt(snapshot) {
                        log::error!("worker {}: {e}", self.index);
                    }
                }
                WorkerCommand::DumpFdb(reply) => {
                    let now = self.now();
                    let aging = self.snapshot.forwarding.mac_aging_ms;
                    let mut records: Vec<FdbRecord> = self
                        .pipeline
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
                    let remotes = self.pipeline.remote_table();
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
                    let records = self.pipeline.shared().neighbours().records(now).collect();
                    let _ = reply.send(records);
                }
                WorkerCommand::FlushFdb { vlan, mac, reply } => {
                    let hit = |k: FdbKey| {
                        vlan.is_none_or(|v| v == k.vlan()) && mac.is_none_or(|m| m == k.mac())
                    };
                    let n = self.pipeline.shared().macs().retain(|k, _| !hit(k));
                    // Where the MAC was learned behind a VTEP, forget that too.
                    self.pipeline.shared().remotes().retain(|k, _| !hit(k));
                    let _ = reply.send(n);
                }
                WorkerCommand::DumpConntrack(reply) => {
                    let now = self.now();
                    let ct = self.pipeline.conntrack();
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
                    let ct = self.pipeline.conntrack();
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
                    let n = self
                        .pipeline
                        .conntrack()
                        .remove_where(|e| filter.matches(e));
                    let _ = reply.send(n);
                }
                WorkerCommand::SetTaps(taps) => self.pipeline.set_taps(taps, self.index),
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
                    Err(e) => {
                        result = Err(io::Error::new(
                            e.kind(),
                            format!("port {}: cannot poll its queue: {e}", new.name()),
                        ))
                    }
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
                let ep = t.endpoint();
                result = Err(io::Error::new(
                    e.kind(),
                    format!(
                        "vxlan endpoint {}:{}: cannot poll it: {e}",
                        ep.local, ep.port
                    ),
                ));
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
                    Err(e) => {
                        result = Err(io::Error::new(
                            e.kind(),
                            format!("ipip socket: cannot poll it: {e}"),
                        ))
                    }
                }
            }
        }
        // The shared tables follow the new state once, by the first worker (control publishes
        // to it first and waits).
        if self.index == 0 {
            self.pipeline.adopt(&snapshot.forwarding);
            for filter in &snapshot.purge {
                self.pipeline
                    .conntrack()
                    .remove_where(|e| filter.matches(e));
            }
        }
        self.adopted
            .store(snapshot.forwarding.generation, Ordering::Release);
        self.snapshot = snapshot;
        result
    }
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
            held: Held::default(),
        }
    }
}

/// Where a worker's transmits go: the devices of `snapshot`, through this worker's queue of
/// each; the tunnels' outer packets into batches (the VXLAN endpoints keep one per worker),
/// sent with `sendmmsg` when full and at the end of each batch ([`flush`](Out::flush)), which
/// also lets go of the vhost-user rings the batch read and wrote, handing the frames written
/// to their guests.
struct Out<'a> {
    snapshot: &'a Snapshot,
    queue: usize,
    ipip: &'a mut TxBatch,
    /// The vhost-user rings this batch holds.
    held: Held<'a>,
}

impl<'a> Output for Out<'a> {
    fn takes_offloads(&self, port: PortId, offload: &Offload) -> bool {
        self.snapshot.device(port).is_some_and(|d| d.takes(offload))
    }

    fn send(&mut self, transmit: Transmit<'_>) -> Sent {
        match transmit {
            Transmit::Device { port, frame, vnet } => {
                let snapshot: &'a Snapshot = self.snapshot;
                let Some(device) = snapshot.device(port) else {
                    return Sent::default();
                };
                let vnet = vnet.unwrap_or([0u8; VNET_HDR_LEN]);
                match device.send_with(self.queue, &frame, &vnet, &mut self.held) {
                    Ok(()) => Sent::one(frame.len()),
                    Err(_) => Sent::error(),
                }
            }
            Transmit::Vxlan {
                endpoint,
                remote,
                outer,
                inner,
                ..
            } => match self.snapshot.tunnel(endpoint) {
                Some(socket) => socket.send(self.queue, outer, &inner, remote),
                None => Sent::default(),
            },
            Transmit::Ipip {
                remote,
                outer,
                inner,
            } => match &self.snapshot.ipip {
                Some(socket) => socket.send(self.ipip, outer, inner, remote),
                None => Sent::error(),
            },
        }
    }
}

impl Out<'_> {
    /// Sends what the tunnel batches hold, and publishes what was written into vhost-user
    /// rings.
    fn flush(&mut self, counters: &WorkerCounters) {
        self.held.release();
        for t in &self.snapshot.tunnels {
            t.flush(self.queue).count(&counters.tunnel);
        }
        if !self.ipip.is_empty() {
            match &self.snapshot.ipip {
                Some(s) => s.flush(self.ipip).count(&counters.ipip),
                None => self.ipip.clear(),
            }
        }
    }
}
