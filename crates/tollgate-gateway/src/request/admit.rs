//! Admission: the client's tier bucket and its budget (asked together, with
//! the buckets and budgets of its organisation and of its key when they
//! set any: every level of the hierarchy is checked), and
//! the provider bucket of the model in the tier's priority class (asked with
//! them while the client has plenty of room, else after them). Each step is a
//! reservation; a refusal undoes the others before it is returned, so the
//! refusing bucket's status (read then) no longer counts this request.
//!
//! The result is an [`Admission`] (settled by [`super::settle`]) or a typed
//! [`Refusal`]; the HTTP layer turns the latter into the client's answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tollgate::{
    AcquireOptions, Cost, Dimension, Error as LimitError, OutagePolicy, RateLimiter, Status,
};

use super::settle::{Admission, Books, Usage};
use crate::budget::{BudgetError, BudgetLimits, Level};
use crate::model::Model;
use crate::outcome::Outcome;
use crate::registry::{Client, Key};

/// The share of the client bucket's capacity (every dimension) that must
/// have been left by the client's last admission for the next one to ask the
/// provider bucket at the same time as the client bucket.
const ROOMY: f64 = 0.25;

/// Which bucket refused, for error codes and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bucket {
    /// The client's tier bucket.
    Client,
    /// The provider bucket of the model.
    Model,
    /// The client's organisation's bucket.
    Org,
    /// The issued key's own bucket.
    Key,
}

impl Bucket {
    /// The name in error codes, metrics and `x-tollgate-ratelimit-bucket`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Bucket::Client => "client",
            Bucket::Model => "model",
            Bucket::Org => "organisation",
            Bucket::Key => "key",
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A bucket cannot take it within the tier's maximum wait, its queue is
    /// full, or the request can never fit it.
    Bucket(Box<BucketRefusal>),
    /// The client's daily or monthly budget cannot take the estimate.
    Budget(BudgetError),
    /// The limit or spend store failed and the outage policy refuses.
    StoreUnavailable(StoreKind),
}

/// Which store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// The rate-limit store.
    Limits,
    /// The spend store.
    Spend,
}

/// A bucket's refusal.
#[derive(Debug)]
pub(crate) struct BucketRefusal {
    /// Which bucket.
    pub(crate) bucket: Bucket,
    /// The limiter's answer (`RateLimited`, `QueueFull`, `TooLarge` or
    /// `TooLargeForShare`).
    pub(crate) error: LimitError,
    /// The bucket's state after the refusal (for a rate limit or a full
    /// queue), read after this request's reservations were given back.
    pub(crate) status: Option<Status>,
    /// The dimension that keeps it waiting longest, and its limit.
    pub(crate) culprit: (Dimension, u64),
}

impl Refusal {
    /// Whether another candidate model may admit what this one refused:
    /// its provider bucket was full (or too small), or the budget could not
    /// take this model's price. The client's own bucket and a store
    /// failure would refuse it on any model.
    pub(crate) fn another_model_may_take_it(&self) -> bool {
        match self {
            Refusal::Bucket(b) => b.bucket == Bucket::Model,
            Refusal::Budget(BudgetError::Daily { .. } | BudgetError::Monthly { .. }) => true,
            Refusal::Budget(BudgetError::Store(_)) | Refusal::StoreUnavailable(_) => false,
        }
    }

    /// The level whose budget refused, when a budget did.
    pub(crate) fn budget_level(&self) -> Option<Level> {
        match self {
            Refusal::Budget(
                BudgetError::Daily { level, .. } | BudgetError::Monthly { level, .. },
            ) => Some(*level),
            _ => None,
        }
    }

    /// What the budget that refused had left, in nano-USD: a candidate
    /// whose estimate costs more is not worth asking.
    pub(crate) fn budget_room(&self) -> Option<i64> {
        match self {
            Refusal::Budget(
                BudgetError::Daily { spent, limit, .. } | BudgetError::Monthly { spent, limit, .. },
            ) => Some((limit - spent).max(0)),
            _ => None,
        }
    }

