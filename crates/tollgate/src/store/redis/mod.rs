//! The Redis store: every key's state in Redis, changed only by Lua scripts
//! (`reserve.lua`, `settle.lua`, `snapshot.lua` next to this file) that port the
//! arithmetic of `tollgate-core` and read the time from Redis itself.
//!
//! Per limiter key `K` there are a hash `<prefix>:{K}:s` (TAT and refunds per
//! dimension, the id sequence) and one sorted set `<prefix>:{K}:q<class>` per
//! priority class (queued reservation ids scored by slot). All carry the hash
//! tag `{K}`, so the same scripts run on Redis Cluster, and all expire once the
//! key's backlog has drained (plus [`RedisOptions::idle_ttl`]).

mod connection;
mod error;
mod fingerprint;
mod options;
mod scripts;

pub use self::connection::RedisConnection;
pub use self::options::{RedisOptions, TlsOptions};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ErrorKind, ServerErrorKind, Value};
use tollgate_core::{Policy, ReserveError, Settled, DIMENSIONS};

use self::error::{store_error, timed_out};
use self::scripts::Keys;
use super::{
    AdvanceCall, Advanced, Backend, KeySnapshot, ReserveCall, Reserved, SettleCall, StoreError,
};

/// The Redis store: standalone (`redis://`), TLS (`rediss://`) or Cluster
/// (`redis+cluster://`). Cheap to clone: clones share the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), tollgate::Error> {
/// use tollgate::store::{RedisOptions, RedisStore};
/// use tollgate::{Limits, RateLimiter, Store};
///
/// let redis = RedisStore::connect("redis://:secret@10.0.0.5:6379/2", RedisOptions::default())
///     .await
///     .map_err(tollgate::Error::Store)?;
/// let store = Store::Redis(redis);
/// let gpt4o = RateLimiter::with_store(&store, "openai/gpt-4o", Limits::new().rpm(500).tpm(30_000))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    settings: Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    prefix: String,
    idle_ms: u64,
    timeout: Duration,
    /// The server's clock at the last reply and when it arrived here: gives
    /// each call a deadline on the server's clock.
    clock: parking_lot::Mutex<Option<(f64, Instant)>>,
}

impl Settings {
    /// The latest server time by which a call sent now is still awaited;
    /// `None` before the first reply. The estimate trails the server's clock
    /// by the reply's travel time, so the deadline errs late, never early.
    fn deadline(&self) -> Option<f64> {
        let (server, at) = (*self.clock.lock())?;
        Some(server + at.elapsed().as_secs_f64() + self.timeout.as_secs_f64())
    }

    fn saw(&self, server_now: f64) {
        *self.clock.lock() = Some((server_now, Instant::now()));
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("prefix", &self.settings.prefix)
            .finish()
    }
}

