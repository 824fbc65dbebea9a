//! Packet work of NAT that needs no table: reading a packet's connection tuple, rewriting it
//! with incrementally updated checksums (RFC 1624), translating the packet quoted inside an
//! ICMP error, and building the TCP RST a Service without backends answers with.
//!
//! Everything works on an IPv4 packet in place (`packet` starts at the IP header) with
//! complete checksums: offloaded checksums are finished before the pipeline sees a frame.

use std::net::Ipv4Addr;

use crate::tables::conntrack::tcp::{window_scale, Segment, ACK, FIN, RST, SYN};
use crate::tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::tables::FlowKey;
use crate::wire::checksum;

/// ICMP types.
const ECHO_REPLY: u8 = 0;
const DST_UNREACHABLE: u8 = 3;
const SOURCE_QUENCH: u8 = 4;
const REDIRECT: u8 = 5;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;

/// What NAT sees of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// A TCP segment.
    Tcp(Segment),
    Udp,
    /// An ICMP echo request or reply (`sport` of the key is the identifier).
    Echo {
        request: bool,
    },
    /// An ICMP error quoting a packet.
    IcmpError,
    /// Any other protocol or ICMP type: tracked by addresses alone.
    Other,
    /// A fragment after the first: no transport header.
    LaterFragment,
}

/// A parsed packet: its tuple and where its transport header starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub key: FlowKey,
    pub l4: L4,
    /// Offset of the transport header in the packet.
    pub l4_offset: usize,
    /// The first fragment of a fragmented packet.
    pub first_fragment: bool,
}

/// Why a packet cannot be parsed for NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Reads the tuple of an IPv4 packet (the router checked its header already; anything that
/// is not a whole IPv4 header is refused here too).
pub fn parse(packet: &[u8]) -> Result<Parsed, Malformed> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if ihl < 20 || ihl > packet.len() {
        return Err(Malformed);
    }
    let proto = packet[9];
    let frag = get16(packet, 6);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    let mut key = FlowKey {
        src: addr(packet, 12),
        dst: addr(packet, 16),
        sport: 0,
        dport: 0,
        proto,
    };
    if offset != 0 {
        return Ok(Parsed {
            key,
            l4: L4::LaterFragment,
            l4_offset: ihl,
            first_fragment: false,
        });
    }
    let l4 = &packet[ihl..];
    let kind = match proto {
        PROTO_TCP => {
            if l4.len() < 20 {
                return Err(Malformed);
            }
            let doff = usize::from(l4[12] >> 4) * 4;
            if doff < 20 || doff > l4.len() {
                return Err(Malformed);
            }
            key.sport = get16(l4, 0);
            key.dport = get16(l4, 2);
            let flags = l4[13];
            // Of a first fragment only its part: the window check sees that much.
            let payload = l4.len() - doff;
            L4::Tcp(Segment {
                flags,
                seq: get32(l4, 4),
                ack: get32(l4, 8),
                len: payload as u32,
                window: get16(l4, 14),
                wscale: if flags & SYN != 0 {
                    window_scale(&l4[20..doff])
                } else {
                    None
                },
            })
        }
        PROTO_UDP => {
            if l4.len() < 8 {
                return Err(Malformed);
            }
            key.sport = get16(l4, 0);
            key.dport = get16(l4, 2);
            L4::Udp
        }
        PROTO_ICMP => {
            if l4.len() < 8 {
                return Err(Malformed);
            }
            match l4[0] {
                ECHO_REQUEST | ECHO_REPLY => {
                    key.sport = get16(l4, 4);
                    L4::Echo {
                        request: l4[0] == ECHO_REQUEST,
                    }
                }
                DST_UNREACHABLE | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAMETER_PROBLEM => {
                    L4::IcmpError
                }
                _ => L4::Other,
            }
        }
        _ => L4::Other,
    };
    Ok(Parsed {
        key,
        l4: kind,
        l4_offset: ihl,
        first_fragment: more,
    })
}

