//! Live traces and captures (`tapswitch trace --live`, `tapswitch capture`) as sessions of
//! the control API: `tap_start` sets a [`Tap`] on every worker, `tap_poll` hands over what it
//! recorded since the last poll, `tap_stop` (or a client that stops polling) removes it.
//!
//! A session's records wait in a bounded queue; a client that polls too slowly loses records
//! (counted, reported in each poll), never forwarded frames. Filters use tcpdump's filter
//! language, compiled by libpcap (`pcap_compile`) for Ethernet frames and, for a tunnel's
//! outer packets, for raw IPv4, and run in the workers by libpcap's own interpreter
//! (`pcap_offline_filter`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tapswitch_dataplane::pipeline::observe::{Filter, Link, Record, Tap, TapKind, TapSpec, Taps};

use super::{Switch, SwitchError};
use crate::trace::{report, to_hex};

/// A session with no poll for this long is removed.
pub const TAP_IDLE: Duration = Duration::from_secs(10);
/// Records a session holds for its client at most.
const QUEUE: usize = 8_192;
/// Records one poll hands over at most.
const POLL_MAX: usize = 2_048;
/// Sessions at once.
const SESSIONS_MAX: usize = 16;
/// Bytes kept of each packet unless asked otherwise (tcpdump's default).
pub const SNAPLEN_DEFAULT: usize = 262_144;

/// What a client asks for (`tap_start`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapRequest {
    /// `capture` or `trace`.
    pub kind: String,
    /// One port, or every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// `in`, `out` or `both` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// tcpdump's filter language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<usize>,
    /// Dropped frames with their reasons.
    #[serde(default)]
    pub drops: bool,
    /// The tunnels' outer packets.
    #[serde(default)]
    pub underlay: bool,
    /// Records wanted, then the session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// One client's live trace or capture.
pub(super) struct Session {
    id: u64,
    tap: Arc<Tap>,
    records: Receiver<Record>,
    last_poll: Instant,
}

/// A compiled filter program that workers share. libpcap's `bpf_program` is only read by
/// `pcap_offline_filter` (its interpreter takes the instructions as `const`), so several
/// threads may run it at once.
struct Program(pcap::BpfProgram);

// SAFETY: the program is never changed after `pcap_compile`; `pcap_offline_filter` only reads
// it (see above), and it is freed once, when the last holder drops it.
unsafe impl Sync for Program {}

impl Program {
    fn matches(&self, data: &[u8]) -> bool {
        self.0.filter(data)
    }
}

/// Compiles `expr` for frames of `link`; the error is libpcap's, naming what it could not
/// parse.
pub fn compile_filter(expr: &str, link: Link) -> Result<Filter, String> {
    let linktype = match link {
        Link::Ethernet => pcap::Linktype::ETHERNET,
        Link::Ipv4 => pcap::Linktype::IPV4,
    };
    let dead = pcap::Capture::dead(linktype).map_err(|e| format!("filter: {e}"))?;
    let program = dead
        .compile(expr, true)
        .map_err(|e| format!("filter: {e}"))?;
    let program = Program(program);
    Ok(Arc::new(move |data: &[u8]| program.matches(data)))
}

