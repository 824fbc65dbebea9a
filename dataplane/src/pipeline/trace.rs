//! What a frame met on its way through the pipeline, stage by stage: the record behind
//! `tapswitch trace`.
//!
//! A [`Trace`] is switched on for one frame at a time ([`Pipeline::trace_on`](super::Pipeline::trace_on)):
//! then each stage appends a [`Step`] naming its decision and what decided it (the port and
//! VLAN, the MAC table entry, the route, the neighbour, the conntrack entry, the Service and
//! backend, the NAT binding, the remote VTEP, the drop reason), and the egress stage one per
//! transmit. Off (the default), a hook costs one branch on a `None`; nothing is formatted.

use std::fmt::{self, Display};

use super::DropReason;

/// The stages of the pipeline, in the order a frame meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Off the device or socket: length, offload metadata.
    Receive,
    /// Ethernet and 802.1Q headers.
    Parse,
    /// The ingress port's VLAN membership and source checks.
    Ingress,
    /// Learning, ARP/ND suppression, destination lookup.
    L2,
    /// The router: ARP/ND, local delivery, routes, TTL, neighbours, fragmentation.
    L3,
    /// Connection tracking and address translation (Services, port forwards, SNAT).
    Nat,
    /// Network policy: the sender's egress and the receiver's ingress rules.
    Policy,
    /// Rate limits: policing and shaping.
    Qos,
    /// VXLAN and IPIP, in and out.
    Tunnel,
    /// MTU, VLAN tagging, offloads, transmits.
    Egress,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Receive,
        Stage::Parse,
        Stage::Ingress,
        Stage::L2,
        Stage::L3,
        Stage::Nat,
        Stage::Policy,
        Stage::Qos,
        Stage::Tunnel,
        Stage::Egress,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Receive => "receive",
            Stage::Parse => "parse",
            Stage::Ingress => "ingress",
            Stage::L2 => "l2",
            Stage::L3 => "l3",
            Stage::Nat => "nat",
            Stage::Policy => "policy",
            Stage::Qos => "qos",
            Stage::Tunnel => "tunnel",
            Stage::Egress => "egress",
        }
    }
}

impl Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stage's decision about the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub stage: Stage,
    /// What it did, in a word or two (`classified`, `hit`, `flood`, `route`, `drop`, ...).
    pub action: &'static str,
    /// What it decided by, as name and value (`port`, `vlan`, `route`, `backend`, ...).
    pub fields: Vec<(&'static str, String)>,
}

impl Step {
    /// Adds a field.
    pub fn with(&mut self, name: &'static str, value: impl Display) -> &mut Step {
        self.fields.push((name, value.to_string()));
        self
    }

    /// The value of field `name`, if it has one.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Everything recorded about one frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub steps: Vec<Step>,
}

impl Trace {
    /// Appends a step and returns it for its fields.
    pub fn step(&mut self, stage: Stage, action: &'static str) -> &mut Step {
        self.steps.push(Step {
            stage,
            action,
            fields: Vec::new(),
        });
        self.steps.last_mut().expect("just pushed")
    }

    /// Records a drop: the stage its reason belongs to, and the reason.
    pub fn dropped(&mut self, reason: DropReason) {
        self.step(reason.stage(), "drop")
            .with("reason", reason.as_str());
    }

    /// The drop recorded, if the frame was dropped (the first one: later stages do not run).
    pub fn drop_reason(&self) -> Option<&str> {
        self.steps
            .iter()
            .find(|s| s.action == "drop")
            .and_then(|s| s.field("reason"))
    }

    pub fn clear(&mut self) {
        self.steps.clear();
    }

    /// Forgets the decisions recorded after the frame came in (they are about to be made
    /// again, on the frames its offloads make).
    pub fn rewind_to_receive(&mut self) {
        let keep = self
            .steps
            .iter()
            .take_while(|s| s.stage == Stage::Receive)
            .count();
        self.steps.truncate(keep);
    }
}

/// Records a step on `trace` when tracing is on; `fill` adds its fields. Off, nothing runs but
/// the check.
///
/// Hooks pass `move` closures of copies, so that no local has to live in memory for the
/// sake of a trace that is off; the filling is out of line.
#[inline(always)]
pub(super) fn record<F: FnOnce(&mut Step)>(
    trace: &mut Option<Box<Trace>>,
    stage: Stage,
    action: &'static str,
    fill: F,
) {
    if let Some(t) = trace.as_deref_mut() {
        record_cold(t, stage, action, fill);
    }
}

/// [`record`] in code compiled twice, with and without tracing (`TRACE`): the copy without
/// has no trace code at all.
#[inline(always)]
pub(super) fn record_if<const TRACE: bool, F: FnOnce(&mut Step)>(
    trace: &mut Option<Box<Trace>>,
    stage: Stage,
    action: &'static str,
    fill: F,
) {
    if TRACE {
        record(trace, stage, action, fill);
    }
}

#[cold]
#[inline(never)]
fn record_cold<F: FnOnce(&mut Step)>(t: &mut Trace, stage: Stage, action: &'static str, fill: F) {
    fill(t.step(stage, action));
}
