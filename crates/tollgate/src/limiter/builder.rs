//! Building a [`RateLimiter`]: one source of truth for its settings.

use std::sync::Arc;
use std::time::Duration;

use tollgate_core::{ClassShare, Limits, Shares, MAX_CLASSES};

use crate::store::{MemoryStore, RedisOptions, RedisStore, Store};
use crate::{Error, OutagePolicy, RateLimiter, RetryConfig};

use super::fingerprint;
use super::lanes::{Lanes, LiveLanes};
use super::rate_limiter::{Inner, LocalFallback, MAX_ADVANCE_CHECK};

/// The store URLs [`Builder::url`] knows, for messages.
const URL_FORMS: &str = "memory:// (nothing after it: the process's memory store), \
    redis://[:password@]host:port[/db], rediss://… for TLS, or \
    redis+cluster://[:password@]host:port,host:port (rediss+cluster://… for TLS)";

/// The scheme of a URL (`redis` of `redis://h:1`), `None` without `://`.
fn url_scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// The URL with any password hidden, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// The default [`Builder::lease`]: twenty times the longest a waiter goes
/// without confirming its place.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);

/// A priority class of a shared bucket (see "Priority classes" in the design).
///
/// A class of headroom `h` starts a call only while the bucket's backlog (how
/// far its TAT lies ahead) stays within `h × τ`, the tolerance
/// `τ = burst × window` scaled down; beyond that its calls queue. So lower
/// classes cannot fill the part of the tolerance reserved above their
/// headroom: a top-class call arriving at a congested bucket starts
/// `(1 − h) × τ` earlier than the next call of a class of headroom `h` would.
///
/// What headroom does not do is move reservations already made: those of a
/// lower class keep their slots, and every class charges the same TAT, so a
/// top-class call still waits for the charges queued before it, less that
/// `(1 − h) × τ`. Behind ten queued low-class calls, a top-class call starts
/// after most of them, not before all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityClass {
    /// Share of the bucket's tolerance this class may fill, in (0, 1]; the top
    /// class has 1.0.
    pub headroom: f64,
    /// The class's default maximum wait (`None`: the limiter's).
    pub max_wait: Option<Duration>,
}

/// Settings of a [`RateLimiter`]; see each method for its default.
///
/// ```
/// # async fn demo() -> Result<(), tollgate::Error> {
/// use std::time::Duration;
/// use tollgate::{Limits, OutagePolicy, RateLimiter, RetryConfig};
///
/// let limiter = RateLimiter::builder("bedrock/claude")
///     .limits(Limits::new().rpm(100).input_tpm(200_000).output_tpm(40_000).tpm(400_000).burndown(5.0))
///     .max_wait(Duration::from_secs(30))
///     .retry(RetryConfig { max_retries: 5, ..Default::default() })
///     .outage(OutagePolicy::Local { share: 0.25 })
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    key: String,
    limits: Limits,
    store: Option<Store>,
    url: Option<String>,
    redis_options: RedisOptions,
    retry: RetryConfig,
    outage: OutagePolicy,
    max_wait: Option<Duration>,
    max_queue: Option<u64>,
    advance_check: Option<Duration>,
    classes: Vec<PriorityClass>,
    shares: Option<Vec<ClassShare>>,
    replace_stored_limits: bool,
    margin: Duration,
    lease: Option<Duration>,
}

impl Builder {
    pub(crate) fn new(key: &str) -> Self {
        Builder {
            key: key.to_string(),
            limits: Limits::new(),
            store: None,
            url: None,
            redis_options: RedisOptions::default(),
            retry: RetryConfig::default(),
            outage: OutagePolicy::default(),
            max_wait: None,
            max_queue: None,
            advance_check: Some(Duration::from_millis(20)),
            classes: vec![PriorityClass {
                headroom: 1.0,
                max_wait: None,
            }],
            shares: None,
            replace_stored_limits: false,
            margin: Duration::ZERO,
            lease: Some(DEFAULT_LEASE),
        }
    }

