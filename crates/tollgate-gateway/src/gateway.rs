//! The gateway's shared state: config, store, buckets, spend, registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate::{OutagePolicy, RateLimiter, Store};

use crate::budget::{Budgets, MemoryBudgets, RedisBudgets};
use crate::config::{model_limits, Config, ConfigError, ModelClasses};
use crate::ledger::UsageLedger;
use crate::metrics::Metrics;
use crate::model::{Endpoint, Model, Price};
use crate::pause::Hold;
use crate::registry::{Overrides, Registry, RegistryError};
use crate::request::forward::Upstream;
use crate::request::settle::Books;
use crate::request::stream::Timeouts;
use crate::request::Pipeline;
use crate::sync::LiveSync;
use crate::tokenizer::Tokenizer;

/// Why the gateway could not start. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be reached.
    #[error("cannot use the store in store.url: {0}")]
    Store(String),
    /// A provider's key variable is not set.
    #[error("provider {provider:?} reads its API key from ${env}, which is not set: export {env}=... or remove api_key_env")]
    MissingKey {
        /// The provider.
        provider: String,
        /// The variable.
        env: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another server.listen")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the upstream HTTP client: {0}")]
    Http(String),
    /// The usage ledger could not be opened.
    #[error("cannot open the usage ledger: {0}")]
    Ledger(String),
}

/// The state every request handler shares.
#[derive(Debug)]
pub struct Gateway {
    /// The configuration file as loaded.
    pub config: Config,
    /// The limits store.
    pub store: Store,
    /// The outage policy of every limiter.
    pub outage: OutagePolicy,
    /// Spend and budgets.
    pub budgets: Arc<Budgets>,
    /// Live changes across instances.
    pub sync: LiveSync,
    /// Models by the name clients use.
    pub models: Arc<BTreeMap<String, Arc<Model>>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Client connections open, refused and timed out.
    pub connections: Arc<crate::listener::ConnectionStats>,
    /// The usage ledger (`None`: `ledger.url = "off"`).
    pub ledger: Option<Arc<UsageLedger>>,
    /// What the request path needs of all this.
    pub(crate) pipeline: Pipeline,
    /// The admin tokens (none: the admin API is off).
    pub(crate) admin_tokens: crate::auth::AdminTokens,
    registry: Arc<Registry>,
    /// Checks for registry changes so far (every
    /// [`REREAD_EVERY`](crate::registry::REREAD_EVERY)th reads the database).
    checks: std::sync::atomic::AtomicU32,
    /// The registry change the models' shares were last put in force at
    /// ([`Gateway::reshare`]).
    reshared_at: std::sync::atomic::AtomicU64,
}

impl Gateway {
    /// Validates the config, connects to the store and builds every bucket.
    pub async fn new(config: Config) -> Result<Arc<Gateway>, StartError> {
        config.validate()?;
        let outage = config.outage_policy()?;
        let (store, budgets, sync) = connect(&config).await?;
        let ledger = match config.ledger_settings() {
            Some(settings) => Some(Arc::new(
                UsageLedger::open(&settings)
                    .await
                    .map_err(|e| StartError::Ledger(e.to_string()))?,
            )),
            None => None,
        };
        let budgets = match &ledger {
            Some(l) => budgets
                .rebuilt_from(l)
                .await
                .map_err(|e| StartError::Ledger(format!("rebuilding spend: {e}")))?,
            None => budgets,
        };
        let models = Arc::new(build_models(&config, &store, outage).await?);
        let registry = open_registry(&config, ledger.as_deref(), &store, &sync, outage).await?;
        let admin_tokens = crate::auth::AdminTokens::from_config(&config.admin);
        let budgets = Arc::new(budgets);
        let metrics = Arc::new(Metrics::new(config.metrics.client_labels));
        let books = Arc::new(Books {
            budgets: budgets.clone(),
            metrics: metrics.clone(),
            ledger: ledger.clone(),
            outage,
            inline: store.is_memory(),
        });
        let pipeline = pipeline(&config, books, &store, models.clone())?;
        let gateway = Arc::new(Gateway {
            config,
            store,
            outage,
            budgets,
            sync,
            models,
            metrics,
            connections: Arc::default(),
            ledger,
            pipeline,
            admin_tokens,
            registry: Arc::new(registry),
            checks: std::sync::atomic::AtomicU32::new(0),
            reshared_at: std::sync::atomic::AtomicU64::new(u64::MAX),
        });
        // The database's changes of floors and weights, over the file's.
        gateway.reshare();
        Ok(gateway)
    }

    /// The registry in force.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The overrides in force and the last registry change applied.
    pub async fn overrides(&self) -> (u64, Overrides) {
        self.registry.overrides()
    }

    /// Puts the tiers' shares of the provider models in force, as the
    /// registry now has them, when it changed since they last were (see
    /// [`crate::shares::reshare`]).
    pub(crate) fn reshare(&self) {
        use std::sync::atomic::Ordering;
        let version = self.registry.version();
        if self.reshared_at.swap(version, Ordering::AcqRel) == version {
            return;
        }
        let tiers = self
            .registry
            .tiers()
            .iter()
            .map(|t| (t.name.clone(), t.config.clone()))
            .collect();
        crate::shares::reshare(&self.config, &tiers, &self.models);
    }