fn is_echo(icmp_type: u8) -> bool {
    matches!(icmp_type, ECHO_REQUEST | ECHO_REPLY)
}

/// Where a transport protocol keeps its checksum, and whether the pseudo header (so the
/// addresses) is part of it.
fn l4_checksum_at(proto: u8) -> Option<(usize, bool)> {
    match proto {
        PROTO_TCP => Some((16, true)),
        PROTO_UDP => Some((6, true)),
        PROTO_ICMP => Some((2, false)),
        _ => None,
    }
}

/// Rewrites a packet with tuple `from` to tuple `to`: addresses in the IP header, ports (or
/// the ICMP echo identifier) in the transport header, every checksum updated incrementally.
/// `l4_present` is false for later fragments (no transport header).
///
/// `packet` must hold the IP header and, with `l4_present`, the first 8 bytes of the
/// transport header ([`parse`] and [`quoted`] make sure); a shorter one is left alone.
pub fn rewrite(
    packet: &mut [u8],
    l4_offset: usize,
    from: &FlowKey,
    to: &FlowKey,
    l4_present: bool,
) {
    rewrite_with(packet, l4_offset, from, to, l4_present, false);
}

/// [`rewrite`] for a packet whose transport checksum is still to be computed by whoever sends
/// it on (a partial checksum from an offloading sender: the field holds the sum of the pseudo
/// header alone, not complemented). Only the addresses change that sum; ports are in the
/// data the final computation covers.
pub fn rewrite_partial(packet: &mut [u8], l4_offset: usize, from: &FlowKey, to: &FlowKey) {
    rewrite_with(packet, l4_offset, from, to, true, true);
}

fn rewrite_with(
    packet: &mut [u8],
    l4_offset: usize,
    from: &FlowKey,
    to: &FlowKey,
    l4_present: bool,
    partial: bool,
) {
    if packet.len() < 20 || (l4_present && packet.len() < l4_offset.saturating_add(8)) {
        return;
    }
    if partial {
        let mut ip_sum = get16(packet, 10);
        let at = l4_checksum_at(from.proto)
            .filter(|&(at, pseudo)| pseudo && packet.len() >= l4_offset + at + 2)
            .map(|(at, _)| l4_offset + at);
        // The uncomplemented pseudo-header sum P: P' = P - old + new = !update(!P, old, new).
        let mut l4_sum = at.map(|at| get16(packet, at));
        for (range, old, new) in [(12..16, from.src, to.src), (16..20, from.dst, to.dst)] {
            if old != new {
                let (o, n) = (u32::from(old), u32::from(new));
                ip_sum = checksum::update32(ip_sum, o, n);
                l4_sum = l4_sum.map(|p| !checksum::update32(!p, o, n));
                packet[range].copy_from_slice(&new.octets());
            }
        }
        put16(packet, 10, ip_sum);
        if let (Some(at), Some(p)) = (at, l4_sum) {
            put16(packet, at, p);
        }
        let l4 = l4_offset;
        match from.proto {
            PROTO_TCP | PROTO_UDP => {
                put16(packet, l4, to.sport);
                put16(packet, l4 + 2, to.dport);
            }
            PROTO_ICMP if is_echo(packet[l4]) => put16(packet, l4 + 4, to.sport),
            _ => {}
        }
        return;
    }
    let mut ip_sum = get16(packet, 10);
    let mut l4_sum = None;
    let cs = if l4_present {
        l4_checksum_at(from.proto).filter(|&(at, _)| packet.len() >= l4_offset + at + 2)
    } else {
        None
    };
    if let Some((at, _)) = cs {
        let v = get16(packet, l4_offset + at);
        // A UDP checksum of zero means none: it stays zero.
        if !(from.proto == PROTO_UDP && v == 0) {
            l4_sum = Some(v);
        }
    }
    let pseudo = cs.is_some_and(|(_, p)| p);
    if from.src != to.src {
        let (o, n) = (u32::from(from.src), u32::from(to.src));
        ip_sum = checksum::update32(ip_sum, o, n);
        if pseudo {
            l4_sum = l4_sum.map(|s| checksum::update32(s, o, n));
        }
        packet[12..16].copy_from_slice(&to.src.octets());
    }
    if from.dst != to.dst {
        let (o, n) = (u32::from(from.dst), u32::from(to.dst));
        ip_sum = checksum::update32(ip_sum, o, n);
        if pseudo {
            l4_sum = l4_sum.map(|s| checksum::update32(s, o, n));
        }
        packet[16..20].copy_from_slice(&to.dst.octets());
    }
    put16(packet, 10, ip_sum);
    if !l4_present {
        return;
    }
    let l4 = l4_offset;
    match from.proto {
        PROTO_TCP | PROTO_UDP => {
            if from.sport != to.sport {
                l4_sum = l4_sum.map(|s| checksum::update16(s, from.sport, to.sport));
                put16(packet, l4, to.sport);
            }
            if from.dport != to.dport {
                l4_sum = l4_sum.map(|s| checksum::update16(s, from.dport, to.dport));
                put16(packet, l4 + 2, to.dport);
            }
        }
        // Only an echo has an identifier; other ICMP is tracked by addresses alone (its key has
        // no identifier, yet may share an echo connection's addresses).
        PROTO_ICMP if from.sport != to.sport && is_echo(packet[l4]) => {
            l4_sum = l4_sum.map(|s| checksum::update16(s, from.sport, to.sport));
            put16(packet, l4 + 4, to.sport);
        }
        _ => {}
    }
    if let (Some((at, _)), Some(mut s)) = (cs, l4_sum) {
        if from.proto == PROTO_UDP && s == 0 {
            s = 0xffff;
        }
        put16(packet, l4 + at, s);
    }
}

