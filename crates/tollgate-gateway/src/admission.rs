//! Admission: the client's tier bucket and its budget (asked together), and
//! the provider bucket of the model in the tier's priority class (asked with
//! them while the client has plenty of room, else after them). Each step is a
//! reservation; a refusal undoes the others before the answer goes out.
//!
//! The result, [`Admission`], is a guard: it is settled with the actual usage
//! when the upstream answers. If it is dropped instead (the client went away
//! while waiting or while a stream was running), it settles in the background
//! with what was used so far and releases the rest, so an abandoned request
//! never keeps capacity or budget it did not use.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::{
    AcquireOptions, Cost, Dimension, DimensionStatus, Error as LimitError, OutagePolicy, Permit,
    RateLimiter, Status,
};

use crate::budget::{nano_to_usd, BudgetError, Hold};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::ledger::UsageRecord;
use crate::registry::Client;
use crate::routing::Model;

/// The share of the client bucket's capacity (every dimension) that must
/// have been left by the client's last admission for the next one to ask the
/// provider bucket at the same time as the client bucket.
const ROOMY: f64 = 0.25;

/// Which bucket refused, for error codes and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// The client's tier bucket.
    Client,
    /// The provider bucket of the model.
    Model,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Bucket::Client => "client",
            Bucket::Model => "model",
        }
    }
}

/// A request that was let in: its reservations, to settle when it ends.
pub struct Admission {
    /// The reservations not settled yet; emptied by [`Admission::take`].
    parts: Parts,
    /// The client bucket's state right after this request's grant (for the
    /// rate-limit headers); `None` when the outage policy decided.
    pub client_status: Option<Vec<DimensionStatus>>,
    /// Estimated (input, output) tokens.
    pub estimate: (u64, u64),
    /// How long the request must wait for its slot.
    pub wait: Duration,
    /// Whether the request went upstream (then dropping settles what was used
    /// instead of cancelling everything).
    pub forwarded: bool,
    /// (input, output) tokens known to be used so far (streams update this).
    pub used: (u64, u64),
    started: Instant,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("client", &self.parts.client.id)
            .field("model", &self.parts.model.name)
            .field("estimate", &self.estimate)
            .field("wait", &self.wait)
            .finish()
    }
}

