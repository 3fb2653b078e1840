//! The Redis store: every key's state in Redis, changed only by Lua scripts
//! (`reserve.lua`, `settle.lua`, `advance.lua`, `snapshot.lua` next to this
//! file, and the token claim of `claim.rs`) that port the arithmetic of
//! `tollgate-core` and read the time from Redis itself.
//!
//! Per limiter key `K` there are a hash `<prefix>:{K}:s` (the id sequence,
//! expiry and classes as integers, TAT and refunds of the dimensions in use
//! as binary doubles, all in one field of at most 64 bytes for three
//! dimensions, so that Redis keeps the hash as a listpack; see `state.lua`),
//! one sorted set `<prefix>:{K}:q<class>` per priority class
//! (queued reservation ids scored by slot) and its headroom index
//! `<prefix>:{K}:h<class>`. All carry the hash
//! tag `{K}`, so the same scripts run on Redis Cluster, and all expire one to
//! two [`RedisOptions::idle_ttl`] after the key's backlog has drained; so do
//! the lease set `:l` and lease records `:m` of queued reservations and the
//! vacancy hash `:v` (seconds vacated by cancelled reservations, handed to
//! the ones behind; see `settle.lua`). `:r` marks reservations whose lease
//! ran out until their cancellation (10 min), `:d:<id>` a settled permit
//! token (for `TOKEN_LIFETIME`), `:f` the key's limits (for
//! `FINGERPRINT_TTL`), and `:b` the pool of borrowers of a key whose classes
//! share its bucket (`lend.rs`; one [`RedisOptions::idle_ttl`] after its
//! last use). A lane's state hash also holds, in field `sh`, the share its
//! line is in since the classes' shares last changed (`reshare.rs`). One more key,
//! `<prefix>:epoch`, never expires: it tells a key that expired while idle
//! from a store that lost everything (see [`AfterReset`]).
//!
//! Concurrent reservations of one key and class travel together: while one
//! call of `reserve.lua` is on its way, those that come meanwhile wait for it
//! and then go as one call (at most [`MAX_BATCH`]), which places each in its
//! turn, in arrival order, as if it had come alone. A lone caller goes at
//! once and waits for nothing. Settlements and cancellations of one key
//! travel together the same way (see `settling`).

mod claim;
mod connection;
mod error;
mod fingerprint;
mod handover;
mod lanes;
mod lend;
mod liveness;
mod options;
mod reshare;
mod scripts;
mod settling;
mod together;

pub use self::connection::RedisConnection;
pub use self::options::{AfterReset, RedisOptions, TlsOptions};

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ErrorKind, ServerErrorKind, Value};
use tollgate_core::{Dims, Policy, ReserveError, Settled, DIMENSIONS};

use self::error::{no_answer, store_error};
use self::handover::InFlight;
use self::scripts::{Keys, ReserveArgs, ReserveContext, ReserveNews};
use super::together::{GateScript, NO_GATE};
use super::{
    Advance, AdvanceCall, Backend, Claim, KeySnapshot, ReserveCall, Reserved, SettleCall,
    StoreError,
};
use crate::background::{self, Place};

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
    /// The store's epoch key on a standalone server (see [`Keys::epoch`]),
    /// named once.
    epoch_key: String,
    idle_ms: u64,
    timeout: Duration,
    /// The longest a call waits while Redis answers the probes
    /// (`late_reply_timeout`).
    late: Duration,
    /// What the probes found (see `liveness`).
    liveness: liveness::Liveness,
    after_reset: AfterReset,
    /// The server's clock as the replies told it: gives each call a
    /// deadline on the server's clock.
    clock: liveness::ServerClock,
    /// How to open another connection to the same server, when the store
    /// was made from a URL or nodes (not from the application's connection).
    origin: Option<Origin>,
    /// A connection opened on the library's own runtime, for work that
    /// outlives the caller's runtime (see `crate::background`).
    own: tokio::sync::OnceCell<RedisConnection>,
    /// Reservations nobody owns any more, to cancel (see `cancel_soon`).
    cancels: parking_lot::Mutex<Vec<Cancel>>,
    /// Per key and class whose call of `reserve.lua` is on its way, the
    /// reservations that came meanwhile, in arrival order: they travel
    /// together in the next call (see `Backend::reserve`).
    lanes: parking_lot::Mutex<Map<Lane, VecDeque<Waiting>>>,
    /// The same for settlements, per key (see `settling`).
    settles: parking_lot::Mutex<Map<Box<str>, VecDeque<settling::Waiting>>>,
    /// What this process knows of the store's state: epochs and TATs.
    seen: parking_lot::Mutex<Seen>,
    /// Times the store was found to have lost its state.
    resets: AtomicU64,
    /// Held while a script missing from Redis is loaded.
    loading: tokio::sync::Mutex<()>,
}

