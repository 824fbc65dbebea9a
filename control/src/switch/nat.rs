//! The NAT share of the [`Switch`]: source NAT rules, port forwards, Services, and the
//! connection tracking tables (dump, flush, counters).
//!
//! O(change). The switch keeps the NAT rules compiled, in [`NatState`]. Their frontend map is
//! a [`ShardMap`](tapswitch_dataplane::tables::ShardMap): cloning it into a snapshot is one
//! `Arc`, and changing one key copies one shard (about 1/256 of the keys) while the other
//! Services stay shared, the same `Arc<Service>`, with the snapshot the workers read. Adding,
//! changing or removing one Service validates that Service alone, checks it against a
//! [`NatIndex`] of names and frontends, compiles it and replaces its one or two keys: O(its
//! backends), however many other Services there are. `compile` re-checks and re-compiles
//! none of it. Full rebuilds happen on start, and on `reload` when a NAT section or the
//! interfaces changed; even then a Service whose settings did not change keeps its compiled
//! `Arc`.
//!
//! Purge. A change that takes away what tracked connections are translated to carries, on the
//! snapshot of that change only, the filters the workers apply when they adopt it: all the
//! connections of a deleted Service, those of a removed backend (a drained one keeps its
//! connections), those of a deleted port forward. On reload, a Service whose frontend
//! (protocol, VIP, port or node port) changed loses all its connections.
//!
//! Ids. A Service's id, by which tracked connections name it, is assigned when its name first
//! appears and kept for the daemon's life: across `set-backends`, `del` and `add` again, and
//! reloads.

use std::net::SocketAddrV4;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use serde::Serialize;
use tapswitch_dataplane::io::ConntrackDump;
use tapswitch_dataplane::tables::conntrack::{NAT_DNAT, NAT_SNAT};
use tapswitch_dataplane::tables::{
    Backend, CtEntry, CtFilter, FlowKey, Frontend, NatRules, Service, SnatRule, Target,
};

use super::{Switch, SwitchError};
use crate::config::nat::{
    check_snat_unique, parse_port, parse_protocol, parse_socket, parse_source,
    parse_tracked_protocol, protocol_name, validate_backends,
};
use crate::config::{
    parse_ipv4, parse_vlan, BackendConfig, Config, ConntrackFilter, DnatConfig, DnatSpec, NatIndex,
    ServiceConfig, ServiceSpec, SnatConfig, Validated, ValidatedNat,
};

/// A Service as the switch holds it.
#[derive(Debug, Clone)]
struct InstalledService {
    /// Its position in `Config::services`.
    slot: usize,
    spec: ServiceSpec,
    compiled: Arc<Service>,
}

/// The NAT configuration, compiled and indexed. Owned by the control thread.
#[derive(Debug, Default, Clone)]
pub(super) struct NatState {
    /// What every snapshot carries (cloned: O(1)).
    pub(super) rules: NatRules,
    /// Filters for the next snapshot only; see [`NatState::take_purge`].
    purge: Vec<CtFilter>,
    /// The purge of the last compiled snapshot, for tests.
    #[cfg(test)]
    last_purge: Vec<CtFilter>,
    index: NatIndex,
    services: HashMap<String, InstalledService>,
    /// Parallel to `Config::snat`.
    snat: Vec<SnatRule>,
    /// Parallel to `Config::dnat`.
    dnat: Vec<DnatSpec>,
    /// A port forward's frontend -> its position in `Config::dnat` and `dnat`.
    dnat_slots: HashMap<Frontend, usize>,
    /// Service ids by name, and names by id, while the Service exists. An id is never given
    /// to another Service (ids only grow), so a deleted Service's id, whose connections are
    /// purged with its deletion, can be forgotten: the maps stay as large as the Services.
    ids: HashMap<String, u32>,
    names: HashMap<u32, String>,
    next_id: u32,
}

fn compile_service(id: u32, spec: &ServiceSpec) -> Service {
    Service::new(
        id,
        spec.name.clone(),
        spec.proto,
        spec.vip,
        spec.port,
        spec.node_port,
        spec.backends
            .iter()
            .map(|b| Backend {
                addr: b.addr,
                weight: b.effective_weight(),
            })
            .collect(),
        spec.scheduler,
        spec.affinity_secs.map(|s| s * 1000),
    )
}

/// Puts a Service under its frontends (the VIP, and the node port).
fn insert_service(rules: &mut NatRules, spec: &ServiceSpec, compiled: &Arc<Service>) {
    for f in spec.frontends() {
        rules
            .frontends
            .insert(f, Target::Service(Arc::clone(compiled)));
    }
}

fn purge_service(id: u32) -> CtFilter {
    CtFilter {
        service: Some(id),
        ..CtFilter::default()
    }
}

fn purge_dnat(d: &DnatSpec) -> CtFilter {
    CtFilter {
        proto: Some(d.proto),
        orig_dst: Some(SocketAddrV4::new(d.address, d.port)),
        ..CtFilter::default()
    }
}

/// What to forget when Service `id` changes from `old` to `new`: everything if its frontend
/// changed, else the connections of each backend that is gone.
fn purge_of_change(id: u32, old: &ServiceSpec, new: &ServiceSpec) -> Vec<CtFilter> {
    if (old.proto, old.vip, old.port, old.node_port)
        != (new.proto, new.vip, new.port, new.node_port)
    {
        return vec![purge_service(id)];
    }
    let kept: HashSet<SocketAddrV4> = new.backends.iter().map(|b| b.addr).collect();
    old.backends
        .iter()
        .filter(|b| !kept.contains(&b.addr))
        .map(|b| CtFilter {
            service: Some(id),
            backend: Some(b.addr),
            ..CtFilter::default()
        })
        .collect()
}

