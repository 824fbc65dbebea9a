//! The control socket API: a Unix stream socket; the client sends one JSON request on one
//! line, the daemon answers with one JSON response and closes the connection. The server side
//! (many clients at once, limits, access) is [`crate::server`].
//!
//! Request: `{"cmd":"port_add","port":{"name":"tap-c1","vlan":10}}`.
//! Response: `{"ok":true,"data":...}` or `{"ok":false,"error":"port tap-c9: no such port"}`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    BackendConfig, ConntrackFilter, DnatConfig, FdbConfig, InterfaceConfig, NeighConfig,
    PortConfig, RouteConfig, ServiceConfig, SnatConfig, VxlanConfig,
};
use crate::switch::{Switch, SwitchError};

/// The default control socket.
pub const DEFAULT_SOCKET: &str = "/run/tapswitch/tapswitch.sock";
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    PortAdd {
        port: PortConfig,
    },
    PortDel {
        name: String,
    },
    /// Changes a port's labels, addresses, port security or storm control at runtime.
    PortSet {
        name: String,
        #[serde(flatten)]
        change: crate::config::PortChange,
    },
    PortList,
    FdbShow,
    FdbAdd {
        entry: FdbConfig,
    },
    FdbDel {
        mac: String,
        vlan: Option<u16>,
    },
    Stats,
    /// The running configuration (the file plus runtime changes) as TOML.
    ConfigShow,
    /// Re-read the configuration file the switch was started with and apply the differences.
    Reload,
    /// Stop the daemon: ports are released (TAPs stay for the next start); with `purge`, every
    /// port is removed and the saved state forgotten. Answered once done.
    Stop {
        #[serde(default)]
        purge: bool,
    },
    /// Hand the running switch over to the process asking (see [`crate::takeover`]).
    Takeover,
    VxlanAdd {
        vxlan: VxlanConfig,
    },
    VxlanDel {
        vni: u32,
    },
    VxlanList,
    NeighAdd {
        neigh: NeighConfig,
    },
    NeighDel {
        ip: String,
        vni: Option<u32>,
    },
    NeighShow,
    InterfaceAdd {
        interface: InterfaceConfig,
    },
    InterfaceDel {
        vlan: u16,
    },
    InterfaceList,
    RouteAdd {
        route: RouteConfig,
    },
    RouteDel {
        prefix: String,
    },
    RouteShow,
    SnatAdd {
        snat: SnatConfig,
    },
    SnatDel {
        source: String,
        out_vlan: u16,
    },
    SnatList,
    DnatAdd {
        dnat: DnatConfig,
    },
    /// The port forward of (protocol, address, port); the protocol defaults to tcp.
    DnatDel {
        protocol: Option<String>,
        address: String,
        port: u32,
    },
    DnatList,
    ServiceAdd {
        service: ServiceConfig,
    },
    ServiceDel {
        name: String,
    },
    ServiceList,
    /// Adds policies (the sections of a policy file), replacing those of the same tier and
    /// name; all are checked before any is applied.
    PolicyAdd {
        #[serde(default)]
        policy: Vec<crate::config::policy::PolicyConfig>,
        #[serde(default)]
        admin_policy: Vec<crate::config::policy::PolicyConfig>,
        #[serde(default)]
        baseline_policy: Vec<crate::config::policy::PolicyConfig>,
    },
    /// Removes a policy (`tier`: admin, policy or baseline; needed only when two tiers have
    /// the name).
    PolicyDel {
        name: String,
        #[serde(default)]
        tier: Option<String>,
    },
    /// Every policy with its rules' hit counters.
    PolicyList,
    PolicyShow {
        name: String,
        #[serde(default)]
        tier: Option<String>,
    },
    /// Replaces a Service's backends; an empty list leaves it rejecting connections.
    ServiceSetBackends {
        name: String,
        #[serde(default)]
        backends: Vec<BackendConfig>,
    },
    ConntrackShow {
        #[serde(default)]
        filter: ConntrackFilter,
    },
    /// Forgets the tracked connections the filter picks (all without one).
    ConntrackFlush {
        #[serde(default)]
        filter: ConntrackFilter,
    },
    /// The cluster agent's view (`tapswitch cluster status`); answered by the daemon.
    ClusterStatus,
    /// A dry run: what the pipeline would do with one frame arriving on `port`, given as
    /// `packet` (a description, see [`crate::trace::Probe`]) or `frame` (hex). Nothing is
    /// learned, tracked, counted or sent.
    /// Starts a live trace or a capture; answers its id (see [`crate::switch::tap`]).
    TapStart {
        tap: crate::switch::tap::TapRequest,
    },
    /// What a live trace or capture recorded since the last poll.
    TapPoll {
        id: u64,
    },
    /// Ends a live trace or capture.
    TapStop {
        id: u64,
    },
    Trace {
        port: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packet: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frame: Option<String>,
    },
    /// Many changes carried out as one (see [`crate::switch::batch`]); with `owner`, the
    /// entries it adds belong to that agent.
    Batch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        requests: Vec<Request>,
    },
}

