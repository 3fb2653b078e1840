//! Where the state of every key lives: the contract of a store and its two
//! implementations, [`MemoryStore`] and [`RedisStore`].
//!
//! A store applies the pure arithmetic of `tollgate-core` atomically per key, on
//! its own clock. The limiter above it knows nothing of how.

mod lend;
mod memory;
mod redis;
mod reshare;
pub(crate) mod together;

pub use self::lend::{LendCall, LendOp, Lent};

pub use self::reshare::{Reshare, ReshareCall};

pub use self::memory::{Clock, ManualClock, MemoryStore, SystemClock};
pub(crate) use self::redis::Cancel;
pub use self::redis::{AfterReset, RedisConnection, RedisOptions, RedisStore, TlsOptions};
pub use self::together::{Gate, GateScript};

use std::future::Future;
use std::sync::OnceLock;

use tollgate_core::{Dims, KeyState, Mark, Policy, ReserveError, Settled};

/// The arguments of one reservation.
#[derive(Debug, Clone)]
pub struct ReserveCall<'a> {
    /// The bucket key (e.g. `openai/gpt-4o`).
    pub key: &'a str,
    /// The key's validated limits.
    pub policy: &'a Policy,
    /// Priority class (0 = top); each class has its own FIFO queue.
    pub class: u8,
    /// The class's headroom `h_k` in (0, 1].
    pub headroom: f64,
    /// Cost in units per dimension.
    pub cost: Dims,
    /// Longest acceptable wait in seconds (`None`: unbounded).
    pub max_wait: Option<f64>,
    /// Cap on the class's queue length.
    pub max_queue: Option<u64>,
    /// Seconds a queued reservation stays without its owner confirming it
    /// ([`AdvanceCall::lease`]); a store shared between processes cancels
    /// one whose owner stopped confirming (it died), so that the ones behind
    /// it move up. Only reservations queued further ahead than this get one.
    /// `None`: no lease (the owner does not confirm: it sleeps to its slot).
    pub lease: Option<f64>,
}

/// A reservation the store has written.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    /// Id of the reservation, unique within its key: a per-key sequence that
    /// starts from the store's clock in microseconds when the key is created,
    /// so ids do not repeat after an idle key expires.
    pub id: u64,
    /// Store time when the reservation was made, seconds.
    pub now: f64,
    /// When the request may start, seconds on the store's clock.
    pub slot: f64,
    /// Reservations of the same class queued ahead of this one.
    pub position: u64,
    /// What settlement needs.
    pub mark: Mark,
}

/// The arguments of a settlement (or, with `actual = [0; 4]`, a cancellation).
#[derive(Debug, Clone)]
pub struct SettleCall<'a> {
    /// The bucket key.
    pub key: &'a str,
    /// The key's validated limits.
    pub policy: &'a Policy,
    /// The reservation's class.
    pub class: u8,
    /// The reservation's id.
    pub id: u64,
    /// The reservation's slot (finds it in its queue).
    pub slot: f64,
    /// The reservation's mark.
    pub mark: Mark,
    /// Actual usage in units per dimension.
    pub actual: Dims,
}

impl<'a> ReserveCall<'a> {
    /// The settlement of `reserved`, this call's reservation, with `actual`
    /// units (all zero: its cancellation).
    pub fn settlement(&self, reserved: &Reserved, actual: Dims) -> SettleCall<'a> {
        SettleCall {
            key: self.key,
            policy: self.policy,
            class: self.class,
            id: reserved.id,
            slot: reserved.slot,
            mark: reserved.mark,
            actual,
        }
    }
}

/// The arguments of [`Backend::advance`]: a queued reservation asking whether
/// it may start earlier.
#[derive(Debug, Clone)]
pub struct AdvanceCall<'a> {
    /// The bucket key.
    pub key: &'a str,
    /// The key's validated limits.
    pub policy: &'a Policy,
    /// The reservation's class.
    pub class: u8,
    /// The class's headroom `h_k`.
    pub headroom: f64,
    /// The reservation's id.
    pub id: u64,
    /// Its current slot.
    pub slot: f64,
    /// Its mark.
    pub mark: Mark,
    /// Confirms the reservation for this many more seconds (see
    /// [`ReserveCall::lease`]).
    pub lease: Option<f64>,
}

