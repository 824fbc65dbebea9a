//! The CNI plugin (the `tapswitch` binary run by a container runtime with `CNI_COMMAND` set):
//! it puts a container on tapswitch through the control socket, like the CLI, the way the
//! reference `bridge` plugin puts one on a Linux bridge.
//!
//! - `ADD`: IPAM first (the plugin named by `ipam.type`, delegated to as the spec says: the
//!   same configuration on stdin, found in `CNI_PATH`); then a port on `vlan` whose TAP is
//!   `CNI_IFNAME` inside the namespace `CNI_NETNS` (a path), named from the container ID and
//!   the interface (15 bytes), owned by the container, with the addresses IPAM gave and the
//!   labels; then, inside the container, the addresses and routes; the VLAN gets a router
//!   interface holding the gateway if it has none. Anything that fails undoes what was done
//!   (port, lease) and answers a CNI error.
//! - `DEL`: the port and the lease go; a missing namespace, port or lease is not an error.
//! - `CHECK`: the port exists for this container, and inside the container the interface has
//!   the addresses and routes of `prevResult`.
//! - `STATUS`: the daemon answers (else error 50, "plugin not available").
//! - `GC`: ports made for containers and leases of attachments not in
//!   `cni.dev/valid-attachments` go.
//! - `VERSION`: the versions below.
//!
//! Errors are CNI error objects (`{"cniVersion","code","msg","details"}`) on stdout with exit
//! status 1; the codes are the spec's (1 incompatible version, 3 unknown container, 4 bad
//! environment, 6 undecodable input, 7 invalid configuration, 11 try again later, 50 plugin
//! not available) and the plugin's own 100 (tapswitch refused the change) and 101 (CHECK found
//! a difference).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{self, ClientError, Request};
use crate::config::{parse_cidr, Addresses, InterfaceConfig, PortConfig};

/// The versions of the spec this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version this plugin reports by default.
pub const CNI_VERSION: &str = "1.1.0";

/// A CNI error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn details(mut self, d: impl Into<String>) -> CniError {
        self.details = d.into();
        self
    }
}

/// The variables a runtime sets.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Env {
    /// From the process environment.
    pub fn from_process() -> Env {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
            path: v("CNI_PATH"),
        }
    }

    fn require(&self, what: &[(&str, &str)]) -> Result<(), CniError> {
        for (name, value) in what {
            if value.is_empty() {
                return Err(CniError::new(4, format!("{name} is not set")));
            }
        }
        Ok(())
    }
}

/// One attachment of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The capabilities' arguments a runtime passes.
#[derive(Debug, Clone, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    mac: Option<String>,
    #[serde(default, rename = "portMappings")]
    port_mappings: Vec<PortMapping>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, Deserialize)]
struct PortMapping {
    #[serde(rename = "hostPort")]
    host_port: u32,
    #[serde(rename = "containerPort")]
    container_port: u32,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

/// The plugin's configuration (one entry of a conflist, with `name` and `cniVersion`).
#[derive(Debug, Clone, Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(default)]
    socket: Option<String>,
    #[serde(default)]
    vlan: Option<u16>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    dns: Option<Value>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: RuntimeConfig,
    #[serde(default, rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    fn socket(&self) -> PathBuf {
        PathBuf::from(self.socket.as_deref().unwrap_or(api::DEFAULT_SOCKET))
    }

    fn ipam_type(&self) -> Result<String, CniError> {
        match self
            .ipam
            .as_ref()
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
        {
            Some(t) if !t.is_empty() && !t.contains('/') => Ok(t.to_string()),
            Some(t) => Err(CniError::new(
                7,
                format!("ipam.type: {t:?} is not a plugin name"),
            )),
            None => Err(CniError::new(
                7,
                "ipam.type: missing (for example \"host-local\")",
            )),
        }
    }
}

/// Runs one CNI command: `stdin` is the configuration. Returns what to print on stdout and the
/// exit status.
pub fn run(env: &Env, stdin: &[u8]) -> (String, i32) {
    if env.command == "VERSION" {
        return (
            json!({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
            0,
        );
    }
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(String::from))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CNI_VERSION.to_string());
    match dispatch(env, stdin) {
        Ok(out) => (out, 0),
        Err(e) => {
            let mut v = json!({"cniVersion": version, "code": e.code, "msg": e.msg});
            if !e.details.is_empty() {
                v["details"] = Value::String(e.details);
            }
            (v.to_string(), 1)
        }
    }
}

