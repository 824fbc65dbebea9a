//! Per-port rate limits in bytes per second, like tc's `police` and `tbf`:
//!
//! - **Policing** (what a port's workload sends, at ingress): a frame over the rate is
//!   dropped (`rate_limited`).
//! - **Shaping** (what a port's workload receives, at egress): a frame over the rate waits in
//!   a queue until the rate lets it go; a frame that would make the queue longer than its
//!   limit (the rate times a latency) is dropped (`rate_limited`).
//!
//! Both are a token bucket of `burst` bytes filled at `rate`, kept as one GCRA word (the
//! "theoretical arrival time" in nanoseconds at which the bucket would be full again), shared
//! by every worker, so the limit holds for the port however its frames are spread over
//! them. A frame costs its bytes on the wire: a TCP or UDP super-frame the bytes of the
//! segments it stands for, headers included. A frame larger than the burst passes only
//! when the bucket is full. Shaping queues are per worker (each worker's frames keep their
//! order); the shared word makes their releases add up to the rate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tables::{PortId, Timestamp};

/// One token bucket over bytes.
#[derive(Debug)]
pub struct ByteBucket {
    /// When the bucket is full again, in nanoseconds of the switch's clock.
    tat_ns: AtomicU64,
    /// Bytes per second.
    pub rate: u64,
    /// Bytes.
    pub burst: u64,
    burst_ns: u64,
}

/// What a bucket says of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conform {
    /// Within the rate: it may go now.
    Now,
    /// Over it: it may go at this time (ns); its bytes are counted already.
    At(u64),
    /// Over it, and not to wait (a policer, or a full queue): not counted.
    No,
}

fn ns_of(now: Timestamp) -> u64 {
    now.millis().saturating_mul(1_000_000)
}

impl ByteBucket {
    /// `rate` bytes per second (at least 1), `burst` bytes (at least 1).
    pub fn new(rate: u64, burst: u64) -> ByteBucket {
        let rate = rate.max(1);
        let burst = burst.max(1);
        ByteBucket {
            tat_ns: AtomicU64::new(0),
            rate,
            burst,
            burst_ns: cost_ns(burst, rate),
        }
    }

    /// Whether `bytes` at `now` are within the rate; counts them when they are. With
    /// `wait_up_to` (ns), a frame over the rate that may go within that long is counted too,
    /// and the time it may go is returned.
    pub fn take(&self, bytes: u64, now: Timestamp, wait_up_to: Option<u64>) -> Conform {
        let now = ns_of(now);
        let cost = cost_ns(bytes, self.rate);
        // A frame larger than the burst fits an empty (full) bucket.
        let room = self.burst_ns.max(cost);
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            let debt = start - now + cost;
            let verdict = if debt <= room {
                Conform::Now
            } else {
                match wait_up_to {
                    Some(w) if debt - room <= w => Conform::At(now + (debt - room)),
                    _ => return Conform::No,
                }
            };
            match self.tat_ns.compare_exchange_weak(
                tat,
                start + cost,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return verdict,
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Nanoseconds `bytes` take at `rate` bytes per second.
fn cost_ns(bytes: u64, rate: u64) -> u64 {
    (u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1))).min(u128::from(u64::MAX)) as u64
}

/// A port's shaper: its bucket, and how long a frame may wait.
#[derive(Debug)]
pub struct Shaper {
    pub bucket: ByteBucket,
    /// Longest wait in the queue, in nanoseconds (the queue holds about `rate * latency`).
    pub latency_ns: u64,
}

/// A port's rate limits.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// What the port's workload sends.
    pub police: Option<ByteBucket>,
    /// What it receives.
    pub shape: Option<Shaper>,
}

/// A frame waiting in a shaping queue: its bytes as sent and its virtio-net header.
#[derive(Debug)]
pub struct Waiting {
    pub port: PortId,
    pub at_ns: u64,
    pub bytes: Vec<u8>,
    pub vnet: Option<[u8; super::offload::VNET_HDR_LEN]>,
}

/// One worker's shaping queues, by port, and the buffers they reuse.
#[derive(Debug, Default)]
pub struct Queues {
    by_port: Vec<VecDeque<Waiting>>,
    /// Ports whose queue is not empty.
    busy: Vec<PortId>,
    pool: Vec<Vec<u8>>,
}

impl Queues {
    pub fn is_empty(&self) -> bool {
        self.busy.is_empty()
    }

