//! DHCPv4 from the gateway: a router interface with `dhcp` on answers the DHCP clients of its
//! VLAN itself, the way OVN answers DHCP natively, without a dnsmasq.
//!
//! The address a client gets is the one its port was given (`addresses`): the first of them
//! on one of the interface's subnets. There is no pool and no lease database: the port's
//! configuration is the lease, so a restart, a second worker or a second host serving the
//! same port all answer the same. With it come the subnet mask, the gateway (the interface's
//! address on that subnet, also the server identifier), the MTU (the smaller of the port's and
//! the interface's), the broadcast address, and the DNS servers, domain and lease time of
//! the interface's DHCP settings ([`DhcpServer`]).
//!
//! - Broadcasts are claimed by the L2 stage ([`for_router`](super::for_router)); a renewal,
//!   unicast to the server's address, is routed there and answered by the router's local
//!   delivery.
//! - DISCOVER gets an OFFER; REQUEST for the port's address gets an ACK, for any other
//!   address a NAK; a REQUEST naming another server (it chose that one) is ignored; INFORM
//!   gets an ACK with the options but no lease; DECLINE is counted (the address is in use
//!   elsewhere); RELEASE changes nothing (the address stays the port's).
//! - Replies go back out of the port that asked (whatever the MAC table says), to the
//!   client's MAC, never flooded: at IP to its address when it has one (`ciaddr`) or asked
//!   without the broadcast flag, else to 255.255.255.255.
//! - A request from a port without an address on the interface's subnets (an uplink, a VXLAN
//!   port, a workload without `addresses`) is dropped as `dhcp_no_address`; one that is not a
//!   readable client message as `dhcp_malformed`. Nothing else on the VLAN sees either: a VLAN
//!   that should keep its own DHCP server turns `dhcp` off on its interface.
//!
//! Messages are read and written with smoltcp's DHCPv4 wire support
//! ([`smoltcp::wire::DhcpRepr`]); the options it has no field for (MTU, broadcast address,
//! domain, T1 / T2, and the client identifier echoed as received, RFC 6842) are written as
//! its additional options.

use std::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr};

use super::super::routing::{mask_v4, same_subnet_v4, DhcpServer, Interface};
use super::super::trace::{record, Stage};
use super::super::{Decision, DropReason, ForwardingState, VlanMember};
use super::{Generated, L2, L3};
use crate::tables::PortId;
use crate::wire::{
    EtherType, EthernetAddress, HeaderOptions, IpProtocol, Ipv4Packet, Ipv4Repr, PseudoHeader,
    UdpPacket, UdpRepr, VlanId,
};

/// The server's and the client's UDP ports, as smoltcp names them.
pub use smoltcp::wire::{DHCP_CLIENT_PORT as CLIENT_PORT, DHCP_SERVER_PORT as SERVER_PORT};
/// BOOTP's smallest message (RFC 1542 2.1): replies are padded to it.
const BOOTP_MIN: usize = 300;
/// TTL of the replies.
const TTL: u8 = 64;

const OPT_DOMAIN_NAME: u8 = 15;
const OPT_MTU: u8 = 26;
const OPT_BROADCAST: u8 = 28;
const OPT_CLIENT_ID: u8 = 61;
const OPT_RENEWAL: u8 = 58;
const OPT_REBINDING: u8 = 59;

/// Whether `frame` (its EtherType at `off`) is a UDP datagram to the DHCP server port: IPv4,
/// UDP, not a fragment, to port 67. What [`for_router`](super::for_router) hands to the
/// server when the interface serves DHCP; whether it is a well-formed client message is for
/// [`L3::dhcp_in`] to say.
pub(super) fn is_client_message(frame: &[u8], off: usize) -> bool {
    let Some(ip) = frame.get(off + 2..) else {
        return false;
    };
    if frame[off..off + 2] != [0x08, 0x00] || ip.len() < 20 || ip[0] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[9] != u8::from(IpProtocol::Udp) || fragment {
        return false;
    }
    matches!(ip.get(ihl + 2..ihl + 4), Some(p) if u16::from_be_bytes([p[0], p[1]]) == SERVER_PORT)
}

