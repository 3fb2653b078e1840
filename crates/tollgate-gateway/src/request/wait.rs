//! Waiting before going upstream: for the admission's slot, and out of a
//! pause an upstream asked for (see [`crate::pause`]) when the tier may
//! wait that long.

use std::time::{Duration, Instant};

use tollgate::Store;

use super::settle::Admission;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::pause::Paused;
use crate::registry::Client;

/// Waits for the admission's slot, counted in `tollgate_queue_depth`
/// meanwhile: each bucket's reservation waits through its limiter, so it
/// moves earlier when calls ahead settle below their estimates or are
/// cancelled, and the request goes when both may. `admission.wait` then
/// says how long it waited. Dropping this future (the client left) drops
/// nothing by itself; dropping the `Admission` cancels the reservations.
pub(crate) async fn for_slot(metrics: &Metrics, admission: &mut Admission) {
    if admission.wait > Duration::ZERO {
        let class = admission.client().tier.config.priority.to_string();
        let model = admission.model().clone();
        let _queued = Queued::enter(metrics, &model.name, &class);
        let waited = Instant::now();
        let waits = admission
            .reservations_mut()
            .map(|(limiter, permit)| limiter.wait_for_slot(permit));
        futures_util::future::join_all(waits).await;
        admission.wait = waited.elapsed();
    }
    metrics.observe(
        "tollgate_queue_wait_seconds",
        &[("tier", &admission.client().tier.name)],
        admission.started.elapsed().as_secs_f64(),
    );
}

/// Waits while `model` is paused (`paused`, then as the store says), if the
/// client's tier may wait that long since `started`; else the pause that
/// is too long.
pub(crate) async fn out_pause(
    store: &Store,
    store_timeout: Duration,
    client: &Client,
    model: &Model,
    started: Instant,
    mut paused: Option<Paused>,
) -> Result<(), Paused> {
    while let Some(p) = paused {
        let may_wait = client.tier.max_wait.saturating_sub(started.elapsed());
        if p.left > may_wait {
            return Err(p);
        }
        tokio::time::sleep(p.left).await;
        paused = model.hold.check(store, store_timeout).await;
    }
    Ok(())
}

/// A request counted in `tollgate_queue_depth` while it waits for its
/// slot (also when its wait is abandoned: the count goes down on drop).
struct Queued<'a> {
    metrics: &'a Metrics,
    labels: [(&'static str, String); 2],
}

impl<'a> Queued<'a> {
    fn enter(metrics: &'a Metrics, model: &str, class: &str) -> Self {
        let q = Queued {
            metrics,
            labels: [("model", model.to_string()), ("class", class.to_string())],
        };
        q.add(1.0);
        q
    }

    fn add(&self, v: f64) {
        let [(a, x), (b, y)] = &self.labels;
        self.metrics
            .gauge_add(crate::metrics::names::QUEUE_DEPTH, &[(a, x), (b, y)], v);
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.add(-1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::admit::admit;
    use crate::request::fixture::{model, tier, Fixture};
    use crate::request::settle::Usage;

    /// A provider model of 4,800 TPM (80 tokens a second) and a tier that
    /// waits up to 30 s.
    async fn fixture() -> Fixture {
        Fixture::new(
            &[("m", model(10_000, 4_800))],
            &[("pro", tier(10_000, 10_000_000, 30_000))],
        )
        .await
    }

    #[tokio::test]
    async fn a_queued_request_moves_up_when_the_call_ahead_settles_below_its_estimate() {
        let f = fixture().await;
        let (client, m) = (f.client("pro"), f.model("m"));
        let first = admit(&f.books, &client, &m, Usage::new(10, 3_000))
            .await
            .unwrap();
        let mut second = admit(&f.books, &client, &m, Usage::new(10, 3_000))
            .await
            .unwrap();
        assert!(second.wait > Duration::from_secs(10), "{:?}", second.wait);
        first.settle(Usage::new(10, 16)).await;
        let t = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(2),
            for_slot(&f.books.metrics, &mut second),
        )
        .await
        .expect("moved up");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(second.wait < Duration::from_secs(1), "{:?}", second.wait);
    }
}
