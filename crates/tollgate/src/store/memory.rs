//! The embedded store: a sharded map of keys in this process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tollgate_core::{
    advance, moved_vacated, reserve, settle_vacated, Dims, KeyState, Mark, Policy, ReserveError,
    ReserveRequest, Settled, Vacated, DIMENSIONS,
};

use super::together::Together;
use super::{
    Advance, AdvanceCall, Advanced, Backend, Claim, KeySnapshot, ReserveCall, Reserved, SettleCall,
    StoreError,
};

/// A source of time in seconds (the memory store's equivalent of Redis `TIME`).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Seconds since the Unix epoch (any fixed origin works; must not go back).
    fn now(&self) -> f64;
}

/// Wall-clock origin, monotonic progress: never goes back.
#[derive(Debug)]
pub struct SystemClock {
    /// The Unix time at the monotonic clock's zero, seconds.
    offset: f64,
}

impl Default for SystemClock {
    fn default() -> Self {
        let origin_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        SystemClock {
            offset: origin_unix - monotonic_secs(),
        }
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> f64 {
        self.offset + monotonic_secs()
    }
}

/// Seconds on the monotonic clock (`CLOCK_MONOTONIC`, which `Instant`
/// reads too), read directly: every decision of the store reads it, and
/// `Instant::elapsed` with its conversions cost a third as much again as
/// the read itself.
#[cfg(unix)]
#[inline]
fn monotonic_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on
    // every Unix Rust supports, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Seconds since the first reading (on systems without `clock_gettime`).
#[cfg(not(unix))]
fn monotonic_secs() -> f64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
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

/// A gate of a joint reservation on the memory store: the part it comes
/// before, its check and its undo (see `store::Gate::Local`).
pub(crate) type LocalGate<'g, 'a> = (
    usize,
    &'g mut (dyn FnMut() -> bool + Send + 'a),
    &'g mut (dyn FnMut() + Send + 'a),
);

/// A queued reservation in its class's queue: (slot bits, id), ordered by
/// slot, then id. Slots are non-negative, so their bit patterns sort like
/// the numbers.
type Queued = (u64, u64);

fn queued(slot: f64, id: u64) -> Queued {
    (slot.to_bits(), id)
}

fn slot_of(q: Queued) -> f64 {
    f64::from_bits(q.0)
}

fn id_of(q: Queued) -> u64 {
    q.1
}

/// One entry of a headroom index (see [`ClassQueue::headroom`]).
#[derive(Debug, Clone, Copy)]
struct HeadroomEntry {
    id: u64,
    slot: f64,
    value: f64,
    /// Whether pushing it removed entries of larger value: then it stands for
    /// them too and stays until its slot passes, even when cancelled.
    popped: bool,
}

/// One priority class's queue: the reservations whose slot is still ahead.
#[derive(Debug, Default)]
struct ClassQueue {
    /// The queued reservations ordered by slot, then id (see [`Queued`]).
    slots: BTreeSet<Queued>,
    /// Per dimension, a sliding-window minimum of the queued reservations'
    /// headroom (`Grant::headroom` + the key's refund counter when charged):
    /// entries in id order with non-decreasing values, so the least value
    /// among reservations charged after id `n` is the first entry with an id
    /// above `n`.
    headroom: [VecDeque<HeadroomEntry>; DIMENSIONS],
    /// Seconds of TAT given back by refunds of this class's started
    /// reservations and of the first of its queue, per dimension (see
    /// `tollgate_core::advance`), counted from the first time one of its
    /// reservations queued (`queued_ever`): only a queued reservation reads
    /// them, as they stand when it queues, and `settle.lua` likewise keeps no
    /// counters for a class that never queued (bit `c` of the key's state).
    started_refunds: Dims,
    /// Whether a reservation of this class ever queued on this key.
    queued_ever: bool,
    /// Per queued reservation, the seconds of TAT per dimension that
    /// cancelled reservations charged just before it vacated but could not
    /// give back (`Settled::left`): it may start earlier by them.
    credits: HashMap<u64, Dims, ahash::RandomState>,
    /// Cancelled queued reservation → the reservation its vacated seconds
    /// went to, so that a cancellation just before it reaches that one too.
    forward: BTreeMap<u64, u64>,
    /// Per queued reservation, the seconds of TAT per dimension that
    /// cancellations charged just before it gave back (their
    /// `Settled::returned`): that moved the TAT, not its slot, so it may
    /// start earlier by them too, but must not give them back again (see
    /// [`Given`]).
    extra: HashMap<u64, Given, ahash::RandomState>,
    /// Per queued reservation, what the queued reservation charged just
    /// before it vacated by moving earlier (`tollgate_core::moved_vacated`,
    /// see [`Moved`]).
    moved_in: HashMap<u64, Moved, ahash::RandomState>,
    /// Per queued reservation that moved earlier, the seconds it has handed
    /// on so far (in `moved_in`): a later move hands on only the rest.
    handed: HashMap<u64, Dims, ahash::RandomState>,
}