/// The address `port` gets on `iface`: the first of `addresses` on one of its subnets, with
/// the interface's address there (the gateway and server identifier) and the prefix length.
pub fn lease_for(iface: &Interface, addresses: &[Ipv4Addr]) -> Option<Lease> {
    addresses.iter().find_map(|a| {
        iface
            .v4
            .iter()
            .find(|(g, len)| same_subnet_v4(*g, *a, *len) && g != a)
            .map(|(g, len)| Lease {
                address: *a,
                gateway: *g,
                prefix_len: *len,
            })
    })
}

/// What a port's client is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    /// The interface's address on the lease's subnet: the router, and the server identifier.
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
}

impl Lease {
    fn mask(&self) -> Ipv4Addr {
        mask_v4(Ipv4Addr::BROADCAST, self.prefix_len)
    }

    fn broadcast(&self) -> Ipv4Addr {
        self.address | !self.mask()
    }
}

/// What the server answers to one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Offer,
    Ack,
    /// An ACK to an INFORM: the options, no address, no lease time.
    InformAck,
    Nak,
    /// Nothing: a DECLINE, a RELEASE, a REQUEST that chose another server.
    Nothing,
}

/// The answer to `req` from a port whose lease is `lease`.
fn answer(req: &DhcpRepr<'_>, lease: &Lease) -> Answer {
    match req.message_type {
        DhcpMessageType::Discover => Answer::Offer,
        DhcpMessageType::Request => {
            if req.server_identifier.is_some_and(|s| s != lease.gateway) {
                return Answer::Nothing;
            }
            let asked = req
                .requested_ip
                .or((!req.client_ip.is_unspecified()).then_some(req.client_ip));
            if asked == Some(lease.address) {
                Answer::Ack
            } else {
                Answer::Nak
            }
        }
        DhcpMessageType::Inform => Answer::InformAck,
        _ => Answer::Nothing,
    }
}

/// The client identifier option of `packet`, as received.
fn client_id<'p>(packet: &'p DhcpPacket<&[u8]>) -> Option<&'p [u8]> {
    packet
        .options()
        .find(|o| o.kind == OPT_CLIENT_ID)
        .map(|o| o.data)
}

/// The message types a client sends.
fn from_client(t: DhcpMessageType) -> bool {
    matches!(
        t,
        DhcpMessageType::Discover
            | DhcpMessageType::Request
            | DhcpMessageType::Decline
            | DhcpMessageType::Release
            | DhcpMessageType::Inform
    )
}

fn type_name(t: DhcpMessageType) -> &'static str {
    match t {
        DhcpMessageType::Discover => "discover",
        DhcpMessageType::Offer => "offer",
        DhcpMessageType::Request => "request",
        DhcpMessageType::Decline => "decline",
        DhcpMessageType::Ack => "ack",
        DhcpMessageType::Nak => "nak",
        DhcpMessageType::Release => "release",
        DhcpMessageType::Inform => "inform",
        DhcpMessageType::Unknown(_) => "unknown",
    }
}

/// The DHCP message of an IPv4 UDP datagram at `ip`, or why not.
fn datagram(ip: &[u8]) -> Result<&[u8], DropReason> {
    let packet = Ipv4Packet::new_checked(ip).map_err(|_| DropReason::IpHeaderBad)?;
    if packet.version() != 4 || !packet.verify_checksum() {
        return Err(DropReason::IpHeaderBad);
    }
    let total = usize::from(packet.total_len());
    let ihl = usize::from(packet.header_len());
    let udp = UdpPacket::new_checked(&ip[ihl..total]).map_err(|_| DropReason::DhcpMalformed)?;
    let pseudo = PseudoHeader::V4 {
        src: packet.src_addr(),
        dst: packet.dst_addr(),
    };
    if udp.checksum() != 0 && !udp.verify_checksum(&pseudo) {
        return Err(DropReason::DhcpMalformed);
    }
    let len = usize::from(udp.len());
    Ok(&udp.into_inner()[8..len])
}

