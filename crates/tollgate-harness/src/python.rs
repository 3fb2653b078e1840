//! The Python side: a virtualenv with `llmratelimiter` from PyPI, and the
//! worker and speed scripts that drive it.
//!
//! The virtualenv lives in `<target>/harness/venv` (or `TOLLGATE_HARNESS_VENV`).
//! It is made with Python ≥ 3.12 (what the library's current release needs):
//! `TOLLGATE_HARNESS_PYTHON`, else pyenv's 3.12, else `python3.12` / `python3`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The version of `llmratelimiter` the figures were measured with.
pub const LLMRATELIMITER: &str = "llmratelimiter==0.3.2";

const WORKER: &str = include_str!("../py/worker.py");
const SPEED: &str = include_str!("../py/speed.py");

/// A ready Python environment.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    /// The virtualenv's interpreter.
    pub python: PathBuf,
    /// The load worker script.
    pub worker: PathBuf,
    /// The speed script.
    pub speed: PathBuf,
}

fn harness_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TOLLGATE_HARNESS_VENV") {
        let dir = PathBuf::from(dir);
        return Ok(dir.parent().map(Path::to_path_buf).unwrap_or(dir));
    }
    // <target>/<profile>/tollgate-harness → <target>/harness
    let exe = crate::fleet::harness_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?;
    let target = if target.ends_with("deps") {
        target.parent().unwrap_or(target)
    } else {
        target
    };
    Ok(target.join("harness"))
}

fn base_python() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TOLLGATE_HARNESS_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let pyenv = PathBuf::from("/root/.pyenv/versions/3.12.1/bin/python3");
    if pyenv.is_file() {
        return Ok(pyenv);
    }
    for name in ["python3.13", "python3.12", "python3"] {
        if let Ok(p) = crate::procs::require(name) {
            let ok = Command::new(&p)
                .args([
                    "-c",
                    "import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(p);
            }
        }
    }
    bail!(
        "no Python >= 3.12 found (llmratelimiter needs it): set TOLLGATE_HARNESS_PYTHON \
         to its interpreter, or install one with pyenv"
    )
}

/// Makes (once) the virtualenv with `llmratelimiter` and writes the scripts.
pub fn ensure() -> anyhow::Result<PythonEnv> {
    let dir = harness_dir()?;
    let venv = std::env::var_os("TOLLGATE_HARNESS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("venv"));
    let python = venv.join("bin").join("python");
    let ready = python.is_file()
        && Command::new(&python)
            .args(["-c", "import llmratelimiter"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ready {
        std::fs::create_dir_all(&dir)?;
        eprintln!("creating {} with {LLMRATELIMITER} ...", venv.display());
        let base = base_python()?;
        let ok = Command::new(&base)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("running python -m venv")?;
        if !ok.success() {
            bail!("{} -m venv {} failed", base.display(), venv.display());
        }
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "-q", LLMRATELIMITER])
            .status()
            .context("running pip install")?;
        if !ok.success() {
            bail!("pip install {LLMRATELIMITER} failed (is PyPI reachable?)");
        }
    }
    let worker = dir.join("worker.py");
    let speed = dir.join("speed.py");
    std::fs::write(&worker, WORKER)?;
    std::fs::write(&speed, SPEED)?;
    Ok(PythonEnv {
        python,
        worker,
        speed,
    })
}