    /// Puts registry change `version`, made here, in force for the
    /// provider models' shares too, and tells the other instances (they
    /// also find it in the database within a few checks when the notice is
    /// lost).
    pub(crate) async fn announce(&self, version: u64) {
        self.reshare();
        if let Err(e) = self.sync.announce(version).await {
            self.metrics
                .inc("tollgate_store_errors_total", &[("component", "sync")]);
            tracing::warn!(version, error = %e, "could not announce a registry change; other instances read it from the database within a few seconds");
        }
    }

    /// Applies registry changes made by other instances (called every
    /// `store.sync_interval_ms`): when the store announces a newer one, and
    /// every [`REREAD_EVERY`](crate::registry::REREAD_EVERY)th call anyway.
    /// Answers whether any was applied.
    pub async fn refresh(&self) -> Result<bool, String> {
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let announced = self.sync.announced().await;
        let behind = announced
            .as_ref()
            .is_ok_and(|&v| v > self.registry.version());
        // Changes applied by another catch-up (an admin change here reads
        // the others' changes too) are put in force as well.
        self.reshare();
        if !behind && !n.is_multiple_of(crate::registry::REREAD_EVERY) {
            return announced.map(|_| false);
        }
        let applied = self.registry.catch_up().await.map_err(|e| e.to_string())?;
        self.reshare();
        if applied > 0 {
            tracing::info!(
                version = self.registry.version(),
                changes = applied,
                "applied registry changes"
            );
        }
        announced.map(|_| applied > 0)
    }
}

/// The registry on the ledger's database (an in-memory one when the ledger
/// is off), with the overrides earlier releases kept in the store moved
/// into it.
async fn open_registry(
    config: &Config,
    ledger: Option<&UsageLedger>,
    store: &Store,
    sync: &LiveSync,
    outage: OutagePolicy,
) -> Result<Registry, StartError> {
    let db = match ledger {
        Some(l) => l.store().clone(),
        None => {
            tracing::warn!("ledger.url = \"off\": the registry's changes are kept in memory only, lost at restart and not seen by other instances");
            crate::ledger::Store::open("sqlite::memory:")
                .await
                .map_err(|e| StartError::Ledger(e.to_string()))?
        }
    };
    let legacy = sync.legacy().await.map_err(StartError::Store)?;
    let registry = Registry::open(config, db, store, outage)
        .await
        .map_err(start_error)?;
    if let Some(legacy) = legacy {
        let n = registry.import(&legacy).await.map_err(start_error)?;
        sync.forget_legacy().await.map_err(StartError::Store)?;
        tracing::warn!(
            imported = n,
            "moved the overrides an earlier release kept in the store into the registry's database"
        );
        for line in registry.overrides().1.describe(config) {
            tracing::warn!("registry override in force: {line}");
        }
    }
    Ok(registry)
}

fn start_error(e: RegistryError) -> StartError {
    match e {
        RegistryError::Config(e) => StartError::Config(e),
        RegistryError::Store(e) => StartError::Store(e),
        e => StartError::Ledger(e.to_string()),
    }
}

/// The store, the spend and the live-change channel `store.url` names.
async fn connect(config: &Config) -> Result<(Store, Budgets, LiveSync), StartError> {
    let url = &config.store.url;
    if url.starts_with("memory://") {
        return Ok((
            Store::memory(),
            Budgets::Memory(MemoryBudgets::new()),
            LiveSync::Local,
        ));
    }
    let timeout = Duration::from_millis(config.store.timeout_ms);
    let defaults = tollgate::store::RedisOptions::default();
    let late = defaults
        .late_reply_timeout
        .max(defaults.connect_timeout + timeout);
    let options = defaults.response_timeout(timeout).late_reply_timeout(late);
    let store = Store::redis_with(url, options).await.map_err(|e| {
        StartError::Store(format!("{e}; is redis-server running and store.url right?"))
    })?;
    // The admission's joint script with the budgets in it, loaded before a
    // burst of first requests would each find it missing.
    if let Store::Redis(r) = &store {
        r.load_gate(crate::budget::gate::script())
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
    }
    // Spend and live changes share the store's multiplexed connection
    // (standalone or Cluster): their keys carry hash tags.
    let Store::Redis(redis) = &store else {
        return Err(StartError::Store("not a Redis store".into()));
    };
    let budgets = RedisBudgets::new(redis.clone(), timeout)
        .with_hold_ttl(crate::budget::hold_lifetime(longest_request(config)));
    let sync = LiveSync::Redis(redis.clone(), timeout);
    Ok((store, Budgets::Redis(Box::new(budgets)), sync))
}