    /// Whether frames for `port` wait.
    pub fn waits(&self, port: PortId) -> bool {
        self.by_port
            .get(port.index())
            .is_some_and(|q| !q.is_empty())
    }

    /// A buffer to copy a waiting frame into.
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// Queues a frame.
    pub fn push(&mut self, w: Waiting) {
        let i = w.port.index();
        if self.by_port.len() <= i {
            self.by_port.resize_with(i + 1, VecDeque::new);
        }
        if self.by_port[i].is_empty() {
            self.busy.push(w.port);
        }
        self.by_port[i].push_back(w);
    }

    /// The earliest time a waiting frame may go (ns), if any waits.
    pub fn next_ns(&self) -> Option<u64> {
        self.busy
            .iter()
            .filter_map(|p| self.by_port[p.index()].front().map(|w| w.at_ns))
            .min()
    }

    /// Takes the frames that may go at `now`, in order per port, handing each to `send`.
    pub fn release(&mut self, now: Timestamp, mut send: impl FnMut(&Waiting)) {
        let now = ns_of(now);
        let mut i = 0;
        while i < self.busy.len() {
            let q = &mut self.by_port[self.busy[i].index()];
            while q.front().is_some_and(|w| w.at_ns <= now) {
                let w = q.pop_front().expect("a front");
                send(&w);
                self.pool.push(w.bytes);
            }
            if q.is_empty() {
                self.busy.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Forgets what waits for `port` (a port that is gone).
    pub fn drop_port(&mut self, port: PortId) {
        if let Some(q) = self.by_port.get_mut(port.index()) {
            q.clear();
        }
        self.busy.retain(|p| *p != port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policer_passes_the_burst_then_the_rate() {
        // 1 MB/s, 10 kB burst.
        let b = ByteBucket::new(1_000_000, 10_000);
        let t0 = Timestamp::from_secs(1);
        let passed = (0..20)
            .filter(|_| b.take(1000, t0, None) == Conform::Now)
            .count();
        assert_eq!(passed, 10);
        // Over the next second, offered 4 MB: about 1 MB passes.
        let mut bytes = 0;
        for ms in 1..=1000 {
            let now = Timestamp::from_millis(t0.millis() + ms);
            for _ in 0..4 {
                if b.take(1000, now, None) == Conform::Now {
                    bytes += 1000;
                }
            }
        }
        assert!((1_000_000..=1_010_000).contains(&bytes), "{bytes}");
        // A frame larger than the burst passes once the bucket is full again.
        let later = Timestamp::from_secs(5);
        assert_eq!(b.take(64_000, later, None), Conform::Now);
        assert_eq!(b.take(64_000, later, None), Conform::No);
    }

    #[test]
    fn a_shaper_delays_what_is_over_the_rate_and_its_releases_keep_the_rate() {
        let b = ByteBucket::new(1_000_000, 2_000);
        let t0 = Timestamp::from_secs(1);
        let wait = Some(50_000_000); // 50 ms
        assert_eq!(b.take(1000, t0, wait), Conform::Now);
        assert_eq!(b.take(1000, t0, wait), Conform::Now);
        // The third may go 1 ms later, the fourth 2 ms later.
        let ns = 1_000_000_000;
        assert_eq!(b.take(1000, t0, wait), Conform::At(ns + 1_000_000));
        assert_eq!(b.take(1000, t0, wait), Conform::At(ns + 2_000_000));
        // Beyond 50 ms of waiting: not queued, not counted.
        for _ in 0..48 {
            assert!(matches!(b.take(1000, t0, wait), Conform::At(_)));
        }
        assert_eq!(b.take(1000, t0, wait), Conform::No);
        let mut q = Queues::default();
        for (i, at) in [5u64, 1, 3].into_iter().enumerate() {
            q.push(Waiting {
                port: PortId(i as u16 % 2),
                at_ns: at * 1_000_000,
                bytes: vec![i as u8],
                vnet: None,
            });
        }
        assert_eq!(q.next_ns(), Some(1_000_000));
        let mut sent = Vec::new();
        q.release(Timestamp::from_millis(4), |w| sent.push(w.bytes[0]));
        // Port 0 waits behind its first frame (5 ms); port 1's goes.
        assert_eq!(sent, vec![1]);
        q.release(Timestamp::from_millis(5), |w| sent.push(w.bytes[0]));
        assert_eq!(sent, vec![1, 0, 2]);
        assert!(q.is_empty());
    }
}
