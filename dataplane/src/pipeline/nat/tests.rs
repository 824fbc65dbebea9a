use super::*;

use std::net::SocketAddrV4;

use crate::wire::IpProtocol;

// Packet builders and checkers, shared with the router's NAT simulations.

/// A small deterministic generator (xorshift64*), for property-style loops.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(crate::tables::service::mix(seed) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(crate) fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    pub(crate) fn addr(&mut self) -> Ipv4Addr {
        Ipv4Addr::from(self.next() as u32)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// An IPv4 packet: 20-byte header (TTL 64, DF clear) with a valid checksum, then `l4`.
/// `frag` is the flags and fragment offset field.
pub(crate) fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ident: u16,
    frag: u16,
    l4: &[u8],
) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    put16(&mut p, 2, (20 + l4.len()) as u16);
    put16(&mut p, 4, ident);
    put16(&mut p, 6, frag);
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum::checksum(&p);
    put16(&mut p, 10, sum);
    p.extend_from_slice(l4);
    p
}

/// Sets the TTL of an IPv4 packet, fixing the header checksum.
pub(crate) fn set_ttl(p: &mut [u8], ttl: u8) {
    p[8] = ttl;
    let ihl = usize::from(p[0] & 0x0f) * 4;
    put16(p, 10, 0);
    let sum = checksum::checksum(&p[..ihl]);
    put16(p, 10, sum);
}

/// Sets the DF bit of an IPv4 packet, fixing the header checksum.
pub(crate) fn set_df(p: &mut [u8]) {
    p[6] |= 0x40;
    set_ttl(p, p[8]);
}

/// The transport checksum of `l4` (its checksum field zero) between `src` and `dst`.
fn l4_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let pseudo = checksum::pseudo_header_v4(&src, &dst, IpProtocol::from(proto), l4.len() as u32);
    !checksum::combine(&[pseudo, checksum::sum(l4)])
}

/// A TCP segment in an IPv4 packet, every checksum valid.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tcp(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let hlen = 20 + options.len();
    let mut t = vec![0u8; hlen];
    put16(&mut t, 0, src.port());
    put16(&mut t, 2, dst.port());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = ((hlen / 4) as u8) << 4;
    t[13] = flags;
    put16(&mut t, 14, window);
    t[20..].copy_from_slice(options);
    t.extend_from_slice(payload);
    let sum = l4_sum(*src.ip(), *dst.ip(), PROTO_TCP, &t);
    put16(&mut t, 16, sum);
    ipv4(*src.ip(), *dst.ip(), PROTO_TCP, 0x4242, 0x4000, &t)
}

/// A UDP datagram in an IPv4 packet; without `with_checksum` its checksum is zero (none).
pub(crate) fn udp(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    put16(&mut u, 0, src.port());
    put16(&mut u, 2, dst.port());
    put16(&mut u, 4, (8 + payload.len()) as u16);
    u.extend_from_slice(payload);
    if with_checksum {
        let mut sum = l4_sum(*src.ip(), *dst.ip(), PROTO_UDP, &u);
        if sum == 0 {
            sum = 0xffff;
        }
        put16(&mut u, 6, sum);
    }
    ipv4(*src.ip(), *dst.ip(), PROTO_UDP, 0x4243, 0, &u)
}

/// An ICMP echo request or reply in an IPv4 packet.
pub(crate) fn echo(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    request: bool,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut m = vec![0u8; 8];
    m[0] = if request { ECHO_REQUEST } else { ECHO_REPLY };
    put16(&mut m, 4, ident);
    put16(&mut m, 6, seq);
    m.extend_from_slice(payload);
    let sum = checksum::checksum(&m);
    put16(&mut m, 2, sum);
    ipv4(src, dst, PROTO_ICMP, 0x4244, 0, &m)
}

/// An ICMP error of `kind` and `code` from `src` to `dst` quoting `quote` (an IP packet or
/// its beginning).
pub(crate) fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    code: u8,
    rest: u32,
    quote: &[u8],
) -> Vec<u8> {
    let mut m = vec![0u8; 8];
    m[0] = kind;
    m[1] = code;
    m[4..8].copy_from_slice(&rest.to_be_bytes());
    m.extend_from_slice(quote);
    let sum = checksum::checksum(&m);
    put16(&mut m, 2, sum);
    ipv4(src, dst, PROTO_ICMP, 0x4245, 0, &m)
}

