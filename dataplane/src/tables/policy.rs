//! Network policy, compiled: for each port and direction, a [`Classifier`] that maps a
//! packet's peer address, protocol and destination port to what decides it, in time that
//! does not grow with the number of rules.
//!
//! Three tiers decide, in this order (the model of the Kubernetes network-policy API):
//!
//! 1. the admin tier: rules in priority order; the first that matches decides with its
//!    action (`Allow`, `Deny`), or hands the packet to the next tier (`Pass`);
//! 2. the policy tier (Kubernetes NetworkPolicy): a port selected by some policy for this
//!    direction is *isolated*; a packet to or from it is allowed by any matching rule (rules
//!    are additive allows), else denied;
//! 3. the baseline tier: for a port the policy tier does not isolate, the first matching rule
//!    decides with its action; no match allows.
//!
//! Compilation. The rules that apply to a port in one direction are numbered in evaluation
//! order. Every peer block (a CIDR less its exceptions, or one address of a selected port)
//! cuts the address space of its family into intervals; each interval gets the set of rules
//! whose peers cover it, and intervals with equal sets share one [`Cell`]. A cell cuts each
//! port-carrying protocol's port space where one of its rules' port ranges starts or ends,
//! and keeps, per segment, the outcome of evaluating its rules there. A lookup is then two
//! binary searches (address, then port) however many rules there are: O(log rules).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;

use super::service::{PROTO_TCP, PROTO_UDP};

/// SCTP's IP protocol number: the third protocol a policy port can name.
pub const PROTO_SCTP: u8 = 132;

/// The protocols whose packets carry ports that rules can match.
pub const PORT_PROTOCOLS: [u8; 3] = [PROTO_TCP, PROTO_UDP, PROTO_SCTP];

/// Which tier a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Admin,
    Policy,
    Baseline,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Admin => "admin",
            Tier::Policy => "policy",
            Tier::Baseline => "baseline",
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Admin tier only: leave the packet to the policy tier.
    Pass,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Pass => "pass",
        }
    }
}

/// The direction of traffic a rule is about, seen from the port it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Into the port's workload.
    Ingress,
    /// Out of the port's workload.
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// An address range `lo..=hi` of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Block {
    V4(u32, u32),
    V6(u128, u128),
}

impl Block {
    /// The addresses of `addr/len` (`len` at most 32 or 128).
    pub fn cidr(addr: IpAddr, len: u8) -> Block {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(len.min(32)))
                    .unwrap_or(0);
                let lo = u32::from(a) & mask;
                Block::V4(lo, lo | !mask)
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(len.min(128)))
                    .unwrap_or(0);
                let lo = u128::from(a) & mask;
                Block::V6(lo, lo | !mask)
            }
        }
    }

    /// One address.
    pub fn host(addr: IpAddr) -> Block {
        match addr {
            IpAddr::V4(a) => Block::V4(u32::from(a), u32::from(a)),
            IpAddr::V6(a) => Block::V6(u128::from(a), u128::from(a)),
        }
    }

    /// Whether `other` lies inside this block.
    pub fn covers(&self, other: &Block) -> bool {
        match (self, other) {
            (Block::V4(a, b), Block::V4(c, d)) => a <= c && d <= b,
            (Block::V6(a, b), Block::V6(c, d)) => a <= c && d <= b,
            _ => false,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.covers(&Block::host(ip))
    }

    /// This block less `holes` (each inside it): the ranges left, in order.
    pub fn except(self, holes: &[Block]) -> Vec<Block> {
        match self {
            Block::V4(lo, hi) => {
                let h: Vec<(u32, u32)> = holes
                    .iter()
                    .filter_map(|b| match *b {
                        Block::V4(a, b) => Some((a, b)),
                        Block::V6(..) => None,
                    })
                    .collect();
                subtract(lo, hi, h)
                    .into_iter()
                    .map(|(a, b)| Block::V4(a, b))
                    .collect()
            }
            Block::V6(lo, hi) => {
                let h: Vec<(u128, u128)> = holes
                    .iter()
                    .filter_map(|b| match *b {
                        Block::V6(a, b) => Some((a, b)),
                        Block::V4(..) => None,
                    })
                    .collect();
                subtract(lo, hi, h)
                    .into_iter()
                    .map(|(a, b)| Block::V6(a, b))
                    .collect()
            }
        }
    }
}

