//! Settlement, in one place: an [`Admission`] holds a request's
//! reservations (client bucket, provider bucket, budget hold) and is
//! finished exactly once, by one of
//!
//! - [`Admission::settle`] with the [`Usage`] the answer was charged
//!   (what the request used; nothing for an answer the upstream never
//!   started, the input for one it may have read);
//! - [`Admission::release`] when it never went upstream (a refusal);
//! - dropping it (the client went away while it waited or streamed): then
//!   it settles in the background with what was used so far, or releases
//!   everything if it had not been sent, so an abandoned request never keeps
//!   capacity or budget it did not use.
//!
//! Finishing writes the spend, the token and spend metrics and the ledger
//! row: the [`Books`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::{Cost, DimensionStatus, OutagePolicy, Permit, RateLimiter};

use crate::budget::{nano_to_usd, Budgets, Hold};
use crate::ledger::{MicroPrice, Row, UsageLedger};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::outcome::Outcome;
use crate::registry::Client;

/// Where a request's use is written down: spend and budgets, metrics and
/// the usage ledger, and the policy when the spend store is down.
#[derive(Debug)]
pub(crate) struct Books {
    /// Spend and budgets.
    pub(crate) budgets: Arc<Budgets>,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// The usage ledger (`None`: `ledger.url = "off"`).
    pub(crate) ledger: Option<Arc<UsageLedger>>,
    /// What to do when the spend store cannot be reached.
    pub(crate) outage: OutagePolicy,
    /// Settle before the answer goes out (the memory store: it costs
    /// microseconds and no I/O, and a client's next request then sees its
    /// refund); else in a task of its own after it (Redis round trips).
    pub(crate) inline: bool,
}

/// Estimated or actual tokens of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usage {
    /// Input tokens.
    pub(crate) input: u64,
    /// Output tokens.
    pub(crate) output: u64,
}

impl Usage {
    /// `input` + `output` tokens.
    pub(crate) fn new(input: u64, output: u64) -> Usage {
        Usage { input, output }
    }

    /// Nothing used (the upstream never had the request).
    pub(crate) const NONE: Usage = Usage {
        input: 0,
        output: 0,
    };
}

/// A request that was let in: its reservations, to settle when it ends.
pub(crate) struct Admission {
    /// The reservations not finished yet; emptied when finished.
    parts: Parts,
    /// The client bucket's state right after this request's grant (for the
    /// rate-limit headers); `None` when the outage policy decided.
    pub(crate) client_status: Option<Vec<DimensionStatus>>,
    /// The estimate the reservations were made for.
    pub(crate) estimate: Usage,
    /// How long the request must wait for its slot.
    pub(crate) wait: Duration,
    /// What was used so far once the request was sent upstream (dropping
    /// then settles that instead of cancelling everything).
    used: Option<Usage>,
    /// When admission began.
    pub(crate) started: Instant,
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
    /// Nothing reserved yet, for `estimate` tokens of `client` on `model`.
    pub(crate) fn new(
        books: &Arc<Books>,
        client: &Arc<Client>,
        model: &Arc<Model>,
        estimate: Usage,
    ) -> Admission {
        Admission {
            parts: Parts::new(books.clone(), client.clone(), model.clone()),
            client_status: None,
            estimate,
            wait: Duration::ZERO,
            used: None,
            started: Instant::now(),
        }
    }

    /// The client bucket's reservation was granted.
    pub(crate) fn hold_client(&mut self, p: Permit, status: Option<Vec<DimensionStatus>>) {
        self.client_status = status;
        self.parts.client_permit = Some(p);
    }

    /// The provider bucket's reservation was granted.
    pub(crate) fn hold_model(&mut self, p: Permit) {
        self.parts.model_permit = Some(p);
    }

    /// The budgets' holds were granted (one per level with budgets).
    pub(crate) fn hold_budgets(&mut self, h: Vec<Hold>) {
        self.parts.holds = h;
    }

    /// The bucket of a level above or below the client (its organisation,
    /// its key) granted its reservation.
    pub(crate) fn hold_level(&mut self, limiter: RateLimiter, p: Permit) {
        self.parts.level_permits.push((limiter, p));
    }

    /// The longest of the granted reservations' waits for their slots.
    pub(crate) fn granted_wait(&self) -> Duration {
        let p = &self.parts;
        p.client_permit
            .iter()
            .chain(p.model_permit.iter())
            .chain(p.level_permits.iter().map(|(_, p)| p))
            .map(|p| p.waited())
            .max()
            .unwrap_or_default()
    }

