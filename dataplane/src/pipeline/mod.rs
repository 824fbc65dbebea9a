//! The sans-IO packet path.
//!
//! [`Pipeline`] is one worker's whole path, composed in [`datapath`] from its stages in the
//! order a frame meets them: receive (a device's frame with its offload metadata, a VXLAN
//! datagram through [`tunnel`] decapsulation and [`gro`], an IPIP packet) -> [`offload`]
//! (decide a super-frame whole, or finish it first) -> [`parse`] (Ethernet, 802.1Q) ->
//! [`ingress`] (the port's MTU, VLAN classification by port mode, source checks) -> L2, the
//! [`bridge`] (learning, ARP/ND suppression ([`suppress`]), destination lookup) or L3, the
//! [`router`] (ARP/ND, ICMP, conntrack and [`nat`], longest-prefix-match forwarding,
//! [`fragment`]ation, IPIP) -> [`egress`] (MTU, VLAN tag, VXLAN encapsulation, software
//! offload fallbacks, the router's generated frames). Each stage is a type with its own state
//! and tests; what they share is the [`Context`]. Everything leaves as a [`Transmit`] to the
//! caller's [`Output`]; every drop is counted with a [`DropReason`] of its stage, and each
//! stage records its decision in a [`Trace`] when one is on. It does no I/O and allocates
//! nothing per frame in steady state, so tests drive it without root on a fake clock and
//! benches measure it without syscalls.

pub mod bridge;
pub mod context;
pub mod counters;
pub mod datapath;
pub mod decision;
pub mod drop;
pub mod egress;
pub mod fragment;
pub mod gro;
pub mod icmp;
pub mod ingress;
pub mod nat;
pub mod observe;
pub mod offload;
pub mod parse;
pub mod policy;
pub mod rate;
pub mod router;
pub mod routing;
pub mod security;
pub mod shared;
pub mod state;
pub mod storm;
pub mod suppress;
pub mod trace;
pub mod tunnel;

pub use bridge::Bridge;
pub use context::Context;
pub use counters::{
    Counter, InterfaceCounters, LearnCounters, NatCounters, PortCounters, WorkerCounters,
};
pub use datapath::{Pipeline, RxMeta};
pub use decision::{Decision, Egress, EgressFrame, Targets};
pub use drop::DropReason;
pub use egress::{Output, Sent, Transmit};
pub use ingress::Ingress;
pub use router::{Generated, IpipEgress, Router};
pub use routing::{DhcpServer, Interface, NextHop, Route, RoutingState};
pub use shared::{
    ImportCounts, LearnedMac, LearnedNeighbour, LearnedRemote, LearnedState, SavedAffinity,
    SavedConnection, SharedTables,
};
pub use state::{
    AllowedPair, ForwardingState, Ipv4Prefix, PortMode, PortSecurity, PortState, TunnelEndpoint,
    VlanMember, VlanSet, VxlanPort,
};
pub use storm::{Limiter, StormControl};
pub use trace::{Stage, Step, Trace};
pub use tunnel::Tunnel;
