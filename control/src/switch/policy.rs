//! The network policy share of the [`Switch`]: policies of the three tiers, compiled into a
//! classifier per port and direction, and `policy add|del|list|show`.
//!
//! O(change). The switch keeps every installed policy with its rules resolved to address
//! blocks (a peer selector to the addresses of the ports it selects). A port's classifier in
//! one direction is determined by the list of policies that apply to it there (its *key*);
//! ports with the same key share one compiled [`Classifier`], kept in a cache. A change of one
//! policy re-resolves that policy alone, recompiles the keys it is part of and recomputes the
//! keys of the ports it selects (before or after); a port whose labels or addresses changed
//! re-resolves the policies whose peer selectors match it (before or after). Everything else
//! stays shared, the same `Arc`, with the table the workers read.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use serde::Serialize;
use tapswitch_dataplane::tables::policy::{
    block_bounds, Applied, Block, Classifier, Direction, PolicyTable, PortPolicy, Rule, RuleMeta,
    Tier,
};

use super::{Switch, SwitchError};
use crate::config::policy::{parse_tier, section, selects, PeerSpec, PolicyConfig, PolicySpec};

/// What policy sees of a port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortView {
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<IpAddr>,
}

/// A policy as the switch holds it.
#[derive(Debug)]
struct Installed {
    /// Changes with every recompilation of its rules (a key names policies by id).
    id: u32,
    /// Order of addition: ties of priority (and the order within a tier) go by it.
    seq: u64,
    spec: PolicySpec,
    /// Its rules, by direction, resolved.
    rules: [Vec<Rule>; 2],
}

/// The policy configuration, compiled and indexed. Owned by the control thread (public for
/// benches).
#[derive(Debug, Default)]
pub struct PolicyState {
    /// By (tier, name).
    installed: HashMap<(Tier, String), Installed>,
    /// (tier, name) by id.
    ids: HashMap<u32, (Tier, String)>,
    /// The policies by the first label of their selector; those that select every port.
    by_label: HashMap<(String, String), Vec<(Tier, String)>>,
    select_all: Vec<(Tier, String)>,
    /// What every snapshot carries.
    table: Arc<PolicyTable>,
    /// The ports as last compiled, by port id.
    ports: Vec<Option<PortView>>,
    /// The keys of each port (ingress, egress) as last compiled.
    keys: Vec<[Vec<u32>; 2]>,
    /// Compiled classifiers by key (a direction tag, then the policies' ids).
    cache: HashMap<Vec<u32>, Arc<Classifier>>,
    next_id: u32,
    next_seq: u64,
}

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

impl PolicyState {
    /// What a snapshot carries: the classifiers of each port.
    pub fn table(&self) -> &Arc<PolicyTable> {
        &self.table
    }

    /// Resolves the rules of `spec` against `ports`, keeping the hit counters of `old`
    /// (the same policy's rules before) where the rule is the same.
    fn resolve(
        spec: &PolicySpec,
        ports: &[Option<PortView>],
        old: Option<&[Vec<Rule>; 2]>,
    ) -> [Vec<Rule>; 2] {
        let mut out = [Vec::new(), Vec::new()];
        for (d, direction) in DIRECTIONS.into_iter().enumerate() {
            for (i, r) in spec.rules(d).iter().enumerate() {
                let peers = r.peers.as_ref().map(|list| {
                    let mut blocks: Vec<Block> = Vec::new();
                    for p in list {
                        match p {
                            PeerSpec::Blocks(b) => blocks.extend_from_slice(b),
                            PeerSpec::Select(s) => blocks.extend(
                                ports
                                    .iter()
                                    .flatten()
                                    .filter(|v| selects(s, &v.labels))
                                    .flat_map(|v| v.addresses.iter().map(|a| Block::host(*a))),
                            ),
                        }
                    }
                    blocks.sort_unstable();
                    blocks.dedup();
                    Arc::from(blocks)
                });
                let meta = old
                    .and_then(|o| o[d].get(i))
                    .filter(|o| o.action == r.action)
                    .map(|o| Arc::clone(&o.meta))
                    .unwrap_or_else(|| {
                        Arc::new(RuleMeta {
                            tier: spec.tier,
                            policy: spec.name.clone(),
                            direction,
                            index: i,
                            action: r.action,
                            hits: AtomicU64::new(0),
                        })
                    });
                out[d].push(Rule {
                    action: r.action,
                    peers,
                    ports: Arc::from(r.ports.as_slice()),
                    meta,
                });
            }
        }
        out
    }

