//! The real OpenAI Python SDK, from PyPI, in a virtualenv under
//! `target/sdk-venv` (made on first use, reused after).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace's `target/`.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// The virtualenv's Python, with `openai` installed; made once per test
/// binary (its tests run at once).
pub fn venv_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_venv).clone()
}

fn make_venv() -> PathBuf {
    let root = target_dir().join("sdk-venv");
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

/// Runs `program script` against the gateway at `url` (in
/// `TOLLGATE_BASE_URL`); fails with its output unless it exits 0 and prints
/// `ok`. Returns its standard output.
pub async fn run_script(program: &Path, script: &Path, url: &str, ok: &str) -> String {
    let out = tokio::process::Command::new(program)
        .arg(script)
        .env("TOLLGATE_BASE_URL", url)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{stderr}",
        script.display()
    );
    assert!(stdout.contains(ok), "{stdout}");
    eprintln!("{stdout}");
    stdout
}

/// Runs `tests/python/NAME` with the virtualenv's Python against `url`
/// ([`run_script`], expecting `sdk ok`).
pub async fn run_python(name: &str, url: &str) -> String {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name);
    run_script(&python, &script, url, "sdk ok").await
}
