//! Spend shared through Redis: one integer counter per client and day and per
//! client and month (nano-USD), reserved by a Lua script (`reserve.lua`) and
//! settled by another (`settle.lua`: `INCRBY` of the difference, expiry
//! renewed). Both keys of a client share the hash tag `{client}`, so they stay
//! in one Cluster slot. They travel over the limit store's own connection.
//!
//! Every call has a timeout ([`RedisBudgets::new`]) and both scripts are
//! idempotent through a hold key per request (`…:h:<hold id>`), so a call
//! that timed out is simply sent again: a settlement is retried until it is
//! applied (for up to [`SETTLE_RETRY_WINDOW`]) and is never counted twice,
//! and a reservation whose answer never came is cancelled, so it cannot
//! keep budget nobody uses.

use std::time::{Duration, Instant};

use tollgate::store::RedisConnection;

use super::{BudgetError, BudgetLimits, Hold, Period, Spend};

const RESERVE: &str = include_str!("reserve.lua");
const SETTLE: &str = include_str!("settle.lua");
const DAY_TTL_SECS: u64 = 3 * 86_400;
const MONTH_TTL_SECS: u64 = 62 * 86_400;
/// How long a hold key lives: longer than any request (the upstream timeout
/// is at most 600 s by default). A request still running after it is
/// charged its estimate, never less.
const HOLD_TTL_SECS: u64 = 3_600;
/// How long a settled (or cancelled) hold stays marked, so that a retry or
/// a late reservation finds it: longer than [`SETTLE_RETRY_WINDOW`].
const SETTLED_TTL_SECS: u64 = 300;
/// How long a settlement (or the cancellation of a reservation that got no
/// answer) is retried before it is given up and logged.
pub const SETTLE_RETRY_WINDOW: Duration = Duration::from_secs(120);
/// Tries of one reservation within its caller's wait.
const RESERVE_TRIES: u32 = 2;

/// Spend per client in Redis.
#[derive(Clone)]
pub struct RedisBudgets {
    conn: RedisConnection,
    reserve: redis::Script,
    settle: redis::Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisBudgets")
    }
}

fn keys(client: &str, p: Period) -> (String, String) {
    (
        format!("tollgate:spend:{{{client}}}:d:{}", p.day),
        format!("tollgate:spend:{{{client}}}:m:{}", p.month),
    )
}

fn hold_key(hold: &Hold) -> String {
    format!("tollgate:spend:{{{}}}:h:{:032x}", hold.client, hold.id)
}

fn store_err(e: redis::RedisError) -> BudgetError {
    BudgetError::Store(e.to_string())
}

impl RedisBudgets {
    /// Spend on an open connection (standalone or Cluster); each store call
    /// waits at most `timeout` for its answer.
    pub fn new(conn: RedisConnection, timeout: Duration) -> Self {
        RedisBudgets {
            conn,
            reserve: redis::Script::new(RESERVE),
            settle: redis::Script::new(SETTLE),
            timeout,
        }
    }

    /// Runs one store call with the timeout.
    async fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BudgetError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(store_err),
            Err(_) => Err(BudgetError::Store(format!(
                "{what} timed out after {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    pub(crate) async fn reserve(
        &self,
        hold: Hold,
        limits: BudgetLimits,
    ) -> Result<Hold, BudgetError> {
        let (day, month) = keys(&hold.client, hold.period);
        let hkey = hold_key(&hold);
        let mut last = None;
        for _ in 0..RESERVE_TRIES {
            let mut conn = self.conn.clone();
            let mut inv = self.reserve.key(&day);
            inv.key(&month)
                .key(&hkey)
                .arg(hold.amount)
                .arg(limits.daily.unwrap_or(-1))
                .arg(limits.monthly.unwrap_or(-1))
                .arg(DAY_TTL_SECS)
                .arg(MONTH_TTL_SECS)
                .arg(HOLD_TTL_SECS);
            let called = self
                .call("reserving spend", inv.invoke_async(&mut conn))
                .await;
            let (status, day_spent, month_spent): (i64, i64, i64) = match called {
                Ok(r) => r,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            return match status {
                0 => Ok(hold),
                1 => Err(BudgetError::Daily {
                    spent: day_spent,
                    limit: limits.daily.unwrap_or(0),
                    needed: hold.amount,
                }),
                2 => Err(BudgetError::Monthly {
                    spent: month_spent,
                    limit: limits.monthly.unwrap_or(0),
                    needed: hold.amount,
                }),
                _ => Err(BudgetError::Store(
                    "the reservation was cancelled before it was made".into(),
                )),
            };
        }
        // No answer: the reservation may still have been made. Cancel it in
        // the background (idempotent), so it keeps no budget.
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.adjust(&hold, 0).await;
        });
        Err(last.unwrap_or_else(|| BudgetError::Store("no try made".into())))
    }

    /// Settles `hold` at `actual`, retrying a call that failed or timed out
    /// for up to [`SETTLE_RETRY_WINDOW`]: the script applies it once.
    pub(crate) async fn adjust(&self, hold: &Hold, actual: i64) -> Result<(), BudgetError> {
        if hold.reserved && actual == hold.amount && hold.amount == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.settle_once(hold, actual).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() + backoff >= SETTLE_RETRY_WINDOW => return Err(e),
                Err(e) => {
                    tracing::debug!(client = %hold.client, error = %e, "spend settlement failed; retrying");
                    let jitter = rand::random::<f64>() * 0.5 + 0.75;
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn settle_once(&self, hold: &Hold, actual: i64) -> Result<(), BudgetError> {
        let (day, month) = keys(&hold.client, hold.period);
        let mut conn = self.conn.clone();
        let mut inv = self.settle.key(&day);
        inv.key(&month)
            .key(hold_key(hold))
            .arg(actual)
            .arg(u8::from(hold.reserved))
            .arg(DAY_TTL_SECS)
            .arg(MONTH_TTL_SECS)
            .arg(SETTLED_TTL_SECS);
        self.call("settling spend", inv.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    pub(crate) async fn spend(&self, client: &str, p: Period) -> Result<Spend, BudgetError> {
        let (day, month) = keys(client, p);
        let mut conn = self.conn.clone();
        let (today, month): (Option<i64>, Option<i64>) = self
            .call(
                "reading spend",
                redis::pipe().get(&day).get(&month).query_async(&mut conn),
            )
            .await?;
        Ok(Spend {
            today: today.unwrap_or(0),
            month: month.unwrap_or(0),
        })
    }
}