/// Why a packet's checksums are wrong, checked from scratch: the IP header, and for an
/// unfragmented packet the whole transport checksum (with the pseudo header for TCP and UDP;
/// a zero UDP checksum means none).
pub(crate) fn checksum_error(p: &[u8]) -> Option<String> {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if checksum::sum(&p[..ihl]) != 0xffff {
        return Some("IP header checksum".into());
    }
    let total = usize::from(get16(p, 2));
    if total != p.len() {
        return Some(format!("total length {total} of {}", p.len()));
    }
    if get16(p, 6) & 0x3fff != 0 {
        return None;
    }
    let (src, dst, proto) = (addr(p, 12), addr(p, 16), p[9]);
    let l4 = &p[ihl..];
    let ok = match proto {
        PROTO_TCP => {
            checksum::combine(&[
                checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, l4.len() as u32),
                checksum::sum(l4),
            ]) == 0xffff
        }
        PROTO_UDP => {
            get16(l4, 6) == 0
                || checksum::combine(&[
                    checksum::pseudo_header_v4(&src, &dst, IpProtocol::Udp, l4.len() as u32),
                    checksum::sum(l4),
                ]) == 0xffff
        }
        PROTO_ICMP => checksum::sum(l4) == 0xffff,
        _ => true,
    };
    (!ok).then(|| format!("protocol {proto} checksum"))
}

#[track_caller]
pub(crate) fn assert_checksums(p: &[u8]) {
    if let Some(e) = checksum_error(p) {
        panic!("bad {e}: {p:02x?}");
    }
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

const A: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 2);
const X: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const HOP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src,
        dst,
        sport,
        dport,
        proto,
    }
}

