//! Who may do what, right now: tiers, clients and their keys, kept in an
//! index in memory that one change at a time updates.
//!
//! **Where it comes from, and which wins.** The config file declares the
//! tiers and its clients with their key hashes; the database (the ledger's,
//! tables in [`db`]) holds what the admin API created or changed since, and
//! is the durable record of it: nothing of it lives only in the shared
//! store, which carries just the notice that something changed.
//!
//! - a tier's setting is the database's when the admin API changed that
//!   field (`registry_tiers`), else the file's (field by field; see
//!   [`crate::overrides`]);
//! - a file client's tier is the database's when the API moved it
//!   (`registry_tier_assignments`), else the file's;
//! - a client the API created (`registry_clients`) is the database's alone;
//!   one with the id of a file client shadows it (logged at start), the
//!   file's keys still working;
//! - keys: the file's `key_sha256` and the keys issued by the API
//!   (`registry_keys`) both work;
//! - an organisation the API made or changed (`registry_orgs`) is the
//!   database's entry in whole (name, limits, disabled), one of the file's
//!   id shadowing it (logged at start); the file's `[orgs.ID].clients` stay
//!   its members, an API client's organisation is its row's;
//! - a client's own limits over its tier's are the file's
//!   (`[[clients]] limits`) or, for a client the API made, its row's; a
//!   key's are its row's;
//! - a route set through the API (`registry_routes`) is the whole route, in
//!   place of the file's of that name or beside the file's routes.
//!
//! Every override is logged at start with the file's value it shadows, and
//! listed by `GET /admin/overrides`; deleting it returns to the file. An
//! override that no longer fits the file (its tier is gone, or the result
//! is invalid) is skipped with a warning.
//!
//! **How a change travels.** A change is written to the database with the
//! next change number ([`db::write`]), applied here, and announced through
//! the shared store; every instance then applies the changes after its own
//! last one, each by re-reading the one entity it names, and re-reads the
//! change list from the database every [`REREAD_EVERY`] checks anyway, so a
//! lost notice (a store restarted empty) delays a change, never loses it.
//! Applying a change replaces one entry of the index under its write lock,
//! held for that replacement only: a tier's or an organisation's change
//! is one write whatever the number of its clients, and reaches each of
//! them as it is next looked up ([`Registry::client`] rebuilds a client
//! whose tier or organisation is not the one in force in that client's own
//! entry, under the entry's lock and the index's read lock: no request of
//! another client waits for it). [`Stats`] counts both.

pub mod audit;
pub mod db;
pub mod idempotency;
pub mod issue;
pub mod manage;
pub mod orgs;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;
use tollgate::{OutagePolicy, RateLimiter, Store};

use self::db::{ClientRow, Current, Entity, KeyRow, OrgRow};
use crate::auth::{KeyEntry, KeyIndex};
use crate::budget::{usd_to_nano, BudgetLimits};
use crate::config::{
    tier_limits, validate_route, validate_tier, Config, ConfigError, LimitsConfig, OrgConfig,
    RouteConfig, TierConfig,
};
use crate::ledger::StoreError;
use crate::overrides::{TierOverride, TierPatch};

pub use crate::overrides::Overrides;

/// Every this many checks for notices, an instance reads the change list
/// from the database even without one (`store.sync_interval_ms` apart).
pub const REREAD_EVERY: u32 = 4;

/// Most changes read from the database at once.
const CHANGES_AT_ONCE: u64 = 1_000;

/// Pages of each table ([`db::LOAD_PAGE`] rows) read ahead of their use
/// while the index is built.
const PAGES_AHEAD: usize = 4;

/// How often a change whose tier was changed meanwhile is tried again.
const ATTEMPTS: usize = 5;

/// Why the registry could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The configuration (with the overrides) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be reached to set up a bucket.
    #[error("the store is unavailable: {0}")]
    Store(String),
    /// The database could not be read or written.
    #[error("the registry's database is unavailable: {0}")]
    Database(#[from] StoreError),
    /// Other changes kept coming first.
    #[error(
        "the change kept meeting other changes of the same entry; nothing was changed, try again"
    )]
    Contended,
}

/// A tier as the request path uses it.
#[derive(Debug)]
pub struct Tier {
    /// Its name.
    pub name: String,
    /// Its settings (file + overrides).
    pub config: TierConfig,
    /// Its class on every provider bucket: its own lane when the tiers
    /// share the buckets by floor and weight, else its priority.
    pub class: u8,
    /// Longest wait in a queue.
    pub max_wait: Duration,
    /// Budgets in nano-USD.
    pub budget: BudgetLimits,
    /// Where its clients' buckets live and what they do when it is
    /// unreachable: a client's bucket is built from these at its first
    /// request, not at start (100,000 clients, most of them idle, would
    /// otherwise each hold one).
    buckets: Buckets,
    /// A bucket with the tier's settings (key `tier:NAME`, never reserved
    /// on): built with the tier, it proves that a client on the tier's own
    /// limits gets a bucket, and stands in for one should building it fail.
    proto: RateLimiter,
}

/// The store and outage policy every level's bucket is built on.
#[derive(Debug, Clone)]
struct Buckets {
    store: Store,
    outage: OutagePolicy,
}

impl Buckets {
    /// A bucket under `key` with `limits` (checked when built).
    fn build(&self, key: &str, limits: tollgate::Limits) -> Result<RateLimiter, tollgate::Error> {
        RateLimiter::builder(key)
            .store(self.store.clone())
            .limits(limits)
            .outage(self.outage)
            .build_unchecked()
    }
}

