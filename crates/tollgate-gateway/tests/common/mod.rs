//! Shared pieces of the end-to-end tests: a simulated upstream, a gateway on
//! loopback port 0, a small config, an HTTP client, and the requests and
//! checks the tests make again and again. No mocks: real servers.
#![allow(dead_code)]

pub mod redis;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{json, Value};
use tollgate_gateway::auth::hash_key;
use tollgate_gateway::config::{
    ClientConfig, Config, ModelConfig, ModelKind, ProviderConfig, TierConfig,
};
use tollgate_gateway::upstream_sim::{self, SimConfig, SimUpstream};
use tollgate_gateway::RunningGateway;

/// The provider key the gateway must send upstream (from this env variable).
pub const UPSTREAM_KEY_ENV: &str = "TOLLGATE_TEST_UPSTREAM_KEY";
pub const UPSTREAM_KEY: &str = "sk-upstream-secret";
pub const ADMIN: &str = "admin-token";

/// A simulated upstream that answers after 1 ms with 16 completion tokens,
/// streamed without pauses.
pub async fn sim() -> SimUpstream {
    sim_with(SimConfig {
        latency: Duration::from_millis(1),
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
        ..Default::default()
    })
    .await
}

/// A simulated upstream that behaves as `cfg` says.
pub async fn sim_with(cfg: SimConfig) -> SimUpstream {
    upstream_sim::start(cfg, 0)
        .await
        .expect("start simulated upstream")
}

/// A chat model limited to `rpm` and `tpm`, at $1/M tokens in and $2/M out,
/// with a 4096-token context.
pub fn model(rpm: u64, tpm: u64) -> ModelConfig {
    ModelConfig {
        upstream_name: None,
        kind: ModelKind::Chat,
        rpm: Some(rpm),
        tpm: Some(tpm),
        input_tpm: None,
        output_tpm: None,
        burndown: 1.0,
        burst: 1.0,
        input_usd_per_mtok: 1.0,
        output_usd_per_mtok: 2.0,
        context_window: 4096,
        default_max_tokens: 256,
        tokenizer: None,
        fallbacks: Vec::new(),
        floors: Default::default(),
    }
}

/// A tier with `burst` 1 and no budgets. `priority` is the class (0 first).
pub fn tier(rpm: u64, tpm: u64, priority: u8, max_wait_ms: u64) -> TierConfig {
    TierConfig {
        rpm: Some(rpm),
        tpm: Some(tpm),
        burst: 1.0,
        priority,
        max_wait_ms,
        daily_budget_usd: None,
        monthly_budget_usd: None,
        floor: None,
        weight: None,
        lendable: None,
    }
}

/// A config with one provider (the simulator) serving `gpt-4o-mini` and
/// `text-embedding-3-small`, and the given tiers; one client per tier named
/// after it, with key `key-TIER`.
pub fn config(sim_url: &str, chat_model: ModelConfig, tiers: &[(&str, TierConfig)]) -> Config {
    std::env::set_var(UPSTREAM_KEY_ENV, UPSTREAM_KEY);
    let mut embed = model(100_000, 10_000_000);
    embed.kind = ModelKind::Embeddings;
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.max_body_bytes = 64 * 1024;
    c.admin.token_sha256 = Some(hash_key(ADMIN));
    c.providers.insert(
        "sim".into(),
        ProviderConfig {
            base_url: sim_url.to_string(),
            api_key_env: Some(UPSTREAM_KEY_ENV.into()),
            models: BTreeMap::from([
                ("gpt-4o-mini".to_string(), chat_model),
                ("text-embedding-3-small".to_string(), embed),
            ]),
        },
    );
    for (name, t) in tiers {
        c.tiers.insert(name.to_string(), t.clone());
        c.clients.push(ClientConfig {
            id: name.to_string(),
            tier: name.to_string(),
            key_sha256: vec![hash_key(&format!("key-{name}"))],
            limits: Default::default(),
        });
    }
    c
}

/// The tier most tests give their client `pro`: 100 RPM, 100 000 TPM,
/// class 0, never waits.
pub fn pro_tier() -> TierConfig {
    tier(100, 100_000, 0, 0)
}

/// [`config`] with `model(100_000, 100_000_000)` and the limits and spend
/// kept in the store at `store_url`, so that gateways started from it
/// share them. The ledger and registry are each instance's own, in memory,
/// unless the test gives them a database ([`fresh_database`]).
pub fn shared_config(sim_url: &str, store_url: &str, tiers: &[(&str, TierConfig)]) -> Config {
    let mut c = config(sim_url, model(100_000, 100_000_000), tiers);
    c.store.url = store_url.to_string();
    c
}