/// A reservation to cancel in the background: its caller went away.
#[derive(Debug)]
pub(crate) struct Cancel {
    /// The limiter key.
    pub(crate) key: String,
    /// The key's limits.
    pub(crate) policy: Policy,
    /// The reservation's class, id, slot and mark.
    pub(crate) class: u8,
    pub(crate) id: u64,
    pub(crate) slot: f64,
    pub(crate) mark: tollgate_core::Mark,
    /// Whether it was granted at once (its slot was the time it was made):
    /// it has started, whatever this process's estimate of the server's
    /// clock says.
    pub(crate) at_once: bool,
}

/// How long background cancellations gather before they are sent together,
/// each key's in the order that gives back most (see `send_cancels`).
const CANCEL_GATHER: Duration = Duration::from_millis(5);

/// Most reservations one call of `reserve.lua` carries (and settlements one
/// call of `settle.lua`): a bigger batch waits for the next call.
const MAX_BATCH: usize = 64;

/// The store's maps of keys, lanes and epochs: every call looks in them,
/// and std's default hasher cost more than what it looked up.
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// A key and class: the reservations of one call of `reserve.lua`.
type Lane = (Box<str>, u8);

/// A reservation waiting for the call ahead of it on its key and class.
struct Waiting {
    args: ReserveArgs,
    reply: tokio::sync::oneshot::Sender<Result<Value, StoreError>>,
    owner: Orphan,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("key", &self.owner.key)
            .finish()
    }
}

/// Where a store's connection came from.
#[derive(Debug, Clone)]
enum Origin {
    Url(String, RedisOptions),
    Nodes(Vec<String>, RedisOptions),
}

/// Keys this process holds at most in [`Seen::tat`] before it forgets the
/// ones whose backlog has drained.
const MAX_KNOWN_KEYS: usize = 10_000;

/// What this process was told by the store.
#[derive(Debug, Default)]
struct Seen {
    /// The epoch last seen, by epoch key name (one on a standalone server).
    epochs: Map<String, Arc<str>>,
    /// Per limiter key, the highest TAT per dimension a reservation was told:
    /// how far its own reservations reach should the store lose them.
    tat: Map<Box<str>, Dims>,
}

impl Settings {
    /// The latest server time by which a call sent now must reach Redis:
    /// one that reaches it later writes nothing, so a caller that gave up
    /// (Redis answered no probe meanwhile: see `liveness`) leaves nothing
    /// behind, and one still waiting sends it again (see
    /// `Backend::reserve`). `None` before the first reply. The estimate
    /// trails the server's clock by the reply's travel time, so the
    /// deadline errs late, never early.
    fn deadline(&self) -> Option<f64> {
        Some(self.server_now()? + self.timeout.as_secs_f64())
    }

    /// The server's clock as last seen plus the time since (trailing it by
    /// a reply's travel time); `None` before the first reply.
    fn server_now(&self) -> Option<f64> {
        self.clock.now()
    }

    fn saw(&self, server_now: f64) {
        self.clock.saw(server_now);
    }

    /// Reads a reservation's reply and records what it tells.
    fn took(
        &self,
        reply: &Value,
        call: &ReserveCall<'_>,
        epoch_key: &str,
    ) -> Result<Result<Reserved, ReserveError>, StoreError> {
        Ok(match scripts::reserve_reply(reply, call)? {
            Ok((r, news)) => {
                self.saw(r.now);
                self.granted(call.key, epoch_key, &r, &news);
                Ok(r)
            }
            Err(e) => Err(e),
        })
    }

