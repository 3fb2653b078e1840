//! Where ledger rows are kept: SQLite (embedded, the default) or PostgreSQL
//! (several instances sharing one ledger). Both take the same schema
//! ([`MIGRATIONS`], applied at open, in order, once) and the same SQL, so a
//! report reads the same on either.

mod postgres;
pub mod sql;
mod sqlite;

pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;

use self::sql::{Rows, Statement};
use super::row::Row;
use crate::budget::Level;

/// Why the ledger's database could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, reached or migrated.
    #[error("ledger database unavailable: {0}")]
    Unavailable(String),
    /// A query failed.
    #[error("ledger query failed: {0}")]
    Query(String),
}

/// The schema, one step per version. A step is applied once, in a
/// transaction that also records its version in `ledger_migrations`.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE ledger_rows (
        request_id TEXT PRIMARY KEY,
        started_at_ms BIGINT NOT NULL,
        finished_at_ms BIGINT NOT NULL,
        client TEXT NOT NULL,
        tier TEXT NOT NULL,
        route TEXT NOT NULL,
        requested_model TEXT NOT NULL,
        served_model TEXT NOT NULL,
        baseline_model TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        est_input_tokens BIGINT NOT NULL,
        est_output_tokens BIGINT NOT NULL,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cost_micro_usd BIGINT NOT NULL,
        baseline_cost_micro_usd BIGINT NOT NULL,
        queue_wait_us BIGINT NOT NULL,
        upstream_latency_us BIGINT,
        first_token_us BIGINT,
        outcome TEXT NOT NULL,
        error_code TEXT,
        instance TEXT NOT NULL
    );
    CREATE INDEX ledger_rows_time ON ledger_rows (started_at_ms);
    CREATE INDEX ledger_rows_client_time ON ledger_rows (client, started_at_ms);",
    ),
    (
        2,
        // The registry (see `crate::registry::db`): what the admin API
        // creates or changes over the config file, and one row per change,
        // numbered without gaps, that instances apply in order.
        "CREATE TABLE registry_changes (
        version BIGINT PRIMARY KEY,
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        at_ms BIGINT NOT NULL
    );
    CREATE TABLE registry_tiers (
        name TEXT PRIMARY KEY,
        fields TEXT NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE TABLE registry_routes (
        name TEXT PRIMARY KEY,
        route TEXT NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE TABLE registry_tier_assignments (
        client TEXT PRIMARY KEY,
        tier TEXT NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE TABLE registry_orgs (
        id TEXT PRIMARY KEY,
        name TEXT,
        limits TEXT NOT NULL,
        disabled BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE TABLE registry_clients (
        id TEXT PRIMARY KEY,
        tier TEXT NOT NULL,
        org TEXT,
        limits TEXT NOT NULL,
        disabled BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE TABLE registry_keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        client TEXT NOT NULL,
        shown TEXT NOT NULL,
        name TEXT,
        models TEXT,
        limits TEXT NOT NULL,
        expires_at_ms BIGINT,
        revoked_at_ms BIGINT,
        created_at_ms BIGINT NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE INDEX registry_keys_client ON registry_keys (client);",
    ),
    (
        3,
        // The budget hierarchy (organisation → client → key): each row
        // names the organisation and the issued key it was charged to, so
        // every level's spend is rebuilt from the ledger like a client's,
        // and the level whose budget refused it.
        "ALTER TABLE ledger_rows ADD COLUMN org TEXT;
    ALTER TABLE ledger_rows ADD COLUMN key_id TEXT;
    ALTER TABLE ledger_rows ADD COLUMN budget_level TEXT;
    CREATE INDEX ledger_rows_org_time ON ledger_rows (org, started_at_ms);
    CREATE INDEX ledger_rows_key_time ON ledger_rows (key_id, started_at_ms);",
    ),
    (
        4,
        // The audit of the registry's changes (see `crate::registry::audit`):
        // one row per change, numbered by its change (`registry_changes`).
        "CREATE TABLE registry_audit (
        version BIGINT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        token TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        before_state TEXT,
        after_state TEXT
    );
    CREATE INDEX registry_audit_object ON registry_audit (object, version);",
    ),
    (
        5,
        // The answers to key issuances with an `Idempotency-Key` (see
        // `crate::registry::idempotency`).
        "CREATE TABLE registry_idempotency (
        id TEXT PRIMARY KEY,
        request TEXT NOT NULL,
        key_id TEXT NOT NULL,
        sealed TEXT NOT NULL,
        version BIGINT NOT NULL,
        at_ms BIGINT NOT NULL
    );",
    ),
    (
        6,
        // A key a rotation issued carries on the key it replaced: its
        // bucket and its budget's spend are those of the first key of the
        // rotations (`lineage`; NULL: a key issued anew, its own), and
        // rotations take an `Idempotency-Key` as issuance does (its rows
        // in `registry_idempotency`, the request naming the key rotated).
        "ALTER TABLE registry_keys ADD COLUMN lineage TEXT;
    CREATE INDEX registry_keys_lineage ON registry_keys (lineage);",
    ),
    (
        7,
        // The organisation's and the key's indexes hold only the rows that
        // name one: their queries (`spend_sql`, `all_spend_sql`) ask for
        // `org = $1`, `key_id = $1` or `IS NOT NULL`, which both databases
        // know a partial index `WHERE … IS NOT NULL` answers, and a row of a
        // client without either (the config file's) no longer costs two
        // index inserts.
        "DROP INDEX ledger_rows_org_time;
    DROP INDEX ledger_rows_key_time;
    CREATE INDEX ledger_rows_org_time ON ledger_rows (org, started_at_ms) WHERE org IS NOT NULL;
    CREATE INDEX ledger_rows_key_time ON ledger_rows (key_id, started_at_ms) WHERE key_id IS NOT NULL;",
    ),
];

/// The columns of `ledger_rows`, in the order inserts bind them.
pub(crate) const COLUMNS: &str = "request_id, started_at_ms, finished_at_ms, client, tier, route, \
    requested_model, served_model, baseline_model, attempts, est_input_tokens, est_output_tokens, \
    input_tokens, output_tokens, cost_micro_usd, baseline_cost_micro_usd, queue_wait_us, \
    upstream_latency_us, first_token_us, outcome, error_code, instance, org, key_id, budget_level";
/// How many columns a row has.
pub(crate) const NCOLUMNS: usize = 25;

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The client.
    Client,
    /// The client's tier.
    Tier,
    /// The model that answered (the requested one when none did).
    Model,
    /// The route.
    Route,
    /// The UTC day the request arrived.
    Day,
}