/// What [`Backend::advance`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Advance {
    /// The reservation keeps its slot (or has started).
    Stays,
    /// It keeps its slot, and nothing of its class is queued ahead of it:
    /// it is the next of its class to start (a class sharing a bucket may
    /// then try to start at once in another class's lane).
    First,
    /// It may start earlier.
    Moved(Advanced),
    /// Its lease ran out and it was cancelled: the owner must reserve again.
    Lost,
}

/// A reservation moved to an earlier slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Advanced {
    /// The new slot (store clock, seconds).
    pub slot: f64,
    /// Store time of the decision.
    pub now: f64,
}

/// A snapshot of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySnapshot {
    /// Store time of the snapshot, seconds.
    pub now: f64,
    /// The key's state (all zeros for an unknown or expired key).
    pub state: KeyState,
    /// Reservations still waiting for their slot, all classes.
    pub queue_depth: u64,
}

/// What the store answers when a permit token is presented for settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time: it may be settled now (and is marked settled).
    Fresh,
    /// It was presented before.
    Settled,
    /// Its reservation is older than [`TOKEN_LIFETIME`](crate::TOKEN_LIFETIME).
    Expired,
}

/// A failure of the store itself (not a limiting decision).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with a transient error
    /// (connection refused or reset, timeout, `LOADING`, `BUSY`, `TRYAGAIN`,
    /// cluster redirection storms). Worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered but the operation is wrong (bad script reply,
    /// authentication, wrong type). Retrying will not help.
    #[error("store error: {0}")]
    Failed(String),
    /// The store did not answer in time, but the operation was sent and is
    /// not taken back: it is applied once when the store answers. Not
    /// retried, since a second copy could be applied too.
    #[error("store slow: {0}")]
    Pending(String),
}

impl StoreError {
    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The contract every store fulfils. Each operation is atomic per key and uses
/// the store's own clock.
pub trait Backend: Send + Sync {
    /// Reserves a slot (see `tollgate_core::reserve`). The outer error is the
    /// store's; the inner one the limiting decision (nothing written).
    fn reserve(
        &self,
        call: &ReserveCall<'_>,
    ) -> impl Future<Output = Result<Result<Reserved, ReserveError>, StoreError>> + Send;

    /// Settles (or cancels) a reservation and removes it from its queue.
    fn settle(
        &self,
        call: &SettleCall<'_>,
    ) -> impl Future<Output = Result<Settled, StoreError>> + Send;

    /// Moves a queued reservation to an earlier slot when refunds of the
    /// reservations ahead of it made room (see `tollgate_core::advance`);
    /// [`Advance::Stays`] when it cannot move (or is no longer queued), and
    /// renews its lease.
    fn advance(
        &self,
        call: &AdvanceCall<'_>,
    ) -> impl Future<Output = Result<Advance, StoreError>> + Send;