impl Tier {
    /// Tier `name` of `file` (whose tiers decide the classes) with these
    /// settings, its clients' buckets on `buckets`.
    fn new(
        file: &Config,
        name: &str,
        config: TierConfig,
        buckets: &Buckets,
    ) -> Result<Tier, RegistryError> {
        let proto = buckets
            .build(&format!("tier:{name}"), tier_limits(&config))
            .map_err(|e| crate::config::invalid(format!("tiers.{name}"), e.to_string()))?;
        Ok(Tier {
            name: name.to_string(),
            class: file.tier_class(name, &config),
            max_wait: Duration::from_millis(config.max_wait_ms),
            budget: BudgetLimits {
                daily: config.daily_budget_usd.map(usd_to_nano),
                monthly: config.monthly_budget_usd.map(usd_to_nano),
            },
            config,
            buckets: buckets.clone(),
            proto,
        })
    }
}

/// What one level of the hierarchy checks on each request: its bucket
/// (when it sets rpm or tpm) and its budgets.
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    /// Its bucket, key `org:ID` or `key:ID`.
    pub limiter: Option<RateLimiter>,
    /// Its budgets in nano-USD.
    pub budget: BudgetLimits,
}

/// An organisation: the level above its clients.
#[derive(Debug)]
pub struct Org {
    /// Its id.
    pub id: String,
    /// A name for people.
    pub name: Option<String>,
    /// Its limits and budgets.
    pub limits: LimitsConfig,
    /// Disabled: its clients are refused.
    pub disabled: bool,
    /// Where it comes from: `"file"` or `"database"`.
    pub source: &'static str,
    /// What it checks on each request of its clients.
    pub bounds: Bounds,
}

/// A client with its tier and bucket.
#[derive(Debug)]
pub struct Client {
    /// Its id.
    pub id: String,
    /// Its tier.
    pub tier: Arc<Tier>,
    /// Its organisation, when it has one.
    pub org: Option<Arc<Org>>,
    /// Its own limits over its tier's, when it sets any (most clients set
    /// none: then nothing is kept).
    limits: Option<Box<LimitsConfig>>,
    /// Its budgets in nano-USD: its own over its tier's.
    pub budget: BudgetLimits,
    /// The client's own bucket (the tier's RPM/TPM/burst, or its own
    /// rpm/tpm over them), key `client:ID`: built at its first use when
    /// the client is on its tier's limits ([`Client::limiter`]).
    limiter: OnceLock<RateLimiter>,
    /// Whether the client's last admission left its bucket plenty of room
    /// (then the next one asks the provider bucket at once; see `admission`).
    pub(crate) roomy: AtomicBool,
}

impl Client {
    /// Its own limits over its tier's (none set: all `None`).
    pub fn limits(&self) -> LimitsConfig {
        self.limits.as_deref().cloned().unwrap_or_default()
    }

    /// The client's own bucket, built now if this is its first use.
    pub fn limiter(&self) -> &RateLimiter {
        self.limiter.get_or_init(|| {
            // Only a client on its tier's own limits gets here (one with
            // limits of its own has its bucket built with it), and the
            // tier's bucket was built with the same settings.
            self.tier
                .buckets
                .build(&format!("client:{}", self.id), tier_limits(&self.tier.config))
                .unwrap_or_else(|e| {
                    tracing::error!(client = %self.id, error = %e, "client's bucket could not be built; its tier's shared bucket stands in");
                    self.tier.proto.clone()
                })
        })
    }

    /// The client's own bucket if a request has used it yet.
    pub fn built_limiter(&self) -> Option<&RateLimiter> {
        self.limiter.get()
    }
}

/// A key issued through the admin API, as the index keeps it: what a
/// request checks (its name and how it is shown stay in the database, for
/// the admin API to read there), under its hash.
#[derive(Debug, Clone)]
pub struct Key {
    /// Its id.
    pub id: Box<str>,
    /// Its client.
    pub client: Box<str>,
    /// The models and routes it may ask for (`None`: all).
    pub models: Option<Vec<String>>,
    /// When it stops working (ms since 1970).
    pub expires_at_ms: Option<i64>,
    /// What it checks on each request, when it sets limits or budgets of
    /// its own (most keys set none: then nothing is kept for them).
    own: Option<Box<Own>>,
}

/// A key's own limits and budgets.
#[derive(Debug, Clone)]
struct Own {
    /// Its bucket and budgets.
    bounds: Bounds,
    /// Whose they are: the first key of its rotations (`None`: its own).
    lineage: Option<String>,
}

/// What a key without limits or budgets of its own checks: nothing.
static NO_BOUNDS: Bounds = Bounds {
    limiter: None,
    budget: BudgetLimits {
        daily: None,
        monthly: None,
    },
};

impl Key {
    /// What it checks on each request, inside its client's.
    pub fn bounds(&self) -> &Bounds {
        self.own.as_deref().map_or(&NO_BOUNDS, |o| &o.bounds)
    }

    /// The id its budget's spend is counted under: the first key of its
    /// rotations (a rotation carries the budget on), else its own.
    pub fn budget_id(&self) -> &str {
        self.own
            .as_deref()
            .and_then(|o| o.lineage.as_deref())
            .unwrap_or(&self.id)
    }

    /// Whether this key may ask for `model` (a model's or a route's name).
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }
}

/// A client the API created, as the index keeps its row: what decides its
/// entry (its id is the map's key).
#[derive(Debug)]
struct ApiClient {
    tier: String,
    org: Option<String>,
    /// Its own limits, when it sets any.
    limits: Option<Box<LimitsConfig>>,
    disabled: bool,
}

