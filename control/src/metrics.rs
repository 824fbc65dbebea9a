//! The metrics server: `[metrics] listen = "127.0.0.1:9469"` serves `/metrics` in the
//! Prometheus text format (the `prometheus-client` crate's encoder, over `tiny_http`). It sits
//! beside the control thread and reads the switch through the control socket, like the CLI:
//! each scrape asks for `stats` and `service list` and turns them into metrics, so a scrape
//! costs the dataplane nothing and never blocks it.
//!
//! Names follow Prometheus conventions: `tapswitch_` prefix, `_total` for counters (added by
//! the encoder), base units (`_bytes`).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::api::{self, Request};

/// The default address when `[metrics]` names none.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";

/// A running metrics server; stops when dropped.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `listen` and answers scrapes from the switch on `socket`.
    pub fn start(listen: SocketAddr, socket: PathBuf) -> io::Result<MetricsServer> {
        let server = tiny_http::Server::http(listen).map_err(io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the metrics server has no IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    // OpenMetrics for a scraper that asks for it (Prometheus does), else
                    // the classic text format (what promtool and older tools read).
                    let openmetrics = req.headers().iter().any(|h| {
                        h.field.equiv("Accept")
                            && h.value.as_str().contains("application/openmetrics-text")
                    });
                    let (code, body, kind) = match (req.method(), req.url()) {
                        (tiny_http::Method::Get, "/metrics") => match scrape(&socket) {
                            Ok(text) if openmetrics => (
                                200,
                                text,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                            Ok(text) => (
                                200,
                                classic(&text),
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                            Err(e) => (503, format!("{e}\n"), "text/plain"),
                        },
                        (tiny_http::Method::Get, _) => {
                            (404, "tapswitch serves /metrics\n".to_string(), "text/plain")
                        }
                        _ => (405, "GET /metrics\n".to_string(), "text/plain"),
                    };
                    let header = tiny_http::Header::from_bytes("Content-Type", kind)
                        .expect("a valid header");
                    let _ = req.respond(
                        tiny_http::Response::from_string(body)
                            .with_status_code(code)
                            .with_header(header),
                    );
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.thread.take());
    }
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a counter's `HELP` and
/// `TYPE` name its samples (`_total`), and there is no `# EOF` or `# UNIT`.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

type Labels = Vec<(String, String)>;

/// The metrics of one scrape, built from the switch's answers.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn counter(&mut self, name: &str, help: &str, values: Vec<(Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).inc_by(v);
        }
        self.registry.register(name, help, family);
    }

    fn counter_f64(&mut self, name: &str, help: &str, values: Vec<(Labels, f64)>) {
        let family = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).inc_by(v);
        }
        self.registry.register(name, help, family);
    }

    /// A histogram from buckets counted elsewhere.
    fn histogram(&mut self, name: &str, help: &str, values: Vec<(Labels, HistogramData)>) {
        let family = Family::<Labels, ConstHistogram>::default();
        for (labels, data) in values {
            let h = family.get_or_create(&labels);
            *h.0.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(data);
        }
        self.registry.register(name, help, family);
    }

    fn gauge(&mut self, name: &str, help: &str, values: Vec<(Labels, i64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).set(v);
        }
        self.registry.register(name, help, family);
    }
}

/// A histogram whose buckets were counted elsewhere (the daemon, the workers): this only
/// encodes them. The `+Inf` bucket is the count.
#[derive(Debug, Default)]
struct ConstHistogram(std::sync::Mutex<Option<HistogramData>>);

/// A histogram's sum, count and buckets (upper bound, cumulative count; `+Inf` left out).
type HistogramData = (f64, u64, Vec<(f64, u64)>);

