//! What the criterion benches share.

/// A deterministic shuffle of `0..n` (xorshift64* driving Fisher-Yates), so runs are
/// comparable.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

use std::hint::black_box;

use tapswitch_dataplane::pipeline::offload::Offload;
use tapswitch_dataplane::pipeline::{Output, Sent, Transmit};
use tapswitch_dataplane::tables::PortId;

/// The pipeline's output in a bench: every transmit is looked at (`black_box`) and counted as
/// sent, in place of the worker's `writev` and `sendmmsg`. Every port takes offloads.
#[derive(Debug, Default)]
pub struct Discard {
    /// Transmits handed over.
    pub sent: usize,
}

impl Output for Discard {
    fn takes_offloads(&self, _port: PortId, _offload: &Offload) -> bool {
        true
    }

    #[inline(always)]
    fn send(&mut self, transmit: Transmit<'_>) -> Sent {
        black_box(&transmit);
        self.sent += 1;
        Sent::one(transmit.len())
    }
}