    /// Records what a granted reservation was told; reports a reset (an
    /// epoch other than the one seen before).
    fn granted(&self, key: &str, epoch_key: &str, r: &Reserved, news: &ReserveNews) {
        let mut seen = self.seen.lock();
        if seen.tat.len() >= MAX_KNOWN_KEYS {
            seen.tat.retain(|_, t| t.iter().any(|&t| t > r.now));
        }
        match seen.tat.get_mut(key) {
            Some(t) => {
                for (t, &e) in t.iter_mut().zip(&r.mark.end) {
                    *t = t.max(e);
                }
            }
            None => {
                seen.tat.insert(key.into(), r.mark.end);
            }
        }
        let Some(epoch) = &news.epoch else { return };
        match seen.epochs.get(epoch_key) {
            Some(old) if **old == **epoch => {}
            Some(old) => {
                self.resets.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    prefix = %self.prefix,
                    key,
                    epoch_was = %old,
                    epoch = %epoch,
                    after_reset = ?self.after_reset,
                    "the store lost its state (Redis restarted empty or was flushed): \
                     its buckets start {}",
                    match self.after_reset {
                        AfterReset::Full => "full, as configured (after_reset = Full)",
                        _ => "drained, as if the last window had been used in full",
                    }
                );
                seen.epochs
                    .insert(epoch_key.to_string(), epoch.as_str().into());
            }
            None => {
                seen.epochs
                    .insert(epoch_key.to_string(), epoch.as_str().into());
            }
        }
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
        let mut store = Self::build(conn, &options);
        store.settings_mut().origin = Some(Origin::Url(url.to_string(), options.clone()));
        if !options.lazy {
            store.load_scripts().await?;
            store.read_clock().await?;
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
        let mut store = Self::build(conn, &options);
        store.settings_mut().origin = Some(Origin::Nodes(nodes, options.clone()));
        store.load_scripts().await?;
        store.read_clock().await?;
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
                epoch_key: Keys::new(&options.key_prefix, "").epoch(false),
                idle_ms: options.idle_ttl.as_millis().max(1) as u64,
                // A call waits this long for its reply; one still on its way
                // then is finished in the background (`late_reply_timeout`).
                timeout: options.response_timeout,
                late: options.late_reply_timeout,
                liveness: liveness::Liveness::new(options.response_timeout),
                after_reset: options.after_reset,
                clock: liveness::ServerClock::default(),
                origin: None,
                own: tokio::sync::OnceCell::new(),
                cancels: parking_lot::Mutex::new(Vec::new()),
                lanes: parking_lot::Mutex::new(Map::default()),
                settles: parking_lot::Mutex::new(Map::default()),
                seen: parking_lot::Mutex::new(Seen::default()),
                resets: AtomicU64::new(0),
                loading: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Whether `other` is this store or a clone of it.
    pub(crate) fn same_as(&self, other: &RedisStore) -> bool {
        Arc::ptr_eq(&self.settings, &other.settings)
    }

    /// Cancels a reservation whose caller went away, from the background: on
    /// the caller's runtime while it lives, else on the library's own with a
    /// connection of its own. Cancellations that come together are sent
    /// together, each key's started ones first (see `send_cancels`).
    pub(crate) fn cancel_soon(&self, cancel: Cancel) {
        let first = {
            let mut pending = self.settings.cancels.lock();
            pending.push(cancel);
            pending.len() == 1
        };
        if first {
            self.start_cancelling();
        }
    }

    fn start_cancelling(&self) {
        let store = self.clone();
        background::run(Box::new(move |place| {
            Box::pin(async move { store.send_cancels(place).await })
        }));
    }

    async fn send_cancels(self, place: Place) {
        // Dropped before it has sent them (its runtime shut down), it hands
        // what is left to the library's own runtime.
        let restart = Restart(self.clone());
        tokio::time::sleep(CANCEL_GATHER).await;
        let store = match place {
            Place::Caller => self.clone(),
            Place::Own => match self.on_own_connection().await {
                Ok(own) => own,
                Err(e) => {
                    let lost = std::mem::take(&mut *self.settings.cancels.lock());
                    tracing::warn!(error = %e, cancels = lost.len(), "could not connect to cancel reservations whose callers went away");
                    std::mem::forget(restart);
                    return;
                }
            },
        };
        loop {
            let mut batch = std::mem::take(&mut *self.settings.cancels.lock());
            if batch.is_empty() {
                break;
            }
            // Per key: the started first, earliest first (a started one's
            // refund is bounded by the refunds made on the key since it was
            // taken, so one sent after a later one's gives back less, or
            // nothing at the front of the line: `tollgate_core::settle`);
            // then the queued, latest first (each hands what it cannot give
            // back to the one charged right after it, through the ones
            // cancelled before it: see `settle.lua`). This process's
            // estimate of the server's clock trails it: one granted at once
            // counts as started whatever the estimate says.
            let now = self.settings.server_now().unwrap_or(f64::INFINITY);
            batch.sort_by(|a, b| {
                let order = |c: &Cancel| {
                    if c.at_once || c.slot <= now {
                        (0, c.id)
                    } else {
                        (1, u64::MAX - c.id)
                    }
                };
                a.key.cmp(&b.key).then(order(a).cmp(&order(b)))
            });
            // Sent from the back; those not sent yet go back to the pending
            // ones should this task be dropped (one already on its way is
            // not sent again).
            batch.reverse();
            let mut unsent = Unsent(self.clone(), batch);
            // One call per key (at most `MAX_BATCH` a call), in that order.
            while let Some(c) = unsent.1.pop() {
                let mut group = vec![c];
                while group.len() < MAX_BATCH
                    && unsent.1.last().is_some_and(|n| n.key == group[0].key)
                {
                    group.extend(unsent.1.pop());
                }
                let calls: Vec<SettleCall> = group
                    .iter()
                    .map(|c| SettleCall {
                        key: &c.key,
                        policy: &c.policy,
                        class: c.class,
                        id: c.id,
                        slot: c.slot,
                        mark: c.mark,
                        actual: [0.0; DIMENSIONS],
                    })
                    .collect();
                let outcomes = match store.settle_many(&calls).await {
                    Ok(outcomes) => outcomes,
                    Err(e) => vec![Err(e); group.len()],
                };
                for (c, outcome) in group.iter().zip(outcomes) {
                    match outcome {
                        Ok(_) => {
                            tracing::debug!(key = %c.key, id = c.id, "cancelled a reservation whose caller went away")
                        }
                        Err(e) => {
                            tracing::warn!(key = %c.key, id = c.id, error = %e, "could not cancel a reservation whose caller went away")
                        }
                    }
                }
            }
        }
        std::mem::forget(restart);
    }

    /// Cancels reservations whose owners stopped confirming them (handed out
    /// by `advance.lua`), so the ones behind move up.
    fn cancel_lapsed(&self, key: &str, policy: &Policy, lapsed: Vec<scripts::Lapsed>) {
        for l in lapsed {
            tracing::info!(
                key,
                id = l.id,
                "cancelling a reservation whose lease ran out (its owner stopped confirming it)"
            );
            self.cancel_soon(Cancel {
                key: key.to_string(),
                policy: policy.clone(),
                class: l.class,
                id: l.id,
                slot: l.slot,
                mark: l.mark,
                at_once: false, // it was queued: it had a lease
            });
        }
    }

    /// Reads the server's clock, so that even the first calls carry a
    /// deadline (a call that reaches a server paused past it writes nothing).
    async fn read_clock(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = self
            .bounded("reading the clock", async move {
                redis::cmd("TIME").query_async(&mut conn).await
            })
            .await?;
        self.settings.saw(secs as f64 + micros as f64 / 1e6);
        Ok(())
    }

    fn settings_mut(&mut self) -> &mut Settings {
        Arc::get_mut(&mut self.settings).expect("set before the store is shared")
    }

    /// This store on a connection of its own, opened on first use from the
    /// URL or nodes it was made from: for work on the library's own runtime,
    /// where connections of a runtime that shut down are dead. A store made
    /// from the application's connection uses that one.
    pub(crate) async fn on_own_connection(&self) -> Result<RedisStore, StoreError> {
        let Some(origin) = &self.settings.origin else {
            return Ok(self.clone());
        };
        let conn = self
            .settings
            .own
            .get_or_try_init(|| async {
                match origin {
                    Origin::Url(url, options) => connection::connect_url(url, options).await,
                    Origin::Nodes(nodes, options) => {
                        connection::connect_cluster(nodes, options).await
                    }
                }
            })
            .await?;
        Ok(RedisStore {
            conn: conn.clone(),
            settings: self.settings.clone(),
        })
    }

    /// The connection the store uses (clones share it).
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// Times this store was found to have lost its state (see
    /// [`AfterReset`]): each reset once, in this process.
    pub fn resets(&self) -> u64 {
        self.settings.resets.load(Ordering::Relaxed)
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

    /// Loads the scripts (`SCRIPT LOAD`; every primary of a Cluster).
    /// Not required: a call whose script is missing loads it and runs again.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in [
            &*scripts::RESERVE,
            &*scripts::SETTLE,
            &*scripts::SNAPSHOT,
            &*scripts::ADVANCE,
            &NO_GATE.script,
            &*lend::LEND,
        ] {
            self.load_script(script).await?;
        }
        Ok(())
    }

