//! `tapswitch trace`: the packet a user describes, and what the pipeline's record of it
//! looks like to a user.
//!
//! - [`Probe::parse`] reads a description in the style of tcpdump's output
//!   (`tcp 10.42.0.2:40000 > 10.96.0.10:80 syn`, `arp who-has 10.42.0.1 tell 10.42.0.2`, ...);
//!   [`Probe::build`] makes the frame, with the MAC addresses the switch chose where the
//!   description names none (see `Switch::trace`).
//! - [`summary`] names the headers of a frame (or of an outer IPv4 packet) in one line.
//! - [`Recorder`] is the pipeline's output in a dry run: it keeps each transmit's bytes.
//! - [`report`] turns a [`Trace`] and the transmits into the JSON that `trace -j` prints.
//!
//! Frames are built and read with etherparse (a well-kept crate that builds and slices every
//! header tapswitch traces), not with the dataplane's own wire module, which has no builder
//! for whole TCP/UDP/ICMP packets: the dataplane never originates them.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, LinkSlice, NetSlice, PacketBuilder,
    SlicedPacket, TransportSlice,
};
use serde_json::{json, Map, Value};
use tapswitch_dataplane::pipeline::offload::Offload;
use tapswitch_dataplane::pipeline::{Output, Sent, Trace, Transmit};
use tapswitch_dataplane::tables::PortId;
use tapswitch_dataplane::wire::EthernetAddress;

/// What a description says about the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
        flags: Vec<String>,
    },
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// ICMP (IPv4) or ICMPv6 echo request or reply.
    Echo {
        src: IpAddr,
        dst: IpAddr,
        reply: bool,
    },
    Arp {
        /// Who asks (request) or answers (reply).
        sender: Ipv4Addr,
        target: Ipv4Addr,
        reply: bool,
    },
}

/// A packet to trace, as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub payload: Payload,
    pub src_mac: Option<EthernetAddress>,
    pub dst_mac: Option<EthernetAddress>,
    /// An 802.1Q tag to send it with.
    pub vlan: Option<u16>,
    pub ttl: u8,
    /// Payload bytes after the TCP/UDP/ICMP header.
    pub len: usize,
}

/// The grammar, for error messages.
pub const GRAMMAR: &str = "[src-mac MAC] [dst-mac MAC] [vlan N] \
    (tcp A:P > B:P [syn] [ack] [fin] [rst] [psh] | udp A:P > B:P | icmp A > B [reply] | \
    icmp6 A > B [reply] | arp who-has B tell A | arp reply A to B) [ttl N] [len N]; \
    IPv6 with a port as [ADDR]:PORT";

