//! How the configuration file and the runtime changes combine: a three-way merge.
//!
//! tapswitch keeps the file as it was last applied (the *base*) beside the running
//! configuration (the base plus every runtime change: `port add`, `service del`, ...). When a
//! file is applied again (a start, a reload, SIGHUP) the running configuration becomes
//! [`merge`]`(base, running, file)`, entry by entry, entries being named by their key (a
//! port by its name, a Service by its name, a route by its prefix; see [`KEYS`]):
//!
//! - an entry the file did not change since the base keeps its runtime state: a runtime port
//!   survives, a port deleted at runtime stays deleted, a Service's runtime backends stay;
//! - an entry the file changed, added or removed since the base takes the file's version:
//!   an edit of the file always takes effect, also one made while tapswitch was down;
//! - `[switch]` is one entry.
//!
//! With no runtime change, the result is the file; with no file change, the running
//! configuration.

use serde_json::{Map, Value};

use super::{Config, ConfigError};

/// The array sections of [`Config`] (as serialized) and the fields that name an entry.
pub const KEYS: &[(&str, &[&str])] = &[
    ("port", &["name"]),
    ("fdb", &["mac", "vlan", "vni"]),
    ("vxlan", &["vni"]),
    ("neigh", &["ip", "vni"]),
    ("interface", &["vlan"]),
    ("route", &["prefix"]),
    ("snat", &["source", "out_vlan"]),
    ("dnat", &["protocol", "address", "port"]),
    ("service", &["name"]),
    ("policy", &["name"]),
    ("admin_policy", &["name"]),
    ("baseline_policy", &["name"]),
];

/// The running configuration after applying `file` to `running`, whose last applied file was
/// `base` (see the module docs). The result is not validated here.
pub fn merge(base: &Config, running: &Config, file: &Config) -> Result<Config, ConfigError> {
    let (b, r, f) = (object(base), object(running), object(file));
    let mut out = Map::new();
    let sections = f
        .keys()
        .chain(r.keys())
        .chain(b.keys())
        .cloned()
        .collect::<std::collections::BTreeSet<_>>();
    for section in sections {
        let (bv, rv, fv) = (b.get(&section), r.get(&section), f.get(&section));
        let merged = match KEYS.iter().find(|(s, _)| *s == section) {
            Some((_, fields)) => merge_list(fields, list(bv), list(rv), list(fv)),
            None => match (fv == bv, rv) {
                (true, Some(rv)) => Some(rv.clone()),
                _ => fv.cloned(),
            },
        };
        if let Some(v) = merged {
            out.insert(section, v);
        }
    }
    serde_json::from_value(Value::Object(out))
        .map_err(|e| ConfigError::new("configuration", format!("merging the file: {e}")))
}

