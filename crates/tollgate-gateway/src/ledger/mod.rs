//! The usage ledger: one row per request that reached admission (answered,
//! refused or failed), kept in SQLite (embedded) or PostgreSQL (shared), for
//! billing, reports and rebuilding budgets after the limit store lost them.
//!
//! - [`row`]: the row, and integer micro-USD prices.
//! - [`store`]: the two databases, one schema, migrations applied at open.
//! - [`writer`]: the batched writer off the request path, its bounded queue
//!   and flush interval.
//! - [`spool`]: the local append-only file rows wait in while the database
//!   is away, replayed in order when it is back.
//! - [`report`]: sums per client, tier, model, route or day.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate_gateway::ledger::{LedgerSettings, UsageLedger};
//! let ledger = UsageLedger::open(&LedgerSettings::memory()).await?;
//! // ledger.record(row) on the request path, never waiting;
//! ledger.flush().await; // everything recorded is in the database (or spooled)
//! # Ok(()) }
//! ```

pub mod http;
pub mod report;
pub mod row;
pub mod spool;
pub mod store;
pub mod writer;

pub use self::report::{Report, UsageQuery};
pub use self::row::{MicroPrice, Row};
pub use self::store::{GroupBy, SpendSince, Store, StoreError};
pub use self::writer::{Stats, WriterConfig};

use std::path::PathBuf;
use std::sync::Arc;

use self::spool::{Spool, SpoolError};
use self::writer::Writer;
use crate::budget::{days_from_civil, Level, Period, Spend};

/// Why the ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The spool.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Where the ledger lives, resolved from `[ledger]` (see
/// [`crate::config::LedgerConfig`]).
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// `postgres://…`, `sqlite::memory:`, or a SQLite file path.
    pub url: String,
    /// The spool file.
    pub spool: PathBuf,
    /// Whether the spool is a temporary file of this process, removed on
    /// close when empty.
    pub temporary_spool: bool,
    /// This instance's name in every row.
    pub instance: String,
    /// Batching.
    pub writer: WriterConfig,
}

impl LedgerSettings {
    /// A ledger in this process's memory (tests, and configurations given as
    /// text without a `[ledger]` table), its spool a temporary file.
    pub fn memory() -> LedgerSettings {
        LedgerSettings {
            url: "sqlite::memory:".into(),
            spool: std::env::temp_dir()
                .join(format!("tollgate-ledger-{}.spool", uuid::Uuid::now_v7())),
            temporary_spool: true,
            instance: "local".into(),
            writer: WriterConfig::default(),
        }
    }
}

/// The open ledger: the database, its writer and its spool.
#[derive(Debug)]
pub struct UsageLedger {
    store: Store,
    writer: Writer,
    spool: Arc<Spool>,
    settings: LedgerSettings,
}

impl UsageLedger {
    /// Opens the database (applying its migrations) and the spool, and
    /// starts the writer, which first replays whatever a previous run left
    /// in the spool.
    pub async fn open(settings: &LedgerSettings) -> Result<UsageLedger, LedgerError> {
        let spool = Arc::new(Spool::open(&settings.spool)?);
        let store = Store::open(&settings.url).await?;
        if !spool.is_empty() {
            tracing::info!(rows = spool.len(), path = %settings.spool.display(), "replaying the ledger spool left by a previous run");
        }
        let writer = Writer::start(store.clone(), spool.clone(), settings.writer);
        Ok(UsageLedger {
            store,
            writer,
            spool,
            settings: settings.clone(),
        })
    }

    /// Records a row (never waits; see [`writer`] for what a full queue does).
    pub fn record(&self, row: Row) {
        self.writer.record(row);
    }

    /// Waits until every row recorded so far is in the database or the spool.
    pub async fn flush(&self) {
        self.writer.flush().await;
    }

    /// Writes what is queued, stops the writer and removes a temporary
    /// spool that is empty.
    pub async fn close(&self) {
        self.writer.close().await;
        if self.settings.temporary_spool && self.spool.is_empty() {
            let _ = std::fs::remove_file(&self.settings.spool);
        }
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This instance's name in its rows.
    pub fn instance(&self) -> &str {
        &self.settings.instance
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Stats {
        self.writer.stats()
    }

    /// Rows waiting in the spool.
    pub fn spooled(&self) -> u64 {
        self.spool.len()
    }

    /// Spool lines that could not be read back.
    pub fn spool_corrupt(&self) -> u64 {
        self.spool.corrupt()
    }

    /// A report.
    pub async fn report(&self, query: UsageQuery) -> Result<Report, StoreError> {
        Report::run(&self.store, query).await
    }

    /// `client`'s spend in `period`'s day and month as the ledger knows it,
    /// in nano-USD (what budgets count), after writing this instance's
    /// queue.
    pub async fn spend(&self, client: &str, period: Period) -> Result<Spend, StoreError> {
        self.spend_of(Level::Client, client, period).await
    }

    /// [`UsageLedger::spend`] of `level`'s `id` (a client, an organisation,
    /// an issued key).
    pub async fn spend_of(
        &self,
        level: Level,
        id: &str,
        period: Period,
    ) -> Result<Spend, StoreError> {
        self.flush().await;
        let (day_ms, month_ms) = period_starts(period);
        let s = self.store.spend_of(level, id, day_ms, month_ms).await?;
        Ok(nano(s))
    }

    /// Every client's spend in `period`'s day and month, nano-USD.
    pub async fn all_spend(&self, period: Period) -> Result<Vec<(String, Spend)>, StoreError> {
        self.all_spend_of(Level::Client, period).await
    }

    /// The spend of every id of `level` in `period`'s day and month, nano-USD.
    pub async fn all_spend_of(
        &self,
        level: Level,
        period: Period,
    ) -> Result<Vec<(String, Spend)>, StoreError> {
        self.flush().await;
        let (day_ms, month_ms) = period_starts(period);
        Ok(self
            .store
            .all_spend_of(level, day_ms, month_ms)
            .await?
            .into_iter()
            .map(|(c, s)| (c, nano(s)))
            .collect())
    }
}

/// Micro-USD sums as the nano-USD budgets count.
fn nano(s: SpendSince) -> Spend {
    Spend {
        today: s.day.saturating_mul(1000),
        month: s.month.saturating_mul(1000),
    }
}

/// The first ms of `p`'s UTC day and of its UTC month.
fn period_starts(p: Period) -> (i64, i64) {
    let month_day = days_from_civil(p.month / 100, p.month % 100, 1);
    (p.day * 86_400_000, month_day * 86_400_000)
}

#[cfg(test)]
mod tests;