/// Most reservations a class keeps vacated seconds for; past that it forgets
/// them all (they only ever let reservations start earlier, so forgetting is
/// safe).
pub(crate) const MAX_CREDITS: usize = 1024;

impl ClassQueue {
    fn purge(&mut self, now: f64) {
        let now_bits = now.to_bits();
        while self
            .slots
            .first()
            .is_some_and(|&(slot, _)| slot <= now_bits)
        {
            if let Some(id) = self.slots.pop_first().map(id_of) {
                if !self.credits.is_empty() {
                    self.credits.remove(&id);
                }
                if !(self.extra.is_empty() && self.moved_in.is_empty()) {
                    self.extra.remove(&id);
                    self.moved_in.remove(&id);
                    self.handed.remove(&id);
                }
            }
        }
        if self.slots.is_empty()
            && !(self.forward.is_empty() && self.extra.is_empty() && self.moved_in.is_empty())
        {
            self.forget_credits();
        }
        for d in &mut self.headroom {
            while d.front().is_some_and(|e| e.slot <= now) {
                d.pop_front();
            }
        }
    }

    fn push(&mut self, id: u64, slot: f64, values: &Dims) {
        self.queued_ever = true;
        self.slots.insert(queued(slot, id));
        for (d, &value) in self.headroom.iter_mut().zip(values) {
            if value.is_finite() {
                let mut popped = false;
                while d.back().is_some_and(|e| e.value > value) {
                    d.pop_back();
                    popped = true;
                }
                d.push_back(HeadroomEntry {
                    id,
                    slot,
                    value,
                    popped,
                });
            }
        }
    }

    /// Takes a reservation that leaves the queue before its slot out of the
    /// headroom indexes, where that loses nothing: an entry that removed
    /// others when it came stays (it bounds them too).
    fn forget(&mut self, id: u64) {
        for d in &mut self.headroom {
            // Ids ascend along the index; mostly the latest leaves.
            match d.back() {
                None => continue,
                Some(e) if e.id < id => continue,
                Some(e) if e.id == id => {
                    if !e.popped {
                        d.pop_back();
                    }
                    continue;
                }
                Some(_) => {}
            }
            let i = d.partition_point(|e| e.id < id);
            if d.get(i).is_some_and(|e| e.id == id && !e.popped) {
                d.remove(i);
            }
        }
    }

    /// Least headroom value of the entries charged after reservation `id`.
    /// Nothing when no reservation charged after it is still queued (an
    /// entry left by one that was cancelled may remain in the index).
    fn least_after(&self, id: u64, out: &mut Dims) {
        // In a FIFO class the last slot has the latest id.
        if self.slots.last().is_none_or(|&last| id_of(last) <= id) {
            return;
        }
        for (d, o) in self.headroom.iter().zip(out.iter_mut()) {
            let i = d.partition_point(|e| e.id <= id);
            if let Some(e) = d.get(i) {
                *o = o.min(e.value);
            }
        }
    }

    /// Seconds vacated just ahead of queued reservation `id` (taken: it is
    /// leaving the queue).
    fn take_credit(&mut self, id: u64) -> Taken {
        const NONE: Dims = [0.0; DIMENSIONS];
        take(&mut self.handed, id);
        Taken {
            owed: take(&mut self.credits, id).unwrap_or(NONE),
            extra: take(&mut self.extra, id),
            moved_in: take(&mut self.moved_in, id),
        }
    }

    /// The seconds queued reservation `id`, whose mark is `mark`, may start
    /// earlier by (owed, then extra, then what moved in), if any.
    fn credit_of(&self, id: u64, mark: &Mark) -> Option<Dims> {
        let owed = self.credits.get(&id);
        let extra = self.extra.get(&id);
        let moved = self.moved_in.get(&id);
        if owed.is_none() && extra.is_none() && moved.is_none() {
            return None;
        }
        let mut total = owed.copied().unwrap_or([0.0; DIMENSIONS]);
        if let Some(extra) = extra {
            add(&mut total, &extra.for_mark(mark));
        }
        if let Some(moved) = moved {
            add(&mut total, &moved.for_mark(mark));
        }
        Some(total)
    }