    /// The limits (required: at least one dimension).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Use an existing store (shared by several limiters). Default, with no
    /// store and no [`Builder::url`]: a fresh private memory store.
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Connect to this store URL at `build`: `memory://` (the process-wide
    /// memory store, [`Store::process_memory`]), `redis://…`, `rediss://…`
    /// (TLS), or `redis+cluster://host:port,host:port` (`rediss+cluster://…`
    /// with TLS). Any other URL fails `build` with `Error::Config`.
    pub fn url(mut self, url: &str) -> Self {
        self.url = Some(url.to_string());
        self
    }

    /// Connection settings used with [`Builder::url`].
    pub fn redis_options(mut self, options: RedisOptions) -> Self {
        self.redis_options = options;
        self
    }

    /// Retry settings for transient store errors. Default: [`RetryConfig::default`].
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// What to do when the store is unreachable. Default: [`OutagePolicy::Open`].
    pub fn outage(mut self, policy: OutagePolicy) -> Self {
        self.outage = policy;
        self
    }

    /// Longest `acquire` waits for a slot; beyond it, `Error::RateLimited` and
    /// nothing reserved. Default: unbounded.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Most requests that may wait in one class's queue; beyond it,
    /// `Error::QueueFull`. Default: unbounded.
    pub fn max_queue(mut self, max_queue: u64) -> Self {
        self.max_queue = Some(max_queue);
        self
    }

    /// While `acquire` waits for a slot more than this far away, it wakes now
    /// and then (every quarter of the remaining wait, between this and
    /// [`MAX_ADVANCE_CHECK`](crate::MAX_ADVANCE_CHECK))
    /// to ask whether calls ahead of it settled below their estimates and left
    /// room to start earlier. `None` sleeps straight to the slot. Default 20 ms.
    pub fn advance_check(mut self, shortest: Option<Duration>) -> Self {
        self.advance_check = shortest;
        self
    }

    /// A safety margin for the delay between a call's slot and its arrival
    /// at the provider: every class sees the bucket as full this much earlier
    /// (its tolerance is `headroom × burst × window − margin`), so a call
    /// that reaches the provider up to `margin` later or earlier than the
    /// one before it still finds the provider's own bucket with room. It
    /// costs `margin × limit / window` of each limit's capacity (5 ms at
    /// 30,000 TPM: 2.5 tokens). Default zero: exact slots, for a provider
    /// whose limits are evaluated over windows much longer than the network's
    /// jitter (the usual case); a strict one deserves a few milliseconds.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// How long a reservation queued by `acquire` stays without its owner
    /// confirming it. A waiting `acquire` confirms it every time it asks
    /// whether it may start earlier (at least every
    /// [`MAX_ADVANCE_CHECK`](crate::MAX_ADVANCE_CHECK)); on a store shared
    /// between processes, a reservation whose owner stopped confirming (the
    /// process died) is cancelled by the next waiter that looks, so the
    /// reservations behind it move up. Only reservations queued further ahead
    /// than the lease get one. An owner that stalled past its lease finds its
    /// reservation gone and queues again (counted in `stats().leases_lost`).
    /// `None`: no leases. Default [`DEFAULT_LEASE`] (2 s). Without
    /// [`Builder::advance_check`] nothing confirms, so nothing is leased.
    pub fn lease(mut self, lease: Option<Duration>) -> Self {
        self.lease = lease;
        self
    }

    /// Priority classes, top first (class 0 must have headroom 1.0, unless
    /// [`Builder::class_shares`] are set: then each class fills its own lane
    /// whole, headroom only scales what it may borrow, and any class may be
    /// the top one). Default: one class with headroom 1.0.
    pub fn priority_classes(mut self, classes: Vec<PriorityClass>) -> Self {
        self.classes = classes;
        self
    }

    /// Shares the bucket between the priority classes by floor and weight,
    /// one [`ClassShare`] per class of [`Builder::priority_classes`] (in the
    /// same order): each class is guaranteed its floor of the bucket
    /// whenever it has demand, the rest is split by weight, and what a class
    /// leaves idle the others borrow at once. A class's priority headroom
    /// then only orders borrowing (higher classes borrow first). See
    /// "Sharing one provider model between tiers" in the design.
    ///
    /// Each class's lane is a key of its own in the store (`<key>#lane<k>`).
    /// Every limiter of the key must be given the same shares. Default: none
    /// (the classes share one bucket by headroom alone).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::Error> {
    /// use tollgate::{AcquireOptions, ClassShare, Cost, Limits, PriorityClass, RateLimiter};
    ///
    /// let class = |headroom| PriorityClass { headroom, max_wait: None };
    /// let limiter = RateLimiter::builder("gpt-4o")
    ///     .limits(Limits::new().rpm(600).tpm(100_000))
    ///     // interactive: at least 70%; batch: at least 10%; the rest 1:1.
    ///     .priority_classes(vec![class(1.0), class(1.0)])
    ///     .class_shares(vec![ClassShare::new(0.7, 1.0), ClassShare::new(0.1, 1.0)])
    ///     .build()
    ///     .await?;
    /// let batch = limiter.acquire_with(Cost::tokens(2_000), AcquireOptions::class(1)).await?;
    /// assert_eq!(batch.lane(), Some(1));
    /// let status = limiter.status().await?;
    /// assert!((status.classes[0].share - 0.8).abs() < 1e-9);
    /// # limiter.settle(batch, Cost::tokens(2_000)).await?;
    /// # Ok(()) }
    /// ```
    pub fn class_shares(mut self, shares: Vec<ClassShare>) -> Self {
        self.shares = Some(shares);
        self
    }

    /// What [`Builder::build`] does when the store records other limits for
    /// this key (another limiter, maybe in another process, was built with
    /// them). `false`, the default: refuse with `Error::LimitsConflict`.
    /// `true`: record these limits instead and log a warning; for
    /// applications that change a key's limits on purpose (a new
    /// configuration, a live change) and rebuild every limiter of the key.
    pub fn replace_stored_limits(mut self, replace: bool) -> Self {
        self.replace_stored_limits = replace;
        self
    }

    /// Validates everything, connects to the store and checks that no other
    /// limiter of the key has other limits.
    ///
    /// The check: on a Redis store (from [`Builder::url`] or
    /// [`Builder::store`]) and on the process memory store of `memory://`,
    /// the key's limits ([`Limits::fingerprint`]) are recorded with it, in
    /// Redis at `<prefix>:{<key>}:f` for [`FINGERPRINT_TTL`](crate::FINGERPRINT_TTL),
    /// in memory as long as a limiter with them lives. A limiter with other
    /// limits fails with `Error::LimitsConflict`, naming both, unless
    /// [`Builder::replace_stored_limits`]. Not checked: limiters built without
    /// `build` ([`RateLimiter::with_store`], [`RateLimiter::memory`]), other
    /// memory stores, and lazy Redis stores ([`RedisOptions::lazy`]); a Redis
    /// that cannot be asked skips the check with a warning.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::{Error, Limits, RateLimiter};
    ///
    /// let a = RateLimiter::new("memory://", "doc/conflict", Limits::new().rpm(10)).await.unwrap();
    /// let b = RateLimiter::new("memory://", "doc/conflict", Limits::new().rpm(20)).await;
    /// assert!(matches!(b, Err(Error::LimitsConflict { .. })));
    /// # drop(a);
    /// # }
    /// ```
    pub async fn build(self) -> Result<RateLimiter, Error> {
        let mut check = true;
        let mut process_memory = false;
        let store = match (&self.store, &self.url) {
            (Some(store), _) => store.clone(),
            (None, Some(url)) => match url_scheme(url) {
                Some("memory") if url == "memory://" => {
                    process_memory = true;
                    Store::process_memory()
                }
                Some("redis" | "rediss" | "redis+cluster" | "rediss+cluster") => {
                    check = !self.redis_options.lazy;
                    Store::Redis(
                        RedisStore::connect(url, self.redis_options.clone())
                            .await
                            .map_err(Error::Store)?,
                    )
                }
                _ => {
                    return Err(Error::Config {
                        field: "url",
                        value: format!("{:?}", redacted(url)),
                        reason: URL_FORMS,
                    })
                }
            },
            (None, None) => Store::memory(),
        };
        let replace = self.replace_stored_limits;
        let inner = self.build_inner(store)?;
        match &inner.store {
            Store::Memory(_) if process_memory => fingerprint::check_process(&inner, replace)?,
            Store::Redis(redis) if check => {
                fingerprint::check_redis(redis, &inner, replace).await?
            }
            _ => {}
        }
        Ok(RateLimiter::from_inner(inner))
    }

    /// Validates everything and builds the limiter at once on
    /// [`Builder::store`] (a fresh memory store without one): nothing is
    /// connected and the limits recorded for the key are neither checked
    /// nor replaced (see [`Builder::build`]). For an application that owns
    /// its keys, builds many limiters, and rebuilds one whenever its limits
    /// change: the limits travel with every call, so the new ones apply at
    /// the next call. A [`Builder::url`] is ignored.
    ///
    /// ```
    /// use tollgate::{Limits, RateLimiter, Store};
    ///
    /// let store = Store::memory();
    /// let a = RateLimiter::builder("doc/unchecked").store(store.clone()).limits(Limits::new().rpm(10)).build_unchecked().unwrap();
    /// let b = RateLimiter::builder("doc/unchecked").store(store).limits(Limits::new().rpm(20)).build_unchecked().unwrap();
    /// assert_eq!(a.key(), b.key());
    /// ```
    pub fn build_unchecked(self) -> Result<RateLimiter, Error> {
        let store = self.store.clone().unwrap_or_else(Store::memory);
        self.build_with(store)
    }

    /// Validates everything; for stores that need no connecting.
    pub(crate) fn build_with(self, store: Store) -> Result<RateLimiter, Error> {
        self.build_inner(store).map(RateLimiter::from_inner)
    }

    fn build_inner(self, store: Store) -> Result<Arc<Inner>, Error> {
        let policy = self.limits.validate().map_err(|source| Error::Limits {
            key: self.key.clone(),
            source,
        })?;
        self.retry.validate()?;
        self.outage.validate()?;
        if self.key.is_empty() {
            return Err(Error::Config {
                field: "key",
                value: "\"\"".into(),
                reason: "a non-empty name such as \"openai/gpt-4o\"",
            });
        }
        if self
            .advance_check
            .is_some_and(|d| d < Duration::from_millis(1))
        {
            return Err(Error::Config {
                field: "advance_check",
                value: format!("{:?}", self.advance_check),
                reason: "at least 1 ms, or None to sleep straight to the slot",
            });
        }
        if self.classes.is_empty() || self.classes.len() > MAX_CLASSES {
            return Err(Error::Config {
                field: "priority_classes",
                value: self.classes.len().to_string(),
                reason: "between 1 and 16 classes (tollgate_core::MAX_CLASSES)",
            });
        }
        let lanes = match self.shares {
            None => None,
            Some(shares) => {
                if shares.len() != self.classes.len() {
                    return Err(Error::Config {
                        field: "class_shares",
                        value: format!(
                            "{} shares for {} priority classes",
                            shares.len(),
                            self.classes.len()
                        ),
                        reason: "one share per priority class, in the same order",
                    });
                }
                let shares = Shares::new(shares).map_err(|source| Error::Shares {
                    key: self.key.clone(),
                    source,
                })?;
                Some(Lanes::new(&self.key, &policy, shares))
            }
        };
        // With shares, each class fills its own lane whole and headroom
        // only orders borrowing, so class 0 need not be the top one.
        let shared = lanes.is_some();
        for (i, c) in self.classes.iter().enumerate() {
            let top = i == 0 && !shared;
            if !(c.headroom > 0.0 && c.headroom <= 1.0) || (top && c.headroom != 1.0) {
                return Err(Error::Config {
                    field: "priority_classes.headroom",
                    value: c.headroom.to_string(),
                    reason: "in (0, 1], and exactly 1.0 for class 0 (unless class_shares are set)",
                });
            }
        }
        if self
            .lease
            .is_some_and(|l| l < MAX_ADVANCE_CHECK * 5 || l > Duration::from_secs(3600))
        {
            return Err(Error::Config {
                field: "lease",
                value: format!("{:?}", self.lease),
                reason: "between 5 × MAX_ADVANCE_CHECK (500 ms) and 1 h, or None",
            });
        }
        // The margin must leave every class a tolerance of its own.
        let lowest = self.classes.iter().map(|c| c.headroom).fold(1.0, f64::min);
        if self.margin.as_secs_f64() >= policy.tau * lowest {
            return Err(Error::Config {
                field: "margin",
                value: format!("{:?}", self.margin),
                reason: "shorter than the lowest class's share of burst × window",
            });
        }
        let local =
            match self.outage {
                OutagePolicy::Local { share } => Some(LocalFallback {
                    store: MemoryStore::new(),
                    policy: self.limits.scaled(share).validate().map_err(|source| {
                        Error::Limits {
                            key: self.key.clone(),
                            source,
                        }
                    })?,
                }),
                _ => None,
            };
        Ok(Arc::new(Inner {
            key: self.key.into(),
            store,
            policy,
            retry: self.retry,
            outage: self.outage,
            max_wait: self.max_wait,
            max_queue: self.max_queue,
            advance_check: self.advance_check,
            refunded: tokio::sync::Notify::new(),
            classes: self.classes,
            margin: self.margin.as_secs_f64(),
            lease: self.lease,
            local,
            stats: Default::default(),
            lanes: lanes.map(LiveLanes::new),
        }))
    }
}