    /// Loads the script of a joint reservation with `gate`
    /// ([`crate::RateLimiter::reserve_together`]), so that its first calls
    /// find it: a burst of calls that each found it missing would each load
    /// it (see `run_unbounded`).
    pub async fn load_gate(&self, gate: &GateScript) -> Result<(), StoreError> {
        self.load_script(&gate.script).await
    }

    async fn load_script(&self, script: &redis::Script) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let inv = script.prepare_invoke();
        self.bounded("loading the scripts", async move {
            inv.load_async(&mut conn).await
        })
        .await?;
        Ok(())
    }

    /// Several reservations of one key and class in one script call, placed
    /// in the order given, each exactly as if it had come alone at the time
    /// of the call: its own slot, queue position or refusal. Concurrent
    /// [`Backend::reserve`] calls on one key and class travel together this
    /// way by themselves; this is the same call made explicitly.
    ///
    /// The outer error is the store's (nothing was placed, or the call may
    /// have been applied when it did not answer in time); a call with more
    /// than one key or class is refused with [`StoreError::Failed`].
    pub async fn reserve_many(
        &self,
        calls: &[ReserveCall<'_>],
    ) -> Result<Vec<Result<Reserved, ReserveError>>, StoreError> {
        let Some(first) = calls.first() else {
            return Ok(Vec::new());
        };
        if let Some(other) = calls
            .iter()
            .find(|c| c.key != first.key || c.class != first.class)
        {
            return Err(StoreError::Failed(format!(
                "reserve_many takes one key and class; got {:?} class {} and {:?} class {}",
                first.key, first.class, other.key, other.class
            )));
        }
        let settings = &*self.settings;
        let at = self.reserving(first.key);
        let (keys, cluster, epoch_key) = (&at.keys, at.cluster, &at.epoch_key);
        let ctx = at.context();
        // Too large to ever fit: refused here, not sent.
        let mut sent = Vec::new();
        let mut owners = Vec::new();
        for call in calls {
            if scripts::too_large_for(call).is_none() {
                sent.push(scripts::reserve_args(&ctx, call)?);
                owners.push(Orphan::of(self, call));
            }
        }
        let replies = if sent.is_empty() {
            Value::BulkString(Vec::new())
        } else {
            let inv = scripts::reserve_invocation(keys, cluster, &sent);
            let store = self.clone();
            // Reservations whose reply comes after the caller stopped waiting
            // have no owner: they are cancelled then.
            let count = sent.len();
            let in_flight = InFlight::new(async move { store.run_unbounded(inv).await }, {
                move |reply| async move {
                    if let Ok(v) = reply {
                        if let Ok(items) = scripts::reserve_replies(&v, count) {
                            for (owner, item) in owners.into_iter().zip(&items) {
                                owner.cancel(item);
                            }
                        }
                    }
                }
            });
            self.bounded("reserve", in_flight).await?
        };
        let replies = scripts::reserve_replies(&replies, sent.len())?;
        let mut replies = replies.iter();
        calls
            .iter()
            .map(|call| match scripts::too_large_for(call) {
                Some(e) => Ok(Err(e)),
                None => {
                    let reply = replies.next().expect("one reply per call sent");
                    settings.took(reply, call, epoch_key)
                }
            })
            .collect()
    }

    /// Runs a script by SHA (`EVALSHA`); after `NOSCRIPT` (Redis restarted,
    /// `SCRIPT FLUSH`, a new Cluster node) loads it and runs it once more. The
    /// whole is bounded by the operation timeout.
    async fn run(&self, what: &str, inv: scripts::Invocation) -> Result<Value, StoreError> {
        self.bounded(what, self.clone().run_unbounded(inv)).await
    }

    /// [`RedisStore::run`] without the time limit, owning what it needs.
    async fn run_unbounded(self, inv: scripts::Invocation) -> redis::RedisResult<Value> {
        let mut conn = self.conn.clone();
        let no_script = |r: &redis::RedisResult<Value>| matches!(r, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript));
        let first = inv.cmd.query_async::<Value>(&mut conn).await;
        if !no_script(&first) {
            return first;
        }
        // One caller at a time loads a missing script; those that found it
        // missing meanwhile find it loaded (a script may take Redis a
        // millisecond to compile: a burst must not compile it once a call).
        let _loading = self.settings.loading.lock().await;
        let again = inv.cmd.query_async::<Value>(&mut conn).await;
        if !no_script(&again) {
            return again;
        }
        inv.script.prepare_invoke().load_async(&mut conn).await?;
        inv.cmd.query_async(&mut conn).await
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.await_command(what, self.settings.timeout, fut).await
    }
}

