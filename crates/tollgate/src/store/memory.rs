//! The embedded store: a sharded map of keys in this process.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tollgate_core::{reserve, settle, KeyState, Policy, ReserveError, ReserveRequest, Settled};

use super::{Backend, KeySnapshot, ReserveCall, Reserved, SettleCall, StoreError};

/// A source of time in seconds (the memory store's equivalent of Redis `TIME`).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Seconds since the Unix epoch (any fixed origin works; must not go back).
    fn now(&self) -> f64;
}

/// Wall-clock origin, monotonic progress: never goes back.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
    origin_unix: f64,
}

impl Default for SystemClock {
    fn default() -> Self {
        let origin_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        SystemClock {
            origin: Instant::now(),
            origin_unix,
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        self.origin_unix + self.origin.elapsed().as_secs_f64()
    }
}

/// A clock that moves only when told: for tests of the arithmetic over time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<Mutex<f64>>);

impl ManualClock {
    /// A clock at `start` seconds.
    pub fn new(start: f64) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, secs: f64) {
        *self.0.lock() += secs.max(0.0);
    }

    /// Sets the clock (never backwards).
    pub fn set(&self, secs: f64) {
        let mut t = self.0.lock();
        *t = t.max(secs);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        *self.0.lock()
    }
}

const SHARDS: usize = 64;

/// Queue entries ordered by slot, then id. Slots are non-negative, so their
/// bit patterns sort like the numbers.
type Queue = BTreeSet<(u64, u64)>;

#[derive(Debug, Default)]
struct Entry {
    state: KeyState,
    seq: u64,
    queues: Vec<Queue>,
}

impl Entry {
    fn queue(&mut self, class: u8, now: f64) -> &mut Queue {
        let class = class as usize;
        if self.queues.len() <= class {
            self.queues.resize_with(class + 1, Queue::new);
        }
        let q = &mut self.queues[class];
        let now_bits = now.to_bits();
        while q.first().is_some_and(|&(slot, _)| slot <= now_bits) {
            q.pop_first();
        }
        q
    }

    fn idle(&self, now: f64) -> bool {
        self.state.tat.iter().all(|&t| t <= now)
            && self
                .queues
                .iter()
                .all(|q| q.last().is_none_or(|&(s, _)| f64::from_bits(s) <= now))
    }
}

#[derive(Debug, Default)]
struct Shard {
    keys: HashMap<Box<str>, Entry, ahash::RandomState>,
    ops_since_sweep: usize,
}

impl Shard {
    fn entry(&mut self, key: &str, now: f64) -> &mut Entry {
        self.ops_since_sweep += 1;
        if self.ops_since_sweep > 1024 + 2 * self.keys.len() {
            self.ops_since_sweep = 0;
            self.keys.retain(|_, e| !e.idle(now));
        }
        if !self.keys.contains_key(key) {
            let entry = Entry {
                seq: (now * 1e6) as u64,
                ..Entry::default()
            };
            self.keys.insert(key.into(), entry);
        }
        self.keys.get_mut(key).expect("inserted above")
    }
}

/// The in-memory store: many keys, safe under concurrent use from any number of
/// threads and tasks. Keys are spread over 64 mutex-guarded shards; every
/// operation holds one shard for a few hundred nanoseconds at most. Keys whose
/// buckets are full again and whose queues are empty are dropped lazily.
#[derive(Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<Shard>]>,
    hasher: ahash::RandomState,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock::default()))
    }

    /// A store on the given clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: ahash::RandomState::new(),
            clock,
        }
    }

    /// The store's clock, in seconds.
    pub fn now(&self) -> f64 {
        self.clock.now()
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// [`Backend::reserve`] without the future: what the async method runs.
    pub fn reserve_now(&self, call: &ReserveCall<'_>) -> Result<Reserved, ReserveError> {
        let now = self.clock.now();
        let mut shard = self.shard(call.key).lock();
        let entry = shard.entry(call.key, now);
        let queue = entry.queue(call.class, now);
        let request = ReserveRequest {
            cost: call.cost,
            headroom: call.headroom,
            tail: queue
                .last()
                .map_or(f64::NEG_INFINITY, |&(s, _)| f64::from_bits(s)),
            max_wait: call.max_wait,
            queued: queue.len() as u64,
            max_queue: call.max_queue,
        };
        let grant = reserve(call.policy, &entry.state, now, &request)?;
        entry.state = grant.state;
        entry.seq += 1;
        let id = entry.seq;
        let queue = &mut entry.queues[call.class as usize];
        let position = queue.len() as u64;
        if grant.slot > now {
            queue.insert((grant.slot.to_bits(), id));
        }
        Ok(Reserved {
            id,
            now,
            slot: grant.slot,
            position,
            mark: grant.mark,
        })
    }

    /// [`Backend::settle`] without the future.
    pub fn settle_now(&self, call: &SettleCall<'_>) -> Settled {
        let now = self.clock.now();
        let mut shard = self.shard(call.key).lock();
        let entry = shard.entry(call.key, now);
        entry
            .queue(call.class, now)
            .remove(&(call.slot.to_bits(), call.id));
        let settled = settle(call.policy, &entry.state, now, &call.mark, &call.actual);
        entry.state = settled.state;
        settled
    }

    /// [`Backend::snapshot`] without the future.
    pub fn snapshot_now(&self, key: &str) -> KeySnapshot {
        let now = self.clock.now();
        let mut shard = self.shard(key).lock();
        let entry = shard.entry(key, now);
        let classes = entry.queues.len();
        let queue_depth = (0..classes)
            .map(|c| entry.queue(c as u8, now).len() as u64)
            .sum();
        KeySnapshot {
            now,
            state: entry.state,
            queue_depth,
        }
    }

    /// Number of keys held (including idle ones not yet swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().keys.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Backend for MemoryStore {
    async fn reserve(
        &self,
        call: &ReserveCall<'_>,
    ) -> Result<Result<Reserved, ReserveError>, StoreError> {
        Ok(self.reserve_now(call))
    }

    async fn settle(&self, call: &SettleCall<'_>) -> Result<Settled, StoreError> {
        Ok(self.settle_now(call))
    }

    async fn snapshot(&self, key: &str, _policy: &Policy) -> Result<KeySnapshot, StoreError> {
        Ok(self.snapshot_now(key))
    }
}
