//! `[[policy]]`, `[[admin_policy]]` and `[[baseline_policy]]`: network policy as the
//! configuration states it, and its validation into a [`PolicySpec`].
//!
//! ```toml
//! [[policy]]                      # Kubernetes NetworkPolicy semantics
//! name = "web-ingress"
//! select = { app = "web" }        # the ports it isolates; {} selects every port
//! types = ["ingress"]             # default: ingress, plus egress if it has egress rules
//!   [[policy.ingress]]
//!   from = [ { select = { role = "frontend" } }, { cidr = "10.0.0.0/8", except = ["10.0.5.0/24"] } ]
//!   ports = [ { protocol = "tcp", port = 80 }, { protocol = "tcp", port = 8000, end_port = 8100 } ]
//! [[admin_policy]]                # evaluated first, lowest priority first
//! name = "no-guests-to-db"
//! priority = 10
//! select = { app = "db" }
//!   [[admin_policy.ingress]]
//!   action = "deny"               # allow, deny or pass
//!   from = [ { select = { tier = "guest" } } ]
//! [[baseline_policy]]             # what no other tier decided
//! name = "default-deny"
//! select = {}
//!   [[baseline_policy.ingress]]
//!   action = "deny"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
pub use tapswitch_dataplane::tables::policy::Tier;
use tapswitch_dataplane::tables::policy::{Action, Block, PortMatch, PROTO_SCTP};
use tapswitch_dataplane::tables::service::{PROTO_TCP, PROTO_UDP};

use super::{check_labels, routing::parse_cidr, ConfigError};

/// One policy of any tier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    /// Admin tier: lower numbers first; equal priorities in the order the policies were
    /// added (file order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// The ports it applies to: every label must match. `{}`: all ports.
    #[serde(default)]
    pub select: BTreeMap<String, String>,
    /// `[[policy]]` only: the directions it isolates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<RuleConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<RuleConfig>,
}

/// One rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Admin and baseline tiers: `allow`, `deny` (or, admin only, `pass`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Ingress rules: the sources it matches; missing or empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<PeerConfig>>,
    /// Egress rules: the destinations it matches; missing or empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<PeerConfig>>,
    /// Destination protocols and ports; missing or empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortConfig>>,
}

/// A peer: the ports a label selector selects, or a CIDR less `except`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A destination protocol, with a port or a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// `tcp` (the default), `udp` or `sctp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Missing: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// A file of policies, as `policy add` reads it: the three sections of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub policy: Vec<PolicyConfig>,
    #[serde(default)]
    pub admin_policy: Vec<PolicyConfig>,
    #[serde(default)]
    pub baseline_policy: Vec<PolicyConfig>,
}

impl PolicyFile {
    pub fn from_toml(text: &str) -> Result<PolicyFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new("policy file", e.to_string()))
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    pub name: String,
    pub tier: Tier,
    pub priority: u32,
    pub select: BTreeMap<String, String>,
    /// `[[policy]]`: isolates the ports it selects for ingress, for egress.
    pub isolates: [bool; 2],
    pub ingress: Vec<RuleSpec>,
    pub egress: Vec<RuleSpec>,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub action: Action,
    /// `None`: all peers.
    pub peers: Option<Vec<PeerSpec>>,
    /// Empty: all protocols and ports.
    pub ports: Vec<PortMatch>,
}

/// A validated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    /// The addresses of the ports with all of these labels.
    Select(BTreeMap<String, String>),
    /// Address ranges (a CIDR less its exceptions).
    Blocks(Vec<Block>),
}

/// Whether a port with `labels` is selected by `select` (all of its labels match).
pub fn selects(select: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    select.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl PolicySpec {
    /// The rules of `direction` (0 ingress, 1 egress).
    pub fn rules(&self, direction: usize) -> &[RuleSpec] {
        if direction == 0 {
            &self.ingress
        } else {
            &self.egress
        }
    }

    /// Whether some peer selects ports by label (so a port's labels or addresses change
    /// what it matches).
    pub fn selects_peers(&self) -> bool {
        self.ingress
            .iter()
            .chain(&self.egress)
            .flat_map(|r| r.peers.iter().flatten())
            .any(|p| matches!(p, PeerSpec::Select(_)))
    }

    /// Whether some peer selector of it selects a port with `labels`.
    pub fn peer_selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.ingress
            .iter()
            .chain(&self.egress)
            .flat_map(|r| r.peers.iter().flatten())
            .any(|p| matches!(p, PeerSpec::Select(s) if selects(s, labels)))
    }
}