/// What reservations of one key need from the store's settings.
struct Reserving<'a> {
    settings: &'a Settings,
    keys: Keys<'a>,
    cluster: bool,
    epoch_key: std::borrow::Cow<'a, str>,
    /// The epoch last seen (shared, not copied: every reservation reads it).
    epoch: Option<Arc<str>>,
    known: Option<Dims>,
}

impl Reserving<'_> {
    fn context(&self) -> ReserveContext<'_> {
        ReserveContext {
            idle_ms: self.settings.idle_ms,
            deadline: self.settings.deadline(),
            drained: self.settings.after_reset == AfterReset::Drained,
            epoch: self.epoch.as_deref().unwrap_or(""),
            known: self.known,
        }
    }
}

impl RedisStore {
    /// The names and what this process knows of `key`, to reserve on it.
    fn reserving<'a>(&'a self, key: &'a str) -> Reserving<'a> {
        let settings = &*self.settings;
        let keys = Keys::new(&settings.prefix, key);
        let cluster = matches!(self.conn, RedisConnection::Cluster(_));
        let epoch_key: std::borrow::Cow<'_, str> = if cluster {
            keys.epoch(true).into()
        } else {
            settings.epoch_key.as_str().into()
        };
        let seen = settings.seen.lock();
        Reserving {
            settings,
            epoch: seen.epochs.get(&*epoch_key).cloned(),
            known: seen.tat.get(key).copied(),
            keys,
            cluster,
            epoch_key,
        }
    }
}

