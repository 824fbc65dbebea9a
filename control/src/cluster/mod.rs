//! Cluster mode on etcd, flannel-compatible: each node leases its pod subnet in etcd,
//! publishes how it is reached, and programs its switch from what the others publish; Services
//! written to etcd are programmed on every node.
//!
//! - [`records`]: the etcd records (flannel's layout, plus Services).
//! - [`plan`]: what a node and each of its peers turn into, as switch requests (pure).
//! - [`agent`]: the agent thread: the etcd client (the `etcd-client` crate), the lease, the
//!   watch, and the batches it sends through the control socket, like any client of the API.

pub mod agent;
pub mod plan;
pub mod records;

pub use agent::{Agent, ClusterStatus};