    /// Whether policy `p` applies to a port with `labels` in direction `d`.
    fn applies(p: &Installed, labels: &BTreeMap<String, String>, d: usize) -> bool {
        selects(&p.spec.select, labels)
            && match p.spec.tier {
                Tier::Policy => p.spec.isolates[d],
                Tier::Admin | Tier::Baseline => !p.spec.rules(d).is_empty(),
            }
    }

    /// The key of a port with `labels` in direction `d`: the tag `d`, then the ids of the
    /// policies that apply, in evaluation order. Just the tag: none applies.
    fn key(&self, labels: &BTreeMap<String, String>, d: usize) -> Vec<u32> {
        let candidates = labels
            .iter()
            .filter_map(|(k, v)| self.by_label.get(&(k.clone(), v.clone())))
            .flatten()
            .chain(&self.select_all);
        let mut applied: Vec<&Installed> = candidates
            .filter_map(|k| self.installed.get(k))
            .filter(|p| Self::applies(p, labels, d))
            .collect();
        applied.sort_by_key(|p| (p.spec.tier, p.spec.priority, p.seq));
        std::iter::once(d as u32)
            .chain(applied.iter().map(|p| p.id))
            .collect()
    }

    /// Indexes (or, `add` false, unindexes) the policy `key` by its selector.
    fn index(&mut self, key: &(Tier, String), select: &BTreeMap<String, String>, add: bool) {
        let list = match select.iter().next() {
            Some((k, v)) => self.by_label.entry((k.clone(), v.clone())).or_default(),
            None => &mut self.select_all,
        };
        if add {
            list.push(key.clone());
        } else {
            list.retain(|k| k != key);
        }
    }

    /// The classifier of `key`, compiled when no port had it yet.
    fn classifier(&mut self, key: &[u32]) -> Option<Arc<Classifier>> {
        if key.len() == 1 {
            return None;
        }
        if let Some(c) = self.cache.get(key) {
            return Some(Arc::clone(c));
        }
        let d = key[0] as usize;
        let by_id: HashMap<u32, &Installed> = self.installed.values().map(|p| (p.id, p)).collect();
        let mut applied = Applied::default();
        for id in &key[1..] {
            let p = by_id[id];
            let rules = p.rules[d].iter();
            match p.spec.tier {
                Tier::Admin => applied.admin.extend(rules),
                Tier::Policy => {
                    applied.isolating.push(Arc::from(p.spec.name.as_str()));
                    applied.policy.extend(rules);
                }
                Tier::Baseline => applied.baseline.extend(rules),
            }
        }
        let c = Arc::new(Classifier::compile(&applied));
        self.cache.insert(key.to_vec(), Arc::clone(&c));
        Some(c)
    }

    /// Recomputes the keys and classifiers of `ports` (by id) and publishes a new table.
    fn refresh(&mut self, ports: impl IntoIterator<Item = usize>) {
        let mut table = (*self.table).clone();
        let n = self.ports.len();
        table.ports.resize_with(n, PortPolicy::default);
        self.keys.resize_with(n, Default::default);
        for i in ports {
            let Some(view) = self.ports.get(i).cloned().flatten() else {
                if i < n {
                    table.ports[i] = PortPolicy::default();
                    self.keys[i] = Default::default();
                }
                continue;
            };
            let keys = [self.key(&view.labels, 0), self.key(&view.labels, 1)];
            let ingress = self.classifier(&keys[0]);
            let egress = self.classifier(&keys[1]);
            table.ports[i] = PortPolicy { ingress, egress };
            self.keys[i] = keys;
        }
        table.active = table
            .ports
            .iter()
            .any(|p| p.ingress.is_some() || p.egress.is_some());
        // Classifiers no port uses any more.
        self.cache.retain(|_, c| Arc::strong_count(c) > 1);
        self.table = Arc::new(table);
        // (The cache's own reference and the table's: a key in use has at least two.)
    }