impl RedisStore {
    /// One try of [`Backend::reserve`].
    async fn reserve_once(
        &self,
        call: &ReserveCall<'_>,
    ) -> Result<Result<Reserved, ReserveError>, StoreError> {
        if let Some(e) = scripts::too_large_for(call) {
            return Ok(Err(e));
        }
        let settings = &*self.settings;
        let at = self.reserving(call.key);
        let (keys, cluster, epoch_key) = (&at.keys, at.cluster, &at.epoch_key);
        let args = scripts::reserve_args(&at.context(), call)?;
        // A reservation whose reply nobody waits for any more (the caller's
        // time limit passed or its future was dropped) is cancelled when the
        // reply comes: it has no owner.
        let owner = Orphan::of(self, call);
        // Alone on its key and class, a reservation goes at once; while one
        // is on its way, those that come meanwhile wait for it and then
        // travel together, each placed in its turn as if it came alone.
        let lane: Lane = (call.key.into(), call.class);
        let queued = {
            let mut lanes = settings.lanes.lock();
            match lanes.get_mut(&lane) {
                Some(waiting) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    waiting.push_back(Waiting {
                        args,
                        reply: tx,
                        owner,
                    });
                    Err(Awaiting {
                        rx: Some(rx),
                        store: self,
                        call,
                    })
                }
                None => {
                    lanes.insert(lane.clone(), VecDeque::new());
                    Ok((args, owner))
                }
            }
        };
        let reply = match queued {
            Ok((args, owner)) => {
                let inv = scripts::reserve_invocation(keys, cluster, [&args]);
                let store = self.clone();
                let release = lanes::Release::<Waiting>::new(self.clone(), lane);
                let sent = InFlight::new(
                    async move {
                        let reply = store.run_unbounded(inv).await;
                        drop(release);
                        reply
                    },
                    |reply| async move {
                        if let Ok(v) = reply {
                            if let Ok(items) = scripts::reserve_replies(&v, 1) {
                                owner.cancel(&items[0]);
                            }
                        }
                    },
                );
                let reply = self.bounded("reserve", sent).await?;
                scripts::reserve_replies(&reply, 1)?.swap_remove(0)
            }
            Err(mut awaiting) => match self.await_reply(settings.timeout, awaiting.recv()).await {
                Ok(Ok(reply)) => reply?,
                Ok(Err(_)) => {
                    return Err(StoreError::Unavailable(
                        "the call carrying the reservation was dropped before it was sent (its runtime shut down); nothing was written".into(),
                    ))
                }
                Err(waited) => return Err(no_answer("reserve", settings.timeout, waited, settings.late)),
            },
        };
        settings.took(&reply, call, epoch_key)
    }
}