    /// How the request ended, for metrics and logs.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Refusal::Bucket(b) if too_large(&b.error) => Outcome::BadRequest,
            Refusal::Bucket(_) => Outcome::RateLimited,
            Refusal::Budget(_) => Outcome::BudgetExceeded,
            Refusal::StoreUnavailable(_) => Outcome::StoreUnavailable,
        }
    }
}

/// Whether the limiter refused a request it can never take as it is (the
/// whole bucket, or the tier's share of it, cannot hold it).
fn too_large(e: &LimitError) -> bool {
    matches!(
        e,
        LimitError::TooLarge(_) | LimitError::TooLargeForShare { .. }
    )
}

/// Reserves the client bucket, the budget and the provider bucket for a
/// request of `estimate` tokens of `client` on `model`.
#[cfg(test)]
pub(crate) async fn admit(
    books: &Arc<Books>,
    client: &Arc<Client>,
    model: &Arc<Model>,
    estimate: Usage,
) -> Result<Admission, Refusal> {
    admit_with(books, client, None, model, estimate).await
}

/// [`admit`] of a request that came with issued key `key`: its bucket and
/// budgets are reserved too, as the organisation's are.
pub(crate) async fn admit_with(
    books: &Arc<Books>,
    client: &Arc<Client>,
    key: Option<&Arc<Key>>,
    model: &Arc<Model>,
    estimate: Usage,
) -> Result<Admission, Refusal> {
    let mut adm = Admission::new(books, client, model, estimate);
    let ask = Ask::new(client, estimate);
    match super::joint::admit(books, &mut adm, key, &ask).await {
        Some(Ok(())) => {}
        Some(Err(refusal)) => return Err(refusal),
        None => apart(books, &mut adm, key, &ask).await?,
    }
    client.roomy.store(
        adm.client_status
            .as_deref()
            .is_some_and(|dims| dims.iter().all(|d| d.available >= ROOMY * d.capacity)),
        Ordering::Relaxed,
    );
    adm.wait = adm.granted_wait();
    Ok(adm)
}

/// [`admit_with`] one bucket at a time: the client's buckets and budgets at
/// once, the provider bucket with them or after them (see [`client_side`]).
async fn apart(
    books: &Arc<Books>,
    adm: &mut Admission,
    key: Option<&Arc<Key>>,
    ask: &Ask,
) -> Result<(), Refusal> {
    let client = &adm.client().clone();
    let model = &adm.model().clone();
    let early = match client_side(books, adm, key, ask).await {
        Ok(early) => early,
        Err(refusal) => {
            adm.release().await;
            return Err(refusal);
        }
    };
    let model_res = match early {
        Early::Held(waited) => Ok(waited),
        Early::Refused(e) => Err(e),
        Early::NotAsked => match model.limiter.reserve(ask.cost, &ask.model_opts).await {
            Ok(p) => {
                let waited = p.waited();
                adm.hold_model(p);
                Ok(waited)
            }
            Err(e) => Err(e),
        },
    };
    match model_res {
        Ok(waited) => {
            decision(books, Bucket::Model, &client.tier.name, waited);
            Ok(())
        }
        Err(e) => {
            // Release the client's reservation and budget first, so the
            // status behind the 429's headers no longer counts them.
            adm.release().await;
            Err(refused(books, Bucket::Model, &model.limiter, ask, e, client).await)
        }
    }
}

/// One request's reservation, as each bucket is asked it.
pub(super) struct Ask {
    pub(super) cost: Cost,
    pub(super) client_opts: AcquireOptions,
    pub(super) model_opts: AcquireOptions,
}

impl Ask {
    fn new(client: &Client, estimate: Usage) -> Ask {
        let tier = &client.tier;
        Ask {
            cost: Cost::split(estimate.input, estimate.output),
            client_opts: AcquireOptions {
                class: 0,
                max_wait: Some(tier.max_wait),
            },
            model_opts: AcquireOptions {
                class: tier.class,
                max_wait: Some(tier.max_wait),
            },
        }
    }
}