/// The `cmd` of a request line (read again on its own; for the control metrics).
pub fn command_name(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Cmd {
        cmd: String,
    }
    serde_json::from_slice::<Cmd>(line).ok().map(|c| c.cmd)
}

impl Request {
    /// The `owner` field of the entry an add request carries.
    fn owner_mut(&mut self) -> Option<&mut Option<String>> {
        Some(match self {
            Request::FdbAdd { entry } => &mut entry.owner,
            Request::VxlanAdd { vxlan } => &mut vxlan.owner,
            Request::NeighAdd { neigh } => &mut neigh.owner,
            Request::InterfaceAdd { interface } => &mut interface.owner,
            Request::RouteAdd { route } => &mut route.owner,
            Request::SnatAdd { snat } => &mut snat.owner,
            Request::ServiceAdd { service } => &mut service.owner,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Response {
        Response {
            ok: true,
            data: serde_json::to_value(data).ok(),
            error: None,
        }
    }

    pub fn error(msg: impl ToString) -> Response {
        Response {
            ok: false,
            data: None,
            error: Some(msg.to_string()),
        }
    }
}

/// Carries out one request on the switch. `Reload` and `Stop` concern the daemon, which
/// carries them out itself.
pub fn handle(switch: &mut Switch, mut req: Request) -> Response {
    let acting = switch.acting_owner().map(String::from);
    if let Some(owner) = req.owner_mut() {
        if owner.is_some() && acting.is_none() {
            return Response::error(
                "owner: set by tapswitch for the entries of an agent's batch, not in a request",
            );
        }
        *owner = acting;
    }
    let result: Result<Response, SwitchError> = match req {
        Request::PortAdd { port } => switch.add_port(port).map(|()| Response::ok(())),
        Request::PortDel { name } => switch.del_port(&name).map(|()| Response::ok(())),
        Request::PortSet { name, change } => {
            switch.set_port(&name, &change).map(|()| Response::ok(()))
        }
        Request::PortList => Ok(Response::ok(switch.list_ports())),
        Request::FdbShow => switch.show_fdb().map(Response::ok),
        Request::FdbAdd { entry } => switch.add_fdb(entry).map(|()| Response::ok(())),
        Request::FdbDel { mac, vlan } => switch.del_fdb(&mac, vlan).map(Response::ok),
        Request::Stats => switch.stats().map(Response::ok),
        Request::ConfigShow => {
            let owned = switch.config().owned_entries();
            let mut text = switch.config().user_view().to_toml();
            if owned > 0 {
                text.insert_str(
                    0,
                    &format!(
                        "# {owned} entries managed by agents (the cluster agent) are not shown: \
                         they are not part of the file\n"
                    ),
                );
            }
            Ok(Response::ok(text))
        }
        Request::Reload | Request::Stop { .. } | Request::Takeover | Request::ClusterStatus => {
            return Response::error(
                "reload, stop, takeover and cluster status are carried out by the daemon",
            )
        }
        Request::VxlanAdd { vxlan } => switch.add_vxlan(vxlan).map(|()| Response::ok(())),
        Request::VxlanDel { vni } => switch.del_vxlan(vni).map(|()| Response::ok(())),
        Request::VxlanList => Ok(Response::ok(switch.list_vxlan())),
        Request::NeighAdd { neigh } => switch.add_neigh(neigh).map(|()| Response::ok(())),
        Request::NeighDel { ip, vni } => switch.del_neigh(&ip, vni).map(|()| Response::ok(())),
        Request::NeighShow => switch.show_neighbours().map(Response::ok),
        Request::InterfaceAdd { interface } => {
            switch.add_interface(interface).map(|()| Response::ok(()))
        }
        Request::InterfaceDel { vlan } => switch.del_interface(vlan).map(|()| Response::ok(())),
        Request::InterfaceList => Ok(Response::ok(switch.list_interfaces())),
        Request::RouteAdd { route } => switch.add_route(route).map(|()| Response::ok(())),
        Request::RouteDel { prefix } => switch.del_route(&prefix).map(|()| Response::ok(())),
        Request::RouteShow => Ok(Response::ok(switch.show_routes())),
        Request::SnatAdd { snat } => switch.add_snat(snat).map(|()| Response::ok(())),
        Request::SnatDel { source, out_vlan } => switch
            .del_snat(&source, out_vlan)
            .map(|()| Response::ok(())),
        Request::SnatList => Ok(Response::ok(switch.list_snat())),
        Request::DnatAdd { dnat } => switch.add_dnat(dnat).map(|()| Response::ok(())),
        Request::DnatDel {
            protocol,
            address,
            port,
        } => switch
            .del_dnat(protocol.as_deref(), &address, port)
            .map(|()| Response::ok(())),
        Request::DnatList => switch.list_dnat().map(Response::ok),
        Request::ServiceAdd { service } => switch.add_service(service).map(|()| Response::ok(())),
        Request::ServiceDel { name } => switch.del_service(&name).map(|()| Response::ok(())),
        Request::ServiceList => switch.list_services().map(Response::ok),
        Request::PolicyAdd {
            policy,
            admin_policy,
            baseline_policy,
        } => switch
            .add_policy_sections(admin_policy, policy, baseline_policy)
            .map(|()| Response::ok(())),
        Request::PolicyDel { name, tier } => switch
            .del_policy(tier.as_deref(), &name)
            .map(|()| Response::ok(())),
        Request::PolicyList => Ok(Response::ok(switch.list_policies())),
        Request::PolicyShow { name, tier } => {
            switch.show_policy(tier.as_deref(), &name).map(Response::ok)
        }
        Request::ServiceSetBackends { name, backends } => switch
            .set_service_backends(&name, backends)
            .map(|()| Response::ok(())),
        Request::ConntrackShow { filter } => switch.show_conntrack(&filter).map(Response::ok),
        Request::ConntrackFlush { filter } => switch.flush_conntrack(&filter).map(Response::ok),
        Request::Batch { owner, requests } => switch.batch(owner, requests).map(Response::ok),
        Request::TapStart { tap } => switch.tap_start(tap).map(Response::ok),
        Request::TapPoll { id } => switch.tap_poll(id).map(Response::ok),
        Request::TapStop { id } => switch.tap_stop(id).map(Response::ok),
        Request::Trace {
            port,
            packet,
            frame,
        } => match frame.as_deref().map(crate::trace::from_hex).transpose() {
            Ok(frame) => switch
                .trace(&port, packet.as_deref(), frame)
                .map(Response::ok),
            Err(e) => Err(SwitchError::Invalid(e)),
        },
    };
    result.unwrap_or_else(Response::error)
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadSummary {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
}

/// Parses one request line; the error says what was wrong with it.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon is listening.
    #[error("cannot reach tapswitch at {path}: {source} (is `tapswitch run` running, with the same --socket?)")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("talking to tapswitch: {0}")]
    Io(#[from] io::Error),
    /// The daemon refused the request; the message is its.
    #[error("{0}")]
    Refused(String),
}

/// Sends `req` to the daemon at `socket` and returns the response's data.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    // A daemon that refuses the connection (access, too many clients) answers at once and
    // may close before the request is written: its answer is still there to read.
    let written = (&stream).write_all(&line);
    let mut reader = BufReader::new(&stream);
    let mut resp = String::new();
    match (reader.read_line(&mut resp), written) {
        (Ok(n), _) if n > 0 => {}
        (_, Err(e)) | (Err(e), _) => return Err(e.into()),
        (Ok(_), Ok(())) => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection without an answer",
            )
            .into())
        }
    }
    let resp: Response =
        serde_json::from_str(&resp).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if resp.ok {
        Ok(resp.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Refused(
            resp.error.unwrap_or_else(|| "unknown error".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        let req = Request::PortAdd {
            port: PortConfig {
                name: "tap-c1".into(),
                vlan: Some(10),
                ..PortConfig::default()
            },
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"port_add","port":{"name":"tap-c1","vlan":10}}"#
        );
        assert_eq!(parse_request(&text).unwrap(), req);
    }

    #[test]
    fn nat_requests_round_trip_as_json() {
        let reqs = [
            Request::ServiceAdd {
                service: ServiceConfig {
                    name: "web".into(),
                    vip: "10.96.0.10".into(),
                    port: 80,
                    backends: vec![
                        "10.42.0.2:8080,weight=3".into(),
                        BackendConfig::Table(crate::config::BackendTable {
                            address: "10.42.0.3:8080".into(),
                            weight: None,
                            drain: true,
                        }),
                    ],
                    node_port: Some(30080),
                    ..ServiceConfig::default()
                },
            },
            Request::ServiceSetBackends {
                name: "web".into(),
                backends: Vec::new(),
            },
            Request::DnatDel {
                protocol: None,
                address: "10.200.0.1".into(),
                port: 8080,
            },
            Request::SnatDel {
                source: "10.42.0.0/16".into(),
                out_vlan: 100,
            },
            Request::ConntrackFlush {
                filter: ConntrackFilter {
                    service: Some("web".into()),
                    ..ConntrackFilter::default()
                },
            },
        ];
        for req in reqs {
            let text = serde_json::to_string(&req).unwrap();
            assert_eq!(parse_request(&text).unwrap(), req, "{text}");
        }
        assert_eq!(
            parse_request(r#"{"cmd":"conntrack_show"}"#).unwrap(),
            Request::ConntrackShow {
                filter: ConntrackFilter::default()
            }
        );
        assert_eq!(
            parse_request(r#"{"cmd":"service_set_backends","name":"web"}"#).unwrap(),
            Request::ServiceSetBackends {
                name: "web".into(),
                backends: Vec::new()
            }
        );
        let text = r#"{"cmd":"service_add","service":{"name":"a","vip":"10.96.0.1","port":80,"backends":["10.42.0.2:80",{"address":"10.42.0.3:80","weight":2}]}}"#;
        let Request::ServiceAdd { service } = parse_request(text).unwrap() else {
            panic!("not a service_add");
        };
        assert_eq!(service.backends.len(), 2);
        assert!(parse_request(
            r#"{"cmd":"service_add","service":{"name":"a","vip":"10.96.0.1","port":80,"backends":[{"address":"10.42.0.3:80","wieght":2}]}}"#
        )
        .unwrap_err()
        .contains("wieght"));
    }

    #[test]
    fn bad_requests_say_why() {
        assert!(parse_request("").unwrap_err().starts_with("bad request"));
        assert!(parse_request(r#"{"cmd":"nope"}"#)
            .unwrap_err()
            .contains("unknown variant"));
        assert!(parse_request(r#"{"cmd":"port_del"}"#)
            .unwrap_err()
            .contains("missing field `name`"));
    }
}