impl GroupBy {
    /// Every grouping, by name.
    pub const ALL: &'static [(&'static str, GroupBy)] = &[
        ("client", GroupBy::Client),
        ("tier", GroupBy::Tier),
        ("model", GroupBy::Model),
        ("route", GroupBy::Route),
        ("day", GroupBy::Day),
    ];

    /// The grouping called `name`.
    pub fn parse(name: &str) -> Option<GroupBy> {
        GroupBy::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, g)| g)
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        GroupBy::ALL
            .iter()
            .find(|(_, g)| *g == self)
            .map(|(n, _)| *n)
            .unwrap_or("client")
    }

    /// The SQL expression of the group's key (text on both databases; a day
    /// is its number since 1970-01-01).
    fn key_sql(self) -> &'static str {
        match self {
            GroupBy::Client => "client",
            GroupBy::Tier => "tier",
            GroupBy::Model => {
                "CASE WHEN served_model = '' THEN requested_model ELSE served_model END"
            }
            GroupBy::Route => "route",
            GroupBy::Day => "CAST(started_at_ms / 86400000 AS TEXT)",
        }
    }
}

/// The sums of one group and one outcome, as the database answers them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSums {
    /// The group's key (a day as its number since 1970-01-01).
    pub key: String,
    /// The outcome.
    pub outcome: String,
    /// Rows.
    pub requests: i64,
    /// Input tokens used.
    pub input_tokens: i64,
    /// Output tokens used.
    pub output_tokens: i64,
    /// Spend, micro-USD.
    pub cost_micro_usd: i64,
    /// Spend on the baseline models, micro-USD.
    pub baseline_cost_micro_usd: i64,
    /// Summed queue wait, µs.
    pub queue_wait_us: i64,
    /// Longest queue wait, µs.
    pub max_queue_wait_us: i64,
}

