//! The configuration file's shape: one struct per table, each field documented
//! once with its default. `config/tollgate.example.toml` shows all of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen and request-size limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where limits and spend live.
    #[serde(default)]
    pub store: StoreConfig,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `/metrics`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Priority classes of the provider buckets.
    #[serde(default)]
    pub priority: PriorityConfig,
    /// Upstream providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Client tiers by name.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Clients (tenants).
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Organisations by id: the level above clients (see `orgs`).
    #[serde(default)]
    pub orgs: BTreeMap<String, super::OrgConfig>,
    /// The usage ledger.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// Routes by the name requests give as their `model` (see `routes`).
    #[serde(default)]
    pub routes: BTreeMap<String, super::RouteConfig>,
    /// How a request's task class is told, for the routes.
    #[serde(default)]
    pub classifier: super::ClassifierConfig,
}

/// `[ledger]`: where every request's row is kept (see `ledger`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The database: a SQLite file (`"sqlite:PATH"` or a plain path,
    /// relative to the configuration file's folder), `"postgres://…"` for
    /// several instances sharing one ledger, or `"off"`. Default: the SQLite
    /// file `tollgate-ledger.sqlite` beside the configuration file (in
    /// memory for a configuration given as text).
    pub url: String,
    /// The spool file rows wait in while the database is unreachable
    /// (relative to the configuration file's folder). Default: beside the
    /// SQLite file (`….sqlite.spool`), or `tollgate-ledger-INSTANCE.spool`
    /// beside the configuration for PostgreSQL. Each instance needs its own.
    pub spool_path: Option<String>,
    /// This instance's name in its rows. Default: `server.listen`.
    pub instance: Option<String>,
    /// Longest a row waits before its batch is written, milliseconds: the
    /// most a SIGKILL of the gateway can lose (plus one write). Default 100.
    pub flush_interval_ms: u64,
    /// Most rows in one insert. Default 500.
    pub batch_rows: usize,
    /// Rows the writer's queue holds; beyond it, rows go straight to the
    /// spool (counted in `tollgate_ledger_overflow_total`). Default 65536.
    pub queue_rows: usize,
    /// The folder of the configuration file, set when it is loaded.
    #[serde(skip)]
    pub base_dir: Option<std::path::PathBuf>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: String::new(),
            spool_path: None,
            instance: None,
            flush_interval_ms: 100,
            batch_rows: 500,
            queue_rows: 65_536,
            base_dir: None,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Largest request body in bytes; larger bodies get 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Longest an upstream call may take, in seconds, the whole answer
    /// included. Default 600.
    pub upstream_timeout_secs: f64,
    /// Longest a streamed call may wait for the first byte of its answer
    /// (headers and first event), in seconds. Default 120. A non-streamed
    /// answer's headers come only once it is complete, so only the total
    /// bounds it.
    pub upstream_first_byte_timeout_secs: f64,
    /// Longest silence between two chunks of an answer, in seconds.
    /// Default 60.
    pub upstream_idle_timeout_secs: f64,
    /// Log prompt text at debug level (never API keys). Default false.
    pub log_prompts: bool,
    /// Most client connections open at once; one more is answered 503 with
    /// `Retry-After` and closed. Keep it below the process's file limit
    /// (`ulimit -n`), leaving room for upstream and store connections.
    /// Default 8192.
    pub max_connections: usize,
    /// A connection that sends nothing for this long (seconds) while none of
    /// its requests is being served is closed. Default 65: longer than the
    /// 60 s idle timeout of common load balancers in front, so that they,
    /// not the gateway, close their idle connections first.
    pub idle_timeout_secs: f64,
    /// Longest time (seconds) from a request's first byte to the end of its
    /// headers; a slower client's connection is closed. Default 10.
    pub header_read_timeout_secs: f64,
    /// Longest time (seconds) for a request's body to arrive once its headers
    /// have; a slower client gets 408. Default 30.
    pub body_read_timeout_secs: f64,
    /// Most upstream calls one request may make, its fallbacks included.
    /// Default 3.
    pub max_attempts: u32,
    /// Longest one request may take from admission to its answer's first
    /// byte, in seconds, whatever the mix of fallbacks: no attempt starts
    /// after it and an attempt's wait for its answer is cut at it. Default
    /// 600 (the upstream timeout's default).
    pub request_deadline_secs: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            upstream_timeout_secs: 600.0,
            upstream_first_byte_timeout_secs: 120.0,
            upstream_idle_timeout_secs: 60.0,
            log_prompts: false,
            max_connections: 8192,
            idle_timeout_secs: 65.0,
            header_read_timeout_secs: 10.0,
            body_read_timeout_secs: 30.0,
            max_attempts: 3,
            request_deadline_secs: 600.0,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory://` (default: this process only), `redis://host:port` /
    /// `rediss://…`, or `redis+cluster://host:port,host:port` for a Redis
    /// Cluster (several gateway instances share every limit and counter).
    pub url: String,
    /// What the limiters do when the store is unreachable: `open` (let
    /// requests through), `closed` (refuse with 503) or `local` (limit in this
    /// process with `local_share` of each limit). Default `closed`.
    pub outage: String,
    /// This instance's share of each limit under `outage = "local"`. Default 1.0.
    pub local_share: f64,
    /// How often (milliseconds) an instance checks the store for admin changes
    /// made on another instance. Default 250.
    pub sync_interval_ms: u64,
    /// Longest wait (milliseconds) for the answer to one store call (a
    /// limiter step, a spend reservation or settlement) before it is retried
    /// or, for an admission, the outage policy applies. Default 2000. A call
    /// whose answer only waits in the gateway (a burst of thousands of
    /// requests keeps its threads busy) is not failed while Redis answers
    /// the store's probes: it waits on, up to 10 s. Settlements that time
    /// out are retried (idempotently) in the background.
    pub timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "memory://".into(),
            outage: "closed".into(),
            local_share: 1.0,
            sync_interval_ms: 250,
            timeout_ms: 2_000,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// SHA-256 (hex) of the admin token (`tollgate hash-key TOKEN` prints it).
    /// Without it (and without `tokens`) the admin API is off. It acts as
    /// a `read_write` token named `admin`.
    pub token_sha256: Option<String>,
    /// More admin tokens, each with a name (what the audit records) and a
    /// role: `[[admin.tokens]]` `name = "ops"`, `sha256 = "…"`, `role =
    /// "read_only"`.
    pub tokens: Vec<AdminTokenConfig>,
}

