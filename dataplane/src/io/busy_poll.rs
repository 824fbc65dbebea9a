//! Adaptive polling: after traffic, a worker keeps polling its ports for a short while before
//! it sleeps, so the next frame finds it running instead of waking it.
//!
//! A worker that sleeps in `epoll_wait` as soon as its ports run dry must be woken for the next
//! frame: the kernel's wake-up, an inter-processor interrupt and, when the CPU had gone idle,
//! the time it takes to come back (in a virtual machine, a halted vCPU is rescheduled by the
//! host). Each hop of a request and its answer through the switch pays that, so a round trip
//! over the overlay (four workers' hops) pays it four times. Polling on for a moment after the
//! last frame catches an answer, or the next frame of a burst, without it.
//!
//! It is bounded two ways, so no core spins when there is no traffic:
//!
//! - `window`: the worker polls on only this long after its last frame, then sleeps as
//!   before;
//! - `budget_percent`: over each [`PERIOD`], polling that finds nothing may take at most this
//!   share of a CPU; past it, the worker sleeps at once until the next period.
//!
//! A window of zero turns it off: the worker sleeps whenever its ports run dry.

use std::time::{Duration, Instant};

/// The period the budget is counted over.
pub const PERIOD: Duration = Duration::from_millis(100);

/// Longest window a switch accepts.
pub const WINDOW_MAX: Duration = Duration::from_millis(10);

/// How a worker polls on after traffic (`[switch] busy_poll_us`, `busy_poll_budget_percent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusyPoll {
    /// How long to poll on after the last frame (zero: not at all).
    pub window: Duration,
    /// Share of a CPU (0-100) that polling which finds nothing may take, over each [`PERIOD`].
    pub budget_percent: u8,
}

impl BusyPoll {
    /// Off (the default): the worker sleeps whenever its ports run dry.
    pub const OFF: BusyPoll = BusyPoll {
        window: Duration::ZERO,
        budget_percent: 0,
    };

    /// Whether the worker polls on at all.
    pub fn is_on(&self) -> bool {
        !self.window.is_zero()
    }

    fn budget(&self) -> Duration {
        PERIOD * u32::from(self.budget_percent.min(100)) / 100
    }
}

/// One worker's state: when it last had work and what it has spent in this period.
#[derive(Debug)]
pub struct Spinner {
    last_work: Option<Instant>,
    period_start: Instant,
    spent: Duration,
}

impl Spinner {
    pub fn new(now: Instant) -> Spinner {
        Spinner {
            last_work: None,
            period_start: now,
            spent: Duration::ZERO,
        }
    }

    /// Whether the worker, with nothing ready, polls again instead of sleeping.
    pub fn should_poll(&mut self, settings: &BusyPoll, now: Instant) -> bool {
        if !settings.is_on() {
            return false;
        }
        let Some(last) = self.last_work else {
            return false;
        };
        if now.saturating_duration_since(last) >= settings.window {
            return false;
        }
        if now.saturating_duration_since(self.period_start) >= PERIOD {
            self.period_start = now;
            self.spent = Duration::ZERO;
        }
        self.spent < settings.budget()
    }

    /// The worker found frames (or packets) to read.
    pub fn worked(&mut self, now: Instant) {
        self.last_work = Some(now);
    }

    /// A poll that found nothing took `spent`.
    pub fn idle_poll(&mut self, spent: Duration) {
        self.spent += spent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(window_us: u64, budget_percent: u8) -> BusyPoll {
        BusyPoll {
            window: Duration::from_micros(window_us),
            budget_percent,
        }
    }

    #[test]
    fn off_never_polls() {
        let t = Instant::now();
        let mut s = Spinner::new(t);
        s.worked(t);
        assert!(!s.should_poll(&BusyPoll::OFF, t));
    }

    #[test]
    fn polls_only_within_the_window_after_work() {
        let t = Instant::now();
        let mut s = Spinner::new(t);
        let b = on(50, 100);
        assert!(!s.should_poll(&b, t), "no work yet");
        s.worked(t);
        assert!(s.should_poll(&b, t + Duration::from_micros(49)));
        assert!(!s.should_poll(&b, t + Duration::from_micros(50)));
        s.worked(t + Duration::from_micros(60));
        assert!(s.should_poll(&b, t + Duration::from_micros(100)));
    }

    #[test]
    fn the_budget_stops_polling_until_the_next_period() {
        let t = Instant::now();
        let mut s = Spinner::new(t);
        let b = on(10_000, 10); // 10 ms of each 100 ms
        s.worked(t);
        assert!(s.should_poll(&b, t));
        s.idle_poll(Duration::from_millis(10));
        s.worked(t + Duration::from_millis(5));
        assert!(
            !s.should_poll(&b, t + Duration::from_millis(6)),
            "budget spent"
        );
        // A new period: the budget is back.
        s.worked(t + PERIOD);
        assert!(s.should_poll(&b, t + PERIOD + Duration::from_micros(1)));
    }

    #[test]
    fn a_zero_budget_never_polls() {
        let t = Instant::now();
        let mut s = Spinner::new(t);
        s.worked(t);
        assert!(!s.should_poll(&on(100, 0), t));
    }
}