/// The report query: sums per group and outcome of the rows whose request
/// arrived in `[$1, $2)` (ms), in key order.
pub(crate) fn usage_sql(group: GroupBy) -> String {
    format!(
        "SELECT {key}, outcome, COUNT(*), \
         CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT), \
         CAST(COALESCE(SUM(baseline_cost_micro_usd), 0) AS BIGINT), \
         CAST(COALESCE(SUM(queue_wait_us), 0) AS BIGINT), \
         CAST(COALESCE(MAX(queue_wait_us), 0) AS BIGINT) \
         FROM ledger_rows WHERE started_at_ms >= $1 AND started_at_ms < $2 \
         GROUP BY 1, 2 ORDER BY 1, 2",
        key = group.key_sql()
    )
}

/// The spend of `level`'s `$1` (a client, an organisation or an issued
/// key) since `$2` and since `$3` (ms; `$2 >= $3`), micro-USD.
pub(crate) fn spend_sql(level: Level) -> &'static str {
    match level {
        Level::Client => "SELECT \
            CAST(COALESCE(SUM(CASE WHEN started_at_ms >= $2 THEN cost_micro_usd ELSE 0 END), 0) AS BIGINT), \
            CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) \
            FROM ledger_rows WHERE client = $1 AND started_at_ms >= $3",
        Level::Org => "SELECT \
            CAST(COALESCE(SUM(CASE WHEN started_at_ms >= $2 THEN cost_micro_usd ELSE 0 END), 0) AS BIGINT), \
            CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) \
            FROM ledger_rows WHERE org = $1 AND started_at_ms >= $3",
        // A key's spend is its rotations' too (`registry_keys.lineage`).
        Level::Key => "SELECT \
            CAST(COALESCE(SUM(CASE WHEN started_at_ms >= $2 THEN cost_micro_usd ELSE 0 END), 0) AS BIGINT), \
            CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) \
            FROM ledger_rows WHERE started_at_ms >= $3 AND (key_id = $1 \
            OR key_id IN (SELECT id FROM registry_keys WHERE lineage = $1))",
    }
}

/// The spend of every id of `level` since `$1` and since `$2` (ms; `$1 >= $2`).
pub(crate) fn all_spend_sql(level: Level) -> &'static str {
    match level {
        Level::Client => "SELECT client, \
            CAST(COALESCE(SUM(CASE WHEN started_at_ms >= $1 THEN cost_micro_usd ELSE 0 END), 0) AS BIGINT), \
            CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) \
            FROM ledger_rows WHERE started_at_ms >= $2 GROUP BY client",
        Level::Org => "SELECT org, \
            CAST(COALESCE(SUM(CASE WHEN started_at_ms >= $1 THEN cost_micro_usd ELSE 0 END), 0) AS BIGINT), \
            CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) \
            FROM ledger_rows WHERE started_at_ms >= $2 AND org IS NOT NULL GROUP BY org",
        // Each rotated key's spend under the first key of its rotations.
        Level::Key => "SELECT COALESCE(k.lineage, r.key_id), \
            CAST(COALESCE(SUM(CASE WHEN r.started_at_ms >= $1 THEN r.cost_micro_usd ELSE 0 END), 0) AS BIGINT), \
            CAST(COALESCE(SUM(r.cost_micro_usd), 0) AS BIGINT) \
            FROM ledger_rows r LEFT JOIN registry_keys k ON k.id = r.key_id \
            WHERE r.started_at_ms >= $2 AND r.key_id IS NOT NULL GROUP BY COALESCE(k.lineage, r.key_id)",
    }
}