impl Probe {
    /// Reads a description; the error names the word that is wrong.
    pub fn parse(text: &str) -> Result<Probe, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut i = 0;
        let mut src_mac = None;
        let mut dst_mac = None;
        let mut vlan = None;
        let mut ttl = 64u8;
        let mut len = 0usize;
        let next = |i: &mut usize, what: &str| -> Result<&str, String> {
            let w = words
                .get(*i)
                .copied()
                .ok_or_else(|| format!("packet: {what} expected after `{}`", words[*i - 1]))?;
            *i += 1;
            Ok(w)
        };
        let mut payload = None;
        while i < words.len() {
            let w = words[i];
            i += 1;
            match w {
                "src-mac" | "dst-mac" => {
                    let v = next(&mut i, "a MAC address")?;
                    let mac: EthernetAddress = v
                        .parse()
                        .map_err(|_| format!("packet: `{v}` is not a MAC address"))?;
                    if w == "src-mac" {
                        src_mac = Some(mac);
                    } else {
                        dst_mac = Some(mac);
                    }
                }
                "vlan" => {
                    let v = next(&mut i, "a VLAN id")?;
                    vlan = Some(
                        v.parse::<u16>()
                            .ok()
                            .filter(|v| (1..4095).contains(v))
                            .ok_or_else(|| format!("packet: vlan `{v}` is not 1 to 4094"))?,
                    );
                }
                "ttl" | "hlim" => {
                    let v = next(&mut i, "a TTL")?;
                    ttl = v
                        .parse()
                        .map_err(|_| format!("packet: ttl `{v}` is not 0 to 255"))?;
                }
                "len" => {
                    let v = next(&mut i, "a payload length")?;
                    len = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n <= 9000)
                        .ok_or_else(|| format!("packet: len `{v}` is not 0 to 9000"))?;
                }
                "tcp" | "udp" if payload.is_none() => {
                    let src = socket_addr(next(&mut i, "a source address:port")?)?;
                    arrow(next(&mut i, "`>`")?)?;
                    let dst = socket_addr(next(&mut i, "a destination address:port")?)?;
                    if src.is_ipv4() != dst.is_ipv4() {
                        return Err(
                            "packet: source and destination are not both IPv4 or IPv6".into()
                        );
                    }
                    payload = Some(if w == "tcp" {
                        let mut flags = Vec::new();
                        while let Some(f) = words.get(i) {
                            if !matches!(*f, "syn" | "ack" | "fin" | "rst" | "psh") {
                                break;
                            }
                            flags.push(f.to_string());
                            i += 1;
                        }
                        if flags.is_empty() {
                            flags.push("syn".into());
                        }
                        Payload::Tcp { src, dst, flags }
                    } else {
                        Payload::Udp { src, dst }
                    });
                }
                "icmp" | "icmp6" | "ping" if payload.is_none() => {
                    let src = ip_addr(next(&mut i, "a source address")?)?;
                    arrow(next(&mut i, "`>`")?)?;
                    let dst = ip_addr(next(&mut i, "a destination address")?)?;
                    if src.is_ipv4() != dst.is_ipv4() || (w == "icmp6" && src.is_ipv4()) {
                        return Err("packet: icmp takes IPv4 addresses, icmp6 IPv6".into());
                    }
                    let reply = match words.get(i) {
                        Some(&"reply") | Some(&"echo-reply") => {
                            i += 1;
                            true
                        }
                        Some(&"echo") | Some(&"request") => {
                            i += 1;
                            false
                        }
                        _ => false,
                    };
                    payload = Some(Payload::Echo { src, dst, reply });
                }
                "arp" if payload.is_none() => {
                    let kind = next(&mut i, "`who-has` or `reply`")?;
                    payload = Some(match kind {
                        "who-has" | "request" => {
                            let target = ipv4(next(&mut i, "the address asked for")?)?;
                            expect(next(&mut i, "`tell`")?, "tell")?;
                            let sender = ipv4(next(&mut i, "the asking address")?)?;
                            Payload::Arp {
                                sender,
                                target,
                                reply: false,
                            }
                        }
                        "reply" => {
                            let sender = ipv4(next(&mut i, "the answering address")?)?;
                            expect(next(&mut i, "`to`")?, "to")?;
                            let target = ipv4(next(&mut i, "the address answered")?)?;
                            Payload::Arp {
                                sender,
                                target,
                                reply: true,
                            }
                        }
                        other => {
                            return Err(format!(
                                "packet: `{other}`: arp takes `who-has B tell A` or `reply A to B`"
                            ))
                        }
                    });
                }
                other => {
                    return Err(format!(
                        "packet: `{other}` is not understood here; the form is {GRAMMAR}"
                    ))
                }
            }
        }
        let payload =
            payload.ok_or_else(|| format!("packet: no protocol; the form is {GRAMMAR}"))?;
        Ok(Probe {
            payload,
            src_mac,
            dst_mac,
            vlan,
            ttl,
            len,
        })
    }

    /// The source and destination IP addresses (ARP: sender and target).
    pub fn addresses(&self) -> (IpAddr, IpAddr) {
        match &self.payload {
            Payload::Tcp { src, dst, .. } | Payload::Udp { src, dst } => (src.ip(), dst.ip()),
            Payload::Echo { src, dst, .. } => (*src, *dst),
            Payload::Arp { sender, target, .. } => (IpAddr::V4(*sender), IpAddr::V4(*target)),
        }
    }

    /// The frame, from `src` to `dst` (where the description names no MAC).
    pub fn build(&self, src: EthernetAddress, dst: EthernetAddress) -> Result<Vec<u8>, String> {
        let src = self.src_mac.unwrap_or(src).0;
        let dst = self.dst_mac.unwrap_or(dst).0;
        let body = vec![0u8; self.len];
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2(src, dst);
        let err = |e: etherparse::err::packet::BuildWriteError| format!("packet: {e}");
        macro_rules! ip_then {
            ($step:expr, $s:expr, $d:expr, $then:ident) => {{
                match ($s, $d) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        $then!($step.ipv4(s.octets(), d.octets(), self.ttl))
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        $then!($step.ipv6(s.octets(), d.octets(), self.ttl))
                    }
                    _ => return Err("packet: mixed IPv4 and IPv6 addresses".into()),
                }
            }};
        }
        macro_rules! l4 {
            ($ip:expr) => {{
                match &self.payload {
                    Payload::Tcp { src, dst, flags } => {
                        let mut t = $ip.tcp(src.port(), dst.port(), 1_000, 64_240);
                        for f in flags {
                            t = match f.as_str() {
                                "syn" => t.syn(),
                                "ack" => t.ack(1),
                                "fin" => t.fin(),
                                "rst" => t.rst(),
                                _ => t.psh(),
                            };
                        }
                        t.write(&mut out, &body).map_err(err)?
                    }
                    Payload::Udp { src, dst } => $ip
                        .udp(src.port(), dst.port())
                        .write(&mut out, &body)
                        .map_err(err)?,
                    Payload::Echo { src, reply, .. } => match (src, reply) {
                        (IpAddr::V4(_), false) => $ip
                            .icmpv4_echo_request(0x7473, 1)
                            .write(&mut out, &body)
                            .map_err(err)?,
                        (IpAddr::V4(_), true) => $ip
                            .icmpv4_echo_reply(0x7473, 1)
                            .write(&mut out, &body)
                            .map_err(err)?,
                        (IpAddr::V6(_), false) => $ip
                            .icmpv6_echo_request(0x7473, 1)
                            .write(&mut out, &body)
                            .map_err(err)?,
                        (IpAddr::V6(_), true) => $ip
                            .icmpv6_echo_reply(0x7473, 1)
                            .write(&mut out, &body)
                            .map_err(err)?,
                    },
                    Payload::Arp { .. } => unreachable!("ARP has no IP header"),
                }
            }};
        }
        let (s, d) = self.addresses();
        match (&self.payload, self.vlan) {
            (
                Payload::Arp {
                    sender,
                    target,
                    reply,
                },
                vlan,
            ) => {
                let (op, target_mac) = if *reply {
                    (ArpOperation::REPLY, dst)
                } else {
                    (ArpOperation::REQUEST, [0u8; 6])
                };
                let arp = ArpPacket::new(
                    ArpHardwareId::ETHERNET,
                    EtherType::IPV4,
                    op,
                    &src,
                    &sender.octets(),
                    &target_mac,
                    &target.octets(),
                )
                .map_err(|e| format!("packet: {e}"))?;
                match vlan {
                    Some(v) => eth
                        .single_vlan(vlan_id(v)?)
                        .arp(arp)
                        .write(&mut out)
                        .map_err(err)?,
                    None => eth.arp(arp).write(&mut out).map_err(err)?,
                }
            }
            (_, Some(v)) => {
                let step = eth.single_vlan(vlan_id(v)?);
                ip_then!(step, s, d, l4)
            }
            (_, None) => ip_then!(eth, s, d, l4),
        }
        Ok(out)
    }
}

