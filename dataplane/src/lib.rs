//! The tapswitch dataplane: everything a packet touches.
//!
//! Layers, each depending only on the ones before it:
//!
//! - [`wire`]: zero-copy views over frames and headers, with owned `Repr`s to build them. No I/O.
//! - [`tables`]: bounded plain data structures: the MAC table, the FIB, neighbours, remote
//!   VTEPs, conntrack, Services.
//! - [`pipeline`]: the sans-IO packet path. [`Pipeline`](pipeline::Pipeline) takes what a
//!   port or tunnel received, the published [`ForwardingState`](pipeline::ForwardingState) and
//!   `now`, and hands ready-to-send transmits to an output, counting every drop with a reason.
//! - [`io`]: ports (TAP, AF_PACKET), tunnel sockets, the worker thread's mio poll loop that
//!   reads, calls the pipeline and writes its transmits.
//!
//! This crate reads no configuration files and opens no user-facing sockets; the control crate
//! compiles configuration into a [`ForwardingState`](pipeline::ForwardingState) and publishes it.

pub mod io;
pub mod pipeline;
pub mod tables;
pub mod wire;