impl ApiClient {
    /// Its row's id, and what the index keeps of it.
    fn from_row(row: ClientRow) -> (String, ApiClient) {
        let limits = (!row.limits.is_empty()).then(|| Box::new(row.limits));
        let kept = ApiClient {
            tier: row.tier,
            org: row.org,
            limits,
            disabled: row.disabled,
        };
        (row.id, kept)
    }

    /// Its own limits over its tier's.
    fn limits(&self) -> LimitsConfig {
        self.limits.as_deref().cloned().unwrap_or_default()
    }
}

/// A client's entry in the index: the client as last built. A lookup
/// that finds its tier or organisation changed since rebuilds it here,
/// under this entry's own lock and the index's read lock, so a tier's
/// change is one write to the index whatever the number of its clients,
/// and no other client's request waits for one of them.
#[derive(Debug)]
struct Slot(parking_lot::Mutex<Arc<Client>>);

impl Slot {
    fn new(client: Client) -> Slot {
        Slot(parking_lot::Mutex::new(Arc::new(client)))
    }
}

/// The index in force.
#[derive(Debug, Default)]
struct State {
    tiers: HashMap<String, Arc<Tier>>,
    clients: HashMap<String, Slot>,
    /// How many clients each tier has, by its name (kept as clients come,
    /// go and move: a listing of the tiers counts none).
    tier_clients: HashMap<String, usize>,
    keys: KeyIndex,
    /// Clients the API created, by id (in order, so that the admin API
    /// pages through them without sorting them).
    api_clients: BTreeMap<String, ApiClient>,
    /// Organisations in force: the file's, with the database's in place.
    orgs: HashMap<String, Arc<Org>>,
    /// Organisations the API made or changed.
    api_orgs: HashMap<String, OrgRow>,
    /// Routes by name: the file's, with the database's on top (replaced
    /// whole on a change: there are few).
    routes: Arc<BTreeMap<String, RouteConfig>>,
    overrides: Overrides,
    /// The last change applied.
    version: u64,
}

/// What the config file declares.
#[derive(Debug)]
struct File {
    /// The file without its clients (which are below), to check routes
    /// against its models and tiers.
    config: Config,
    tiers: BTreeMap<String, TierConfig>,
    /// Client id → its tier in the file (in order, as `api_clients`).
    clients: BTreeMap<String, String>,
    /// (key hash, client) of every file key.
    keys: Vec<(String, String)>,
    /// Organisations by id.
    orgs: BTreeMap<String, OrgConfig>,
    /// A file client's organisation.
    client_orgs: HashMap<String, String>,
    /// A file client's own limits, when it sets any.
    client_limits: HashMap<String, LimitsConfig>,
    classes: usize,
}

/// The registry: the index in memory, the database behind it.
#[derive(Debug)]
pub struct Registry {
    file: File,
    db: crate::ledger::Store,
    buckets: Buckets,
    state: RwLock<State>,
    /// One catch-up at a time.
    applying: tokio::sync::Mutex<()>,
    /// How often the whole index was built: once at start, then once per
    /// gap in the change list; applying a change never builds it.
    builds: AtomicU64,
    /// Entries re-read and put into the index one at a time: one per change
    /// applied (several changes of one entry in one catch-up are one).
    applied: AtomicU64,
    /// How often its write lock was taken, and the longest it was held
    /// (µs): while a change holds it, requests wait.
    holds: AtomicU64,
    longest_hold_us: AtomicU64,
    /// Clients rebuilt in their entry at a lookup, after their tier or
    /// organisation changed.
    refreshed: AtomicU64,
}

/// The index's write lock, held: how long is counted when it is let go
/// ([`Stats::longest_write_hold_us`]).
struct Held<'a> {
    guard: parking_lot::RwLockWriteGuard<'a, State>,
    since: std::time::Instant,
    registry: &'a Registry,
}

impl std::ops::Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let us = self.since.elapsed().as_micros() as u64;
        self.registry.holds.fetch_add(1, Ordering::Relaxed);
        self.registry
            .longest_hold_us
            .fetch_max(us, Ordering::Relaxed);
    }
}

/// How the index in memory came to be what it is ([`Registry::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// The last change applied.
    pub version: u64,
    /// Times the whole index was built (1 at start, +1 per gap).
    pub index_builds: u64,
    /// Entries re-read and replaced one at a time, one per change (several
    /// changes of one entry in one catch-up are one).
    pub changes_applied: u64,
    /// Clients in the index.
    pub clients: usize,
    /// Keys in the index (the file's and the issued ones).
    pub keys: usize,
    /// Times a change took the index's write lock.
    pub write_holds: u64,
    /// The longest a change held it, µs: all a request waits for a change.
    pub longest_write_hold_us: u64,
    /// Clients rebuilt in place at a lookup after their tier or
    /// organisation changed: under their own entry's lock, never the
    /// index's write lock.
    pub clients_refreshed: u64,
}