impl NatState {
    /// The id of the Service named `name`, if there is one.
    pub(super) fn service_id(&self, name: &str) -> Option<u32> {
        self.services.get(name).map(|s| s.compiled.id)
    }

    /// Service names by id.
    pub(super) fn service_names(&self) -> HashMap<u32, String> {
        self.services
            .iter()
            .map(|(n, s)| (s.compiled.id, n.clone()))
            .collect()
    }

    /// The id of Service `name`: its own if it ever had one, else the next.
    /// Forgets the id of a deleted Service.
    fn forget(&mut self, name: &str) {
        if let Some(id) = self.ids.remove(name) {
            self.names.remove(&id);
        }
    }

    fn id_of(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        self.next_id += 1;
        self.ids.insert(name.to_string(), self.next_id);
        self.names.insert(self.next_id, name.to_string());
        self.next_id
    }

    /// The purge of the snapshot being compiled: this change's, once.
    pub(super) fn take_purge(&mut self) -> Vec<CtFilter> {
        let purge = std::mem::take(&mut self.purge);
        #[cfg(test)]
        {
            self.last_purge = purge.clone();
        }
        purge
    }

    /// The state of a reloaded configuration: built from `v`, reusing the compiled Services
    /// that did not change, with the purge of what went away. O(the whole configuration).
    fn rebuilt(&self, v: ValidatedNat) -> NatState {
        let mut next = NatState {
            index: v.index,
            ids: self.ids.clone(),
            names: self.names.clone(),
            next_id: self.next_id,
            ..NatState::default()
        };
        next.rules.conntrack_max = v.conntrack_max;
        next.rules.snat = Arc::from(v.snat.as_slice());
        next.snat = v.snat;
        let mut purge = Vec::new();
        for (slot, spec) in v.services.into_iter().enumerate() {
            let id = next.id_of(&spec.name);
            let compiled = match self.services.get(&spec.name) {
                Some(old) if old.spec == spec => Arc::clone(&old.compiled),
                Some(old) => {
                    purge.extend(purge_of_change(id, &old.spec, &spec));
                    Arc::new(compile_service(id, &spec))
                }
                None => Arc::new(compile_service(id, &spec)),
            };
            insert_service(&mut next.rules, &spec, &compiled);
            next.services.insert(
                spec.name.clone(),
                InstalledService {
                    slot,
                    spec,
                    compiled,
                },
            );
        }
        for (name, old) in &self.services {
            if !next.services.contains_key(name) {
                purge.push(purge_service(old.compiled.id));
                next.forget(name);
            }
        }
        for (slot, d) in v.dnat.iter().enumerate() {
            next.rules
                .frontends
                .insert(d.frontend(), Target::Dnat(d.to));
            next.dnat_slots.insert(d.frontend(), slot);
        }
        for d in &self.dnat {
            let kept = next
                .dnat_slots
                .get(&d.frontend())
                .is_some_and(|&i| v.dnat[i].to == d.to);
            if !kept {
                purge.push(purge_dnat(d));
            }
        }
        next.dnat = v.dnat;
        next.purge = purge;
        next
    }
}

/// One line of `snat list`.
#[derive(Debug, Clone, Serialize)]
pub struct SnatInfo {
    pub source: String,
    pub out_vlan: u16,
    /// The fixed source address; none when masquerading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub masquerade: bool,
    /// Destinations that keep their source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
}

/// One line of `dnat list`.
#[derive(Debug, Clone, Serialize)]
pub struct DnatInfo {
    pub protocol: &'static str,
    pub address: String,
    pub port: u16,
    pub to: String,
    /// Connections tracked through this port forward now.
    pub connections: u64,
    /// The container whose port mapping this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// One Service of `service list`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceInfo {
    pub name: String,
    pub id: u32,
    pub protocol: &'static str,
    pub vip: String,
    pub port: u16,
    pub scheduler: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    pub backends: Vec<BackendInfo>,
}

/// A backend in `service list`.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    pub address: String,
    /// As configured (a draining backend keeps it, for when it comes back).
    pub weight: u16,
    /// "active", or "draining" (drain, or weight 0): no new connections.
    pub state: &'static str,
    /// Connections tracked to this backend now.
    pub connections: u64,
}

/// One direction of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct TupleInfo {
    pub src: String,
    pub dst: String,
    /// For ICMP echo, the identifier.
    pub sport: u16,
    pub dport: u16,
}

impl From<&FlowKey> for TupleInfo {
    fn from(k: &FlowKey) -> Self {
        TupleInfo {
            src: k.src.to_string(),
            dst: k.dst.to_string(),
            sport: k.sport,
            dport: k.dport,
        }
    }
}

/// One tracked connection of `conntrack show`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub protocol: &'static str,
    /// The TCP state, or "REPLIED" / "UNREPLIED".
    pub state: &'static str,
    pub expires_secs: u64,
    /// As the first packet had it.
    pub orig: TupleInfo,
    /// As replies come (after translation).
    pub reply: TupleInfo,
    /// "snat", "dnat".
    pub nat: Vec<&'static str>,
    pub replied: bool,
    pub assured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Original direction, reply direction.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

/// The tables' size and counters, summed over workers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConntrackSummary {
    /// Connections tracked.
    pub entries: u64,
    /// Of them, those the filters picked.
    pub shown: u64,
    pub max: u64,
    pub inserted: u64,
    pub insert_failed: u64,
    pub clashes: u64,
    pub expired: u64,
    pub early_drops: u64,
    pub deleted: u64,
}

/// `conntrack show`.
#[derive(Debug, Clone, Serialize)]
pub struct ConntrackShow {
    pub entries: Vec<ConnectionInfo>,
    pub summary: ConntrackSummary,
}

