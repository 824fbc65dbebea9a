//! Zero-copy views over the bytes of a frame, in the style of smoltcp's `wire`.
//!
//! Each header has two levels: a view `Header<T: AsRef<[u8]>>` whose `new_checked` validates
//! the length of untrusted bytes once, after which no accessor can panic, and (where building
//! is needed) a small owned `Repr` with `parse`, `emit` and `buffer_len`. Field offsets live in
//! a private `mod field` per header. Nothing here does I/O or allocates.

pub mod arp;
pub mod builder;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ip;
pub mod ipip;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vlan;
pub mod vnet;
pub mod vxlan;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use checksum::PseudoHeader;
pub use ethernet::{EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
pub use icmpv4::{
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded,
};
pub use icmpv6::{Icmpv6Message, Icmpv6Packet, Icmpv6Repr, NdOption, NdOptionType, NdOptions};
pub use ip::{HeaderOptions, IpProtocol};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Packet, Ipv6Repr};
pub use tcp::{TcpFlags, TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};
pub use vlan::{VlanId, VlanTag, VlanTagRepr};
pub use vnet::VnetHeader;
pub use vxlan::{Vni, VxlanHeader, VxlanRepr};

/// Why bytes could not be viewed as a header. Small and `Copy`: the pipeline turns it into a
/// counted drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header needs.
    Truncated,
    /// A field holds a value the header forbids.
    Malformed,
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated"),
            WireError::Malformed => f.write_str("malformed"),
        }
    }
}

impl std::error::Error for WireError {}

pub type Result<T> = core::result::Result<T, WireError>;
