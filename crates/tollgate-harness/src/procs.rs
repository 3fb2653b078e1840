//! Processes the harness starts and always stops: redis-server (standalone,
//! TLS, Cluster), and the helpers around them. Everything binds to loopback,
//! lives in its own temporary directory and is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Finds a tool on `PATH`, or says how to get it.
pub fn require(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let package = match tool {
        "redis-server" => "redis-server",
        "redis-cli" | "redis-benchmark" => "redis-tools",
        "openssl" => "openssl",
        _ => tool,
    };
    bail!(
        "{tool} not found on PATH: install the Debian package {package} \
         (`apt-get install -y {package}`; scripts/test does this on fresh machines)"
    )
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough on loopback).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A fresh temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/tollgate-harness-<pid>-<n>-<label>`.
    pub fn new(label: &str) -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-harness-{}-{n}-{label}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TOLLGATE_HARNESS_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificates for a TLS-only Redis, made with the `openssl` CLI.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate (PEM), for 127.0.0.1 and localhost.
    pub cert: PathBuf,
    /// The server key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Generates a CA and a server certificate signed by it in `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        require("openssl")?;
        let p = |n: &str| dir.join(n);
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .context("running openssl")?;
            if !out.status.success() {
                bail!(
                    "openssl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )?;
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=tollgate-harness-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ])?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ])?;
        Ok(TlsFiles {
            ca: p("ca.crt"),
            cert: p("server.crt"),
            key: p("server.key"),
        })
    }
}

/// How to start one redis-server.
#[derive(Debug, Clone, Default)]
pub struct RedisSpec {
    /// Serve TLS only, with these files.
    pub tls: Option<TlsFiles>,
    /// Run as a Cluster node.
    pub cluster: bool,
}

/// A redis-server the harness started. Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    spec: RedisSpec,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a redis-server on a free port and waits until it answers PING.
    pub fn start(spec: RedisSpec) -> anyhow::Result<Self> {
        require("redis-server")?;
        require("redis-cli")?;
        let mut server = RedisServer {
            port: free_port()?,
            spec,
            dir: TempDir::new("redis")?,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path().to_string_lossy().to_string();
        let port = self.port.to_string();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.clone(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
            "--logfile".into(),
            format!("{dir}/redis.log"),
            "--enable-debug-command".into(),
            "yes".into(),
        ];
        match &self.spec.tls {
            Some(tls) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                tls.cert.to_string_lossy().into(),
                "--tls-key-file".into(),
                tls.key.to_string_lossy().into(),
                "--tls-ca-cert-file".into(),
                tls.ca.to_string_lossy().into(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
            None => args.extend(["--port".into(), port]),
        }
        if self.spec.cluster {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                format!("{dir}/nodes.conf"),
                "--cluster-node-timeout".into(),
                "2000".into(),
                "--cluster-require-full-coverage".into(),
                "no".into(),
            ]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .cli(&["PING"])
                .map(|r| r.trim() == "PONG")
                .unwrap_or(false)
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = std::fs::read_to_string(self.dir.path().join("redis.log"))
                        .unwrap_or_default();
                    bail!(
                        "redis-server exited at start ({status}): {}",
                        tail(&log, 800)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {} did not answer PING within 10 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL tollgate connects with (`redis://` or `rediss://`).
    pub fn url(&self) -> String {
        match self.spec.tls {
            Some(_) => format!("rediss://127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TLS files, for a TLS server.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.spec.tls.as_ref()
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.spec.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        if self.spec.cluster {
            cmd.arg("-c");
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli")?;
        if !out.status.success() {
            bail!(
                "redis-cli {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Kills the server (SIGKILL) and waits for it; state is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.signal_child(&c, libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing was saved).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            self.signal_child(c, libc::SIGSTOP);
        }
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            self.signal_child(c, libc::SIGCONT);
        }
    }

    fn signal_child(&self, child: &Child, sig: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: `kill` only sends a signal to our own child, whose pid is
            // valid until we `wait` for it (we hold the `Child`).
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three Cluster masters on loopback, slots spread by `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` cluster-enabled servers and joins them (no replicas).
    pub fn start(n: usize) -> anyhow::Result<Self> {
        let nodes = (0..n)
            .map(|_| {
                RedisServer::start(RedisSpec {
                    tls: None,
                    cluster: true,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(nodes.iter().map(|s| format!("127.0.0.1:{}", s.port)));
        args.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.nodes.iter().all(|n| {
            n.cli(&["CLUSTER", "INFO"])
                .map(|s| s.contains("cluster_state:ok"))
                .unwrap_or(false)
        }) {
            if Instant::now() > deadline {
                bail!("the cluster did not reach cluster_state:ok within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// The seed URL tollgate connects with.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Which node serves `key` (by `CLUSTER KEYSLOT` and `CLUSTER SLOTS`).
    pub fn node_of(&self, key: &str) -> anyhow::Result<usize> {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .context("parsing CLUSTER KEYSLOT")?;
        for (i, n) in self.nodes.iter().enumerate() {
            if owns_slot(&n.cli(&["CLUSTER", "NODES"])?, slot) {
                return Ok(i);
            }
        }
        bail!("no node owns slot {slot} of {key}")
    }
}

/// Whether the `myself` line of `CLUSTER NODES` lists `slot`.
fn owns_slot(nodes: &str, slot: u16) -> bool {
    let Some(line) = nodes.lines().find(|l| l.contains("myself")) else {
        return false;
    };
    line.split_whitespace().skip(8).any(|range| {
        let mut it = range.split('-');
        let lo = it.next().and_then(|s| s.parse::<u16>().ok());
        let hi = it.next().and_then(|s| s.parse::<u16>().ok()).or(lo);
        matches!((lo, hi), (Some(lo), Some(hi)) if lo <= slot && slot <= hi)
    })
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_from_cluster_nodes() {
        let nodes = "abc 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 6000\n";
        assert!(owns_slot(nodes, 0));
        assert!(owns_slot(nodes, 5460));
        assert!(owns_slot(nodes, 6000));
        assert!(!owns_slot(nodes, 5461));
    }

    #[test]
    fn missing_tool_says_what_to_install() {
        let e = require("redis-server-does-not-exist")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found on PATH"), "{e}");
    }
}
