//! Network policy: what a new connection's first packet costs with 10, 1k and 10k rules over
//! 1k ports, what an established connection's packet costs, and what one policy change costs
//! with 10k rules present.
//!
//! Setup. 1000 access ports of VLAN 1, port `i` with the label `app=a<i>` and the address
//! `10.1.<i / 256>.<i % 256>`, its MAC learned. Rules come in two shapes:
//!
//! - `spread`: `n` policies, policy `j` isolating port `j % 1000` with one ingress rule (a /32
//!   peer and a port range of its own): with 10k rules each port has 10. This is a cluster's
//!   shape: many policies, each about a few workloads.
//! - `one_port`: one policy with `n` rules, all on port 0: the worst case for one lookup.
//!
//! In both, port 0 also allows UDP port 53 from 10.0.0.0/8, so the measured packets (UDP from
//! port 1, `10.1.0.1`, to port 0, `10.1.0.0:53`, a new source port each) are allowed.
//!
//! `policy/first_packet/*`: `Pipeline::decide` of a packet of a new connection: the L2
//! decision, the policy stage (both ports' classifiers), and the conntrack insert that caches
//! the verdict. The conntrack table is emptied between batches, outside the measurement.
//! `policy/first_packet/none` is the same packet with no policy at all (no conntrack either).
//! `policy/established/*`: a packet of a connection already allowed (one conntrack lookup).
//! `policy/change/*`: one policy replaced (a changed rule, on one port) with `n` rules present,
//! through the control side's `PolicyState` (resolve, compile, the new table).
//!
//! Run with `cargo bench --bench policy`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tapswitch_control::config::policy::{PolicyConfig, Tier};
use tapswitch_control::switch::policy::{PolicyState, PortView};
use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Pipeline, PortMode, PortState, WorkerCounters,
};
use tapswitch_dataplane::tables::{PortId, Timestamp};
use tapswitch_dataplane::wire::builder::ethernet_frame;
use tapswitch_dataplane::wire::{EtherType, EthernetAddress, VlanId};

const PORTS: usize = 1000;
const NOW: Timestamp = Timestamp::from_secs(1);
const RULES: [(&str, usize); 3] = [("10", 10), ("1k", 1_000), ("10k", 10_000)];
/// Connections per batch (new source ports).
const BATCH: u16 = 20_000;

fn mac(i: usize) -> EthernetAddress {
    EthernetAddress::from_u64(0x02_00_00_00_00_00 | i as u64)
}

fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, (i / 256) as u8, (i % 256) as u8)
}

/// An untagged IPv4/UDP frame from port `from`'s host to port `to`'s, `sport` to 53.
fn udp_frame(from: usize, to: usize, sport: u16) -> Vec<u8> {
    let mut ip = vec![0u8; 20 + 8 + 22];
    let total = ip.len() as u16;
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&addr(from).octets());
    ip[16..20].copy_from_slice(&addr(to).octets());
    ip[20..22].copy_from_slice(&sport.to_be_bytes());
    ip[22..24].copy_from_slice(&53u16.to_be_bytes());
    ip[24..26].copy_from_slice(&30u16.to_be_bytes());
    ethernet_frame(mac(to), mac(from), None, EtherType::Ipv4, &ip)
}

fn views() -> Vec<Option<PortView>> {
    (0..PORTS)
        .map(|i| {
            Some(PortView {
                labels: BTreeMap::from([("app".to_string(), format!("a{i}"))]),
                addresses: vec![IpAddr::V4(addr(i))],
            })
        })
        .collect()
}

fn policy(text: &str) -> PolicyConfig {
    PolicyConfig::from_toml(text).expect("a policy")
}

/// Rule `j`: from its own /32, to its own port range.
fn rule(j: usize) -> String {
    format!(
        "[[ingress]]\nfrom = [ {{ cidr = \"172.{}.{}.{}/32\" }} ]\nports = [ {{ protocol = \"tcp\", port = {}, end_port = {} }} ]\n",
        16 + (j / 65536) % 16,
        (j / 256) % 256,
        j % 256,
        1000 + j % 5000,
        1000 + j % 5000 + 10
    )
}

const ALLOW_DNS: &str =
    "[[ingress]]\nfrom = [ { cidr = \"10.0.0.0/8\" } ]\nports = [ { protocol = \"udp\", port = 53 } ]\n";