    /// Queued reservation `id` of this class was cancelled, leaving `left`
    /// seconds vacated on the TAT line. When the reservation charged right
    /// after it is queued behind it in this class (directly, or through
    /// reservations cancelled before, which forward to it), nothing else lies
    /// between them on the line: that one may start earlier by them.
    ///
    /// `left` is what it could not give back (owed to the next, which gives
    /// it back when it is cancelled in turn); `extra` what the next may start
    /// earlier by besides (see [`ClassQueue::extra`]).
    fn pass_on(&mut self, id: u64, slot: f64, left: Dims, extra: Given, moved_in: Option<Moved>) {
        let Some(first) = self.next_on_line(id, slot) else {
            return;
        };
        if self.credits.len() >= MAX_CREDITS || self.extra.len() >= MAX_CREDITS {
            self.forget_credits();
        }
        // What this one handed on by moving it vacates again, whole, in
        // `left` and `extra`; what moved in to it, from the one before it
        // on the line, is now the next one's: nothing lies between those.
        match moved_in {
            Some(m) => self.moved_in.insert(first, m),
            None => self.moved_in.remove(&first),
        };
        // Only cancellations of queued reservations walk these links, and all
        // of those come after the first one queued.
        if let Some(front) = self.slots.first().map(|&q| id_of(q)) {
            if self
                .forward
                .first_key_value()
                .is_some_and(|(&k, _)| k < front)
            {
                self.forward = self.forward.split_off(&front);
            }
        }
        self.forward.insert(id, first);
        add(
            self.credits.entry(first).or_insert([0.0; DIMENSIONS]),
            &left,
        );
        match self.extra.get_mut(&first) {
            Some(had) => had.merge(&extra),
            None => {
                self.extra.insert(first, extra);
            }
        }
    }

    /// Started reservation `id` gave back less than it wanted: the headroom
    /// of those queued after it held `held` seconds back
    /// (`Settled::held`). When the reservation charged right after it is the
    /// first queued in this class, nothing lies between them on the line:
    /// that one may start earlier by them.
    fn hand_on_held(&mut self, id: u64, held: Dims) {
        if self
            .slots
            .first()
            .is_none_or(|&first| id_of(first) != id + 1)
        {
            return;
        }
        if self.credits.len() >= MAX_CREDITS || self.extra.len() >= MAX_CREDITS {
            self.forget_credits();
        }
        add(
            self.credits.entry(id + 1).or_insert([0.0; DIMENSIONS]),
            &held,
        );
    }

    /// The queued reservation of this class charged right after reservation
    /// `id` (at `slot`), directly or through cancelled ones that forward to
    /// it: nothing else lies between the two on the TAT line.
    fn next_on_line(&self, id: u64, slot: f64) -> Option<u64> {
        // In a FIFO class the first entry after it is the next queued id;
        // mostly there is none (it was the last), which the last entry tells
        // without a search.
        let after = queued(slot, id + 1);
        if self.slots.last().is_none_or(|&last| last < after) {
            return None;
        }
        let first = id_of(*self.slots.range(after..).next()?);
        let mut next = id + 1;
        while next != first {
            match self.forward.get(&next) {
                Some(&n) if n > next && n <= first => next = n,
                _ => return None,
            }
        }
        Some(first)
    }

    /// Forgets what queued reservations handed on by moving (see
    /// `hand_on_move`): safe, they only start later.
    fn forget_moves(&mut self) {
        self.moved_in.clear();
        self.handed.clear();
    }

    fn forget_credits(&mut self) {
        self.credits.clear();
        self.forward.clear();
        self.extra.clear();
        self.moved_in.clear();
        self.handed.clear();
    }