#[test]
fn parse_reads_tcp_with_its_segment_fields() {
    // MSS, NOP, window scale 7.
    let opts = [2, 4, 5, 180, 1, 3, 3, 7];
    let p = tcp(sa(A, 40000), sa(X, 443), SYN, 1000, 0, 64240, &opts, b"");
    let parsed = parse(&p).unwrap();
    assert_eq!(parsed.key, key(A, 40000, X, 443, PROTO_TCP));
    assert_eq!(parsed.l4_offset, 20);
    assert!(!parsed.first_fragment);
    assert_eq!(
        parsed.l4,
        L4::Tcp(Segment {
            flags: SYN,
            seq: 1000,
            ack: 0,
            len: 0,
            window: 64240,
            wscale: Some(7),
        })
    );
    let p = tcp(
        sa(A, 40000),
        sa(X, 443),
        ACK | FIN,
        1001,
        77,
        500,
        &[],
        b"hello",
    );
    match parse(&p).unwrap().l4 {
        L4::Tcp(s) => {
            assert_eq!(
                (s.flags, s.seq, s.ack, s.len, s.window),
                (ACK | FIN, 1001, 77, 5, 500)
            );
            // Only a SYN's options are read.
            assert_eq!(s.wscale, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn parse_reads_udp_icmp_and_other_protocols() {
    let p = udp(sa(A, 5353), sa(X, 53), b"query", true);
    let parsed = parse(&p).unwrap();
    assert_eq!(parsed.key, key(A, 5353, X, 53, PROTO_UDP));
    assert_eq!(parsed.l4, L4::Udp);

    let p = echo(A, X, true, 0x1234, 1, b"ping");
    let parsed = parse(&p).unwrap();
    assert_eq!(parsed.key, key(A, 0x1234, X, 0, PROTO_ICMP));
    assert_eq!(parsed.l4, L4::Echo { request: true });
    let p = echo(X, A, false, 0x1234, 1, b"ping");
    assert_eq!(parse(&p).unwrap().l4, L4::Echo { request: false });
    assert_eq!(parse(&p).unwrap().key.sport, 0x1234);

    for kind in [3, 4, 5, 11, 12] {
        let p = icmp_error(HOP, A, kind, 0, 0, &udp(sa(A, 1), sa(X, 2), b"", true));
        assert_eq!(parse(&p).unwrap().l4, L4::IcmpError, "type {kind}");
    }
    // Timestamp request: no identifier NAT knows of.
    let p = icmp_error(A, X, 13, 0, 0, &[0; 12]);
    assert_eq!(parse(&p).unwrap().l4, L4::Other);
    assert_eq!(parse(&p).unwrap().key, key(A, 0, X, 0, PROTO_ICMP));

    let gre = ipv4(A, X, 47, 1, 0, &[0; 8]);
    let parsed = parse(&gre).unwrap();
    assert_eq!(parsed.l4, L4::Other);
    assert_eq!(parsed.key, key(A, 0, X, 0, 47));
}

#[test]
fn parse_tells_first_and_later_fragments() {
    let whole = udp(sa(A, 5000), sa(X, 53), &[7; 100], true);
    let mut first = ipv4(A, X, PROTO_UDP, 9, 0x2000, &whole[20..60]);
    let parsed = parse(&first).unwrap();
    assert!(parsed.first_fragment);
    assert_eq!(parsed.l4, L4::Udp);
    assert_eq!(parsed.key.sport, 5000);
    let later = ipv4(A, X, PROTO_UDP, 9, 5, &whole[60..]);
    let parsed = parse(&later).unwrap();
    assert_eq!(parsed.l4, L4::LaterFragment);
    assert!(!parsed.first_fragment);
    assert_eq!(parsed.key, key(A, 0, X, 0, PROTO_UDP));
    // The last fragment (MF clear, offset set) is a later one too.
    first[6] = 0;
    first[7] = 5;
    assert_eq!(parse(&first).unwrap().l4, L4::LaterFragment);
}

#[test]
fn parse_refuses_truncated_transport_headers() {
    let t = tcp(sa(A, 1), sa(X, 2), ACK, 1, 1, 1, &[], b"");
    // Too short for a TCP header.
    assert_eq!(
        parse(&ipv4(A, X, PROTO_TCP, 1, 0, &t[20..39])),
        Err(Malformed)
    );
    // Data offset below 5 words, or beyond the segment.
    let mut bad = t[20..].to_vec();
    bad[12] = 4 << 4;
    assert_eq!(parse(&ipv4(A, X, PROTO_TCP, 1, 0, &bad)), Err(Malformed));
    bad[12] = 6 << 4;
    assert_eq!(parse(&ipv4(A, X, PROTO_TCP, 1, 0, &bad)), Err(Malformed));
    assert_eq!(parse(&ipv4(A, X, PROTO_UDP, 1, 0, &[0; 7])), Err(Malformed));
    assert_eq!(
        parse(&ipv4(A, X, PROTO_ICMP, 1, 0, &[8, 0, 0])),
        Err(Malformed)
    );
    // A first fragment too short for the ports.
    assert_eq!(
        parse(&ipv4(A, X, PROTO_UDP, 1, 0x2000, &[0; 4])),
        Err(Malformed)
    );
}

#[test]
fn parse_never_panics() {
    let mut rng = Rng::new(1);
    for n in 0..2000 {
        let len = rng.below(80) as usize;
        let mut p = rng.bytes(len);
        if n % 2 == 0 && len >= 20 {
            // Mostly plausible headers.
            p[0] = 0x40 | (rng.below(16) as u8);
            p[9] = [PROTO_TCP, PROTO_UDP, PROTO_ICMP, 47][n % 4];
            p[6] &= 0x20;
            p[7] = 0;
        }
        let _ = parse(&p);
        let _ = quoted(&p, 20.min(len));
        let _ = quoted(&p, len + 10);
    }
}

/// A random packet of a random kind from `from`, with `len` bytes of payload.
fn packet_for(from: &FlowKey, len: usize, rng: &mut Rng) -> Vec<u8> {
    let payload = rng.bytes(len);
    let (s, d) = (sa(from.src, from.sport), sa(from.dst, from.dport));
    match from.proto {
        PROTO_TCP => {
            let flags = [SYN, ACK, ACK | FIN, ACK | 0x08][rng.below(4) as usize];
            tcp(
                s,
                d,
                flags,
                rng.next() as u32,
                rng.next() as u32,
                rng.u16(),
                &[],
                &payload,
            )
        }
        PROTO_UDP => udp(s, d, &payload, rng.below(4) != 0),
        _ => echo(
            from.src,
            from.dst,
            rng.below(2) == 0,
            from.sport,
            rng.u16(),
            &payload,
        ),
    }
}

fn random_key(rng: &mut Rng, proto: u8) -> FlowKey {
    FlowKey {
        src: rng.addr(),
        dst: rng.addr(),
        sport: rng.u16(),
        dport: if proto == PROTO_ICMP { 0 } else { rng.u16() },
        proto,
    }
}

#[test]
fn rewrite_keeps_every_checksum_valid() {
    let mut rng = Rng::new(7);
    for n in 0..5000 {
        let proto = [PROTO_TCP, PROTO_UDP, PROTO_ICMP][n % 3];
        let from = random_key(&mut rng, proto);
        let len = rng.below(200) as usize;
        let original = packet_for(&from, len, &mut rng);
        assert_checksums(&original);
        // Change a random subset of the fields (source NAT, destination NAT, both).
        let mut to = random_key(&mut rng, proto);
        if rng.below(2) == 0 {
            to.src = from.src;
            to.sport = from.sport;
        } else if rng.below(2) == 0 {
            to.dst = from.dst;
            to.dport = from.dport;
        }
        let mut p = original.clone();
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.key, from);
        rewrite(&mut p, parsed.l4_offset, &from, &to, true);
        assert_checksums(&p);
        assert_eq!(parse(&p).unwrap().key, to);
        if proto == PROTO_UDP {
            // No checksum stays no checksum; a checksum never becomes "none".
            assert_eq!(get16(&p, 26) == 0, get16(&original, 26) == 0, "{n}");
        }
        // Everything else is untouched: header fields and payload.
        assert_eq!(p[..10], original[..10]);
        let payload_at = match proto {
            PROTO_TCP => 40,
            _ => 28,
        };
        assert_eq!(p[payload_at..], original[payload_at..]);
        // And back again.
        rewrite(&mut p, 20, &to, &from, true);
        assert_checksums(&p);
        assert_eq!(parse(&p).unwrap().key, from);
    }
}

#[test]
fn rewrite_of_a_udp_checksum_that_comes_out_zero_sends_all_ones() {
    let from = key(A, 5000, X, 53, PROTO_UDP);
    let original = udp(sa(A, 5000), sa(X, 53), b"abc", true);
    let mut seen = 0;
    for port in 0..=u16::MAX {
        let to = FlowKey {
            sport: port,
            src: ROUTER,
            ..from
        };
        let mut p = original.clone();
        rewrite(&mut p, 20, &from, &to, true);
        assert_checksums(&p);
        let mut zeroed = p.clone();
        put16(&mut zeroed, 26, 0);
        if l4_sum(ROUTER, X, PROTO_UDP, &zeroed[20..]) == 0 {
            // The computed checksum is zero: it must be sent as 0xffff (RFC 768).
            assert_eq!(get16(&p, 26), 0xffff);
            seen += 1;
        }
    }
    assert!(seen > 0);
}

#[test]
fn rewrite_of_a_later_fragment_changes_addresses_only() {
    let whole = udp(sa(A, 5000), sa(X, 53), &[9; 64], true);
    let later = ipv4(A, X, PROTO_UDP, 9, 3, &whole[44..]);
    let from = parse(&later).unwrap().key;
    let to = FlowKey {
        src: ROUTER,
        ..from
    };
    let mut p = later.clone();
    rewrite(&mut p, 20, &from, &to, false);
    assert_checksums(&p);
    assert_eq!(addr(&p, 12), ROUTER);
    assert_eq!(p[20..], later[20..]);
    assert_eq!(p[..10], later[..10]);
    assert_eq!(p[16..20], later[16..20]);

    // Fragments of a datagram rewritten one by one reassemble to a valid datagram.
    let first = ipv4(A, X, PROTO_UDP, 9, 0x2000, &whole[20..44]);
    let mut f1 = first.clone();
    let parsed = parse(&f1).unwrap();
    let to = FlowKey {
        src: ROUTER,
        sport: 61000,
        ..parsed.key
    };
    rewrite(&mut f1, 20, &parsed.key, &to, true);
    let mut f2 = later.clone();
    rewrite(
        &mut f2,
        20,
        &from,
        &FlowKey {
            src: ROUTER,
            ..from
        },
        false,
    );
    let mut l4 = f1[20..].to_vec();
    l4.extend_from_slice(&f2[20..]);
    let joined = ipv4(ROUTER, X, PROTO_UDP, 9, 0, &l4);
    assert_checksums(&joined);
    assert_eq!(parse(&joined).unwrap().key, to);
}

#[test]
fn rewrite_leaves_protocols_without_ports_alone() {
    let gre = ipv4(A, X, 47, 1, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let from = parse(&gre).unwrap().key;
    let to = FlowKey {
        src: ROUTER,
        ..from
    };
    let mut p = gre.clone();
    rewrite(&mut p, 20, &from, &to, true);
    assert_checksums(&p);
    assert_eq!(addr(&p, 12), ROUTER);
    assert_eq!(p[20..], gre[20..]);
}

#[test]
fn rewrite_touches_no_identifier_of_icmp_other_than_echo() {
    // An ICMP type without an identifier, translated by an echo connection's entry (same
    // addresses, identifier 0 in the key): found by the `nat` fuzz target.
    let mut icmp = vec![0xff, 0xfe, 0, 0, 0xe4, 0x86, 0x40, 0x00, 9, 9, 9, 9];
    let c = checksum::checksum(&icmp);
    put16(&mut icmp, 2, c);
    let packet = ipv4(A, X, PROTO_ICMP, 1, 0, &icmp);
    let from = parse(&packet).unwrap().key;
    assert_eq!(from.sport, 0);
    let to = FlowKey {
        src: ROUTER,
        sport: 4321,
        ..from
    };
    let mut p = packet.clone();
    rewrite(&mut p, 20, &from, &to, true);
    assert_checksums(&p);
    assert_eq!(p[20..], packet[20..], "the ICMP message is left as it was");
    let mut p = packet.clone();
    rewrite_partial(&mut p, 20, &from, &to);
    assert_eq!(p[20..], packet[20..]);
}

/// A masqueraded connection: `inside` as A sent it, `outside` as it left the router.
fn masqueraded(proto: u8) -> (FlowKey, FlowKey) {
    let inside = match proto {
        PROTO_ICMP => key(A, 0x77, X, 0, proto),
        _ => key(A, 40000, X, 53, proto),
    };
    let outside = match proto {
        PROTO_ICMP => key(ROUTER, 0x9999, X, 0, proto),
        _ => key(ROUTER, 61234, X, 53, proto),
    };
    (inside, outside)
}

fn packet_of(k: &FlowKey, payload: &[u8]) -> Vec<u8> {
    match k.proto {
        PROTO_TCP => tcp(
            sa(k.src, k.sport),
            sa(k.dst, k.dport),
            ACK,
            5000,
            6000,
            1000,
            &[],
            payload,
        ),
        PROTO_UDP => udp(sa(k.src, k.sport), sa(k.dst, k.dport), payload, true),
        _ => echo(k.src, k.dst, true, k.sport, 3, payload),
    }
}

#[test]
fn time_exceeded_about_a_masqueraded_packet_goes_back_as_sent() {
    for proto in [PROTO_UDP, PROTO_TCP, PROTO_ICMP] {
        let (inside, outside) = masqueraded(proto);
        let sent = packet_of(&inside, b"0123456789abcdef");
        let mut out = sent.clone();
        rewrite(&mut out, 20, &inside, &outside, true);
        set_ttl(&mut out, 1);
        // A hop beyond the router quotes the whole packet (Linux quotes up to 576 bytes),
        // or the IP header and 8 bytes (RFC 792).
        for quote_len in [out.len(), 28] {
            let error = icmp_error(HOP, ROUTER, 11, 0, 0, &out[..quote_len]);
            assert_checksums(&error);
            let q = quoted(&error, 20).unwrap();
            assert_eq!(q.key, outside);
            assert_eq!((q.ip, q.l4), (28, 48));
            let mut p = error.clone();
            translate_error(&mut p, 20, &q, &inside);
            assert_checksums(&p);
            // The outer header: from the hop, to A.
            assert_eq!((addr(&p, 12), addr(&p, 16)), (HOP, A));
            assert_eq!(p[20..22], [11, 0]);
            // The quoted packet is what A sent (but the TTL).
            let inner = &p[28..];
            assert_eq!(checksum::sum(&inner[..20]), 0xffff, "quoted IP checksum");
            let mut expect = sent[..quote_len].to_vec();
            set_ttl(&mut expect, 1);
            if quote_len == out.len() {
                assert_checksums(inner);
                assert_eq!(inner, &expect[..]);
            } else {
                // The quoted ports (or identifier) are A's; a checksum cut off stays as is.
                assert_eq!(parse_quoted_key(&p), inside);
                assert_eq!(inner[..20], expect[..20]);
            }
        }
    }
}

fn parse_quoted_key(p: &[u8]) -> FlowKey {
    quoted(p, 20).unwrap().key
}

#[test]
fn port_unreachable_from_a_dnat_backend_names_the_frontend() {
    // C -> VIP:80, balanced to B:8080; B answers port unreachable to C.
    let c = Ipv4Addr::new(192, 0, 2, 10);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let b = Ipv4Addr::new(10, 42, 1, 2);
    for proto in [PROTO_UDP, PROTO_TCP] {
        let original = key(c, 33000, vip, 80, proto);
        let translated = key(c, 33000, b, 8080, proto);
        let mut at_b = packet_of(&original, &[1; 33]);
        rewrite(&mut at_b, 20, &original, &translated, true);
        let error = icmp_error(b, c, 3, 3, 0, &at_b);
        let q = quoted(&error, 20).unwrap();
        assert_eq!(q.key, translated);
        let mut p = error.clone();
        translate_error(&mut p, 20, &q, &original);
        assert_checksums(&p);
        assert_eq!((addr(&p, 12), addr(&p, 16)), (vip, c));
        assert_eq!(&p[28..], &packet_of(&original, &[1; 33])[..]);
        assert_checksums(&p[28..]);
    }
}

#[test]
fn frag_needed_about_a_reply_keeps_its_mtu_field() {
    // The reply X -> A leaves the router as X -> A; a hop on A's side reports it to X,
    // quoting (X -> A); the router sends it on to X quoting (X -> ROUTER:61234).
    let (inside, outside) = masqueraded(PROTO_UDP);
    let reply_sent = packet_of(&outside.reversed(), &[5; 40]);
    let mut at_a = reply_sent.clone();
    rewrite(&mut at_a, 20, &outside.reversed(), &inside.reversed(), true);
    set_df(&mut at_a);
    let error = icmp_error(A, X, 3, 4, 1400, &at_a);
    let q = quoted(&error, 20).unwrap();
    let mut p = error.clone();
    translate_error(&mut p, 20, &q, &outside.reversed());
    assert_checksums(&p);
    // From A itself, the quoted packet's destination: it becomes the router.
    assert_eq!((addr(&p, 12), addr(&p, 16)), (ROUTER, X));
    assert_eq!(get32(&p, 24), 1400);
    assert_eq!(quoted(&p, 20).unwrap().key, outside.reversed());
}

#[test]
fn translate_error_keeps_the_checksum_of_a_first_fragment_right() {
    // An ICMP error sent in two fragments: the checksum covers both, so the one in the first
    // fragment must be updated, not computed over that fragment alone.
    let (inside, outside) = masqueraded(PROTO_UDP);
    let sent = packet_of(&outside, &[3; 200]);
    let whole = icmp_error(HOP, ROUTER, 11, 0, 0, &sent);
    let icmp = &whole[20..];
    let first = ipv4(HOP, ROUTER, PROTO_ICMP, 77, 0x2000, &icmp[..96]);
    let later = ipv4(HOP, ROUTER, PROTO_ICMP, 77, 12, &icmp[96..]);
    let q = quoted(&first, 20).unwrap();
    assert_eq!(q.key, outside);
    let mut f1 = first.clone();
    translate_error(&mut f1, 20, &q, &inside);
    let mut f2 = later.clone();
    rewrite(
        &mut f2,
        20,
        &parse(&later).unwrap().key,
        &FlowKey {
            dst: A,
            ..parse(&later).unwrap().key
        },
        false,
    );
    let mut joined = f1[20..].to_vec();
    joined.extend_from_slice(&f2[20..]);
    assert_eq!(
        checksum::sum(&joined),
        0xffff,
        "ICMP checksum of the reassembled error"
    );
}

#[test]
fn quoted_refuses_what_it_cannot_translate() {
    let inner = udp(sa(A, 1), sa(X, 2), b"", true);
    let ok = icmp_error(HOP, A, 11, 0, 0, &inner);
    assert!(quoted(&ok, 20).is_some());
    // Shorter than a header and 8 bytes.
    assert!(quoted(&icmp_error(HOP, A, 11, 0, 0, &inner[..27]), 20).is_none());
    // Not IPv4.
    let mut v6 = inner.clone();
    v6[0] = 0x65;
    assert!(quoted(&icmp_error(HOP, A, 11, 0, 0, &v6), 20).is_none());
    // A later fragment: no ports.
    let frag = ipv4(A, X, PROTO_UDP, 1, 10, &[0; 8]);
    assert!(quoted(&icmp_error(HOP, A, 11, 0, 0, &frag), 20).is_none());
    // An error about an error.
    let nested = icmp_error(HOP, A, 11, 0, 0, &ok);
    assert!(quoted(&nested, 20).is_none());
    // An echo is quoted with its identifier.
    let e = echo(A, X, true, 99, 1, b"");
    assert_eq!(
        quoted(&icmp_error(HOP, A, 11, 0, 0, &e), 20).unwrap().key,
        key(A, 99, X, 0, PROTO_ICMP)
    );
}

fn seg_of(p: &[u8]) -> Segment {
    match parse(p).unwrap().l4 {
        L4::Tcp(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn tcp_reset_answers_by_rfc_793() {
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let k = key(A, 40000, vip, 80, PROTO_TCP);
    let mut out = [0u8; 64];

    // A SYN (no ACK): RST|ACK, seq 0, ack = seq + 1.
    let syn = tcp(
        sa(A, 40000),
        sa(vip, 80),
        SYN,
        0xffff_fff0,
        0,
        1000,
        &[],
        b"",
    );
    let n = tcp_reset(&mut out, &k, &seg_of(&syn), 7).unwrap();
    let r = &out[..n];
    assert_eq!(n, 40);
    assert_checksums(r);
    let rk = parse(r).unwrap();
    assert_eq!(rk.key, k.reversed());
    let s = seg_of(r);
    assert_eq!(
        (s.flags, s.seq, s.ack, s.len),
        (RST | ACK, 0, 0xffff_fff1, 0)
    );
    assert_eq!(get16(r, 4), 7);

    // A SYN with data, wrapping: the data counts too.
    let syn = tcp(
        sa(A, 40000),
        sa(vip, 80),
        SYN,
        u32::MAX,
        0,
        1000,
        &[],
        b"abc",
    );
    let n = tcp_reset(&mut out, &k, &seg_of(&syn), 7).unwrap();
    assert_eq!(seg_of(&out[..n]).ack, 3);

    // A FIN without ACK: ack = seq + len + 1.
    let fin = tcp(sa(A, 40000), sa(vip, 80), FIN, 100, 0, 1000, &[], b"xy");
    let n = tcp_reset(&mut out, &k, &seg_of(&fin), 7).unwrap();
    assert_eq!(seg_of(&out[..n]).ack, 103);

    // A segment with ACK: RST with seq = its ack, no ACK flag.
    let data = tcp(
        sa(A, 40000),
        sa(vip, 80),
        ACK | 0x08,
        100,
        5555,
        1000,
        &[],
        b"data",
    );
    let n = tcp_reset(&mut out, &k, &seg_of(&data), 7).unwrap();
    assert_checksums(&out[..n]);
    let s = seg_of(&out[..n]);
    assert_eq!((s.flags, s.seq, s.ack), (RST, 5555, 0));

    // Never a RST for a RST; never beyond the buffer.
    let rst = tcp(sa(A, 40000), sa(vip, 80), RST | ACK, 1, 1, 0, &[], b"");
    assert_eq!(tcp_reset(&mut out, &k, &seg_of(&rst), 7), None);
    assert_eq!(tcp_reset(&mut out[..39], &k, &seg_of(&data), 7), None);
}
