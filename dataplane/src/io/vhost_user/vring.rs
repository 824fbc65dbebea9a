//! One virtqueue of a vhost-user port as both sides of tapswitch see it: the split ring
//! (`virtio_queue::Queue`), its kick and call eventfds, its state, and the used entries written
//! but not yet published.
//!
//! A `Vring` sits in a `Mutex`: the protocol thread locks it for each message that changes it,
//! a worker for each batch of frames it moves through it (see [`hold`](super::hold)). Holding
//! the lock therefore means no worker is inside the ring: `GET_VRING_BASE` reads `next_avail`
//! after the last chain a worker took.
//!
//! The used ring is written here, not with `Queue::add_used`, which stores the used index after
//! every element: a frame spread over several buffers (mergeable RX buffers) would be visible
//! to the guest after its first one. Entries are written first and their index published once
//! ([`Vring::publish`]). The notification decision is ours too: `Queue::needs_notification`
//! ignores `VRING_AVAIL_F_NO_INTERRUPT`, which a polling frontend (DPDK) sets, so every batch
//! would cost an eventfd write toward it.

use std::fs::File;
use std::io::{Read, Write};
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::Memory;

/// Largest ring a frontend may ask for.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// `VRING_AVAIL_F_NO_INTERRUPT`.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

pub struct Vring {
    pub queue: Queue,
    pub kick: Option<File>,
    pub call: Option<File>,
    /// `SET_VRING_ENABLE` (or enabled from the start without protocol features).
    pub enabled: bool,
    /// Addresses and kick given, not stopped by `GET_VRING_BASE`.
    pub started: bool,
    /// The kick eventfd is in the queue pair's epoll set (guest TX rings only).
    pub polled: bool,
    /// Used entries written after `next_used` and not yet published.
    unpublished: u16,
}

impl Vring {
    pub fn new() -> Vring {
        Vring {
            queue: Queue::new(MAX_QUEUE_SIZE).expect("a valid maximum ring size"),
            kick: None,
            call: None,
            enabled: false,
            started: false,
            polled: false,
            unpublished: 0,
        }
    }

    /// Frames may move through it.
    pub fn usable(&self) -> bool {
        self.started && self.enabled && self.queue.ready()
    }

    /// Back to the state before any message: stopped, no eventfds, entries forgotten.
    pub fn reset(&mut self) {
        self.queue.reset();
        self.kick = None;
        self.call = None;
        self.enabled = false;
        self.started = false;
        self.unpublished = 0;
    }

    /// Reads the kick eventfd's count (non-blocking: the frontend makes it so, and a count of
    /// zero just fails with `EAGAIN`).
    pub fn drain_kick(&self) {
        if let Some(kick) = &self.kick {
            let mut count = [0u8; 8];
            let _ = (&*kick).read(&mut count);
        }
    }

    /// Writes the kick eventfd: the worker will look at the ring once.
    pub fn self_kick(&self) {
        if let Some(kick) = &self.kick {
            let _ = (&*kick).write(&1u64.to_ne_bytes());
        }
    }

    /// Signals the call eventfd (an interrupt for the guest).
    pub fn signal(&self) {
        if let Some(call) = &self.call {
            let _ = (&*call).write(&1u64.to_ne_bytes());
        }
    }

    /// Writes a used entry (`head` of a chain, `len` bytes written into it) after the ones
    /// not yet published.
    pub fn push_used(&mut self, mem: &Memory, head: u16, len: u32) {
        let size = self.queue.size().max(1);
        let slot = (Wrapping(self.queue.next_used()) + Wrapping(self.unpublished)).0 % size;
        let elem = u64::from(head) | (u64::from(len) << 32);
        // Ring addresses are the frontend's: wrap rather than overflow (an address outside
        // guest memory fails the access).
        let at = GuestAddress(self.queue.used_ring().wrapping_add(4 + 8 * u64::from(slot)));
        // One region lookup, no walk over regions (regions are page-aligned, so an entry is in
        // one; the walk is only for a table that would split one).
        match mem.get_slice(at, 8) {
            Ok(entry) => entry.copy_from(&elem.to_le_bytes()),
            Err(_) => {
                let _ = mem.write_obj(elem.to_le(), at);
            }
        }
        self.unpublished += 1;
    }

    /// Used entries written and not yet published.
    pub fn unpublished(&self) -> u16 {
        self.unpublished
    }

    /// Forgets the last `n` entries written and not published (a frame that did not fit).
    pub fn unpush_used(&mut self, n: u16) {
        self.unpublished -= n.min(self.unpublished);
    }

    /// Publishes the written entries (one store of the used index) and signals the guest if
    /// it asked to be: with `EVENT_IDX` when the new index passes its `used_event`, else when
    /// `VRING_AVAIL_F_NO_INTERRUPT` is clear. Returns whether it signalled.
    pub fn publish(&mut self, mem: &Memory) -> bool {
        if self.unpublished == 0 {
            return false;
        }
        let old = Wrapping(self.queue.next_used());
        let new = old + Wrapping(self.unpublished);
        self.unpublished = 0;
        let used = self.queue.used_ring();
        let _ = mem.store(
            new.0.to_le(),
            GuestAddress(used.wrapping_add(2)),
            Ordering::Release,
        );
        self.queue.set_next_used(new.0);
        // The used index must be visible before the driver's suppression state is read.
        fence(Ordering::SeqCst);
        let avail = self.queue.avail_ring();
        let notify = if self.queue.event_idx_enabled() {
            let at = avail.wrapping_add(4 + 2 * u64::from(self.queue.size()));
            let event = mem
                .load::<u16>(GuestAddress(at), Ordering::Acquire)
                .map_or(Wrapping(old.0), |e| Wrapping(u16::from_le(e)));
            // vring_need_event(event, new, old)
            new - event - Wrapping(1) < new - old
        } else {
            let flags = mem
                .load::<u16>(GuestAddress(avail), Ordering::Acquire)
                .map_or(0, u16::from_le);
            flags & AVAIL_F_NO_INTERRUPT == 0
        };
        if notify {
            self.signal();
        }
        notify
    }
}