/// The provider bucket's answer when it was asked with the client's.
enum Early {
    /// Granted (the permit is in the admission), with its wait.
    Held(Duration),
    /// Refused.
    Refused(LimitError),
    /// Not asked yet.
    NotAsked,
}

/// Asks the client's bucket and its budget at once (one store round trip
/// instead of two), and the provider bucket with them while the client's
/// last admission left plenty of room (a refusal is then unlikely);
/// otherwise the provider bucket is asked only after both said yes, so a
/// client over its own limit does not churn the shared provider bucket with
/// reservations that are cancelled at once. Grants go into `adm` (the
/// caller gives them back on a refusal).
async fn client_side(
    books: &Books,
    adm: &mut Admission,
    key: Option<&Arc<Key>>,
    ask: &Ask,
) -> Result<Early, Refusal> {
    let client = adm.client().clone();
    let model = adm.model().clone();
    let tier = &client.tier;
    let estimate = model
        .price
        .cost_nano(adm.estimate.input, adm.estimate.output);
    let speculate = client.roomy.load(Ordering::Relaxed);
    let levels = budget_levels(&client, key);
    // The organisation's and the key's buckets, outermost first.
    let buckets: Vec<(Bucket, &RateLimiter)> = client
        .org
        .iter()
        .filter_map(|o| o.bounds.limiter.as_ref().map(|l| (Bucket::Org, l)))
        .chain(key.and_then(|k| k.bounds().limiter.as_ref().map(|l| (Bucket::Key, l))))
        .collect();
    let (client_res, budget_res, level_res, early) = tokio::join!(
        client.limiter().reserve(ask.cost, &ask.client_opts),
        books.budgets.reserve_levels(&levels, estimate),
        futures_util::future::join_all(
            buckets
                .iter()
                .map(|(_, l)| l.reserve(ask.cost, &ask.client_opts))
        ),
        async {
            if speculate {
                Some(model.limiter.reserve(ask.cost, &ask.model_opts).await)
            } else {
                None
            }
        }
    );
    let early = match early {
        Some(Ok(p)) => {
            let waited = p.waited();
            adm.hold_model(p);
            Early::Held(waited)
        }
        Some(Err(e)) => Early::Refused(e),
        None => Early::NotAsked,
    };
    let mut refusals = Vec::new();
    for ((bucket, limiter), res) in buckets.iter().zip(level_res) {
        match res {
            Ok(p) => {
                decision(books, *bucket, &tier.name, p.waited());
                adm.hold_level((*limiter).clone(), p);
            }
            Err(e) => refusals.push((*bucket, *limiter, e)),
        }
    }
    match client_res {
        Ok(p) => {
            decision(books, Bucket::Client, &tier.name, p.waited());
            let status = client.limiter().status_at_grant(&p);
            adm.hold_client(p, status);
        }
        Err(e) => refusals.push((Bucket::Client, client.limiter(), e)),
    }
    // When several levels refuse, the outermost is told.
    let outermost = |b: &Bucket| match b {
        Bucket::Org => 0,
        Bucket::Client => 1,
        _ => 2,
    };
    let refusal = refusals.into_iter().min_by_key(|(b, ..)| outermost(b));
    let budget = budget_answer(books, adm, &client, budget_res, refusal.is_none());
    if refusal.is_some() || budget.is_err() {
        client.roomy.store(false, Ordering::Relaxed);
    }
    if let Some((bucket, limiter, e)) = refusal {
        adm.release().await;
        return Err(refused(books, bucket, limiter, ask, e, &client).await);
    }
    budget?;
    Ok(early)
}