    /// Queued reservation `id` moved earlier to `slot`, having vacated
    /// `vacated` seconds in all (`tollgate_core::moved_vacated`): what of
    /// them it has not handed on yet goes to the reservation charged right
    /// after it, when that one is queued behind it in this class.
    fn hand_on_move(&mut self, id: u64, slot: f64, vacated: Dims, mark: &Mark) {
        let handed = self.handed.get(&id).copied().unwrap_or([0.0; DIMENSIONS]);
        let mut more = [0.0; DIMENSIONS];
        for ((m, v), h) in more.iter_mut().zip(vacated).zip(handed) {
            *m = (v - h).max(0.0);
        }
        if more.iter().all(|&m| m <= 0.0) {
            return;
        }
        let Some(first) = self.next_on_line(id, slot) else {
            return;
        };
        if self.credits.len() >= MAX_CREDITS || self.moved_in.len() >= MAX_CREDITS {
            self.forget_credits();
        }
        let mut total = handed;
        add(&mut total, &more);
        self.handed.insert(id, total);
        let basis = Moved::basis_of(mark);
        let entry = self.moved_in.entry(first).or_insert(Moved {
            seconds: [0.0; DIMENSIONS],
            basis,
        });
        add(&mut entry.seconds, &more);
        entry.basis = basis;
    }
}

/// What a queued reservation that moved earlier vacated for the one charged
/// right after it.
///
/// `tollgate_core::moved_vacated` counts from the mover's view of the TAT
/// line; the one behind sees it less the refunds made between the two
/// charges that are not refunds of started reservations of their class
/// (those it counts itself), for its charge came after them. Hence `basis`,
/// per dimension the mover's `refunded_at − class_refunds_at`.
#[derive(Debug, Clone, Copy)]
struct Moved {
    seconds: Dims,
    basis: Dims,
}

impl Moved {
    fn basis_of(mark: &Mark) -> Dims {
        let mut b = [0.0; DIMENSIONS];
        for (i, b) in b.iter_mut().enumerate() {
            *b = mark.refunded_at[i] - mark.class_refunds_at[i];
        }
        b
    }

    /// The seconds the reservation of `mark` may start earlier by.
    fn for_mark(&self, mark: &Mark) -> Dims {
        let own = Moved::basis_of(mark);
        let mut out = [0.0; DIMENSIONS];
        for i in 0..DIMENSIONS {
            out[i] = (self.seconds[i] - (own[i] - self.basis[i])).max(0.0);
        }
        out
    }
}

/// Seconds that cancellations gave back, which a queued reservation charged
/// after them may start earlier by (see [`ClassQueue::extra`]), unless its
/// charge came after one of them: then its TAT before the charge was lowered
/// by them already. `before` is, per dimension, the least of the key's
/// refund counters just before each of those refunds; a reservation whose
/// `refunded_at` exceeds it counts none of them (safe, only later).
#[derive(Debug, Clone, Copy)]
struct Given {
    seconds: Dims,
    before: Dims,
}

impl Given {
    fn merge(&mut self, other: &Given) {
        for i in 0..DIMENSIONS {
            self.seconds[i] += other.seconds[i];
            self.before[i] = self.before[i].min(other.before[i]);
        }
    }

    fn for_mark(&self, mark: &Mark) -> Dims {
        std::array::from_fn(|i| {
            if mark.refunded_at[i] <= self.before[i] {
                self.seconds[i]
            } else {
                0.0
            }
        })
    }
}

/// Removes `id`'s entry from `map`; an empty map (the usual case) is not
/// asked, which would hash the id first.
#[inline]
fn take<V>(map: &mut HashMap<u64, V, ahash::RandomState>, id: u64) -> Option<V> {
    if map.is_empty() {
        None
    } else {
        map.remove(&id)
    }
}

/// What a queued reservation leaving its queue takes of its credits.
struct Taken {
    owed: Dims,
    extra: Option<Given>,
    moved_in: Option<Moved>,
}

fn add(total: &mut Dims, more: &Dims) {
    for (t, m) in total.iter_mut().zip(more) {
        *t += m;
    }
}

#[derive(Debug, Default)]
struct Entry {
    state: KeyState,
    seq: u64,
    queues: Vec<ClassQueue>,
    /// For a lane of a shared bucket whose share changed: the share its
    /// line is in, and what the lanes that grew owed for it then (see
    /// [`MemoryStore::reshare_now`]).
    share: Option<(f64, Dims)>,
}

impl Entry {
    fn queue(&mut self, class: u8, now: f64) -> &mut ClassQueue {
        let class = class as usize;
        if self.queues.len() <= class {
            self.queues.resize_with(class + 1, ClassQueue::default);
        }
        let q = &mut self.queues[class];
        q.purge(now);
        q
    }

    fn idle(&self, now: f64) -> bool {
        self.state.tat.iter().all(|&t| t <= now)
            && self
                .queues
                .iter()
                .all(|q| q.slots.last().is_none_or(|&q| slot_of(q) <= now))
    }