impl Backend for RedisStore {
    /// A reservation that reached Redis after its deadline wrote nothing: it
    /// only waited in this process (its caller still waits), so it is sent
    /// again, for up to `late_reply_timeout` in all.
    async fn reserve(
        &self,
        call: &ReserveCall<'_>,
    ) -> Result<Result<Reserved, ReserveError>, StoreError> {
        let started = Instant::now();
        loop {
            match self.reserve_once(call).await {
                Err(e) if scripts::is_late(&e) && started.elapsed() < self.settings.late => {}
                other => return other,
            }
        }
    }

    async fn settle(&self, call: &SettleCall<'_>) -> Result<Settled, StoreError> {
        Ok(self.settle_timed(call).await?.0)
    }

    async fn advance(&self, call: &AdvanceCall<'_>) -> Result<Advance, StoreError> {
        let keys = Keys::new(&self.settings.prefix, call.key);
        let inv = scripts::advance_invocation(&keys, call)?;
        // A reply that comes after the caller stopped waiting may still hand
        // out reservations whose lease ran out: they are cancelled then.
        let store = self.clone();
        let (key, policy) = (call.key.to_string(), call.policy.clone());
        let sent = InFlight::new(async move { store.run_unbounded(inv).await }, {
            let store = self.clone();
            move |reply| async move {
                if let Ok(reply) = reply {
                    if let Ok((_, lapsed)) = scripts::advance_reply(&reply, &policy) {
                        store.cancel_lapsed(&key, &policy, lapsed);
                    }
                }
            }
        });
        let reply = self.bounded("advance", sent).await?;
        let (outcome, lapsed) = scripts::advance_reply(&reply, call.policy)?;
        self.cancel_lapsed(call.key, call.policy, lapsed);
        Ok(outcome)
    }

    async fn claim(&self, key: &str, id: u64, reserved_at: f64) -> Result<Claim, StoreError> {
        let mut conn = self.conn.clone();
        let mark = format!("{}:{{{key}}}:d:{id}", self.settings.prefix);
        let mut inv = claim::CLAIM.prepare_invoke();
        inv.key(mark)
            .arg(reserved_at)
            .arg(crate::TOKEN_LIFETIME.as_secs_f64());
        let reply = self
            .bounded("claim", async move {
                inv.invoke_async::<Value>(&mut conn).await
            })
            .await?;
        claim::claim_reply(&reply)
    }

    async fn lend(
        &self,
        call: &crate::store::LendCall<'_>,
    ) -> Result<crate::store::Lent, StoreError> {
        call.check()?;
        let pool = format!("{}:{{{}}}:b", self.settings.prefix, call.key);
        let inv = lend::lend_invocation(pool, call, self.settings.idle_ms);
        lend::lend_reply(&self.run("lend", inv).await?)
    }