fn vlan_id(v: u16) -> Result<etherparse::VlanId, String> {
    etherparse::VlanId::try_new(v).map_err(|e| format!("packet: vlan: {e}"))
}

fn arrow(w: &str) -> Result<(), String> {
    expect(w, ">")
}

fn expect(w: &str, want: &str) -> Result<(), String> {
    if w == want {
        Ok(())
    } else {
        Err(format!("packet: `{want}` expected, not `{w}`"))
    }
}

fn ip_addr(w: &str) -> Result<IpAddr, String> {
    w.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| format!("packet: `{w}` is not an IP address"))
}

fn ipv4(w: &str) -> Result<Ipv4Addr, String> {
    w.parse()
        .map_err(|_| format!("packet: `{w}` is not an IPv4 address"))
}

fn socket_addr(w: &str) -> Result<SocketAddr, String> {
    w.parse()
        .map_err(|_| format!("packet: `{w}` is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)"))
}

/// A frame from a hex dump: hex digits, with any spaces, colons, newlines and `0x` prefixes;
/// a leading offset column of `xxd`/`tcpdump -xx` style (`0x0000:`) is skipped.
pub fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut digits = String::new();
    for line in text.lines() {
        let mut line = line.trim();
        // An offset column: "0x0010:" or "00000010:".
        if let Some((head, rest)) = line.split_once(": ") {
            if head
                .trim_start_matches("0x")
                .chars()
                .all(|c| c.is_ascii_hexdigit())
            {
                line = rest;
            }
        }
        for word in line.split(|c: char| c.is_whitespace() || c == ':') {
            let word = word.trim_start_matches("0x");
            if word.chars().all(|c| c.is_ascii_hexdigit()) {
                digits.push_str(word);
            } else {
                // xxd's text column ends the line.
                break;
            }
        }
    }
    if digits.is_empty() || digits.len() % 2 != 0 {
        return Err("frame: not an even number of hex digits".into());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|e| format!("frame: {e}")))
        .collect()
}