/// Decodes and checks a network configuration as every verb but VERSION does first: the
/// error a runtime would get, or `Ok`. Touches nothing (the fuzz target's entry).
pub fn check_config(stdin: &[u8]) -> Result<(), CniError> {
    parse(stdin).map(|_| ())
}

fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let raw: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(6, format!("the configuration on stdin is not JSON: {e}")))?;
    let conf: NetConf = serde_json::from_value(raw)
        .map_err(|e| CniError::new(6, format!("the configuration: {e}")))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            1,
            format!(
                "cniVersion {:?} is not supported (this plugin speaks {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if let Some(v) = conf.vlan {
        if !(1..=4094).contains(&v) {
            return Err(CniError::new(
                7,
                format!("vlan: {v} is not a VLAN id (1..=4094)"),
            ));
        }
    }
    Ok(conf)
}

fn dispatch(env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    let conf = parse(stdin)?;
    match env.command.as_str() {
        "ADD" => add(env, &conf, stdin),
        "DEL" => del(env, &conf, stdin).map(|()| String::new()),
        "CHECK" => check(env, &conf).map(|()| String::new()),
        "STATUS" => status(&conf).map(|()| String::new()),
        "GC" => gc(env, &conf, stdin).map(|()| String::new()),
        "" => Err(CniError::new(4, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            4,
            format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
        )),
    }
}

/// The port of a container's interface: `ts` and 13 hex digits of a hash of the container ID
/// and the interface name (15 bytes, an interface name's limit).
pub fn port_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("ts{:013x}", h & 0x000f_ffff_ffff_ffff)
}

fn daemon_error(socket: &Path, e: ClientError) -> CniError {
    match e {
        ClientError::Connect { .. } => CniError::new(
            11,
            format!(
                "tapswitch is not reachable at {} (is `tapswitch run` running?)",
                socket.display()
            ),
        )
        .details(e.to_string()),
        ClientError::Refused(msg) => CniError::new(100, format!("tapswitch refused: {msg}")),
        ClientError::Io(e) => CniError::new(5, format!("talking to tapswitch: {e}")),
    }
}

fn call(socket: &Path, req: &Request) -> Result<Value, CniError> {
    api::call(socket, req).map_err(|e| daemon_error(socket, e))
}

/// Runs the IPAM plugin `plugin` for `command` with `stdin` as its configuration. A plugin
/// older than the configuration's version 1.1.0 (Debian's host-local speaks up to 1.0.0) is
/// asked again with the configuration as 1.0.0 (what 1.1.0 added is not IPAM's business).
fn delegate(env: &Env, plugin: &str, command: &str, stdin: &[u8]) -> Result<Value, CniError> {
    match delegate_once(env, plugin, command, stdin) {
        Err(e) if e.code == 1 => {
            let Ok(mut conf) = serde_json::from_slice::<Value>(stdin) else {
                return Err(e);
            };
            if conf["cniVersion"] != "1.1.0" {
                return Err(e);
            }
            conf["cniVersion"] = "1.0.0".into();
            if let Some(o) = conf.as_object_mut() {
                o.remove("cni.dev/valid-attachments");
            }
            let bytes = serde_json::to_vec(&conf).unwrap_or_default();
            delegate_once(env, plugin, command, &bytes)
        }
        other => other,
    }
}

fn delegate_once(env: &Env, plugin: &str, command: &str, stdin: &[u8]) -> Result<Value, CniError> {
    let Some(path) = env
        .path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(plugin))
        .find(|p| p.is_file())
    else {
        return Err(CniError::new(
            7,
            format!("ipam.type: no plugin {plugin:?} in CNI_PATH {:?}", env.path),
        ));
    };
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", &env.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(5, format!("running {}: {e}", path.display())))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(5, format!("running {}: {e}", path.display())))?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        let code = v["code"].as_u64().unwrap_or(5) as u32;
        let msg = v["msg"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        return Err(
            CniError::new(code, format!("ipam {plugin} {command}: {msg}"))
                .details(v["details"].as_str().unwrap_or_default()),
        );
    }
    Ok(v)
}