impl L3<'_> {
    /// A DHCP client's message from `port` on `vlan` (its EtherType at `off`), for the server
    /// of the VLAN's interface (see the [module](self)).
    pub fn dhcp_in<'s>(
        &mut self,
        state: &'s ForwardingState,
        port: PortId,
        vlan: VlanId,
        off: usize,
        frame: &[u8],
    ) -> Decision<'s> {
        let c = self.counters.interface(vlan);
        c.rx_packets.add(1);
        c.rx_bytes.add(frame.len() as u64);
        let decision = self.dhcp(state, port, vlan, off, frame);
        if let Decision::Drop(reason) = decision {
            self.counters.interface(vlan).drop(reason);
        }
        decision
    }

    /// The server's answer to a DHCP client's message from `port` on `vlan` (its EtherType
    /// at `off`); what [`dhcp_in`](Self::dhcp_in) does besides counting, and what a unicast
    /// to the router's address gets.
    pub(super) fn dhcp<'s>(
        &mut self,
        state: &'s ForwardingState,
        port: PortId,
        vlan: VlanId,
        off: usize,
        frame: &[u8],
    ) -> Decision<'s> {
        let Some(iface) = state.routing.interface(vlan) else {
            return Decision::Drop(DropReason::L3Unsupported);
        };
        let Some(server) = &iface.dhcp else {
            return Decision::Drop(DropReason::L3Unsupported);
        };
        let message = match datagram(&frame[off + 2..]) {
            Ok(m) => m,
            Err(reason) => return Decision::Drop(reason),
        };
        let Ok(packet) = DhcpPacket::new_checked(message) else {
            return Decision::Drop(DropReason::DhcpMalformed);
        };
        let Ok(req) = DhcpRepr::parse(&packet) else {
            return Decision::Drop(DropReason::DhcpMalformed);
        };
        if !from_client(req.message_type) || !req.relay_agent_ip.is_unspecified() {
            return Decision::Drop(DropReason::DhcpMalformed);
        }
        let addresses = state
            .addresses
            .get(port.index())
            .map_or(&[][..], Vec::as_slice);
        let lease = lease_for(iface, addresses);
        let client = EthernetAddress::from_bytes(&frame[6..12]);
        let answer = lease.map(|l| answer(&req, &l));
        let (kind, xid) = (req.message_type, req.transaction_id);
        record(self.trace, Stage::L3, "dhcp", move |s| {
            s.with("message", type_name(kind))
                .with("xid", format_args!("{xid:#010x}"))
                .with("client", client);
            match (lease, answer) {
                (Some(l), Some(a)) => {
                    s.with("lease", l.address).with(
                        "answer",
                        match a {
                            Answer::Offer => "offer",
                            Answer::Ack | Answer::InformAck => "ack",
                            Answer::Nak => "nak",
                            Answer::Nothing => "none",
                        },
                    );
                }
                _ => {
                    s.with("lease", "none");
                }
            }
        });
        let (Some(lease), Some(answer)) = (lease, answer) else {
            return Decision::Drop(DropReason::DhcpNoAddress);
        };
        let c = self.counters.interface(vlan);
        match answer {
            Answer::Offer => c.dhcp_offers.add(1),
            Answer::Ack | Answer::InformAck => c.dhcp_acks.add(1),
            Answer::Nak => c.dhcp_naks.add(1),
            Answer::Nothing => {
                if req.message_type == DhcpMessageType::Decline {
                    c.dhcp_declines.add(1);
                }
                return Decision::Local;
            }
        }
        let mtu = state.port(port).map_or(iface.mtu, |p| p.mtu.min(iface.mtu));
        let id = client_id(&packet);
        let mut buf = self.r.buffer();
        let ident = self.next_ip_ident();
        let reply = Reply {
            req: &req,
            client_id: id,
            lease: &lease,
            server,
            mtu,
            answer,
        };
        if reply.write(&mut buf, client, iface.mac, ident).is_none() {
            self.r.recycle(buf);
            return Decision::Drop(DropReason::DhcpMalformed);
        }
        let c = self.counters.interface(vlan);
        c.tx_packets.add(1);
        c.tx_bytes.add(buf.len() as u64);
        let to = VlanMember {
            port,
            tagged: state.port(port).is_some_and(|p| p.mode.tags_egress(vlan)),
        };
        self.r.generated.push_back(Generated::Reply {
            vlan,
            to,
            bytes: buf,
        });
        Decision::Local
    }
}

/// A reply being built.
struct Reply<'a> {
    req: &'a DhcpRepr<'a>,
    client_id: Option<&'a [u8]>,
    lease: &'a Lease,
    server: &'a DhcpServer,
    mtu: u16,
    answer: Answer,
}

