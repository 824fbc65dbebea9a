//! The tapswitch dataplane: everything a packet touches.
//!
//! Layers, each depending only on the ones before it:
//!
//! - [`wire`]: zero-copy views over frames and headers, with owned `Repr`s to build them. No I/O.
//! - [`tables`]: bounded plain data structures (the MAC table, the static FDB).
//! - [`pipeline`]: the sans-IO packet path. It takes one frame, the published
//!   [`ForwardingState`](pipeline::ForwardingState) and `now`, and returns a verdict: where the
//!   frame goes, with which VLAN tag, or why it was dropped.
//! - [`io`]: ports (TAP, AF_PACKET), the worker thread's mio poll loop, counters.
//!
//! This crate reads no configuration files and opens no user-facing sockets; the control crate
//! compiles configuration into a [`ForwardingState`](pipeline::ForwardingState) and publishes it.

pub mod io;
pub mod pipeline;
pub mod tables;
pub mod wire;