impl Admission {
    /// Reserves the client bucket, the budget and the provider bucket for a
    /// request of `input` + `output` estimated tokens.
    pub async fn admit(
        gw: &Arc<Gateway>,
        client: &Arc<Client>,
        model: &Arc<Model>,
        input: u64,
        output: u64,
    ) -> Result<Admission, ApiError> {
        let mut adm = Admission {
            parts: Parts::new(gw.clone(), client.clone(), model.clone()),
            client_status: None,
            estimate: (input, output),
            wait: Duration::ZERO,
            forwarded: false,
            used: (0, 0),
            started: Instant::now(),
        };
        let tier = &client.tier;
        let tier_label = tier.name.as_str();
        let cost = Cost::split(input, output);
        let opts = AcquireOptions {
            class: 0,
            max_wait: Some(tier.max_wait),
        };
        let model_opts = AcquireOptions {
            class: tier.config.priority,
            max_wait: Some(tier.max_wait),
        };
        // The client's bucket and its budget are independent: ask both at
        // once (one store round trip instead of two). The provider bucket is
        // asked at the same time too while the client's last admission left
        // it plenty of room (a refusal is then unlikely); otherwise only
        // after both said yes, so a client over its own limit does not churn
        // the shared provider bucket with reservations that are cancelled at
        // once. Whatever refuses, everything granted is given back before
        // the answer goes out.
        let estimate = model.price.cost_nano(input, output);
        let speculate = client.roomy.load(Ordering::Relaxed);
        let (client_res, budget_res, early_model_res) = tokio::join!(
            client.limiter.reserve(cost, &opts),
            gw.budgets.reserve(&client.id, estimate, tier.budget),
            async {
                if speculate {
                    Some(model.limiter.reserve(cost, &model_opts).await)
                } else {
                    None
                }
            }
        );
        let (early_model_res, model_refusal) = match early_model_res {
            Some(Ok(p)) => {
                adm.parts.model_permit = Some(p);
                (true, None)
            }
            Some(Err(e)) => (true, Some(e)),
            None => (false, None),
        };
        let client_refusal = match client_res {
            Ok(p) => {
                decision(gw, "client", tier_label, &p);
                adm.client_status = client.limiter.status_at_grant(&p);
                adm.parts.client_permit = Some(p);
                None
            }
            Err(e) => Some(e),
        };
        let budget_refusal = match budget_res {
            Ok(h) => {
                // Counted only when the client bucket let it in, as when
                // the two were asked one after the other.
                if client_refusal.is_none() {
                    gw.metrics.inc(
                        "tollgate_limiter_decisions_total",
                        &[
                            ("bucket", "budget"),
                            ("tier", tier_label),
                            ("decision", "granted"),
                        ],
                    );
                }
                adm.parts.hold = Some(h);
                None
            }
            Err(BudgetError::Store(msg)) if !matches!(gw.outage, OutagePolicy::Closed) => {
                // The spend store is down and the outage policy lets requests
                // through: this request's spend goes unrecorded.
                gw.metrics
                    .inc("tollgate_store_errors_total", &[("component", "budget")]);
                tracing::warn!(client = %client.id, error = %msg, policy = gw.outage.name(), "spend store unavailable; admitting without a budget check");
                None
            }
            Err(e) => {
                // Counted as refused only when the client bucket let it in,
                // as when the two were asked one after the other.
                if client_refusal.is_none() {
                    gw.metrics.inc(
                        "tollgate_limiter_decisions_total",
                        &[
                            ("bucket", "budget"),
                            ("tier", tier_label),
                            ("decision", "refused"),
                        ],
                    );
                }
                Some(e)
            }
        };
        if client_refusal.is_some() || budget_refusal.is_some() {
            client.roomy.store(false, Ordering::Relaxed);
        }
        if let Some(e) = client_refusal {
            adm.release().await;
            return Err(refused(gw, Bucket::Client, &client.limiter, cost, e, client, model).await);
        }
        if let Some(e) = budget_refusal {
            adm.release().await;
            return Err(budget_refused(gw, e));
        }
        let model_res = if early_model_res {
            match (adm.parts.model_permit.take(), model_refusal) {
                (Some(p), _) => Ok(p),
                (None, Some(e)) => Err(e),
                (None, None) => unreachable!("a speculative reservation has a result"),
            }
        } else {
            model.limiter.reserve(cost, &model_opts).await
        };
        match model_res {
            Ok(p) => {
                decision(gw, "model", tier_label, &p);
                adm.parts.model_permit = Some(p);
            }
            Err(e) => {
                // Release the client's reservation and budget first, so the
                // status behind the 429's headers no longer counts them.
                adm.release().await;
                return Err(
                    refused(gw, Bucket::Model, &model.limiter, cost, e, client, model).await,
                );
            }
        }
        client.roomy.store(
            adm.client_status
                .as_deref()
                .is_some_and(|dims| dims.iter().all(|d| d.available >= ROOMY * d.capacity)),
            Ordering::Relaxed,
        );
        adm.wait = adm
            .parts
            .client_permit
            .iter()
            .chain(adm.parts.model_permit.iter())
            .map(|p| p.waited())
            .max()
            .unwrap_or_default();
        Ok(adm)
    }

    /// Waits for the slot. Dropping this future (the client left) drops
    /// nothing by itself; dropping the `Admission` cancels the reservations.
    pub async fn wait_for_slot(&self) {
        if self.wait > Duration::ZERO {
            let class = self.parts.client.tier.config.priority.to_string();
            let _queued = Queued::enter(&self.parts.gw, &self.parts.model.name, &class);
            tokio::time::sleep(self.wait).await;
        }
        self.parts.gw.metrics.observe(
            "tollgate_queue_wait_seconds",
            &[("tier", &self.parts.client.tier.name)],
            self.started.elapsed().as_secs_f64(),
        );
    }

    /// Cancels every reservation made so far (the request never ran).
    async fn release(&mut self) {
        self.take().finish(None, self.wait).await;
    }

    /// Settles with the actual usage. With the memory store that is done
    /// before this returns (it costs microseconds and no I/O, and a client's
    /// next request then sees its refund); with Redis the settlements are
    /// store round trips, so they run in a task of their own after the
    /// answer has gone out (still exactly once).
    pub async fn settle(mut self, input: u64, output: u64) {
        let parts = self.take();
        let usage = Some((input, output));
        if parts.gw.store.is_memory() {
            parts.finish(usage, self.wait).await;
        } else {
            tokio::spawn(parts.finish(usage, self.wait));
        }
    }

    /// Moves the reservations out to be finished, leaving an empty `Parts`
    /// behind so that they are finished exactly once (`Drop` then finds
    /// nothing left to do).
    fn take(&mut self) -> Parts {
        let p = &self.parts;
        let mut empty = Parts::new(p.gw.clone(), p.client.clone(), p.model.clone());
        empty.request_id = p.request_id;
        std::mem::replace(&mut self.parts, empty)
    }

