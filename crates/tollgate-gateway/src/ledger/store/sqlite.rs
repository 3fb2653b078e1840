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
        // The six inserts (see `insert_sql`) beside the reports' and the
        // registry's statements.
        conn.set_prepared_statement_cache_capacity(64);
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
            let mut rest = &rows[..];
            while !rest.is_empty() {
                let (part, tail) = rest.split_at(rows_in_next_insert(rest.len()));
                let mut stmt = tx.prepare_cached(insert_sql(part.len()))?;
                for (i, r) in part.iter().enumerate() {
                    bind_row(&mut stmt, i * NCOLUMNS, r)?;
                }
                added += stmt.raw_execute()? as u64;
                rest = tail;
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

/// The most rows one `INSERT` writes. A batch is written in statements of
/// 32, 16, …, 1 rows (its length in binary, largest first): each such
/// statement is prepared once and cached, and what a statement costs
/// besides its rows (its savepoint, its halt) is paid once for up to 32
/// rows instead of once a row. 32 rows bind 800 values, under SQLite's
/// oldest limit of 999.
pub(crate) const ROWS_PER_INSERT: usize = 32;

/// How many of `left` rows the next statement writes: the largest power of
/// two at most `left` and [`ROWS_PER_INSERT`].
fn rows_in_next_insert(left: usize) -> usize {
    let left = left.min(ROWS_PER_INSERT);
    1 << left.ilog2()
}

/// The `INSERT` of `rows` rows (a power of two up to [`ROWS_PER_INSERT`]),
/// made once. A row whose request id is there already is skipped: a replay
/// never doubles it.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=ROWS_PER_INSERT.ilog2())
            .map(|k| {
                let values = (0..1usize << k)
                    .map(|row| {
                        let marks = (1..=NCOLUMNS)
                            .map(|c| format!("?{}", row * NCOLUMNS + c))
                            .collect::<Vec<_>>()
                            .join(", ");
                        format!("({marks})")
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "INSERT INTO ledger_rows ({COLUMNS}) VALUES {values} \
                     ON CONFLICT (request_id) DO NOTHING"
                )
            })
            .collect()
    });
    &all[rows.ilog2() as usize]
}

/// Binds `r` to the parameters after the first `at` of an `INSERT` of
/// [`insert_sql`], in [`COLUMNS`]' order.
fn bind_row(stmt: &mut rusqlite::Statement<'_>, at: usize, r: &Row) -> rusqlite::Result<()> {
    let mut id = uuid::Uuid::encode_buffer();
    let id: &str = r.request_id.hyphenated().encode_lower(&mut id);
    let values: [&dyn rusqlite::ToSql; NCOLUMNS] = [
        &id,
        &r.started_at_ms,
        &r.finished_at_ms,
        &r.client,
        &r.tier,
        &r.route,
        &r.requested_model,
        &r.served_model,
        &r.baseline_model,
        &i64::from(r.attempts),
        &r.est_input_tokens,
        &r.est_output_tokens,
        &r.input_tokens,
        &r.output_tokens,
        &r.cost_micro_usd,
        &r.baseline_cost_micro_usd,
        &r.queue_wait_us,
        &r.upstream_latency_us,
        &r.first_token_us,
        &r.outcome,
        &r.error_code,
        &r.instance,
        &r.org,
        &r.key_id,
        &r.budget_level,
    ];
    for (c, v) in values.into_iter().enumerate() {
        stmt.raw_bind_parameter(at + c + 1, v)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Level;

    /// What SQLite plans for `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sqlite_sql(sql)))
            .unwrap();
        // The parameters stay unbound (NULL): the plan does not depend on them.
        let mut rows = stmt.raw_query();
        let mut steps = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            steps.push(r.get::<_, String>(3).unwrap());
        }
        steps.join("\n")
    }

    /// The spend queries each read their level's index, the partial ones
    /// (rows naming an organisation or a key) included: a level's spend is
    /// never a scan of every row.
    #[test]
    fn each_levels_spend_reads_its_index() {
        let store = SqliteStore::open(":memory:").unwrap();
        let conn = store.conn.lock().unwrap();
        for (level, index) in [
            (Level::Client, "ledger_rows_client_time"),
            (Level::Org, "ledger_rows_org_time"),
            (Level::Key, "ledger_rows_key_time"),
        ] {
            let p = plan(&conn, super::super::spend_sql(level));
            assert!(
                p.contains(&format!("USING INDEX {index}")),
                "{level:?}: {p}"
            );
        }
        let p = plan(&conn, super::super::all_spend_sql(Level::Org));
        assert!(p.contains("USING INDEX ledger_rows_org_time"), "{p}");
        for level in [Level::Client, Level::Key] {
            let p = plan(&conn, super::super::all_spend_sql(level));
            assert!(p.contains("USING INDEX ledger_rows_"), "{level:?}: {p}");
        }
    }

    #[test]
    fn a_batch_is_written_in_statements_of_its_binary_digits() {
        let mut left = 75;
        let mut parts = Vec::new();
        while left > 0 {
            let n = rows_in_next_insert(left);
            parts.push(n);
            left -= n;
        }
        assert_eq!(parts, [32, 32, 8, 2, 1]);
        assert_eq!(insert_sql(32).matches('?').count(), 32 * NCOLUMNS);
    }
}
