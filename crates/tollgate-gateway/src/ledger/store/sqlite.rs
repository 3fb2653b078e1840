//! The embedded ledger: one SQLite file (WAL, `synchronous = FULL`, so a
//! committed batch survives a crash of the process and of the machine).
//! SQLite is synchronous: every call runs on tokio's blocking pool, one at a
//! time on one connection.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::sql::{Rows, Statement};
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
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
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
                        r.org,
                        r.key_id,
                        r.budget_level,
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
        self.run(move |conn| collect(conn, &sql, &[from_ms, to_ms], |r| super::sums_from(r)))
            .await
    }

    pub(crate) async fn spend(
        &self,
        sql: &'static str,
        client: &str,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<SpendSince, StoreError> {
        let client = client.to_string();
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sqlite_sql(sql))?;
            Ok(
                stmt.query_row(rusqlite::params![client, day_ms, month_ms], |r| {
                    Ok(SpendSince {
                        day: r.get(0)?,
                        month: r.get(1)?,
                    })
                })?,
            )
        })
        .await
    }

    pub(crate) async fn all_spend(
        &self,
        sql: &'static str,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<Vec<(String, SpendSince)>, StoreError> {
        let sql = sqlite_sql(sql);
        self.run(move |conn| {
            collect(conn, &sql, &[day_ms, month_ms], |r| {
                super::client_spend_from(r)
            })
        })
        .await
    }

    pub(crate) async fn rows(&self) -> Result<Vec<Row>, StoreError> {
        self.run(|conn| collect(conn, &super::rows_sql(), &[], |r| super::row_from(r)))
            .await
    }

    pub(crate) async fn query(&self, statement: Statement) -> Result<Rows, StoreError> {
        self.run(move |conn| answer(conn, &statement)).await
    }

    /// One writer at a time: `BEGIN IMMEDIATE` takes the file's write lock
    /// first, so a transaction reads what the one before it wrote.
    pub(crate) async fn transaction_then(
        &self,
        statements: Vec<Statement>,
        then: impl Fn(&[Rows]) -> Result<Vec<Statement>, StoreError> + Send + 'static,
    ) -> Result<Vec<Rows>, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(statements.len() + 1);
            for s in &statements {
                out.push(answer(&tx, s)?);
            }
            for s in &then(&out)? {
                out.push(answer(&tx, s)?);
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

/// Every row `statement` answers (none for most writes).
fn answer(conn: &Connection, statement: &Statement) -> Result<Rows, StoreError> {
    let mut stmt = conn.prepare_cached(&sqlite_sql(&statement.sql))?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(&statement.params))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(super::sql::from_sqlite(r, columns)?);
    }
    Ok(out)
}

/// Every answer of `sql`, each read by `read`.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: &[i64],
    read: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(read(r)?);
    }
    Ok(out)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Query(e.to_string())
    }
}

impl super::Columns for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
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
