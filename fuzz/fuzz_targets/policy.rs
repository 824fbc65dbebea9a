//! Network policy against arbitrary rule sets and frames.
//!
//! 1. The classifier: rules of the three tiers (peers in 10.0.0.0/26 and fd00::/122, port
//!    ranges in 0..64, actions, isolation) built from the input, compiled, and checked
//!    against rule-by-rule evaluation for every peer, protocol and port of a small grid.
//! 2. The pipeline: a switch of three ports whose port 0 has those rules as its ingress and
//!    whose port 1 has them as its egress. An arbitrary frame received on port 1 (or port 2)
//!    must never reach port 0 when the rules deny it: a denied packet never leaves.
//!
//! Input: byte 0: rule count (mod 9) and flags (bit 4: isolated; bit 5: the frame comes in
//! on port 2; bit 6: the frame's source MAC is the learned one of its port); then 6 bytes per
//! rule (tier and action, peer address, peer length, protocol, port, range); then the frame.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::pipeline::egress::{Output, Sent, Transmit};
use tapswitch_dataplane::pipeline::offload::Offload;
use tapswitch_dataplane::pipeline::parse::parse;
use tapswitch_dataplane::pipeline::{
    ForwardingState, Pipeline, PortMode, PortState, RxMeta, WorkerCounters,
};
use tapswitch_dataplane::tables::policy::{
    Action, Applied, Block, Classifier, Direction, PolicyTable, PortMatch, PortPolicy, Rule,
    RuleMeta, Tier, PROTO_SCTP,
};
use tapswitch_dataplane::tables::{PortId, Timestamp};
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

const RULE_LEN: usize = 6;
const PROTOS: [u8; 4] = [6, 17, PROTO_SCTP, 1];

fn mac(i: u8) -> EthernetAddress {
    EthernetAddress([2, 0, 0, 0, 0, i + 1])
}

fn rule(b: &[u8], i: usize) -> (Tier, Rule) {
    let tier = [Tier::Admin, Tier::Policy, Tier::Baseline][usize::from(b[0] % 3)];
    let action = match tier {
        Tier::Admin => [Action::Allow, Action::Deny, Action::Pass][usize::from(b[0] / 3 % 3)],
        Tier::Policy => Action::Allow,
        Tier::Baseline => [Action::Allow, Action::Deny][usize::from(b[0] / 3 % 2)],
    };
    let peers = (b[2] & 0x80 == 0).then(|| {
        let len = 26 + b[2] % 7;
        let v4 = Block::cidr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, b[1] % 64)), len);
        let v6 = Block::cidr(
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                0,
                u16::from(b[1] % 64),
            )),
            122 + len - 26,
        );
        let mut blocks = vec![v4, v6];
        if b[2] & 0x40 != 0 {
            let hole = Block::cidr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, b[1] / 4 % 64)), 31);
            if v4.covers(&hole) {
                blocks = v4.except(&[hole]);
                blocks.push(v6);
            }
        }
        Arc::from(blocks)
    });
    let ports: Vec<PortMatch> = if b[3] % 4 == 3 {
        Vec::new()
    } else {
        let lo = u16::from(b[4] % 64);
        vec![PortMatch {
            proto: PROTOS[usize::from(b[3] % 3)],
            lo,
            hi: lo + u16::from(b[5] % 8),
        }]
    };
    let meta = Arc::new(RuleMeta {
        tier,
        policy: format!("p{i}"),
        direction: Direction::Ingress,
        index: i,
        action,
        hits: AtomicU64::new(0),
    });
    (
        tier,
        Rule {
            action,
            peers,
            ports: Arc::from(ports),
            meta,
        },
    )
}

/// The tiers' semantics, rule by rule.
fn reference(a: &Applied<'_>, peer: IpAddr, proto: u8, port: Option<u16>) -> bool {
    let m = |r: &Rule| {
        r.peers
            .as_ref()
            .is_none_or(|b| b.iter().any(|b| b.contains(peer)))
            && (r.ports.is_empty()
                || port.is_some_and(|p| {
                    r.ports
                        .iter()
                        .any(|m| m.proto == proto && m.lo <= p && p <= m.hi)
                }))
    };
    for r in &a.admin {
        if m(r) {
            match r.action {
                Action::Allow => return true,
                Action::Deny => return false,
                Action::Pass => break,
            }
        }
    }
    if !a.isolating.is_empty() {
        return a.policy.iter().any(|r| m(r));
    }
    a.baseline
        .iter()
        .find(|r| m(r))
        .is_none_or(|r| r.action == Action::Allow)
}

/// Counts what goes to port 0.
#[derive(Default)]
struct ToPortZero(usize);

impl Output for ToPortZero {
    fn takes_offloads(&self, _: PortId, _: &Offload) -> bool {
        true
    }

    fn send(&mut self, t: Transmit<'_>) -> Sent {
        if let Transmit::Device {
            port: PortId(0), ..
        } = t
        {
            self.0 += 1;
        }
        Sent::one(t.len())
    }
}

