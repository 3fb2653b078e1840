//! Real `redis-server` processes for tests: each on its own free loopback port
//! and temporary directory, killed when dropped.
//!
//! ```ignore
//! mod support;
//! let server = support::RedisServer::start();
//! let store = tollgate::Store::redis(&server.url()).await.unwrap();
//! server.cli(&["SCRIPT", "FLUSH"]);
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MISSING: &str = "redis-server was not found on PATH. The Redis tests need real \
    redis-server and redis-cli binaries: run scripts/test (it installs the Debian package \
    redis-server when it is missing), or `sudo apt-get install redis-server`.";

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One `redis-server` process.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server on a free port: no persistence, loopback only.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server with extra `redis-server` arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::launch(extra, false, false)
    }

    /// A TLS-only server (`--port 0 --tls-port P`) with the given files.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let files = [cert, key, ca].map(|p| p.display().to_string());
        let args = [
            "--tls-cert-file",
            &files[0],
            "--tls-key-file",
            &files[1],
            "--tls-ca-cert-file",
            &files[2],
            "--tls-auth-clients",
            "no",
        ];
        Self::launch(&args, true, false)
    }

    /// A Cluster-enabled node (not yet part of a cluster).
    pub(crate) fn start_cluster_node() -> RedisServer {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        Self::launch(&args, false, true)
    }

    fn launch(extra: &[&str], tls: bool, cluster: bool) -> RedisServer {
        let mut last_error = String::new();
        // A free port may be taken by someone else before the server binds it: retry.
        for _ in 0..5 {
            let port = free_port(cluster);
            let mut server = RedisServer {
                port,
                dir: temp_dir(port),
                args: extra.iter().map(|s| s.to_string()).collect(),
                tls,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("temp dir: {e}"))?;
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{MISSING}"),
            Err(e) => return Err(format!("spawn: {e}")),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("exited with {status}: {}", self.log_tail()));
            }
            if self.ready() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!(
            "no answer within {START_TIMEOUT:?}: {}",
            self.log_tail()
        ))
    }

    /// Whether the server accepts connections and answers PING (`+PONG`, or
    /// `-NOAUTH` with a password) unless TLS.
    fn ready(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        if self.tls {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        stream.write_all(b"PING\r\n").is_ok()
            && matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty (nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Pauses the process (SIGSTOP): it keeps its connections but answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status();
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    /// Not for TLS servers.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p <port> <args>` and returns its standard output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("redis-cli: {e}. {MISSING}"));
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A three-master Redis Cluster on loopback ports, torn down when dropped.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes, joins them with `redis-cli --cluster create`
    /// (no replicas) and waits for `cluster_state:ok` on every node.
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_cluster_node())
            .collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        nodes[0].cli(&args);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster never reached cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://host:port,host:port,…`
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(RedisServer::addr).collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// Index of the node that holds `redis_key` (which must exist): the one
    /// counting keys in its slot.
    pub fn node_holding(&self, redis_key: &str) -> Option<usize> {
        let slot = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", redis_key]);
        let slot = slot.trim();
        self.nodes.iter().position(|n| {
            n.cli(&["CLUSTER", "COUNTKEYSINSLOT", slot])
                .trim()
                .parse::<u64>()
                .is_ok_and(|c| c > 0)
        })
    }
}

fn temp_dir(port: u16) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "tollgate-redis-{}-{}-{port}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A loopback port nobody listens on. Cluster nodes also need `port + 10000`
/// (the cluster bus), so they draw from 20000..30000.
fn free_port(cluster: bool) -> u16 {
    let bindable = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
    if !cluster {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
        return l.local_addr().expect("local address").port();
    }
    for _ in 0..200 {
        let p = 20000 + (rand_u32() % 10000) as u16;
        if bindable(p) && bindable(p + 10000) {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}