impl Switch {
    /// Starts a live trace or a capture; returns its id.
    pub fn tap_start(&mut self, req: TapRequest) -> Result<Value, SwitchError> {
        self.expire_taps(Instant::now());
        let invalid = |m: String| SwitchError::Invalid(m);
        let kind = match req.kind.as_str() {
            "capture" => TapKind::Capture,
            "trace" => TapKind::Trace,
            other => return Err(invalid(format!("kind: `{other}` is not capture or trace"))),
        };
        if self.taps.len() >= SESSIONS_MAX {
            return Err(invalid(format!(
                "tap: {SESSIONS_MAX} traces and captures run already"
            )));
        }
        let port = match &req.port {
            Some(name) => Some(
                self.port_id(name)
                    .ok_or_else(|| SwitchError::NoSuchPort(name.clone()))?,
            ),
            None => None,
        };
        let (rx, tx) = match req.direction.as_deref().unwrap_or("both") {
            "in" => (true, false),
            "out" => (false, true),
            "both" => (true, true),
            other => {
                return Err(invalid(format!(
                    "direction: `{other}` is not in, out or both"
                )))
            }
        };
        let snaplen = req.snaplen.unwrap_or(SNAPLEN_DEFAULT);
        if !(1..=SNAPLEN_DEFAULT).contains(&snaplen) {
            return Err(invalid(format!(
                "snaplen: {snaplen} is not 1 to {SNAPLEN_DEFAULT}"
            )));
        }
        if req.count == Some(0) {
            return Err(invalid("count: must be at least 1".into()));
        }
        let (filter, filter_ip) = match &req.filter {
            Some(expr) if !expr.trim().is_empty() => (
                Some(compile_filter(expr, Link::Ethernet).map_err(invalid)?),
                Some(compile_filter(expr, Link::Ipv4).map_err(invalid)?),
            ),
            _ => (None, None),
        };
        let spec = TapSpec {
            port,
            rx: rx && !req.drops,
            tx: tx && !req.drops,
            drops: req.drops,
            underlay: req.underlay,
            snaplen,
            filter,
            filter_ip,
            count: req.count,
            queue: QUEUE,
        };
        let (tap, records) = Tap::new(kind, spec);
        self.next_tap += 1;
        let id = self.next_tap;
        self.taps.push(Session {
            id,
            tap,
            records,
            last_poll: Instant::now(),
        });
        self.publish_taps()?;
        Ok(json!({ "id": id }))
    }

    /// What session `id` recorded since the last poll (at most [`POLL_MAX`] records), the
    /// records it lost so far, and whether it is done (its count reached).
    pub fn tap_poll(&mut self, id: u64) -> Result<Value, SwitchError> {
        let now = Instant::now();
        self.expire_taps(now);
        let session = self
            .taps
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| SwitchError::Invalid(format!("tap {id}: no such session")))?;
        session.last_poll = now;
        let records: Vec<Record> = session.records.try_iter().take(POLL_MAX).collect();
        let lost = session.tap.lost();
        let done = session.tap.is_done() && session.records.is_empty();
        let records: Vec<Value> = records.iter().map(|r| self.record_json(r)).collect();
        Ok(json!({ "records": records, "lost": lost, "done": done }))
    }

    /// Ends session `id`; returns what it lost.
    pub fn tap_stop(&mut self, id: u64) -> Result<Value, SwitchError> {
        let i = self
            .taps
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| SwitchError::Invalid(format!("tap {id}: no such session")))?;
        let s = self.taps.remove(i);
        self.publish_taps()?;
        Ok(json!({ "lost": s.tap.lost() }))
    }

    /// Removes sessions whose client stopped polling. Returns when the next may expire.
    pub fn expire_taps(&mut self, now: Instant) -> Option<Instant> {
        let before = self.taps.len();
        self.taps
            .retain(|s| now.saturating_duration_since(s.last_poll) < TAP_IDLE);
        if self.taps.len() != before {
            if let Err(e) = self.publish_taps() {
                log::warn!("tap: could not remove an idle session: {e}");
            }
        }
        self.taps.iter().map(|s| s.last_poll + TAP_IDLE).min()
    }

    fn publish_taps(&self) -> Result<(), SwitchError> {
        let taps: Taps = self.taps.iter().map(|s| Arc::clone(&s.tap)).collect();
        for w in &self.workers {
            w.set_taps(Arc::clone(&taps)).map_err(SwitchError::Worker)?;
        }
        Ok(())
    }

    fn record_json(&self, r: &Record) -> Value {
        let port = r.port.map(|p| self.port_name(p));
        let mut v = json!({
            "ts_ns": r.ts_ns,
            "port": port,
            "direction": r.direction.as_str(),
            "link": match r.link { Link::Ethernet => "ethernet", Link::Ipv4 => "ipv4" },
            "len": r.len,
            "worker": r.worker,
            "hex": to_hex(&r.data),
        });
        if let Some(c) = &r.comment {
            v["comment"] = json!(c);
        }
        if let Some(t) = &r.trace {
            v["trace"] = report(port.as_deref().unwrap_or("?"), &r.data, t, &[]);
        }
        v
    }
}