    /// The request's id, for its ledger row.
    pub fn set_request_id(&mut self, id: uuid::Uuid) {
        self.parts.request_id = id;
    }
}

/// A request counted in `tollgate_queue_depth` while it waits for its
/// slot (also when its wait is abandoned: the count goes down on drop).
struct Queued<'a> {
    gw: &'a Gateway,
    labels: [(&'static str, String); 2],
}

impl<'a> Queued<'a> {
    fn enter(gw: &'a Gateway, model: &str, class: &str) -> Self {
        let q = Queued {
            gw,
            labels: [("model", model.to_string()), ("class", class.to_string())],
        };
        q.add(1.0);
        q
    }

    fn add(&self, v: f64) {
        let [(a, x), (b, y)] = &self.labels;
        self.gw
            .metrics
            .gauge_add(crate::metrics::names::QUEUE_DEPTH, &[(a, x), (b, y)], v);
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.add(-1.0);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.parts.is_empty() {
            return;
        }
        let parts = self.take();
        let usage = self.forwarded.then_some(self.used);
        let waited = self.wait;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                parts.finish(usage, waited).await;
            });
        }
    }
}

/// What is left to settle of an admission: its reservations (each `None`
/// until granted, and again once moved out to be finished), and what
/// finishing them needs.
struct Parts {
    gw: Arc<Gateway>,
    client: Arc<Client>,
    model: Arc<Model>,
    client_permit: Option<Permit>,
    model_permit: Option<Permit>,
    hold: Option<Hold>,
    request_id: uuid::Uuid,
}

impl Parts {
    /// Nothing reserved yet.
    fn new(gw: Arc<Gateway>, client: Arc<Client>, model: Arc<Model>) -> Parts {
        Parts {
            gw,
            client,
            model,
            client_permit: None,
            model_permit: None,
            hold: None,
            request_id: uuid::Uuid::nil(),
        }
    }

    fn is_empty(&self) -> bool {
        self.client_permit.is_none() && self.model_permit.is_none() && self.hold.is_none()
    }

    /// Settles with `usage`, or with `None` cancels everything (the request
    /// never went upstream). `waited` (the request's wait for its slot) goes
    /// into the usage ledger.
    async fn finish(self, usage: Option<(u64, u64)>, waited: Duration) -> i64 {
        let gw = &self.gw;
        let settle = |limiter: RateLimiter, permit: Option<Permit>| async move {
            let Some(permit) = permit else { return };
            let result = match usage {
                Some((i, o)) => limiter.settle(permit, Cost::split(i, o)).await.map(|_| ()),
                None => limiter.cancel(permit).await.map(|_| ()),
            };
            if let Err(e) = result {
                tracing::warn!(key = %limiter.key(), error = %e, "could not settle a reservation");
            }
        };
        let (input, output) = usage.unwrap_or((0, 0));
        let cost = self.model.price.cost_nano(input, output);
        let budget = async {
            if let Some(hold) = &self.hold {
                if let Err(e) = gw.budgets.settle(hold, cost).await {
                    gw.metrics
                        .inc("tollgate_store_errors_total", &[("component", "budget")]);
                    tracing::warn!(client = %self.client.id, error = %e, "could not settle spend");
                }
            }
        };
        tokio::join!(
            settle(self.client.limiter.clone(), self.client_permit),
            settle(self.model.limiter.clone(), self.model_permit),
            budget
        );
        if usage.is_some() {
            let client = self.client.id.as_str();
            let model = self.model.name.as_str();
            gw.metrics.add(
                "tollgate_tokens_total",
                &[("client", client), ("model", model), ("direction", "input")],
                input as f64,
            );
            gw.metrics.add(
                "tollgate_tokens_total",
                &[
                    ("client", client),
                    ("model", model),
                    ("direction", "output"),
                ],
                output as f64,
            );
            gw.metrics.add(
                "tollgate_spend_usd_total",
                &[("client", client), ("model", model)],
                nano_to_usd(cost),
            );
            gw.ledger.record(&UsageRecord {
                request_id: self.request_id,
                client,
                tier: &self.client.tier.name,
                model,
                input_tokens: input,
                output_tokens: output,
                cost_usd: nano_to_usd(cost),
                waited,
            });
        }
        cost
    }
}

fn decision(gw: &Gateway, bucket: &str, tier: &str, p: &Permit) {
    let d = if p.waited() > Duration::ZERO {
        "waited"
    } else {
        "granted"
    };
    gw.metrics.inc(
        "tollgate_limiter_decisions_total",
        &[("bucket", bucket), ("tier", tier), ("decision", d)],
    );
}