fn object(c: &Config) -> Map<String, Value> {
    match serde_json::to_value(c).expect("a configuration serializes") {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The key of an entry: its naming fields (a MAC in lower case; a missing field is null; a
/// port forward's protocol defaults to tcp).
fn key(fields: &[&str], entry: &Value) -> Vec<Value> {
    fields
        .iter()
        .map(|f| match (f, entry.get(f)) {
            (&"mac", Some(Value::String(m))) => Value::String(m.to_ascii_lowercase()),
            (&"protocol", None) => Value::String("tcp".into()),
            (_, Some(v)) => v.clone(),
            (_, None) => Value::Null,
        })
        .collect()
}

fn merge_list(fields: &[&str], base: &[Value], running: &[Value], file: &[Value]) -> Option<Value> {
    let find = |list: &'_ [Value], k: &[Value]| -> Option<Value> {
        list.iter().find(|e| key(fields, e) == k).cloned()
    };
    let mut out = Vec::new();
    // The file's entries, in the file's order.
    for fe in file {
        let k = key(fields, fe);
        let be = find(base, &k);
        if be.as_ref() == Some(fe) {
            // Unchanged in the file: the running state decides (kept, changed or deleted).
            if let Some(re) = find(running, &k) {
                out.push(re);
            }
        } else {
            out.push(fe.clone());
        }
    }
    // Runtime additions the file knows nothing about.
    for re in running {
        let k = key(fields, re);
        if find(base, &k).is_none() && find(file, &k).is_none() {
            out.push(re.clone());
        }
    }
    (!out.is_empty()).then_some(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    fn ports(c: &Config) -> Vec<&str> {
        c.ports.iter().map(|p| p.name.as_str()).collect()
    }

    const BASE: &str = r#"
[switch]
mac_aging_secs = 300
[[port]]
name = "a"
[[port]]
name = "b"
[[service]]
name = "web"
vip = "10.96.0.10"
port = 80
backends = ["10.42.0.2:80"]
"#;

    #[test]
    fn unchanged_file_keeps_runtime_changes() {
        let base = parse(BASE);
        let mut running = base.clone();
        running.ports.retain(|p| p.name != "b");
        running.ports.push(super::super::PortConfig {
            name: "c".into(),
            ..Default::default()
        });
        running.services[0].backends = vec!["10.42.0.3:80".into()];
        let merged = merge(&base, &running, &base).unwrap();
        assert_eq!(merged, running);
    }

    #[test]
    fn file_edits_win_and_runtime_additions_stay() {
        let base = parse(BASE);
        let mut running = base.clone();
        running.ports.push(super::super::PortConfig {
            name: "c".into(),
            ..Default::default()
        });
        running.services[0].backends = vec!["10.42.0.3:80".into()];
        let mut file = base.clone();
        file.ports.retain(|p| p.name != "a");
        file.ports.push(super::super::PortConfig {
            name: "d".into(),
            vlan: Some(10),
            ..Default::default()
        });
        file.services[0].port = 8080;
        file.switch.mac_aging_secs = 60;
        let merged = merge(&base, &running, &file).unwrap();
        assert_eq!(ports(&merged), ["b", "d", "c"]);
        assert_eq!(
            merged.services[0].port, 8080,
            "the file's edit of the Service"
        );
        assert_eq!(merged.services[0].backends, file.services[0].backends);
        assert_eq!(merged.switch.mac_aging_secs, 60);
    }

    #[test]
    fn a_file_naming_a_runtime_entry_takes_it_over() {
        let base = parse(BASE);
        let mut running = base.clone();
        running.ports.push(super::super::PortConfig {
            name: "c".into(),
            vlan: Some(20),
            ..Default::default()
        });
        let mut file = base.clone();
        file.ports.push(super::super::PortConfig {
            name: "c".into(),
            vlan: Some(30),
            ..Default::default()
        });
        let merged = merge(&base, &running, &file).unwrap();
        assert_eq!(ports(&merged), ["a", "b", "c"]);
        assert_eq!(merged.ports[2].vlan, Some(30));
    }

    #[test]
    fn every_list_section_has_a_key() {
        let full = parse(
            r#"
[[port]]
name = "a"
[[fdb]]
mac = "02:00:00:00:00:01"
port = "a"
[[vxlan]]
vni = 1
local = "192.0.2.1"
[[neigh]]
ip = "10.0.0.1"
mac = "02:00:00:00:00:02"
vni = 1
[[interface]]
vlan = 1
address = "10.0.0.254/24"
[[route]]
prefix = "10.1.0.0/16"
via = "10.0.0.1"
[[snat]]
source = "10.0.0.0/24"
out_vlan = 1
[[dnat]]
address = "10.0.0.254"
port = 80
to = "10.0.0.1"
[[service]]
name = "s"
vip = "10.96.0.1"
port = 80
[[policy]]
name = "p"
[[admin_policy]]
name = "a"
priority = 1
[[baseline_policy]]
name = "b"
"#,
        );
        for (section, value) in object(&full) {
            if value.is_array() {
                assert!(
                    KEYS.iter().any(|(s, _)| *s == section),
                    "[[{section}]] has no key in merge::KEYS"
                );
            }
        }
        assert_eq!(merge(&full, &full, &full).unwrap(), full);
        assert_eq!(
            merge(&Config::default(), &Config::default(), &full).unwrap(),
            full
        );
    }
}
