//! `batch`: many changes carried out as one, with one publication and one save. Agents (the
//! cluster agent) use it so that a burst of changes, or a whole resync, costs one snapshot
//! instead of one per entry, and so that the entries they add are theirs.
//!
//! - Each request of a batch succeeds or fails on its own (the answer lists the results in
//!   order); a request that fails changes nothing.
//! - The changes to VNIs, static neighbours, static FDB entries, interfaces and routes are
//!   made to one candidate configuration, checked once and compiled once (O(the
//!   configuration) for the whole batch, not per entry). If that candidate is refused, they
//!   are carried out one by one, so that each gets its own verdict. NAT changes (SNAT, port
//!   forwards, Services) follow, each O(that change), in the order given.
//! - **Owner.** A batch may name an `owner` (`"cluster"`): the entries it adds carry it, and
//!   it may remove or change only entries it owns; requests outside such a batch may not
//!   touch them. Owned entries are not saved in the state directory (their agent restores
//!   them from its own source) and `tapswitch config` leaves them out.
//! - Workers see the batch's changes all at once or not at all. If the publication fails
//!   (the state cannot be saved), everything is put back and the batch is refused.

use serde::Serialize;

use super::{Switch, SwitchError};
use crate::api::{self, Request, Response};
use crate::config::{parse_cidr, parse_mac, parse_vlan, Config, FdbConfig, PortConfig};

/// Most requests in one batch.
pub const BATCH_MAX: usize = 100_000;

/// What was there before a batch, to put back if it cannot be published.
struct SavePoint {
    config: Config,
    routing: std::sync::Arc<tapswitch_dataplane::pipeline::RoutingState>,
    nat: super::nat::NatState,
    ports: Vec<Option<super::Port>>,
    tunnels: Vec<std::sync::Arc<tapswitch_dataplane::io::TunnelSocket>>,
    ipip: Option<std::sync::Arc<tapswitch_dataplane::io::ipip::IpipSocket>>,
    deleting: usize,
}

/// Whether `req` edits the topology lists (carried out on one candidate).
fn is_topology(req: &Request) -> bool {
    matches!(
        req,
        Request::VxlanAdd { .. }
            | Request::VxlanDel { .. }
            | Request::NeighAdd { .. }
            | Request::NeighDel { .. }
            | Request::FdbAdd { .. }
            | Request::FdbDel { .. }
            | Request::InterfaceAdd { .. }
            | Request::InterfaceDel { .. }
            | Request::RouteAdd { .. }
            | Request::RouteDel { .. }
    )
}

/// Whether `req` may be part of a batch: changes to tables, not to ports or the daemon.
fn batchable(req: &Request) -> bool {
    is_topology(req)
        || matches!(
            req,
            Request::SnatAdd { .. }
                | Request::SnatDel { .. }
                | Request::DnatAdd { .. }
                | Request::DnatDel { .. }
                | Request::ServiceAdd { .. }
                | Request::ServiceDel { .. }
                | Request::ServiceSetBackends { .. }
        )
}

