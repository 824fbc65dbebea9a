//! The `tapswitch` package's library: what the binary's `demo`, the integration tests and the
//! examples share.
//!
//! - [`probe`]: network namespaces as containers, and real traffic between them (ICMP echo
//!   over a raw socket, a checked TCP transfer, UDP) with the kernel's own stack answering.

pub mod probe;
