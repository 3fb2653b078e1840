//! The real OpenAI SDKs against the gateway: Python's (from PyPI, in a
//! virtualenv under `target/sdk-venv`) on the test configuration, streamed
//! and non-streamed calls, embeddings, models, and our 401/400/404/429 seen
//! as the SDK's exceptions; then Python's and Node's (npm package `openai`,
//! installed under `target/sdk-node`) against the demo, on their usual
//! paths, embeddings in their default (base64) encoding; Python's with
//! `model="auto"` (routed by the demo's routes), streamed and not.

mod common;
#[path = "common/sdk.rs"]
mod sdk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use sdk::{run_script, target_dir, venv_python};

/// The folder with `node_modules/openai`, installed once when missing.
fn node_sdk() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir().join("sdk-node");
        if !dir.join("node_modules/openai/package.json").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let ok = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(&dir)
                .arg("openai")
                .status()
                .expect("npm on PATH (Node.js)")
                .success();
            assert!(
                ok,
                "npm install openai failed (is the npm registry reachable?)"
            );
        }
        dir
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_unchanged_and_sees_our_429s_as_rate_limit_errors() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let (_sim, gw, _) = start(
        model(1000, 1_000_000),
        &[("pro", pro_tier()), ("free", tier(2, 100_000, 3, 0))],
    )
    .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_test.py");
    run_script(&python, &script, &gw.url(), "sdk ok").await;
}

/// The demo: its configuration in front of its simulated upstream, as
/// `tollgate serve --demo` starts them (on a free port).
async fn demo() -> (
    tollgate_gateway::upstream_sim::SimUpstream,
    tollgate_gateway::RunningGateway,
) {
    let sim = tollgate_gateway::upstream_sim::start(Default::default(), 0)
        .await
        .expect("simulated upstream");
    let config = tollgate_gateway::demo::config("127.0.0.1:0", &sim.base_url());
    (sim, gateway(config).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_on_its_usual_paths_against_the_demo() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let (_sim, gw) = demo().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/demo_test.py");
    run_script(&python, &script, &gw.url(), "python demo ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_on_its_usual_paths_against_the_demo() {
    let dir = tokio::task::spawn_blocking(node_sdk).await.unwrap();
    let (_sim, gw) = demo().await;
    // Node resolves `openai` from the script's folder: run a copy there.
    let script = dir.join("sdk_test.mjs");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/sdk_test.mjs"),
        &script,
    )
    .unwrap();
    run_script(Path::new("node"), &script, &gw.url(), "node demo ok").await;
}