/// NAT counters, summed over workers (`stats`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NatStats {
    /// Connections tracked so far.
    pub connections: u64,
    /// Packets whose addresses or ports were rewritten.
    pub translated: u64,
    /// ICMP errors about translated connections, translated too.
    pub icmp_translated: u64,
    /// Connections to a Service without backends, refused.
    pub rejected: u64,
    /// Segments refused by the TCP state machine or window check.
    pub invalid: u64,
    /// New connections not tracked because the table was full.
    pub insert_failed: u64,
    /// Connections tracked now.
    pub entries: u64,
    /// The tables' bound.
    pub max: u64,
    /// Connections forgotten because they expired.
    pub expired: u64,
    /// Connections evicted early to make room in a full table.
    pub evicted: u64,
}

impl Switch {
    /// The NAT rules the next snapshot carries.
    pub fn nat_rules(&self) -> &NatRules {
        &self.nat.rules
    }

    /// The NAT state for `config` on reload: `None` when no NAT section and no interface
    /// changed (the current state stays), else re-checked and rebuilt.
    pub(super) fn nat_for(
        &self,
        config: &Config,
        validated: &Validated,
    ) -> Result<Option<NatState>, SwitchError> {
        let old = &self.config;
        if config.services == old.services
            && config.dnat == old.dnat
            && config.snat == old.snat
            && config.interfaces == old.interfaces
            && config.switch.conntrack_max == old.switch.conntrack_max
        {
            return Ok(None);
        }
        let v = config.validate_nat(&validated.interfaces)?;
        Ok(Some(self.nat.rebuilt(v)))
    }

    /// Publishes `rules`, with `purge` on that snapshot only, and the configuration changed by
    /// `edit` (saved before the workers see it); on error the rules are put back and `undo`
    /// reverses `edit`.
    fn publish_nat(
        &mut self,
        rules: NatRules,
        purge: Vec<CtFilter>,
        edit: impl FnOnce(&mut Config),
        undo: impl FnOnce(&mut Config),
    ) -> Result<(), SwitchError> {
        let old = std::mem::replace(&mut self.nat.rules, rules);
        // Inside a batch, the purges of its changes ride together on its one snapshot.
        let kept = self.nat.purge.len();
        self.nat.purge.extend(purge);
        edit(&mut self.config);
        if let Err(e) = self.publish() {
            self.nat.rules = old;
            self.nat.purge.truncate(kept);
            undo(&mut self.config);
            return Err(e);
        }
        Ok(())
    }

    /// `snat add`: the rule goes last (the first match applies).
    pub fn add_snat(&mut self, snat: SnatConfig) -> Result<(), SwitchError> {
        let rule = snat.validate("snat", &self.routing.interfaces)?;
        check_snat_unique("snat", &rule, &self.nat.snat)?;
        let mut list = self.nat.snat.clone();
        list.push(rule);
        let mut rules = self.nat.rules.clone();
        rules.snat = Arc::from(list.as_slice());
        self.publish_nat(
            rules,
            Vec::new(),
            |c| c.snat.push(snat),
            |c| drop(c.snat.pop()),
        )?;
        self.nat.snat = list;
        Ok(())
    }

    /// `snat del`: the rule for a source prefix and egress VLAN. Connections it translated
    /// keep their translation until they end.
    pub fn del_snat(&mut self, source: &str, out_vlan: u16) -> Result<(), SwitchError> {
        let (addr, len) = parse_source("snat.source", source)?;
        let vlan = parse_vlan("snat.out_vlan", out_vlan)?;
        let Some(i) = self
            .nat
            .snat
            .iter()
            .position(|r| (r.source, r.source_len, r.out_vlan) == (addr, len, vlan))
        else {
            return Err(SwitchError::NoSuchSnat(format!(
                "{addr}/{len} out-vlan {out_vlan}"
            )));
        };
        self.may_change(
            || format!("snat {addr}/{len} out-vlan {out_vlan}"),
            &self.config.snat[i].owner,
        )?;
        let mut list = self.nat.snat.clone();
        list.remove(i);
        let mut rules = self.nat.rules.clone();
        rules.snat = Arc::from(list.as_slice());
        let removed = self.config.snat[i].clone();
        self.publish_nat(
            rules,
            Vec::new(),
            |c| drop(c.snat.remove(i)),
            |c| c.snat.insert(i, removed),
        )?;
        self.nat.snat = list;
        Ok(())
    }

    /// `snat list`, in the order rules apply.
    pub fn list_snat(&self) -> Vec<SnatInfo> {
        self.nat
            .snat
            .iter()
            .map(|r| SnatInfo {
                source: format!("{}/{}", r.source, r.source_len),
                out_vlan: r.out_vlan.get(),
                to: r.to.map(|a| a.to_string()),
                masquerade: r.to.is_none(),
                except: r.except.map(|(a, l)| format!("{a}/{l}")),
            })
            .collect()
    }

    /// `dnat add`.
    pub fn add_dnat(&mut self, dnat: DnatConfig) -> Result<(), SwitchError> {
        let spec = dnat.validate("dnat", &self.routing.interfaces)?;
        self.nat
            .index
            .check_dnat("dnat", &spec, &self.routing.interfaces)?;
        let mut rules = self.nat.rules.clone();
        rules
            .frontends
            .insert(spec.frontend(), Target::Dnat(spec.to));
        let slot = self.config.dnat.len();
        self.publish_nat(
            rules,
            Vec::new(),
            |c| c.dnat.push(dnat),
            |c| drop(c.dnat.pop()),
        )?;
        self.nat.index.insert_dnat(&spec);
        self.nat.dnat_slots.insert(spec.frontend(), slot);
        self.nat.dnat.push(spec);
        Ok(())
    }