/// Runs `ip ARGS` inside the namespace at `netns`.
fn ip_in(netns: &str, args: &[&str]) -> Result<String, CniError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tapswitch_dataplane::io::netns::run_in(Some(netns), move || {
        Command::new("ip").args(&args).output()
    })
    .map_err(|e| CniError::new(5, format!("in {netns}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CniError::new(
            5,
            format!(
                "in {netns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

/// An address of an IPAM result.
struct Ip {
    address: String,
    gateway: Option<String>,
}

fn ips_of(result: &Value) -> Vec<Ip> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some(Ip {
                address: i["address"].as_str()?.to_string(),
                gateway: i["gateway"].as_str().map(String::from),
            })
        })
        .collect()
}

fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<String, CniError> {
    env.require(&[
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
    ])?;
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(
            3,
            format!("CNI_NETNS {}: no such network namespace", env.netns),
        ));
    }
    let ipam = conf.ipam_type()?;
    let socket = conf.socket();
    // The daemon first: nothing is leased for a switch that is not there.
    call(&socket, &Request::PortList)?;
    let lease = delegate(env, &ipam, "ADD", stdin)?;
    match add_leased(env, conf, &socket, &lease) {
        Ok(out) => Ok(out),
        Err(e) => {
            let _ = delegate(env, &ipam, "DEL", stdin);
            Err(e)
        }
    }
}

fn add_leased(env: &Env, conf: &NetConf, socket: &Path, lease: &Value) -> Result<String, CniError> {
    let ips = ips_of(lease);
    if ips.is_empty() {
        return Err(CniError::new(7, "ipam: the result has no address"));
    }
    let vlan = conf.vlan.unwrap_or(1);
    let name = port_name(&env.container_id, &env.ifname);
    let mut labels = conf.labels.clone();
    // The MAC: the `mac` capability, else `MAC=` in CNI_ARGS (as the reference plugins take
    // it, and as podman passes `--mac-address`).
    let mut mac = conf.runtime_config.mac.clone();
    for kv in env.args.split(';') {
        match kv.split_once('=') {
            Some(("MAC", v)) if !v.is_empty() && mac.is_none() => mac = Some(v.into()),
            Some(("K8S_POD_NAMESPACE", v)) if !v.is_empty() => {
                labels.insert("namespace".into(), v.into());
            }
            Some(("K8S_POD_NAME", v)) if !v.is_empty() => {
                labels.insert("pod".into(), v.into());
            }
            _ => {}
        }
    }
    let port = PortConfig {
        name: name.clone(),
        netns: Some(env.netns.clone()),
        ifname: Some(env.ifname.clone()),
        vlan: Some(vlan),
        mtu: conf.mtu,
        mac,
        container_id: Some(env.container_id.clone()),
        addresses: ips.iter().map(|i| i.address.clone()).collect(),
        labels,
        ..PortConfig::default()
    };
    call(socket, &Request::PortAdd { port })?;
    let configured = configure(env, conf, socket, vlan, &ips, lease)
        .and_then(|r| forward(env, conf, socket, &ips).map(|()| r));
    let result = match configured {
        Ok(r) => r,
        Err(e) => {
            let _ = remove_forwards(socket, &env.container_id);
            let _ = call(socket, &Request::PortDel { name });
            return Err(e);
        }
    };
    Ok(result.to_string())
}

/// The `portMappings` capability: a port forward per mapping, to the container's first IPv4
/// address, on `hostIP` or (without one) on every address of the router's interfaces.
fn forward(env: &Env, conf: &NetConf, socket: &Path, ips: &[Ip]) -> Result<(), CniError> {
    let mappings = &conf.runtime_config.port_mappings;
    if mappings.is_empty() {
        return Ok(());
    }
    let Some(target) = ips
        .iter()
        .filter_map(|i| i.address.split('/').next())
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
    else {
        return Err(CniError::new(
            7,
            "runtimeConfig.portMappings: the container has no IPv4 address to forward to",
        ));
    };
    for m in mappings {
        let protocol = m
            .protocol
            .clone()
            .unwrap_or_else(|| "tcp".into())
            .to_lowercase();
        let dnat = crate::config::DnatConfig {
            protocol: Some(protocol),
            address: m
                .host_ip
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into()),
            port: m.host_port,
            to: format!("{target}:{}", m.container_port),
            container_id: Some(env.container_id.clone()),
        };
        call(socket, &Request::DnatAdd { dnat })?;
    }
    Ok(())
}