    /// The granted bucket reservations with their limiters, to wait for
    /// their slots (they stay this admission's).
    pub(crate) fn reservations_mut(&mut self) -> impl Iterator<Item = (&RateLimiter, &mut Permit)> {
        let Parts {
            client,
            model,
            client_permit,
            model_permit,
            level_permits,
            ..
        } = &mut self.parts;
        let client = client_permit.as_mut().map(|p| (client.limiter(), p));
        let model = model_permit.as_mut().map(|p| (&model.limiter, p));
        let levels = level_permits.iter_mut().map(|(l, p)| (&*l, p));
        client.into_iter().chain(model).chain(levels)
    }

    /// The client this admission is for.
    pub(crate) fn client(&self) -> &Arc<Client> {
        &self.parts.client
    }

    /// The model this admission is for.
    pub(crate) fn model(&self) -> &Arc<Model> {
        &self.parts.model
    }

    /// The request goes upstream now: from here on the upstream may have
    /// it, so a client that leaves is charged its input at least.
    pub(crate) fn sent(&mut self) {
        self.used = Some(Usage::new(self.estimate.input, 0));
        self.parts.notes.attempts += 1;
        self.parts.notes.sent_at = Some(Instant::now());
    }

    /// The upstream's answer began (its headers, or the whole answer).
    pub(crate) fn answered(&mut self) {
        let n = &mut self.parts.notes;
        n.first_byte = n.sent_at.map(|t| t.elapsed());
    }

    /// The request's id, and the ledger row this attempt adds to.
    pub(crate) fn set_request(&mut self, id: uuid::Uuid, draft: Option<Arc<RowDraft>>) {
        self.parts.request_id = id;
        self.parts.draft = draft;
    }

    /// How the request ended, for its ledger row (left unsaid: the client
    /// went away).
    pub(crate) fn ended(&mut self, outcome: Outcome, error_code: Option<&str>) {
        self.parts.notes.outcome = Some(outcome);
        self.parts.notes.error_code = error_code.map(String::from);
    }

    /// Cancels every reservation made so far (the request never ran);
    /// what is left of the admission then holds nothing.
    pub(crate) async fn release(&mut self) {
        let waited = self.wait;
        self.take().finish(None, waited).await;
    }

    /// Settles with the actual `usage`: before this returns when the books
    /// say so, else in a task of its own after the answer has gone out
    /// (still exactly once).
    pub(crate) async fn settle(mut self, usage: Usage) {
        let parts = self.take();
        let waited = self.wait;
        if parts.books.inline {
            parts.finish(Some(usage), waited).await;
        } else {
            // Boxed: the future is large, and spawning moves it by value.
            tokio::spawn(Box::pin(parts.finish(Some(usage), waited)));
        }
    }

    /// Settles with `usage` from code that cannot wait (a stream's end):
    /// in a task of its own.
    pub(crate) fn settle_soon(self, usage: Usage) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(self.settle(usage));
        }
    }

    /// Moves the reservations out to be finished, leaving an empty `Parts`
    /// behind so that they are finished exactly once (`Drop` then finds
    /// nothing left to do).
    fn take(&mut self) -> Parts {
        let p = &self.parts;
        let mut empty = Parts::new(p.books.clone(), p.client.clone(), p.model.clone());
        empty.request_id = p.request_id;
        let mut parts = std::mem::replace(&mut self.parts, empty);
        let n = &mut parts.notes;
        n.latency = n.sent_at.map(|t| t.elapsed());
        parts
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.parts.is_empty() && self.parts.draft.is_none() {
            return;
        }
        let parts = self.take();
        let usage = self.used;
        let waited = self.wait;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(parts.finish(usage, waited));
        }
    }
}

/// What is left to settle of an admission: its reservations (each `None`
/// until granted, and again once moved out to be finished), and what
/// finishing them needs.
struct Parts {
    books: Arc<Books>,
    client: Arc<Client>,
    model: Arc<Model>,
    client_permit: Option<Permit>,
    model_permit: Option<Permit>,
    /// The organisation's and the key's bucket reservations.
    level_permits: Vec<(RateLimiter, Permit)>,
    /// One budget hold per level with budgets.
    holds: Vec<Hold>,
    request_id: uuid::Uuid,
    /// What this attempt tells its request's ledger row.
    notes: Notes,
    /// The request's ledger row (shared by its attempts).
    draft: Option<Arc<RowDraft>>,
}

