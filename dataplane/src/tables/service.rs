//! NAT rules and Services as the dataplane reads them: source NAT rules, and one hash map of
//! frontends (a port forward, a Service's ClusterIP, a Service's NodePort) to what they
//! translate to.
//!
//! A Service is compiled once, when control changes it: its backends, and for the Maglev and
//! source-hash schedulers a lookup table (Maglev, NSDI 2016) whose size is a prime at least a
//! hundred times the number of active backends. Choosing a backend for a new connection is
//! then one hash and one table read; removing one backend moves only the flows that were on
//! it (and about 1/N of the others), so choices stay stable while backends come and go.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::shard_map::ShardMap;
use crate::wire::VlanId;

/// IP protocol numbers NAT rules name.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// What a translated connection is addressed to: (protocol, address, port). A NodePort is
/// keyed with the unspecified address: it matches every router interface address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub proto: u8,
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl Frontend {
    pub const fn node_port(proto: u8, port: u16) -> Frontend {
        Frontend {
            proto,
            addr: Ipv4Addr::UNSPECIFIED,
            port,
        }
    }
}

/// What a frontend translates to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A port forward to one address and port.
    Dnat(SocketAddrV4),
    /// A Service: a backend chosen per connection.
    Service(Arc<Service>),
}

/// One backend of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddrV4,
    /// Relative share of new connections; 0 drains the backend (it keeps its connections but
    /// gets no new ones).
    pub weight: u16,
}

/// How a Service picks a backend for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Consistent hashing of the connection's 5-tuple (Maglev).
    #[default]
    Maglev,
    /// Uniformly at random, in proportion to weight.
    Random,
    /// In turn, in proportion to weight.
    RoundRobin,
    /// The backend with the fewest tracked connections per unit of weight.
    LeastConn,
    /// Consistent hashing of the client address alone.
    SourceHash,
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::Random => "random",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::LeastConn => "least-conn",
            Scheduler::SourceHash => "source-hash",
        }
    }

    pub fn from_name(name: &str) -> Option<Scheduler> {
        Some(match name {
            "maglev" => Scheduler::Maglev,
            "random" => Scheduler::Random,
            "round-robin" | "rr" => Scheduler::RoundRobin,
            "least-conn" | "lc" => Scheduler::LeastConn,
            "source-hash" | "sh" => Scheduler::SourceHash,
            _ => return None,
        })
    }
}

/// A compiled Service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Stable for the Service's lifetime; tracked connections name their Service by it.
    pub id: u32,
    pub name: String,
    pub proto: u8,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub backends: Vec<Backend>,
    pub scheduler: Scheduler,
    /// ClientIP session affinity: how long a client stays with its backend.
    pub affinity_ms: Option<u64>,
    /// Indices of backends with a weight above zero, each repeated in proportion to weight
    /// (the round-robin and random wheel).
    wheel: Vec<u16>,
    /// The Maglev lookup table (indices into `backends`); empty without active backends.
    maglev: Vec<u16>,
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u32,
        name: String,
        proto: u8,
        vip: Ipv4Addr,
        port: u16,
        node_port: Option<u16>,
        backends: Vec<Backend>,
        scheduler: Scheduler,
        affinity_ms: Option<u64>,
    ) -> Service {
        let wheel = weighted_wheel(&backends);
        let maglev = match scheduler {
            Scheduler::Maglev | Scheduler::SourceHash => maglev_table(&backends),
            _ => Vec::new(),
        };
        Service {
            id,
            name,
            proto,
            vip,
            port,
            node_port,
            backends,
            scheduler,
            affinity_ms,
            wheel,
            maglev,
        }
    }

    pub fn frontend(&self) -> Frontend {
        Frontend {
            proto: self.proto,
            addr: self.vip,
            port: self.port,
        }
    }

    /// Whether any backend takes new connections.
    pub fn has_active_backends(&self) -> bool {
        !self.wheel.is_empty()
    }

    pub fn is_backend(&self, addr: SocketAddrV4) -> bool {
        self.backends.iter().any(|b| b.addr == addr)
    }

    /// The backend for a new connection with flow hash `flow` and client hash `client`, for
    /// the stateless schedulers; `counter` is the worker's round-robin position and `random`
    /// a fresh random number. `least` picks among active backends for least-conn.
    pub fn choose(
        &self,
        flow: u64,
        client: u64,
        counter: u64,
        random: u64,
        least: impl FnOnce(&[Backend]) -> Option<usize>,
    ) -> Option<SocketAddrV4> {
        if self.wheel.is_empty() {
            return None;
        }
        let i = match self.scheduler {
            Scheduler::Maglev => self.maglev[(flow % self.maglev.len() as u64) as usize],
            Scheduler::SourceHash => self.maglev[(client % self.maglev.len() as u64) as usize],
            Scheduler::RoundRobin => self.wheel[(counter % self.wheel.len() as u64) as usize],
            Scheduler::Random => self.wheel[(random % self.wheel.len() as u64) as usize],
            Scheduler::LeastConn => least(&self.backends)? as u16,
        };
        self.backends.get(usize::from(i)).map(|b| b.addr)
    }

    /// Bytes this Service takes in memory, roughly.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Service>()
            + self.name.len()
            + self.backends.capacity() * std::mem::size_of::<Backend>()
            + (self.wheel.capacity() + self.maglev.capacity()) * 2
    }
}

