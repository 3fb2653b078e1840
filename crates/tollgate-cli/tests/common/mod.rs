//! Gateway processes (`tollgate serve`) for the ledger's proofs, with a
//! simulated upstream, a config of their own and their logs in a temporary
//! directory; killed when dropped.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_gateway::auth::hash_key;
use tollgate_gateway::config::{
    ClientConfig, Config, ModelConfig, ModelKind, ProviderConfig, TierConfig,
};

pub const ADMIN: &str = "admin-token";
/// Prices of the test model, USD per million tokens.
pub const INPUT_PRICE: f64 = 0.15;
pub const OUTPUT_PRICE: f64 = 0.6;

pub fn model(rpm: u64) -> ModelConfig {
    ModelConfig {
        upstream_name: None,
        kind: ModelKind::Chat,
        rpm: Some(rpm),
        tpm: Some(1_000_000_000),
        input_tpm: None,
        output_tpm: None,
        burndown: 1.0,
        burst: 1.0,
        input_usd_per_mtok: INPUT_PRICE,
        output_usd_per_mtok: OUTPUT_PRICE,
        context_window: 128_000,
        default_max_tokens: 64,
        tokenizer: Some("approx".into()),
        fallbacks: Vec::new(),
        floors: Default::default(),
    }
}

pub fn tier(rpm: u64, daily_budget_usd: Option<f64>) -> TierConfig {
    TierConfig {
        rpm: Some(rpm),
        tpm: Some(100_000_000),
        burst: 1.0,
        priority: 0,
        max_wait_ms: 0,
        daily_budget_usd,
        monthly_budget_usd: None,
        floor: None,
        weight: None,
        lendable: None,
    }
}

/// A config with the models `gpt-4o-mini` (at `sim_url`) and `broken` (a
/// closed port: every call fails), and one client per tier, its key
/// `key-<tier>`.
pub fn config(sim_url: &str, tiers: &[(&str, TierConfig)]) -> Config {
    let mut c = Config::default();
    c.admin.token_sha256 = Some(hash_key(ADMIN));
    c.providers.insert(
        "sim".into(),
        ProviderConfig {
            base_url: sim_url.to_string(),
            api_key_env: None,
            models: BTreeMap::from([("gpt-4o-mini".to_string(), model(10_000_000))]),
        },
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    c.providers.insert(
        "down".into(),
        ProviderConfig {
            base_url: format!("http://127.0.0.1:{closed}/v1"),
            api_key_env: None,
            models: BTreeMap::from([("broken".to_string(), model(10_000_000))]),
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

/// An HTTP client (rustls' provider installed first).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A temporary directory, removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(label: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("tollgate-{label}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `tollgate serve` process.
pub struct Gateway {
    child: Child,
    pub url: String,
    pub config_path: PathBuf,
    log: PathBuf,
}

impl Gateway {
    /// Writes `config` (listening on a free port) into `dir` as `name.toml`
    /// and starts the gateway on it; waits until it answers `/healthz`.
    pub async fn start(dir: &Path, name: &str, mut config: Config) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        config.server.listen = format!("127.0.0.1:{port}");
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        Gateway::start_file(&path, name).await
    }

    /// Starts a gateway on a config file written before.
    pub async fn start_file(path: &Path, name: &str) -> Gateway {
        let config = Config::load(path).expect("the test's config is valid");
        let log = path.with_file_name(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config"])
            .arg(path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("the tollgate binary runs");
        let url = format!("http://{}", config.server.listen);
        let gw = Gateway {
            child,
            url,
            config_path: path.to_path_buf(),
            log,
        };
        let c = client();
        let started = Instant::now();
        loop {
            if let Ok(r) = c.get(format!("{}/healthz", gw.url)).send().await {
                if r.status().is_success() {
                    return gw;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "gateway {name} did not start: {}",
                gw.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the process to end.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A chat request of `who` with at most `max_tokens` of output.
pub fn chat(model: &str, i: usize, max_tokens: u64) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("ledger request number {i}")}],
        "max_tokens": max_tokens,
    })
}

/// What one request got: status, its `x-request-id`, the usage answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub id: Option<String>,
    pub usage: Option<(u64, u64)>,
    pub at: Instant,
}

pub async fn send(c: &reqwest::Client, url: &str, who: &str, body: &serde_json::Value) -> Answer {
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(format!("key-{who}"))
        .json(body)
        .send()
        .await;
    let Ok(r) = r else {
        return Answer {
            status: 0,
            id: None,
            usage: None,
            at: Instant::now(),
        };
    };
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    let usage = v.get("usage").map(|u| {
        (
            u["prompt_tokens"].as_u64().unwrap_or(0),
            u["completion_tokens"].as_u64().unwrap_or(0),
        )
    });
    Answer {
        status,
        id,
        usage,
        at: Instant::now(),
    }
}

/// A simulated upstream that answers at once (1 ms, 4 tokens, no pauses):
/// the time until a key works is the registry's alone.
pub async fn instant_sim() -> tollgate_gateway::upstream_sim::SimUpstream {
    tollgate_gateway::upstream_sim::start(
        tollgate_gateway::upstream_sim::SimConfig {
            latency: Duration::from_millis(1),
            chunk_interval: Duration::ZERO,
            completion_tokens: 4,
            faults: Default::default(),
        },
        0,
    )
    .await
    .expect("simulated upstream")
}
