//! A `redis-server` of the test's own on a free loopback port, killed on
//! drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of our own, killed on drop.
pub struct Redis {
    child: Child,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
}

impl Redis {
    /// Starts one and waits until it accepts connections.
    pub async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = spawn(port).await;
        let url = format!("redis://127.0.0.1:{port}");
        Redis { child, url }
    }

    /// Stops the server and starts a new, empty one on the same port (no
    /// persistence: everything it held is gone).
    pub async fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        self.child = spawn(port).await;
    }
}

/// `redis-server` on `port`, without persistence, once it accepts
/// connections.
async fn spawn(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/test installs it)");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT): it runs what queued meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill on PATH")
            .success();
        assert!(ok, "kill {sig} redis-server");
    }
}

impl Redis {
    /// A connection of the test's own, to read or seed keys directly.
    pub async fn connection(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's redis-server")
    }

    /// `INFO section`.
    pub async fn info(&self, section: &str) -> String {
        let mut conn = self.connection().await;
        ::redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// `SET key value`.
    pub async fn set(&self, key: &str, value: &str) {
        let mut conn = self.connection().await;
        ::redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }

    /// `GET key`.
    pub async fn get(&self, key: &str) -> Option<String> {
        let mut conn = self.connection().await;
        ::redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// `DEL key`.
    pub async fn del(&self, key: &str) {
        let mut conn = self.connection().await;
        ::redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}