/// Packet `index` (from 1) of a pcap or pcapng file, with its link type: only Ethernet
/// frames can be traced.
pub fn read_capture(path: &std::path::Path, index: usize) -> Result<Vec<u8>, String> {
    use pcap_file::pcapng::Block;
    use pcap_file::DataLink;
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    let want = index.max(1);
    let pcapng = bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]);
    let mut n = 0;
    if pcapng {
        let mut r =
            pcap_file::pcapng::PcapNgReader::new(&bytes[..]).map_err(|e| format!("{name}: {e}"))?;
        while let Some(block) = r.next_block() {
            let block = block.map_err(|e| format!("{name}: {e}"))?;
            let (iface, data) = match block {
                Block::EnhancedPacket(p) => (p.interface_id, p.data.into_owned()),
                Block::SimplePacket(p) => (0, p.data.into_owned()),
                _ => continue,
            };
            n += 1;
            if n == want {
                let link = r.interfaces().get(iface as usize).map(|i| i.linktype);
                if link != Some(DataLink::ETHERNET) {
                    return Err(format!("{name}: packet {want} is not an Ethernet frame"));
                }
                return Ok(data);
            }
        }
    } else {
        let mut r =
            pcap_file::pcap::PcapReader::new(&bytes[..]).map_err(|e| format!("{name}: {e}"))?;
        if r.header().datalink != DataLink::ETHERNET {
            return Err(format!("{name}: not a capture of Ethernet frames"));
        }
        while let Some(p) = r.next_packet() {
            let p = p.map_err(|e| format!("{name}: {e}"))?;
            n += 1;
            if n == want {
                return Ok(p.data.into_owned());
            }
        }
    }
    Err(format!("{name}: has {n} packets, not {want}"))
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The headers of an Ethernet frame in one line, tcpdump-like:
/// `02:..:01 > 02:..:02, vlan 10, IPv4 10.42.0.2 > 10.96.0.10 ttl 64, TCP 40000 > 80 [S]`.
pub fn summary(frame: &[u8]) -> String {
    match SlicedPacket::from_ethernet(frame) {
        Ok(p) => describe(&p),
        Err(e) => format!("{} bytes, not parsed ({e})", frame.len()),
    }
}