/// The `cmd` of a request, for messages.
pub fn command_name(req: &Request) -> String {
    serde_json::to_value(req)
        .ok()
        .and_then(|v| v.get("cmd").and_then(|c| c.as_str()).map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// The summary a batch answers with.
#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    /// How many requests succeeded and failed.
    pub applied: usize,
    pub failed: usize,
    /// One result per request, in order.
    pub results: Vec<Response>,
}

impl Switch {
    /// The agent whose batch is being carried out, if any.
    pub fn acting_owner(&self) -> Option<&str> {
        self.acting_owner.as_deref()
    }

    /// Refuses a change to an entry that belongs to someone other than the one asking: an
    /// agent changes only its own entries, and nobody else changes them.
    pub(super) fn may_change(
        &self,
        what: impl FnOnce() -> String,
        owner: &Option<String>,
    ) -> Result<(), SwitchError> {
        if *owner == self.acting_owner {
            return Ok(());
        }
        let message = match (owner, &self.acting_owner) {
            (Some(o), _) => format!(
                "{} is managed by the {o} agent; it changes only through that agent",
                what()
            ),
            (None, Some(a)) => format!(
                "{} is not managed by the {a} agent, which changes only its own entries",
                what()
            ),
            (None, None) => unreachable!("equal owners"),
        };
        Err(SwitchError::Owned(message))
    }

    /// Carries out `requests` as one change (see the module documentation).
    pub fn batch(
        &mut self,
        owner: Option<String>,
        requests: Vec<Request>,
    ) -> Result<BatchResult, SwitchError> {
        if self.deferred.is_some() {
            return Err(SwitchError::Batch("a batch cannot hold a batch".into()));
        }
        if requests.len() > BATCH_MAX {
            return Err(SwitchError::Batch(format!(
                "{} requests; at most {BATCH_MAX}",
                requests.len()
            )));
        }
        if let Some(o) = &owner {
            if o.is_empty()
                || o.len() > 32
                || !o.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(SwitchError::Batch(format!(
                    "owner {o:?}: 1 to 32 letters, digits or '-'"
                )));
            }
        }
        if let Some((i, r)) = requests.iter().enumerate().find(|(_, r)| !batchable(r)) {
            return Err(SwitchError::Batch(format!(
                "requests[{i}] ({}) cannot be part of a batch: only changes to VNIs, \
                 neighbours, FDB entries, interfaces, routes, SNAT, port forwards and Services",
                command_name(r)
            )));
        }
        // What to put back if the batch cannot be saved. An agent's batch changes only its
        // own entries, which are not saved: nothing to save, nothing that can fail to be, so
        // no copy (O(the configuration)) is made for it.
        let save = owner.is_none().then(|| SavePoint {
            config: self.config.clone(),
            routing: std::sync::Arc::clone(&self.routing),
            nat: self.nat.clone(),
            ports: self.ports.clone(),
            tunnels: self.tunnels.clone(),
            ipip: self.ipip.clone(),
            deleting: self.deleting.len(),
        });
        self.acting_owner = owner;
        self.deferred = Some(false);
        let mut results: Vec<Option<Response>> = vec![None; requests.len()];
        let topology: Vec<usize> = (0..requests.len())
            .filter(|&i| is_topology(&requests[i]))
            .collect();
        if !topology.is_empty() {
            let mut candidate = self.config.clone();
            let mut edited = Vec::new();
            for &i in &topology {
                match self.edit(&mut candidate, &requests[i]) {
                    Ok(()) => edited.push(i),
                    Err(e) => results[i] = Some(Response::error(e)),
                }
            }
            let grouped = !edited.is_empty() && self.reload(candidate).is_ok();
            for &i in &edited {
                results[i] = Some(if grouped {
                    Response::ok(())
                } else {
                    // Refused as a whole: one by one, each with its own verdict.
                    api::handle(self, requests[i].clone())
                });
            }
        }
        for (i, req) in requests.into_iter().enumerate() {
            if results[i].is_none() {
                results[i] = Some(api::handle(self, req));
            }
        }
        self.acting_owner = None;
        let pending = self.deferred.take().unwrap_or(false);
        if pending {
            if let Err(e) = self.publish() {
                if let Some(save) = save {
                    self.config = save.config;
                    self.routing = save.routing;
                    self.nat = save.nat;
                    self.ports = save.ports;
                    self.tunnels = save.tunnels;
                    self.ipip = save.ipip;
                    self.deleting.truncate(save.deleting);
                }
                return Err(e);
            }
        }
        let results: Vec<Response> = results.into_iter().flatten().collect();
        let applied = results.iter().filter(|r| r.ok).count();
        Ok(BatchResult {
            applied,
            failed: results.len() - applied,
            results,
        })
    }

    /// Makes the change of topology request `req` to `candidate`, checking what does not
    /// need the whole configuration (the entry to remove exists and may be changed).
    fn edit(&self, candidate: &mut Config, req: &Request) -> Result<(), SwitchError> {
        let owner = self.acting_owner.clone();
        match req.clone() {
            Request::VxlanAdd { mut vxlan } => {
                vxlan.owner = owner;
                candidate.vxlan.push(vxlan);
            }
            Request::VxlanDel { vni } => {
                let Some(v) = candidate.vxlan.iter().find(|v| v.vni == vni) else {
                    return Err(SwitchError::NoSuchVni(vni));
                };
                self.may_change(|| format!("vxlan {vni}"), &v.owner)?;
                // Its FDB and neighbour entries go with it: they must be the asker's too.
                for e in candidate.fdb.iter().filter(|e| e.vni == Some(vni)) {
                    self.may_change(|| format!("fdb {} (vni {vni})", e.mac), &e.owner)?;
                }
                for n in candidate.neigh.iter().filter(|n| n.vni == vni) {
                    self.may_change(|| format!("neigh {} (vni {vni})", n.ip), &n.owner)?;
                }
                candidate.vxlan.retain(|v| v.vni != vni);
                candidate.fdb.retain(|e| e.vni != Some(vni));
                candidate.neigh.retain(|n| n.vni != vni);
            }
            Request::NeighAdd { mut neigh } => {
                neigh.owner = owner;
                candidate.neigh.push(neigh);
            }
            Request::NeighDel { ip, vni } => {
                let hit =
                    |n: &crate::config::NeighConfig| n.ip == ip && vni.is_none_or(|v| v == n.vni);
                let mut found = false;
                for n in candidate.neigh.iter().filter(|n| hit(n)) {
                    self.may_change(|| format!("neigh {ip}"), &n.owner)?;
                    found = true;
                }
                if !found {
                    return Err(SwitchError::NoSuchNeigh(ip));
                }
                candidate.neigh.retain(|n| !hit(n));
            }
            Request::FdbAdd { mut entry } => {
                entry.owner = owner;
                candidate.fdb.push(entry);
            }
            Request::FdbDel { mac, vlan } => {
                let wanted = parse_mac("mac", &mac)?;
                let vlan = vlan.map(|v| parse_vlan("vlan", v)).transpose()?;
                let hit = |e: &FdbConfig| {
                    parse_mac("", &e.mac).is_ok_and(|m| m == wanted)
                        && vlan.is_none_or(|v| fdb_vlan(candidate, e) == Some(v.get()))
                };
                let mut found = false;
                for e in candidate.fdb.iter().filter(|e| hit(e)) {
                    self.may_change(|| format!("fdb {mac}"), &e.owner)?;
                    found = true;
                }
                if !found {
                    return Err(SwitchError::NoSuchFdbEntry(mac));
                }
                let keep: Vec<FdbConfig> =
                    candidate.fdb.iter().filter(|e| !hit(e)).cloned().collect();
                candidate.fdb = keep;
            }
            Request::InterfaceAdd { mut interface } => {
                if candidate
                    .interfaces
                    .iter()
                    .any(|i| i.vlan == interface.vlan)
                {
                    return Err(SwitchError::InterfaceExists(interface.vlan));
                }
                interface.owner = owner;
                candidate.interfaces.push(interface);
            }
            Request::InterfaceDel { vlan } => {
                let Some(i) = candidate.interfaces.iter().find(|i| i.vlan == vlan) else {
                    return Err(SwitchError::NoSuchInterface(vlan));
                };
                self.may_change(|| format!("interface {vlan}"), &i.owner)?;
                candidate.interfaces.retain(|i| i.vlan != vlan);
            }
            Request::RouteAdd { mut route } => {
                route.owner = owner;
                candidate.routes.push(route);
            }
            Request::RouteDel { prefix } => {
                let (addr, len) = parse_cidr("route.prefix", &prefix, true)?;
                let hit = |r: &crate::config::RouteConfig| {
                    parse_cidr("", &r.prefix, true).is_ok_and(|p| p == (addr, len))
                };
                let Some(r) = candidate.routes.iter().find(|r| hit(r)) else {
                    return Err(SwitchError::NoSuchRoute(prefix));
                };
                self.may_change(|| format!("route {prefix}"), &r.owner)?;
                candidate.routes.retain(|r| !hit(r));
            }
            other => {
                return Err(SwitchError::Batch(format!(
                    "{} is not a topology change",
                    command_name(&other)
                )))
            }
        }
        Ok(())
    }
}

