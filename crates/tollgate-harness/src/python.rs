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

/// The Python package of this repository (`python/`).
const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python");

/// Builds tollgate for Python (`python/`, release, with maturin) and installs
/// it into the harness's virtualenv, so that the speed run measures today's
/// code beside `llmratelimiter`. maturin's build is incremental: a few
/// seconds when nothing changed.
pub fn ensure_tollgate(env: &PythonEnv) -> anyhow::Result<()> {
    let has_maturin = Command::new(&env.python)
        .args(["-c", "import maturin"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_maturin {
        let ok = Command::new(&env.python)
            .args(["-m", "pip", "install", "-q", "maturin>=1.5,<2"])
            .status()
            .context("running pip install maturin")?;
        if !ok.success() {
            bail!("pip install maturin failed (is PyPI reachable?)");
        }
    }
    let wheels = harness_dir()?.join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    eprintln!("building tollgate for Python (release) ...");
    let ok = Command::new(&env.python)
        .args([
            "-m",
            "maturin",
            "build",
            "--quiet",
            "--release",
            "--manifest-path",
        ])
        .arg(Path::new(PACKAGE).join("Cargo.toml"))
        .arg("--out")
        .arg(&wheels)
        .env("PYO3_PYTHON", &env.python)
        .status()
        .context("running maturin build")?;
    if !ok.success() {
        bail!("maturin build of {PACKAGE} failed");
    }
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("maturin built no wheel")?;
    let ok = Command::new(&env.python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--force-reinstall",
            "--no-deps",
        ])
        .arg(&wheel)
        .status()
        .context("running pip install of the tollgate wheel")?;
    if !ok.success() {
        bail!("pip install {} failed", wheel.display());
    }
    Ok(())
}