/// Every level whose budgets a request of `client` with `key` reserves,
/// outermost first: its organisation's and its key's when they set any,
/// and the client's (which reserves nothing without budgets).
pub(super) fn budget_levels<'a>(
    client: &'a Client,
    key: Option<&'a Arc<Key>>,
) -> Vec<(Level, &'a str, BudgetLimits)> {
    let has = |b: &BudgetLimits| b.daily.is_some() || b.monthly.is_some();
    let mut levels = Vec::with_capacity(3);
    if let Some(o) = client.org.as_ref().filter(|o| has(&o.bounds.budget)) {
        levels.push((Level::Org, o.id.as_str(), o.bounds.budget));
    }
    levels.push((Level::Client, client.id.as_str(), client.budget));
    if let Some(k) = key.filter(|k| has(&k.bounds().budget)) {
        levels.push((Level::Key, k.budget_id(), k.bounds().budget));
    }
    levels
}

/// Takes the budget's answer: a hold goes into `adm`; a spend store that
/// is down admits without a budget check unless the outage policy is
/// `closed`. Counted in the metrics only when the client bucket let the
/// request in (`counted`), as when the two were asked one after the other.
pub(super) fn budget_answer(
    books: &Books,
    adm: &mut Admission,
    client: &Client,
    answer: Result<Vec<crate::budget::Hold>, BudgetError>,
    counted: bool,
) -> Result<(), Refusal> {
    let count = |decision: &str| {
        if counted {
            count_budget(books, client, decision);
        }
    };
    match answer {
        Ok(h) => {
            count("granted");
            adm.hold_budgets(h);
            Ok(())
        }
        Err(BudgetError::Store(msg)) if !matches!(books.outage, OutagePolicy::Closed) => {
            // The spend store is down and the outage policy lets requests
            // through: this request's spend goes unrecorded.
            store_error(books, "budget");
            tracing::warn!(client = %client.id, error = %msg, policy = books.outage.name(), "spend store unavailable; admitting without a budget check");
            Ok(())
        }
        Err(BudgetError::Store(msg)) => {
            count("refused");
            store_error(books, "budget");
            tracing::error!(error = %msg, "spend store failed");
            Err(Refusal::StoreUnavailable(StoreKind::Spend))
        }
        Err(e) => {
            count("refused");
            Err(Refusal::Budget(e))
        }
    }
}

/// Counts the budget's decision on a request of `client`.
pub(super) fn count_budget(books: &Books, client: &Client, decision: &str) {
    books.metrics.inc(
        "tollgate_limiter_decisions_total",
        &[
            ("bucket", "budget"),
            ("tier", client.tier.name.as_str()),
            ("decision", decision),
        ],
    );
}

fn store_error(books: &Books, component: &str) {
    books
        .metrics
        .inc("tollgate_store_errors_total", &[("component", component)]);
}

