//! The `scenario` target's inputs: a switch built from an `arbitrary` description (ports and
//! their modes, static FDB entries, VXLAN ports with their peers, ARP/ND suppression
//! entries, and no router, the router of [`crate::router`] or the router and NAT rules of
//! [`crate::nat`]), then a batch of steps run through the real pipeline: structure-aware
//! frames ([`crate::frame`]) on a port, VXLAN packets from a peer, raw frames, a port changed
//! or removed and the state republished (as control does), the clock moved with the timer
//! work and MAC aging.
//!
//! Every decision goes through the checks of [`crate::router::check`] (and, with NAT rules,
//! [`crate::nat::check_nat`]), and here also: a switched frame never goes back out of its
//! ingress port (only a routed one may), and a frame sent into a VXLAN port gets outer
//! headers whose lengths add up.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arbitrary::Arbitrary;
use tapswitch_dataplane::pipeline::{
    Decision, ForwardingState, Ipv4Prefix, Pipeline, PortMode, PortState, RoutingState,
    TunnelEndpoint, VlanSet, VxlanPort, WorkerCounters,
};
use tapswitch_dataplane::tables::{FdbKey, NatRules, PortId, Timestamp};
use tapswitch_dataplane::wire::VlanId;

use crate::frame::{self, FrameSpec, Mac, VniChoice, VxlanSpec, V4, V6};
use crate::nat::{check_nat, Input, CONNTRACK_MAX};
use crate::router::{check, Sim, NEIGH_MAX};

/// Bounds on what an input may describe, so that one input stays cheap.
pub const MAX_PORTS: usize = 6;
pub const MAX_STEPS: usize = 24;
const MAX_FDB: usize = 4;
const MAX_VXLAN: usize = 3;
const MAX_NEIGHBOURS: usize = 4;

/// The local address of the VXLAN endpoints.
pub const VTEP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

const MTUS: [u16; 6] = [1500, 1280, 9000, 576, 1450, 68];

/// A VLAN a port or an entry is configured with.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum VlanChoice {
    /// One of 10, 20, 100 (the routed VLANs), 1, 30 (routed to, without interface), 4094.
    Known(u8),
    Raw(u16),
}