/// An address type intervals are made of.
trait Addr: Copy + Ord + std::hash::Hash + std::fmt::Debug {
    const MIN: Self;
    const MAX: Self;
    fn next(self) -> Option<Self>;
    fn prev(self) -> Self;
}

impl Addr for u32 {
    const MIN: u32 = 0;
    const MAX: u32 = u32::MAX;
    fn next(self) -> Option<u32> {
        self.checked_add(1)
    }
    fn prev(self) -> u32 {
        self - 1
    }
}

impl Addr for u128 {
    const MIN: u128 = 0;
    const MAX: u128 = u128::MAX;
    fn next(self) -> Option<u128> {
        self.checked_add(1)
    }
    fn prev(self) -> u128 {
        self - 1
    }
}

/// `lo..=hi` less the ranges in `holes`.
fn subtract<T: Addr>(lo: T, hi: T, mut holes: Vec<(T, T)>) -> Vec<(T, T)> {
    holes.sort();
    let mut out = Vec::new();
    let mut at = Some(lo);
    for (a, b) in holes {
        let Some(from) = at else { break };
        if b < from || a > hi {
            continue;
        }
        if a > from {
            out.push((from, a.prev().min(hi)));
        }
        at = b.next();
    }
    if let Some(from) = at {
        if from <= hi {
            out.push((from, hi));
        }
    }
    out
}

/// A protocol with a destination port range (`0..=65535`: any port of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMatch {
    pub proto: u8,
    pub lo: u16,
    pub hi: u16,
}

impl PortMatch {
    fn matches(&self, proto: u8, port: u16) -> bool {
        self.proto == proto && self.lo <= port && port <= self.hi
    }
}

/// What a rule is called, and how often it decided: one per rule of an installed policy,
/// kept while the policy is unchanged (so its counters survive other changes).
#[derive(Debug)]
pub struct RuleMeta {
    pub tier: Tier,
    /// The policy's name.
    pub policy: String,
    pub direction: Direction,
    /// The rule's position among its policy's rules of `direction`.
    pub index: usize,
    pub action: Action,
    /// Connections (and packets without one) this rule decided.
    pub hits: AtomicU64,
}

impl RuleMeta {
    /// `admin/no-guests-to-db/ingress[0]`, as a trace names the rule.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}[{}]",
            self.tier.name(),
            self.policy,
            self.direction.name(),
            self.index
        )
    }
}

/// One rule, as a classifier is built from it.
#[derive(Debug, Clone)]
pub struct Rule {
    pub action: Action,
    /// The peer addresses it matches; `None`: all of both families.
    pub peers: Option<Arc<[Block]>>,
    /// The protocols and ports it matches; empty: all.
    pub ports: Arc<[PortMatch]>,
    pub meta: Arc<RuleMeta>,
}

impl Rule {
    fn matches_port(&self, proto: u8, port: Option<u16>) -> bool {
        match port {
            _ if self.ports.is_empty() => true,
            Some(port) => self.ports.iter().any(|p| p.matches(proto, port)),
            None => false,
        }
    }
}

/// The rules that apply to one port in one direction, as a classifier is compiled from
/// them: each tier's rules in evaluation order.
#[derive(Debug, Clone, Default)]
pub struct Applied<'a> {
    pub admin: Vec<&'a Rule>,
    /// The policies of the policy tier that isolate the port in this direction (empty: not
    /// isolated), and their rules.
    pub isolating: Vec<Arc<str>>,
    pub policy: Vec<&'a Rule>,
    pub baseline: Vec<&'a Rule>,
}

impl Applied<'_> {
    /// Whether any tier has a say: otherwise everything is allowed without a lookup.
    pub fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.isolating.is_empty() && self.baseline.is_empty()
    }
}

/// How a packet was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// By a rule (its index in the classifier), allowing or denying.
    Rule { allow: bool, rule: u32 },
    /// Denied: the port is isolated by the policy tier and no rule of it allowed.
    Isolated,
    /// Allowed: no tier decided.
    Default,
}

impl Outcome {
    #[inline]
    pub fn allowed(self) -> bool {
        match self {
            Outcome::Rule { allow, .. } => allow,
            Outcome::Isolated => false,
            Outcome::Default => true,
        }
    }
}

/// Sorted interval starts of one family and the cell of each interval.
#[derive(Debug, Clone, Default)]
struct Intervals<T> {
    starts: Vec<T>,
    cells: Vec<u32>,
}