    /// The ports (ids) a policy with `spec` applies to in some direction.
    fn selected(&self, spec: &PolicySpec) -> Vec<usize> {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, v)| v.as_ref().is_some_and(|v| selects(&spec.select, &v.labels)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Installs (or replaces) `spec`, resolving its rules: O(its rules and the ports).
    /// Returns the ports whose classifiers must be recomputed.
    fn install(&mut self, spec: PolicySpec) -> Vec<usize> {
        let key = (spec.tier, spec.name.clone());
        let old = self.installed.remove(&key);
        let mut affected = self.selected(&spec);
        if let Some(o) = &old {
            affected.extend(self.selected(&o.spec));
            self.forget(o.id);
            self.ids.remove(&o.id);
            self.index(&key, &o.spec.select, false);
        }
        self.index(&key, &spec.select, true);
        let rules = Self::resolve(&spec, &self.ports, old.as_ref().map(|o| &o.rules));
        let seq = old.as_ref().map_or_else(
            || {
                self.next_seq += 1;
                self.next_seq
            },
            |o| o.seq,
        );
        self.next_id += 1;
        self.ids.insert(self.next_id, key.clone());
        self.installed.insert(
            key,
            Installed {
                id: self.next_id,
                seq,
                spec,
                rules,
            },
        );
        affected
    }

    /// Drops the cached classifiers whose key names policy `id`.
    fn forget(&mut self, id: u32) {
        self.cache.retain(|k, _| !k[1..].contains(&id));
    }

    /// Removes a policy; returns the ports it applied to.
    fn uninstall(&mut self, tier: Tier, name: &str) -> Option<Vec<usize>> {
        let key = (tier, name.to_string());
        let old = self.installed.remove(&key)?;
        self.forget(old.id);
        self.ids.remove(&old.id);
        self.index(&key, &old.spec.select, false);
        Some(self.selected(&old.spec))
    }

    /// Replaces every policy with `specs` (a start or reload): the unchanged keep their
    /// compiled rules and counters.
    pub fn set_policies(&mut self, specs: Vec<PolicySpec>) {
        let wanted: HashSet<(Tier, String)> =
            specs.iter().map(|s| (s.tier, s.name.clone())).collect();
        let mut affected = Vec::new();
        let gone: Vec<(Tier, String)> = self
            .installed
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for (tier, name) in gone {
            affected.extend(self.uninstall(tier, &name).unwrap_or_default());
        }
        for spec in specs {
            let same = self
                .installed
                .get(&(spec.tier, spec.name.clone()))
                .is_some_and(|p| p.spec == spec);
            if !same {
                affected.extend(self.install(spec));
            }
        }
        self.refresh(dedup(affected));
    }

    /// Takes the ports as they are now (labels, addresses, which exist): a port whose view
    /// changed is recompiled, and so is every policy whose peers select it (before or after).
    pub fn sync_ports(&mut self, ports: Vec<Option<PortView>>) {
        let n = ports.len().max(self.ports.len());
        let mut changed = Vec::new();
        for i in 0..n {
            let (old, new) = (
                self.ports.get(i).cloned().flatten(),
                ports.get(i).cloned().flatten(),
            );
            if old != new {
                changed.push((i, old, new));
            }
        }
        if changed.is_empty() {
            return;
        }
        self.ports = ports;
        let mut affected: Vec<usize> = changed.iter().map(|(i, _, _)| *i).collect();
        // Policies whose peer selectors match a changed port, before or after.
        let matching: Vec<(Tier, String)> = self
            .installed
            .iter()
            .filter(|(_, p)| {
                p.spec.selects_peers()
                    && changed.iter().any(|(_, old, new)| {
                        old.iter()
                            .chain(new.iter())
                            .any(|v| !v.addresses.is_empty() && p.spec.peer_selects(&v.labels))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in matching {
            if let Some(p) = self.installed.get(&k) {
                let spec = p.spec.clone();
                affected.extend(self.install(spec));
            }
        }
        self.refresh(dedup(affected));
    }

    /// `policy add`: one policy (replacing the one of its tier and name).
    pub fn add(&mut self, spec: PolicySpec) {
        let affected = self.install(spec);
        self.refresh(dedup(affected));
    }

    /// `policy del`.
    pub fn del(&mut self, tier: Tier, name: &str) -> bool {
        match self.uninstall(tier, name) {
            Some(affected) => {
                self.refresh(dedup(affected));
                true
            }
            None => false,
        }
    }

    fn info(&self, p: &Installed) -> PolicyInfo {
        PolicyInfo {
            name: p.spec.name.clone(),
            tier: p.spec.tier.name(),
            priority: (p.spec.tier == Tier::Admin).then_some(p.spec.priority),
            select: p.spec.select.clone(),
            types: (p.spec.tier == Tier::Policy).then(|| {
                DIRECTIONS
                    .iter()
                    .zip(p.spec.isolates)
                    .filter(|(_, on)| *on)
                    .map(|(d, _)| d.name())
                    .collect()
            }),
            ports: Vec::new(),
            rules: p
                .rules
                .iter()
                .flatten()
                .map(|r| RuleInfo {
                    direction: r.meta.direction.name(),
                    index: r.meta.index,
                    action: r.meta.action.name(),
                    peers: r.peers.as_ref().map(|b| {
                        b.iter()
                            .map(|b| match block_bounds(b) {
                                (lo, hi) if lo == hi => lo.to_string(),
                                (lo, hi) => format!("{lo}-{hi}"),
                            })
                            .collect()
                    }),
                    ports: r
                        .ports
                        .iter()
                        .map(|p| {
                            let proto = match p.proto {
                                6 => "tcp",
                                17 => "udp",
                                _ => "sctp",
                            };
                            match (p.lo, p.hi) {
                                (0, u16::MAX) => proto.to_string(),
                                (lo, hi) if lo == hi => format!("{proto}/{lo}"),
                                (lo, hi) => format!("{proto}/{lo}-{hi}"),
                            }
                        })
                        .collect(),
                    hits: r.meta.hits.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }

    /// Every policy, admin tier first, each tier in evaluation order.
    fn sorted(&self) -> Vec<&Installed> {
        let mut v: Vec<&Installed> = self.installed.values().collect();
        v.sort_by_key(|p| (p.spec.tier, p.spec.priority, p.seq));
        v
    }
}

fn dedup(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v.dedup();
    v
}

/// A policy, as `policy list` and `policy show` report it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInfo {
    pub name: String,
    pub tier: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    pub select: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<&'static str>>,
    /// The ports it applies to.
    pub ports: Vec<String>,
    pub rules: Vec<RuleInfo>,
}

/// A rule and its hit counter.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    pub direction: &'static str,
    pub index: usize,
    pub action: &'static str,
    /// The peers as resolved now (addresses and ranges); `None`: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    /// `tcp/80`, `tcp/8000-8100`, `udp`; empty: all.
    pub ports: Vec<String>,
    /// Connections (and packets outside one) this rule decided.
    pub hits: u64,
}

impl Switch {
    /// The ports as policy sees them.
    pub(super) fn policy_ports(&self) -> Vec<Option<PortView>> {
        self.ports
            .iter()
            .map(|p| {
                p.as_ref().map(|p| PortView {
                    labels: p.spec.labels.clone(),
                    addresses: p.spec.addresses.clone(),
                })
            })
            .collect()
    }

    /// `policy add` of a policy file's sections: every policy is checked before any is
    /// applied.
    pub fn add_policy_sections(
        &mut self,
        admin: Vec<PolicyConfig>,
        policy: Vec<PolicyConfig>,
        baseline: Vec<PolicyConfig>,
    ) -> Result<(), SwitchError> {
        if admin.is_empty() && policy.is_empty() && baseline.is_empty() {
            return Err(crate::config::ConfigError::new(
                "policy",
                "no [[policy]], [[admin_policy]] or [[baseline_policy]] to add",
            )
            .into());
        }
        for (tier, list) in [
            (Tier::Admin, &admin),
            (Tier::Policy, &policy),
            (Tier::Baseline, &baseline),
        ] {
            for (i, p) in list.iter().enumerate() {
                p.validate(tier, &format!("{}[{i}] ({})", section(tier), p.name))?;
            }
        }
        for (tier, list) in [
            (Tier::Admin, admin),
            (Tier::Policy, policy),
            (Tier::Baseline, baseline),
        ] {
            if !list.is_empty() {
                self.add_policies(tier, list)?;
            }
        }
        Ok(())
    }

    /// `policy add`: adds the policies of `tier` in `policies`, replacing those of the same
    /// name. All are validated first; on an error nothing changes.
    pub fn add_policies(
        &mut self,
        tier: Tier,
        policies: Vec<PolicyConfig>,
    ) -> Result<(), SwitchError> {
        let sec = section(tier);
        let mut specs = Vec::with_capacity(policies.len());
        let mut names = HashSet::new();
        for (i, p) in policies.iter().enumerate() {
            let at = format!("{sec}[{i}] ({})", p.name);
            if !names.insert(p.name.clone()) {
                return Err(crate::config::ConfigError::new(
                    format!("{at}.name"),
                    format!("{:?} is named twice", p.name),
                )
                .into());
            }
            specs.push(p.validate(tier, &at)?);
        }
        let old = self.config.policies_of(tier).clone();
        for p in &policies {
            let list = self.config.policies_of_mut(tier);
            match list.iter().position(|q| q.name == p.name) {
                Some(i) => list[i] = p.clone(),
                None => list.push(p.clone()),
            }
        }
        for spec in specs {
            self.policy.add(spec);
        }
        if let Err(e) = self.publish() {
            *self.config.policies_of_mut(tier) = old;
            let all = self.config.validate_policies().unwrap_or_default();
            self.policy.set_policies(all);
            return Err(e);
        }
        Ok(())
    }

    /// `policy del`: the policy `name` of `tier` (`None`: the one tier that has it).
    pub fn del_policy(&mut self, tier: Option<&str>, name: &str) -> Result<(), SwitchError> {
        let tiers = match tier {
            Some(t) => vec![parse_tier("tier", t)?],
            None => vec![Tier::Admin, Tier::Policy, Tier::Baseline],
        };
        let found: Vec<Tier> = tiers
            .into_iter()
            .filter(|t| self.config.policies_of(*t).iter().any(|p| p.name == name))
            .collect();
        let tier = match found.as_slice() {
            [t] => *t,
            [] => return Err(SwitchError::NoSuchPolicy(name.to_string())),
            _ => {
                return Err(crate::config::ConfigError::new(
                    "tier",
                    format!("{name:?} is in more than one tier: name the tier"),
                )
                .into())
            }
        };
        let old = self.config.policies_of(tier).clone();
        self.config.policies_of_mut(tier).retain(|p| p.name != name);
        self.policy.del(tier, name);
        if let Err(e) = self.publish() {
            *self.config.policies_of_mut(tier) = old;
            let all = self.config.validate_policies().unwrap_or_default();
            self.policy.set_policies(all);
            return Err(e);
        }
        Ok(())
    }

    /// `policy list`: every policy with its rules' hit counters, admin tier first, each
    /// tier in evaluation order.
    pub fn list_policies(&self) -> Vec<PolicyInfo> {
        let names: Vec<(usize, String)> = self
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p.spec.name.clone())))
            .collect();
        self.policy
            .sorted()
            .into_iter()
            .map(|p| {
                let mut info = self.policy.info(p);
                info.ports = names
                    .iter()
                    .filter(|(i, _)| {
                        self.policy
                            .ports
                            .get(*i)
                            .cloned()
                            .flatten()
                            .is_some_and(|v| (0..2).any(|d| PolicyState::applies(p, &v.labels, d)))
                    })
                    .map(|(_, n)| n.clone())
                    .collect();
                info
            })
            .collect()
    }

    /// `policy show`: one policy (of `tier`, when two tiers have the name).
    pub fn show_policy(&self, tier: Option<&str>, name: &str) -> Result<PolicyInfo, SwitchError> {
        let tier = tier.map(|t| parse_tier("tier", t)).transpose()?;
        self.list_policies()
            .into_iter()
            .find(|p| p.name == name && tier.is_none_or(|t| t.name() == p.tier))
            .ok_or_else(|| SwitchError::NoSuchPolicy(name.to_string()))
    }
}
