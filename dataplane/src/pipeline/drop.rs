//! Why a frame was dropped. Every drop on the forwarding path is one of these, counted per
//! ingress port.

use super::trace::Stage;

/// A counted reason for dropping a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header (14 bytes).
    Runt,
    /// An 802.1Q tag that is cut off or carries the reserved VID 4095.
    BadVlanTag,
    /// An 802.1ad (QinQ) or second 802.1Q tag: stacked VLANs are not switched.
    StackedVlan,
    /// Larger than the ingress port's MTU allows.
    Oversized,
    /// A tagged frame for a VLAN the port is not a member of.
    VlanNotAllowed,
    /// An untagged frame on a trunk port without a native VLAN.
    UntaggedOnTrunk,
    /// A multicast or all-zero source MAC.
    BadSourceMac,
    /// An IEEE 802.1D link-local destination (01:80:c2:00:00:0x): never forwarded.
    LinkLocal,
    /// The destination is known on the port the frame came from.
    SamePort,
    /// The frame arrived on a port that is no longer in the forwarding state.
    UnknownPort,
    /// Offload metadata (checksum or segmentation request) that does not fit the frame, or a
    /// segmentation type this switch does not do.
    BadOffload,
    /// A VXLAN packet shorter than its header plus an Ethernet header.
    VxlanTruncated,
    /// A VXLAN header without the I flag (RFC 7348: the VNI is not valid).
    VxlanBadFlags,
    /// A VNI no VXLAN port of this endpoint carries.
    VxlanUnknownVni,
    /// VXLAN from an outer source outside the port's `allow` list.
    VxlanSourceNotAllowed,
    /// An IPv4 or IPv6 packet to the router with a malformed header (version, length or IPv4
    /// header checksum).
    IpHeaderBad,
    /// A source or destination address that is never routed: unspecified, loopback, multicast
    /// or broadcast source, a link-local destination, or a source that is the router's own.
    Martian,
    /// The TTL or hop limit ran out (an ICMP time exceeded went back).
    TtlExceeded,
    /// No route to the destination (an ICMP unreachable went back).
    NoRoute,
    /// Larger than the egress MTU and not to be fragmented: IPv4 with DF set, or IPv6 (an ICMP
    /// fragmentation needed / packet too big went back).
    FragNeeded,
    /// The next hop did not answer ARP or neighbour solicitation (an ICMP host unreachable went
    /// back).
    NeighbourFailed,
    /// Waiting on next-hop resolution with that neighbour's queue full.
    NeighbourQueueFull,
    /// The neighbour table was full: no room to resolve a new next hop.
    NeighbourTableFull,
    /// Addressed to the router itself but not something it answers (only ARP, neighbour
    /// discovery and ICMP echo are); UDP gets an ICMP port unreachable.
    LocalUnsupported,
    /// Sent to a router interface's MAC with an EtherType the router does not route.
    L3Unsupported,
    /// An IPIP packet whose inner packet is not a well-formed IPv4 packet.
    IpipMalformed,
    /// IPIP from an outer source that is not the host of any `ipip` route.
    IpipSourceNotAllowed,
    /// A TCP segment of a tracked connection that its state or window does not allow (it is
    /// never forwarded, translated or not), or a TCP segment other than a SYN that would open
    /// a translated connection.
    ConntrackInvalid,
    /// A new connection not tracked: the table was full of live, replied connections.
    ConntrackFull,
    /// A new connection to a Service with no backend taking connections (a TCP RST or ICMP
    /// port unreachable went back).
    ServiceNoBackend,
    /// No free source port (or ICMP identifier) left for a new translated connection.
    NatNoPort,
    /// A TCP, UDP or ICMP packet too short for its header, where NAT needs it.
    NatMalformed,
    /// A later fragment of a translated packet whose first fragment was not seen.
    NatFragment,
    /// Port security: a source MAC the port does not own.
    SpoofedMac,
    /// Port security: an IPv4 or IPv6 source address the port does not own.
    SpoofedSource,
    /// Port security: an ARP packet that claims an address (or MAC) the port does not own.
    SpoofedArp,
    /// Port security: a neighbour advertisement for an address the port does not own.
    SpoofedNd,
    /// Port security: a router advertisement from a workload that may not send one.
    RaGuard,
    /// Port security: a DHCP server's message from a workload that may not send one.
    DhcpGuard,
    /// Storm control: a flooded frame (broadcast, multicast, unknown unicast) over the
    /// port's limit for its kind.
    Storm,
    /// Network policy: no tier allowed the packet (a deny rule, or an isolated port that no
    /// rule lets it reach or leave).
    PolicyDenied,
    /// Rate limits: over a port's policing rate (what its workload sends), or over its
    /// shaping rate with its queue full (what it receives).
    RateLimited,
    /// DHCP: a request on a VLAN whose interface serves DHCP, from a port with no address
    /// on the interface's subnets to hand out (an uplink, a VXLAN port, a workload without
    /// `addresses`).
    DhcpNoAddress,
    /// DHCP: a request to the interface's server that is not a readable DHCP client message
    /// (short, not BOOTP over Ethernet, no message type, a server's message type, relayed).
    DhcpMalformed,
}