impl VlanChoice {
    pub fn get(self) -> VlanId {
        const KNOWN: [u16; 6] = [10, 20, 100, 1, 30, 4094];
        let v = match self {
            VlanChoice::Known(i) => KNOWN[usize::from(i) % KNOWN.len()],
            VlanChoice::Raw(v) => v % VlanId::MAX + 1,
        };
        VlanId::new(v).expect("within 1..=4094")
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum ModeSpec {
    Access(VlanChoice),
    Trunk {
        allowed: Vec<VlanChoice>,
        native: Option<VlanChoice>,
    },
}

#[derive(Arbitrary, Debug, Clone)]
pub struct PortSpec {
    pub mode: ModeSpec,
    pub mtu: u8,
    /// 0: no limit.
    pub max_macs: u8,
}

impl PortSpec {
    fn state(&self, i: usize) -> PortState {
        let mode = match &self.mode {
            ModeSpec::Access(v) => PortMode::Access(v.get()),
            ModeSpec::Trunk { allowed, native } => PortMode::Trunk {
                allowed: allowed.iter().take(4).map(|v| v.get()).collect::<VlanSet>(),
                native: native.map(VlanChoice::get),
            },
        };
        PortState {
            name: format!("p{i}"),
            mode,
            mtu: MTUS[usize::from(self.mtu) % MTUS.len()],
            max_macs: if self.max_macs == 0 {
                u32::MAX
            } else {
                u32::from(self.max_macs)
            },
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum L3Choice {
    None,
    /// The router of [`crate::router`].
    Router,
    /// The router and NAT rules of [`crate::nat`].
    Nat,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FdbSpec {
    pub mac: Mac,
    pub vlan: VlanChoice,
    pub port: u8,
    /// For a VXLAN port: the peer the entry lives behind (`None`: its first remote).
    pub remote: Option<V4>,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct VxlanPortSpec {
    pub port: u8,
    pub vni: VniChoice,
    /// The Linux default port 8472 instead of 4789.
    pub linux_port: bool,
    pub remotes: Vec<V4>,
    pub learning: bool,
    pub allow: Vec<(V4, u8)>,
    pub ttl: u8,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum NeighbourAddr {
    V4(V4),
    V6(V6),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct NeighbourSpec {
    pub vlan: VlanChoice,
    pub addr: NeighbourAddr,
    pub mac: Mac,
}

/// The switch of a scenario.
#[derive(Arbitrary, Debug, Clone)]
pub struct Setup {
    /// At most [`MAX_PORTS`]; `None` leaves a hole (an id without a port).
    pub ports: Vec<Option<PortSpec>>,
    pub l3: L3Choice,
    pub static_fdb: Vec<FdbSpec>,
    pub vxlan: Vec<VxlanPortSpec>,
    pub neighbours: Vec<NeighbourSpec>,
    pub mac_table_max: u8,
    pub mac_aging_s: u8,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// A frame received on a port (ids past the last port included).
    Frame {
        port: u8,
        clock: u8,
        frame: FrameSpec,
    },
    /// A VXLAN packet received by one of the endpoints from `src`.
    Tunnel {
        endpoint: u8,
        src: V4,
        clock: u8,
        packet: VxlanSpec,
    },
    /// Raw bytes received on a port.
    Raw { port: u8, clock: u8, bytes: Vec<u8> },
    /// A port changed (or removed) and the state republished.
    Reconfigure { port: u8, spec: Option<PortSpec> },
    /// The clock moved (`Sim::advance`: timer work, and MAC aging at 0xff).
    Advance(u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Scenario {
    pub setup: Setup,
    /// At most [`MAX_STEPS`].
    pub steps: Vec<Step>,
}

/// The routing states (none, the router's, NAT's) and the rules of each, built once: Maglev
/// tables are not cheap, and small table bounds keep `Pipeline::new` cheap too.
struct L3States {
    none: Arc<RoutingState>,
    router: Arc<RoutingState>,
    nat_router: Arc<RoutingState>,
    no_rules: NatRules,
    rules: NatRules,
}

thread_local! {
    /// Counters are large (per port and per VLAN) and only ever added to: one set serves
    /// every input.
    static COUNTERS: Arc<WorkerCounters> = Arc::new(WorkerCounters::default());
    static L3: L3States = {
        let no_rules = NatRules {
            conntrack_max: CONNTRACK_MAX,
            ..NatRules::default()
        };
        L3States {
            none: Arc::new(
                RoutingState::build(Vec::new(), Vec::new(), NEIGH_MAX).expect("no routes"),
            ),
            router: Arc::new(crate::router::routing()),
            nat_router: Arc::new(crate::nat::routing()),
            no_rules,
            rules: crate::nat::nat_rules(),
        }
    };
}

fn l3_state(choice: L3Choice) -> (Arc<RoutingState>, NatRules) {
    L3.with(|l3| match choice {
        L3Choice::None => (Arc::clone(&l3.none), l3.no_rules.clone()),
        L3Choice::Router => (Arc::clone(&l3.router), l3.no_rules.clone()),
        L3Choice::Nat => (Arc::clone(&l3.nat_router), l3.rules.clone()),
    })
}

/// Builds the forwarding state of `setup`, as control would publish it.
pub fn state(setup: &Setup) -> ForwardingState {
    let mut ports: Vec<Option<PortState>> = setup
        .ports
        .iter()
        .take(MAX_PORTS)
        .enumerate()
        .map(|(i, p)| p.as_ref().map(|p| p.state(i)))
        .collect();
    if ports.iter().all(Option::is_none) {
        ports.push(Some(PortState {
            name: "a".into(),
            mode: PortMode::Access(VlanId::new(10).expect("vlan")),
            mtu: 1500,
            max_macs: u32::MAX,
        }));
    }
    let n = ports.len();
    let mut s = ForwardingState::with_ports(ports);
    s.mac_table_max = 1 + usize::from(setup.mac_table_max % 64);
    s.mac_aging_ms = 1_000 * (1 + u64::from(setup.mac_aging_s % 10));
    let (routing, nat) = l3_state(setup.l3);
    s.routing = routing;
    s.nat = nat;
    s.vxlan = vec![None; n];
    for v in setup.vxlan.iter().take(MAX_VXLAN) {
        let port = usize::from(v.port) % n;
        if s.ports[port].is_none() || s.vxlan[port].is_some() {
            continue;
        }
        let endpoint = TunnelEndpoint {
            local: VTEP,
            port: if v.linux_port { 8472 } else { 4789 },
        };
        let vni = v.vni.get();
        if s.vni_ports.contains_key(&(endpoint, vni)) {
            continue;
        }
        let mut remotes: Vec<Ipv4Addr> = v.remotes.iter().take(3).map(|r| r.get()).collect();
        if remotes.is_empty() {
            remotes.push(Ipv4Addr::new(192, 168, 77, 2));
        }
        s.vxlan[port] = Some(VxlanPort {
            vni,
            endpoint,
            remotes,
            learning: v.learning,
            allow: v
                .allow
                .iter()
                .take(2)
                .map(|(a, len)| Ipv4Prefix {
                    addr: a.get(),
                    len: len % 33,
                })
                .collect(),
            ttl: v.ttl.max(1),
        });
        s.vni_ports.insert((endpoint, vni), PortId(port as u16));
    }
    for f in setup.static_fdb.iter().take(MAX_FDB) {
        let port = usize::from(f.port) % n;
        if s.ports[port].is_none() {
            continue;
        }
        let key = FdbKey::new(f.vlan.get(), f.mac.get());
        s.static_fdb.insert(key, PortId(port as u16));
        if let Some(vx) = &s.vxlan[port] {
            let remote = f.remote.map(V4::get).unwrap_or(vx.remotes[0]);
            s.static_remotes.insert(key, remote);
        }
    }
    for nb in setup.neighbours.iter().take(MAX_NEIGHBOURS) {
        let addr = match nb.addr {
            NeighbourAddr::V4(a) => IpAddr::V4(a.get()),
            NeighbourAddr::V6(a) => IpAddr::V6(a.get()),
        };
        s.neighbours.insert((nb.vlan.get(), addr), nb.mac.get());
    }
    s
}

/// Changes (or removes) port `port` of `state` as control would: a removed port takes its
/// VXLAN endpoint and static entries with it; then the VLAN flood lists are rebuilt and the
/// generation moves on.
pub fn reconfigure(state: &mut ForwardingState, port: u8, spec: Option<&PortSpec>) {
    let n = state.ports.len();
    let i = usize::from(port) % n;
    let id = PortId(i as u16);
    match spec {
        Some(spec) => state.ports[i] = Some(spec.state(i)),
        None => {
            state.ports[i] = None;
            state.vxlan[i] = None;
            state.vni_ports.retain(|_, p| *p != id);
            let gone: Vec<FdbKey> = state
                .static_fdb
                .iter()
                .filter(|(_, p)| **p == id)
                .map(|(k, _)| *k)
                .collect();
            for key in gone {
                state.static_fdb.remove(&key);
                state.static_remotes.remove(&key);
            }
        }
    }
    // A static entry whose port left the entry's VLAN stays, as control keeps it (the
    // pipeline must cope); remote entries of a port no longer a VXLAN port go.
    let remotes: Vec<FdbKey> = state
        .static_remotes
        .keys()
        .filter(|k| {
            state
                .static_fdb
                .get(*k)
                .is_none_or(|p| state.vxlan_port(*p).is_none())
        })
        .copied()
        .collect();
    for key in remotes {
        state.static_remotes.remove(&key);
    }
    state.rebuild_vlan_members();
    state.generation += 1;
}

/// The switch of `setup` in a [`Sim`].
pub fn sim(setup: &Setup) -> Sim {
    let state = state(setup);
    let mut pipeline = Pipeline::new(&state, COUNTERS.with(Arc::clone));
    pipeline.adopt(&state);
    Sim {
        state,
        pipeline,
        clock_ms: 1_000,
    }
}

/// Whether `mac` is one of the router's interface MACs.
fn is_router_mac(state: &ForwardingState, mac: &[u8]) -> bool {
    [10u16, 20, 100].iter().any(|&v| {
        VlanId::new(v)
            .and_then(|v| state.routing.interface(v))
            .is_some_and(|iface| iface.mac.as_bytes()[..] == *mac)
    })
}

/// The checks of this module on a decision about `frame` (as it is after the decision) from
/// `ingress`: no switched frame back out of its ingress port, and outer headers for every
/// copy sent into a VXLAN port.
fn check_egress(
    state: &ForwardingState,
    pipeline: &mut Pipeline,
    decision: Decision<'_>,
    ingress: PortId,
    frame: &[u8],
    now: Timestamp,
) {
    let Decision::Forward(egress) = decision else {
        return;
    };
    for member in egress.ports() {
        if member.port == ingress {
            assert!(
                frame.len() >= 12 && is_router_mac(state, &frame[6..12]),
                "a switched frame went back out of its ingress port"
            );
        }
        if state.vxlan_port(member.port).is_some() {
            let out = egress.frame_for(member, frame).to_vec();
            pipeline.encapsulate(state, member.port, &out, out.len(), now, |_, h, _| {
                let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
                assert_eq!(total, h.len() + out.len(), "outer length of a VXLAN packet");
            });
        }
    }
}

/// Runs `frame` from `ingress` through the pipeline and every check.
fn run_frame(sim: &mut Sim, nat: bool, ingress: PortId, frame: Vec<u8>, now: Timestamp) {
    let Sim {
        state, pipeline, ..
    } = sim;
    let input = Input::new(ingress, frame);
    let mut frame = input.frame.clone();
    let decision = pipeline.decide(state, ingress, &mut frame, now);
    if nat {
        check_nat(pipeline, decision, &input, &frame);
    }
    check_egress(state, pipeline, decision, ingress, &frame, now);
    check(state, pipeline, decision, Some(ingress), &frame, now);
}

/// Runs the steps of `scenario` on its switch.
pub fn run(scenario: &Scenario) {
    let mut sim = sim(&scenario.setup);
    let nat = matches!(scenario.setup.l3, L3Choice::Nat);
    let endpoints: Vec<TunnelEndpoint> = sim.state.vni_ports.keys().map(|(e, _)| *e).collect();
    let ports = sim.state.ports.len() as u16;
    for step in scenario.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Frame { port, clock, frame } => {
                let now = sim.advance(*clock);
                let port = PortId(u16::from(*port) % (ports + 1));
                run_frame(&mut sim, nat, port, frame::build(frame).frame, now);
            }
            Step::Raw { port, clock, bytes } => {
                let now = sim.advance(*clock);
                let port = PortId(u16::from(*port) % (ports + 1));
                run_frame(&mut sim, nat, port, bytes.clone(), now);
            }
            Step::Tunnel {
                endpoint,
                src,
                clock,
                packet,
            } => {
                let now = sim.advance(*clock);
                let endpoint = endpoints
                    .get(usize::from(*endpoint) % endpoints.len().max(1))
                    .copied()
                    .unwrap_or(TunnelEndpoint {
                        local: VTEP,
                        port: 4789,
                    });
                let mut payload = frame::build_vxlan(packet, 0);
                let Sim {
                    state, pipeline, ..
                } = &mut sim;
                let Ok((port, inner)) =
                    pipeline.decap(state, endpoint, src.get(), &mut payload, now)
                else {
                    continue;
                };
                assert!(
                    state.vxlan_port(port).is_some(),
                    "decap lands on a VNI port"
                );
                let inner = inner.to_vec();
                run_frame(&mut sim, nat, port, inner, now);
            }
            Step::Reconfigure { port, spec } => {
                let Sim {
                    state, pipeline, ..
                } = &mut sim;
                reconfigure(state, *port, spec.as_ref());
                pipeline.adopt(state);
            }
            Step::Advance(step) => {
                sim.advance(*step);
            }
        }
        let Sim {
            state, pipeline, ..
        } = &sim;
        assert!(pipeline.mac_table().len() <= state.mac_table_max);
        assert!(pipeline.remote_table().len() <= state.mac_table_max);
    }
}
