//! The real OpenAI Python SDK (from PyPI, in a virtualenv under
//! `target/sdk-venv`) against the gateway: streamed and non-streamed calls,
//! embeddings, models, and our 401/400/404/429 seen as the SDK's exceptions.

mod common;
#[path = "common/sdk.rs"]
mod sdk;

use common::*;
use sdk::run_script;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_unchanged_and_sees_our_429s_as_rate_limit_errors() {
    let (_sim, gw, _) = start(
        model(1000, 1_000_000),
        &[("pro", pro_tier()), ("free", tier(2, 100_000, 3, 0))],
    )
    .await;
    let stdout = run_script("sdk_test.py", &gw.url()).await;
    eprintln!("{stdout}");
}
