//! A store clock for tests on paused tokio time.

use tollgate::store::Clock;

/// The store's clock: tokio's, which a paused runtime moves by itself (so
/// virtual seconds pass in microseconds), from 1000 s at `.0`.
#[derive(Debug)]
pub struct TokioClock(pub tokio::time::Instant);

impl Clock for TokioClock {
    fn now(&self) -> f64 {
        1000.0 + self.0.elapsed().as_secs_f64()
    }
}
