//! Spend shared through Redis: one integer counter per client and day and per
//! client and month (nano-USD), reserved by a Lua script (`reserve.lua`) and
//! settled by another (`settle.lua`: `INCRBY` of the difference, expiry
//! renewed). Both keys of a client share the hash tag `{client}`, so they stay
//! in one Cluster slot. They travel over the limit store's own connection.
//! Settlements that come together travel together (`batch.rs`): one call of
//! `settle_many.lua` applies many.
//!
//! Every call has a timeout ([`RedisBudgets::new`]) and both scripts are
//! idempotent through a hold key per request (`…:h:<hold id>`), so a call
//! that timed out is simply sent again: a settlement is retried until it is
//! applied (for up to [`SETTLE_RETRY_WINDOW`]) and is never counted twice,
//! and a reservation whose answer never came is cancelled, so it cannot
//! keep budget nobody uses.

use std::time::{Duration, Instant};

use tollgate::store::{RedisConnection, RedisStore};

use super::batch::Lanes;
use super::{BudgetError, BudgetLimits, Hold, Level, Period, Spend};

pub(crate) const RESERVE: &str = include_str!("reserve.lua");
/// `settle.lua` as a function of its keys and arguments, run by
/// `settle_many.lua` once per settlement of a call.
const SETTLE: &str = concat!(
    "local function settle_one(KEYS, ARGV)\n",
    include_str!("settle.lua"),
    "\nend\n",
    include_str!("settle_many.lua")
);
const SEED: &str = include_str!("seed.lua");
const DAY_TTL_SECS: u64 = 3 * 86_400;
const MONTH_TTL_SECS: u64 = 62 * 86_400;
/// How long a hold key lives at least; longer when the configuration lets a
/// request live longer (see [`hold_lifetime`]). A request still running
/// after its hold expired would be charged its estimate.
const HOLD_TTL_SECS: u64 = 3_600;

/// How long a hold key must live for a request that may take up to
/// `longest_request` (its wait, any upstream pause and its upstream call):
/// past the request's end and every retry of its settlement, and never
/// less than [`HOLD_TTL_SECS`].
pub fn hold_lifetime(longest_request: Duration) -> Duration {
    let needed = longest_request + SETTLE_RETRY_WINDOW + Duration::from_secs(600);
    needed.max(Duration::from_secs(HOLD_TTL_SECS))
}
/// How long a settled mark lives (a budget-free client's settlement, or the
/// cancellation of a reservation that got no answer), so that a retry or a
/// late reservation finds it: longer than [`SETTLE_RETRY_WINDOW`]. A
/// reserved hold's settlement deletes the hold instead (its retry then
/// finds nothing to settle).
const SETTLED_TTL_SECS: u64 = 150;
/// How long a settlement (or the cancellation of a reservation that got no
/// answer) is retried before it is given up and logged.
pub const SETTLE_RETRY_WINDOW: Duration = Duration::from_secs(120);
/// Tries of one reservation within its caller's wait.
const RESERVE_TRIES: u32 = 2;
/// How many times `store.timeout_ms` a settlement's try waits for its
/// answer. Settlements run after the answer went out, so a long wait costs
/// no client anything; a burst that finishes at once sends thousands of them
/// together, and a short timeout would only make a healthy store look down
/// and retry for nothing.
const SETTLE_TIMEOUT_FACTOR: u32 = 5;

/// Spend per client in Redis.
#[derive(Clone)]
pub struct RedisBudgets {
    conn: RedisConnection,
    reserve: redis::Script,
    settle: redis::Script,
    seed: redis::Script,
    /// Settlements waiting to travel together.
    settling: Lanes,
    /// Per account, the last month its spend was found rebuilt from the
    /// ledger (a reservation went past the seed mark): only such accounts
    /// are reserved inside the admission's joint call (`gate.rs`), whose
    /// gate cannot seed.
    seeded: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<String, i64>>>,
    /// Where spend is rebuilt from when the counters were lost.
    ledger: Option<std::sync::Arc<crate::ledger::UsageLedger>>,
    timeout: Duration,
    settle_timeout: Duration,
    /// How long a hold key lives (see [`hold_lifetime`]).
    hold_ttl: Duration,
    /// The limit store whose connection the calls travel on and whose
    /// probes judge a call that passed its timeout (see [`RedisBudgets::new`]).
    store: RedisStore,
}

impl std::fmt::Debug for RedisBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisBudgets")
    }
}