impl DropReason {
    pub const COUNT: usize = 44;

    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Runt,
        DropReason::BadVlanTag,
        DropReason::StackedVlan,
        DropReason::Oversized,
        DropReason::VlanNotAllowed,
        DropReason::UntaggedOnTrunk,
        DropReason::BadSourceMac,
        DropReason::LinkLocal,
        DropReason::SamePort,
        DropReason::UnknownPort,
        DropReason::BadOffload,
        DropReason::VxlanTruncated,
        DropReason::VxlanBadFlags,
        DropReason::VxlanUnknownVni,
        DropReason::VxlanSourceNotAllowed,
        DropReason::IpHeaderBad,
        DropReason::Martian,
        DropReason::TtlExceeded,
        DropReason::NoRoute,
        DropReason::FragNeeded,
        DropReason::NeighbourFailed,
        DropReason::NeighbourQueueFull,
        DropReason::NeighbourTableFull,
        DropReason::LocalUnsupported,
        DropReason::L3Unsupported,
        DropReason::IpipMalformed,
        DropReason::IpipSourceNotAllowed,
        DropReason::ConntrackInvalid,
        DropReason::ConntrackFull,
        DropReason::ServiceNoBackend,
        DropReason::NatNoPort,
        DropReason::NatMalformed,
        DropReason::NatFragment,
        DropReason::SpoofedMac,
        DropReason::SpoofedSource,
        DropReason::SpoofedArp,
        DropReason::SpoofedNd,
        DropReason::RaGuard,
        DropReason::DhcpGuard,
        DropReason::Storm,
        DropReason::PolicyDenied,
        DropReason::RateLimited,
        DropReason::DhcpNoAddress,
        DropReason::DhcpMalformed,
    ];

    /// The name used in `stats` output.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::BadVlanTag => "bad_vlan_tag",
            DropReason::StackedVlan => "stacked_vlan",
            DropReason::Oversized => "oversized",
            DropReason::VlanNotAllowed => "vlan_not_allowed",
            DropReason::UntaggedOnTrunk => "untagged_on_trunk",
            DropReason::BadSourceMac => "bad_source_mac",
            DropReason::LinkLocal => "link_local",
            DropReason::SamePort => "same_port",
            DropReason::UnknownPort => "unknown_port",
            DropReason::BadOffload => "bad_offload",
            DropReason::VxlanTruncated => "vxlan_truncated",
            DropReason::VxlanBadFlags => "vxlan_bad_flags",
            DropReason::VxlanUnknownVni => "vxlan_unknown_vni",
            DropReason::VxlanSourceNotAllowed => "vxlan_source_not_allowed",
            DropReason::IpHeaderBad => "bad_ip_header",
            DropReason::Martian => "martian",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::NoRoute => "no_route",
            DropReason::FragNeeded => "frag_needed",
            DropReason::NeighbourFailed => "neighbour_failed",
            DropReason::NeighbourQueueFull => "neighbour_queue_full",
            DropReason::NeighbourTableFull => "neighbour_table_full",
            DropReason::LocalUnsupported => "local_unsupported",
            DropReason::L3Unsupported => "l3_unsupported",
            DropReason::IpipMalformed => "ipip_malformed",
            DropReason::IpipSourceNotAllowed => "ipip_source_not_allowed",
            DropReason::ConntrackInvalid => "conntrack_invalid",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::ServiceNoBackend => "service_no_backend",
            DropReason::NatNoPort => "nat_no_port",
            DropReason::NatMalformed => "nat_malformed",
            DropReason::NatFragment => "nat_fragment",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedNd => "spoofed_nd",
            DropReason::RaGuard => "ra_guard",
            DropReason::DhcpGuard => "dhcp_guard",
            DropReason::Storm => "storm",
            DropReason::PolicyDenied => "policy_denied",
            DropReason::RateLimited => "rate_limited",
            DropReason::DhcpNoAddress => "dhcp_no_address",
            DropReason::DhcpMalformed => "dhcp_malformed",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    /// The pipeline stage that drops for this reason.
    pub const fn stage(self) -> Stage {
        use DropReason::*;
        match self {
            Runt | BadVlanTag | StackedVlan | Oversized | BadOffload | UnknownPort => Stage::Parse,
            VlanNotAllowed | UntaggedOnTrunk | BadSourceMac | SpoofedMac | SpoofedSource
            | SpoofedArp | SpoofedNd | RaGuard | DhcpGuard => Stage::Ingress,
            LinkLocal | SamePort | Storm => Stage::L2,
            IpHeaderBad | Martian | TtlExceeded | NoRoute | FragNeeded | NeighbourFailed
            | NeighbourQueueFull | NeighbourTableFull | LocalUnsupported | L3Unsupported
            | DhcpNoAddress | DhcpMalformed => Stage::L3,
            ConntrackInvalid | ConntrackFull | ServiceNoBackend | NatNoPort | NatMalformed
            | NatFragment => Stage::Nat,
            PolicyDenied => Stage::Policy,
            RateLimited => Stage::Qos,
            VxlanTruncated
            | VxlanBadFlags
            | VxlanUnknownVni
            | VxlanSourceNotAllowed
            | IpipMalformed
            | IpipSourceNotAllowed => Stage::Tunnel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