/// The same for a packet that starts with its IP header (a tunnel's outer packet); a VXLAN
/// payload's inner frame is described after a ` | `.
pub fn summary_ip(packet: &[u8]) -> String {
    let Ok(p) = SlicedPacket::from_ip(packet) else {
        return format!("{} bytes, not parsed", packet.len());
    };
    let mut s = describe(&p);
    if let Some(TransportSlice::Udp(u)) = &p.transport {
        let payload = u.payload();
        if payload.len() >= 8 + 14 && payload[0] & 0x08 != 0 {
            let vni = u32::from_be_bytes([0, payload[4], payload[5], payload[6]]);
            let _ = write!(s, ", VXLAN vni {vni} | {}", summary(&payload[8..]));
        }
    }
    if let Some(NetSlice::Ipv4(ip)) = &p.net {
        if ip.header().protocol() == etherparse::IpNumber::IPV4 {
            let _ = write!(s, " | {}", summary_ip(ip.payload().payload));
        }
    }
    s
}

fn describe(p: &SlicedPacket<'_>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(LinkSlice::Ethernet2(e)) = &p.link {
        parts.push(format!(
            "{} > {}",
            EthernetAddress(e.source()),
            EthernetAddress(e.destination())
        ));
    }
    for v in p.vlan_ids() {
        parts.push(format!("vlan {}", v.value()));
    }
    match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            parts.push(format!(
                "IPv4 {} > {} ttl {}",
                h.source_addr(),
                h.destination_addr(),
                h.ttl()
            ));
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            parts.push(format!(
                "IPv6 {} > {} hlim {}",
                h.source_addr(),
                h.destination_addr(),
                h.hop_limit()
            ));
        }
        Some(NetSlice::Arp(a)) => {
            let sender = a.sender_protocol_addr();
            let target = a.target_protocol_addr();
            let ip = |b: &[u8]| {
                <[u8; 4]>::try_from(b)
                    .map(|o| Ipv4Addr::from(o).to_string())
                    .unwrap_or_else(|_| to_hex(b))
            };
            parts.push(match a.operation() {
                ArpOperation::REQUEST => format!("ARP who-has {} tell {}", ip(target), ip(sender)),
                ArpOperation::REPLY => format!(
                    "ARP reply {} is-at {}",
                    ip(sender),
                    <[u8; 6]>::try_from(a.sender_hw_addr())
                        .map(|m| EthernetAddress(m).to_string())
                        .unwrap_or_default()
                ),
                op => format!("ARP op {}", op.0),
            });
        }
        None => {}
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let mut flags = String::new();
            for (on, c) in [
                (t.syn(), 'S'),
                (t.fin(), 'F'),
                (t.rst(), 'R'),
                (t.psh(), 'P'),
                (t.ack(), '.'),
            ] {
                if on {
                    flags.push(c);
                }
            }
            parts.push(format!(
                "TCP {} > {} [{flags}]",
                t.source_port(),
                t.destination_port()
            ));
        }
        Some(TransportSlice::Udp(u)) => parts.push(format!(
            "UDP {} > {}",
            u.source_port(),
            u.destination_port()
        )),
        Some(TransportSlice::Icmpv4(i)) => {
            parts.push(format!("ICMP type {} code {}", i.type_u8(), i.code_u8()))
        }
        Some(TransportSlice::Icmpv6(i)) => {
            parts.push(format!("ICMPv6 type {} code {}", i.type_u8(), i.code_u8()))
        }
        Some(_) => parts.push("other transport".into()),
        None => {}
    }
    parts.join(", ")
}

/// One transmit as a dry run keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `port`, `vxlan` or `ipip`.
    pub to: &'static str,
    pub port: Option<PortId>,
    pub remote: Option<Ipv4Addr>,
    /// The bytes as they go on the device or socket: a frame, or an outer IPv4 packet with
    /// the inner frame or packet after it.
    pub bytes: Vec<u8>,
}

