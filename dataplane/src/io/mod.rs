//! Port I/O and the worker poll loop: the only part of the dataplane that makes syscalls.
//!
//! - [`batch`]: many datagrams per system call (`recvmmsg`, `sendmmsg`) for the tunnels.
//! - [`busy_poll`]: adaptive polling: a worker polls on for a moment after traffic.
//! - [`netns`]: run setup code inside a named network namespace.
//! - [`netdev`]: interface ioctls (index, MAC, MTU, flags).
//! - [`port`]: a port's device: a TAP that tapswitch creates and owns, or an existing
//!   interface attached over AF_PACKET.
//! - [`vhost_user`]: a VM's virtio-net rings in shared memory, served over a vhost-user socket.
//! - [`steering`]: the eBPF program that picks a multiqueue TAP's queue by flow hash.
//! - [`worker`]: a worker thread: a mio poll loop over its ports that runs the pipeline and
//!   adopts published snapshots between batches.

pub mod batch;
pub mod busy_poll;
pub mod ipip;
pub mod netdev;
pub mod netns;
pub mod port;
pub mod raw;
pub mod steering;
pub mod tunnel;
pub mod vhost_user;
pub mod worker;

pub use busy_poll::BusyPoll;
pub use port::{PortDevice, PortError, PortKind, TapSpec};
pub use tunnel::TunnelSocket;
pub use worker::{ConntrackDump, FdbRecord, Snapshot, WorkerCommand, WorkerHandle};