/// Where `level`'s `id` keeps its spend: a client's keys as before the
/// hierarchy (`tollgate:spend:{acme}`), an organisation's and a key's under
/// a prefix of their own, so no id of one level meets another's.
fn account(level: Level, id: &str) -> String {
    match level {
        Level::Client => format!("tollgate:spend:{{{id}}}"),
        Level::Org => format!("tollgate:spend:org:{{{id}}}"),
        Level::Key => format!("tollgate:spend:key:{{{id}}}"),
    }
}

fn keys(level: Level, id: &str, p: Period) -> (String, String) {
    let a = account(level, id);
    (format!("{a}:d:{}", p.day), format!("{a}:m:{}", p.month))
}

fn seed_key(level: Level, id: &str, p: Period) -> String {
    format!("{}:seeded:{}", account(level, id), p.month)
}

fn hold_key(hold: &Hold) -> String {
    format!("{}:h:{:032x}", account(hold.level, &hold.client), hold.id)
}

impl RedisBudgets {
    /// Spend on the Redis of the limit store `store`, on its connection
    /// (standalone or Cluster); each call on a request's way in (a
    /// reservation, a spend read) waits at most `timeout` for its answer, a
    /// settlement's try [`SETTLE_TIMEOUT_FACTOR`] times that. A call that
    /// passed its timeout is judged as `store` judges its own
    /// ([`RedisStore::await_command`]): it fails only when Redis also left
    /// `store`'s probes unanswered, not while it only waits in this process.
    pub fn new(store: RedisStore, timeout: Duration) -> Self {
        RedisBudgets {
            conn: store.connection().clone(),
            reserve: redis::Script::new(RESERVE),
            settle: redis::Script::new(SETTLE),
            seed: redis::Script::new(SEED),
            settling: Lanes::default(),
            seeded: Default::default(),
            ledger: None,
            timeout,
            settle_timeout: timeout * SETTLE_TIMEOUT_FACTOR,
            hold_ttl: Duration::from_secs(HOLD_TTL_SECS),
            store,
        }
    }

    /// Holds that live `ttl` (see [`hold_lifetime`]) instead of the default.
    pub fn with_hold_ttl(mut self, ttl: Duration) -> Self {
        self.hold_ttl = ttl;
        self
    }

    /// Rebuilds spend from `ledger` whenever the store lost it (a Redis
    /// restarted empty, a new month): a reservation first finds the month's
    /// seed mark, and without it the client's day and month are raised to
    /// what the ledger holds before anything is reserved.
    pub fn with_ledger(mut self, ledger: std::sync::Arc<crate::ledger::UsageLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Seeds `client`'s counters of `p` from the ledger (idempotent: the
    /// first seed of a month wins, later ones change nothing).
    async fn seed_from_ledger(
        &self,
        level: Level,
        client: &str,
        p: Period,
    ) -> Result<(), BudgetError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let spend = ledger.spend_of(level, client, p).await.map_err(|e| {
            BudgetError::Store(format!(
                "spend must be rebuilt from the ledger after the store lost it, and {e}"
            ))
        })?;
        let (day, month) = keys(level, client, p);
        let mut conn = self.conn.clone();
        let mut inv = self.seed.key(&day);
        inv.key(&month)
            .key(seed_key(level, client, p))
            .arg(spend.today)
            .arg(spend.month)
            .arg(DAY_TTL_SECS)
            .arg(MONTH_TTL_SECS);
        let seeded: i64 = self
            .call("seeding spend", self.timeout, inv.invoke_async(&mut conn))
            .await?;
        if seeded == 1 {
            tracing::info!(
                level = level.name(),
                id = client,
                today_nano_usd = spend.today,
                month_nano_usd = spend.month,
                "spend rebuilt from the ledger"
            );
        }
        Ok(())
    }

    /// Runs one store call under `timeout`, judged by the limit store's
    /// probes ([`RedisStore::await_command`]: a call that only waits in this
    /// process behind a burst, while Redis answers, keeps waiting).
    async fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BudgetError> {
        self.store
            .await_command(what, timeout, f)
            .await
            .map_err(|e| BudgetError::Store(e.to_string()))
    }

    /// Whether `hold`'s account needs no rebuilding from the ledger this
    /// month, as far as this process saw (no ledger, or a reservation of
    /// this month went past the seed mark).
    pub(crate) fn seeded(&self, hold: &Hold) -> bool {
        self.ledger.is_none()
            || self.seeded.lock().get(&account(hold.level, &hold.client))
                == Some(&hold.period.month)
    }