/// The pipeline's output in a dry run: nothing is sent; every transmit is kept.
#[derive(Debug, Default)]
pub struct Recorder {
    pub transmits: Vec<Recorded>,
}

impl Output for Recorder {
    fn takes_offloads(&self, _port: PortId, _offload: &Offload) -> bool {
        false
    }

    fn send(&mut self, transmit: Transmit<'_>) -> Sent {
        let len = transmit.len();
        let recorded = match transmit {
            Transmit::Device { port, frame, .. } => Recorded {
                to: "port",
                port: Some(port),
                remote: None,
                bytes: frame.to_vec(),
            },
            Transmit::Vxlan {
                port,
                remote,
                outer,
                inner,
                ..
            } => {
                let mut bytes = outer.to_vec();
                bytes.extend_from_slice(&inner.to_vec());
                Recorded {
                    to: "vxlan",
                    port: Some(port),
                    remote: Some(remote),
                    bytes,
                }
            }
            Transmit::Ipip {
                remote,
                outer,
                inner,
            } => {
                let mut bytes = outer.to_vec();
                bytes.extend_from_slice(inner);
                Recorded {
                    to: "ipip",
                    port: None,
                    remote: Some(remote),
                    bytes,
                }
            }
        };
        self.transmits.push(recorded);
        Sent::one(len)
    }
}

/// The JSON of a trace: the input, every step (its fields beside `stage` and `action`; each
/// `transmit` step with the bytes it sent, as hex and as a header summary), the verdict
/// (`forwarded`: sent on; `consumed`: taken by the router, answered or waiting on a neighbour;
/// `dropped`) and, for a drop, its stage and reason.
pub fn report(port: &str, input: &[u8], trace: &Trace, transmits: &[Recorded]) -> Value {
    let mut steps = Vec::new();
    let mut sent = transmits.iter();
    let mut forwarded = false;
    let mut generated = false;
    for step in &trace.steps {
        let mut o = Map::new();
        o.insert("stage".into(), json!(step.stage.as_str()));
        o.insert("action".into(), json!(step.action));
        for (k, v) in &step.fields {
            o.insert((*k).into(), json!(v));
        }
        if step.action == "generated" {
            generated = true;
        }
        if step.action == "transmit" {
            if let Some(t) = sent.next() {
                let headers = match t.to {
                    "port" => summary(&t.bytes),
                    _ => summary_ip(&t.bytes),
                };
                o.insert("headers".into(), json!(headers));
                o.insert("hex".into(), json!(to_hex(&t.bytes)));
            }
            if generated {
                o.insert("generated".into(), json!(true));
            } else {
                forwarded = true;
            }
        }
        steps.push(Value::Object(o));
    }
    let drop = trace.steps.iter().find(|s| s.action == "drop");
    let verdict = match drop {
        Some(_) if !forwarded => "dropped",
        _ if forwarded => "forwarded",
        _ => "consumed",
    };
    let mut out = json!({
        "port": port,
        "input": { "len": input.len(), "headers": summary(input), "hex": to_hex(input) },
        "steps": steps,
        "transmits": transmits.len(),
        "verdict": verdict,
    });
    if let Some(d) = drop {
        out["drop"] = json!({
            "stage": d.stage.as_str(),
            "reason": d.field("reason").unwrap_or(""),
        });
    }
    out
}

