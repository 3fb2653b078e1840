//! Spend per client, organisation and issued key, and their daily and
//! monthly budgets (the hierarchy's levels: [`Level`]).
//!
//! A request's estimated cost is reserved against what remains of today's and
//! this month's budget in one atomic step (a mutex in memory, a Lua script in
//! Redis), so concurrent requests cannot together overspend: the most a
//! budget can be exceeded by is what the requests in flight use beyond their
//! estimates. Settling replaces the estimate with the actual cost.
//!
//! A client whose tier has no budget reserves nothing: its spend is only
//! recorded, when each request settles.
//!
//! Money is counted in integer nano-USD, so sums are exact. Days and months
//! are UTC, on the gateway's clock.

mod batch;
pub(crate) mod gate;
mod memory;
mod period;
mod redis;

pub use self::memory::MemoryBudgets;
pub(crate) use self::period::civil_from_days;
pub(crate) use self::period::days_from_civil;
pub use self::period::Period;
pub use self::redis::{hold_lifetime, RedisBudgets, SETTLE_RETRY_WINDOW};
pub use crate::model::Price;

/// Nano-USD in one USD.
pub const NANO_PER_USD: f64 = 1e9;

/// USD as nano-USD (rounded up).
pub fn usd_to_nano(usd: f64) -> i64 {
    (usd * NANO_PER_USD).ceil() as i64
}

/// Nano-USD as USD.
pub fn nano_to_usd(nano: i64) -> f64 {
    nano as f64 / NANO_PER_USD
}

/// A client's budgets in nano-USD (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BudgetLimits {
    /// Per UTC day.
    pub daily: Option<i64>,
    /// Per UTC calendar month.
    pub monthly: Option<i64>,
}

/// A level of the hierarchy whose spend is counted and may have budgets:
/// an organisation holds clients, a client holds keys. Each level's spend
/// is kept apart (its own counters) and reserved the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// An organisation (`[orgs.ID]`, `POST /admin/orgs`).
    Org,
    /// A client.
    Client,
    /// An issued key (`POST /admin/clients/{id}/keys`).
    Key,
}

impl Level {
    /// Its name in refusals, headers and ledger rows.
    pub fn name(self) -> &'static str {
        match self {
            Level::Org => "organisation",
            Level::Client => "client",
            Level::Key => "key",
        }
    }
}

/// A reserved estimate, to be settled with the actual cost.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "settle the hold with the actual cost"]
pub struct Hold {
    /// Unique per request: what makes settling it again change nothing.
    pub id: u128,
    /// Whether anything was reserved (a client without budgets reserves
    /// nothing: its settlement adds the whole cost).
    pub reserved: bool,
    /// The id of the client (or organisation, or key: see `level`) whose
    /// spend it is.
    pub client: String,
    /// The level `client` is of.
    pub level: Level,
    /// The day and month the estimate was charged to.
    pub period: Period,
    /// Nano-USD reserved.
    pub amount: i64,
}

/// A hold of `amount` at `level`'s `id` for today, not reserved yet: it
/// reserves the amount when the level has budgets, else nothing (and its
/// settlement adds the whole cost).
pub(crate) fn new_hold(level: Level, id: &str, amount: i64, limits: BudgetLimits) -> Hold {
    let reserved = limits.daily.is_some() || limits.monthly.is_some();
    Hold {
        id: rand::random(),
        reserved,
        client: id.to_string(),
        level,
        period: Period::now(),
        amount: if reserved { amount } else { 0 },
    }
}

/// A client's spend so far, nano-USD.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spend {
    /// Today (UTC).
    pub today: i64,
    /// This month (UTC).
    pub month: i64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// Today's budget cannot take the estimate.
    #[error("the {}'s daily budget of ${:.4} would be exceeded: ${:.4} spent or reserved today, this request may cost up to ${:.4}; it resets at 00:00 UTC", level.name(), nano_to_usd(*limit), nano_to_usd(*spent), nano_to_usd(*needed))]
    Daily {
        /// The level whose budget it is.
        level: Level,
        /// Spent and reserved today.
        spent: i64,
        /// The budget.
        limit: i64,
        /// The request's estimate.
        needed: i64,
    },
    /// This month's budget cannot take the estimate.
    #[error("the {}'s monthly budget of ${:.4} would be exceeded: ${:.4} spent or reserved this month, this request may cost up to ${:.4}; it resets on the 1st (UTC)", level.name(), nano_to_usd(*limit), nano_to_usd(*spent), nano_to_usd(*needed))]
    Monthly {
        /// The level whose budget it is.
        level: Level,
        /// Spent and reserved this month.
        spent: i64,
        /// The budget.
        limit: i64,
        /// The request's estimate.
        needed: i64,
    },
    /// The store failed.
    #[error("spend store unavailable: {0}")]
    Store(String),
}

