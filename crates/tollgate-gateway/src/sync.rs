//! Notices of registry changes, shared by every instance on one store.
//!
//! The registry itself lives in the database ([`crate::registry`]); with
//! Redis, an instance that wrote change N raises `tollgate:{config}:registry`
//! to N (never lowers it), and every instance reads that number every
//! `store.sync_interval_ms` (250 ms by default) and applies the changes it
//! lacks from the database, so a change reaches all instances within that
//! interval plus the reads. A store restarted empty answers no number, and
//! instances read the database's change list every
//! [`REREAD_EVERY`](crate::registry::REREAD_EVERY) checks anyway. With the
//! memory store there is one instance and no notice. Every store call has
//! the limit `store.timeout_ms`, judged as the limit store's own calls are
//! (`RedisStore::await_command`): it fails when Redis stopped answering,
//! not while it only waits in this process.
//!
//! Releases before the registry kept their overrides in the store, at
//! `tollgate:{config}:overrides` (with `tollgate:{config}:version`); they
//! are read once at start ([`LiveSync::legacy`]), written into the
//! database and removed from the store ([`LiveSync::forget_legacy`]).

use std::future::Future;
use std::time::Duration;

use tollgate::store::RedisStore;

use crate::overrides::Stored;
use crate::registry::Overrides;

const NOTICE_KEY: &str = "tollgate:{config}:registry";
const LEGACY_OVERRIDES_KEY: &str = "tollgate:{config}:overrides";
const LEGACY_VERSION_KEY: &str = "tollgate:{config}:version";

/// Raises KEYS[1] to ARGV[1] unless it is already higher; answers it.
const RAISE: &str = "local v = tonumber(redis.call('GET', KEYS[1]) or '0') \
    local n = tonumber(ARGV[1]) \
    if n > v then redis.call('SET', KEYS[1], ARGV[1]) return n end \
    return v";

/// Where change notices are published.
#[derive(Clone)]
pub enum LiveSync {
    /// This process only.
    Local,
    /// Shared through the Redis of the limit store, on its connection; each
    /// call waits at most the duration, judged as every store call is
    /// ([`RedisStore::await_command`]).
    Redis(RedisStore, Duration),
}

/// Awaits `call`, a command on `store`'s connection, within `timeout`,
/// judged as every store call is; `what` names it in the error.
async fn timed<T>(
    store: &RedisStore,
    timeout: Duration,
    what: &str,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    store
        .await_command(what, timeout, call)
        .await
        .map_err(|e| e.to_string())
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
    /// The last change number announced (0 when none was, or the store
    /// lost it).
    pub async fn announced(&self) -> Result<u64, String> {
        match self {
            LiveSync::Local => Ok(0),
            LiveSync::Redis(store, t) => {
                let mut conn = store.connection().clone();
                let v: Option<u64> = timed(
                    store,
                    *t,
                    "reading the registry's change notice",
                    redis::cmd("GET").arg(NOTICE_KEY).query_async(&mut conn),
                )
                .await?;
                Ok(v.unwrap_or(0))
            }
        }
    }

    /// Announces change `version` to the other instances.
    pub async fn announce(&self, version: u64) -> Result<(), String> {
        match self {
            LiveSync::Local => Ok(()),
            LiveSync::Redis(store, t) => {
                let mut conn = store.connection().clone();
                let script = redis::Script::new(RAISE);
                timed(
                    store,
                    *t,
                    "announcing a registry change",
                    script
                        .key(NOTICE_KEY)
                        .arg(version)
                        .invoke_async::<u64>(&mut conn),
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// The overrides a previous release kept in the store, if any.
    pub async fn legacy(&self) -> Result<Option<Overrides>, String> {
        match self {
            LiveSync::Local => Ok(None),
            LiveSync::Redis(store, t) => {
                let mut conn = store.connection().clone();
                let (version, json): (Option<u64>, Option<String>) = timed(
                    store,
                    *t,
                    "reading the earlier release's overrides",
                    redis::pipe()
                        .atomic()
                        .get(LEGACY_VERSION_KEY)
                        .get(LEGACY_OVERRIDES_KEY)
                        .query_async(&mut conn),
                )
                .await?;
                match json {
                    Some(j) => Ok(Some(read_stored(&j, version.unwrap_or(0))?)),
                    None => Ok(None),
                }
            }
        }
    }

    /// Removes the previous releases' overrides from the store (once they
    /// are in the database).
    pub async fn forget_legacy(&self) -> Result<(), String> {
        match self {
            LiveSync::Local => Ok(()),
            LiveSync::Redis(store, t) => {
                let mut conn = store.connection().clone();
                timed(
                    store,
                    *t,
                    "removing the earlier release's overrides",
                    redis::cmd("DEL")
                        .arg(LEGACY_OVERRIDES_KEY)
                        .arg(LEGACY_VERSION_KEY)
                        .query_async::<u64>(&mut conn),
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// Answers whether the store is reachable (for `/readyz`).
    pub async fn ping(&self) -> Result<(), String> {
        match self {
            LiveSync::Local => Ok(()),
            LiveSync::Redis(store, t) => {
                let mut conn = store.connection().clone();
                timed(
                    store,
                    *t,
                    "PING",
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await
                .map(|_| ())
            }
        }
    }
}

/// The overrides stored at `version`, in today's format or the previous
/// release's (whole tiers and bare client → tier names); an unreadable value
/// is an error that names the key and how to remove it.
fn read_stored(json: &str, version: u64) -> Result<Overrides, String> {
    match Overrides::from_stored(json, version) {
        Ok(Stored::Current(o)) => Ok(o),
        Ok(Stored::Previous(o)) => {
            tracing::warn!(
                key = LEGACY_OVERRIDES_KEY,
                version,
                "live overrides stored by an older release (whole tiers, no versions): \
                 read as overrides of every field of each tier they name"
            );
            Ok(o)
        }
        Err(e) => Err(format!(
            "cannot read the live overrides an earlier release left in Redis key \
             {LEGACY_OVERRIDES_KEY} ({e}); to drop them and start from the config file \
             and the registry's database: redis-cli -u REDIS_URL DEL '{LEGACY_OVERRIDES_KEY}'"
        )),
    }
}
