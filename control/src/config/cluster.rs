//! `[cluster]`: cluster mode on etcd (see [`crate::cluster`]).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tapswitch_dataplane::wire::{EthernetAddress, VlanId};

use super::{parse_ipv4, parse_mac, parse_vlan, ConfigError};

/// flannel's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// The VLAN that carries the vxlan backend's overlay (the bridge domain of its VNI) unless
/// `overlay_vlan` says otherwise.
pub const DEFAULT_OVERLAY_VLAN: u16 = 4094;
/// flannel's lease TTL (24 h).
pub const DEFAULT_LEASE_TTL: u64 = 86_400;

/// `[cluster]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `["https://10.0.0.10:2379"]`: one or more, http or https.
    pub etcd_endpoints: Vec<String>,
    /// TLS: the CA that signed the servers' certificates (PEM), needed for https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<String>,
    /// TLS client certificate and its key (PEM), together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<String>,
    /// Key prefix; default flannel's `/coreos.com/network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// This node's underlay address as the others reach it; default: the address of the
    /// interface on `underlay_vlan`, else the address this host sends from to reach the
    /// first etcd endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// The VLAN whose interface and uplink port reach the other nodes on a shared L2 network
    /// (host-gw, vxlan direct routing, masquerade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_vlan: Option<u16>,
    /// The local pods' VLAN: its interface gets the leased subnet's first address.
    pub pod_vlan: u16,
    /// Pod traffic leaving the cluster network out of `underlay_vlan` is masqueraded
    /// (flannel's `--ip-masq`).
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub masquerade: bool,
    /// The lease's TTL in seconds (kept alive every third of it); default 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_secs: Option<u64>,
    /// vxlan backend: the VLAN that the VNI extends (internal; default 4094).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_vlan: Option<u16>,
    /// vxlan backend: this node's VTEP MAC; default: made once and kept in the state
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// Where to write flannel's `subnet.env` (FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU,
    /// FLANNEL_IPMASQ) once the lease is held; unset: not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_file: Option<String>,
}

/// An etcd endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As written: `https://10.0.0.10:2379`.
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// `[cluster]` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub endpoints: Vec<Endpoint>,
    pub ca: Option<String>,
    /// Client certificate and key.
    pub identity: Option<(String, String)>,
    pub prefix: String,
    pub public_ip: Option<Ipv4Addr>,
    pub underlay_vlan: Option<VlanId>,
    pub pod_vlan: VlanId,
    pub overlay_vlan: VlanId,
    pub masquerade: bool,
    pub lease_ttl: u64,
    pub vtep_mac: Option<EthernetAddress>,
    pub subnet_file: Option<String>,
}