/// The name `admin.token_sha256`'s token goes by (in the audit table).
pub const LEGACY_ADMIN_TOKEN: &str = "admin";

/// One of `[[admin.tokens]]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    /// Its name, as the audit table records who made a change (never the
    /// token).
    pub name: String,
    /// SHA-256 (hex) of the token (`tollgate hash-key TOKEN`).
    pub sha256: String,
    /// What it may do.
    pub role: AdminRole,
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    /// Read everything, change nothing (403 `read_only_token`).
    ReadOnly,
    /// Read and change.
    ReadWrite,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served. Default (none): on the client port,
    /// behind the admin token (`Authorization: Bearer ADMIN_TOKEN`), and off
    /// without one. An address such as `"127.0.0.1:9464"`: on a listener of
    /// its own, without a token, for a scraper on a private network (never
    /// expose it publicly).
    pub listen: Option<String>,
    /// Label series with client ids (requests, tokens, spend, budget left).
    /// Default false: one series per tier and model, however many clients,
    /// and no client list in the metrics.
    pub client_labels: bool,
}

/// `[priority]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityConfig {
    /// Headroom `h_k` of each class, top class first (must be 1.0). A class
    /// may fill only this share of a provider bucket's tolerance, so lower
    /// classes cannot fill the part kept above their headroom; calls they
    /// already queued keep their slots, though, and a higher-class call waits
    /// for them less that part (see `tollgate::PriorityClass`). Default
    /// `[1.0, 0.8, 0.6, 0.4]`.
    pub headroom: Vec<f64>,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            headroom: vec![1.0, 0.8, 0.6, 0.4],
        }
    }
}

/// `[providers.NAME]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Base URL of the OpenAI-compatible API, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Environment variable holding the provider's API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Models served by this provider, by the name clients use.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

/// What a model endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// `/v1/chat/completions`.
    #[default]
    Chat,
    /// `/v1/embeddings`.
    Embeddings,
}