impl Registry {
    /// Reads the database over the file and builds the index. Overrides
    /// that no longer fit the file are skipped with a warning; each that
    /// applies is logged with what it shadows.
    pub async fn open(
        config: &Config,
        db: crate::ledger::Store,
        store: &Store,
        outage: OutagePolicy,
    ) -> Result<Registry, RegistryError> {
        let classes = config.priority.headroom.len();
        for (name, t) in &config.tiers {
            validate_tier(&format!("tiers.{name}"), t, classes)?;
        }
        let file = File {
            config: Config {
                clients: Vec::new(),
                ..config.clone()
            },
            tiers: config.tiers.clone(),
            clients: config
                .clients
                .iter()
                .map(|c| (c.id.clone(), c.tier.clone()))
                .collect(),
            keys: config
                .clients
                .iter()
                .flat_map(|c| c.key_sha256.iter().map(|h| (h.clone(), c.id.clone())))
                .collect(),
            orgs: config.orgs.clone(),
            client_orgs: config
                .orgs
                .iter()
                .flat_map(|(org, o)| o.clients.iter().map(|c| (c.clone(), org.clone())))
                .collect(),
            client_limits: config
                .clients
                .iter()
                .filter(|c| !c.limits.is_empty())
                .map(|c| (c.id.clone(), c.limits.clone()))
                .collect(),
            classes,
        };
        let registry = Registry {
            file,
            db,
            buckets: Buckets {
                store: store.clone(),
                outage,
            },
            state: RwLock::new(State::default()),
            applying: tokio::sync::Mutex::new(()),
            builds: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            holds: AtomicU64::new(0),
            longest_hold_us: AtomicU64::new(0),
            refreshed: AtomicU64::new(0),
        };
        registry.install(registry.build().await?);
        let (version, overrides) = registry.overrides();
        for line in overrides.describe(config) {
            tracing::warn!(version, "registry override in force: {line}");
        }
        {
            let st = registry.state.read();
            for id in st.api_clients.keys() {
                if registry.file.clients.contains_key(id) {
                    tracing::warn!(client = %id, "client is in the config file and in the registry's database: the database's entry is used, the file's keys still work");
                }
            }
            for id in st.api_orgs.keys() {
                if registry.file.orgs.contains_key(id) {
                    tracing::warn!(org = %id, "organisation is in the config file and in the registry's database: the database's entry is used (its name, limits and state; the file's members stay members)");
                }
            }
            tracing::info!(
                version,
                file_clients = registry.file.clients.len(),
                database_clients = st.api_clients.len(),
                orgs = st.orgs.len(),
                database_orgs = st.api_orgs.len(),
                keys = st.keys.len(),
                database = registry.db.kind(),
                "registry loaded: the config file, then the database's changes over it (field by field)"
            );
        }
        Ok(registry)
    }

    /// Builds the whole index from the database (at start, and after a gap
    /// in the change list): its small tables first, then its clients and
    /// keys a page at a time, each table read [`PAGES_AHEAD`] pages ahead
    /// of its use, so what start holds at its peak is the index and a few
    /// pages.
    async fn build(&self) -> Result<State, RegistryError> {
        let snapshot = db::load(&self.db).await?;
        let mut st = State {
            overrides: Overrides {
                tiers: snapshot.tiers,
                client_tiers: snapshot.assignments,
                routes: snapshot.routes,
            },
            version: snapshot.version,
            api_orgs: snapshot
                .orgs
                .into_iter()
                .map(|o| (o.id.clone(), o))
                .collect(),
            ..State::default()
        };
        let org_ids: Vec<String> = self
            .file
            .orgs
            .keys()
            .chain(st.api_orgs.keys())
            .cloned()
            .collect();
        for id in org_ids {
            self.rebuild_org(&mut st, &id);
        }
        for name in st.overrides.tiers.keys() {
            if !self.file.tiers.contains_key(name) {
                tracing::warn!(tier = %name, "registry change for a tier that is not in the config file; ignored");
            }
        }
        for name in self.file.tiers.keys() {
            let tier = self.effective_tier(name, st.overrides.tiers.get(name))?;
            st.tiers.insert(name.clone(), Arc::new(tier));
        }
        // Both tables are read a few pages ahead of their use, the keys'
        // while the clients are built.
        let mut client_pages = db::Pages::clients().read_ahead(&self.db, PAGES_AHEAD);
        let mut key_pages = db::Pages::keys().read_ahead(&self.db, PAGES_AHEAD);
        // The API's clients, in the order of their ids: built in one go,
        // their map's nodes are full.
        let mut api = Vec::new();
        while let Some(rows) = client_pages.recv().await {
            api.extend(rows?.into_iter().map(ApiClient::from_row));
        }
        st.api_clients = api.into_iter().collect();
        let ids: Vec<String> = self
            .file
            .clients
            .keys()
            .filter(|id| !st.api_clients.contains_key(*id))
            .chain(st.api_clients.keys())
            .cloned()
            .collect();
        st.clients.reserve(ids.len());
        for id in ids {
            self.rebuild_client(&mut st, &id)?;
        }
        for (hash, client) in &self.file.keys {
            st.keys.insert(hash, client);
        }
        st.routes = Arc::new(self.effective_routes(&st.overrides));
        while let Some(rows) = key_pages.recv().await {
            for row in rows? {
                let id = row.id.clone();
                let entry = self.key_entry(row);
                apply_key(&mut st, &id, Some(entry));
            }
        }
        Ok(st)
    }

