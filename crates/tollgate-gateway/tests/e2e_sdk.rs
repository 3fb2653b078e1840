//! The real OpenAI Python SDK (from PyPI, in a virtualenv under
//! `target/sdk-venv`) against the gateway: streamed and non-streamed calls,
//! embeddings, models, and our 401/400/404/429 seen as the SDK's exceptions.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn venv_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sdk-venv");
    let python = root.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import openai"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ready {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&root)
            .status()
            .expect("python3 on PATH")
            .success();
        assert!(ok, "python3 -m venv failed (install python3-venv)");
        let ok = Command::new(root.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "openai",
            ])
            .status()
            .expect("pip")
            .success();
        assert!(ok, "pip install openai failed (is PyPI reachable?)");
    }
    python
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
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("TOLLGATE_BASE_URL", gw.url())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("sdk ok"), "{stdout}");
    eprintln!("{stdout}");
}
