//! The shared ledger: PostgreSQL, for several gateway instances. One
//! connection per instance (the writer sends one batch at a time); a call
//! that finds it closed opens a new one, so a restarted server is picked up
//! by the next batch. Migrations run under an advisory lock, so instances
//! starting together apply each step once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::sql::{Rows, Statement};
use super::{GroupBy, GroupSums, SpendSince, StoreError, COLUMNS, MIGRATIONS, NCOLUMNS};
use crate::ledger::row::Row;

/// Longest wait for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for one statement's answer.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock migrations take (any number, the same on every instance).
const MIGRATION_LOCK: i64 = 0x7011_6a7e;
/// The advisory lock every registry write takes (another number).
const WRITE_LOCK: i64 = 0x7011_6a7f;

/// An open PostgreSQL ledger.
#[derive(Clone)]
pub struct PostgresStore {
    config: Arc<tokio_postgres::Config>,
    client: Arc<Mutex<Option<Client>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresStore({:?})", self.config.get_hosts())
    }
}

fn db_err(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.code().is_none() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Query(e.to_string())
    }
}

impl PostgresStore {
    /// Connects to `url` and applies the migrations the database lacks.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!("ledger.url {url:?} is not a PostgreSQL URL: {e}"))
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let store = PostgresStore {
            config: Arc::new(config),
            client: Arc::new(Mutex::new(None)),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls))
            .await
            .map_err(|_| StoreError::Unavailable("connecting to PostgreSQL timed out".into()))?
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL: {e}; is the server running and ledger.url right?"
                ))
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "ledger connection to PostgreSQL closed");
            }
        });
        Ok(client)
    }

    /// Runs `f` on the connection (opened when there is none); a failure
    /// that closed the connection drops it, so the next call opens another.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect().await?);
        }
        let client = guard.as_mut().expect("connected above");
        let result = tokio::time::timeout(STATEMENT_TIMEOUT, f(client)).await;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = db_err(e);
                if matches!(err, StoreError::Unavailable(_)) {
                    *guard = None;
                }
                Err(err)
            }
            Err(_) => {
                *guard = None;
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {} s",
                    STATEMENT_TIMEOUT.as_secs()
                )))
            }
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.with(async |client| {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS ledger_migrations (version BIGINT PRIMARY KEY)",
            )
            .await?;
            for (version, sql) in MIGRATIONS {
                let done = tx
                    .query_opt(
                        "SELECT 1 FROM ledger_migrations WHERE version = $1",
                        &[version],
                    )
                    .await?
                    .is_some();
                if !done {
                    tx.batch_execute(sql).await?;
                    tx.execute(
                        "INSERT INTO ledger_migrations (version) VALUES ($1)",
                        &[version],
                    )
                    .await?;
                }
            }
            tx.commit().await
        })
        .await
    }

    pub(crate) async fn insert(&self, rows: &[Row]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut sql = format!("INSERT INTO ledger_rows ({COLUMNS}) VALUES ");
        for i in 0..rows.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..NCOLUMNS {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", i * NCOLUMNS + c + 1));
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
        let ids: Vec<String> = rows.iter().map(|r| r.request_id.to_string()).collect();
        let attempts: Vec<i64> = rows.iter().map(|r| i64::from(r.attempts)).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.len() * NCOLUMNS);
        for (i, r) in rows.iter().enumerate() {
            params.extend_from_slice(&[
                &ids[i],
                &r.started_at_ms,
                &r.finished_at_ms,
                &r.client,
                &r.tier,
                &r.route,
                &r.requested_model,
                &r.served_model,
                &r.baseline_model,
                &attempts[i],
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
            ]);
        }
        self.with(async |client| client.execute(&sql, &params).await)
            .await
    }

    pub(crate) async fn usage(
        &self,
        group: GroupBy,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<GroupSums>, StoreError> {
        let sql = super::usage_sql(group);
        let rows = self
            .with(async |client| client.query(&sql, &[&from_ms, &to_ms]).await)
            .await?;
        rows.iter().map(super::sums_from).collect()
    }

    pub(crate) async fn spend(
        &self,
        sql: &'static str,
        client: &str,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<SpendSince, StoreError> {
        let row = self
            .with(async |c| c.query_one(sql, &[&client, &day_ms, &month_ms]).await)
            .await?;
        Ok(SpendSince {
            day: row.try_get(0).map_err(column_err)?,
            month: row.try_get(1).map_err(column_err)?,
        })
    }

    pub(crate) async fn all_spend(
        &self,
        sql: &'static str,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<Vec<(String, SpendSince)>, StoreError> {
        let rows = self
            .with(async |c| c.query(sql, &[&day_ms, &month_ms]).await)
            .await?;
        rows.iter().map(super::client_spend_from).collect()
    }

    pub(crate) async fn query(&self, statement: Statement) -> Result<Rows, StoreError> {
        let rows = self
            .with(async |c| c.query(&statement.sql, &params(&statement)).await)
            .await?;
        rows.iter().map(super::sql::from_postgres).collect()
    }

    /// One writer at a time across every instance: the transaction takes
    /// [`WRITE_LOCK`] first, so it reads what the one before it wrote.
    pub(crate) async fn transaction_then(
        &self,
        statements: Vec<Statement>,
        then: impl Fn(&[Rows]) -> Result<Vec<Statement>, StoreError> + Send + Sync,
    ) -> Result<Vec<Rows>, StoreError> {
        let then = &then;
        // The inner result is `then`'s: its failure drops the transaction
        // (rolled back) without closing the connection.
        self.with(async |client| {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                .await?;
            let mut out: Vec<Rows> = Vec::with_capacity(statements.len() + 1);
            for s in &statements {
                let rows = tx.query(&s.sql, &params(s)).await?;
                match rows.iter().map(super::sql::from_postgres).collect() {
                    Ok(r) => out.push(r),
                    Err(e) => return Ok(Err(e)),
                }
            }
            let more = match then(&out) {
                Ok(m) => m,
                Err(e) => return Ok(Err(e)),
            };
            for s in &more {
                let rows = tx.query(&s.sql, &params(s)).await?;
                match rows.iter().map(super::sql::from_postgres).collect() {
                    Ok(r) => out.push(r),
                    Err(e) => return Ok(Err(e)),
                }
            }
            tx.commit().await?;
            Ok(Ok(out))
        })
        .await?
    }

    pub(crate) async fn rows(&self) -> Result<Vec<Row>, StoreError> {
        let rows = self
            .with(async |c| c.query(&super::rows_sql(), &[]).await)
            .await?;
        rows.iter().map(super::row_from).collect()
    }
}

fn params(s: &Statement) -> Vec<&(dyn ToSql + Sync)> {
    s.params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn column_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

impl super::Columns for tokio_postgres::Row {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.try_get(i).map_err(column_err)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.try_get(i).map_err(column_err)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.try_get(i).map_err(column_err)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(i).map_err(column_err)
    }
}