/// Removes the port forwards of `container`.
fn remove_forwards(socket: &Path, container: &str) -> Result<(), CniError> {
    let list = call(socket, &Request::DnatList)?;
    for d in list.as_array().into_iter().flatten() {
        if d["container_id"] != container {
            continue;
        }
        let req = Request::DnatDel {
            protocol: d["protocol"].as_str().map(String::from),
            address: d["address"].as_str().unwrap_or_default().to_string(),
            port: d["port"].as_u64().unwrap_or(0) as u32,
        };
        match api::call(socket, &req) {
            Ok(_) => {}
            Err(ClientError::Refused(m)) if m.contains("no such") => {}
            Err(e) => return Err(daemon_error(socket, e)),
        }
    }
    Ok(())
}

/// Inside the container: addresses, routes; on the switch: the gateway's interface. Returns
/// the ADD result.
fn configure(
    env: &Env,
    conf: &NetConf,
    socket: &Path,
    vlan: u16,
    ips: &[Ip],
    lease: &Value,
) -> Result<Value, CniError> {
    let ns = &env.netns;
    let dev = &env.ifname;
    for ip in ips {
        ip_in(ns, &["addr", "add", &ip.address, "dev", dev])?;
    }
    ip_in(ns, &["link", "set", dev, "up"])?;
    let mut routes: Vec<Value> = lease["routes"].as_array().cloned().unwrap_or_default();
    let gateway = ips.iter().find_map(|i| i.gateway.clone());
    if let Some(gw) = &gateway {
        ensure_gateway(socket, vlan, gw, ips)?;
        let v6 = gw.contains(':');
        let default = if v6 { "::/0" } else { "0.0.0.0/0" };
        if !routes.iter().any(|r| r["dst"] == default) {
            routes.push(json!({"dst": default, "gw": gw}));
        }
    }
    for r in &routes {
        let Some(dst) = r["dst"].as_str() else {
            continue;
        };
        let mut args = vec!["route", "replace", dst];
        let via = r["gw"]
            .as_str()
            .map(String::from)
            .or_else(|| gateway.clone());
        if let Some(gw) = via.as_deref() {
            args.extend(["via", gw]);
        }
        args.extend(["dev", dev.as_str()]);
        ip_in(ns, &args)?;
    }
    let ports = call(socket, &Request::PortList)?;
    let name = port_name(&env.container_id, &env.ifname);
    let mac = ports
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name.as_str())
        .and_then(|p| p["mac"].as_str().map(String::from))
        .unwrap_or_default();
    let old = conf.cni_version.starts_with("0.");
    let ips_out: Vec<Value> = ips
        .iter()
        .map(|i| {
            let mut v = json!({"address": i.address, "interface": 0});
            if let Some(g) = &i.gateway {
                v["gateway"] = Value::String(g.clone());
            }
            if old {
                v["version"] =
                    Value::String(if i.address.contains(':') { "6" } else { "4" }.into());
            }
            v
        })
        .collect();
    let dns = lease
        .get("dns")
        .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
        .or(conf.dns.as_ref())
        .cloned()
        .unwrap_or_else(|| json!({}));
    Ok(json!({
        "cniVersion": conf.cni_version,
        "interfaces": [{"name": dev, "mac": mac, "sandbox": ns}],
        "ips": ips_out,
        "routes": routes,
        "dns": dns,
    }))
}