    /// Per dimension the least headroom left (after refunds since) among the
    /// queued reservations charged after reservation `id`.
    fn later_headroom(&mut self, id: u64, now: f64) -> Dims {
        let mut least = [f64::INFINITY; DIMENSIONS];
        for q in &mut self.queues {
            q.purge(now);
            q.least_after(id, &mut least);
        }
        for (l, r) in least.iter_mut().zip(self.state.refunded) {
            *l -= r;
        }
        least
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Keys by the hash the store computed once per call (it also chose the
    /// shard), so a call hashes its key once.
    keys: hashbrown::HashTable<(Box<str>, Entry)>,
    /// The store's hasher, to grow the table.
    hasher: ahash::RandomState,
    ops_since_sweep: usize,
    /// Permit tokens settled, (key, id) → when the mark may go.
    claimed: HashMap<(Box<str>, u64), f64, ahash::RandomState>,
}

impl Shard {
    /// The entry of `key`, whose hash is `hash`; a new one when missing.
    fn entry(&mut self, key: &str, hash: u64, now: f64) -> &mut Entry {
        self.ops_since_sweep += 1;
        if self.ops_since_sweep > 1024 + 2 * self.keys.len() {
            self.ops_since_sweep = 0;
            self.keys.retain(|(_, e)| !e.idle(now));
        }
        // A lookup that only looks (the key is there but once in a long
        // while): cheaper than `entry`, which also seeks where it would go.
        match self.keys.find_entry(hash, |(k, _)| **k == *key) {
            Ok(found) => &mut found.into_mut().1,
            Err(absent) => {
                let entry = Entry {
                    seq: (now * 1e6) as u64,
                    ..Entry::default()
                };
                let hasher = &self.hasher;
                let placed =
                    absent
                        .into_table()
                        .insert_unique(hash, (key.into(), entry), |(k, _)| hasher.hash_one(&**k));
                &mut placed.into_mut().1
            }
        }
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
    pools: Arc<super::lend::Pools>,
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
        let hasher = ahash::RandomState::new();
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        hasher: hasher.clone(),
                        ..Shard::default()
                    })
                })
                .collect(),
            hasher,
            clock,
            pools: Arc::default(),
        }
    }

    /// Whether `other` is this store or a clone of it.
    pub(crate) fn same_as(&self, other: &MemoryStore) -> bool {
        Arc::ptr_eq(&self.shards, &other.shards)
    }

    /// [`Backend::lend`] without the future.
    pub fn lend_now(&self, call: &super::LendCall<'_>) -> Result<super::Lent, StoreError> {
        self.pools.apply(call, || self.clock.now())
    }

    /// The store's clock, in seconds.
    pub fn now(&self) -> f64 {
        self.clock.now()
    }

    /// The shard of `key` and the key's hash. The shard comes from bits the
    /// shard's table uses for neither its slots (the low ones) nor its tags
    /// (the top seven).
    fn shard(&self, key: &str) -> (&Mutex<Shard>, u64) {
        let (at, hash) = self.shard_at(key);
        (&self.shards[at], hash)
    }

    /// The index of `key`'s shard, and the key's hash.
    fn shard_at(&self, key: &str) -> (usize, u64) {
        let hash = self.hasher.hash_one(key);
        ((hash >> 32) as usize % SHARDS, hash)
    }

    /// [`Backend::reserve`] without the future: what the async method runs.
    pub fn reserve_now(&self, call: &ReserveCall<'_>) -> Result<Reserved, ReserveError> {
        // The clock is read under the shard's lock, so that reservations
        // taken in one order have slots in that order.
        let (shard, hash) = self.shard(call.key);
        let mut shard = shard.lock();
        let now = self.clock.now();
        reserve_in(&mut shard, hash, now, call)
    }

    /// Several reservations at one time, placed in the order given, each
    /// exactly as [`MemoryStore::reserve_now`] would place it alone at that
    /// time (what a batch of the Redis store does in one script call; see
    /// [`RedisStore::reserve_many`](crate::store::RedisStore::reserve_many)).
    pub fn reserve_many_now(
        &self,
        calls: &[ReserveCall<'_>],
    ) -> Vec<Result<Reserved, ReserveError>> {
        let now = self.clock.now();
        calls
            .iter()
            .map(|call| {
                let (shard, hash) = self.shard(call.key);
                reserve_in(&mut shard.lock(), hash, now, call)
            })
            .collect()
    }

    /// Reservations on several keys at one time, all or nothing, with a
    /// gate checked before part `gate.0` (see `store::together`): the parts'
    /// shards are held throughout (taken in index order), so nothing else
    /// sees a part granted and then given back. A part refused after others
    /// were granted gives them their state back exactly (every part but the
    /// last is asked not to wait, so a grant wrote nothing else).
    pub(crate) fn reserve_together_now(
        &self,
        calls: &[ReserveCall<'_>],
        mut gate: Option<LocalGate<'_, '_>>,
    ) -> Together {
        let mut held: Vec<usize> = calls.iter().map(|c| self.shard_at(c.key).0).collect();
        held.sort_unstable();
        held.dedup();
        let mut shards: Vec<_> = held.iter().map(|&i| self.shards[i].lock()).collect();
        let now = self.clock.now();
        let mut saved: Vec<(KeyState, u64)> = Vec::with_capacity(calls.len());
        let mut granted = Vec::with_capacity(calls.len());
        let mut gated = false;
        for (i, call) in calls.iter().enumerate() {
            if let Some((at, check, _)) = gate.as_mut() {
                if *at == i {
                    if !check() {
                        self.give_back(&mut shards, &held, &calls[..i], &saved, now);
                        return Together::Gated(None);
                    }
                    gated = true;
                }
            }
            let (at, hash) = self.shard_at(call.key);
            let shard = &mut shards[held.binary_search(&at).expect("held")];
            let entry = shard.entry(call.key, hash, now);
            saved.push((entry.state, entry.seq));
            match reserve_in(shard, hash, now, call) {
                Ok(r) => granted.push(r),
                Err(e) => {
                    if let (true, Some((_, _, undo))) = (gated, gate.as_mut()) {
                        undo();
                    }
                    self.give_back(&mut shards, &held, &calls[..i], &saved, now);
                    return Together::Refused(i, e);
                }
            }
        }
        Together::Granted(granted, None)
    }

    /// Puts the state of `calls`' keys back as `saved` holds it, last first.
    fn give_back(
        &self,
        shards: &mut [parking_lot::MutexGuard<'_, Shard>],
        held: &[usize],
        calls: &[ReserveCall<'_>],
        saved: &[(KeyState, u64)],
        now: f64,
    ) {
        for (call, &(state, seq)) in calls.iter().zip(saved).rev() {
            let (at, hash) = self.shard_at(call.key);
            let shard = &mut shards[held.binary_search(&at).expect("held")];
            let entry = shard.entry(call.key, hash, now);
            entry.state = state;
            entry.seq = seq;
        }
    }

    /// [`Backend::settle`] without the future.
    pub fn settle_now(&self, call: &SettleCall<'_>) -> Settled {
        self.settle_at(call, None)
    }

    /// Several settlements at one time, applied in the order given, each
    /// exactly as [`MemoryStore::settle_now`] would apply it alone at that
    /// time (what a batch of the Redis store does in one script call; see
    /// [`RedisStore::settle_many`](crate::store::RedisStore::settle_many)).
    pub fn settle_many_now(&self, calls: &[SettleCall<'_>]) -> Vec<Settled> {
        let now = self.clock.now();
        calls.iter().map(|c| self.settle_at(c, Some(now))).collect()
    }

    /// A settlement at store time `at`, or the clock's time when none.
    fn settle_at(&self, call: &SettleCall<'_>, at: Option<f64>) -> Settled {
        // The clock is read under the shard's lock, so that reservations
        // taken in one order have slots in that order.
        let (shard, hash) = self.shard(call.key);
        let mut shard = shard.lock();
        let now = at.unwrap_or_else(|| self.clock.now());
        let entry = shard.entry(call.key, hash, now);
        let queue = entry.queue(call.class, now);
        let me = queued(call.slot, call.id);
        // The first of its class's queue was charged before every other
        // reservation queued in it (FIFO).
        let first = queue.slots.first() == Some(&me);
        // Mostly the first or the last leaves: no search for those.
        let was_queued = if first {
            queue.slots.pop_first().is_some()
        } else if queue.slots.last() == Some(&me) {
            queue.slots.pop_last().is_some()
        } else {
            queue.slots.remove(&me)
        };
        if call.slot > now && !was_queued {
            // Its slot is ahead but it waits no more: cancelled already.
            return Settled::unchanged(entry.state);
        }
        let taken = if was_queued {
            queue.forget(call.id);
            Some(queue.take_credit(call.id))
        } else {
            None
        };
        let vacated = Vacated {
            queued: was_queued && call.slot > now,
            slot: call.slot,
            ahead: taken.as_ref().map_or([0.0; DIMENSIONS], |t| t.owed),
        };
        let later = entry.later_headroom(call.id, now);
        let refunded_before = entry.state.refunded;
        let settled = settle_vacated(
            call.policy,
            &entry.state,
            now,
            &call.mark,
            &call.actual,
            &later,
            &vacated,
        );
        entry.state = settled.state;
        let queue = entry.queue(call.class, now);
        if (call.slot <= now || first) && queue.queued_ever {
            for (r, give) in queue.started_refunds.iter_mut().zip(settled.returned) {
                *r += give;
            }
        }
        if call.slot > now && first {
            // Every reservation queued behind counts what the first gave
            // back, which includes what it had handed on by moving (its gap
            // and its credit): those handed down the queue would count twice.
            queue.forget_moves();
        }
        if call.slot <= now && settled.held.iter().any(|&h| h > 0.0) {
            queue.hand_on_held(call.id, settled.held);
        }
        if let Some(taken) =
            taken.filter(|_| call.slot > now && call.actual.iter().all(|&a| a == 0.0))
        {
            // What it gave back moved the TAT, not the slot of the one
            // behind: that one may start earlier by it too, unless it was the
            // first of the queue (then every one queued behind counts it).
            let mut extra = Given {
                seconds: if first {
                    [0.0; DIMENSIONS]
                } else {
                    settled.returned
                },
                before: refunded_before,
            };
            if let Some(had) = &taken.extra {
                extra.merge(had);
            }
            queue.pass_on(call.id, call.slot, settled.left, extra, taken.moved_in);
        }
        settled
    }

    /// [`Backend::advance`] without the future: the new slot, if it moved.
    pub fn advance_now(&self, call: &AdvanceCall<'_>) -> Option<Advanced> {
        match self.advance_outcome_now(call) {
            Advance::Moved(moved) => Some(moved),
            _ => None,
        }
    }

    /// [`Backend::advance`] without the future, with every outcome (a lease
    /// never runs out in one process: never [`Advance::Lost`]).
    pub fn advance_outcome_now(&self, call: &AdvanceCall<'_>) -> Advance {
        // The clock is read under the shard's lock, so that reservations
        // taken in one order have slots in that order.
        let (shard, hash) = self.shard(call.key);
        let mut shard = shard.lock();
        let now = self.clock.now();
        let entry = shard.entry(call.key, hash, now);
        let queue = entry.queue(call.class, now);
        let me = queued(call.slot, call.id);
        if !queue.slots.contains(&me) {
            return Advance::Stays; // started, cancelled, or the key expired
        }
        let predecessor = queue
            .slots
            .range(..me)
            .next_back()
            .map_or(f64::NEG_INFINITY, |&q| slot_of(q));
        let mut refunds = queue.started_refunds;
        for (s, at) in refunds.iter_mut().zip(call.mark.class_refunds_at) {
            *s -= at;
        }
        let credit = queue.credit_of(call.id, &call.mark);
        let mut since = refunds;
        if let Some(credit) = &credit {
            for (s, c) in since.iter_mut().zip(credit) {
                *s += c;
            }
        }
        let tolerance = call.policy.tau * call.headroom;
        let Some(slot) = advance(
            call.policy,
            now,
            call.slot,
            &call.mark,
            tolerance,
            &since,
            predecessor,
        ) else {
            // What is left in the queue is still ahead (it was purged).
            return if predecessor == f64::NEG_INFINITY {
                Advance::First
            } else {
                Advance::Stays
            };
        };
        queue.slots.remove(&me);
        if slot > now {
            queue.slots.insert(queued(slot, call.id));
        }
        if credit.is_some() {
            let credit = credit.unwrap_or([0.0; DIMENSIONS]);
            let vacated = moved_vacated(call.policy, &call.mark, &credit, &refunds, slot);
            queue.hand_on_move(call.id, slot, vacated, &call.mark);
        }
        Advance::Moved(Advanced { slot, now })
    }

    /// [`Backend::claim`] without the future.
    pub fn claim_now(&self, key: &str, id: u64, reserved_at: f64) -> Claim {
        let now = self.clock.now();
        let lifetime = crate::TOKEN_LIFETIME.as_secs_f64();
        if now > reserved_at + lifetime {
            return Claim::Expired;
        }
        let mut shard = self.shard(key).0.lock();
        if shard.claimed.len() >= 1024 && shard.claimed.len().is_power_of_two() {
            shard.claimed.retain(|_, until| *until > now);
        }
        match shard.claimed.entry((key.into(), id)) {
            std::collections::hash_map::Entry::Occupied(_) => Claim::Settled,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(reserved_at + lifetime);
                Claim::Fresh
            }
        }
    }

    /// [`Backend::snapshot`] without the future.
    pub fn snapshot_now(&self, key: &str) -> KeySnapshot {
        // The clock is read under the shard's lock, so that reservations
        // taken in one order have slots in that order.
        let (shard, hash) = self.shard(key);
        let mut shard = shard.lock();
        let now = self.clock.now();
        let entry = shard.entry(key, hash, now);
        let classes = entry.queues.len();
        let queue_depth = (0..classes)
            .map(|c| entry.queue(c as u8, now).slots.len() as u64)
            .sum();
        KeySnapshot {
            now,
            state: entry.state,
            queue_depth,
        }
    }

    /// [`Backend::reshare`] without the future: moves the lane once to its
    /// new share (`tollgate_core::reshare`), from the share recorded at its
    /// last change if there is one. A lane with no state that the change
    /// leaves as it is records nothing, as on Redis.
    pub fn reshare_now(&self, call: &super::ReshareCall<'_>) -> super::Reshare {
        let (shard, hash) = self.shard(call.key);
        let mut shard = shard.lock();
        let now = self.clock.now();
        let entry = shard.entry(call.key, hash, now);
        let from = match entry.share {
            Some((share, owed)) if share == call.to => {
                return super::Reshare {
                    moved: false,
                    owed,
                    now,
                }
            }
            Some((share, _)) => share,
            None => call.from,
        };
        let r = tollgate_core::reshare(call.policy, &entry.state, now, from, call.to, &call.extra);
        if r.state != entry.state || entry.state != KeyState::default() {
            entry.state = r.state;
            entry.share = Some((call.to, r.owed));
        }
        super::Reshare {
            moved: true,
            owed: r.owed,
            now,
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

/// One reservation on a locked shard (`hash`: its key's) at store time `now`.
#[inline]
fn reserve_in(
    shard: &mut Shard,
    hash: u64,
    now: f64,
    call: &ReserveCall<'_>,
) -> Result<Reserved, ReserveError> {
    let entry = shard.entry(call.key, hash, now);
    let queue = entry.queue(call.class, now);
    let request = ReserveRequest {
        cost: call.cost,
        headroom: call.headroom,
        tail: queue
            .slots
            .last()
            .map_or(f64::NEG_INFINITY, |&q| slot_of(q)),
        max_wait: call.max_wait,
        queued: queue.slots.len() as u64,
        max_queue: call.max_queue,
    };
    let refunded = entry.state.refunded;
    // Read in place: moving the grant out of its `Result` copied it whole
    // (a tenth of a decision's time).
    let granted = reserve(call.policy, &entry.state, now, &request);
    let grant = match &granted {
        Ok(grant) => grant,
        Err(e) => return Err(e.clone()),
    };
    entry.state = grant.state;
    entry.seq += 1;
    let id = entry.seq;
    let queue = &mut entry.queues[call.class as usize];
    let position = queue.slots.len() as u64;
    if grant.slot > now {
        let mut values = grant.headroom;
        for (v, r) in values.iter_mut().zip(refunded) {
            *v += r;
        }
        queue.push(id, grant.slot, &values);
    }
    Ok(Reserved {
        id,
        now,
        slot: grant.slot,
        position,
        mark: Mark {
            // Only a queued reservation needs them (to start earlier).
            class_refunds_at: if grant.slot > now {
                queue.started_refunds
            } else {
                [0.0; DIMENSIONS]
            },
            ..grant.mark
        },
    })
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

    async fn advance(&self, call: &AdvanceCall<'_>) -> Result<Advance, StoreError> {
        // One process: a lease has nobody to outlive.
        Ok(self.advance_outcome_now(call))
    }

    async fn claim(&self, key: &str, id: u64, reserved_at: f64) -> Result<Claim, StoreError> {
        Ok(self.claim_now(key, id, reserved_at))
    }

    async fn lend(&self, call: &super::LendCall<'_>) -> Result<super::Lent, StoreError> {
        self.lend_now(call)
    }

    async fn reshare(&self, call: &super::ReshareCall<'_>) -> Result<super::Reshare, StoreError> {
        Ok(self.reshare_now(call))
    }
}