    /// Marks reservation `id` of `key` (made at store time `reserved_at`) as
    /// settled through a token, unless it was marked before or is older than
    /// [`TOKEN_LIFETIME`](crate::TOKEN_LIFETIME). The mark is kept that long.
    fn claim(
        &self,
        key: &str,
        id: u64,
        reserved_at: f64,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Reads a key's state and queue depth.
    fn snapshot(
        &self,
        key: &str,
        policy: &Policy,
    ) -> impl Future<Output = Result<KeySnapshot, StoreError>> + Send;

    /// Asks for a class's turn to borrow in a shared bucket's pool, or
    /// charges what it borrowed (see `tollgate_core::may_borrow`).
    fn lend(&self, call: &LendCall<'_>) -> impl Future<Output = Result<Lent, StoreError>> + Send;

    /// Moves a lane of a shared bucket to a new share, once however many
    /// processes ask (see `tollgate_core::reshare`).
    fn reshare(
        &self,
        call: &ReshareCall<'_>,
    ) -> impl Future<Output = Result<Reshare, StoreError>> + Send;
}

/// A store: the embedded default or Redis. Cheap to clone; clones share state
/// and connections, so many limiters can use one store.
#[derive(Clone, Debug)]
pub enum Store {
    /// In this process only.
    Memory(MemoryStore),
    /// Shared through Redis (standalone, TLS or Cluster).
    Redis(RedisStore),
}

impl Store {
    /// A new, private in-memory store on the system clock: only the limiters
    /// given this store (or its clones) share its buckets. See
    /// [`Store::process_memory`] for the one `memory://` names.
    pub fn memory() -> Self {
        Store::Memory(MemoryStore::new())
    }

    /// The process-wide in-memory store, the one the URL `memory://` names:
    /// every limiter built from `memory://` in this process shares it, so one
    /// key is one bucket however many limiters use it.
    ///
    /// ```
    /// use tollgate::Store;
    /// assert!(Store::process_memory().is_memory());
    /// ```
    pub fn process_memory() -> Self {
        static PROCESS: OnceLock<MemoryStore> = OnceLock::new();
        Store::Memory(PROCESS.get_or_init(MemoryStore::new).clone())
    }

    /// Connects to Redis from a URL: `redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS, or `redis+cluster://host:port,host:port` for a
    /// Cluster given by seed nodes.
    pub async fn redis(url: &str) -> Result<Self, StoreError> {
        Ok(Store::Redis(
            RedisStore::connect(url, RedisOptions::default()).await?,
        ))
    }

    /// Connects to Redis from a URL (see [`Store::redis`]) with explicit
    /// settings: timeouts, TLS certificates, key prefix.
    pub async fn redis_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        Ok(Store::Redis(RedisStore::connect(url, options).await?))
    }

    /// A Redis store on a connection the application already has (a
    /// `redis::aio::ConnectionManager`, `MultiplexedConnection` or Cluster
    /// connection), with the default settings.
    pub fn from_redis_connection(conn: impl Into<RedisConnection>) -> Self {
        Store::Redis(RedisStore::with_default_options(conn))
    }

    /// Times the store was found to have lost its state (a Redis restarted
    /// empty; see [`AfterReset`]); always 0 for the memory store.
    pub fn resets(&self) -> u64 {
        match self {
            Store::Memory(_) => 0,
            Store::Redis(r) => r.resets(),
        }
    }

    /// Whether `other` is this store or a clone of it (they share state).
    pub(crate) fn same_as(&self, other: &Store) -> bool {
        match (self, other) {
            (Store::Memory(a), Store::Memory(b)) => a.same_as(b),
            (Store::Redis(a), Store::Redis(b)) => a.same_as(b),
            _ => false,
        }
    }

    /// Whether this store is the in-memory one.
    pub fn is_memory(&self) -> bool {
        matches!(self, Store::Memory(_))
    }

    /// The Redis connection of a Redis store (a clone: it shares the
    /// multiplexed connection), for an application's own commands next to
    /// the limiter's; `None` for the memory store. Keys written through it
    /// must not take the store's own form (`<prefix>:{key}:…`).
    pub fn redis_connection(&self) -> Option<RedisConnection> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => Some(r.connection().clone()),
        }
    }
}

impl Backend for Store {
    async fn reserve(
        &self,
        call: &ReserveCall<'_>,
    ) -> Result<Result<Reserved, ReserveError>, StoreError> {
        match self {
            Store::Memory(m) => m.reserve(call).await,
            Store::Redis(r) => r.reserve(call).await,
        }
    }

    async fn settle(&self, call: &SettleCall<'_>) -> Result<Settled, StoreError> {
        match self {
            Store::Memory(m) => m.settle(call).await,
            Store::Redis(r) => r.settle(call).await,
        }
    }

    async fn snapshot(&self, key: &str, policy: &Policy) -> Result<KeySnapshot, StoreError> {
        match self {
            Store::Memory(m) => m.snapshot(key, policy).await,
            Store::Redis(r) => r.snapshot(key, policy).await,
        }
    }

    async fn advance(&self, call: &AdvanceCall<'_>) -> Result<Advance, StoreError> {
        match self {
            Store::Memory(m) => m.advance(call).await,
            Store::Redis(r) => r.advance(call).await,
        }
    }

    async fn claim(&self, key: &str, id: u64, reserved_at: f64) -> Result<Claim, StoreError> {
        match self {
            Store::Memory(m) => m.claim(key, id, reserved_at).await,
            Store::Redis(r) => r.claim(key, id, reserved_at).await,
        }
    }

    async fn lend(&self, call: &LendCall<'_>) -> Result<Lent, StoreError> {
        match self {
            Store::Memory(m) => m.lend(call).await,
            Store::Redis(r) => r.lend(call).await,
        }
    }

    async fn reshare(&self, call: &ReshareCall<'_>) -> Result<Reshare, StoreError> {
        match self {
            Store::Memory(m) => m.reshare(call).await,
            Store::Redis(r) => r.reshare(call).await,
        }
    }
}
