//! What every stage of one worker's pipeline works with: the tables it shares with the other
//! workers, the worker's counters, the record of a traced frame, and the IPv4 identification
//! of the outer headers it builds. Each stage keeps its own state besides; this is what they
//! have in common, passed to each in turn.

use std::sync::Arc;

use super::shared::SharedTables;
use super::trace::Trace;
use super::WorkerCounters;

pub struct Context {
    /// Learned MACs and remote VTEPs, neighbours, conntrack: one set for all workers.
    pub shared: Arc<SharedTables>,
    pub counters: Arc<WorkerCounters>,
    /// The record of the frame being traced, while one is ([`trace_on`](Self::trace_on)).
    pub trace: Option<Box<Trace>>,
    /// IPv4 identification of the next outer header this worker builds (VXLAN, IPIP).
    pub(super) ident: u16,
}

impl Context {
    pub fn new(counters: Arc<WorkerCounters>, shared: Arc<SharedTables>) -> Context {
        Context {
            shared,
            counters,
            trace: None,
            ident: 0,
        }
    }

    /// Records what every stage decides about the frames that follow, until
    /// [`take_trace`](Self::take_trace).
    pub fn trace_on(&mut self) {
        match &mut self.trace {
            Some(t) => t.clear(),
            None => self.trace = Some(Box::default()),
        }
    }

    /// Stops recording and returns the record.
    pub fn take_trace(&mut self) -> Option<Box<Trace>> {
        self.trace.take()
    }

    /// The record being made, if tracing is on.
    #[inline]
    pub fn trace_mut(&mut self) -> Option<&mut Trace> {
        self.trace.as_deref_mut()
    }

    /// The IPv4 identification for the next outer header.
    pub fn next_ip_ident(&mut self) -> u16 {
        next_ident(&mut self.ident)
    }
}

/// Moves `ident` on to the next IPv4 identification and returns it.
pub(super) fn next_ident(ident: &mut u16) -> u16 {
    *ident = ident.wrapping_add(1);
    *ident
}
