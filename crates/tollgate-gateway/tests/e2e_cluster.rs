//! Two gateway instances on a 3-master Redis Cluster (`redis+cluster://`,
//! started here on free loopback ports): limits, budgets, spend and live
//! changes all work across slots, because every multi-key step keeps its
//! keys under one hash tag.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Three cluster masters of our own, killed on drop.
struct Cluster {
    nodes: Vec<(Child, u16, std::path::PathBuf)>,
}

/// A free loopback port whose cluster bus port (`+ 10000`) is free too.
fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    fn start() -> Cluster {
        // Each node joins `cluster` as soon as it runs, so that a start that
        // fails below (a node that never answers, a cluster that never forms)
        // still stops every node it started.
        let mut cluster = Cluster { nodes: Vec::new() };
        for i in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "tollgate-gw-cluster-{}-{port}-{i}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (scripts/test installs it)");
            cluster.nodes.push((child, port, dir));
        }
        for (_, port, _) in &cluster.nodes {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cli(*port, &["PING"]).contains("PONG") {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(_, p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(cluster.nodes[0].1, &args);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .nodes
            .iter()
            .all(|(_, p, _)| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster never formed");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|(_, p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (child, _, dir) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_limits_budgets_and_live_changes_on_a_redis_cluster() {
    let cluster = Cluster::start();
    let mut budgeted = tier(1_000_000, 100_000_000, 0, 0);
    budgeted.daily_budget_usd = Some(0.001);
    let tiers = [("small", tier(10, 1_000_000, 0, 0)), ("acme", budgeted)];
    let (_sim, [a, b], c) = two_instances(&cluster.url(), &tiers).await;
    // The client's RPM holds across both instances.
    let statuses = chat_alternating(&c, &[&a, &b], 14, "small", &chat_body("hi", 5)).await;
    assert_eq!(count(&statuses, 200), 10, "10 RPM across both instances");
    // The budget (a script over two keys under one hash tag) holds too:
    // each request is estimated at $0.000209 and uses $0.000041.
    let statuses =
        chat_alternating(&c, &[&a, &b], 40, "acme", &chat_body("hello world", 100)).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "unexpected status: {statuses:?}"
    );
    let ok = count(&statuses, 200);
    // Settlements run after the answer: give the last one a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (sa, sb) = (spend(&a, "acme").await, spend(&b, "acme").await);
    assert!(ok >= 4, "{ok} admitted");
    assert!(sa <= 0.001 + 1e-12, "spent {sa} of 0.001");
    assert!(
        (sa - ok as f64 * 0.000041).abs() < 1e-9 && (sa - sb).abs() < 1e-12,
        "spend is the actual usage, the same on both: {sa} / {sb}, {ok} ok"
    );
    // A live change (a transaction over two keys under one hash tag) made
    // on one instance reaches the other.
    let r = patch_tier(&c, &a, "small", &json!({"rpm": 700})).await;
    assert_eq!(r.status(), 200);
    let changed = Instant::now();
    await_rpm_limit(&c, &b, "small", "700", changed, Duration::from_secs(2)).await;
}