/// A new SQLite file for a ledger and registry, in cargo's scratch folder
/// for integration tests.
pub fn fresh_database() -> String {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("registry-{}.sqlite", uuid::Uuid::now_v7()))
        .display()
        .to_string()
}

/// A gateway serving `config` on a free loopback port.
pub async fn gateway(config: Config) -> RunningGateway {
    tollgate_gateway::start(config)
        .await
        .expect("start gateway")
}

/// An HTTP client with room for many connections to one gateway.
pub fn http() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}

/// A simulated upstream ([`sim`]), a gateway in front of it serving
/// `chat_model` to one client per tier ([`config`]), and an HTTP client.
/// Keep the upstream in a variable: dropping it stops it.
pub async fn start(
    chat_model: ModelConfig,
    tiers: &[(&str, TierConfig)],
) -> (SimUpstream, RunningGateway, Client) {
    start_behind(sim().await, chat_model, tiers).await
}

/// [`start`] with an upstream of the caller's.
pub async fn start_behind(
    sim: SimUpstream,
    chat_model: ModelConfig,
    tiers: &[(&str, TierConfig)],
) -> (SimUpstream, RunningGateway, Client) {
    let gw = gateway(config(&sim.base_url(), chat_model, tiers)).await;
    (sim, gw, http())
}

/// Two gateways sharing the store at `store_url` ([`shared_config`]) and
/// one database ([`fresh_database`]) in
/// front of one simulated upstream, and an HTTP client. Keep the upstream in
/// a variable: dropping it stops it.
pub async fn two_instances(
    store_url: &str,
    tiers: &[(&str, TierConfig)],
) -> (SimUpstream, [RunningGateway; 2], Client) {
    let sim = sim().await;
    let mut config = shared_config(&sim.base_url(), store_url, tiers);
    config.ledger.url = fresh_database();
    let a = gateway(config.clone()).await;
    let b = gateway(config).await;
    (sim, [a, b], http())
}

/// How many requests reached the simulated upstream.
pub fn upstream_requests(sim: &SimUpstream) -> u64 {
    sim.stats.requests.load(Ordering::Relaxed)
}

/// A chat request for `gpt-4o-mini` with one user message.
pub fn chat_body(content: &str, max_tokens: u64) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

/// Sends a request the gateway must answer (with any status).
pub async fn send(req: RequestBuilder) -> Response {
    req.send().await.expect("gateway reachable")
}

/// GETs `path` with no key.
pub async fn get(c: &Client, gw: &RunningGateway, path: &str) -> Response {
    send(c.get(format!("{}{path}", gw.url()))).await
}

/// POSTs a chat request as client `who`.
pub async fn chat(c: &Client, gw: &RunningGateway, who: &str, body: &Value) -> Response {
    chat_at(c, &gw.url(), who, body).await
}

/// [`chat`] to the gateway at `url`, for tasks that cannot borrow the gateway.
pub async fn chat_at(c: &Client, url: &str, who: &str, body: &Value) -> Response {
    send(
        c.post(format!("{url}/v1/chat/completions"))
            .bearer_auth(format!("key-{who}"))
            .json(body),
    )
    .await
}

/// Sends `n` chat requests as `who`, one after another, to each of `gws` in
/// turn; returns their statuses in order.
pub async fn chat_alternating(
    c: &Client,
    gws: &[&RunningGateway],
    n: usize,
    who: &str,
    body: &Value,
) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for i in 0..n {
        let gw = gws[i % gws.len()];
        statuses.push(chat(c, gw, who, body).await.status().as_u16());
    }
    statuses
}

/// How many of `statuses` are `status`.
pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Starts `n` tasks at once, the `i`-th running `task(i)`, and waits for all
/// of them; returns their results in the order started.
pub async fn spawn_all<T, F>(n: usize, mut task: impl FnMut(usize) -> F) -> Vec<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(task(i))).collect();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.expect("task ran to the end"));
    }
    results
}

/// A request to the admin API, with the admin token.
pub fn admin(c: &Client, gw: &RunningGateway, method: Method, path: &str) -> RequestBuilder {
    c.request(method, format!("{}{path}", gw.url()))
        .bearer_auth(ADMIN)
}

/// The JSON body of an admin GET.
pub async fn admin_json(c: &Client, gw: &RunningGateway, path: &str) -> Value {
    send(admin(c, gw, Method::GET, path))
        .await
        .json()
        .await
        .expect("JSON body")
}

/// `PUT /admin/clients/CLIENT/tier`: moves a client to another tier.
pub async fn set_client_tier(
    c: &Client,
    gw: &RunningGateway,
    client: &str,
    tier: &str,
) -> Response {
    let path = format!("/admin/clients/{client}/tier");
    send(admin(c, gw, Method::PUT, &path).json(&json!({ "tier": tier }))).await
}