/// What the request path learns of one attempt on its way, for the
/// request's ledger row.
#[derive(Debug, Clone, Default)]
struct Notes {
    /// How it ended, when the path said (else: the client went away).
    outcome: Option<Outcome>,
    error_code: Option<String>,
    attempts: u32,
    sent_at: Option<Instant>,
    first_byte: Option<Duration>,
    latency: Option<Duration>,
}

impl Parts {
    /// Nothing reserved yet.
    fn new(books: Arc<Books>, client: Arc<Client>, model: Arc<Model>) -> Parts {
        Parts {
            books,
            client,
            model,
            client_permit: None,
            model_permit: None,
            level_permits: Vec::new(),
            holds: Vec::new(),
            request_id: uuid::Uuid::nil(),
            notes: Notes::default(),
            draft: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.client_permit.is_none()
            && self.model_permit.is_none()
            && self.level_permits.is_empty()
            && self.holds.is_empty()
    }

    /// Settles with `usage`, or with `None` cancels everything (the request
    /// never went upstream). `waited` (the request's wait for its slot) goes
    /// into the usage ledger. Returns the cost in nano-USD.
    async fn finish(mut self, usage: Option<Usage>, waited: Duration) -> i64 {
        let used = usage.unwrap_or_default();
        let cost = self.model.price.cost_nano(used.input, used.output);
        let (client_permit, model_permit) = (self.client_permit.take(), self.model_permit.take());
        let levels = std::mem::take(&mut self.level_permits)
            .into_iter()
            .map(|(limiter, p)| settle_permit(limiter, Some(p), usage));
        let holds = std::mem::take(&mut self.holds);
        let budgets = holds
            .iter()
            .map(|h| settle_budget(&self.books, &self.client, Some(h), cost));
        tokio::join!(
            settle_permit(self.client.limiter().clone(), client_permit, usage),
            settle_permit(self.model.limiter.clone(), model_permit, usage),
            futures_util::future::join_all(levels),
            futures_util::future::join_all(budgets),
        );
        if usage.is_some() {
            self.count(used, cost);
        }
        if let Some(draft) = self.draft.take() {
            draft.attempt(&self.model, used, &self.notes, waited);
        }
        cost
    }

    /// The token and spend metrics of a request that was settled.
    fn count(&self, used: Usage, cost: i64) {
        let metrics = &self.books.metrics;
        let client = self.client.id.as_str();
        let model = self.model.name.as_str();
        for (direction, tokens) in [("input", used.input), ("output", used.output)] {
            metrics.add(
                "tollgate_tokens_total",
                &[
                    ("client", client),
                    ("model", model),
                    ("direction", direction),
                ],
                tokens as f64,
            );
        }
        metrics.add(
            "tollgate_spend_usd_total",
            &[("client", client), ("model", model)],
            nano_to_usd(cost),
        );
    }
}

/// A request's ledger row while its attempts run: each adds what it used
/// and cost; the row is written when the last holder lets go (the request
/// path, and every attempt's admission, which may settle after the answer).
/// So a request leaves exactly one row, however many candidates it tried.
#[derive(Debug)]
pub(crate) struct RowDraft {
    ledger: Arc<UsageLedger>,
    /// The baseline model's price: the model named, or the first
    /// candidate of the route's rule.
    baseline: Option<MicroPrice>,
    row: parking_lot::Mutex<Row>,
}

impl Books {
    /// The row of a request of `client` that names `requested` and went
    /// by `route` (`None` when the ledger is off); `baseline` is the model
    /// it named, or its route's first candidate.
    pub(crate) fn draft(
        &self,
        request_id: uuid::Uuid,
        client: &Client,
        (requested, route): (&str, &str),
        baseline: Option<&Arc<Model>>,
    ) -> Option<Arc<RowDraft>> {
        let ledger = self.ledger.clone()?;
        let now = crate::ledger::row::now_ms();
        let row = Row {
            request_id,
            started_at_ms: crate::ledger::row::id_time_ms(&request_id).unwrap_or(now),
            finished_at_ms: now,
            client: client.id.clone(),
            tier: client.tier.name.clone(),
            route: route.to_string(),
            requested_model: requested.to_string(),
            served_model: String::new(),
            baseline_model: baseline.map(|m| m.name.clone()).unwrap_or_default(),
            attempts: 0,
            est_input_tokens: 0,
            est_output_tokens: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_micro_usd: 0,
            baseline_cost_micro_usd: 0,
            queue_wait_us: 0,
            upstream_latency_us: None,
            first_token_us: None,
            // Unless told otherwise: the client went away.
            outcome: Outcome::ClientGone.as_str().to_string(),
            error_code: None,
            instance: ledger.instance().to_string(),
            org: client.org.as_ref().map(|o| o.id.clone()),
            key_id: None,
            budget_level: None,
        };
        Some(Arc::new(RowDraft {
            ledger,
            baseline: baseline.map(|m| MicroPrice::from(m.price)),
            row: parking_lot::Mutex::new(row),
        }))
    }
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

impl RowDraft {
    /// The estimate of the attempt being admitted.
    pub(crate) fn estimated(&self, estimate: Usage) {
        let mut row = self.row.lock();
        row.est_input_tokens = estimate.input as i64;
        row.est_output_tokens = estimate.output as i64;
    }