    /// `dnat del`: the port forward of (protocol, address, port), and its connections.
    pub fn del_dnat(
        &mut self,
        protocol: Option<&str>,
        address: &str,
        port: u32,
    ) -> Result<(), SwitchError> {
        let frontend = Frontend {
            proto: parse_protocol("dnat.protocol", protocol)?,
            addr: parse_ipv4("dnat.address", address)?,
            port: parse_port("dnat.port", port)?,
        };
        let Some(&slot) = self.nat.dnat_slots.get(&frontend) else {
            return Err(SwitchError::NoSuchDnat(
                crate::config::nat::describe_frontend(&frontend),
            ));
        };
        let spec = self.nat.dnat[slot];
        let mut rules = self.nat.rules.clone();
        rules.frontends.remove(&frontend);
        let removed = self.config.dnat[slot].clone();
        self.publish_nat(
            rules,
            vec![purge_dnat(&spec)],
            |c| drop(c.dnat.swap_remove(slot)),
            |c| unswap_remove(&mut c.dnat, slot, removed),
        )?;
        self.nat.index.remove_dnat(&spec);
        self.nat.dnat_slots.remove(&frontend);
        self.nat.dnat.swap_remove(slot);
        if let Some(moved) = self.nat.dnat.get(slot) {
            self.nat.dnat_slots.insert(moved.frontend(), slot);
        }
        Ok(())
    }

    /// `dnat list`, with the connections each tracks now.
    pub fn list_dnat(&self) -> Result<Vec<DnatInfo>, SwitchError> {
        let mut counts: HashMap<Frontend, u64> = HashMap::new();
        if !self.nat.dnat.is_empty() {
            for dump in self.conntrack_dumps()? {
                for e in dump
                    .entries
                    .iter()
                    .filter(|e| e.nat & NAT_DNAT != 0 && e.backend.is_none())
                {
                    let f = Frontend {
                        proto: e.orig.proto,
                        addr: e.orig.dst,
                        port: e.orig.dport,
                    };
                    *counts.entry(f).or_default() += 1;
                    // A forward on every router address counts them all.
                    *counts
                        .entry(Frontend::node_port(f.proto, f.port))
                        .or_default() += 1;
                }
            }
        }
        Ok(self
            .nat
            .dnat
            .iter()
            .zip(&self.config.dnat)
            .map(|(d, c)| DnatInfo {
                protocol: protocol_name(d.proto),
                address: d.address.to_string(),
                port: d.port,
                to: d.to.to_string(),
                connections: counts.get(&d.frontend()).copied().unwrap_or(0),
                container_id: c.container_id.clone(),
            })
            .collect())
    }

    /// `service add`: O(the Service's backends), whatever the number of Services.
    pub fn add_service(&mut self, service: ServiceConfig) -> Result<(), SwitchError> {
        if self.nat.services.contains_key(&service.name) {
            return Err(SwitchError::ServiceExists(service.name));
        }
        let at = format!("service {}", service.name);
        let interfaces = &self.routing.interfaces;
        let spec = service.validate(&at, interfaces)?;
        self.nat.index.check_service(&at, &spec, interfaces)?;
        let id = self.nat.id_of(&spec.name);
        let compiled = Arc::new(compile_service(id, &spec));
        let mut rules = self.nat.rules.clone();
        insert_service(&mut rules, &spec, &compiled);
        let slot = self.config.services.len();
        self.publish_nat(
            rules,
            Vec::new(),
            |c| c.services.push(service),
            |c| drop(c.services.pop()),
        )?;
        self.nat.index.insert_service(&spec);
        self.nat.services.insert(
            spec.name.clone(),
            InstalledService {
                slot,
                spec,
                compiled,
            },
        );
        Ok(())
    }

    /// `service del`: the Service and its connections. O(1) in the number of Services.
    pub fn del_service(&mut self, name: &str) -> Result<(), SwitchError> {
        let Some(installed) = self.nat.services.get(name) else {
            return Err(SwitchError::NoSuchService(name.to_string()));
        };
        self.may_change(
            || format!("service {name}"),
            &self.config.services[installed.slot].owner,
        )?;
        let mut rules = self.nat.rules.clone();
        for f in installed.spec.frontends() {
            rules.frontends.remove(&f);
        }
        let purge = vec![purge_service(installed.compiled.id)];
        let slot = installed.slot;
        let removed = self.config.services[slot].clone();
        self.publish_nat(
            rules,
            purge,
            |c| drop(c.services.swap_remove(slot)),
            |c| unswap_remove(&mut c.services, slot, removed),
        )?;
        let Some(installed) = self.nat.services.remove(name) else {
            return Ok(());
        };
        self.nat.forget(name);
        self.nat.index.remove_service(&installed.spec);
        if let Some(moved) = self.config.services.get(slot) {
            if let Some(m) = self.nat.services.get_mut(&moved.name) {
                m.slot = slot;
            }
        }
        Ok(())
    }

    /// `service set-backends`: replaces the backend list (empty: the Service rejects new
    /// connections). Connections of removed backends are forgotten; drained ones keep theirs.
    /// O(the Service's backends).
    pub fn set_service_backends(
        &mut self,
        name: &str,
        backends: Vec<BackendConfig>,
    ) -> Result<(), SwitchError> {
        let Some(installed) = self.nat.services.get(name) else {
            return Err(SwitchError::NoSuchService(name.to_string()));
        };
        self.may_change(
            || format!("service {name}"),
            &self.config.services[installed.slot].owner,
        )?;
        let at = format!("service {name}");
        let specs = validate_backends(&at, &backends)?;
        let old = &installed.spec;
        if let Some(i) = specs
            .iter()
            .position(|b| *b.addr.ip() == old.vip && b.addr.port() == old.port)
        {
            return Err(SwitchError::Config(crate::ConfigError::new(
                format!("{at}.backends[{i}]"),
                format!("{} is the Service's own frontend", specs[i].addr),
            )));
        }
        if specs == old.backends {
            return Ok(());
        }
        let spec = ServiceSpec {
            backends: specs,
            ..old.clone()
        };
        let id = installed.compiled.id;
        let slot = installed.slot;
        let purge = purge_of_change(id, old, &spec);
        let compiled = Arc::new(compile_service(id, &spec));
        let mut rules = self.nat.rules.clone();
        insert_service(&mut rules, &spec, &compiled);
        let old_backends = self.config.services[slot].backends.clone();
        self.publish_nat(
            rules,
            purge,
            |c| c.services[slot].backends = backends,
            |c| c.services[slot].backends = old_backends,
        )?;
        if let Some(installed) = self.nat.services.get_mut(name) {
            installed.spec = spec;
            installed.compiled = compiled;
        }
        Ok(())
    }

