//! The sans-IO packet path.
//!
//! [`Bridge::process`] takes one received frame, the ingress port, the published
//! [`ForwardingState`] and `now`, and returns a [`Decision`]: drop (with a counted
//! [`DropReason`]) or forward to one port or flood to the members of a VLAN, each with its
//! egress tagging. It does no I/O and allocates nothing, so tests drive it without root on a
//! fake clock and benches measure it without syscalls.
//!
//! Stages, in order: parse (Ethernet, 802.1Q) -> ingress VLAN classification by port mode ->
//! source checks and MAC learning -> frames for a router interface go to the L3 stage
//! ([`router`]: ARP/ND, ICMP, longest-prefix-match forwarding, IPIP) -> destination lookup
//! (static FDB, then learned) -> egress set. VXLAN ([`tunnel`]) wraps and unwraps frames of
//! the VNI ports around this.

pub mod bridge;
pub mod counters;
pub mod drop;
pub mod fragment;
pub mod gro;
pub mod icmp;
pub mod nat;
pub mod offload;
pub mod router;
pub mod routing;
pub mod shared;
pub mod state;
pub mod suppress;
pub mod tunnel;

pub use bridge::{Bridge, Decision, Egress};
pub use counters::{
    Counter, InterfaceCounters, LearnCounters, NatCounters, PortCounters, WorkerCounters,
};
pub use drop::DropReason;
pub use router::{Generated, IpipEgress};
pub use routing::{Interface, NextHop, Route, RoutingState};
pub use shared::{
    ImportCounts, LearnedMac, LearnedNeighbour, LearnedRemote, LearnedState, SavedAffinity,
    SavedConnection, SharedTables,
};
pub use state::{
    ForwardingState, Ipv4Prefix, PortMode, PortState, TunnelEndpoint, VlanMember, VlanSet,
    VxlanPort,
};