/// The section a tier's policies are in.
pub fn section(tier: Tier) -> &'static str {
    match tier {
        Tier::Admin => "admin_policy",
        Tier::Policy => "policy",
        Tier::Baseline => "baseline_policy",
    }
}

/// A tier by its name in the CLI and the API: `admin`, `policy` or `baseline` (or its
/// section name).
pub fn parse_tier(field: &str, s: &str) -> Result<Tier, ConfigError> {
    match s {
        "admin" | "admin_policy" => Ok(Tier::Admin),
        "policy" | "network" => Ok(Tier::Policy),
        "baseline" | "baseline_policy" => Ok(Tier::Baseline),
        _ => Err(ConfigError::new(
            field,
            format!("{s:?}: the tier is admin, policy or baseline"),
        )),
    }
}

impl PolicyConfig {
    /// One policy from TOML text (its fields at the top level, rules as `[[ingress]]`).
    pub fn from_toml(text: &str) -> Result<PolicyConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new("policy", e.to_string()))
    }

    /// Validates a policy of `tier`; `at` names it in errors (`policy[0] (web)`).
    pub fn validate(&self, tier: Tier, at: &str) -> Result<PolicySpec, ConfigError> {
        let f = |field: &str| format!("{at}.{field}");
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 253
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !name_ok {
            return Err(ConfigError::new(
                f("name"),
                format!("{:?}: 1 to 253 letters, digits and ._-/", self.name),
            ));
        }
        check_labels(&f("select"), &self.select)?;
        let priority = match (tier, self.priority) {
            (Tier::Admin, Some(p)) => p,
            (Tier::Admin, None) => {
                return Err(ConfigError::new(
                    f("priority"),
                    "an admin policy needs a priority (lower numbers are evaluated first)",
                ))
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    f("priority"),
                    "only an admin policy has a priority (this tier is evaluated in order)",
                ))
            }
            (_, None) => 0,
        };
        let isolates = match (&self.types, tier) {
            (Some(_), Tier::Admin | Tier::Baseline) => {
                return Err(ConfigError::new(
                    f("types"),
                    "only a [[policy]] has types: this tier's rules decide by their action",
                ))
            }
            (None, _) => [true, !self.egress.is_empty()],
            (Some(types), Tier::Policy) => {
                let mut iso = [false; 2];
                for t in types {
                    match t.as_str() {
                        "ingress" | "Ingress" => iso[0] = true,
                        "egress" | "Egress" => iso[1] = true,
                        _ => {
                            return Err(ConfigError::new(
                                f("types"),
                                format!("{t:?}: a type is ingress or egress"),
                            ))
                        }
                    }
                }
                if types.is_empty() {
                    return Err(ConfigError::new(
                        f("types"),
                        "names no type (leave it out for the default)",
                    ));
                }
                iso
            }
        };
        let mut rules = [Vec::new(), Vec::new()];
        for (d, (list, dir, peer_field, other)) in [
            (&self.ingress, "ingress", "from", "to"),
            (&self.egress, "egress", "to", "from"),
        ]
        .into_iter()
        .enumerate()
        {
            for (i, r) in list.iter().enumerate() {
                let at = format!("{at}.{dir}[{i}]");
                rules[d].push(r.validate(tier, &at, peer_field, other)?);
            }
        }
        let [ingress, egress] = rules;
        Ok(PolicySpec {
            name: self.name.clone(),
            tier,
            priority,
            select: self.select.clone(),
            isolates,
            ingress,
            egress,
        })
    }
}