/// The packet an ICMP error quotes: its tuple as it travelled, and where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    pub key: FlowKey,
    /// Offset of the quoted IP header in the error packet.
    pub ip: usize,
    /// Offset of the quoted transport header.
    pub l4: usize,
}

/// Reads the packet quoted by the ICMP error `packet` (an IPv4 packet): at least its IP header
/// and the first 8 bytes of its transport header, as RFC 792 requires.
pub fn quoted(packet: &[u8], l4_offset: usize) -> Option<Quoted> {
    let ip = l4_offset + 8;
    let q = packet.get(ip..)?;
    if q.len() < 20 || q[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(q[0] & 0x0f) * 4;
    if ihl < 20 || q.len() < ihl + 8 {
        return None;
    }
    if get16(q, 6) & 0x1fff != 0 {
        return None;
    }
    let proto = q[9];
    let t = &q[ihl..];
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => (get16(t, 0), get16(t, 2)),
        PROTO_ICMP if matches!(t[0], ECHO_REQUEST | ECHO_REPLY) => (get16(t, 4), 0),
        PROTO_ICMP => return None,
        _ => (0, 0),
    };
    Some(Quoted {
        key: FlowKey {
            src: addr(q, 12),
            dst: addr(q, 16),
            sport,
            dport,
            proto,
        },
        ip,
        l4: ip + ihl,
    })
}

