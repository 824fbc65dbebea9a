//! The tapswitch control plane.
//!
//! - [`config`]: the TOML configuration model and its validation (errors name the field).
//! - [`switch`]: the [`Switch`](switch::Switch): owns the configuration, the port devices and
//!   the workers; every change validates first, then compiles a new forwarding snapshot and
//!   publishes it, so a failed change leaves everything as it was.
//! - [`api`]: the control socket protocol (one JSON request, one JSON response) and its client.
//! - [`state`]: the state directory: the running configuration persisted before a change is
//!   acknowledged, checkpoints of learned state, all written the durable way.
//! - [`daemon`]: `tapswitch run`: the control thread's poll loop over the control socket and
//!   the termination signals.
//!
//! Threads: the control thread owns the `Switch`; workers never see configuration, only
//! published snapshots.

pub mod api;
pub mod capture;
pub mod checkpoint;
pub mod cluster;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod server;
pub mod state;
pub mod switch;
pub mod takeover;
pub mod trace;

pub use config::{Config, ConfigError};
pub use switch::{Switch, SwitchError};
