//! The embedded ledger: one SQLite file (WAL, `synchronous = FULL`, so a
//! committed batch survives a crash of the process and of the machine).
//! SQLite is synchronous: every call runs on tokio's blocking pool, one at a
//! time on one connection.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::{GroupBy, GroupSums, SpendSince, StoreError, COLUMNS, MIGRATIONS, NCOLUMNS};
use crate::ledger::row::Row;

/// An open SQLite ledger.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteStore({})", self.path)
    }
}

fn unavailable(path: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "cannot open the SQLite ledger {path:?}: {e}; check that its folder exists and is writable (ledger.url)"
    ))
}

fn query_err(e: rusqlite::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

impl SqliteStore {
    /// Opens (or creates) the file at `path` (`:memory:` for one in this
    /// process only) and applies the migrations it lacks. Blocking.
    pub fn open(path: &str) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(path).map_err(|e| unavailable(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| unavailable(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| unavailable(path, e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| unavailable(path, e))?;
        migrate(&mut conn).map_err(|e| unavailable(path, e))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_string(),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(query_err)
        })
        .await
        .map_err(|e| StoreError::Query(e.to_string()))?
    }

    pub(crate) async fn insert(&self, rows: Vec<Row>) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let mut added = 0;
            {
                let marks = (1..=NCOLUMNS)
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut stmt = tx.prepare_cached(&format!(
                    "INSERT INTO ledger_rows ({COLUMNS}) VALUES ({marks}) \
                     ON CONFLICT (request_id) DO NOTHING"
                ))?;
                for r in &rows {
                    added += stmt.execute(rusqlite::params![
                        r.request_id.to_string(),
                        r.started_at_ms,
                        r.finished_at_ms,
                        r.client,
                        r.tier,
                        r.route,
                        r.requested_model,
                        r.served_model,
                        r.baseline_model,
                        i64::from(r.attempts),
                        r.est_input_tokens,
                        r.est_output_tokens,
                        r.input_tokens,
                        r.output_tokens,
                        r.cost_micro_usd,
                        r.baseline_cost_micro_usd,
                        r.queue_wait_us,
                        r.upstream_latency_us,
                        r.first_token_us,
                        r.outcome,
                        r.error_code,
                        r.instance,
                    ])? as u64;
                }
            }
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    pub(crate) async fn usage(
        &self,
        group: GroupBy,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<GroupSums>, StoreError> {
        let sql = sqlite_sql(&super::usage_sql(group));
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([from_ms, to_ms], |r| {
                Ok(GroupSums {
                    key: r.get(0)?,
                    outcome: r.get(1)?,
                    requests: r.get(2)?,
                    input_tokens: r.get(3)?,
                    output_tokens: r.get(4)?,
                    cost_micro_usd: r.get(5)?,
                    baseline_cost_micro_usd: r.get(6)?,
                    queue_wait_us: r.get(7)?,
                    max_queue_wait_us: r.get(8)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn spend(
        &self,
        client: &str,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<SpendSince, StoreError> {
        let client = client.to_string();
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sqlite_sql(super::SPEND_SQL))?;
            stmt.query_row(rusqlite::params![client, day_ms, month_ms], |r| {
                Ok(SpendSince {
                    day: r.get(0)?,
                    month: r.get(1)?,
                })
            })
        })
        .await
    }

    pub(crate) async fn all_spend(
        &self,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<Vec<(String, SpendSince)>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sqlite_sql(super::ALL_SPEND_SQL))?;
            let rows = stmt.query_map([day_ms, month_ms], |r| {
                Ok((
                    r.get(0)?,
                    SpendSince {
                        day: r.get(1)?,
                        month: r.get(2)?,
                    },
                ))
            })?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn rows(&self) -> Result<Vec<Row>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare(&super::rows_sql())?;
            let rows = stmt.query_map([], |r| {
                let id: String = r.get(0)?;
                Ok(Row {
                    request_id: id.parse().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                    started_at_ms: r.get(1)?,
                    finished_at_ms: r.get(2)?,
                    client: r.get(3)?,
                    tier: r.get(4)?,
                    route: r.get(5)?,
                    requested_model: r.get(6)?,
                    served_model: r.get(7)?,
                    baseline_model: r.get(8)?,
                    attempts: r.get::<_, i64>(9)? as u32,
                    est_input_tokens: r.get(10)?,
                    est_output_tokens: r.get(11)?,
                    input_tokens: r.get(12)?,
                    output_tokens: r.get(13)?,
                    cost_micro_usd: r.get(14)?,
                    baseline_cost_micro_usd: r.get(15)?,
                    queue_wait_us: r.get(16)?,
                    upstream_latency_us: r.get(17)?,
                    first_token_us: r.get(18)?,
                    outcome: r.get(19)?,
                    error_code: r.get(20)?,
                    instance: r.get(21)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

/// `$1`-style placeholders as SQLite numbers them (`?1`).
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS ledger_migrations (version BIGINT PRIMARY KEY)")?;
    for (version, sql) in MIGRATIONS {
        let done: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM ledger_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO ledger_migrations (version) VALUES (?1)",
                [version],
            )?;
        }
    }
    tx.commit()
}