/// A trace's JSON as lines for a terminal.
pub fn render(report: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "in {}: {}",
        report["port"].as_str().unwrap_or("?"),
        report["input"]["headers"].as_str().unwrap_or("")
    );
    if let Some(steps) = report["steps"].as_array() {
        for step in steps {
            let Some(o) = step.as_object() else { continue };
            let mut line = format!(
                "  {:<8} {:<14}",
                o.get("stage").and_then(Value::as_str).unwrap_or(""),
                o.get("action").and_then(Value::as_str).unwrap_or("")
            );
            for (k, v) in o {
                if matches!(k.as_str(), "stage" | "action" | "hex" | "headers") {
                    continue;
                }
                let v = v
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string());
                let _ = write!(line, " {k}={v}");
            }
            let _ = writeln!(s, "{}", line.trim_end());
            if let Some(h) = o.get("headers").and_then(Value::as_str) {
                let _ = writeln!(s, "{:>26}{h}", "");
            }
        }
    }
    let _ = write!(s, "verdict: {}", report["verdict"].as_str().unwrap_or("?"));
    if let Some(d) = report.get("drop") {
        let _ = write!(
            s,
            " (stage {}, reason {})",
            d["stage"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("?")
        );
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

    #[test]
    fn tcp_syn_builds_and_reads_back() {
        let p = Probe::parse("tcp 10.42.0.2:40000 > 10.96.0.10:80 syn").unwrap();
        let f = p.build(A, B).unwrap();
        assert_eq!(
            summary(&f),
            "02:00:00:00:00:01 > 02:00:00:00:00:02, IPv4 10.42.0.2 > 10.96.0.10 ttl 64, TCP 40000 > 80 [S]"
        );
    }

    #[test]
    fn every_form_builds() {
        for (text, want) in [
            ("udp 10.0.0.1:53 > 10.0.0.2:5353 len 10", "UDP 53 > 5353"),
            ("icmp 10.0.0.1 > 10.0.0.2", "ICMP type 8 code 0"),
            ("icmp 10.0.0.1 > 10.0.0.2 reply", "ICMP type 0 code 0"),
            ("icmp6 fd00::1 > fd00::2", "ICMPv6 type 128 code 0"),
            (
                "tcp [fd00::1]:1000 > [fd00::2]:80 syn ack",
                "TCP 1000 > 80 [S.]",
            ),
            ("vlan 20 udp 10.0.0.1:1 > 10.0.0.2:2", "vlan 20"),
            (
                "arp who-has 10.0.0.1 tell 10.0.0.2",
                "ARP who-has 10.0.0.1 tell 10.0.0.2",
            ),
            (
                "arp reply 10.0.0.1 to 10.0.0.2",
                "ARP reply 10.0.0.1 is-at 02:00:00:00:00:01",
            ),
            (
                "src-mac 02:aa:00:00:00:01 udp 10.0.0.1:1 > 10.0.0.2:2",
                "02:aa:00:00:00:01 > 02:00:00:00:00:02",
            ),
        ] {
            let f = Probe::parse(text).unwrap().build(A, B).unwrap();
            let s = summary(&f);
            assert!(s.contains(want), "{text}: {s}");
        }
    }

    #[test]
    fn errors_name_the_word() {
        for (text, want) in [
            (
                "tcp 10.0.0.1 > 10.0.0.2:80",
                "`10.0.0.1` is not ADDRESS:PORT",
            ),
            ("tcp 10.0.0.1:1 10.0.0.2:80", "`>` expected"),
            ("vlan 5000 udp 10.0.0.1:1 > 10.0.0.2:2", "vlan `5000`"),
            ("gre 10.0.0.1 > 10.0.0.2", "`gre` is not understood"),
            ("ttl 64", "no protocol"),
            ("tcp 10.0.0.1:1 > [fd00::1]:2", "not both IPv4 or IPv6"),
            ("arp who-has 10.0.0.1", "`tell` expected after"),
        ] {
            let e = Probe::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn hex_dumps_read_in_the_usual_forms() {
        let want = vec![0xff, 0xff, 0x02, 0x00, 0x08, 0x06];
        for text in [
            "ffff02000806",
            "ff ff 02 00 08 06",
            "0x0000:  ffff 0200 0806",
            "00000000: ffff 0200 0806  ......",
        ] {
            assert_eq!(from_hex(text).unwrap(), want, "{text}");
        }
        assert!(from_hex("abc").is_err());
        assert!(from_hex("").is_err());
    }
}