/// The SELECT of whole rows (tests, exports).
pub(crate) fn rows_sql() -> String {
    format!("SELECT {COLUMNS} FROM ledger_rows ORDER BY request_id")
}

/// A result row of either database, read by column number.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
}

/// A whole row, its columns in the order of [`COLUMNS`].
pub(crate) fn row_from(c: &impl Columns) -> Result<Row, StoreError> {
    let id = c.text(0)?;
    Ok(Row {
        request_id: id
            .parse()
            .map_err(|e| StoreError::Query(format!("request id {id:?}: {e}")))?,
        started_at_ms: c.int(1)?,
        finished_at_ms: c.int(2)?,
        client: c.text(3)?,
        tier: c.text(4)?,
        route: c.text(5)?,
        requested_model: c.text(6)?,
        served_model: c.text(7)?,
        baseline_model: c.text(8)?,
        attempts: u32::try_from(c.int(9)?).unwrap_or(u32::MAX),
        est_input_tokens: c.int(10)?,
        est_output_tokens: c.int(11)?,
        input_tokens: c.int(12)?,
        output_tokens: c.int(13)?,
        cost_micro_usd: c.int(14)?,
        baseline_cost_micro_usd: c.int(15)?,
        queue_wait_us: c.int(16)?,
        upstream_latency_us: c.opt_int(17)?,
        first_token_us: c.opt_int(18)?,
        outcome: c.text(19)?,
        error_code: c.opt_text(20)?,
        instance: c.text(21)?,
        org: c.opt_text(22)?,
        key_id: c.opt_text(23)?,
        budget_level: c.opt_text(24)?,
    })
}

/// One answer of [`usage_sql`].
pub(crate) fn sums_from(c: &impl Columns) -> Result<GroupSums, StoreError> {
    Ok(GroupSums {
        key: c.text(0)?,
        outcome: c.text(1)?,
        requests: c.int(2)?,
        input_tokens: c.int(3)?,
        output_tokens: c.int(4)?,
        cost_micro_usd: c.int(5)?,
        baseline_cost_micro_usd: c.int(6)?,
        queue_wait_us: c.int(7)?,
        max_queue_wait_us: c.int(8)?,
    })
}

/// One answer of [`all_spend_sql`].
pub(crate) fn client_spend_from(c: &impl Columns) -> Result<(String, SpendSince), StoreError> {
    Ok((
        c.text(0)?,
        SpendSince {
            day: c.int(1)?,
            month: c.int(2)?,
        },
    ))
}

/// One client's spend, micro-USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpendSince {
    /// Since the start of the day asked for.
    pub day: i64,
    /// Since the start of the month asked for.
    pub month: i64,
}