impl Reply<'_> {
    /// The untagged frame of the reply, from the interface's MAC `mac` to the client's MAC
    /// `client`, into `buf`. `None` if it does not fit a DHCP message (an option too long).
    fn write(
        &self,
        buf: &mut Vec<u8>,
        client: EthernetAddress,
        mac: EthernetAddress,
        ident: u16,
    ) -> Option<()> {
        let lease = self.lease;
        let req = self.req;
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mtu = self.mtu.to_be_bytes();
        let broadcast = lease.broadcast().octets();
        let t1 = (self.server.lease_secs / 2).to_be_bytes();
        let t2 = (self.server.lease_secs / 8 * 7).to_be_bytes();
        let mut extra: [DhcpOption<'_>; 6] = [DhcpOption { kind: 0, data: &[] }; 6];
        let mut n = 0;
        let mut push = |kind: u8, data| {
            extra[n] = DhcpOption { kind, data };
            n += 1;
        };
        let nak = self.answer == Answer::Nak;
        if !nak {
            push(OPT_MTU, &mtu[..]);
            push(OPT_BROADCAST, &broadcast[..]);
            if let Some(d) = &self.server.domain {
                push(OPT_DOMAIN_NAME, d.as_bytes());
            }
            if self.answer != Answer::InformAck {
                push(OPT_RENEWAL, &t1[..]);
                push(OPT_REBINDING, &t2[..]);
            }
        }
        if let Some(id) = self.client_id {
            push(OPT_CLIENT_ID, id);
        }
        let dns = (!nak && !self.server.dns.is_empty()).then(|| {
            self.server
                .dns
                .iter()
                .take(smoltcp::wire::DHCP_MAX_DNS_SERVER_COUNT)
                .copied()
                .collect()
        });
        let (message_type, your_ip, lease_duration) = match self.answer {
            Answer::Offer => (
                DhcpMessageType::Offer,
                lease.address,
                Some(self.server.lease_secs),
            ),
            Answer::Ack => (
                DhcpMessageType::Ack,
                lease.address,
                Some(self.server.lease_secs),
            ),
            Answer::InformAck => (DhcpMessageType::Ack, unspecified, None),
            Answer::Nak | Answer::Nothing => (DhcpMessageType::Nak, unspecified, None),
        };
        let repr = DhcpRepr {
            message_type,
            transaction_id: req.transaction_id,
            secs: 0,
            client_hardware_address: req.client_hardware_address,
            client_ip: if nak { unspecified } else { req.client_ip },
            your_ip,
            server_ip: unspecified,
            router: (!nak).then_some(lease.gateway),
            subnet_mask: (!nak).then(|| lease.mask()),
            relay_agent_ip: unspecified,
            broadcast: req.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(lease.gateway),
            parameter_request_list: None,
            dns_servers: dns,
            max_size: None,
            lease_duration,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &extra[..n],
        };
        // RFC 2131 4.1: to the client's address when it has one; to the offered address
        // unless it asked for broadcast; a NAK always broadcast. At the link layer always
        // to the client's MAC.
        let dst = if nak {
            Ipv4Addr::BROADCAST
        } else if !req.client_ip.is_unspecified() {
            req.client_ip
        } else if req.broadcast || your_ip.is_unspecified() {
            Ipv4Addr::BROADCAST
        } else {
            your_ip
        };
        let dhcp_len = repr.buffer_len().max(BOOTP_MIN);
        let udp = UdpRepr {
            src_port: SERVER_PORT,
            dst_port: CLIENT_PORT,
            payload_len: dhcp_len,
        };
        let ip = Ipv4Repr {
            src_addr: lease.gateway,
            dst_addr: dst,
            protocol: IpProtocol::Udp,
            payload_len: udp.buffer_len(),
            ttl: TTL,
            dscp: 0,
            ecn: 0,
            ident,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
            options: HeaderOptions::EMPTY,
        };
        buf.clear();
        buf.resize(L2 + ip.buffer_len(), 0);
        buf[..6].copy_from_slice(client.as_bytes());
        buf[6..12].copy_from_slice(mac.as_bytes());
        buf[12..14].copy_from_slice(&u16::from(EtherType::Ipv4).to_be_bytes());
        let (_, rest) = buf.split_at_mut(L2);
        let (ip_header, datagram) = rest.split_at_mut(ip.header_len());
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut ip_header[..]));
        {
            let message = &mut datagram[8..];
            repr.emit(&mut DhcpPacket::new_unchecked(&mut message[..]))
                .ok()?;
        }
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut datagram[..]),
            &PseudoHeader::V4 {
                src: lease.gateway,
                dst,
            },
        );
        Some(())
    }
}
