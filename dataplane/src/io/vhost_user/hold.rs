//! The rings a worker holds through one batch of frames.
//!
//! Each vring is in a `Mutex` (see [`vring`](super::vring)). Taking and letting go of it costs
//! two atomic read-modify-writes, each a full barrier on x86 that waits for the worker's stores
//! into guest memory to drain; taken per frame, that was about a sixth of a worker's time at
//! 64 bytes. So a worker takes a ring at the first frame of a batch that needs it, with a
//! snapshot of the guest memory table, and keeps both until the batch ends: the ring it reads
//! (the guest's TX ring of its queue pair) and up to [`RX_RINGS`] rings it writes into (guest
//! RX rings). Letting go of a ring publishes what the batch wrote into it (one store of the
//! used index, and the guest signalled if it asked to be).
//!
//! Waiting while holding could deadlock: two workers each holding the RX ring the other
//! wants. So a ring is taken without waiting when it is free; when someone else holds it (the
//! protocol thread inside a message, another worker writing into the same guest's ring), the
//! worker first lets go of everything it holds, then waits. A thread that waits holds nothing,
//! so no cycle of waiting threads can form. The protocol thread takes one ring at a time and
//! waits at most one batch (32 frames read) for a worker to let go.

use std::sync::{MutexGuard, PoisonError, TryLockError};

use vm_memory::{GuestAddressSpace, GuestMemoryLoadGuard};

use super::vring::Vring;
use super::{Device, Memory};

/// Guest RX rings one batch holds at once; a batch that writes into more lets go of all of
/// them (publishing each) and starts again.
const RX_RINGS: usize = 4;

/// One ring held: its lock and the guest memory its buffers are in.
pub(crate) struct HeldRing<'a> {
    device: &'a Device,
    index: usize,
    pub(super) vring: MutexGuard<'a, Vring>,
    pub(super) mem: GuestMemoryLoadGuard<Memory>,
}

impl HeldRing<'_> {
    fn is(&self, device: &Device, index: usize) -> bool {
        std::ptr::eq(self.device, device) && self.index == index
    }
}

impl Drop for HeldRing<'_> {
    fn drop(&mut self) {
        // What the batch wrote (RX) or took (TX) is the guest's from here on.
        if self.vring.unpublished() > 0 && self.vring.usable() {
            self.vring.publish(&self.mem);
        }
    }
}

/// What one worker holds of the vhost-user ports through a batch. Dropping it, or
/// [`release`](Held::release), lets go of everything and publishes what was written.
#[derive(Default)]
pub struct Held<'a> {
    /// The guest TX ring being read.
    tx: Option<HeldRing<'a>>,
    /// Guest RX rings written into.
    rx: [Option<HeldRing<'a>>; RX_RINGS],
}

impl<'a> Held<'a> {
    /// Lets go of every ring held, publishing what was written into each.
    pub fn release(&mut self) {
        self.tx = None;
        self.rx = Default::default();
    }

