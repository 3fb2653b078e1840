//! Live changes shared by every instance on one store.
//!
//! With Redis, the admin API writes the [`Overrides`] as JSON to
//! `tollgate:{config}:overrides` and bumps `tollgate:{config}:version` in one
//! transaction (one hash tag: one Cluster slot), over the limit store's own
//! connection; every instance polls the version (`store.sync_interval_ms`,
//! 250 ms by default) and rebuilds its registry when it moves, so a change
//! reaches all instances within that interval plus one round trip. With the
//! memory store there is one instance and nothing to share. Every store call
//! waits at most `store.timeout_ms`.

use std::future::Future;
use std::time::Duration;

use tollgate::store::RedisConnection;

use crate::overrides::Stored;
use crate::registry::Overrides;

const OVERRIDES_KEY: &str = "tollgate:{config}:overrides";
const VERSION_KEY: &str = "tollgate:{config}:version";

/// Where live changes are published.
#[derive(Clone)]
pub enum LiveSync {
    /// This process only.
    Local,
    /// Shared through Redis; each call waits at most the duration.
    Redis(RedisConnection, Duration),
}

async fn timed<T>(
    timeout: Duration,
    f: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

impl std::fmt::Debug for LiveSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LiveSync::Local => "LiveSync::Local",
            LiveSync::Redis(..) => "LiveSync::Redis",
        })
    }
}

impl LiveSync {
    /// The current version of the shared overrides (0 when none were published).
    pub async fn version(&self) -> Result<u64, String> {
        match self {
            LiveSync::Local => Ok(0),
            LiveSync::Redis(conn, t) => {
                let mut conn = conn.clone();
                let v: Option<u64> = timed(
                    *t,
                    redis::cmd("GET").arg(VERSION_KEY).query_async(&mut conn),
                )
                .await?;
                Ok(v.unwrap_or(0))
            }
        }
    }

    /// The shared overrides and their version.
    pub async fn load(&self) -> Result<(u64, Option<Overrides>), String> {
        match self {
            LiveSync::Local => Ok((0, None)),
            LiveSync::Redis(conn, t) => {
                let mut conn = conn.clone();
                let (version, json): (Option<u64>, Option<String>) = timed(
                    *t,
                    redis::pipe()
                        .atomic()
                        .get(VERSION_KEY)
                        .get(OVERRIDES_KEY)
                        .query_async(&mut conn),
                )
                .await?;
                let version = version.unwrap_or(0);
                let overrides = match json {
                    Some(j) => Some(read_stored(&j, version)?),
                    None => None,
                };
                Ok((version, overrides))
            }
        }
    }

    /// Publishes new overrides; returns their version.
    pub async fn publish(&self, overrides: &Overrides) -> Result<u64, String> {
        match self {
            LiveSync::Local => Ok(0),
            LiveSync::Redis(conn, t) => {
                let mut conn = conn.clone();
                let json = serde_json::to_string(overrides).map_err(|e| e.to_string())?;
                let (version,): (u64,) = timed(
                    *t,
                    redis::pipe()
                        .atomic()
                        .set(OVERRIDES_KEY, json)
                        .ignore()
                        .incr(VERSION_KEY, 1)
                        .query_async(&mut conn),
                )
                .await?;
                Ok(version)
            }
        }
    }

    /// Answers whether the store is reachable (for `/readyz`).
    pub async fn ping(&self) -> Result<(), String> {
        match self {
            LiveSync::Local => Ok(()),
            LiveSync::Redis(conn, t) => {
                let mut conn = conn.clone();
                timed(*t, redis::cmd("PING").query_async::<String>(&mut conn))
                    .await
                    .map(|_| ())
            }
        }
    }
}

/// The overrides stored at `version`. Those of the previous release are read
/// (and said so: the next admin change rewrites them); an unreadable value
/// is an error that names the key and how to remove it.
fn read_stored(json: &str, version: u64) -> Result<Overrides, String> {
    match Overrides::from_stored(json, version) {
        Ok(Stored::Current(o)) => Ok(o),
        Ok(Stored::Previous(o)) => {
            tracing::warn!(
                key = OVERRIDES_KEY,
                version,
                "live overrides stored by the previous release (whole tiers, no versions): \
                 read as overrides of every field of each tier they name; the next admin \
                 change stores them in today's format"
            );
            Ok(o)
        }
        Err(e) => Err(format!(
            "cannot read the live overrides in Redis key {OVERRIDES_KEY} ({e}); \
             to drop them and start from the config file alone: \
             redis-cli -u REDIS_URL DEL '{OVERRIDES_KEY}'"
        )),
    }
}