/// `PATCH /admin/tiers/TIER`: changes a tier's limits.
pub async fn patch_tier(c: &Client, gw: &RunningGateway, tier: &str, changes: &Value) -> Response {
    let path = format!("/admin/tiers/{tier}");
    send(admin(c, gw, Method::PATCH, &path).json(changes)).await
}

/// A header's value, if it is there and readable.
pub fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A header that must be there and hold a whole number (`retry-after`, ...).
pub fn header_u64(r: &Response, name: &str) -> u64 {
    let v = header(r, name).unwrap_or_else(|| panic!("no {name} header"));
    v.parse()
        .unwrap_or_else(|_| panic!("{name}: {v} is not a whole number"))
}

/// The RPM limit (`x-ratelimit-limit-requests`) `gw` reports to `who` on the
/// answer to a small chat request.
pub async fn rpm_limit(c: &Client, gw: &RunningGateway, who: &str) -> Option<String> {
    let r = chat(c, gw, who, &chat_body("hi", 5)).await;
    header(&r, "x-ratelimit-limit-requests").map(String::from)
}

/// Sends `who`'s small chat requests to `gw` until they carry an RPM limit
/// of `want`; fails once `within` has passed since `since`.
pub async fn await_rpm_limit(
    c: &Client,
    gw: &RunningGateway,
    who: &str,
    want: &str,
    since: Instant,
    within: Duration,
) {
    loop {
        let seen = rpm_limit(c, gw, who).await;
        if seen.as_deref() == Some(want) {
            return;
        }
        assert!(
            since.elapsed() < within,
            "{} still sees an RPM limit of {seen:?}, not {want}, {within:?} after the change",
            gw.url()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `read()` up to `tries` times, `every` apart, until `done` holds of
/// what it returns; returns the last value read. For what the gateway
/// settles after it has answered.
pub async fn poll<T, F>(
    tries: usize,
    every: Duration,
    mut read: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: Future<Output = T>,
{
    let mut value = read().await;
    for _ in 1..tries {
        if done(&value) {
            break;
        }
        tokio::time::sleep(every).await;
        value = read().await;
    }
    value
}

/// The error object of an OpenAI-shaped error body.
pub async fn error_of(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("JSON error body");
    let e = v
        .get("error")
        .cloned()
        .expect("OpenAI error shape {\"error\": {...}}");
    for k in ["message", "type", "code"] {
        assert!(e.get(k).is_some(), "error lacks {k}: {e}");
    }
    (status, e)
}

/// Checks that `r` is an OpenAI-shaped error with this status and
/// `error.code`; returns the error object.
pub async fn expect_error(r: Response, status: u16, code: &str) -> Value {
    let (got, e) = error_of(r).await;
    assert_eq!((got, e["code"].as_str()), (status, Some(code)), "{e}");
    e
}

/// Today's spend of a client in USD.
pub async fn spend(gw: &RunningGateway, client: &str) -> f64 {
    let s = gw.gateway.budgets.spend(client).await.expect("spend");
    tollgate_gateway::budget::nano_to_usd(s.today)
}

/// A client's spend once `done` holds of it (settlements follow the
/// answer), read every 25 ms for up to a second; the last value read.
pub async fn settled_spend(gw: &RunningGateway, client: &str, done: impl Fn(f64) -> bool) -> f64 {
    poll(
        40,
        Duration::from_millis(25),
        || spend(gw, client),
        |s| done(*s),
    )
    .await
}

/// Units of a client's bucket in use, per dimension (requests, tokens).
pub async fn client_in_use(gw: &RunningGateway, client: &str) -> (f64, f64) {
    let reg = gw.gateway.registry();
    let st = reg
        .client(client)
        .expect("a client")
        .limiter()
        .status()
        .await
        .expect("status");
    let get = |d| st.dimension(d).map(|s| s.in_use).unwrap_or(0.0);
    (
        get(tollgate::Dimension::Requests),
        get(tollgate::Dimension::Tokens),
    )
}

/// Units of a model's provider bucket in use (requests, tokens); the test
/// models limit both.
pub async fn model_in_use(gw: &RunningGateway, model: &str) -> (f64, f64) {
    let st = gw.gateway.models[model]
        .limiter
        .status()
        .await
        .expect("status");
    let get = |d| {
        st.dimension(d)
            .unwrap_or_else(|| panic!("model {model} limits {d:?}"))
            .in_use
    };
    (
        get(tollgate::Dimension::Requests),
        get(tollgate::Dimension::Tokens),
    )
}
