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
/// meanwhile. Dropping this future (the client left) drops nothing by
/// itself; dropping the `Admission` cancels the reservations.
pub(crate) async fn for_slot(metrics: &Metrics, admission: &Admission) {
    if admission.wait > Duration::ZERO {
        let class = admission.client().tier.config.priority.to_string();
        let _queued = Queued::enter(metrics, &admission.model().name, &class);
        tokio::time::sleep(admission.wait).await;
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