/// An open ledger database.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite, embedded.
    Sqlite(SqliteStore),
    /// PostgreSQL, shared.
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the database `url` names and applies the migrations it lacks:
    /// `postgres://…` / `postgresql://…`, `sqlite::memory:` (this process
    /// only), or a SQLite file (`sqlite:PATH` or a plain path).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PostgresStore::open(url).await?))
        } else {
            let path = url.strip_prefix("sqlite:").unwrap_or(url).to_string();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            Ok(Store::Sqlite(store))
        }
    }

    /// Inserts `rows`, skipping any whose request id is already there, in
    /// one transaction. Returns how many were new.
    pub async fn insert(&self, rows: &[Row]) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.insert(rows.to_vec()).await,
            Store::Postgres(p) => p.insert(rows).await,
        }
    }

    /// Sums per group and outcome of the rows that arrived in
    /// `[from_ms, to_ms)`.
    pub async fn usage(
        &self,
        group: GroupBy,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<GroupSums>, StoreError> {
        match self {
            Store::Sqlite(s) => s.usage(group, from_ms, to_ms).await,
            Store::Postgres(p) => p.usage(group, from_ms, to_ms).await,
        }
    }

    /// `client`'s spend since `day_ms` and since `month_ms`.
    pub async fn spend(
        &self,
        client: &str,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<SpendSince, StoreError> {
        self.spend_of(Level::Client, client, day_ms, month_ms).await
    }

    /// The spend of `level`'s `id` since `day_ms` and since `month_ms`.
    pub async fn spend_of(
        &self,
        level: Level,
        id: &str,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<SpendSince, StoreError> {
        let sql = spend_sql(level);
        match self {
            Store::Sqlite(s) => s.spend(sql, id, day_ms, month_ms).await,
            Store::Postgres(p) => p.spend(sql, id, day_ms, month_ms).await,
        }
    }

    /// Every client's spend since `day_ms` and since `month_ms`.
    pub async fn all_spend(
        &self,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<Vec<(String, SpendSince)>, StoreError> {
        self.all_spend_of(Level::Client, day_ms, month_ms).await
    }

    /// The spend of every id of `level` since `day_ms` and since `month_ms`.
    pub async fn all_spend_of(
        &self,
        level: Level,
        day_ms: i64,
        month_ms: i64,
    ) -> Result<Vec<(String, SpendSince)>, StoreError> {
        let sql = all_spend_sql(level);
        match self {
            Store::Sqlite(s) => s.all_spend(sql, day_ms, month_ms).await,
            Store::Postgres(p) => p.all_spend(sql, day_ms, month_ms).await,
        }
    }

    /// Every row, by request id (for tests and exports: not for a large
    /// ledger).
    pub async fn rows(&self) -> Result<Vec<Row>, StoreError> {
        match self {
            Store::Sqlite(s) => s.rows().await,
            Store::Postgres(p) => p.rows().await,
        }
    }

    /// The rows one statement answers.
    pub async fn query(&self, statement: Statement) -> Result<Rows, StoreError> {
        match self {
            Store::Sqlite(s) => s.query(statement).await,
            Store::Postgres(p) => p.query(statement).await,
        }
    }

    /// Runs `statements` in order in one transaction, one such transaction
    /// at a time across every process on this database; answers each
    /// statement's rows. Nothing is kept when one fails.
    pub async fn transaction(&self, statements: Vec<Statement>) -> Result<Vec<Rows>, StoreError> {
        self.transaction_then(statements, |_| Ok(Vec::new())).await
    }

    /// [`Store::transaction`] of `statements`, then, in the same
    /// transaction, of the statements `then` makes of their answers (it
    /// may be called again should the database be retried). Answers every
    /// statement's rows, `statements`' first.
    pub async fn transaction_then(
        &self,
        statements: Vec<Statement>,
        then: impl Fn(&[Rows]) -> Result<Vec<Statement>, StoreError> + Send + Sync + 'static,
    ) -> Result<Vec<Rows>, StoreError> {
        match self {
            Store::Sqlite(s) => s.transaction_then(statements, then).await,
            Store::Postgres(p) => p.transaction_then(statements, then).await,
        }
    }

    /// Which database this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ledger::row::sample;
    use crate::outcome::Outcome;

    /// The same checks on any store: idempotent inserts, sums, spend.
    pub(crate) async fn holds_rows_once_and_sums_them(store: &Store) {
        let ids: Vec<_> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
        let mut rows: Vec<Row> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| sample(*id, "acme", Outcome::Ok, 100 + i as i64))
            .collect();
        rows.push(sample(
            uuid::Uuid::now_v7(),
            "beta",
            Outcome::BudgetExceeded,
            0,
        ));
        rows[0].first_token_us = Some(77);
        rows[0].error_code = Some("it's \"quoted\"".into());
        assert_eq!(store.insert(&rows).await.unwrap(), 6);
        // Again, and overlapping: nothing doubled.
        assert_eq!(store.insert(&rows[3..]).await.unwrap(), 0);
        assert_eq!(store.insert(&[]).await.unwrap(), 0);
        let mut back = store.rows().await.unwrap();
        back.sort_by_key(|r| r.request_id);
        let mut want = rows.clone();
        want.sort_by_key(|r| r.request_id);
        assert_eq!(back, want, "rows come back as written");

        let all = store.usage(GroupBy::Client, 0, i64::MAX).await.unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].key, "acme");
        assert_eq!(all[0].requests, 5);
        assert_eq!(all[0].cost_micro_usd, 100 + 101 + 102 + 103 + 104);
        assert_eq!(all[0].baseline_cost_micro_usd, 510 + 5);
        assert_eq!(all[0].input_tokens, 50);
        assert_eq!(all[0].max_queue_wait_us, 1500);
        assert_eq!(all[1].outcome, "budget_exceeded");
        let day = store.usage(GroupBy::Day, 0, i64::MAX).await.unwrap();
        let today = (crate::ledger::row::now_ms() / 86_400_000).to_string();
        assert!(day.iter().all(|g| g.key == today), "{day:?}");
        let none = store.usage(GroupBy::Model, 0, 1).await.unwrap();
        assert!(none.is_empty());

        let spend = store.spend("acme", 0, 0).await.unwrap();
        assert_eq!(spend.day, 510);
        assert_eq!(spend.month, 510);
        let later = store.spend("acme", i64::MAX, 0).await.unwrap();
        assert_eq!(later, SpendSince { day: 0, month: 510 });
        let every = store.all_spend(0, 0).await.unwrap();
        assert_eq!(every.len(), 2);
    }

    #[tokio::test]
    async fn sqlite_holds_rows_once_and_sums_them() {
        let dir = tempdir();
        let path = dir.join("ledger.sqlite");
        let store = Store::open(path.to_str().unwrap()).await.unwrap();
        holds_rows_once_and_sums_them(&store).await;
        // Opened again: the migrations are not applied twice, rows stay.
        let again = Store::open(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        assert_eq!(again.rows().await.unwrap().len(), 6);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Batches of lengths on both sides of a statement's rows
    /// (`sqlite::ROWS_PER_INSERT`), each with rows written before and a
    /// row twice: every row is there once and as written, and an insert
    /// counts only the rows it added (the writer's `written` and
    /// `duplicates`, which a replayed spool relies on).
    #[tokio::test]
    async fn sqlite_writes_batches_of_any_length_once_per_row() {
        let dir = tempdir();
        let store = Store::open(dir.join("ledger.sqlite").to_str().unwrap())
            .await
            .unwrap();
        let mut written: Vec<Row> = Vec::new();
        for n in [1usize, 2, 3, 7, 31, 32, 33, 64, 75] {
            let fresh: Vec<Row> = (0..n)
                .map(|i| {
                    let mut r = sample(uuid::Uuid::now_v7(), "acme", Outcome::Ok, i as i64);
                    r.org = (i % 2 == 0).then(|| format!("org-{i}"));
                    r.key_id = (i % 3 == 0).then(|| format!("key-{i}"));
                    r.first_token_us = Some(i as i64);
                    r
                })
                .collect();
            let mut batch = fresh.clone();
            batch.extend(written.iter().rev().take(3).cloned());
            batch.push(fresh[0].clone());
            assert_eq!(
                store.insert(&batch).await.unwrap(),
                n as u64,
                "batch of {n}"
            );
            written.extend(fresh);
        }
        written.sort_by_key(|r| r.request_id.to_string());
        assert_eq!(store.rows().await.unwrap(), written);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_sqlite_file_that_cannot_be_made_is_a_clear_error() {
        let err = Store::open("/nonexistent-dir/x/ledger.sqlite")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x"), "{err}");
    }

    pub(crate) fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tollgate-ledger-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