/// Makes sure `vlan` has a router interface holding `gateway` (with the prefix of the
/// address it serves).
fn ensure_gateway(socket: &Path, vlan: u16, gateway: &str, ips: &[Ip]) -> Result<(), CniError> {
    let gw: IpAddr = gateway
        .parse()
        .map_err(|_| CniError::new(7, format!("ipam: gateway {gateway:?} is not an address")))?;
    let len = ips
        .iter()
        .filter_map(|i| parse_cidr("", &i.address, true).ok())
        .find(|(a, _)| a.is_ipv4() == gw.is_ipv4())
        .map_or(if gw.is_ipv4() { 24 } else { 64 }, |(_, l)| l);
    for attempt in 0..2 {
        let list = call(socket, &Request::InterfaceList)?;
        if let Some(i) = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["vlan"].as_u64() == Some(u64::from(vlan)))
        {
            let holds = i["addresses"].as_array().into_iter().flatten().any(|a| {
                a.as_str()
                    .and_then(|a| a.split('/').next())
                    .is_some_and(|a| a.parse::<IpAddr>().ok() == Some(gw))
            });
            if holds {
                return Ok(());
            }
            return Err(CniError::new(
                7,
                format!(
                    "the router interface of VLAN {vlan} does not hold the gateway {gateway} \
                     (it has {}); give IPAM that interface's address as gateway",
                    i["addresses"]
                ),
            ));
        }
        let interface = InterfaceConfig {
            vlan,
            address: Addresses::One(format!("{gw}/{len}")),
            ..InterfaceConfig::default()
        };
        match api::call(socket, &Request::InterfaceAdd { interface }) {
            Ok(_) => return Ok(()),
            // Another ADD made it meanwhile: look again.
            Err(ClientError::Refused(m)) if m.contains("already exists") && attempt == 0 => {}
            Err(e) => return Err(daemon_error(socket, e)),
        }
    }
    Ok(())
}

fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    env.require(&[
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_IFNAME", &env.ifname),
    ])?;
    let socket = conf.socket();
    let name = port_name(&env.container_id, &env.ifname);
    remove_forwards(&socket, &env.container_id)?;
    match api::call(&socket, &Request::PortDel { name }) {
        Ok(_) => {}
        Err(ClientError::Refused(m)) if m.contains("no such port") => {}
        Err(e) => return Err(daemon_error(&socket, e)),
    }
    if conf.ipam.is_some() {
        let ipam = conf.ipam_type()?;
        delegate(env, &ipam, "DEL", stdin)?;
    }
    Ok(())
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.require(&[
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
    ])?;
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::new(7, "prevResult: missing (CHECK needs it)"));
    };
    let socket = conf.socket();
    let name = port_name(&env.container_id, &env.ifname);
    let ports = call(&socket, &Request::PortList)?;
    let Some(port) = ports
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name.as_str())
    else {
        return Err(CniError::new(101, format!("port {name}: not on tapswitch")));
    };
    if port["container_id"] != env.container_id.as_str() {
        return Err(CniError::new(
            101,
            format!("port {name}: belongs to container {}", port["container_id"]),
        ));
    }
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(
            3,
            format!("CNI_NETNS {}: no such network namespace", env.netns),
        ));
    }
    let addrs = ip_in(&env.netns, &["-o", "addr", "show", "dev", &env.ifname])
        .map_err(|e| CniError::new(101, format!("interface {}: {}", env.ifname, e.msg)))?;
    for ip in ips_of(prev) {
        if !addrs.contains(&format!(" {} ", ip.address)) {
            return Err(CniError::new(
                101,
                format!(
                    "interface {}: address {} is missing",
                    env.ifname, ip.address
                ),
            ));
        }
    }
    let routes = ip_in(&env.netns, &["route", "show", "dev", &env.ifname])?
        + &ip_in(&env.netns, &["-6", "route", "show", "dev", &env.ifname]).unwrap_or_default();
    for r in prev["routes"].as_array().into_iter().flatten() {
        let Some(dst) = r["dst"].as_str() else {
            continue;
        };
        let shown = match dst {
            "0.0.0.0/0" | "::/0" => "default".to_string(),
            d => d.to_string(),
        };
        if !routes.lines().any(|l| l.starts_with(&shown)) {
            return Err(CniError::new(
                101,
                format!("interface {}: route {dst} is missing", env.ifname),
            ));
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let socket = conf.socket();
    api::call(&socket, &Request::PortList)
        .map(|_| ())
        .map_err(|e| {
            CniError::new(
                50,
                format!("tapswitch is not ready at {}: {e}", socket.display()),
            )
        })
}

fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            7,
            "cni.dev/valid-attachments: missing (GC needs the attachments to keep)",
        ));
    };
    let socket = conf.socket();
    let keep: std::collections::HashSet<String> = valid
        .iter()
        .map(|a| port_name(&a.container_id, &a.ifname))
        .collect();
    let ports = call(&socket, &Request::PortList)?;
    let ipam = conf.ipam_type().ok();
    let mut first_error = None;
    for p in ports.as_array().into_iter().flatten() {
        let (Some(name), Some(id)) = (p["name"].as_str(), p["container_id"].as_str()) else {
            continue;
        };
        // Only ports this plugin made: named from their container and interface.
        let ifname = p["ifname"].as_str().unwrap_or(name);
        if port_name(id, ifname) != name || keep.contains(name) {
            continue;
        }
        if let Err(e) = remove_forwards(&socket, id) {
            first_error.get_or_insert(e);
        }
        if let Err(e) = call(&socket, &Request::PortDel { name: name.into() }) {
            first_error.get_or_insert(e);
            continue;
        }
        if let Some(ipam) = &ipam {
            let stale = Env {
                command: "DEL".into(),
                container_id: id.into(),
                ifname: ifname.into(),
                netns: String::new(),
                ..env.clone()
            };
            if let Err(e) = delegate(&stale, ipam, "DEL", stdin) {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "c0ffee".into(),
            netns: "/run/netns/none-such".into(),
            ifname: "eth0".into(),
            path: "/nonexistent".into(),
            ..Env::default()
        }
    }

    fn err(command: &str, stdin: &str) -> Value {
        let (out, code) = run(&env(command), stdin.as_bytes());
        assert_eq!(code, 1, "{out}");
        serde_json::from_str(&out).unwrap()
    }

    #[test]
    fn version_lists_every_version() {
        let (out, code) = run(&env("VERSION"), b"");
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn errors_are_cni_error_objects_with_the_specs_codes() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"tapswitch","socket":"/nonexistent.sock","ipam":{"type":"host-local"}}"#;
        let e = err("ADD", "{nope");
        assert_eq!(e["code"], 6);
        assert!(e["msg"].as_str().unwrap().contains("not JSON"));
        let e = err(
            "ADD",
            r#"{"cniVersion":"9.9.9","name":"n","type":"tapswitch"}"#,
        );
        assert_eq!(e["code"], 1);
        assert!(e["msg"].as_str().unwrap().contains("9.9.9"));
        // The missing namespace is named.
        let e = err("ADD", conf);
        assert_eq!(e["code"], 3, "{e}");
        assert!(e["msg"].as_str().unwrap().contains("/run/netns/none-such"));
        assert_eq!(e["cniVersion"], "1.0.0");
        let e = err("BOGUS", conf);
        assert_eq!(e["code"], 4);
        let e = err(
            "ADD",
            r#"{"cniVersion":"1.0.0","name":"n","type":"tapswitch","vlan":5000}"#,
        );
        assert_eq!(e["code"], 7);
        assert!(e["msg"].as_str().unwrap().contains("vlan"));
        let mut no_id = env("DEL");
        no_id.container_id.clear();
        let (out, code) = run(&no_id, conf.as_bytes());
        assert_eq!(code, 1);
        assert!(out.contains("CNI_CONTAINERID"), "{out}");
        // STATUS without a daemon: plugin not available.
        let e = err("STATUS", conf);
        assert_eq!(e["code"], 50);
        // GC without the attachments to keep.
        let e = err("GC", conf);
        assert_eq!(e["code"], 7);
        assert!(e["msg"].as_str().unwrap().contains("valid-attachments"));
    }

    #[test]
    fn port_names_fit_and_differ() {
        let a = port_name("0123456789abcdef0123456789abcdef", "eth0");
        let b = port_name("0123456789abcdef0123456789abcdef", "eth1");
        let c = port_name("0123456789abcdef0123456789abcdee", "eth0");
        assert_eq!(a.len(), 15);
        assert!(tapswitch_dataplane::io::port::valid_ifname(&a));
        assert!(a != b && a != c && b != c);
        assert_eq!(a, port_name("0123456789abcdef0123456789abcdef", "eth0"));
    }
}