impl RedisStore {
    /// Connects to Redis from a URL:
    ///
    /// - `redis://[:password@]host:port[/db]` (also `redis://user:password@…`),
    /// - `rediss://…` for TLS (see [`TlsOptions`]),
    /// - `redis+cluster://[:password@]host:port,host:port` (or `rediss+cluster://`)
    ///   for a Redis Cluster given by some of its nodes.
    ///
    /// Loads the scripts, so a bad password or an unreachable server shows here.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let conn = connection::connect_url(url, &options).await?;
        let store = Self::build(conn, &options);
        if !options.lazy {
            store.load_scripts().await?;
        }
        Ok(store)
    }

    /// Connects to a Redis Cluster from some of its nodes (`host:port`,
    /// `redis://host:port` or `rediss://host:port`).
    pub async fn connect_cluster<S: AsRef<str>>(
        nodes: &[S],
        options: RedisOptions,
    ) -> Result<Self, StoreError> {
        options.validate()?;
        let nodes: Vec<String> = nodes.iter().map(|n| n.as_ref().to_string()).collect();
        if nodes.is_empty() {
            return Err(StoreError::Failed(
                "no Cluster nodes given: pass at least one host:port".into(),
            ));
        }
        let conn = connection::connect_cluster(&nodes, &options).await?;
        let store = Self::build(conn, &options);
        store.load_scripts().await?;
        Ok(store)
    }

    /// A store on a connection the application already has: a
    /// [`redis::aio::ConnectionManager`] (reconnects by itself), a
    /// [`redis::aio::MultiplexedConnection`] or a
    /// [`redis::cluster_async::ClusterConnection`]. The connection's own
    /// timeouts apply; `options` gives the key prefix, the idle TTL and the
    /// longest an operation may take.
    pub fn from_connection(
        conn: impl Into<RedisConnection>,
        options: RedisOptions,
    ) -> Result<Self, StoreError> {
        options.validate()?;
        Ok(Self::build(conn.into(), &options))
    }

    /// [`RedisStore::from_connection`] with [`RedisOptions::default`].
    pub fn with_default_options(conn: impl Into<RedisConnection>) -> Self {
        Self::build(conn.into(), &RedisOptions::default())
    }

    fn build(conn: RedisConnection, options: &RedisOptions) -> Self {
        RedisStore {
            conn,
            settings: Arc::new(Settings {
                prefix: options.key_prefix.clone(),
                idle_ms: options.idle_ttl.as_millis().max(1) as u64,
                timeout: options.operation_timeout(),
                clock: parking_lot::Mutex::new(None),
            }),
        }
    }

    /// The connection the store uses (clones share it).
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// The Redis key names of a limiter key: its state hash and the queue of
    /// class 0 (others end in `q1`, `q2`, …). For inspection and tests.
    pub fn key_names(&self, key: &str) -> (String, String) {
        let keys = Keys::new(&self.settings.prefix, key);
        (keys.state(), keys.queue(0))
    }

    /// Records `fingerprint` as the limits of `key` for `ttl` unless a
    /// different one is stored (or `replace`); returns the one stored before.
    pub(crate) async fn claim_fingerprint(
        &self,
        key: &str,
        fingerprint: &str,
        ttl: Duration,
        replace: bool,
    ) -> Result<Option<String>, StoreError> {
        let name = fingerprint::key_name(&self.settings.prefix, key);
        let claim = fingerprint::claim(self.conn.clone(), name, fingerprint.into(), ttl, replace);
        self.bounded("recording the limits", claim).await
    }

    /// Loads the three scripts (`SCRIPT LOAD`; every primary of a Cluster).
    /// Not required: a call whose script is missing loads it and runs again.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in [&*scripts::RESERVE, &*scripts::SETTLE, &*scripts::SNAPSHOT] {
            let mut conn = self.conn.clone();
            let inv = script.prepare_invoke();
            self.bounded("loading the scripts", async move {
                inv.load_async(&mut conn).await
            })
            .await?;
        }
        Ok(())
    }

    /// [`Backend::settle`] that also tells the store time (seconds) the
    /// settlement was made at: what the refund caps were computed with.
    pub async fn settle_timed(&self, call: &SettleCall<'_>) -> Result<(Settled, f64), StoreError> {
        let keys = Keys::new(&self.settings.prefix, call.key);
        let deadline = self.settings.deadline();
        let inv = scripts::settle_invocation(&keys, call, self.settings.idle_ms, deadline)?;
        let reply = self.run("settle", inv).await?;
        let r = scripts::settle_reply(&reply)?;
        self.settings.saw(r.now);
        let mut charged = [0.0; DIMENSIONS];
        for (i, c) in charged.iter_mut().enumerate() {
            let delta = call.actual[i] - call.mark.cost[i];
            if call.policy.increment[i] > 0.0 && delta > 0.0 {
                *c = delta;
            }
        }
        let settled = Settled {
            state: r.state,
            charged,
            refunded: r.refunded,
            returned: r.returned,
        };
        Ok((settled, r.now))
    }

    /// Runs a script by SHA (`EVALSHA`); after `NOSCRIPT` (Redis restarted,
    /// `SCRIPT FLUSH`, a new Cluster node) loads it and runs it once more. The
    /// whole is bounded by the operation timeout.
    async fn run(&self, what: &str, inv: scripts::Invocation) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(what, async move {
            match inv.cmd.query_async::<Value>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    inv.script.prepare_invoke().load_async(&mut conn).await?;
                    inv.cmd.query_async(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let limit = self.settings.timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result.map_err(store_error),
            Err(_) => Err(timed_out(what, limit)),
        }
    }
}

impl Backend for RedisStore {
    async fn reserve(
        &self,
        call: &ReserveCall<'_>,
    ) -> Result<Result<Reserved, ReserveError>, StoreError> {
        let keys = Keys::new(&self.settings.prefix, call.key);
        let deadline = self.settings.deadline();
        let inv = scripts::reserve_invocation(&keys, call, self.settings.idle_ms, deadline)?;
        let reply = self.run("reserve", inv).await?;
        let reply = scripts::reserve_reply(&reply, call)?;
        if let Ok(r) = &reply {
            self.settings.saw(r.now);
        }
        Ok(reply)
    }

    async fn settle(&self, call: &SettleCall<'_>) -> Result<Settled, StoreError> {
        Ok(self.settle_timed(call).await?.0)
    }

    async fn advance(&self, call: &AdvanceCall<'_>) -> Result<Option<Advanced>, StoreError> {
        let keys = Keys::new(&self.settings.prefix, call.key);
        let inv = scripts::advance_invocation(&keys, call)?;
        let reply = self.run("advance", inv).await?;
        scripts::advance_reply(&reply)
    }

    async fn snapshot(&self, key: &str, _policy: &Policy) -> Result<KeySnapshot, StoreError> {
        let keys = Keys::new(&self.settings.prefix, key);
        let reply = self
            .run("snapshot", scripts::snapshot_invocation(&keys))
            .await?;
        let (now, state, queue_depth) = scripts::snapshot_reply(&reply)?;
        Ok(KeySnapshot {
            now,
            state,
            queue_depth,
        })
    }
}