    /// Notes that `hold`'s month is rebuilt (see [`RedisBudgets::seeded`]).
    pub(crate) fn mark_seeded(&self, hold: &Hold) {
        if self.ledger.is_some() {
            self.seeded
                .lock()
                .insert(account(hold.level, &hold.client), hold.period.month);
        }
    }

    /// The keys and arguments of `reserve.lua` reserving `hold` against
    /// `limits` (for the joint admission's gate, see `gate.rs`).
    pub(crate) fn reserve_parts(
        &self,
        hold: &Hold,
        limits: BudgetLimits,
        keys_out: &mut Vec<String>,
        args_out: &mut Vec<Vec<u8>>,
    ) {
        let (day, month) = keys(hold.level, &hold.client, hold.period);
        keys_out.extend([
            day,
            month,
            hold_key(hold),
            seed_key(hold.level, &hold.client, hold.period),
        ]);
        let args = [
            hold.amount,
            limits.daily.unwrap_or(-1),
            limits.monthly.unwrap_or(-1),
            DAY_TTL_SECS as i64,
            MONTH_TTL_SECS as i64,
            self.hold_ttl.as_secs() as i64,
            i64::from(self.ledger.is_some()),
        ];
        args_out.extend(args.iter().map(|a| a.to_string().into_bytes()));
    }