impl RuleConfig {
    fn validate(
        &self,
        tier: Tier,
        at: &str,
        peer_field: &str,
        other: &str,
    ) -> Result<RuleSpec, ConfigError> {
        let f = |field: &str| format!("{at}.{field}");
        let action =
            match (tier, self.action.as_deref()) {
                (Tier::Policy, None) => Action::Allow,
                (Tier::Policy, Some(_)) => return Err(ConfigError::new(
                    f("action"),
                    "a [[policy]] rule allows; deny and pass are for admin and baseline policies",
                )),
                (_, None) => {
                    return Err(ConfigError::new(
                        f("action"),
                        "missing: allow or deny (or, in an admin policy, pass)",
                    ))
                }
                (_, Some("allow")) => Action::Allow,
                (_, Some("deny")) => Action::Deny,
                (Tier::Admin, Some("pass")) => Action::Pass,
                (_, Some(a)) => {
                    return Err(ConfigError::new(
                        f("action"),
                        format!(
                            "{a:?}: {}",
                            if tier == Tier::Admin {
                                "allow, deny or pass"
                            } else {
                                "allow or deny"
                            }
                        ),
                    ))
                }
            };
        let (peers, wrong) = if peer_field == "from" {
            (&self.from, &self.to)
        } else {
            (&self.to, &self.from)
        };
        if wrong.is_some() {
            return Err(ConfigError::new(
                f(other),
                format!("not in this direction: its peers are `{peer_field}`"),
            ));
        }
        let peers = match peers {
            None => None,
            Some(list) if list.is_empty() => None,
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, p) in list.iter().enumerate() {
                    out.push(p.validate(&format!("{at}.{peer_field}[{i}]"))?);
                }
                Some(out)
            }
        };
        let mut ports = Vec::new();
        for (i, p) in self.ports.iter().flatten().enumerate() {
            ports.push(p.validate(&format!("{at}.ports[{i}]"))?);
        }
        Ok(RuleSpec {
            action,
            peers,
            ports,
        })
    }
}

impl PeerConfig {
    fn validate(&self, at: &str) -> Result<PeerSpec, ConfigError> {
        let f = |field: &str| format!("{at}.{field}");
        match (&self.select, &self.cidr) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                f("cidr"),
                "a peer is either a selector or a CIDR; list them as two peers",
            )),
            (None, None) => Err(ConfigError::new(
                at,
                "a peer needs select = { ... } or cidr = \"...\"",
            )),
            (Some(select), None) => {
                if !self.except.is_empty() {
                    return Err(ConfigError::new(f("except"), "only with a cidr"));
                }
                check_labels(&f("select"), select)?;
                Ok(PeerSpec::Select(select.clone()))
            }
            (None, Some(cidr)) => {
                let (addr, len) = parse_cidr(&f("cidr"), cidr, false)?;
                let block = Block::cidr(addr, len);
                let mut holes = Vec::with_capacity(self.except.len());
                for (i, e) in self.except.iter().enumerate() {
                    let field = format!("{at}.except[{i}]");
                    let (a, l) = parse_cidr(&field, e, false)?;
                    if a.is_ipv4() != addr.is_ipv4() {
                        return Err(ConfigError::new(
                            field,
                            format!("{e:?} is not of {cidr}'s address family"),
                        ));
                    }
                    let hole = Block::cidr(a, l);
                    if !block.covers(&hole) || l <= len {
                        return Err(ConfigError::new(
                            field,
                            format!("{e:?} is not inside {cidr}"),
                        ));
                    }
                    holes.push(hole);
                }
                Ok(PeerSpec::Blocks(block.except(&holes)))
            }
        }
    }
}

impl PortConfig {
    fn validate(&self, at: &str) -> Result<PortMatch, ConfigError> {
        let f = |field: &str| format!("{at}.{field}");
        let proto = match self.protocol.as_deref().unwrap_or("tcp") {
            "tcp" | "TCP" => PROTO_TCP,
            "udp" | "UDP" => PROTO_UDP,
            "sctp" | "SCTP" => PROTO_SCTP,
            p => {
                return Err(ConfigError::new(
                    f("protocol"),
                    format!("{p:?}: tcp, udp or sctp"),
                ))
            }
        };
        let (lo, hi) = match (self.port, self.end_port) {
            (None, None) => (0, u16::MAX),
            (None, Some(_)) => {
                return Err(ConfigError::new(f("end_port"), "only with port"));
            }
            (Some(0), _) => return Err(ConfigError::new(f("port"), "0 is not a port")),
            (Some(p), None) => (p, p),
            (Some(p), Some(e)) if e < p => {
                return Err(ConfigError::new(
                    f("end_port"),
                    format!("{e} is below port {p}"),
                ))
            }
            (Some(p), Some(e)) => (p, e),
        };
        Ok(PortMatch { proto, lo, hi })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tier: Tier, text: &str) -> Result<PolicySpec, ConfigError> {
        let p: PolicyConfig = toml::from_str(text).unwrap();
        p.validate(tier, "policy[0] (p)")
    }