/// The dimension that keeps a request of `cost` waiting longest, in the
/// bucket's `status`.
fn culprit(limiter: &RateLimiter, status: &Status, cost: Cost) -> Option<Dimension> {
    let units = limiter.policy().units(cost);
    let window = limiter.policy().limits().window_secs;
    status
        .dimensions
        .iter()
        .map(|d| {
            let rate = d.limit as f64 / window;
            let deficit = units[d.dimension.index()] - d.available;
            (deficit / rate, d.dimension)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, d)| d)
}

async fn refused(
    gw: &Gateway,
    bucket: Bucket,
    limiter: &RateLimiter,
    cost: Cost,
    e: LimitError,
    client: &Client,
    model: &Model,
) -> ApiError {
    // A store failure is not the bucket's refusal: counted apart.
    let decision = match &e {
        LimitError::RateLimited { .. } | LimitError::QueueFull { .. } | LimitError::TooLarge(_) => {
            "refused"
        }
        _ => "store_unavailable",
    };
    gw.metrics.inc(
        "tollgate_limiter_decisions_total",
        &[
            ("bucket", bucket.name()),
            ("tier", &client.tier.name),
            ("decision", decision),
        ],
    );
    let whose = match bucket {
        Bucket::Client => format!("client {:?} (tier {:?})", client.id, client.tier.name),
        Bucket::Model => format!(
            "model {:?} (shared provider limit, priority class {})",
            model.name, client.tier.config.priority
        ),
    };
    // The refused request's reservations were released before this: the
    // status is the refusing bucket's own, and its headers go with the 429.
    let status = match &e {
        LimitError::RateLimited { .. } | LimitError::QueueFull { .. } => {
            limiter.status().await.ok()
        }
        _ => None,
    };
    let mut err = match e {
        LimitError::RateLimited { retry_after, max_wait, .. } => {
            let dim = status
                .as_ref()
                .and_then(|s| culprit(limiter, s, cost))
                .unwrap_or(Dimension::Requests);
            let limit = limiter.policy().limit(dim).unwrap_or(0);
            ApiError::rate_limited(
                "rate_limit_error",
                &format!("{}_{}_exceeded", bucket.name(), dim.short_name()),
                format!(
                    "Rate limit reached for {whose} on {dim} (limit {limit} per minute): the next slot is {:.3} s away, longer than the tier's maximum wait of {:.3} s. Retry after the time in the Retry-After header.",
                    retry_after.as_secs_f64(),
                    max_wait.as_secs_f64()
                ),
                retry_after,
            )
        }
        LimitError::QueueFull { retry_after, depth, .. } => ApiError::rate_limited(
            "rate_limit_error",
            "queue_full",
            format!("The queue for {whose} is full ({depth} requests waiting). Retry after the time in the Retry-After header."),
            retry_after,
        ),
        LimitError::TooLarge(inner) => ApiError::invalid(
            &format!("{}_request_too_large", bucket.name()),
            "max_tokens",
            format!("Request too large for {whose}: {inner}. Lower max_tokens or shorten the prompt."),
        ),
        other => {
            gw.metrics.inc("tollgate_store_errors_total", &[("component", "limiter")]);
            tracing::error!(error = %other, "limiter failed");
            ApiError::internal(axum::http::StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "The rate-limit store is unavailable; retry shortly.")
        }
    };
    if let Some(status) = status {
        let mut h = crate::proxy::ratelimit_headers(&status.dimensions);
        h.insert(
            crate::proxy::BUCKET_HEADER,
            axum::http::HeaderValue::from_static(bucket.name()),
        );
        err.headers = Box::new(h);
    }
    err
}

fn budget_refused(gw: &Gateway, e: BudgetError) -> ApiError {
    let period = crate::budget::Period::now();
    match e {
        BudgetError::Daily { .. } => ApiError::rate_limited(
            "insufficient_quota",
            "daily_budget_exceeded",
            e.to_string(),
            period.until_tomorrow(),
        ),
        BudgetError::Monthly { .. } => ApiError::rate_limited(
            "insufficient_quota",
            "monthly_budget_exceeded",
            e.to_string(),
            period.until_next_month(),
        ),
        BudgetError::Store(msg) => {
            gw.metrics
                .inc("tollgate_store_errors_total", &[("component", "budget")]);
            tracing::error!(error = %msg, "spend store failed");
            ApiError::internal(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "The spend store is unavailable; retry shortly.",
            )
        }
    }
}