/// The VLAN of a static FDB entry as written: its own `vlan`, its VNI's VLAN, or its port's
/// access (or native) VLAN.
fn fdb_vlan(config: &Config, e: &FdbConfig) -> Option<u16> {
    if let Some(v) = e.vlan {
        return Some(v);
    }
    if let Some(vni) = e.vni {
        return config
            .vxlan
            .iter()
            .find(|v| v.vni == vni)
            .map(|v| v.vlan.unwrap_or(1));
    }
    let port: &PortConfig = config
        .ports
        .iter()
        .find(|p| Some(&p.name) == e.port.as_ref())?;
    match &port.trunk {
        Some(_) => port.native_vlan,
        None => Some(port.vlan.unwrap_or(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Addresses, InterfaceConfig, NeighConfig, RouteConfig, ServiceConfig, VxlanConfig,
    };

    const BASE: &str = r#"
[[interface]]
vlan = 10
address = "10.42.1.1/24"
"#;

    fn switch() -> Switch {
        Switch::start(Config::from_toml(BASE).unwrap()).unwrap()
    }

    /// What the cluster agent programs for one vxlan peer, plus the overlay itself. Its UDP
    /// port is below the ephemeral range, where no other test's sending sockets land.
    fn overlay(udp: u16) -> Vec<Request> {
        vec![
            Request::InterfaceAdd {
                interface: InterfaceConfig {
                    vlan: 4094,
                    address: Addresses::One("10.42.1.0/32".into()),
                    mac: Some("02:aa:00:00:00:01".into()),
                    ..Default::default()
                },
            },
            Request::VxlanAdd {
                vxlan: VxlanConfig {
                    vni: 1,
                    vlan: Some(4094),
                    local: "127.0.0.1".into(),
                    port: Some(udp),
                    learning: Some(false),
                    ..Default::default()
                },
            },
            Request::NeighAdd {
                neigh: NeighConfig {
                    ip: "10.42.7.0".into(),
                    mac: "02:bb:00:00:00:07".into(),
                    vni: 1,
                    owner: None,
                },
            },
            Request::FdbAdd {
                entry: FdbConfig {
                    mac: "02:bb:00:00:00:07".into(),
                    vni: Some(1),
                    remote: Some("192.168.205.7".into()),
                    ..Default::default()
                },
            },
            Request::RouteAdd {
                route: RouteConfig {
                    prefix: "10.42.7.0/24".into(),
                    via: Some("10.42.7.0".into()),
                    vlan: Some(4094),
                    onlink: true,
                    ..Default::default()
                },
            },
        ]
    }

    fn ok(r: &BatchResult) {
        assert_eq!(r.failed, 0, "{:?}", r.results);
    }

    #[test]
    fn an_owned_batch_is_applied_as_one_and_stays_its_owners() {
        let mut s = switch();
        let generation = s.generation;
        let r = s.batch(Some("cluster".into()), overlay(31_001)).unwrap();
        ok(&r);
        assert_eq!(r.applied, 5);
        assert_eq!(s.generation, generation + 1, "one publication");
        assert_eq!(s.config().owned_entries(), 5);
        assert!(s.config().routes[0].owner.as_deref() == Some("cluster"));
        // Not saved, not shown as configuration.
        let user = s.config().user_view();
        assert!(user.routes.is_empty() && user.vxlan.is_empty() && user.fdb.is_empty());
        assert_eq!(user.interfaces.len(), 1);
        let route = s
            .show_routes()
            .into_iter()
            .find(|r| r.prefix == "10.42.7.0/24")
            .unwrap();
        assert_eq!(
            (route.via.as_deref(), route.vlan),
            (Some("10.42.7.0"), Some(4094))
        );
        assert!(route.onlink);
        assert_eq!(route.owner.as_deref(), Some("cluster"));
        // Nobody else changes them.
        let e = s.del_route("10.42.7.0/24").unwrap_err().to_string();
        assert!(e.contains("managed by the cluster agent"), "{e}");
        let e = api::handle(&mut s, Request::VxlanDel { vni: 1 });
        assert!(!e.ok);
        let r = s
            .batch(
                Some("other".into()),
                vec![Request::RouteDel {
                    prefix: "10.42.7.0/24".into(),
                }],
            )
            .unwrap();
        assert_eq!(r.failed, 1);
        // The owner does not change user entries either.
        let r = s
            .batch(
                Some("cluster".into()),
                vec![Request::InterfaceDel { vlan: 10 }],
            )
            .unwrap();
        assert!(r.results[0]
            .error
            .as_deref()
            .unwrap()
            .contains("not managed by the cluster agent"));
        // An owner in a plain request is refused.
        let mut add = overlay(31_001).remove(4);
        if let Request::RouteAdd { route } = &mut add {
            route.prefix = "10.42.8.0/24".into();
            route.owner = Some("cluster".into());
        }
        assert!(!api::handle(&mut s, add).ok);
        // The owner removes them, in one publication.
        let generation = s.generation;
        let r = s
            .batch(
                Some("cluster".into()),
                vec![
                    Request::RouteDel {
                        prefix: "10.42.7.0/24".into(),
                    },
                    Request::FdbDel {
                        mac: "02:bb:00:00:00:07".into(),
                        vlan: Some(4094),
                    },
                    Request::NeighDel {
                        ip: "10.42.7.0".into(),
                        vni: Some(1),
                    },
                ],
            )
            .unwrap();
        ok(&r);
        assert_eq!(s.generation, generation + 1);
        assert_eq!(s.config().owned_entries(), 2);
    }

    #[test]
    fn each_request_has_its_own_verdict() {
        let mut s = switch();
        let mut reqs = overlay(31_002);
        // A route via an address no interface reaches, and a duplicate neighbour.
        reqs.push(Request::RouteAdd {
            route: RouteConfig {
                prefix: "10.42.9.0/24".into(),
                via: Some("10.99.0.9".into()),
                ..Default::default()
            },
        });
        reqs.push(reqs[2].clone());
        reqs.push(Request::ServiceAdd {
            service: ServiceConfig {
                name: "web".into(),
                vip: "10.96.0.10".into(),
                port: 80,
                backends: vec!["10.42.7.5:8080".into()],
                ..Default::default()
            },
        });
        reqs.push(Request::ServiceDel {
            name: "nope".into(),
        });
        let r = s.batch(Some("cluster".into()), reqs).unwrap();
        let verdicts: Vec<bool> = r.results.iter().map(|r| r.ok).collect();
        assert_eq!(
            verdicts,
            [true, true, true, true, true, false, false, true, false],
            "{:?}",
            r.results
        );
        assert!(r.results[5].error.as_deref().unwrap().contains("10.99.0.9"));
        assert_eq!(s.config().services[0].owner.as_deref(), Some("cluster"));
        assert_eq!(s.config().owned_entries(), 6);
        // Service changes by others are refused; by the owner, fine.
        assert!(s
            .set_service_backends("web", vec![])
            .unwrap_err()
            .to_string()
            .contains("managed by the cluster agent"));
        let r = s
            .batch(
                Some("cluster".into()),
                vec![Request::ServiceSetBackends {
                    name: "web".into(),
                    backends: vec![],
                }],
            )
            .unwrap();
        ok(&r);
    }

    #[test]
    fn what_cannot_be_batched_is_refused_whole() {
        let mut s = switch();
        let e = s
            .batch(
                None,
                vec![
                    overlay(31_003).remove(0),
                    Request::PortDel { name: "x".into() },
                ],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("requests[1] (port_del)"), "{e}");
        let e = s
            .batch(
                None,
                vec![Request::Batch {
                    owner: None,
                    requests: vec![],
                }],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("requests[0] (batch)"), "{e}");
        assert!(s.batch(Some("a b".into()), vec![]).is_err());
        assert_eq!(s.config().interfaces.len(), 1, "nothing changed");
        // Without an owner, a batch changes user entries, which are saved as usual.
        let r = s.batch(None, overlay(31_003)).unwrap();
        ok(&r);
        assert_eq!(s.config().owned_entries(), 0);
        assert_eq!(s.config().user_view().routes.len(), 1);
    }
}