/// Backend indices repeated in proportion to weight (weights divided by their gcd, the wheel
/// at most 4096 long), interleaved so that consecutive picks spread.
fn weighted_wheel(backends: &[Backend]) -> Vec<u16> {
    let active: Vec<(usize, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| (i, u32::from(b.weight)))
        .collect();
    if active.is_empty() {
        return Vec::new();
    }
    let g = active.iter().fold(0, |g, &(_, w)| gcd(g, w));
    let mut weights: Vec<(usize, u32)> = active.iter().map(|&(i, w)| (i, w / g)).collect();
    let total: u32 = weights.iter().map(|w| w.1).sum();
    if total > 4096 {
        for w in &mut weights {
            w.1 = (u64::from(w.1) * 4096 / u64::from(total)).max(1) as u32;
        }
    }
    // Smooth weighted round robin (as nginx does): spreads each backend's turns evenly.
    let total: i64 = weights.iter().map(|w| i64::from(w.1)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut wheel = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (j, w) in weights.iter().enumerate() {
            current[j] += i64::from(w.1);
            if current[j] > current[best] {
                best = j;
            }
        }
        current[best] -= total;
        wheel.push(weights[best].0 as u16);
    }
    wheel
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Table sizes: primes, the smallest at least 100 times the active backends is used.
const MAGLEV_SIZES: [usize; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// The Maglev lookup table of the active backends (NSDI 2016, section 3.4), weighted: each
/// round a backend claims as many slots as its (gcd-reduced) weight.
pub fn maglev_table(backends: &[Backend]) -> Vec<u16> {
    let active: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    if active.is_empty() {
        return Vec::new();
    }
    let g = active
        .iter()
        .fold(0, |g, &i| gcd(g, u32::from(backends[i].weight)));
    let m = *MAGLEV_SIZES
        .iter()
        .find(|&&m| m >= active.len() * 100)
        .unwrap_or(&MAGLEV_SIZES[MAGLEV_SIZES.len() - 1]);
    let perms: Vec<(u64, u64)> = active
        .iter()
        .map(|&i| {
            let b = backends[i].addr;
            let key = u64::from(u32::from(*b.ip())) << 16 | u64::from(b.port());
            let offset = mix(key ^ 0x9e37_79b9_7f4a_7c15) % m as u64;
            let skip = mix(key ^ 0xc2b2_ae3d_27d4_eb4f) % (m as u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let turns: Vec<u32> = active
        .iter()
        .map(|&i| u32::from(backends[i].weight) / g)
        .collect();
    let mut next = vec![0u64; active.len()];
    let mut table = vec![u16::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for (j, &(offset, skip)) in perms.iter().enumerate() {
            for _ in 0..turns[j] {
                let mut c = ((offset + next[j] * skip) % m as u64) as usize;
                while table[c] != u16::MAX {
                    next[j] += 1;
                    c = ((offset + next[j] * skip) % m as u64) as usize;
                }
                table[c] = active[j] as u16;
                next[j] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

/// A 64-bit mixer (splitmix64's finaliser): fixed, so every worker and every restart agrees.
#[inline]
pub const fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A source NAT rule: connections from `source` leaving through the router interface of
/// `out_vlan` get the source address `to`, or the interface's own address (masquerade).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatRule {
    pub source: Ipv4Addr,
    pub source_len: u8,
    pub out_vlan: VlanId,
    pub to: Option<Ipv4Addr>,
    /// Destinations in this prefix keep their source (flannel's "pod to pod: no NAT").
    pub except: Option<(Ipv4Addr, u8)>,
}

fn in_prefix(addr: Ipv4Addr, prefix: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(addr) & mask == u32::from(prefix) & mask
}

impl SnatRule {
    /// Whether a connection from `src` to `dst` leaving through `out_vlan` is translated.
    pub fn matches(&self, src: Ipv4Addr, dst: Ipv4Addr, out_vlan: VlanId) -> bool {
        out_vlan == self.out_vlan
            && in_prefix(src, self.source, self.source_len)
            && !self.except.is_some_and(|(p, l)| in_prefix(dst, p, l))
    }
}

/// The NAT configuration the pipeline reads: cheap to clone, O(1) to change one frontend.
#[derive(Debug, Clone)]
pub struct NatRules {
    pub snat: Arc<[SnatRule]>,
    pub frontends: ShardMap<Frontend, Target>,
    /// Bound of each worker's connection tracking table.
    pub conntrack_max: usize,
}

impl Default for NatRules {
    fn default() -> Self {
        NatRules {
            snat: Arc::from(Vec::new()),
            frontends: ShardMap::new(),
            conntrack_max: super::conntrack::DEFAULT_MAX,
        }
    }
}

impl NatRules {
    /// The name of the Service with id `id` (a walk over every frontend: for tools, not for
    /// packets).
    pub fn service_name(&self, id: u32) -> Option<&str> {
        self.frontends.iter().find_map(|(_, t)| match t {
            Target::Service(s) if s.id == id => Some(s.name.as_str()),
            _ => None,
        })
    }

    /// Whether any rule needs connection tracking.
    pub fn is_active(&self) -> bool {
        !self.snat.is_empty() || !self.frontends.is_empty()
    }

    /// The target of a connection to `dst:port`; `local` says whether `dst` is one of the
    /// router's addresses (where NodePorts listen).
    #[inline]
    pub fn frontend(&self, proto: u8, dst: Ipv4Addr, port: u16, local: bool) -> Option<&Target> {
        if self.frontends.is_empty() {
            return None;
        }
        let key = Frontend {
            proto,
            addr: dst,
            port,
        };
        match self.frontends.get(&key) {
            Some(t) => Some(t),
            None if local => self.frontends.get(&Frontend::node_port(proto, port)),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(last: u8, weight: u16) -> Backend {
        Backend {
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, last), 8080),
            weight,
        }
    }

    fn counts(table: &[u16], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in table {
            c[usize::from(i)] += 1;
        }
        c
    }

    #[test]
    fn maglev_fills_every_slot_evenly() {
        let backends: Vec<Backend> = (1..=5).map(|i| be(i, 1)).collect();
        let t = maglev_table(&backends);
        assert_eq!(t.len(), 509);
        let c = counts(&t, 5);
        for n in c {
            assert!((95..=110).contains(&n), "{n}");
        }
    }

    #[test]
    fn maglev_weights_and_drain() {
        let backends = vec![be(1, 3), be(2, 1), be(3, 0)];
        let t = maglev_table(&backends);
        let c = counts(&t, 3);
        assert_eq!(c[2], 0, "a drained backend gets no slot");
        let ratio = c[0] as f64 / c[1] as f64;
        assert!((2.5..3.5).contains(&ratio), "{c:?}");
    }

    #[test]
    fn maglev_is_stable_when_a_backend_goes() {
        let before: Vec<Backend> = (1..=10).map(|i| be(i, 1)).collect();
        let mut after = before.clone();
        after.remove(3);
        let a = maglev_table(&before);
        let b = maglev_table(&after);
        assert_eq!(a.len(), b.len());
        let moved = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| before[usize::from(**x)].addr != after[usize::from(**y)].addr)
            .count();
        // The removed backend's tenth must move; the others mostly stay.
        let own = a.iter().filter(|&&x| x == 3).count();
        assert!(moved >= own);
        assert!(moved < own + a.len() / 10, "moved {moved} of {}", a.len());
    }

    #[test]
    fn wheel_follows_weights() {
        let backends = vec![be(1, 2), be(2, 1), be(3, 0)];
        let w = weighted_wheel(&backends);
        assert_eq!(w.len(), 3);
        assert_eq!(w.iter().filter(|&&i| i == 0).count(), 2);
        assert!(!w.contains(&2));
        assert!(weighted_wheel(&[be(1, 0)]).is_empty());
    }

    #[test]
    fn choose_by_scheduler() {
        let backends = vec![be(1, 1), be(2, 1)];
        let mk = |s| {
            Service::new(
                1,
                "web".into(),
                PROTO_TCP,
                Ipv4Addr::new(10, 96, 0, 10),
                80,
                None,
                backends.clone(),
                s,
                None,
            )
        };
        let rr = mk(Scheduler::RoundRobin);
        let a = rr.choose(0, 0, 0, 0, |_| None).unwrap();
        let b = rr.choose(0, 0, 1, 0, |_| None).unwrap();
        assert_ne!(a, b);
        let sh = mk(Scheduler::SourceHash);
        let c = mix(42);
        assert_eq!(
            sh.choose(1, c, 0, 0, |_| None),
            sh.choose(2, c, 5, 9, |_| None)
        );
        let lc = mk(Scheduler::LeastConn);
        assert_eq!(lc.choose(0, 0, 0, 0, |_| Some(1)), Some(backends[1].addr));
        let empty = Service::new(
            2,
            "none".into(),
            PROTO_UDP,
            Ipv4Addr::new(10, 96, 0, 11),
            53,
            None,
            vec![be(1, 0)],
            Scheduler::Maglev,
            None,
        );
        assert!(!empty.has_active_backends());
        assert_eq!(empty.choose(0, 0, 0, 0, |_| Some(0)), None);
    }

    #[test]
    fn snat_rule_matches_prefix_and_vlan() {
        let r = SnatRule {
            source: Ipv4Addr::new(10, 42, 0, 0),
            source_len: 16,
            out_vlan: VlanId::new(100).unwrap(),
            to: None,
            except: Some((Ipv4Addr::new(10, 42, 0, 0), 16)),
        };
        let out = Ipv4Addr::new(198, 51, 100, 1);
        let v100 = VlanId::new(100).unwrap();
        assert!(r.matches(Ipv4Addr::new(10, 42, 9, 9), out, v100));
        assert!(!r.matches(Ipv4Addr::new(10, 43, 0, 1), out, v100));
        assert!(!r.matches(Ipv4Addr::new(10, 42, 0, 1), out, VlanId::new(10).unwrap()));
        assert!(
            !r.matches(
                Ipv4Addr::new(10, 42, 9, 9),
                Ipv4Addr::new(10, 42, 7, 2),
                v100
            ),
            "the exempt destinations"
        );
    }
}