    pub(crate) async fn reserve(
        &self,
        hold: Hold,
        limits: BudgetLimits,
    ) -> Result<Hold, BudgetError> {
        let (day, month) = keys(hold.level, &hold.client, hold.period);
        let hkey = hold_key(&hold);
        let seed = seed_key(hold.level, &hold.client, hold.period);
        let mut last = None;
        let mut seeded = false;
        let mut tries = 0;
        while tries < RESERVE_TRIES {
            tries += 1;
            let mut conn = self.conn.clone();
            let mut inv = self.reserve.key(&day);
            inv.key(&month)
                .key(&hkey)
                .key(&seed)
                .arg(hold.amount)
                .arg(limits.daily.unwrap_or(-1))
                .arg(limits.monthly.unwrap_or(-1))
                .arg(DAY_TTL_SECS)
                .arg(MONTH_TTL_SECS)
                .arg(self.hold_ttl.as_secs())
                .arg(u8::from(self.ledger.is_some()));
            let called = self
                .call("reserving spend", self.timeout, inv.invoke_async(&mut conn))
                .await;
            let (status, day_spent, month_spent): (i64, i64, i64) = match called {
                Ok(r) => r,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if status == 4 && !seeded {
                // Not counted as a try: the store answered.
                self.seed_from_ledger(hold.level, &hold.client, hold.period)
                    .await?;
                seeded = true;
                tries -= 1;
                continue;
            }
            if status != 4 {
                self.mark_seeded(&hold);
            }
            return match status {
                0 => Ok(hold),
                1 => Err(BudgetError::Daily {
                    level: hold.level,
                    spent: day_spent,
                    limit: limits.daily.unwrap_or(0),
                    needed: hold.amount,
                }),
                2 => Err(BudgetError::Monthly {
                    level: hold.level,
                    spent: month_spent,
                    limit: limits.monthly.unwrap_or(0),
                    needed: hold.amount,
                }),
                _ => Err(BudgetError::Store(
                    "the reservation was cancelled before it was made".into(),
                )),
            };
        }
        // No answer: the reservation may still have been made. Cancel it
        // (idempotent, retried in the background), so it keeps no budget.
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.adjust(&hold, 0).await;
        });
        Err(last.unwrap_or_else(|| BudgetError::Store("no try made".into())))
    }

    /// Settles `hold` at `actual`. When the first try fails or times out,
    /// it is retried in the background for up to [`SETTLE_RETRY_WINDOW`]
    /// (the script applies it once however often it arrives) and the first
    /// error is returned, so that the caller never waits for an outage.
    pub(crate) async fn adjust(&self, hold: &Hold, actual: i64) -> Result<(), BudgetError> {
        if actual == 0 && (hold.amount == 0 || !hold.reserved) {
            // Nothing was charged and nothing is owed.
            return Ok(());
        }
        if actual == 0 {
            // A cancellation (the request was refused or never went
            // upstream): it gives budget back, so the refusal need not wait
            // for it.
            let (this, hold) = (self.clone(), hold.clone());
            tokio::spawn(async move {
                if this.settle_once(&hold, 0).await.is_err() {
                    this.retry(&hold, 0).await;
                }
            });
            return Ok(());
        }
        let Err(first) = self.settle_once(hold, actual).await else {
            return Ok(());
        };
        let (this, hold) = (self.clone(), hold.clone());
        tokio::spawn(async move { this.retry(&hold, actual).await });
        Err(BudgetError::Store(format!(
            "{first}; retrying in the background"
        )))
    }

    /// Cancels a reserved hold and waits for the store's answer; a try that
    /// fails is retried in the background as a settlement is.
    pub(crate) async fn cancel(&self, hold: &Hold) {
        if !hold.reserved || hold.amount == 0 {
            return;
        }
        if self.settle_once(hold, 0).await.is_err() {
            let (this, hold) = (self.clone(), hold.clone());
            tokio::spawn(async move { this.retry(&hold, 0).await });
        }
    }

    /// Retries a settlement with backoff until it is applied or
    /// [`SETTLE_RETRY_WINDOW`] has passed.
    async fn retry(&self, hold: &Hold, actual: i64) {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let jitter = rand::random::<f64>() * 0.5 + 0.75;
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            match self.settle_once(hold, actual).await {
                Ok(()) => {
                    tracing::info!(client = %hold.client, tries_for_ms = started.elapsed().as_millis() as u64, "spend settled after retries");
                    return;
                }
                Err(e) if started.elapsed() + backoff >= SETTLE_RETRY_WINDOW => {
                    tracing::error!(client = %hold.client, error = %e, "could not settle spend within the retry window; the reservation stays charged");
                    return;
                }
                Err(_) => backoff = (backoff * 2).min(Duration::from_secs(2)),
            }
        }
    }

    /// One try of settling `hold` at `actual`: it joins the settlements
    /// waiting on its lane and is answered with their call's outcome. A
    /// settlement (`actual` > 0) that finds its lane idle waits a moment
    /// for company; a cancellation goes at once.
    async fn settle_once(&self, hold: &Hold, actual: i64) -> Result<(), BudgetError> {
        let lane = match self.conn {
            // A Cluster runs a script's keys in one slot: one lane per
            // account (its hash tag).
            RedisConnection::Cluster(_) => account(hold.level, &hold.client),
            _ => String::new(),
        };
        let (answer, first) = self.settling.push(&lane, hold.clone(), actual);
        if first {
            let this = self.clone();
            tokio::spawn(
                self.settling
                    .clone()
                    .sender(lane, actual > 0, move |batch| {
                        let this = this.clone();
                        async move { this.settle_batch(&batch).await }
                    }),
            );
        }
        answer.await.unwrap_or_else(|_| {
            Err(BudgetError::Store(
                "the call carrying the settlement was dropped (its runtime shut down)".into(),
            ))
        })
    }

    /// Settles every `(hold, actual)` of `batch` in one call of
    /// `settle_many.lua`, in order.
    async fn settle_batch(&self, batch: &[(Hold, i64)]) -> Result<(), BudgetError> {
        let mut inv = self.settle.prepare_invoke();
        for (hold, actual) in batch {
            let (day, month) = keys(hold.level, &hold.client, hold.period);
            inv.key(day)
                .key(month)
                .key(hold_key(hold))
                .arg(*actual)
                .arg(u8::from(hold.reserved))
                .arg(DAY_TTL_SECS)
                .arg(MONTH_TTL_SECS)
                .arg(SETTLED_TTL_SECS);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<i64> = self
            .call(
                "settling spend",
                self.settle_timeout,
                inv.invoke_async(&mut conn),
            )
            .await?;
        if replies.len() != batch.len() {
            return Err(BudgetError::Store(format!(
                "settle_many.lua answered {} settlements of {}",
                replies.len(),
                batch.len()
            )));
        }
        Ok(())
    }

    pub(crate) async fn spend(
        &self,
        level: Level,
        id: &str,
        p: Period,
    ) -> Result<Spend, BudgetError> {
        let (day, month) = keys(level, id, p);
        let mut conn = self.conn.clone();
        let (today, month): (Option<i64>, Option<i64>) = self
            .call(
                "reading spend",
                self.timeout,
                redis::pipe().get(&day).get(&month).query_async(&mut conn),
            )
            .await?;
        Ok(Spend {
            today: today.unwrap_or(0),
            month: month.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    #[test]
    fn a_hold_outlives_the_longest_request_and_its_settlement_retries() {
        // The default configuration: an hour.
        let default = Duration::from_secs(600 + 60);
        assert_eq!(hold_lifetime(default), Duration::from_secs(HOLD_TTL_SECS));
        // A day-long upstream timeout: the hold lives past it and past
        // every retry of the settlement.
        let day = Duration::from_secs(86_400 + 600 + 60);
        assert!(hold_lifetime(day) > day + SETTLE_RETRY_WINDOW);
    }
}