pub(super) fn decision(books: &Books, bucket: Bucket, tier: &str, waited: Duration) {
    let d = if waited > Duration::ZERO {
        "waited"
    } else {
        "granted"
    };
    books.metrics.inc(
        "tollgate_limiter_decisions_total",
        &[("bucket", bucket.name()), ("tier", tier), ("decision", d)],
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

/// A bucket's refusal, counted; the bucket's status read for the headers
/// of a rate limit or a full queue. A store failure is not the bucket's
/// refusal: counted apart.
pub(super) async fn refused(
    books: &Books,
    bucket: Bucket,
    limiter: &RateLimiter,
    ask: &Ask,
    e: LimitError,
    client: &Client,
) -> Refusal {
    let limited = matches!(
        e,
        LimitError::RateLimited { .. } | LimitError::QueueFull { .. }
    );
    let decision = if limited || too_large(&e) {
        "refused"
    } else {
        "store_unavailable"
    };
    books.metrics.inc(
        "tollgate_limiter_decisions_total",
        &[
            ("bucket", bucket.name()),
            ("tier", &client.tier.name),
            ("decision", decision),
        ],
    );
    if decision == "store_unavailable" {
        store_error(books, "limiter");
        tracing::error!(error = %e, "limiter failed");
        return Refusal::StoreUnavailable(StoreKind::Limits);
    }
    let status = if limited {
        limiter.status().await.ok()
    } else {
        None
    };
    let dim = status
        .as_ref()
        .and_then(|s| culprit(limiter, s, ask.cost))
        .unwrap_or(Dimension::Requests);
    let limit = limiter.policy().limit(dim).unwrap_or(0);
    Refusal::Bucket(Box::new(BucketRefusal {
        bucket,
        error: e,
        status,
        culprit: (dim, limit),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::fixture::{model, tier, Fixture};

    async fn in_use(limiter: &RateLimiter) -> (f64, f64) {
        let st = limiter.status().await.expect("status");
        let get = |d| st.dimension(d).map(|s| s.in_use).unwrap_or(0.0);
        (get(Dimension::Requests), get(Dimension::Tokens))
    }

    /// `got` is `want` less what drained since (the buckets refill as the
    /// test runs): at most 0.15 requests and 10 tokens off.
    #[track_caller]
    fn near(got: (f64, f64), want: (f64, f64)) {
        let ok = got.0 <= want.0 + 1e-9
            && got.0 >= want.0 - 0.15
            && got.1 <= want.1 + 1e-9
            && got.1 >= want.1 - 10.0;
        assert!(ok, "in use {got:?}, want about {want:?}");
    }

    fn bucket_of(r: &Refusal) -> Option<Bucket> {
        match r {
            Refusal::Bucket(b) => Some(b.bucket),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_request_within_every_limit_is_admitted_and_settles_what_it_used() {
        let f = Fixture::new(
            &[("m", model(100, 100_000))],
            &[("pro", tier(100, 10_000, 0))],
        )
        .await;
        let (client, m) = (f.client("pro"), f.model("m"));
        let adm = admit(&f.books, &client, &m, Usage::new(100, 900))
            .await
            .expect("admitted");
        assert_eq!(adm.wait, Duration::ZERO);
        assert!(adm.client_status.is_some());
        near(in_use(client.limiter()).await, (1.0, 1000.0));
        near(in_use(&m.limiter).await, (1.0, 1000.0));
        adm.settle(Usage::new(100, 50)).await;
        near(in_use(client.limiter()).await, (1.0, 150.0));
        near(in_use(&m.limiter).await, (1.0, 150.0));
        let spend = f.books.budgets.spend("pro").await.expect("spend");
        assert_eq!(spend.today, m.price.cost_nano(100, 50));
    }

    #[tokio::test]
    async fn the_client_bucket_refuses_and_nothing_stays_reserved() {
        let f = Fixture::new(
            &[("m", model(100, 100_000))],
            &[("pro", tier(100, 1_000, 0))],
        )
        .await;
        let (client, m) = (f.client("pro"), f.model("m"));
        let first = admit(&f.books, &client, &m, Usage::new(100, 800))
            .await
            .expect("first");
        let r = admit(&f.books, &client, &m, Usage::new(100, 800))
            .await
            .unwrap_err();
        assert_eq!(bucket_of(&r), Some(Bucket::Client));
        assert_eq!(r.outcome(), Outcome::RateLimited);
        let Refusal::Bucket(b) = &r else {
            unreachable!()
        };
        assert_eq!(b.culprit, (Dimension::Tokens, 1_000));
        assert!(
            b.status.is_some(),
            "a rate limit carries the bucket's status"
        );
        // Only the first request holds anything.
        near(in_use(client.limiter()).await, (1.0, 900.0));
        near(in_use(&m.limiter).await, (1.0, 900.0));
        let mut first = first;
        first.release().await;
        near(in_use(client.limiter()).await, (0.0, 0.0));
        near(in_use(&m.limiter).await, (0.0, 0.0));
    }

    #[tokio::test]
    async fn the_provider_bucket_refuses_and_the_client_bucket_is_given_back() {
        let f = Fixture::new(
            &[("m", model(100, 1_000))],
            &[("pro", tier(100, 100_000, 0))],
        )
        .await;
        let (client, m) = (f.client("pro"), f.model("m"));
        let _first = admit(&f.books, &client, &m, Usage::new(100, 800))
            .await
            .expect("first");
        // The first admission left the client plenty of room: the second asks
        // the provider bucket at the same time, and is refused by it.
        let r = admit(&f.books, &client, &m, Usage::new(100, 800))
            .await
            .unwrap_err();
        assert_eq!(bucket_of(&r), Some(Bucket::Model));
        near(in_use(client.limiter()).await, (1.0, 900.0));
        near(in_use(&m.limiter).await, (1.0, 900.0));
    }

    #[tokio::test]
    async fn a_request_that_can_never_fit_is_a_bad_request() {
        let f = Fixture::new(
            &[("m", model(100, 1_000))],
            &[("pro", tier(100, 100_000, 0))],
        )
        .await;
        let (client, m) = (f.client("pro"), f.model("m"));
        let r = admit(&f.books, &client, &m, Usage::new(100, 2_000))
            .await
            .unwrap_err();
        assert_eq!(r.outcome(), Outcome::BadRequest);
        near(in_use(client.limiter()).await, (0.0, 0.0));
    }

    #[tokio::test]
    async fn a_budget_that_cannot_take_the_estimate_refuses_and_reserves_nothing() {
        let mut t = tier(100, 100_000, 0);
        // $1/M in, $2/M out: 100 in + 900 out cost $0.0019.
        t.daily_budget_usd = Some(0.001);
        let f = Fixture::new(&[("m", model(100, 100_000))], &[("pro", t)]).await;
        let (client, m) = (f.client("pro"), f.model("m"));
        let r = admit(&f.books, &client, &m, Usage::new(100, 900))
            .await
            .unwrap_err();
        assert!(
            matches!(r, Refusal::Budget(BudgetError::Daily { .. })),
            "{r:?}"
        );
        assert_eq!(r.outcome(), Outcome::BudgetExceeded);
        near(in_use(client.limiter()).await, (0.0, 0.0));
        near(in_use(&m.limiter).await, (0.0, 0.0));
        assert_eq!(f.books.budgets.spend("pro").await.expect("spend").today, 0);
        // One that fits is admitted.
        admit(&f.books, &client, &m, Usage::new(100, 100))
            .await
            .expect("fits");
    }

    #[tokio::test]
    async fn a_full_bucket_queues_within_the_tiers_wait() {
        // 600 TPM refill 10 tokens a second: 200 tokens more wait 20 s.
        let f = Fixture::new(
            &[("m", model(100, 600))],
            &[("pro", tier(100, 100_000, 60_000))],
        )
        .await;
        let (client, m) = (f.client("pro"), f.model("m"));
        let _first = admit(&f.books, &client, &m, Usage::new(100, 500))
            .await
            .expect("first");
        let second = admit(&f.books, &client, &m, Usage::new(100, 100))
            .await
            .expect("queued");
        assert!(
            second.wait > Duration::from_secs(15) && second.wait <= Duration::from_secs(20),
            "{:?}",
            second.wait
        );
        // Dropped while it waits, it gives everything back.
        drop(second);
        tokio::time::sleep(Duration::from_millis(50)).await;
        near(in_use(&m.limiter).await, (1.0, 600.0));
    }

    #[tokio::test]
    async fn dropped_after_it_was_sent_it_is_charged_its_input() {
        let f = Fixture::new(
            &[("m", model(100, 6_000))],
            &[("pro", tier(100, 100_000, 0))],
        )
        .await;
        let (client, m) = (f.client("pro"), f.model("m"));
        let mut adm = admit(&f.books, &client, &m, Usage::new(100, 900))
            .await
            .expect("admitted");
        adm.sent();
        drop(adm);
        tokio::time::sleep(Duration::from_millis(50)).await;
        near(in_use(&m.limiter).await, (1.0, 100.0));
        let spend = f.books.budgets.spend("pro").await.expect("spend");
        assert_eq!(spend.today, m.price.cost_nano(100, 0));
    }
}