/// Where spend lives: this process or Redis.
#[derive(Debug, Clone)]
pub enum Budgets {
    /// In this process.
    Memory(MemoryBudgets),
    /// Shared through Redis.
    Redis(Box<RedisBudgets>),
}

impl Budgets {
    /// These budgets, rebuilt from `ledger` when the store loses them: on
    /// Redis, each client's month is seeded from the ledger before its
    /// first reservation (see [`RedisBudgets::with_ledger`]); in memory,
    /// every client's spend today and this month is read from it now (a
    /// process that starts again does not start from zero).
    pub async fn rebuilt_from(
        self,
        ledger: &std::sync::Arc<crate::ledger::UsageLedger>,
    ) -> Result<Budgets, crate::ledger::StoreError> {
        match self {
            Budgets::Redis(r) => Ok(Budgets::Redis(Box::new(r.with_ledger(ledger.clone())))),
            Budgets::Memory(m) => {
                let period = Period::now();
                for level in [Level::Org, Level::Client, Level::Key] {
                    for (id, spend) in ledger.all_spend_of(level, period).await? {
                        m.seed_level(level, &id, period, spend);
                    }
                }
                Ok(Budgets::Memory(m))
            }
        }
    }

    /// Reserves `amount` nano-USD against the client's budgets. A client
    /// without budgets has nothing to protect: nothing is reserved (no store
    /// round trip) and the settlement records the actual cost.
    pub async fn reserve(
        &self,
        client: &str,
        amount: i64,
        limits: BudgetLimits,
    ) -> Result<Hold, BudgetError> {
        self.reserve_at(Level::Client, client, amount, limits).await
    }

    /// [`Budgets::reserve`] at `level` (`id` is the organisation's, the
    /// client's or the key's).
    pub async fn reserve_at(
        &self,
        level: Level,
        id: &str,
        amount: i64,
        limits: BudgetLimits,
    ) -> Result<Hold, BudgetError> {
        let hold = new_hold(level, id, amount, limits);
        if !hold.reserved {
            return Ok(hold);
        }
        match self {
            Budgets::Memory(m) => m.reserve(hold, limits),
            Budgets::Redis(r) => r.reserve(hold, limits).await,
        }
    }

    /// Reserves `amount` at every level of `levels` (given outermost
    /// first), each with the same no-race reservation as
    /// [`Budgets::reserve`], innermost first: a key's tight budget refuses
    /// before its client's and its organisation's are touched. When a level
    /// refuses or fails, the levels inside it that took the estimate are
    /// given it back before this answers (so a refusal's effect on them
    /// lasts one round trip), and its error is answered.
    pub async fn reserve_levels(
        &self,
        levels: &[(Level, &str, BudgetLimits)],
        amount: i64,
    ) -> Result<Vec<Hold>, BudgetError> {
        let mut holds = Vec::with_capacity(levels.len());
        for &(level, id, limits) in levels.iter().rev() {
            match self.reserve_at(level, id, amount, limits).await {
                Ok(h) => holds.push(h),
                Err(e) => {
                    for h in &holds {
                        self.cancel(h).await;
                    }
                    return Err(e);
                }
            }
        }
        holds.reverse();
        Ok(holds)
    }

    /// Gives a hold's reservation back, waiting for the store's answer (a
    /// failed try is retried in the background).
    async fn cancel(&self, hold: &Hold) {
        match self {
            Budgets::Memory(m) => m.adjust(hold, 0),
            Budgets::Redis(r) => r.cancel(hold).await,
        }
    }

    /// Replaces a hold's estimate by the actual cost. With Redis a call
    /// that fails is retried; settling one hold again changes nothing.
    pub async fn settle(&self, hold: &Hold, actual: i64) -> Result<(), BudgetError> {
        match self {
            Budgets::Memory(m) => {
                m.adjust(hold, actual);
                Ok(())
            }
            Budgets::Redis(r) => r.adjust(hold, actual).await,
        }
    }

    /// The client's spend today and this month.
    pub async fn spend(&self, client: &str) -> Result<Spend, BudgetError> {
        self.spend_at(Level::Client, client).await
    }

    /// The spend today and this month of `level`'s `id`.
    pub async fn spend_at(&self, level: Level, id: &str) -> Result<Spend, BudgetError> {
        let period = Period::now();
        match self {
            Budgets::Memory(m) => Ok(m.spend_at(level, id, period)),
            Budgets::Redis(r) => r.spend(level, id, period).await,
        }
    }
}