    /// `service list`, sorted by name, with each backend's tracked connections.
    pub fn list_services(&self) -> Result<Vec<ServiceInfo>, SwitchError> {
        // The workers count connections per backend: ask for those numbers, not the entries.
        let asked: Vec<(u32, SocketAddrV4)> = self
            .nat
            .services
            .values()
            .flat_map(|s| s.spec.backends.iter().map(|b| (s.compiled.id, b.addr)))
            .collect();
        let mut counts: HashMap<(u32, SocketAddrV4), u64> = HashMap::new();
        if !asked.is_empty() {
            let summary = self
                .tables()
                .conntrack_summary(asked.clone())
                .map_err(SwitchError::Worker)?;
            for (b, n) in asked.iter().zip(&summary.backend_connections) {
                *counts.entry(*b).or_default() += u64::from(*n);
            }
        }
        let mut out: Vec<ServiceInfo> = self
            .nat
            .services
            .values()
            .map(|s| {
                let id = s.compiled.id;
                ServiceInfo {
                    name: s.spec.name.clone(),
                    id,
                    protocol: protocol_name(s.spec.proto),
                    vip: s.spec.vip.to_string(),
                    port: s.spec.port,
                    scheduler: s.spec.scheduler.name(),
                    affinity_secs: s.spec.affinity_secs,
                    node_port: s.spec.node_port,
                    backends: s
                        .spec
                        .backends
                        .iter()
                        .map(|b| BackendInfo {
                            address: b.addr.to_string(),
                            weight: b.weight,
                            state: if b.effective_weight() > 0 {
                                "active"
                            } else {
                                "draining"
                            },
                            connections: counts.get(&(id, b.addr)).copied().unwrap_or(0),
                        })
                        .collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn conntrack_dumps(&self) -> Result<Vec<ConntrackDump>, SwitchError> {
        Ok(vec![self
            .tables()
            .dump_conntrack()
            .map_err(SwitchError::Worker)?])
    }

    /// The dataplane filter of `conntrack show` / `flush` options.
    fn ct_filter(&self, f: &ConntrackFilter) -> Result<CtFilter, SwitchError> {
        let service = match &f.service {
            Some(name) => Some(
                self.nat
                    .services
                    .get(name)
                    .map(|s| s.compiled.id)
                    .ok_or_else(|| SwitchError::NoSuchService(name.clone()))?,
            ),
            None => None,
        };
        Ok(CtFilter {
            proto: f
                .protocol
                .as_deref()
                .map(|p| parse_tracked_protocol("conntrack.protocol", p))
                .transpose()?,
            addr: f
                .address
                .as_deref()
                .map(|a| parse_ipv4("conntrack.address", a))
                .transpose()?,
            port: f
                .port
                .map(|p| parse_port("conntrack.port", p))
                .transpose()?,
            service,
            backend: f
                .backend
                .as_deref()
                .map(|b| parse_socket("conntrack.backend", b))
                .transpose()?,
            orig_dst: None,
        })
    }

    fn connection_info(&self, e: &CtEntry, dump: &ConntrackDump) -> ConnectionInfo {
        let mut nat = Vec::new();
        if e.nat & NAT_SNAT != 0 {
            nat.push("snat");
        }
        if e.nat & NAT_DNAT != 0 {
            nat.push("dnat");
        }
        ConnectionInfo {
            protocol: e.proto_name(),
            state: e.state_name(),
            expires_secs: e.expires.millis_since(dump.now) / 1000,
            orig: TupleInfo::from(&e.orig),
            reply: TupleInfo::from(&e.reply),
            nat,
            replied: e.replied,
            assured: e.is_assured(),
            service: e.backend.map(|(id, _)| {
                self.nat
                    .names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("#{id}"))
            }),
            backend: e.backend.map(|(_, b)| b.to_string()),
            packets: e.packets,
            bytes: e.bytes,
        }
    }

    /// `conntrack show`: the tracked connections the filter picks (every worker's), sorted by
    /// protocol and original tuple, and the tables' counters.
    pub fn show_conntrack(&self, filter: &ConntrackFilter) -> Result<ConntrackShow, SwitchError> {
        let filter = self.ct_filter(filter)?;
        let mut summary = ConntrackSummary::default();
        let mut picked: Vec<(FlowKey, ConnectionInfo)> = Vec::new();
        for dump in self.conntrack_dumps()? {
            add_dump_stats(&mut summary, &dump);
            for e in dump.entries.iter().filter(|e| filter.matches(e)) {
                picked.push((e.orig, self.connection_info(e, &dump)));
            }
        }
        picked.sort_by_key(|(k, _)| (k.proto, k.src, k.dst, k.sport, k.dport));
        summary.shown = picked.len() as u64;
        Ok(ConntrackShow {
            entries: picked.into_iter().map(|(_, c)| c).collect(),
            summary,
        })
    }

    /// `conntrack flush`: forgets the tracked connections the filter picks (every one
    /// without filters); returns how many.
    pub fn flush_conntrack(&self, filter: &ConntrackFilter) -> Result<usize, SwitchError> {
        let filter = self.ct_filter(filter)?;
        self.tables()
            .flush_conntrack(filter)
            .map_err(SwitchError::Worker)
    }

    /// The NAT counters of `stats`, with the tables' size.
    pub(super) fn nat_stats(&self) -> Result<NatStats, SwitchError> {
        let mut s = NatStats::default();
        for w in &self.workers {
            let c = &w.counters().nat;
            s.connections += c.connections.get();
            s.translated += c.translated.get();
            s.icmp_translated += c.icmp_translated.get();
            s.rejected += c.rejected.get();
            s.invalid += c.invalid.get();
            s.insert_failed += c.insert_failed.get();
        }
        let mut summary = ConntrackSummary::default();
        let dump = self
            .tables()
            .conntrack_summary(Vec::new())
            .map_err(SwitchError::Worker)?;
        add_dump_stats(&mut summary, &dump);
        s.entries = summary.entries;
        s.max = summary.max;
        s.expired = summary.expired;
        s.evicted = summary.early_drops;
        Ok(s)
    }
}

fn add_dump_stats(summary: &mut ConntrackSummary, dump: &ConntrackDump) {
    summary.entries += dump.len as u64;
    summary.max += dump.max as u64;
    summary.inserted += dump.stats.inserted;
    summary.insert_failed += dump.stats.insert_failed;
    summary.clashes += dump.stats.clashes;
    summary.expired += dump.stats.expired;
    summary.early_drops += dump.stats.early_drops;
    summary.deleted += dump.stats.deleted;
}

/// Undoes `list.swap_remove(slot)` that removed `removed`.
fn unswap_remove<T>(list: &mut Vec<T>, slot: usize, removed: T) {
    list.push(removed);
    let last = list.len() - 1;
    list.swap(slot, last);
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tapswitch_dataplane::tables::service::{PROTO_TCP, PROTO_UDP};

    use super::*;

    const BASE: &str = r#"
[switch]
conntrack_max = 4096
[[interface]]
vlan = 10
address = "10.42.0.1/24"
[[interface]]
vlan = 100
address = "10.200.0.1/24"
[[snat]]
source = "10.42.0.0/16"
out_vlan = 100
[[dnat]]
address = "10.200.0.1"
port = 8080
to = "10.42.0.2:80"
"#;

    fn service(i: usize) -> ServiceConfig {
        ServiceConfig {
            name: format!("svc-{i}"),
            vip: format!("10.96.{}.{}", i / 250, i % 250 + 1),
            port: 80,
            backends: vec![
                format!("10.42.0.{}:8080", i % 200 + 2).as_str().into(),
                "10.42.0.250:8080,weight=2".into(),
            ],
            ..ServiceConfig::default()
        }
    }

    /// A switch (no ports: no root needed) with `n` Services.
    fn switch_with(n: usize) -> Switch {
        let mut config = Config::from_toml(BASE).unwrap();
        config.services = (0..n).map(service).collect();
        Switch::start(config).unwrap()
    }

    fn vip(i: usize) -> Frontend {
        Frontend {
            proto: PROTO_TCP,
            addr: service(i).vip.parse().unwrap(),
            port: 80,
        }
    }

    fn compiled(s: &Switch, f: Frontend) -> Arc<Service> {
        match s.nat_rules().frontends.get(&f) {
            Some(Target::Service(a)) => Arc::clone(a),
            other => panic!("{f:?}: {other:?}"),
        }
    }

    /// Every Service's compiled Arc, by name.
    fn all(s: &Switch) -> HashMap<String, Arc<Service>> {
        s.nat
            .services
            .iter()
            .map(|(n, i)| (n.clone(), Arc::clone(&i.compiled)))
            .collect()
    }

    fn assert_others_shared(before: &HashMap<String, Arc<Service>>, s: &Switch, changed: &str) {
        for (name, arc) in before {
            if name == changed {
                continue;
            }
            let now = s.nat.services.get(name).map(|i| &i.compiled);
            assert!(
                now.is_some_and(|n| Arc::ptr_eq(n, arc)),
                "{name} was recompiled"
            );
            let f = s.nat.services[name].spec.frontend();
            assert!(
                Arc::ptr_eq(&compiled(s, f), arc),
                "{name}: frontend replaced"
            );
        }
    }

    #[test]
    fn start_compiles_every_section() {
        let s = switch_with(3);
        let rules = s.nat_rules();
        assert_eq!(rules.conntrack_max, 4096);
        assert_eq!(rules.snat.len(), 1);
        assert_eq!(rules.frontends.len(), 4);
        let dnat = Frontend {
            proto: PROTO_TCP,
            addr: Ipv4Addr::new(10, 200, 0, 1),
            port: 8080,
        };
        assert!(matches!(
            rules.frontends.get(&dnat),
            Some(Target::Dnat(to)) if *to == "10.42.0.2:80".parse().unwrap()
        ));
        let web = compiled(&s, vip(1));
        assert_eq!(web.name, "svc-1");
        assert_eq!(web.backends.len(), 2);
        assert_eq!(web.backends[1].weight, 2);
        assert!(s.nat.last_purge.is_empty());
    }

    #[test]
    fn one_change_touches_one_service() {
        let mut s = switch_with(100);
        let before = all(&s);

        let mut added = service(1000);
        added.node_port = Some(30080);
        s.add_service(added).unwrap();
        assert_others_shared(&before, &s, "");
        let new = compiled(&s, vip(1000));
        assert!(Arc::ptr_eq(
            &new,
            &compiled(&s, Frontend::node_port(PROTO_TCP, 30080))
        ));
        assert!(s.nat.last_purge.is_empty());

        let before = all(&s);
        s.del_service("svc-5").unwrap();
        assert_others_shared(&before, &s, "svc-5");
        assert!(s.nat_rules().frontends.get(&vip(5)).is_none());

        let before = all(&s);
        let id7 = before["svc-7"].id;
        s.set_service_backends("svc-7", vec!["10.42.0.99:8080".into()])
            .unwrap();
        assert_others_shared(&before, &s, "svc-7");
        let svc7 = compiled(&s, vip(7));
        assert_eq!(svc7.id, id7, "the id stays");
        assert_eq!(svc7.backends.len(), 1);

        // The running configuration follows, and slots stay right after a swap_remove.
        assert_eq!(s.config().services.len(), 100);
        assert!(!s.config().services.iter().any(|c| c.name == "svc-5"));
        for (name, i) in &s.nat.services {
            assert_eq!(&s.config().services[i.slot].name, name);
        }
        let moved = s.config().services[5].name.clone();
        s.del_service(&moved).unwrap();
        assert_eq!(s.config().services.len(), 99);
        assert!(Config::from_toml(&s.config().to_toml())
            .unwrap()
            .validate()
            .is_ok());
    }

    #[test]
    fn purges_ride_on_the_snapshot_of_their_change() {
        let mut s = switch_with(3);
        let id = compiled(&s, vip(1)).id;
        // svc-1 has 10.42.0.3:8080 and 10.42.0.250:8080 (weight 2).
        s.set_service_backends(
            "svc-1",
            vec!["10.42.0.250:8080,drain".into(), "10.42.0.7:8080".into()],
        )
        .unwrap();
        assert_eq!(
            s.nat.last_purge,
            [CtFilter {
                service: Some(id),
                backend: Some("10.42.0.3:8080".parse().unwrap()),
                ..CtFilter::default()
            }],
            "the removed backend only; the drained one keeps its connections"
        );
        let info = s.list_services().unwrap();
        let svc1 = info.iter().find(|i| i.name == "svc-1").unwrap();
        assert_eq!(
            svc1.backends
                .iter()
                .map(|b| (b.weight, b.state))
                .collect::<Vec<_>>(),
            [(1, "draining"), (1, "active")]
        );

        s.add_snat(SnatConfig {
            source: "10.43.0.0/16".into(),
            out_vlan: 100,
            to: None,
            ..SnatConfig::default()
        })
        .unwrap();
        assert!(s.nat.last_purge.is_empty(), "a purge is published once");

        s.del_service("svc-1").unwrap();
        assert_eq!(s.nat.last_purge, [purge_service(id)]);

        s.del_dnat(None, "10.200.0.1", 8080).unwrap();
        assert_eq!(
            s.nat.last_purge,
            [CtFilter {
                proto: Some(PROTO_TCP),
                orig_dst: Some("10.200.0.1:8080".parse().unwrap()),
                ..CtFilter::default()
            }]
        );
        // Zero backends are allowed: the Service then rejects.
        s.set_service_backends("svc-2", Vec::new()).unwrap();
        assert!(!compiled(&s, vip(2)).has_active_backends());
        assert_eq!(s.nat.last_purge.len(), 2);
    }

    #[test]
    fn ids_are_stable_while_a_service_exists_and_never_reused() {
        let mut s = switch_with(3);
        let first = compiled(&s, vip(2)).id;
        s.del_service("svc-2").unwrap();
        assert!(s.nat.ids.len() == 2 && s.nat.names.len() == 2, "forgotten");
        s.add_service(service(2)).unwrap();
        let id = compiled(&s, vip(2)).id;
        assert!(id > first, "a new id, never one given before");
        let other = compiled(&s, vip(1));

        // A reload that changes svc-2's backends and drops svc-0 and the dnat.
        let mut config = Config::from_toml(BASE).unwrap();
        config.dnat.clear();
        let mut svc2 = service(2);
        svc2.backends.pop();
        config.services = vec![service(1), svc2];
        s.reload(config).unwrap();
        assert_eq!(compiled(&s, vip(2)).id, id);
        assert!(
            Arc::ptr_eq(&compiled(&s, vip(1)), &other),
            "an unchanged Service keeps its compiled Arc"
        );
        let purge = &s.nat.last_purge;
        assert_eq!(purge.len(), 3, "{purge:?}");
        assert!(purge.contains(&CtFilter {
            service: Some(id),
            backend: Some("10.42.0.250:8080".parse().unwrap()),
            ..CtFilter::default()
        }));
        assert!(purge.iter().any(|f| f.orig_dst.is_some()));
        assert!(purge
            .iter()
            .any(|f| f.service.is_some() && f.service != Some(id) && f.backend.is_none()));
        assert_eq!(s.nat_rules().frontends.len(), 2);
    }

    #[test]
    fn a_reload_without_nat_changes_keeps_the_nat_state() {
        let mut s = switch_with(3);
        let before = all(&s);
        let mut config = s.config().clone();
        config.switch.mac_aging_secs = 60;
        s.reload(config).unwrap();
        assert_others_shared(&before, &s, "");
        assert!(s.nat.last_purge.is_empty());
    }

    #[test]
    fn errors_name_the_field_and_change_nothing() {
        let mut s = switch_with(3);
        let frontends = s.nat_rules().frontends.len();
        let config = s.config().clone();
        let mut dup_vip = service(1);
        dup_vip.name = "other".into();
        let mut on_subnet = service(9);
        on_subnet.vip = "10.42.0.77".into();
        let mut bad_backend = service(9);
        bad_backend.backends.push("10.42.0.250:8080".into());
        let cases: Vec<(Result<(), SwitchError>, &str)> = vec![
            (s.add_service(service(1)), "service svc-1: already exists"),
            (
                s.add_service(dup_vip),
                "service other.vip: tcp 10.96.0.2:80 is already the frontend of service svc-1",
            ),
            (
                s.add_service(on_subnet),
                "service svc-9.vip: 10.42.0.77 is on the subnet of the interface on VLAN 10",
            ),
            (
                s.add_service(bad_backend),
                "service svc-9.backends[2]: 10.42.0.250:8080 is listed twice",
            ),
            (
                s.set_service_backends("svc-1", vec!["10.42.0.2:8080".into(), "nope".into()]),
                "service svc-1.backends[1]: \"nope\" is not IP:PORT",
            ),
            (
                s.set_service_backends("nope", Vec::new()),
                "service nope: no such service",
            ),
            (s.del_service("nope"), "service nope: no such service"),
            (
                s.add_dnat(DnatConfig {
                    protocol: None,
                    address: "10.96.0.2".into(),
                    port: 80,
                    to: "10.42.0.9".into(),
                    container_id: None,
                }),
                "dnat.address: tcp 10.96.0.2:80 is already the frontend of service svc-1",
            ),
            (
                s.del_dnat(Some("udp"), "10.200.0.1", 8080),
                "dnat udp 10.200.0.1:8080: no such rule",
            ),
            (
                s.del_dnat(Some("sctp"), "10.200.0.1", 8080),
                "dnat.protocol: \"sctp\" is not a protocol",
            ),
            (
                s.add_snat(SnatConfig {
                    source: "10.42.0.0/16".into(),
                    out_vlan: 100,
                    to: Some("10.200.0.5".into()),
                    ..SnatConfig::default()
                }),
                "snat.source: 10.42.0.0/16 out of VLAN 100 is defined twice",
            ),
            (
                s.add_snat(SnatConfig {
                    source: "10.44.0.0/16".into(),
                    out_vlan: 7,
                    to: None,
                    ..SnatConfig::default()
                }),
                "snat.out_vlan: VLAN 7 has no router interface",
            ),
            (
                s.del_snat("10.42.0.0/16", 10),
                "snat 10.42.0.0/16 out-vlan 10: no such rule",
            ),
            (
                s.del_interface(100),
                "snat[0].out_vlan: VLAN 100 has no router interface",
            ),
        ];
        for (result, want) in cases {
            let got = result.unwrap_err().to_string();
            assert!(got.starts_with(want), "\n  got: {got}\n want: {want}");
        }
        assert_eq!(s.nat_rules().frontends.len(), frontends);
        assert_eq!(s.config(), &config);
        assert!(s.nat.last_purge.is_empty());
    }

    #[test]
    fn node_ports_and_protocols() {
        let mut s = switch_with(1);
        let mut a = service(10);
        a.node_port = Some(30080);
        s.add_service(a).unwrap();
        let mut b = service(11);
        b.node_port = Some(30080);
        let e = s.add_service(b.clone()).unwrap_err().to_string();
        assert!(
            e.starts_with("service svc-11.node_port: tcp node port 30080 is already the node port of service svc-10"),
            "{e}"
        );
        b.protocol = Some("udp".into());
        s.add_service(b).unwrap();
        assert!(s
            .nat_rules()
            .frontends
            .get(&Frontend::node_port(PROTO_UDP, 30080))
            .is_some());
        let e = s
            .add_dnat(DnatConfig {
                protocol: Some("udp".into()),
                address: "10.200.0.1".into(),
                port: 30080,
                to: "10.42.0.9".into(),
                container_id: None,
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("dnat.address: udp 10.200.0.1:30080 is on a router interface address"),
            "{e}"
        );
        s.del_service("svc-10").unwrap();
        assert!(s
            .nat_rules()
            .frontends
            .get(&Frontend::node_port(PROTO_TCP, 30080))
            .is_none());
    }

    #[test]
    fn listings_and_conntrack_without_traffic() {
        let mut s = switch_with(2);
        let snat = s.list_snat();
        assert_eq!(snat.len(), 1);
        assert!(snat[0].masquerade);
        let dnat = s.list_dnat().unwrap();
        assert_eq!((dnat[0].port, dnat[0].to.as_str()), (8080, "10.42.0.2:80"));
        assert_eq!(dnat[0].connections, 0);
        let services = s.list_services().unwrap();
        assert_eq!(
            services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["svc-0", "svc-1"]
        );
        assert_eq!(services[0].scheduler, "maglev");
        let show = s.show_conntrack(&ConntrackFilter::default()).unwrap();
        assert!(show.entries.is_empty());
        assert_eq!(show.summary.max, 4096);
        let filter = ConntrackFilter {
            protocol: Some("icmp".into()),
            address: Some("10.42.0.2".into()),
            port: Some(80),
            service: Some("svc-1".into()),
            backend: Some("10.42.0.2:8080".into()),
        };
        assert_eq!(s.flush_conntrack(&filter).unwrap(), 0);
        for (filter, want) in [
            (
                ConntrackFilter {
                    service: Some("nope".into()),
                    ..ConntrackFilter::default()
                },
                "service nope: no such service",
            ),
            (
                ConntrackFilter {
                    protocol: Some("gre".into()),
                    ..ConntrackFilter::default()
                },
                "conntrack.protocol: \"gre\" is not a protocol (tcp, udp, icmp)",
            ),
            (
                ConntrackFilter {
                    backend: Some("10.42.0.2".into()),
                    ..ConntrackFilter::default()
                },
                "conntrack.backend:",
            ),
        ] {
            let e = s.show_conntrack(&filter).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        let stats = s.stats().unwrap();
        assert_eq!((stats.nat.entries, stats.nat.max), (0, 4096));
        s.add_dnat(DnatConfig {
            protocol: Some("udp".into()),
            address: "10.200.0.1".into(),
            port: 53,
            to: "10.42.0.3".into(),
            container_id: None,
        })
        .unwrap();
        s.del_dnat(None, "10.200.0.1", 8080).unwrap();
        let dnat = s.list_dnat().unwrap();
        assert_eq!(
            (dnat.len(), dnat[0].protocol, dnat[0].to.as_str()),
            (1, "udp", "10.42.0.3:53")
        );
        s.del_dnat(Some("udp"), "10.200.0.1", 53).unwrap();
        assert!(s.config().dnat.is_empty());
    }
}