    #[test]
    fn the_issue_example_validates() {
        let p = policy(
            Tier::Policy,
            r#"
name = "web-ingress"
select = { app = "web", namespace = "shop" }
types = ["ingress"]
[[ingress]]
from = [ { select = { role = "frontend", namespace = "shop" } },
         { cidr = "10.0.0.0/8", except = ["10.0.5.0/24"] } ]
ports = [ { protocol = "tcp", port = 80 }, { protocol = "tcp", port = 8000, end_port = 8100 } ]
[[egress]]
to = [ { cidr = "0.0.0.0/0" } ]
ports = [ { protocol = "udp", port = 53 } ]
"#,
        )
        .unwrap();
        assert_eq!(p.isolates, [true, false]);
        assert_eq!(p.ingress[0].ports.len(), 2);
        assert_eq!(
            p.ingress[0].ports[1],
            PortMatch {
                proto: PROTO_TCP,
                lo: 8000,
                hi: 8100
            }
        );
        let Some(PeerSpec::Blocks(b)) = p.ingress[0].peers.as_ref().map(|v| v[1].clone()) else {
            panic!()
        };
        assert_eq!(b.len(), 2);
        // Without types: ingress, and egress because it has egress rules.
        let p = policy(Tier::Policy, "name = \"e\"\n[[egress]]\n").unwrap();
        assert_eq!(p.isolates, [true, true]);
        assert!(p.egress[0].peers.is_none());
    }

    #[test]
    fn bad_policies_name_the_field() {
        let err = |tier, text: &str| policy(tier, text).unwrap_err().field;
        assert_eq!(
            err(
                Tier::Policy,
                "name = \"p\"\n[[ingress]]\nfrom = [ { cidr = \"10.0.0/8\" } ]"
            ),
            "policy[0] (p).ingress[0].from[0].cidr"
        );
        assert_eq!(
            err(
                Tier::Policy,
                "name = \"p\"\n[[ingress]]\nfrom = [ { cidr = \"10.0.0.0/8\", except = [\"11.0.0.0/24\"] } ]"
            ),
            "policy[0] (p).ingress[0].from[0].except[0]"
        );
        assert_eq!(
            err(
                Tier::Policy,
                "name = \"p\"\n[[ingress]]\nports = [ { port = 90, end_port = 80 } ]"
            ),
            "policy[0] (p).ingress[0].ports[0].end_port"
        );
        assert_eq!(
            err(Tier::Policy, "name = \"p\"\nselect = { \"a b\" = \"c\" }"),
            "policy[0] (p).select"
        );
        assert_eq!(
            err(Tier::Policy, "name = \"p\"\n[[ingress]]\nto = []"),
            "policy[0] (p).ingress[0].to"
        );
        assert_eq!(
            err(Tier::Policy, "name = \"p\"\n[[ingress]]\naction = \"deny\""),
            "policy[0] (p).ingress[0].action"
        );
        assert_eq!(err(Tier::Admin, "name = \"p\""), "policy[0] (p).priority");
        assert_eq!(
            err(
                Tier::Admin,
                "name = \"p\"\npriority = 1\n[[ingress]]\naction = \"drop\""
            ),
            "policy[0] (p).ingress[0].action"
        );
        assert_eq!(
            err(
                Tier::Baseline,
                "name = \"p\"\n[[ingress]]\naction = \"pass\""
            ),
            "policy[0] (p).ingress[0].action"
        );
        assert_eq!(
            err(Tier::Policy, "name = \"p\"\ntypes = [\"sideways\"]"),
            "policy[0] (p).types"
        );
        assert_eq!(err(Tier::Policy, "name = \"\""), "policy[0] (p).name");
    }
}