    /// The request came with issued key `id`.
    pub(crate) fn keyed(&self, id: &str) {
        self.row.lock().key_id = Some(id.to_string());
    }

    /// The budget of `level` refused the request (on its last candidate).
    pub(crate) fn budget_refused(&self, level: crate::budget::Level) {
        self.row.lock().budget_level = Some(level.name().to_string());
    }

    /// How the request ended.
    pub(crate) fn ended(&self, outcome: Outcome, error_code: Option<&str>) {
        let mut row = self.row.lock();
        row.outcome = outcome.as_str().to_string();
        row.error_code = error_code.map(String::from);
    }

    /// What one attempt on `model` used, cost and took.
    fn attempt(&self, model: &Model, used: Usage, notes: &Notes, waited: Duration) {
        let price = MicroPrice::from(model.price);
        let baseline = self.baseline.unwrap_or(price);
        let mut row = self.row.lock();
        row.attempts += notes.attempts;
        row.input_tokens += used.input as i64;
        row.output_tokens += used.output as i64;
        row.cost_micro_usd += price.cost_micro_usd(used.input, used.output);
        row.baseline_cost_micro_usd += baseline.cost_micro_usd(used.input, used.output);
        row.queue_wait_us += micros(waited);
        if row.baseline_model.is_empty() {
            row.baseline_model = model.name.clone();
        }
        if notes.first_byte.is_some() {
            row.served_model = model.name.clone();
            row.first_token_us = notes.first_byte.map(micros);
        }
        if notes.latency.is_some() {
            row.upstream_latency_us = notes.latency.map(micros);
        }
        if let Some(o) = notes.outcome {
            row.outcome = o.as_str().to_string();
            row.error_code = notes.error_code.clone();
        }
    }
}

impl Drop for RowDraft {
    fn drop(&mut self) {
        let mut row = std::mem::take(self.row.get_mut());
        row.finished_at_ms = crate::ledger::row::now_ms();
        // A budget that refused one candidate names no level when another
        // candidate answered.
        if row.outcome != Outcome::BudgetExceeded.as_str() {
            row.budget_level = None;
        }
        self.ledger.record(row);
    }
}

/// Settles a bucket's reservation with `usage`, or cancels it (`None`).
async fn settle_permit(limiter: RateLimiter, permit: Option<Permit>, usage: Option<Usage>) {
    let Some(permit) = permit else { return };
    let result = match usage {
        Some(u) => limiter
            .settle(permit, Cost::split(u.input, u.output))
            .await
            .map(|_| ()),
        None => limiter.cancel(permit).await.map(|_| ()),
    };
    if let Err(e) = result {
        tracing::warn!(key = %limiter.key(), error = %e, "could not settle a reservation");
    }
}

/// Replaces a budget hold's estimate by the actual `cost`.
async fn settle_budget(books: &Books, client: &Client, hold: Option<&Hold>, cost: i64) {
    let Some(hold) = hold else { return };
    if let Err(e) = books.budgets.settle(hold, cost).await {
        books
            .metrics
            .inc("tollgate_store_errors_total", &[("component", "budget")]);
        tracing::warn!(client = %client.id, error = %e, "could not settle spend");
    }
}