/// The policies of a shape with `n` rules in all.
fn shape(spread: bool, n: usize) -> Vec<PolicyConfig> {
    if spread {
        (0..n)
            .map(|j| {
                let extra = if j == 0 { ALLOW_DNS } else { "" };
                let text = format!(
                    "name = \"p{j}\"\nselect = {{ app = \"a{}\" }}\n{}{extra}",
                    j % PORTS,
                    rule(j)
                );
                policy(&text)
            })
            .collect()
    } else {
        let rules: String = (0..n - 1).map(rule).collect();
        vec![policy(&format!(
            "name = \"all\"\nselect = {{ app = \"a0\" }}\n{ALLOW_DNS}{rules}"
        ))]
    }
}

fn compiled(policies: &[PolicyConfig]) -> PolicyState {
    let mut ps = PolicyState::default();
    ps.sync_ports(views());
    let specs = policies
        .iter()
        .map(|p| p.validate(Tier::Policy, &p.name).expect("valid"))
        .collect();
    ps.set_policies(specs);
    ps
}

struct Setup {
    state: ForwardingState,
    pipeline: Pipeline,
}

fn setup(policy: Option<&PolicyState>) -> Setup {
    let ports = (0..PORTS)
        .map(|p| {
            Some(PortState {
                name: format!("p{p}"),
                mode: PortMode::Access(VlanId::DEFAULT),
                mtu: 1500,
                max_macs: u32::MAX,
            })
        })
        .collect();
    let mut state = ForwardingState::with_ports(ports);
    state.nat.conntrack_max = 1 << 20;
    if let Some(ps) = policy {
        state.set_policy(Arc::clone(ps.table()));
    }
    let mut pipeline = Pipeline::new(&state, Arc::new(WorkerCounters::default()));
    for i in 0..2 {
        let mut f = ethernet_frame(
            EthernetAddress::BROADCAST,
            mac(i),
            None,
            EtherType::Arp,
            &[0; 46],
        );
        pipeline.decide(&state, PortId(i as u16), &mut f, NOW);
    }
    Setup { state, pipeline }
}

fn forwards(d: &Decision<'_>) -> bool {
    matches!(d, Decision::Forward(_))
}

fn bench(c: &mut Criterion) {
    let frames: Vec<Vec<u8>> = (0..BATCH).map(|s| udp_frame(1, 0, 10_000 + s)).collect();
    let mut g = c.benchmark_group("policy/first_packet");
    g.measurement_time(Duration::from_secs(3));
    let run = |g: &mut criterion::BenchmarkGroup<_>, id: BenchmarkId, ps: Option<&PolicyState>| {
        let mut s = setup(ps);
        let mut frames = frames.clone();
        // Each frame allowed (the shape allows it) and forwarded to port 0.
        for f in frames.iter_mut().take(3) {
            let mut copy = f.clone();
            assert!(forwards(&s.pipeline.decide(
                &s.state,
                PortId(1),
                &mut copy,
                NOW
            )));
        }
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    s.pipeline.conntrack().remove_where(|_| true);
                    let n = (iters - done).min(u64::from(BATCH)) as usize;
                    let t = Instant::now();
                    for f in frames.iter_mut().take(n) {
                        black_box(s.pipeline.decide(&s.state, PortId(1), f, NOW));
                    }
                    total += t.elapsed();
                    done += n as u64;
                }
                total
            })
        });
    };
    run(&mut g, BenchmarkId::new("none", "0"), None);
    for (spread, name) in [(true, "spread"), (false, "one_port")] {
        for (label, n) in RULES {
            let ps = compiled(&shape(spread, n));
            run(&mut g, BenchmarkId::new(name, label), Some(&ps));
        }
    }
    g.finish();

    let mut g = c.benchmark_group("policy/established");
    g.measurement_time(Duration::from_secs(3));
    for (label, n) in RULES {
        let ps = compiled(&shape(true, n));
        let mut s = setup(Some(&ps));
        let mut f = udp_frame(1, 0, 9999);
        assert!(forwards(&s.pipeline.decide(
            &s.state,
            PortId(1),
            &mut f.clone(),
            NOW
        )));
        g.bench_function(BenchmarkId::new("spread", label), |b| {
            b.iter(|| black_box(s.pipeline.decide(&s.state, PortId(1), &mut f, NOW)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("policy/change");
    g.measurement_time(Duration::from_secs(3));
    for (spread, name) in [(true, "spread"), (false, "one_port")] {
        for (label, n) in RULES {
            let mut ps = compiled(&shape(spread, n));
            // Replaces one spread policy (on port 5) with a changed rule, back and forth.
            let versions = [5usize, 6].map(|k| {
                policy(&format!(
                    "name = \"p5\"\nselect = {{ app = \"a5\" }}\n{}",
                    rule(k)
                ))
                .validate(Tier::Policy, "p5")
                .expect("valid")
            });
            let mut i = 0;
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| {
                    i += 1;
                    ps.add(versions[i % 2].clone());
                    black_box(ps.table());
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