fn parse_endpoint(field: &str, s: &str) -> Result<Endpoint, ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(
            field,
            format!("{s:?} is not an etcd endpoint like https://10.0.0.10:2379 ({why})"),
        )
    };
    let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("http:// or https://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(bad("no path"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad("port"))?)
        }
        _ => (rest, 2379),
    };
    if host.is_empty() || port == 0 {
        return Err(bad("host and port"));
    }
    Ok(Endpoint {
        url: s.trim_end_matches('/').to_string(),
        tls,
        host: host.to_string(),
        port,
    })
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<ClusterSpec, ConfigError> {
        let f = |k: &str| format!("cluster.{k}");
        if self.etcd_endpoints.is_empty() {
            return Err(ConfigError::new(
                f("etcd_endpoints"),
                "names no endpoint (one or more, like \"https://10.0.0.10:2379\")",
            ));
        }
        let endpoints = self
            .etcd_endpoints
            .iter()
            .map(|e| parse_endpoint(&f("etcd_endpoints"), e))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.iter().any(|e| e.tls) != endpoints.iter().all(|e| e.tls) {
            return Err(ConfigError::new(
                f("etcd_endpoints"),
                "mixes http and https: one cluster speaks one of them",
            ));
        }
        let tls = endpoints[0].tls;
        for (key, v) in [
            ("etcd_ca", &self.etcd_ca),
            ("etcd_cert", &self.etcd_cert),
            ("etcd_key", &self.etcd_key),
        ] {
            if let Some(p) = v {
                if !p.starts_with('/') {
                    return Err(ConfigError::new(
                        f(key),
                        format!("{p:?} is not an absolute path"),
                    ));
                }
                if !tls {
                    return Err(ConfigError::new(f(key), "only for https endpoints"));
                }
            }
        }
        if tls && self.etcd_ca.is_none() {
            return Err(ConfigError::new(
                f("etcd_ca"),
                "missing: https endpoints need the CA that signed the servers' certificates",
            ));
        }
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    f("etcd_key"),
                    "missing: the key of etcd_cert",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    f("etcd_cert"),
                    "missing: the certificate of etcd_key",
                ))
            }
        };
        let prefix = self.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
            return Err(ConfigError::new(
                f("prefix"),
                format!("{prefix:?} is not a key prefix like /coreos.com/network"),
            ));
        }
        let public_ip = self
            .public_ip
            .as_deref()
            .map(|p| parse_ipv4(&f("public_ip"), p))
            .transpose()?;
        if public_ip.is_some_and(|p| p.is_unspecified() || p.is_multicast() || p.is_broadcast()) {
            return Err(ConfigError::new(
                f("public_ip"),
                "cannot be a node's underlay address",
            ));
        }
        let pod_vlan = parse_vlan(&f("pod_vlan"), self.pod_vlan)?;
        let overlay_vlan = parse_vlan(
            &f("overlay_vlan"),
            self.overlay_vlan.unwrap_or(DEFAULT_OVERLAY_VLAN),
        )?;
        let underlay_vlan = self
            .underlay_vlan
            .map(|v| parse_vlan(&f("underlay_vlan"), v))
            .transpose()?;
        if pod_vlan == overlay_vlan {
            return Err(ConfigError::new(
                f("overlay_vlan"),
                format!("VLAN {overlay_vlan} is the pod VLAN"),
            ));
        }
        if let Some(u) = underlay_vlan {
            if u == pod_vlan || u == overlay_vlan {
                return Err(ConfigError::new(
                    f("underlay_vlan"),
                    format!("VLAN {u} is the pod or the overlay VLAN"),
                ));
            }
        }
        if self.masquerade && underlay_vlan.is_none() {
            return Err(ConfigError::new(
                f("masquerade"),
                "needs underlay_vlan: the interface whose address pod traffic leaves with",
            ));
        }
        let lease_ttl = self.lease_ttl_secs.unwrap_or(DEFAULT_LEASE_TTL);
        if !(2..=604_800).contains(&lease_ttl) {
            return Err(ConfigError::new(
                f("lease_ttl_secs"),
                format!("{lease_ttl} is out of range (2..=604800)"),
            ));
        }
        let vtep_mac = self
            .vtep_mac
            .as_deref()
            .map(|m| parse_mac(&f("vtep_mac"), m))
            .transpose()?;
        if let Some(p) = &self.subnet_file {
            if !p.starts_with('/') {
                return Err(ConfigError::new(
                    f("subnet_file"),
                    format!("{p:?} is not an absolute path"),
                ));
            }
        }
        Ok(ClusterSpec {
            endpoints,
            ca: self.etcd_ca.clone(),
            identity,
            prefix: prefix.to_string(),
            public_ip,
            underlay_vlan,
            pod_vlan,
            overlay_vlan,
            masquerade: self.masquerade,
            lease_ttl,
            vtep_mac,
            subnet_file: self.subnet_file.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn err(extra: &str) -> String {
        let text = format!("[cluster]\n{extra}");
        match Config::from_toml(&text).and_then(|c| c.validate().map(|_| ())) {
            Ok(()) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_issue_example_validates() {
        let c = Config::from_toml(
            r#"
[cluster]
etcd_endpoints = ["https://10.0.0.10:2379"]
etcd_ca = "/etc/tapswitch/etcd-ca.pem"
etcd_cert = "/etc/tapswitch/etcd-client.pem"
etcd_key = "/etc/tapswitch/etcd-client-key.pem"
prefix = "/coreos.com/network"
public_ip = "192.168.205.2"
underlay_vlan = 100
pod_vlan = 10
masquerade = true
"#,
        )
        .unwrap();
        let spec = c.cluster.as_ref().unwrap().validate().unwrap();
        assert_eq!(spec.endpoints[0].host, "10.0.0.10");
        assert_eq!(spec.endpoints[0].port, 2379);
        assert!(spec.endpoints[0].tls);
        assert_eq!(spec.lease_ttl, 86_400);
        assert_eq!(spec.overlay_vlan.get(), 4094);
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c, "round trip");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("etcd_endpoints = []\npod_vlan = 10", "cluster.etcd_endpoints: names no endpoint"),
            (
                "etcd_endpoints = [\"10.0.0.1:2379\"]\npod_vlan = 10",
                "cluster.etcd_endpoints: \"10.0.0.1:2379\" is not an etcd endpoint",
            ),
            (
                "etcd_endpoints = [\"https://a:1\"]\npod_vlan = 10",
                "cluster.etcd_ca: missing",
            ),
            (
                "etcd_endpoints = [\"http://a:1\", \"https://b:1\"]\npod_vlan = 10",
                "mixes http and https",
            ),
            (
                "etcd_endpoints = [\"http://a:1\"]\netcd_ca = \"/x\"\npod_vlan = 10",
                "cluster.etcd_ca: only for https",
            ),
            (
                "etcd_endpoints = [\"https://a:1\"]\netcd_ca = \"/x\"\netcd_cert = \"/c\"\npod_vlan = 10",
                "cluster.etcd_key: missing",
            ),
            (
                "etcd_endpoints = [\"http://a:1\"]\npod_vlan = 10\nprefix = \"x/\"",
                "cluster.prefix",
            ),
            (
                "etcd_endpoints = [\"http://a:1\"]\npod_vlan = 10\nmasquerade = true",
                "cluster.masquerade: needs underlay_vlan",
            ),
            (
                "etcd_endpoints = [\"http://a:1\"]\npod_vlan = 4094",
                "cluster.overlay_vlan: VLAN 4094 is the pod VLAN",
            ),
            (
                "etcd_endpoints = [\"http://a:1\"]\npod_vlan = 10\nlease_ttl_secs = 1",
                "cluster.lease_ttl_secs: 1 is out of range",
            ),
            (
                "etcd_endpoints = [\"http://a:1\"]\npod_vlan = 10\npublic_ip = \"x\"",
                "cluster.public_ip",
            ),
            ("etcd_endpoints = [\"http://a:1\"]", "missing field `pod_vlan`"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