impl prometheus_client::metrics::TypedMetric for ConstHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for ConstHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let h = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (sum, count, buckets) = h.clone().unwrap_or_default();
        // The encoder adds the buckets up itself: hand it each bucket's own count.
        let mut all = Vec::with_capacity(buckets.len() + 1);
        let mut below = 0;
        for (le, cumulative) in buckets {
            all.push((le, cumulative.saturating_sub(below)));
            below = cumulative;
        }
        all.push((f64::INFINITY, count.saturating_sub(below)));
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &all, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// The stage that drops for a reason named `reason`.
fn stage_of(reason: &str) -> &'static str {
    tapswitch_dataplane::pipeline::DropReason::ALL
        .iter()
        .find(|r| r.as_str() == reason)
        .map_or("unknown", |r| r.stage().as_str())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn label(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// One scrape: `stats` and `service list` as metrics, in the text format.
pub fn scrape(socket: &std::path::Path) -> Result<String, String> {
    let stats = api::call(socket, &Request::Stats).map_err(|e| e.to_string())?;
    let services = api::call(socket, &Request::ServiceList).map_err(|e| e.to_string())?;
    let policies = api::call(socket, &Request::PolicyList).map_err(|e| e.to_string())?;
    let mut s = Scrape {
        registry: Registry::default(),
    };
    let ports: Vec<&Value> = stats["ports"].as_array().into_iter().flatten().collect();
    let per_port = |key: &str| -> Vec<(Labels, u64)> {
        ports
            .iter()
            .map(|p| {
                (
                    vec![label("port", p["name"].as_str().unwrap_or("?"))],
                    u(&p[key]),
                )
            })
            .collect()
    };
    s.counter(
        "tapswitch_port_rx_packets",
        "Frames received on a port",
        per_port("rx_packets"),
    );
    s.counter(
        "tapswitch_port_rx_bytes",
        "Bytes received on a port",
        per_port("rx_bytes"),
    );
    s.counter(
        "tapswitch_port_tx_packets",
        "Frames sent on a port",
        per_port("tx_packets"),
    );
    s.counter(
        "tapswitch_port_tx_bytes",
        "Bytes sent on a port",
        per_port("tx_bytes"),
    );
    s.counter(
        "tapswitch_port_tx_errors",
        "Frames a port's device refused",
        per_port("tx_errors"),
    );
    s.counter(
        "tapswitch_port_tx_oversized",
        "Frames too large for the egress MTU",
        per_port("tx_oversized"),
    );
    // Drops by reason: ports, the tunnel sockets and the router interfaces.
    let mut drops = Vec::new();
    let mut push_drops = |labels: Labels, d: &Value| {
        // Reasons that never happened are left out (dozens per port).
        for (reason, n) in d
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| u(n) > 0)
        {
            let mut l = labels.clone();
            l.push(label("stage", stage_of(reason)));
            l.push(label("reason", reason));
            drops.push((l, u(n)));
        }
    };
    for p in &ports {
        push_drops(
            vec![label("port", p["name"].as_str().unwrap_or("?"))],
            &p["drops"],
        );
    }
    for tunnel in ["vxlan", "ipip"] {
        push_drops(vec![label("port", tunnel)], &stats[tunnel]["drops"]);
    }
    s.counter(
        "tapswitch_port_drops",
        "Frames dropped, by where they came in, the pipeline stage that dropped them, and why",
        drops,
    );
    let mut iface_drops = Vec::new();
    let ifaces: Vec<&Value> = stats["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for i in &ifaces {
        for (reason, n) in i["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| u(n) > 0)
        {
            iface_drops.push((
                vec![
                    label("vlan", &i["vlan"]),
                    label("stage", stage_of(reason)),
                    label("reason", reason),
                ],
                u(n),
            ));
        }
    }
    s.counter(
        "tapswitch_interface_drops",
        "Packets the router dropped, by interface and why",
        iface_drops,
    );
    let per_iface = |key: &str| -> Vec<(Labels, u64)> {
        ifaces
            .iter()
            .map(|i| (vec![label("vlan", &i["vlan"])], u(&i[key])))
            .collect()
    };
    s.counter(
        "tapswitch_interface_rx_packets",
        "Packets routed in by an interface",
        per_iface("rx_packets"),
    );
    s.counter(
        "tapswitch_interface_tx_packets",
        "Packets routed out of an interface",
        per_iface("tx_packets"),
    );
    let dhcp = ifaces
        .iter()
        .flat_map(|i| {
            ["offer", "ack", "nak", "decline"].map(|m| {
                (
                    vec![label("vlan", &i["vlan"]), label("message", m)],
                    u(&i[format!("dhcp_{m}s").as_str()]),
                )
            })
        })
        .collect();
    s.counter(
        "tapswitch_interface_dhcp_messages",
        "DHCP messages of an interface's server: offers, acks and naks sent, declines received",
        dhcp,
    );
    for tunnel in ["vxlan", "ipip"] {
        let t = &stats[tunnel];
        s.counter(
            &format!("tapswitch_{tunnel}_rx_packets"),
            "Outer packets received by the tunnel sockets",
            vec![(vec![], u(&t["rx_packets"]))],
        );
        s.counter(
            &format!("tapswitch_{tunnel}_tx_packets"),
            "Outer packets sent by the tunnel sockets",
            vec![(vec![], u(&t["tx_packets"]))],
        );
    }
    let fdb = &stats["fdb"];
    s.gauge(
        "tapswitch_fdb_entries",
        "MAC table entries, learned and static",
        vec![
            (
                vec![label("type", "learned")],
                fdb["learned_entries"].as_i64().unwrap_or(0),
            ),
            (
                vec![label("type", "static")],
                fdb["static_entries"].as_i64().unwrap_or(0),
            ),
        ],
    );
    for (key, help) in [
        ("learned", "MACs learned"),
        ("moved", "Learned MACs that moved to another port"),
        ("aged", "Learned MACs aged out"),
        ("table_full", "MACs not learned because the table was full"),
        ("port_limit", "MACs not learned because of a port's bound"),
        ("remote_learned", "MACs learned behind remote VTEPs"),
        (
            "neigh_suppressed",
            "ARP/ND requests answered by suppression",
        ),
    ] {
        s.counter(
            &format!("tapswitch_fdb_{key}"),
            help,
            vec![(vec![], u(&fdb[key]))],
        );
    }
    let nat = &stats["nat"];
    s.gauge(
        "tapswitch_conntrack_entries",
        "Connections tracked now",
        vec![(vec![], nat["entries"].as_i64().unwrap_or(0))],
    );
    s.gauge(
        "tapswitch_conntrack_max",
        "The bound of the connection tracking table",
        vec![(vec![], nat["max"].as_i64().unwrap_or(0))],
    );
    for (key, name, help) in [
        (
            "connections",
            "tapswitch_conntrack_inserts",
            "Connections tracked so far",
        ),
        (
            "insert_failed",
            "tapswitch_conntrack_insert_failed",
            "Connections not tracked: the table was full",
        ),
        (
            "translated",
            "tapswitch_nat_translations",
            "Packets whose addresses or ports were rewritten",
        ),
        (
            "icmp_translated",
            "tapswitch_nat_icmp_translations",
            "ICMP errors about translated connections, translated",
        ),
        (
            "rejected",
            "tapswitch_nat_rejected",
            "Connections to a Service without backends, refused",
        ),
        (
            "invalid",
            "tapswitch_conntrack_invalid",
            "Segments refused by the TCP state machine or window",
        ),
        (
            "evicted",
            "tapswitch_conntrack_evictions",
            "Connections evicted early to make room in a full table",
        ),
        (
            "expired",
            "tapswitch_conntrack_expired",
            "Connections forgotten when their timeout ran out",
        ),
    ] {
        s.counter(name, help, vec![(vec![], u(&nat[key]))]);
    }
    let tables: Vec<&Value> = stats["tables"].as_array().into_iter().flatten().collect();
    s.gauge(
        "tapswitch_table_entries",
        "Entries in each bounded table: mac, remote_vtep, neighbour, conntrack",
        tables
            .iter()
            .map(|t| {
                (
                    vec![label("table", t["table"].as_str().unwrap_or("?"))],
                    t["entries"].as_i64().unwrap_or(0),
                )
            })
            .collect(),
    );
    s.gauge(
        "tapswitch_table_max",
        "The bound of each table (a full table's behaviour is documented per table)",
        tables
            .iter()
            .map(|t| {
                (
                    vec![label("table", t["table"].as_str().unwrap_or("?"))],
                    t["max"].as_i64().unwrap_or(0),
                )
            })
            .collect(),
    );
    let workers: Vec<&Value> = stats["workers"].as_array().into_iter().flatten().collect();
    for (key, help) in [
        ("rx_packets", "Frames a worker read"),
        ("rx_bytes", "Bytes a worker read"),
        ("tx_packets", "Frames a worker wrote"),
        ("tx_bytes", "Bytes a worker wrote"),
    ] {
        s.counter(
            &format!("tapswitch_worker_{key}"),
            help,
            workers
                .iter()
                .map(|w| (vec![label("worker", &w["worker"])], u(&w[key])))
                .collect(),
        );
    }
    for (key, name, help) in [
        (
            "batches",
            "tapswitch_worker_batches",
            "Rounds of a worker's poll loop that read frames from a port or socket",
        ),
        (
            "wakeups",
            "tapswitch_worker_wakeups",
            "Times a worker's poll loop woke up",
        ),
        (
            "busy_poll_hits",
            "tapswitch_worker_busy_poll_hits",
            "Polls on after traffic (busy_poll_us) that found frames: wake-ups saved",
        ),
    ] {
        s.counter(
            name,
            help,
            workers
                .iter()
                .map(|w| (vec![label("worker", &w["worker"])], u(&w[key])))
                .collect(),
        );
    }
    for (key, name, help) in [
        (
            "busy_ns",
            "tapswitch_worker_busy_seconds",
            "Time a worker spent on frames (reading, the pipeline, writing), not waiting for them",
        ),
        (
            "busy_poll_ns",
            "tapswitch_worker_busy_poll_seconds",
            "Time a worker spent polling on after traffic (busy_poll_us) and finding nothing",
        ),
    ] {
        s.counter_f64(
            name,
            help,
            workers
                .iter()
                .map(|w| (vec![label("worker", &w["worker"])], u(&w[key]) as f64 / 1e9))
                .collect(),
        );
    }
    s.histogram(
        "tapswitch_worker_batch_size",
        "Frames read per round of one port or socket",
        workers
            .iter()
            .map(|w| {
                let mut cumulative = 0;
                let buckets: Vec<(f64, u64)> = w["batch_sizes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| Some((b[0].as_u64()?, b[1].as_u64()?)))
                    .filter(|(le, _)| *le > 0)
                    .map(|(le, n)| {
                        cumulative += n;
                        (le as f64, cumulative)
                    })
                    .collect();
                (
                    vec![label("worker", &w["worker"])],
                    (u(&w["batch_frames"]) as f64, u(&w["batches"]), buckets),
                )
            })
            .collect(),
    );
    let mut backends = Vec::new();
    let mut per_service = Vec::new();
    for svc in services.as_array().into_iter().flatten() {
        let total: i64 = svc["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| b["connections"].as_i64().unwrap_or(0))
            .sum();
        per_service.push((
            vec![label("service", svc["name"].as_str().unwrap_or("?"))],
            total,
        ));
        for b in svc["backends"].as_array().into_iter().flatten() {
            backends.push((
                vec![
                    label("service", svc["name"].as_str().unwrap_or("?")),
                    label("backend", b["address"].as_str().unwrap_or("?")),
                ],
                b["connections"].as_i64().unwrap_or(0),
            ));
        }
    }
    s.gauge(
        "tapswitch_service_backend_connections",
        "Connections tracked now to each backend of each Service",
        backends,
    );
    s.gauge(
        "tapswitch_service_connections",
        "Connections tracked now to each Service",
        per_service,
    );
    let mut hits = Vec::new();
    for p in policies.as_array().into_iter().flatten() {
        for r in p["rules"].as_array().into_iter().flatten() {
            hits.push((
                vec![
                    label("tier", p["tier"].as_str().unwrap_or("?")),
                    label("policy", p["name"].as_str().unwrap_or("?")),
                    label("direction", r["direction"].as_str().unwrap_or("?")),
                    label("rule", &r["index"]),
                    label("action", r["action"].as_str().unwrap_or("?")),
                ],
                u(&r["hits"]),
            ));
        }
    }
    s.counter(
        "tapswitch_policy_rule_hits",
        "Connections (and packets outside one) each network policy rule decided",
        hits,
    );
    let control = &stats["control"];
    s.gauge(
        "tapswitch_control_connections",
        "Control socket connections open now",
        vec![(vec![], control["connections"].as_i64().unwrap_or(0))],
    );
    s.counter(
        "tapswitch_control_refused",
        "Control socket connections refused (access, limits)",
        vec![(vec![], u(&control["refused"]))],
    );
    let requests: Vec<&Value> = control["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let by_cmd = |key: &str| -> Vec<(Labels, u64)> {
        requests
            .iter()
            .map(|r| {
                (
                    vec![label("cmd", r["cmd"].as_str().unwrap_or("?"))],
                    u(&r[key]),
                )
            })
            .collect()
    };
    s.counter(
        "tapswitch_control_requests",
        "Control requests carried out, by command",
        by_cmd("count"),
    );
    s.counter(
        "tapswitch_control_request_errors",
        "Control requests answered with an error, by command",
        by_cmd("errors"),
    );
    s.histogram(
        "tapswitch_control_request_duration_seconds",
        "Time from a control request's arrival to its answer, by command",
        requests
            .iter()
            .map(|r| {
                let buckets = r["buckets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| Some((b[0].as_f64()?, b[1].as_u64()?)))
                    .collect();
                (
                    vec![label("cmd", r["cmd"].as_str().unwrap_or("?"))],
                    (
                        r["seconds"].as_f64().unwrap_or(0.0),
                        u(&r["count"]),
                        buckets,
                    ),
                )
            })
            .collect(),
    );
    let mut out = String::new();
    encode(&mut out, &s.registry).map_err(|e| e.to_string())?;
    Ok(out)
}