/// Every provider's models, by the name clients use.
pub(crate) async fn build_models(
    config: &Config,
    store: &Store,
    outage: OutagePolicy,
) -> Result<BTreeMap<String, Arc<Model>>, StartError> {
    let mut models = BTreeMap::new();
    for (pname, p) in &config.providers {
        let api_key = match &p.api_key_env {
            Some(env) => Some(std::env::var(env).map_err(|_| StartError::MissingKey {
                provider: pname.clone(),
                env: env.clone(),
            })?),
            None => None,
        };
        for (mname, m) in &p.models {
            let at = ModelAt {
                provider: pname,
                name: mname,
                config: p,
                api_key: &api_key,
            };
            let classes = config.model_classes(m);
            let model = build_model(at, m, store, classes, outage).await?;
            models.insert(mname.clone(), Arc::new(model));
        }
    }
    Ok(models)
}

/// Where a model is configured.
struct ModelAt<'a> {
    provider: &'a str,
    name: &'a str,
    config: &'a crate::config::ProviderConfig,
    api_key: &'a Option<String>,
}

/// One model with its provider bucket, tokenizer and upstream URLs.
async fn build_model(
    at: ModelAt<'_>,
    m: &crate::config::ModelConfig,
    store: &Store,
    classes: ModelClasses,
    outage: OutagePolicy,
) -> Result<Model, StartError> {
    let (pname, mname) = (at.provider, at.name);
    let key = format!("model:{pname}/{mname}");
    let mut builder = RateLimiter::builder(&key)
        .store(store.clone())
        .limits(model_limits(m))
        .priority_classes(classes.classes);
    let shares = classes.shares.unwrap_or_default();
    if !shares.is_empty() {
        // One lane per tier (see `config::share`); validated with the config.
        builder = builder.class_shares(shares.clone());
    }
    let limiter = builder
        .outage(outage)
        // The configuration (and its live changes) decides the limits.
        .replace_stored_limits(true)
        .build()
        .await
        .map_err(|e| {
            crate::config::invalid(format!("providers.{pname}.models.{mname:?}"), e.to_string())
        })?;
    let tokenizer = m
        .tokenizer
        .as_deref()
        .and_then(Tokenizer::from_name)
        .unwrap_or_else(|| Tokenizer::for_model(m.upstream_name.as_deref().unwrap_or(mname)));
    tokenizer.warm_up();
    let base_url = at.config.base_url.trim_end_matches('/').to_string();
    let url = |endpoint: Endpoint| {
        reqwest::Url::parse(&format!("{base_url}/{}", endpoint.upstream_path())).map_err(|e| {
            crate::config::invalid(
                format!("providers.{pname}.base_url"),
                format!("{:?} is not a valid URL: {e}", at.config.base_url),
            )
        })
    };
    let urls = [
        url(Endpoint::Chat)?,
        url(Endpoint::Embeddings)?,
        url(Endpoint::Responses)?,
    ];
    Ok(Model {
        name: mname.to_string(),
        provider: pname.to_string(),
        kind: m.kind,
        upstream_name: m.upstream_name.clone().unwrap_or_else(|| mname.to_string()),
        base_url,
        urls,
        api_key: at.api_key.clone(),
        limiter,
        shares: parking_lot::Mutex::new(shares),
        price: Price {
            input_usd_per_mtok: m.input_usd_per_mtok,
            output_usd_per_mtok: m.output_usd_per_mtok,
        },
        context_window: m.context_window,
        default_max_tokens: m.default_max_tokens,
        tokenizer,
        hold: Hold::new(&key),
        fallbacks: m.fallbacks.clone(),
    })
}

/// What the request path needs: the books, the upstream client and its
/// timeouts, the models and the body limits.
fn pipeline(
    config: &Config,
    books: Arc<Books>,
    store: &Store,
    models: Arc<BTreeMap<String, Arc<Model>>>,
) -> Result<Pipeline, StartError> {
    let s = &config.server;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs_f64(s.upstream_timeout_secs))
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    let upstream = Upstream {
        http,
        timeouts: Timeouts {
            first_byte: Duration::from_secs_f64(s.upstream_first_byte_timeout_secs),
            idle: Duration::from_secs_f64(s.upstream_idle_timeout_secs),
            total: Duration::from_secs_f64(s.upstream_timeout_secs),
        },
        store: store.clone(),
        store_timeout: Duration::from_millis(config.store.timeout_ms),
        metrics: books.metrics.clone(),
    };
    Ok(Pipeline {
        books,
        upstream,
        models,
        body_limit: s.max_body_bytes,
        body_timeout: Duration::from_secs_f64(s.body_read_timeout_secs),
        log_prompts: s.log_prompts,
        attempts: crate::request::Attempts {
            max: s.max_attempts,
            deadline: Duration::from_secs_f64(s.request_deadline_secs),
        },
        classifier: crate::routing::Classifier::new(&config.classifier),
    })
}

/// The longest a request may take under `config`: the longest wait of any
/// tier, an upstream pause, and the whole upstream call.
fn longest_request(config: &Config) -> Duration {
    let wait = config
        .tiers
        .values()
        .map(|t| t.max_wait_ms)
        .max()
        .unwrap_or(0);
    Duration::from_millis(wait)
        + crate::pause::MAX_HOLD
        + Duration::from_secs_f64(config.server.upstream_timeout_secs)
}