impl<T: Addr> Intervals<T> {
    #[inline]
    fn cell(&self, addr: T) -> u32 {
        // starts[0] is T::MIN, so there is always one at or below.
        let i = self.starts.partition_point(|s| *s <= addr);
        self.cells[i - 1]
    }
}

/// One protocol's port space, cut into segments with their outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Segments {
    starts: Vec<u16>,
    outcomes: Vec<Outcome>,
}

impl Segments {
    #[inline]
    fn outcome(&self, port: u16) -> Outcome {
        let i = self.starts.partition_point(|s| *s <= port);
        self.outcomes[i - 1]
    }

    /// For a packet whose port is unknown (a later fragment): an allowing outcome of any
    /// segment, else the first segment's.
    fn any_port(&self) -> Outcome {
        self.outcomes
            .iter()
            .copied()
            .find(|o| o.allowed())
            .unwrap_or(self.outcomes[0])
    }
}

/// The outcomes for one set of matching rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Cell {
    /// TCP, UDP and SCTP, as in [`PORT_PROTOCOLS`].
    ports: [Segments; 3],
    /// Any other protocol.
    other: Outcome,
}

/// The compiled rules of one port in one direction. See the module documentation.
#[derive(Debug, Clone)]
pub struct Classifier {
    v4: Intervals<u32>,
    v6: Intervals<u128>,
    cells: Vec<Cell>,
    /// The rules, by the index an [`Outcome::Rule`] carries.
    rules: Vec<Arc<RuleMeta>>,
    /// The policies that isolate the port (named by a denial for want of an allow).
    isolating: Vec<Arc<str>>,
    /// How many rules it was compiled from.
    size: usize,
}

/// A rule in evaluation order, with its tier.
struct Ordered<'a> {
    tier: Tier,
    rule: &'a Rule,
}

impl Classifier {
    /// Compiles the rules `applied` to one port in one direction.
    pub fn compile(applied: &Applied<'_>) -> Classifier {
        let ordered: Vec<Ordered> = applied
            .admin
            .iter()
            .map(|r| (Tier::Admin, *r))
            .chain(applied.policy.iter().map(|r| (Tier::Policy, *r)))
            .chain(applied.baseline.iter().map(|r| (Tier::Baseline, *r)))
            .map(|(tier, rule)| Ordered { tier, rule })
            .collect();
        let isolated = !applied.isolating.is_empty();
        let mut cells = Vec::new();
        let mut cell_of: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut cell_for = |set: Vec<u32>| -> u32 {
            if let Some(&c) = cell_of.get(&set) {
                return c;
            }
            let c = cells.len() as u32;
            cells.push(compile_cell(&ordered, &set, isolated));
            cell_of.insert(set, c);
            c
        };
        let v4 = intervals(&ordered, |b| match *b {
            Block::V4(a, b) => Some((a, b)),
            Block::V6(..) => None,
        });
        let v4 = finish(v4, &mut cell_for);
        let v6 = intervals(&ordered, |b| match *b {
            Block::V6(a, b) => Some((a, b)),
            Block::V4(..) => None,
        });
        let v6 = finish(v6, &mut cell_for);
        Classifier {
            v4,
            v6,
            cells,
            rules: ordered.iter().map(|o| Arc::clone(&o.rule.meta)).collect(),
            isolating: applied.isolating.clone(),
            size: ordered.len(),
        }
    }

    /// How a packet with `peer` (its source for ingress, its destination for egress),
    /// protocol `proto` and destination port `port` (`None`: a packet without ports, such as
    /// a later fragment) is decided.
    #[inline]
    pub fn classify(&self, peer: IpAddr, proto: u8, port: Option<u16>) -> Outcome {
        let cell = match peer {
            IpAddr::V4(a) => self.v4.cell(u32::from(a)),
            IpAddr::V6(a) => self.v6.cell(u128::from(a)),
        };
        let cell = &self.cells[cell as usize];
        let segments = match proto {
            PROTO_TCP => &cell.ports[0],
            PROTO_UDP => &cell.ports[1],
            PROTO_SCTP => &cell.ports[2],
            _ => return cell.other,
        };
        match port {
            Some(p) => segments.outcome(p),
            None => segments.any_port(),
        }
    }

    /// The rule an outcome names.
    pub fn rule(&self, outcome: Outcome) -> Option<&Arc<RuleMeta>> {
        match outcome {
            Outcome::Rule { rule, .. } => self.rules.get(rule as usize),
            _ => None,
        }
    }