    /// Locks ring `index` of `device`: at once if it is free, else after letting go of
    /// everything held here.
    fn lock(&mut self, device: &'a Device, index: usize) -> HeldRing<'a> {
        let vring = match device.vrings[index].try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.release();
                device.vrings[index]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            }
        };
        HeldRing {
            device,
            index,
            vring,
            mem: device.mem.memory(),
        }
    }

    /// The guest TX ring `index` of `device`, held until the batch ends.
    pub(super) fn tx(&mut self, device: &'a Device, index: usize) -> &mut HeldRing<'a> {
        if !self.tx.as_ref().is_some_and(|h| h.is(device, index)) {
            self.tx = None;
            let ring = self.lock(device, index);
            self.tx = Some(ring);
        }
        self.tx.as_mut().expect("just taken")
    }

    /// Takes the guest RX ring `index` of `device` if it is not held yet, and returns where it
    /// is in [`rx_ring`](Self::rx_ring). A slot stays valid until the next call.
    pub(super) fn rx(&mut self, device: &'a Device, index: usize) -> usize {
        if let Some(slot) = self
            .rx
            .iter()
            .position(|h| h.as_ref().is_some_and(|h| h.is(device, index)))
        {
            return slot;
        }
        let ring = self.lock(device, index);
        let slot = match self.rx.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.rx = Default::default();
                0
            }
        };
        self.rx[slot] = Some(ring);
        slot
    }

    /// The RX ring at `slot` (from [`rx`](Self::rx)).
    pub(super) fn rx_ring(&mut self, slot: usize) -> &mut HeldRing<'a> {
        self.rx[slot].as_mut().expect("a slot rx() returned")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::super::{Mode, VhostUserPort, VhostUserSpec};
    use super::*;

    /// A port with `pairs` queue pairs and no frontend, its socket in a directory of its own
    /// (removed on drop).
    struct TestPort {
        port: Option<VhostUserPort>,
        dir: PathBuf,
    }

    impl TestPort {
        fn new(name: &str, pairs: usize) -> TestPort {
            let dir = std::env::temp_dir().join(format!("tsvuhold-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let spec = VhostUserSpec {
                name: name.to_string(),
                socket: dir.join("s.sock"),
                mode: Mode::Server,
                pairs,
            };
            let (port, _queues) = VhostUserPort::create(&spec).unwrap();
            TestPort {
                port: Some(port),
                dir,
            }
        }

        fn device(&self) -> &Device {
            self.port.as_ref().unwrap().device()
        }
    }

    impl Drop for TestPort {
        fn drop(&mut self) {
            self.port = None;
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn held_rx(held: &Held<'_>) -> Vec<usize> {
        held.rx.iter().flatten().map(|h| h.index).collect()
    }

    #[test]
    fn a_worker_that_must_wait_lets_go_of_its_rings_first() {
        let port = TestPort::new("wait", 2);
        let device = port.device();
        let (ready, wait_ready) = mpsc::channel();
        std::thread::scope(|s| {
            let mut a = Held::default();
            a.rx(device, 0);
            let b = s.spawn(move || {
                let mut b = Held::default();
                b.rx(device, 2);
                ready.send(()).unwrap();
                // Ring 0 is A's: B lets go of ring 2 before it waits.
                b.rx(device, 0);
                held_rx(&b)
            });
            wait_ready.recv().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while device.vrings[2].try_lock().is_err() {
                assert!(
                    Instant::now() < deadline,
                    "B kept ring 2 while it waited for ring 0"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            // A takes ring 2 while it holds ring 0, without waiting; B waits for both.
            a.rx(device, 2);
            assert_eq!(held_rx(&a), vec![0, 2]);
            a.release();
            assert_eq!(b.join().unwrap(), vec![0]);
        });
    }

    #[test]
    fn a_batch_holds_its_read_ring_and_a_few_written_ones_then_starts_again() {
        let port = TestPort::new("many", 6);
        let device = port.device();
        let mut held = Held::default();
        held.tx(device, 1);
        for index in [0, 2, 4, 6] {
            let slot = held.rx(device, index);
            assert_eq!(held.rx_ring(slot).index, index);
        }
        // Held already: the same slot, nothing taken again.
        assert_eq!(held.rx(device, 4), 2);
        assert_eq!(held_rx(&held), vec![0, 2, 4, 6]);
        // A fifth lets go of the four.
        let slot = held.rx(device, 8);
        assert_eq!(held_rx(&held), vec![8]);
        assert_eq!(held.rx_ring(slot).index, 8);
        assert!(device.vrings[0].try_lock().is_ok());
        assert!(held.tx.as_ref().is_some_and(|h| h.index == 1));
        // Another TX ring replaces the one held.
        held.tx(device, 3);
        assert!(device.vrings[1].try_lock().is_ok());
        assert!(device.vrings[3].try_lock().is_err());
        held.release();
        assert!(device.vrings[3].try_lock().is_ok());
        assert!(device.vrings[8].try_lock().is_ok());
    }
}