/// `[providers.NAME.models."MODEL"]`: the provider's own limits and prices.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name sent upstream (default: the key of this table).
    #[serde(default)]
    pub upstream_name: Option<String>,
    /// `chat` (default) or `embeddings`.
    #[serde(default)]
    pub kind: ModelKind,
    /// Provider requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Provider tokens per minute (input + burndown × output).
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Provider input tokens per minute.
    #[serde(default)]
    pub input_tpm: Option<u64>,
    /// Provider output tokens per minute.
    #[serde(default)]
    pub output_tpm: Option<u64>,
    /// Output-token multiplier in `tpm` (AWS Bedrock: 5). Default 1.
    #[serde(default = "one")]
    pub burndown: f64,
    /// Burst factor of the provider bucket. Default 1.
    #[serde(default = "one")]
    pub burst: f64,
    /// USD per million input tokens. Default 0.
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    /// USD per million output tokens. Default 0.
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    /// Context window in tokens (input + output). Default 128000.
    #[serde(default = "default_context")]
    pub context_window: u64,
    /// Output estimate when a request gives no `max_tokens`. Default 1024.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Tokenizer: `o200k_base`, `cl100k_base` or `approx` (4 characters per
    /// token). Default: chosen from the model name.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Models (by the name clients use, of the same kind) to try in this
    /// order when this one fails before the first byte of its answer
    /// (connection error, timeout, 5xx, 429). Default none.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Floors of this model for some tiers (tier name → share of this
    /// model's limits), instead of their `floor`; only when the tiers share
    /// the provider buckets (see [`TierConfig::floor`]). Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub floors: BTreeMap<String, f64>,
}

fn one() -> f64 {
    1.0
}
fn default_context() -> u64 {
    128_000
}
fn default_max_tokens() -> u64 {
    1024
}

/// `[tiers.NAME]`: what a client of this tier may do.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute (input + output).
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Burst factor: the tier's bucket holds `burst × limit`. Default 1.
    #[serde(default = "one")]
    pub burst: f64,
    /// Priority class on provider buckets (0 = top). Default 0. When the
    /// tiers share the provider buckets by floor and weight, priority only
    /// orders borrowing: a tier whose own share is full borrows at once
    /// from the shares other tiers leave idle, up to `priority.headroom` of
    /// each lender's `lendable` part, so higher tiers borrow first and
    /// more.
    #[serde(default)]
    pub priority: u8,
    /// The share of every provider model's limits this tier is guaranteed
    /// whenever it has demand, in [0, 1] (a model's `floors` may override
    /// it). Setting `floor` or `weight` on any tier shares every provider
    /// model between the tiers: each tier gets a lane of `floor + weight /
    /// Σ weight × (1 − Σ floor)` of the model's limits, queues only in its
    /// own lane, and borrows at once what other lanes leave idle. The
    /// floors of all tiers sum to at most 1. Default 0 (when sharing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
    /// The tier's weight in the part of every provider model above the
    /// floors (> 0). Default 1 (when sharing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// The part of the tier's lane other tiers may borrow at once while it
    /// is idle, in [0, 1]; less keeps a reserve for the tier's own bursts
    /// (it then waits at most one emission interval for what was lent).
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lendable: Option<f64>,
    /// Longest a request may wait in a queue, milliseconds; beyond it, 429.
    /// Default 0 (never wait).
    #[serde(default)]
    pub max_wait_ms: u64,
    /// Daily budget in USD (UTC days). Default: none.
    #[serde(default)]
    pub daily_budget_usd: Option<f64>,
    /// Monthly budget in USD (UTC calendar months). Default: none.
    #[serde(default)]
    pub monthly_budget_usd: Option<f64>,
}

/// `[[clients]]`: one tenant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's id (used in metrics, logs and the admin API).
    pub id: String,
    /// The tier's name.
    pub tier: String,
    /// SHA-256 (hex) of each API key of this client (`tollgate hash-key KEY`).
    pub key_sha256: Vec<String>,
    /// Its own limits and budgets in place of its tier's (each field left
    /// out: the tier's).
    #[serde(default, skip_serializing_if = "super::LimitsConfig::is_empty")]
    pub limits: super::LimitsConfig,
}