/// Translates an ICMP error whose quoted packet had tuple `q.key` (as it travelled) and is
/// to be rewritten as `quoted_to`: the quoted header and ports, the outer destination (the
/// quoted packet's source) and, if the error came from the quoted packet's destination
/// itself, the outer source; then the checksums.
///
/// The ICMP checksum is updated by the difference of the quoted bytes (RFC 1624), not
/// computed afresh: it stays right for the first fragment of a fragmented error, whose
/// checksum covers bytes this packet does not hold, and a wrong one stays wrong.
pub fn translate_error(packet: &mut [u8], l4_offset: usize, q: &Quoted, quoted_to: &FlowKey) {
    if packet.len() < l4_offset.saturating_add(8) || q.ip != l4_offset + 8 || q.l4 < q.ip {
        return;
    }
    let outer = FlowKey {
        src: addr(packet, 12),
        dst: addr(packet, 16),
        sport: 0,
        dport: 0,
        proto: PROTO_ICMP,
    };
    // The quoted packet, as if it were a whole packet (its transport checksum may lie beyond
    // the quoted bytes: then only what is there is rewritten). It starts 8 bytes into the
    // ICMP message, so its sum adds into the ICMP checksum as it is.
    let end = packet.len();
    let mut icmp_sum = get16(packet, l4_offset + 2);
    {
        let inner = &mut packet[q.ip..end];
        let before = checksum::sum(inner);
        let inner_l4 = q.l4 - q.ip;
        let present = inner.len() >= inner_l4 + 8;
        rewrite_quoted(inner, inner_l4, &q.key, quoted_to, present);
        icmp_sum = checksum::update16(icmp_sum, before, checksum::sum(inner));
    }
    let new_outer = FlowKey {
        dst: if outer.dst == q.key.src {
            quoted_to.src
        } else {
            outer.dst
        },
        src: if outer.src == q.key.dst {
            quoted_to.dst
        } else {
            outer.src
        },
        ..outer
    };
    // Outer addresses: the IP checksum only (ICMP has no pseudo header).
    rewrite(packet, l4_offset, &outer, &new_outer, false);
    put16(packet, l4_offset + 2, icmp_sum);
}

/// [`rewrite`] for a quoted packet: its transport checksum is updated only when it lies
/// within the quoted bytes.
fn rewrite_quoted(inner: &mut [u8], l4: usize, from: &FlowKey, to: &FlowKey, present: bool) {
    if !present {
        rewrite(inner, l4, from, to, false);
        return;
    }
    let has_sum = l4_checksum_at(from.proto).is_some_and(|(at, _)| inner.len() >= l4 + at + 2);
    if has_sum {
        rewrite(inner, l4, from, to, true);
        return;
    }
    // Ports only, without the checksum that was cut off.
    rewrite(inner, l4, from, to, false);
    match from.proto {
        PROTO_TCP | PROTO_UDP => {
            put16(inner, l4, to.sport);
            put16(inner, l4 + 2, to.dport);
        }
        PROTO_ICMP => put16(inner, l4 + 4, to.sport),
        _ => {}
    }
}

/// Builds into `out` the TCP RST answering a segment with tuple `key` and header fields
/// `seg` (RFC 793 "Reset Generation"), from `key.dst:key.dport`; returns its length.
pub fn tcp_reset(out: &mut [u8], key: &FlowKey, seg: &Segment, ident: u16) -> Option<usize> {
    const LEN: usize = 40;
    if seg.flags & RST != 0 || out.len() < LEN {
        return None;
    }
    let out = &mut out[..LEN];
    out.fill(0);
    out[0] = 0x45;
    put16(out, 2, LEN as u16);
    put16(out, 4, ident);
    out[6] = 0x40;
    out[8] = 64;
    out[9] = PROTO_TCP;
    out[12..16].copy_from_slice(&key.dst.octets());
    out[16..20].copy_from_slice(&key.src.octets());
    let ip_sum = checksum::checksum(&out[..20]);
    put16(out, 10, ip_sum);
    let t = 20;
    put16(out, t, key.dport);
    put16(out, t + 2, key.sport);
    let (seq, ack, flags) = if seg.flags & ACK != 0 {
        (seg.ack, 0, RST)
    } else {
        let ack = seg
            .seq
            .wrapping_add(seg.len)
            .wrapping_add(u32::from(seg.flags & SYN != 0))
            .wrapping_add(u32::from(seg.flags & FIN != 0));
        (0, ack, RST | ACK)
    };
    out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    out[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
    out[t + 12] = 5 << 4;
    out[t + 13] = flags;
    let pseudo = checksum::pseudo_header_v4(&key.dst, &key.src, crate::wire::IpProtocol::Tcp, 20);
    let sum = !checksum::combine(&[pseudo, checksum::sum(&out[t..])]);
    put16(out, t + 16, sum);
    Some(LEN)
}

#[cfg(test)]
pub(crate) mod tests;
