//! Connection tracking and NAT (placeholder while being written).

/// What the schedulers of Services remember between connections.
#[derive(Default)]
pub struct Balancer {}
