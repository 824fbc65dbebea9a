//! Storm control, part of the L2 stage: a per-port limit on the frames the port floods
//! (broadcast, multicast, unknown unicast), each kind with a rate in frames per second and a
//! burst. The excess is dropped and counted (`storm`); known unicast is never limited.
//!
//! Each limit is a GCRA (generic cell rate algorithm, a token bucket kept as one "theoretical
//! arrival time"): a frame at `now` passes when the time the bucket would be empty is at most
//! a burst's worth of intervals ahead of `now`, and moves it one interval on. One atomic word
//! per limit, shared by every worker, so the limit holds for the port however its frames are
//! spread over the workers.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::tables::Timestamp;

/// One limit: `rate` frames per second, `burst` frames at once.
#[derive(Debug)]
pub struct Limiter {
    /// When the bucket would be empty, in microseconds of the switch's clock.
    tat_us: AtomicU64,
    interval_us: u64,
    tolerance_us: u64,
    pub rate: u32,
    pub burst: u32,
}

impl Limiter {
    pub fn new(rate: u32, burst: u32) -> Limiter {
        let interval_us = 1_000_000 / u64::from(rate.max(1));
        Limiter {
            tat_us: AtomicU64::new(0),
            interval_us: interval_us.max(1),
            tolerance_us: interval_us.max(1) * u64::from(burst.max(1) - 1),
            rate,
            burst,
        }
    }

    /// Whether one more frame at `now` is within the limit (and if so, counts it).
    pub fn allow(&self, now: Timestamp) -> bool {
        let now_us = now.millis() * 1000;
        let mut tat = self.tat_us.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_us);
            if start - now_us > self.tolerance_us {
                return false;
            }
            match self.tat_us.compare_exchange_weak(
                tat,
                start + self.interval_us,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

/// A port's storm control: a limit for each kind of flooded frame it has one for.
#[derive(Debug, Default)]
pub struct StormControl {
    pub broadcast: Option<Limiter>,
    pub multicast: Option<Limiter>,
    pub unknown_unicast: Option<Limiter>,
}

/// What a flooded frame is, for storm control and traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Broadcast,
    Multicast,
    UnknownUnicast,
}

impl Flood {
    pub fn as_str(self) -> &'static str {
        match self {
            Flood::Broadcast => "broadcast",
            Flood::Multicast => "multicast",
            Flood::UnknownUnicast => "unknown_unicast",
        }
    }
}

impl StormControl {
    /// Whether a flooded frame of `kind` at `now` is within the port's limit for it.
    pub fn allow(&self, kind: Flood, now: Timestamp) -> bool {
        let limiter = match kind {
            Flood::Broadcast => &self.broadcast,
            Flood::Multicast => &self.multicast,
            Flood::UnknownUnicast => &self.unknown_unicast,
        };
        limiter.as_ref().is_none_or(|l| l.allow(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::new(1000, 10);
        let t0 = Timestamp::from_secs(5);
        // A burst of 10 at once, then nothing more in the same millisecond.
        assert_eq!((0..50).filter(|_| l.allow(t0)).count(), 10);
        // Over the next second, at 20 frames per millisecond offered: 1000 pass, give or
        // take the burst.
        let passed: usize = (1..=1000)
            .map(|ms| {
                let now = Timestamp::from_millis(t0.millis() + ms);
                (0..20).filter(|_| l.allow(now)).count()
            })
            .sum();
        assert!((1000..=1010).contains(&passed), "{passed}");
        // Idle for a while: the burst is back, not more.
        let later = Timestamp::from_secs(10);
        assert_eq!((0..50).filter(|_| l.allow(later)).count(), 10);
    }

    #[test]
    fn each_kind_has_its_own_limit_and_none_is_no_limit() {
        let s = StormControl {
            broadcast: Some(Limiter::new(10, 1)),
            multicast: None,
            unknown_unicast: Some(Limiter::new(10, 2)),
        };
        let now = Timestamp::from_secs(1);
        assert_eq!((0..5).filter(|_| s.allow(Flood::Broadcast, now)).count(), 1);
        assert_eq!(
            (0..5)
                .filter(|_| s.allow(Flood::UnknownUnicast, now))
                .count(),
            2
        );
        assert_eq!((0..5).filter(|_| s.allow(Flood::Multicast, now)).count(), 5);
    }

    #[test]
    fn workers_share_the_limit() {
        let l = std::sync::Arc::new(Limiter::new(1000, 100));
        let now = Timestamp::from_secs(1);
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let l = &l;
                    s.spawn(move || (0..1000).filter(|_| l.allow(now)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(passed, 100);
    }
}