    /// The index's write lock, timed while held.
    fn write(&self) -> Held<'_> {
        let guard = self.state.write();
        Held {
            guard,
            since: std::time::Instant::now(),
            registry: self,
        }
    }

    /// Puts `st`, a whole index just built, in force. The index it
    /// replaces is dropped after the write lock is released: freeing
    /// 100,000 clients takes longer than a request should wait.
    fn install(&self, st: State) {
        let old = std::mem::replace(&mut *self.write(), st);
        drop(old);
        self.builds.fetch_add(1, Ordering::Relaxed);
    }

    /// How the index came to be what it is, and its size.
    pub fn stats(&self) -> Stats {
        let st = self.state.read();
        Stats {
            version: st.version,
            index_builds: self.builds.load(Ordering::Relaxed),
            changes_applied: self.applied.load(Ordering::Relaxed),
            clients: st.clients.len(),
            keys: st.keys.len(),
            write_holds: self.holds.load(Ordering::Relaxed),
            longest_write_hold_us: self.longest_hold_us.load(Ordering::Relaxed),
            clients_refreshed: self.refreshed.load(Ordering::Relaxed),
        }
    }

    /// The file's tier `name` with `o`'s fields over it, or the file's alone
    /// when the result is invalid.
    fn effective_tier(&self, name: &str, o: Option<&TierOverride>) -> Result<Tier, RegistryError> {
        let file = &self.file.tiers[name];
        let Some(o) = o else {
            return Tier::new(&self.file.config, name, file.clone(), &self.buckets);
        };
        let t = o.fields.apply(file);
        let tier = validate_tier(&format!("tiers.{name}"), &t, self.file.classes)
            .map_err(RegistryError::from)
            .and_then(|()| Tier::new(&self.file.config, name, t, &self.buckets));
        tier.or_else(|e| {
            tracing::warn!(tier = %name, version = o.version, error = %e, "registry override no longer fits the config file; using the file's tier");
            Tier::new(&self.file.config, name, file.clone(), &self.buckets)
        })
    }

    /// The file's routes with the database's on top; one that no longer
    /// fits the file (a model or tier gone) is skipped with a warning.
    fn effective_routes(&self, overrides: &Overrides) -> BTreeMap<String, RouteConfig> {
        let mut routes = self.file.config.routes.clone();
        for (name, o) in &overrides.routes {
            match validate_route(&self.file.config, name, &o.route) {
                Ok(()) => {
                    routes.insert(name.clone(), o.route.clone());
                }
                Err(e) => {
                    tracing::warn!(route = %name, version = o.version, error = %e, "registry route no longer fits the config file; using the file's")
                }
            }
        }
        routes
    }

    /// The tier client `id` is on, when it exists.
    fn tier_of(&self, st: &State, id: &str) -> Option<Arc<Tier>> {
        let name = match (st.api_clients.get(id), self.file.clients.get(id)) {
            (Some(row), _) if row.disabled => return None,
            (Some(row), _) => &row.tier,
            (None, Some(file_tier)) => match st.overrides.client_tiers.get(id) {
                Some(o) if st.tiers.contains_key(&o.tier) => &o.tier,
                Some(o) => {
                    tracing::warn!(client = %id, tier = %o.tier, "registry tier change names an unknown tier; keeping the file's");
                    file_tier
                }
                None => file_tier,
            },
            (None, None) => return None,
        };
        match st.tiers.get(name) {
            Some(t) => Some(t.clone()),
            None => {
                tracing::warn!(client = %id, tier = %name, "client of an unknown tier; refused until its tier is set");
                None
            }
        }
    }

    /// Client `id` on `tier`, with its own `limits` over the tier's, in
    /// `org`.
    fn make_client(
        &self,
        id: &str,
        tier: Arc<Tier>,
        limits: LimitsConfig,
        org: Option<Arc<Org>>,
    ) -> Result<Client, RegistryError> {
        let mut own = limits.over(&tier.config);
        // No limits of its own: its tier's, checked when the tier was built.
        if !limits.is_empty() {
            let at = format!("clients.{id}.limits");
            if let Err(e) = validate_tier(&at, &own, self.file.classes) {
                tracing::warn!(client = %id, error = %e, "client's own limits no longer fit its tier; using the tier's");
                own = tier.config.clone();
            }
        }
        // A client on its tier's own rates gets its bucket at its first
        // request; one with rates of its own now, so that an error shows.
        let limiter = OnceLock::new();
        let bucket = tier_limits(&own);
        if bucket != tier_limits(&tier.config) {
            let built = self
                .buckets
                .build(&format!("client:{id}"), bucket)
                .map_err(|e| {
                    crate::config::invalid(format!("clients.{id}.limits"), e.to_string())
                })?;
            let _ = limiter.set(built);
        }
        Ok(Client {
            id: id.to_string(),
            budget: BudgetLimits {
                daily: own.daily_budget_usd.map(usd_to_nano),
                monthly: own.monthly_budget_usd.map(usd_to_nano),
            },
            tier,
            org,
            limits: (!limits.is_empty()).then(|| Box::new(limits)),
            limiter,
            roomy: AtomicBool::new(false),
        })
    }

    /// The bucket and budgets of a level whose limiter key is `key`.
    fn bounds(&self, key: &str, limits: &LimitsConfig) -> Bounds {
        let limiter = limits.bucket().and_then(|l| {
            self.buckets
                .build(key, l)
                .map_err(|e| tracing::warn!(key, error = %e, "a level's limits could not be set up; not applied"))
                .ok()
        });
        Bounds {
            limiter,
            budget: limits.budget(),
        }
    }

    /// Client `id`'s organisation and own limits, as they now are.
    fn levels_of(&self, st: &State, id: &str) -> (Option<Arc<Org>>, LimitsConfig) {
        let (org, limits) = match st.api_clients.get(id) {
            Some(row) => (row.org.as_ref(), row.limits()),
            None => (
                self.file.client_orgs.get(id),
                self.file.client_limits.get(id).cloned().unwrap_or_default(),
            ),
        };
        (org.and_then(|o| st.orgs.get(o).cloned()), limits)
    }

    /// Puts organisation `id` in the index as it now is: the database's
    /// entry, else the file's.
    fn rebuild_org(&self, st: &mut State, id: &str) {
        match self.org_entry(id, st.api_orgs.get(id)) {
            Some(org) => st.orgs.insert(id.to_string(), org),
            None => st.orgs.remove(id),
        };
    }

    /// Organisation `id` from its database `row`, else the file's (`None`:
    /// in neither).
    fn org_entry(&self, id: &str, row: Option<&OrgRow>) -> Option<Arc<Org>> {
        let (name, limits, disabled, source) = match (row, self.file.orgs.get(id)) {
            (Some(row), _) => (
                row.name.clone(),
                row.limits.clone(),
                row.disabled,
                "database",
            ),
            (None, Some(o)) => (o.name.clone(), o.limits.clone(), false, "file"),
            (None, None) => return None,
        };
        let bounds = self.bounds(&format!("org:{id}"), &limits);
        Some(Arc::new(Org {
            id: id.to_string(),
            name,
            limits,
            disabled,
            source,
            bounds,
        }))
    }

    /// Puts client `id` in the index as it now is (or takes it out).
    fn rebuild_client(&self, st: &mut State, id: &str) -> Result<(), RegistryError> {
        let old = match self.tier_of(st, id) {
            Some(tier) => {
                let (org, limits) = self.levels_of(st, id);
                let client = self.make_client(id, tier, limits, org)?;
                match st.tier_clients.get_mut(&client.tier.name) {
                    Some(n) => *n += 1,
                    None => {
                        st.tier_clients.insert(client.tier.name.clone(), 1);
                    }
                }
                st.clients.insert(id.to_string(), Slot::new(client))
            }
            None => st.clients.remove(id),
        };
        if let Some(old) = old {
            let was = old.0.into_inner();
            if let Some(n) = st.tier_clients.get_mut(&was.tier.name) {
                *n = n.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// The client in `slot` under the tier and organisation now in force
    /// (`st`'s): rebuilt in its slot once after either changed, under the
    /// slot's lock, so that a client's lookups after a change wait for its
    /// one rebuild and no other client's wait at all.
    fn fresh(&self, st: &State, slot: &Slot) -> Arc<Client> {
        let mut held = slot.0.lock();
        let client = &*held;
        let org = client.org.as_ref().map(|o| st.orgs.get(&o.id).cloned());
        let org_changed = match (&org, &client.org) {
            (Some(Some(now)), Some(was)) => !Arc::ptr_eq(now, was),
            (Some(None), _) => true,
            _ => false,
        };
        let tier = match st.tiers.get(&client.tier.name) {
            Some(t) if org_changed || !Arc::ptr_eq(t, &client.tier) => t.clone(),
            _ => return client.clone(),
        };
        let limits = client.limits();
        let Ok(rebuilt) = self.make_client(&client.id, tier, limits, org.flatten()) else {
            return client.clone();
        };
        self.refreshed.fetch_add(1, Ordering::Relaxed);
        *held = Arc::new(rebuilt);
        held.clone()
    }

    /// The client a presented key belongs to (`None`: unknown, revoked or
    /// expired key).
    pub fn authenticate(&self, key: &str) -> Option<Arc<Client>> {
        self.authenticate_key(key).map(|(c, _)| c)
    }

    /// [`Registry::authenticate`], with the key when the API issued it.
    pub fn authenticate_key(&self, key: &str) -> Option<(Arc<Client>, Option<Arc<Key>>)> {
        let (client, issued) = {
            let st = self.state.read();
            let entry = st.keys.entry(key)?;
            if entry
                .key()
                .and_then(|k| k.expires_at_ms)
                .is_some_and(|at| crate::ledger::row::now_ms() >= at)
            {
                return None;
            }
            let slot = st.clients.get(entry.client())?;
            (self.fresh(&st, slot), entry.key().cloned())
        };
        if client.org.as_ref().is_some_and(|o| o.disabled) {
            return None;
        }
        Some((client, issued))
    }

    /// Client `id`.
    pub fn client(&self, id: &str) -> Option<Arc<Client>> {
        let st = self.state.read();
        Some(self.fresh(&st, st.clients.get(id)?))
    }

    /// How many clients tier `name` has (kept as they come and go: O(1)).
    pub fn tier_client_count(&self, name: &str) -> usize {
        let st = self.state.read();
        st.tier_clients.get(name).copied().unwrap_or(0)
    }

    /// Organisation `id`, as in force.
    pub fn org(&self, id: &str) -> Option<Arc<Org>> {
        self.state.read().orgs.get(id).cloned()
    }

    /// Every organisation, by id.
    pub fn orgs(&self) -> Vec<Arc<Org>> {
        let mut all: Vec<Arc<Org>> = self.state.read().orgs.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Whether the config file declares organisation `id`.
    pub fn file_org(&self, id: &str) -> Option<&OrgConfig> {
        self.file.orgs.get(id)
    }

    /// How many clients there are.
    pub fn client_count(&self) -> usize {
        self.state.read().clients.len()
    }

    /// The routes in force, by name.
    pub fn routes(&self) -> Arc<BTreeMap<String, RouteConfig>> {
        self.state.read().routes.clone()
    }

    /// Sets route `name` (validated as the file's routes are); answers the
    /// change's number.
    pub async fn set_route(&self, name: &str, route: &RouteConfig) -> Result<u64, RegistryError> {
        validate_route(&self.file.config, name, route)?;
        let version = db::set_route(&self.db, name, route).await?;
        self.catch_up().await?;
        Ok(version)
    }

    /// Tier `name`.
    pub fn tier(&self, name: &str) -> Option<Arc<Tier>> {
        self.state.read().tiers.get(name).cloned()
    }

    /// Every tier, by name.
    pub fn tiers(&self) -> Vec<Arc<Tier>> {
        let mut all: Vec<Arc<Tier>> = self.state.read().tiers.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Whether tier `name` is declared (in the file).
    pub fn has_tier(&self, name: &str) -> bool {
        self.file.tiers.contains_key(name)
    }

    /// The file's tier `name`.
    pub fn file_tier(&self, name: &str) -> Option<&TierConfig> {
        self.file.tiers.get(name)
    }

    /// The file's tier of client `id`, when the file declares it.
    pub fn file_client_tier(&self, id: &str) -> Option<&str> {
        self.file.clients.get(id).map(String::as_str)
    }

    /// The overrides in force and the last change applied.
    pub fn overrides(&self) -> (u64, Overrides) {
        let st = self.state.read();
        (st.version, st.overrides.clone())
    }

    /// The last change applied here.
    pub fn version(&self) -> u64 {
        self.state.read().version
    }

    /// The database.
    pub fn db(&self) -> &crate::ledger::Store {
        &self.db
    }

    /// Applies the changes after the last one applied here, in order;
    /// answers how many. After a gap in the numbers (which a write never
    /// leaves), reads everything again.
    pub async fn catch_up(&self) -> Result<usize, RegistryError> {
        let _one = self.applying.lock().await;
        let mut applied = 0;
        loop {
            let from = self.version();
            let changes = db::changes_since(&self.db, from, CHANGES_AT_ONCE).await?;
            let Some(&(first, _)) = changes.first() else {
                return Ok(applied);
            };
            if first != from + 1 {
                tracing::warn!(
                    from,
                    first,
                    "gap in the registry's change list; reading it all again"
                );
                self.install(self.build().await?);
                return Ok(applied + 1);
            }
            let n = changes.len() as u64;
            // Several changes of one entry are one re-read.
            let mut seen = std::collections::HashSet::new();
            let mut last = from;
            for (version, entity) in changes {
                last = version;
                if seen.insert(entity.clone()) {
                    let now = db::read(&self.db, &entity).await?;
                    self.apply(now)?;
                }
                applied += 1;
            }
            self.write().version = last;
            if n < CHANGES_AT_ONCE {
                return Ok(applied);
            }
        }
    }

    /// Puts one entry as the database now holds it into the index. What
    /// can be built without the index (a tier, a key, an organisation, with
    /// their buckets) is built before taking its write lock, so requests
    /// meanwhile wait for no more than the entry's replacement.
    fn apply(&self, now: Current) -> Result<(), RegistryError> {
        self.applied.fetch_add(1, Ordering::Relaxed);
        match now {
            Current::Tier(name, o) => {
                let tier = match self.file.tiers.contains_key(&name) {
                    true => Some(Arc::new(self.effective_tier(&name, o.as_ref())?)),
                    false => None,
                };
                let mut st = self.write();
                match o {
                    Some(o) => st.overrides.tiers.insert(name.clone(), o),
                    None => st.overrides.tiers.remove(&name),
                };
                if let Some(tier) = tier {
                    st.tiers.insert(name, tier);
                }
            }
            Current::Assignment(id, o) => {
                let mut st = self.write();
                match o {
                    Some(o) => st.overrides.client_tiers.insert(id.clone(), o),
                    None => st.overrides.client_tiers.remove(&id),
                };
                self.rebuild_client(&mut st, &id)?;
            }
            Current::Client(id, row) => {
                let mut st = self.write();
                match row {
                    Some(row) => st
                        .api_clients
                        .insert(id.clone(), ApiClient::from_row(row).1),
                    None => st.api_clients.remove(&id),
                };
                self.rebuild_client(&mut st, &id)?;
            }
            Current::Key(id, row) => {
                let entry = row.map(|r| self.key_entry(r));
                apply_key(&mut self.write(), &id, entry);
            }
            Current::Route(name, o) => {
                let mut st = self.write();
                match o {
                    Some(o) => st.overrides.routes.insert(name, o),
                    None => st.overrides.routes.remove(&name),
                };
                st.routes = Arc::new(self.effective_routes(&st.overrides));
            }
            Current::Org(id, row) => {
                let org = self.org_entry(&id, row.as_ref());
                let mut st = self.write();
                match row {
                    Some(row) => st.api_orgs.insert(id.clone(), row),
                    None => st.api_orgs.remove(&id),
                };
                // Its clients take it up as each is next looked up (`fresh`).
                match org {
                    Some(org) => st.orgs.insert(id, org),
                    None => st.orgs.remove(&id),
                };
            }
        }
        Ok(())
    }

    /// Issued key `row` as the index keeps it: its hash (`None`: not 64 hex
    /// characters), and the key unless it is revoked.
    fn key_entry(&self, row: KeyRow) -> KeyEntryNow {
        let hash = crate::auth::parse_hash(&row.hash);
        if hash.is_none() {
            tracing::warn!(key = %row.id, "issued key's hash in the database is not 64 hex characters; the key is refused");
        }
        if row.revoked_at_ms.is_some() {
            return KeyEntryNow { hash, key: None };
        }
        // A rotated key's bucket is the first key's of its rotations. Most
        // keys set no limits of their own: nothing is built for them.
        let own = match row.limits.is_empty() {
            true => None,
            false => {
                let lineage = row.lineage.as_deref().unwrap_or(&row.id);
                let bounds = self.bounds(&format!("key:{lineage}"), &row.limits);
                (bounds.limiter.is_some() || bounds.budget != BudgetLimits::default()).then(|| {
                    Box::new(Own {
                        bounds,
                        lineage: row.lineage,
                    })
                })
            }
        };
        let key = Key {
            id: row.id.into(),
            client: row.client.into(),
            models: row.models,
            expires_at_ms: row.expires_at_ms,
            own,
        };
        KeyEntryNow {
            hash,
            key: Some(Arc::new(key)),
        }
    }

    /// Changes tier `name`'s fields by `patch` (over the overrides in
    /// force), validated as the file is. Answers the change's number and
    /// the tier now in force.
    pub async fn patch_tier(
        &self,
        name: &str,
        patch: &TierPatch,
    ) -> Result<(u64, TierConfig), RegistryError> {
        let file = self
            .file
            .tiers
            .get(name)
            .ok_or_else(|| crate::config::invalid(format!("tiers.{name}"), "unknown tier"))?;
        for _ in 0..ATTEMPTS {
            let Current::Tier(_, current) = db::read(&self.db, &Entity::Tier(name.into())).await?
            else {
                unreachable!("a tier is read as a tier");
            };
            let fields = current
                .as_ref()
                .map_or_else(|| patch.clone(), |o| o.fields.merged(patch));
            let t = fields.apply(file);
            // The file's own rules, so the API accepts exactly what the file would.
            validate_tier(&format!("tiers.{name}"), &t, self.file.classes)?;
            if patch.changes_shares() {
                self.check_shares(name, &t, patch)?;
            }
            let expected = current.map(|o| o.version);
            if let Some(version) = db::set_tier(&self.db, name, &fields, expected).await? {
                self.catch_up().await?;
                return Ok((version, t));
            }
        }
        Err(RegistryError::Contended)
    }

    /// The tiers' shares of the provider models with tier `name` as `t` (and
    /// the others as in force), by the file's rules (each floor and
    /// `lendable` in [0, 1], weights above 0, the floors summing to at most
    /// 1, also with each model's `floors`); only when the file's tiers share
    /// the models, since a change that started sharing them would change
    /// every tier's class.
    fn check_shares(
        &self,
        name: &str,
        t: &TierConfig,
        patch: &TierPatch,
    ) -> Result<(), RegistryError> {
        let file = &self.file.config;
        if !file.shares_providers() {
            let field = [
                ("floor", patch.floor),
                ("weight", patch.weight),
                ("lendable", patch.lendable),
            ]
            .into_iter()
            .find_map(|(f, v)| v.map(|_| f))
            .unwrap_or("floor");
            return Err(crate::config::invalid(
                format!("tiers.{name}.{field}"),
                "the tiers do not share the provider models in the config file, so a tier has no floor, weight or lendable part to change: set floor (or weight) on the tiers in the file and restart",
            )
            .into());
        }
        let mut tiers: BTreeMap<String, TierConfig> = self
            .tiers()
            .iter()
            .map(|x| (x.name.clone(), x.config.clone()))
            .collect();
        tiers.insert(name.to_string(), t.clone());
        let config = Config {
            tiers,
            ..file.clone()
        };
        Ok(config.validate_shares()?)
    }

    /// Moves client `id` to tier `tier` (both known: checked by the caller).
    pub async fn assign_tier(&self, id: &str, tier: &str) -> Result<u64, RegistryError> {
        let version = db::set_assignment(&self.db, id, tier).await?;
        self.catch_up().await?;
        Ok(version)
    }

    /// Removes an override (`Entity::Tier`, `Entity::Assignment` or
    /// `Entity::Route`):
    /// answers the change's number, or `None` when there was none.
    pub async fn remove_override(&self, entity: &Entity) -> Result<Option<u64>, RegistryError> {
        let version = db::remove_override(&self.db, entity).await?;
        if version.is_some() {
            self.catch_up().await?;
        }
        Ok(version)
    }

    /// Writes overrides the previous releases kept in the shared store into
    /// the database, each unless the database already has one for that
    /// tier or client (the database's is newer). Answers how many.
    pub async fn import(&self, legacy: &Overrides) -> Result<usize, RegistryError> {
        let (_, have) = self.overrides();
        let mut n = 0;
        for (name, o) in &legacy.tiers {
            if !have.tiers.contains_key(name) && self.file.tiers.contains_key(name) {
                db::set_tier(&self.db, name, &o.fields, None).await?;
                n += 1;
            }
        }
        for (id, o) in &legacy.client_tiers {
            if !have.client_tiers.contains_key(id) {
                db::set_assignment(&self.db, id, &o.tier).await?;
                n += 1;
            }
        }
        for (name, o) in &legacy.routes {
            if !have.routes.contains_key(name) {
                db::set_route(&self.db, name, &o.route).await?;
                n += 1;
            }
        }
        self.catch_up().await?;
        Ok(n)
    }
}

/// An issued key as its row now is ([`Registry::key_entry`]).
struct KeyEntryNow {
    /// Its hash, as 32 bytes.
    hash: Option<[u8; 32]>,
    /// The key, unless it is revoked.
    key: Option<Arc<Key>>,
}

/// Puts issued key `id` as it now is (`None`: its row is gone) into the
/// index: a revoked or removed key leaves it.
fn apply_key(st: &mut State, id: &str, now: Option<KeyEntryNow>) {
    // A key's row keeps its hash once revoked, so the entry to replace is
    // found by it; only a row gone from the database has to be looked for.
    let hash = now.as_ref().and_then(|n| n.hash);
    if let Some(old) = hash.or_else(|| st.keys.find_issued(id)) {
        st.keys.remove_issued(&old, id);
    }
    if let Some(KeyEntryNow {
        hash: Some(hash),
        key: Some(key),
    }) = now
    {
        st.keys.insert_hash(hash, KeyEntry::Issued(key));
    }
}

#[cfg(test)]
mod tests;