    /// Counts a decision of `outcome` on its rule.
    #[inline]
    pub fn hit(&self, outcome: Outcome) {
        if let Some(r) = self.rule(outcome) {
            r.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The policies of the policy tier that isolate the port.
    pub fn isolating(&self) -> &[Arc<str>] {
        &self.isolating
    }

    /// How many rules it was compiled from.
    pub fn rule_count(&self) -> usize {
        self.size
    }

    /// How many distinct rule sets (cells) and address intervals it holds.
    pub fn shape(&self) -> (usize, usize) {
        (
            self.cells.len(),
            self.v4.starts.len() + self.v6.starts.len(),
        )
    }

    /// A description of an outcome for a trace: `tier`, `policy`, `rule`, `action`.
    pub fn describe(&self, outcome: Outcome) -> Described<'_> {
        match outcome {
            Outcome::Rule { allow, rule } => {
                let r = &self.rules[rule as usize];
                Described {
                    tier: r.tier.name(),
                    policy: r.policy.clone(),
                    rule: Some(r.label()),
                    action: if allow { "allow" } else { "deny" },
                }
            }
            Outcome::Isolated => Described {
                tier: "policy",
                policy: self.isolating.join(","),
                rule: None,
                action: "deny",
            },
            Outcome::Default => Described {
                tier: "default",
                policy: String::new(),
                rule: None,
                action: "allow",
            },
        }
    }
}

/// What decided a packet, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described<'a> {
    pub tier: &'a str,
    /// The deciding policy's name (of an isolation: the isolating policies).
    pub policy: String,
    /// `tier/policy/direction[index]`, when a rule decided.
    pub rule: Option<String>,
    pub action: &'a str,
}

