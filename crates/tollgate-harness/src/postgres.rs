//! A PostgreSQL server of the harness's own: `initdb` into a temporary
//! directory, `pg_ctl` on a free loopback port (its socket in that directory
//! too), stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root. When this process is root (CI and the
//! developers' machines), the server runs as the `postgres` system user that
//! Debian's `postgresql` package creates, through `runuser`; the temporary
//! directory is handed to that user. Otherwise it runs as this user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::procs::{free_port, TempDir};

/// The system user the server runs as when this process is root.
const SERVER_USER: &str = "postgres";

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct PostgresServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    data: PathBuf,
    as_user: Option<&'static str>,
    durable: bool,
    running: bool,
}

/// The folder of `initdb` and `pg_ctl`: on `PATH`, or Debian's
/// `/usr/lib/postgresql/VERSION/bin` (the newest).
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(p) = crate::procs::require("pg_ctl") {
        if let Some(dir) = p.parent() {
            if dir.join("initdb").is_file() {
                return Ok(dir.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL's initdb and pg_ctl not found: install the Debian package postgresql \
             (`apt-get install -y postgresql`; scripts/test does this on fresh machines)"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

impl PostgresServer {
    /// Starts a server with the defaults of a real deployment (fsync on).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// Starts a server; `durable = false` turns fsync off (tests that only
    /// need a server, not its durability, run faster).
    pub fn start_with(durable: bool) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = TempDir::new("postgres")?;
        let data = dir.path().join("data");
        let as_user = is_root().then_some(SERVER_USER);
        if let Some(user) = as_user {
            let ok = Command::new("chown")
                .args([&format!("{user}:"), &dir.path().display().to_string()])
                .status()
                .context("chown")?
                .success();
            if !ok {
                bail!(
                    "cannot hand {} to the {user} user (PostgreSQL refuses to run as root): \
                     is the Debian package postgresql installed?",
                    dir.path().display()
                );
            }
        }
        let mut server = PostgresServer {
            port: free_port()?,
            bin,
            dir,
            data,
            as_user,
            durable,
            running: false,
        };
        let data = server.data.display().to_string();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "tollgate",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        server.start_again()?;
        Ok(server)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server again on the same port and data (after
    /// [`PostgresServer::stop`]); waits until it takes connections.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let data = self.data.display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        let fsync = if self.durable { "on" } else { "off" };
        let opts = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync={fsync} -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast shutdown: connections are closed, committed
    /// data stays).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])?;
        self.running = false;
        Ok(())
    }

    /// `postgres://tollgate@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://tollgate@127.0.0.1:{}/postgres", self.port)
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data.display().to_string();
            let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
    }
}
