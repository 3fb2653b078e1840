//! Spend shared through Redis: one integer counter per client and day and per
//! client and month (nano-USD), reserved by a Lua script (`reserve.lua`) and
//! settled by another (`settle.lua`: `INCRBY` of the difference, expiry
//! renewed). Both keys of a client share the hash tag `{client}`, so they stay
//! in one Cluster slot. They travel over the limit store's own connection.

use tollgate::store::RedisConnection;

use super::{BudgetError, BudgetLimits, Hold, Period, Spend};

const RESERVE: &str = include_str!("reserve.lua");
const SETTLE: &str = include_str!("settle.lua");
const DAY_TTL_SECS: u64 = 3 * 86_400;
const MONTH_TTL_SECS: u64 = 62 * 86_400;

/// Spend per client in Redis.
#[derive(Clone)]
pub struct RedisBudgets {
    conn: RedisConnection,
    reserve: redis::Script,
    settle: redis::Script,
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

fn store_err(e: redis::RedisError) -> BudgetError {
    BudgetError::Store(e.to_string())
}

impl RedisBudgets {
    /// Spend on an open connection (standalone or Cluster).
    pub fn new(conn: RedisConnection) -> Self {
        RedisBudgets {
            conn,
            reserve: redis::Script::new(RESERVE),
            settle: redis::Script::new(SETTLE),
        }
    }

    pub(crate) async fn reserve(
        &self,
        client: &str,
        p: Period,
        amount: i64,
        limits: BudgetLimits,
    ) -> Result<Hold, BudgetError> {
        let (day, month) = keys(client, p);
        let mut conn = self.conn.clone();
        let (status, day_spent, month_spent): (i64, i64, i64) = self
            .reserve
            .key(&day)
            .key(&month)
            .arg(amount)
            .arg(limits.daily.unwrap_or(-1))
            .arg(limits.monthly.unwrap_or(-1))
            .arg(DAY_TTL_SECS)
            .arg(MONTH_TTL_SECS)
            .invoke_async(&mut conn)
            .await
            .map_err(store_err)?;
        match status {
            0 => Ok(Hold {
                client: client.to_string(),
                period: p,
                amount,
            }),
            1 => Err(BudgetError::Daily {
                spent: day_spent,
                limit: limits.daily.unwrap_or(0),
                needed: amount,
            }),
            _ => Err(BudgetError::Monthly {
                spent: month_spent,
                limit: limits.monthly.unwrap_or(0),
                needed: amount,
            }),
        }
    }

    pub(crate) async fn adjust(&self, hold: &Hold, actual: i64) -> Result<(), BudgetError> {
        let delta = actual - hold.amount;
        if delta == 0 {
            return Ok(());
        }
        let (day, month) = keys(&hold.client, hold.period);
        let mut conn = self.conn.clone();
        self.settle
            .key(&day)
            .key(&month)
            .arg(delta)
            .arg(DAY_TTL_SECS)
            .arg(MONTH_TTL_SECS)
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(store_err)
    }

    pub(crate) async fn spend(&self, client: &str, p: Period) -> Result<Spend, BudgetError> {
        let (day, month) = keys(client, p);
        let mut conn = self.conn.clone();
        let (today, month): (Option<i64>, Option<i64>) = redis::pipe()
            .get(&day)
            .get(&month)
            .query_async(&mut conn)
            .await
            .map_err(store_err)?;
        Ok(Spend {
            today: today.unwrap_or(0),
            month: month.unwrap_or(0),
        })
    }
}