/// Cuts one family's address space at every peer block of `ordered` and lists, for each
/// interval, the rules covering it (in evaluation order).
fn intervals<T: Addr>(
    ordered: &[Ordered<'_>],
    family: impl Fn(&Block) -> Option<(T, T)>,
) -> (Vec<T>, Vec<Vec<u32>>) {
    let ranges: Vec<Vec<(T, T)>> = ordered
        .iter()
        .map(|o| match &o.rule.peers {
            None => vec![(T::MIN, T::MAX)],
            Some(blocks) => blocks.iter().filter_map(&family).collect(),
        })
        .collect();
    let mut starts = vec![T::MIN];
    for &(lo, hi) in ranges.iter().flatten() {
        starts.push(lo);
        if let Some(n) = hi.next() {
            starts.push(n);
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let mut sets = vec![Vec::new(); starts.len()];
    for (k, rule_ranges) in ranges.iter().enumerate() {
        for &(lo, hi) in rule_ranges {
            let from = starts.partition_point(|s| *s < lo);
            let to = starts.partition_point(|s| *s <= hi);
            for set in &mut sets[from..to] {
                if set.last() != Some(&(k as u32)) {
                    set.push(k as u32);
                }
            }
        }
    }
    (starts, sets)
}

/// Interval starts and rule sets -> starts and cells, adjacent equal cells merged.
fn finish<T: Addr>(
    (starts, sets): (Vec<T>, Vec<Vec<u32>>),
    cell_for: &mut impl FnMut(Vec<u32>) -> u32,
) -> Intervals<T> {
    let mut out = Intervals {
        starts: Vec::with_capacity(starts.len()),
        cells: Vec::with_capacity(starts.len()),
    };
    for (start, set) in starts.into_iter().zip(sets) {
        let cell = cell_for(set);
        if out.cells.last() != Some(&cell) {
            out.starts.push(start);
            out.cells.push(cell);
        }
    }
    out
}

/// The cell for the rules `set` (indices into `ordered`, ascending).
fn compile_cell(ordered: &[Ordered<'_>], set: &[u32], isolated: bool) -> Cell {
    let rules: Vec<(u32, &Ordered)> = set.iter().map(|&k| (k, &ordered[k as usize])).collect();
    let ports = PORT_PROTOCOLS.map(|proto| {
        let mut starts = vec![0u16];
        for (_, o) in &rules {
            for p in o.rule.ports.iter().filter(|p| p.proto == proto) {
                starts.push(p.lo);
                if let Some(n) = p.hi.checked_add(1) {
                    starts.push(n);
                }
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let mut segments = Segments {
            starts: Vec::with_capacity(starts.len()),
            outcomes: Vec::with_capacity(starts.len()),
        };
        for s in starts {
            let o = evaluate(&rules, isolated, proto, Some(s));
            if segments.outcomes.last() != Some(&o) {
                segments.starts.push(s);
                segments.outcomes.push(o);
            }
        }
        segments
    });
    Cell {
        ports,
        other: evaluate(&rules, isolated, 0, None),
    }
}

/// The tiers' verdict over `rules` (those whose peers match, in evaluation order) for a
/// packet of `proto` to `port`.
fn evaluate(rules: &[(u32, &Ordered)], isolated: bool, proto: u8, port: Option<u16>) -> Outcome {
    let mut it = rules.iter().peekable();
    // The admin tier: first match decides; pass skips the rest of the tier.
    while let Some((k, o)) = it.next_if(|(_, o)| o.tier == Tier::Admin) {
        if !o.rule.matches_port(proto, port) {
            continue;
        }
        match o.rule.action {
            Action::Allow => {
                return Outcome::Rule {
                    allow: true,
                    rule: *k,
                }
            }
            Action::Deny => {
                return Outcome::Rule {
                    allow: false,
                    rule: *k,
                }
            }
            Action::Pass => {
                while it.next_if(|(_, o)| o.tier == Tier::Admin).is_some() {}
                break;
            }
        }
    }
    // The policy tier: any match allows; an isolated port denies the rest.
    // (Its rules count only where it isolates the port.)
    while let Some((k, o)) = it.next_if(|(_, o)| o.tier == Tier::Policy) {
        if isolated && o.rule.matches_port(proto, port) {
            return Outcome::Rule {
                allow: true,
                rule: *k,
            };
        }
    }
    if isolated {
        return Outcome::Isolated;
    }
    for (k, o) in it {
        if o.rule.matches_port(proto, port) {
            let allow = o.rule.action != Action::Deny;
            return Outcome::Rule { allow, rule: *k };
        }
    }
    Outcome::Default
}

/// Policy, as published with the forwarding state: the classifiers of each port.
#[derive(Debug, Clone, Default)]
pub struct PolicyTable {
    /// Indexed by port id.
    pub ports: Vec<PortPolicy>,
    /// Whether any port has a classifier.
    pub active: bool,
}

/// The classifiers of one port; `None`: nothing applies in that direction.
#[derive(Debug, Clone, Default)]
pub struct PortPolicy {
    pub ingress: Option<Arc<Classifier>>,
    pub egress: Option<Arc<Classifier>>,
}

impl PolicyTable {
    /// The classifier of `port` for `direction`.
    #[inline]
    pub fn classifier(&self, port: usize, direction: Direction) -> Option<&Classifier> {
        let p = self.ports.get(port)?;
        match direction {
            Direction::Ingress => p.ingress.as_deref(),
            Direction::Egress => p.egress.as_deref(),
        }
    }
}

/// An IPv6 connection's tuple in its original direction. For ICMPv6 echo `sport` is the
/// identifier and `dport` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Flow6 {
    /// The tuple of a packet going the other way (an echo keeps its identifier).
    pub fn reversed(&self) -> Flow6 {
        if self.proto == 58 {
            return Flow6 {
                src: self.dst,
                dst: self.src,
                ..*self
            };
        }
        Flow6 {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// How long the connection lives idle: TCP an hour, UDP two minutes, anything else
    /// half a minute.
    pub fn timeout_ms(&self) -> u64 {
        match self.proto {
            PROTO_TCP | PROTO_SCTP => 3_600_000,
            PROTO_UDP => 120_000,
            _ => 30_000,
        }
    }
}

/// The IPv6 connections the network policy allowed (IPv4 ones are in conntrack): bounded,
/// idle entries expire, a full table gives up an arbitrary entry for a new one.
#[derive(Debug, Clone)]
pub struct Flows6 {
    /// Original-direction tuple -> when it expires (ms of the switch's clock).
    map: HashMap<Flow6, u64>,
    max: usize,
}

/// Which direction of an allowed connection a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow6Dir {
    Original,
    Reply,
}

impl Flows6 {
    pub fn new(max: usize) -> Flows6 {
        Flows6 {
            map: HashMap::new(),
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The direction of a live connection a packet with tuple `key` belongs to (its timer
    /// restarted), if any.
    pub fn lookup(&mut self, key: &Flow6, now_ms: u64) -> Option<Flow6Dir> {
        let expires = now_ms + key.timeout_ms();
        for (k, dir) in [
            (*key, Flow6Dir::Original),
            (key.reversed(), Flow6Dir::Reply),
        ] {
            if let Some(e) = self.map.get_mut(&k) {
                if *e > now_ms {
                    *e = expires;
                    return Some(dir);
                }
                self.map.remove(&k);
            }
        }
        None
    }

    /// Records an allowed connection.
    pub fn insert(&mut self, key: Flow6, now_ms: u64) {
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            let victim = self.map.keys().next().copied();
            if let Some(v) = victim {
                self.map.remove(&v);
            }
        }
        self.map.insert(key, now_ms + key.timeout_ms());
    }

    /// Removes the expired entries.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| *e > now_ms);
        before - self.map.len()
    }

    /// Forgets every connection.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// `Ipv4Addr`/`Ipv6Addr` of a block's bounds, for display.
pub fn block_bounds(b: &Block) -> (IpAddr, IpAddr) {
    match *b {
        Block::V4(a, c) => (Ipv4Addr::from(a).into(), Ipv4Addr::from(c).into()),
        Block::V6(a, c) => (Ipv6Addr::from(a).into(), Ipv6Addr::from(c).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(tier: Tier, policy: &str, index: usize, action: Action) -> Arc<RuleMeta> {
        Arc::new(RuleMeta {
            tier,
            policy: policy.into(),
            direction: Direction::Ingress,
            index,
            action,
            hits: AtomicU64::new(0),
        })
    }

    fn cidr(s: &str) -> Block {
        let (a, l) = s.split_once('/').unwrap_or((s, "128"));
        let addr: IpAddr = a.parse().unwrap();
        let len = if addr.is_ipv4() && !s.contains('/') {
            32
        } else {
            l.parse().unwrap()
        };
        Block::cidr(addr, len)
    }

    fn rule(
        tier: Tier,
        action: Action,
        peers: Option<Vec<Block>>,
        ports: &[(u8, u16, u16)],
    ) -> Rule {
        Rule {
            action,
            peers: peers.map(Arc::from),
            ports: ports
                .iter()
                .map(|&(proto, lo, hi)| PortMatch { proto, lo, hi })
                .collect(),
            meta: meta(tier, "p", 0, action),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_flows_are_found_from_both_directions_and_expire() {
        let mut t = Flows6::new(2);
        let k = Flow6 {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            sport: 40000,
            dport: 80,
            proto: PROTO_TCP,
        };
        t.insert(k, 0);
        assert_eq!(t.lookup(&k, 1000), Some(Flow6Dir::Original));
        assert_eq!(t.lookup(&k.reversed(), 2000), Some(Flow6Dir::Reply));
        let other = Flow6 { dport: 81, ..k };
        assert_eq!(t.lookup(&other, 2000), None);
        // Idle past its timeout: gone.
        assert_eq!(t.lookup(&k, 2000 + 3_600_000), None);
        // Bounded: a third entry takes the place of one of two.
        t.insert(k, 0);
        t.insert(other, 0);
        t.insert(Flow6 { dport: 82, ..k }, 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.expire(10_000_000), 2);
    }

    #[test]
    fn except_cuts_holes_out_of_a_block() {
        let b = cidr("10.0.0.0/8");
        let left = b.except(&[cidr("10.0.5.0/24"), cidr("10.255.0.0/16")]);
        assert_eq!(
            left,
            vec![
                Block::V4(0x0a00_0000, 0x0a00_04ff),
                Block::V4(0x0a00_0600, 0x0afe_ffff)
            ]
        );
        assert_eq!(cidr("0.0.0.0/0").except(&[cidr("0.0.0.0/0")]), vec![]);
        assert_eq!(
            cidr("::/0").except(&[cidr("::/1")]),
            vec![Block::V6(1 << 127, u128::MAX)]
        );
    }

    #[test]
    fn an_isolating_policy_allows_its_peers_and_ports_and_denies_the_rest() {
        let peers = cidr("10.0.0.0/8").except(&[cidr("10.0.5.0/24")]);
        let r = rule(
            Tier::Policy,
            Action::Allow,
            Some(peers),
            &[(PROTO_TCP, 80, 80), (PROTO_TCP, 8000, 8100)],
        );
        let c = Classifier::compile(&Applied {
            isolating: vec!["web".into()],
            policy: vec![&r],
            ..Applied::default()
        });
        let allow = Outcome::Rule {
            allow: true,
            rule: 0,
        };
        assert_eq!(c.classify(ip("10.1.2.3"), PROTO_TCP, Some(80)), allow);
        assert_eq!(c.classify(ip("10.1.2.3"), PROTO_TCP, Some(8050)), allow);
        assert_eq!(
            c.classify(ip("10.1.2.3"), PROTO_TCP, Some(8101)),
            Outcome::Isolated
        );
        assert_eq!(
            c.classify(ip("10.1.2.3"), PROTO_UDP, Some(80)),
            Outcome::Isolated
        );
        assert_eq!(
            c.classify(ip("10.0.5.9"), PROTO_TCP, Some(80)),
            Outcome::Isolated
        );
        assert_eq!(
            c.classify(ip("11.0.0.1"), PROTO_TCP, Some(80)),
            Outcome::Isolated
        );
        assert_eq!(
            c.classify(ip("fd00::1"), PROTO_TCP, Some(80)),
            Outcome::Isolated
        );
        // ICMP has no ports: a rule with ports does not match it.
        assert_eq!(c.classify(ip("10.1.2.3"), 1, None), Outcome::Isolated);
        // A later fragment: allowed where some port of its protocol is.
        assert_eq!(c.classify(ip("10.1.2.3"), PROTO_TCP, None), allow);
        assert_eq!(
            c.classify(ip("10.1.2.3"), PROTO_UDP, None),
            Outcome::Isolated
        );
        let d = c.describe(Outcome::Isolated);
        assert_eq!(
            (d.tier, d.policy.as_str(), d.action),
            ("policy", "web", "deny")
        );
    }

    #[test]
    fn admin_deny_wins_over_a_policy_allow_pass_delegates_and_baseline_decides_the_rest() {
        let deny = rule(
            Tier::Admin,
            Action::Deny,
            Some(vec![cidr("10.0.1.0/24")]),
            &[],
        );
        let pass = rule(
            Tier::Admin,
            Action::Pass,
            Some(vec![cidr("10.0.2.0/24")]),
            &[],
        );
        let allow_all = rule(Tier::Admin, Action::Allow, None, &[(PROTO_UDP, 53, 53)]);
        let np = rule(
            Tier::Policy,
            Action::Allow,
            Some(vec![cidr("10.0.0.0/16")]),
            &[],
        );
        let base_deny = rule(Tier::Baseline, Action::Deny, None, &[]);
        let isolated = Classifier::compile(&Applied {
            admin: vec![&deny, &pass, &allow_all],
            isolating: vec!["np".into()],
            policy: vec![&np],
            baseline: vec![&base_deny],
        });
        let o = |c: &Classifier, a: &str, proto, port| c.classify(ip(a), proto, Some(port));
        // Deny beats the policy's allow.
        assert_eq!(
            o(&isolated, "10.0.1.5", PROTO_TCP, 80),
            Outcome::Rule {
                allow: false,
                rule: 0
            }
        );
        // Pass hands it to the policy tier, which allows 10.0.0.0/16 ...
        assert_eq!(
            o(&isolated, "10.0.2.5", PROTO_UDP, 53),
            Outcome::Rule {
                allow: true,
                rule: 3
            }
        );
        // ... and the admin allow after the pass is not reached; outside the policy's peers the
        // isolation denies even with an admin allow-all-DNS further down for other peers.
        assert_eq!(
            o(&isolated, "10.9.0.1", PROTO_UDP, 53),
            Outcome::Rule {
                allow: true,
                rule: 2
            }
        );
        assert_eq!(o(&isolated, "10.9.0.1", PROTO_UDP, 54), Outcome::Isolated);
        // Not isolated: the baseline decides what the admin tier left.
        let open = Classifier::compile(&Applied {
            admin: vec![&deny, &pass],
            baseline: vec![&base_deny],
            ..Applied::default()
        });
        assert_eq!(
            o(&open, "10.0.2.5", PROTO_TCP, 1),
            Outcome::Rule {
                allow: false,
                rule: 2
            }
        );
        assert_eq!(
            open.describe(Outcome::Rule {
                allow: false,
                rule: 2
            })
            .tier,
            "baseline"
        );
        let none = Classifier::compile(&Applied {
            admin: vec![&deny],
            ..Applied::default()
        });
        assert_eq!(o(&none, "10.0.3.1", PROTO_TCP, 1), Outcome::Default);
    }

    /// The tiers' semantics evaluated directly, rule by rule, to check compiled classifiers
    /// against.
    fn reference(a: &Applied<'_>, peer: IpAddr, proto: u8, port: Option<u16>) -> bool {
        let m = |r: &Rule| {
            r.peers
                .as_ref()
                .is_none_or(|b| b.iter().any(|b| b.contains(peer)))
                && r.matches_port(proto, port)
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

    #[test]
    fn compiled_classifiers_agree_with_rule_by_rule_evaluation() {
        // A small deterministic generator: addresses and ports from narrow ranges so that
        // rules overlap often.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _round in 0..200 {
            let mut rules = Vec::new();
            for i in 0..(1 + rnd(12)) {
                let tier = [Tier::Admin, Tier::Policy, Tier::Baseline][rnd(3) as usize];
                let action = match tier {
                    Tier::Admin => [Action::Allow, Action::Deny, Action::Pass][rnd(3) as usize],
                    Tier::Policy => Action::Allow,
                    Tier::Baseline => [Action::Allow, Action::Deny][rnd(2) as usize],
                };
                let peers = (rnd(4) != 0).then(|| {
                    (0..1 + rnd(3))
                        .flat_map(|_| {
                            let len = 28 + rnd(5) as u8;
                            let b = Block::cidr(
                                IpAddr::V4(Ipv4Addr::new(10, 0, 0, rnd(64) as u8)),
                                len,
                            );
                            if rnd(3) == 0 {
                                let hole = Block::cidr(
                                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, rnd(64) as u8)),
                                    31,
                                );
                                if b.covers(&hole) {
                                    return b.except(&[hole]);
                                }
                            }
                            vec![b]
                        })
                        .collect::<Vec<_>>()
                });
                let ports: Vec<(u8, u16, u16)> = (0..rnd(3))
                    .map(|_| {
                        let lo = rnd(20) as u16;
                        (PORT_PROTOCOLS[rnd(3) as usize], lo, lo + rnd(5) as u16)
                    })
                    .collect();
                let mut r = rule(tier, action, peers, &ports);
                r.meta = meta(tier, "p", i as usize, action);
                rules.push((tier, r));
            }
            let pick = |t| rules.iter().filter(move |(x, _)| *x == t).map(|(_, r)| r);
            let applied = Applied {
                admin: pick(Tier::Admin).collect(),
                isolating: if rnd(2) == 0 {
                    vec!["p".into()]
                } else {
                    vec![]
                },
                policy: pick(Tier::Policy).collect(),
                baseline: pick(Tier::Baseline).collect(),
            };
            let c = Classifier::compile(&applied);
            for a in 0..70u8 {
                let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, a));
                for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP, 1] {
                    for port in 0..28u16 {
                        let got = c.classify(peer, proto, Some(port)).allowed();
                        assert_eq!(
                            got,
                            reference(&applied, peer, proto, Some(port)),
                            "{peer} {proto} {port}: {applied:#?}"
                        );
                    }
                }
            }
            // IPv6 peers see only the rules without peers.
            let v6 = ip("fd00::1");
            assert_eq!(
                c.classify(v6, 1, None).allowed(),
                reference(&applied, v6, 1, None)
            );
        }
    }

    #[test]
    fn identical_rule_sets_share_cells_and_lookup_cost_stays_logarithmic() {
        // 10 000 rules, one /32 each: 20 000 intervals at most, one cell per rule and one for
        // the gaps.
        let rules: Vec<Rule> = (0..10_000u32)
            .map(|i| {
                rule(
                    Tier::Policy,
                    Action::Allow,
                    Some(vec![Block::V4(0x0a00_0000 + 2 * i, 0x0a00_0000 + 2 * i)]),
                    &[(PROTO_TCP, 80, 80)],
                )
            })
            .collect();
        let c = Classifier::compile(&Applied {
            isolating: vec!["many".into()],
            policy: rules.iter().collect(),
            ..Applied::default()
        });
        let (cells, intervals) = c.shape();
        assert_eq!(cells, 10_001);
        assert!(intervals <= 20_002, "{intervals}");
        assert!(c.classify(ip("10.0.0.20"), PROTO_TCP, Some(80)).allowed());
        assert!(!c.classify(ip("10.0.0.21"), PROTO_TCP, Some(80)).allowed());
        c.hit(Outcome::Rule {
            allow: true,
            rule: 10,
        });
        assert_eq!(rules[10].meta.hits.load(Ordering::Relaxed), 1);
    }
}