/// The peer, protocol and destination port the policy stage matches a frame's packet by,
/// when it is an IPv4 or IPv6 TCP, UDP or SCTP packet that is not a fragment (`None`: not
/// one the check below can judge alone).
fn judged(frame: &[u8]) -> Option<(IpAddr, IpAddr, u8, u16)> {
    let h = parse(frame).ok()?;
    let off = h.inner_offset;
    let ip = frame.get(off + 2..)?;
    match frame.get(off..off + 2)? {
        [8, 0] => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if ip.len() < 20 || ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl + 4 {
                return None;
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            let proto = ip[9];
            if !matches!(proto, 6 | 17 | 132) {
                return None;
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            let dport = u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]);
            if proto == 17 && dport == 67 && u16::from_be_bytes([ip[ihl], ip[ihl + 1]]) == 68 {
                return None;
            }
            Some((src.into(), dst.into(), proto, dport))
        }
        [0x86, 0xdd] => {
            if ip.len() < 44 || ip[0] >> 4 != 6 || !matches!(ip[6], 6 | 17 | 132) {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            let dport = u16::from_be_bytes([ip[42], ip[43]]);
            if ip[6] == 17 && dport == 547 && u16::from_be_bytes([ip[40], ip[41]]) == 546 {
                return None;
            }
            Some((src.into(), dst.into(), ip[6], dport))
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(flags & 0x0f) % 9;
    if rest.len() < n * RULE_LEN {
        return;
    }
    let (rule_bytes, frame) = rest.split_at(n * RULE_LEN);
    let rules: Vec<(Tier, Rule)> = rule_bytes
        .chunks(RULE_LEN)
        .enumerate()
        .map(|(i, b)| rule(b, i))
        .collect();
    let pick = |t: Tier| rules.iter().filter(move |(x, _)| *x == t).map(|(_, r)| r);
    let applied = Applied {
        admin: pick(Tier::Admin).collect(),
        isolating: if flags & 0x10 != 0 {
            vec!["p".into()]
        } else {
            Vec::new()
        },
        policy: pick(Tier::Policy).collect(),
        baseline: pick(Tier::Baseline).collect(),
    };
    let c = Arc::new(Classifier::compile(&applied));

    // 1. The classifier agrees with the rules on a grid.
    for a in (0..70u8).step_by(3) {
        for peer in [
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, a)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(a))),
        ] {
            for proto in PROTOS {
                for port in (0..72u16).step_by(5) {
                    let got = c.classify(peer, proto, Some(port)).allowed();
                    assert_eq!(
                        got,
                        reference(&applied, peer, proto, Some(port)),
                        "{peer} {proto} {port}"
                    );
                }
            }
        }
    }

    // 2. A denied packet never reaches port 0.
    let ports = (0..3u8)
        .map(|i| {
            Some(PortState {
                name: format!("p{i}"),
                mode: PortMode::Access(VlanId::DEFAULT),
                mtu: 9000,
                max_macs: u32::MAX,
            })
        })
        .collect();
    let mut state = ForwardingState::with_ports(ports);
    // Small tables: a pipeline is made for every input.
    state.mac_table_max = 64;
    state.nat.conntrack_max = 64;
    let mut table = PolicyTable {
        ports: vec![PortPolicy::default(); 3],
        active: true,
    };
    table.ports[0].ingress = Some(Arc::clone(&c));
    table.ports[1].egress = Some(Arc::clone(&c));
    state.set_policy(Arc::new(table));
    let mut pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
    let now = Timestamp::from_secs(1);
    // Port 0's MAC learned: frames to it are known unicast.
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(mac(0).as_bytes());
    arp.extend_from_slice(&[8, 6]);
    arp.resize(60, 0);
    pipeline.decide(&state, PortId(0), &mut arp, now);
    let from = if flags & 0x20 != 0 { 2 } else { 1 };
    let mut frame = frame.to_vec();
    if flags & 0x40 != 0 && frame.len() >= 12 {
        frame[..6].copy_from_slice(mac(0).as_bytes());
        frame[6..12].copy_from_slice(mac(from).as_bytes());
    }
    let judge = judged(&frame);
    let mut out = ToPortZero::default();
    let meta = RxMeta {
        len: frame.len(),
        ..RxMeta::default()
    };
    pipeline.receive(
        &state,
        PortId(u16::from(from)),
        &mut frame,
        &meta,
        now,
        &mut out,
    );
    if out.0 == 0 {
        return;
    }
    let Some((src, dst, proto, dport)) = judge else {
        return;
    };
    // To port 0, the packet passed port 0's ingress rules (peer: its source) and, from
    // port 1, port 1's egress rules (peer: its destination).
    assert!(
        reference(&applied, src, proto, Some(dport)),
        "denied packet from {src} reached port 0"
    );
    if from == 1 {
        assert!(
            reference(&applied, dst, proto, Some(dport)),
            "denied packet to {dst} left port 1"
        );
    }
});