    async fn reshare(
        &self,
        call: &crate::store::ReshareCall<'_>,
    ) -> Result<crate::store::Reshare, StoreError> {
        let state = Keys::new(&self.settings.prefix, call.key).state();
        let inv = reshare::reshare_invocation(state, call, self.settings.idle_ms);
        reshare::reshare_reply(&self.run("reshare", inv).await?)
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

/// What undoing a reservation that nobody received needs.
struct Orphan {
    store: RedisStore,
    key: String,
    policy: Policy,
    class: u8,
    cost: Dims,
}

impl Orphan {
    /// The owner-to-be of a reservation `call` asks for.
    fn of(store: &RedisStore, call: &ReserveCall<'_>) -> Self {
        Orphan {
            store: store.clone(),
            key: call.key.to_string(),
            policy: call.policy.clone(),
            class: call.class,
            cost: call.cost,
        }
    }

    /// Cancels the reservation a reply reports, if it reports one.
    fn cancel(self, reply: &Value) {
        let call = ReserveCall {
            key: &self.key,
            policy: &self.policy,
            class: self.class,
            headroom: 1.0,
            cost: self.cost,
            max_wait: None,
            max_queue: None,
            lease: None,
        };
        let Ok(Ok((r, _))) = scripts::reserve_reply(reply, &call) else {
            return; // nothing was written (refused, too late)
        };
        self.store.cancel_soon(Cancel {
            key: self.key.clone(),
            policy: self.policy.clone(),
            class: self.class,
            id: r.id,
            slot: r.slot,
            mark: r.mark,
            at_once: r.slot <= r.now,
        });
    }
}

/// The receiving end of a reservation that waits for its batch. Dropped
/// before its reply was taken (the caller's future dropped or timed out), it
/// closes the channel: a reply not sent yet is then cancelled by the lane's
/// sender (`Waiting::answer`), one already sent is cancelled here, so a
/// reservation that nobody received is always undone, and only once.
struct Awaiting<'a> {
    rx: Option<tokio::sync::oneshot::Receiver<Result<Value, StoreError>>>,
    /// What its owner is made from, should it need one (seldom: only made then).
    store: &'a RedisStore,
    call: &'a ReserveCall<'a>,
}

impl Awaiting<'_> {
    /// The reply, once it comes (taken: dropping `self` then undoes nothing).
    async fn recv(
        &mut self,
    ) -> Result<Result<Value, StoreError>, tokio::sync::oneshot::error::RecvError> {
        let rx = self.rx.as_mut().expect("received once");
        let reply = rx.await;
        self.rx = None;
        reply
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        if let Ok(Ok(item)) = rx.try_recv() {
            Orphan::of(self.store, self.call).cancel(&item);
        }
    }
}

impl lanes::Waiter for Waiting {
    type Lane = Lane;

    fn lanes(settings: &Settings) -> &parking_lot::Mutex<Map<Lane, VecDeque<Self>>> {
        &settings.lanes
    }

    fn goes(&self) -> bool {
        !self.reply.is_closed()
    }

    fn sending(&mut self, settings: &Settings) {
        self.args.set_deadline(settings.deadline());
    }

    fn invocation(prefix: &str, lane: &Lane, cluster: bool, batch: &[Self]) -> scripts::Invocation {
        let keys = Keys::new(prefix, &lane.0);
        scripts::reserve_invocation(&keys, cluster, batch.iter().map(|w| &w.args))
    }

    fn error(e: redis::RedisError) -> StoreError {
        store_error(e)
    }

    fn replies(value: &Value, count: usize) -> Result<Vec<Value>, StoreError> {
        scripts::reserve_replies(value, count)
    }

    fn answer(self, reply: Value) {
        // Its caller stopped waiting: nobody has it.
        if let Err(Ok(reply)) = self.reply.send(Ok(reply)) {
            self.owner.cancel(&reply);
        }
    }

    fn fail(self, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

/// Cancellations taken from the pending ones but not sent yet: dropped (the
/// sender's runtime shut down), they go back.
struct Unsent(RedisStore, Vec<Cancel>);

impl Drop for Unsent {
    fn drop(&mut self) {
        if !self.1.is_empty() {
            self.0.settings.cancels.lock().append(&mut self.1);
        }
    }
}

/// Restarts the sending of cancellations on the library's own runtime when
/// a sender is dropped before it finished.
struct Restart(RedisStore);

impl Drop for Restart {
    fn drop(&mut self) {
        if !self.0.settings.cancels.lock().is_empty() {
            self.0.start_cancelling();
        }
    }
}

/// A settlement's error: one that may have reached Redis (the connection
/// broke after it was sent) is not sent again, so that it is applied at most
/// once; only one that was surely not sent (the connection was refused) is
/// worth retrying.
fn settle_error(e: redis::RedisError) -> StoreError {
    let refused = e.is_connection_refusal();
    match store_error(e) {
        StoreError::Unavailable(m) if !refused => StoreError::Pending(format!(
            "{m}; the settlement may have reached Redis, so it is not sent again (applied at most once)"
        )),
        other => other,
    }
}
