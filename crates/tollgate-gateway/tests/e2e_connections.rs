//! Connection limits on loopback, bounded: a slowloris crowd (connections
//! that send nothing, half their headers or half their body) is closed
//! within the timeouts while normal requests are served throughout and the
//! memory stays bounded; past `max_connections` a connection gets 503 with
//! `Retry-After`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resident memory of this process (gateway included), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Opens a connection, writes `first`, then reads until the gateway closes
/// it; returns how long that took and what it answered.
async fn hold(addr: std::net::SocketAddr, first: &'static [u8]) -> (Duration, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    if !first.is_empty() {
        s.write_all(first).await.unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: a connection still open after 20 s fails the test below.
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

/// One client tier `pro` in front of `sim_url`, with every connection
/// timeout at 1 s.
fn one_second_timeouts(sim_url: &str) -> tollgate_gateway::Config {
    let mut config = common::config(
        sim_url,
        model(100_000, 100_000_000),
        &[("pro", tier(1_000_000, 100_000_000, 0, 0))],
    );
    config.server.idle_timeout_secs = 1.0;
    config.server.header_read_timeout_secs = 1.0;
    config.server.body_read_timeout_secs = 1.0;
    config
}

const HALF_HEAD: &[u8] =
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer key-pro\r\nContent-";
const HALF_BODY: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer key-pro\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\": \"gpt-";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_crowd_is_closed_within_the_timeouts_while_requests_are_served() {
    let sim = sim().await;
    let mut config = one_second_timeouts(&sim.base_url());
    config.server.max_connections = 1_000;
    let gw = gateway(config).await;
    let c = http();
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("warm up", 5))
            .await
            .status(),
        200
    );
    let rss_before = rss_kib();
    let addr = gw.addr;
    let mut crowd = Vec::new();
    for i in 0..600 {
        let first: &'static [u8] = match i % 3 {
            0 => b"",
            1 => HALF_HEAD,
            _ => HALF_BODY,
        };
        crowd.push((i % 3, tokio::spawn(hold(addr, first))));
    }
    // Normal requests, throughout.
    let until = Instant::now() + Duration::from_millis(2_500);
    let mut served = 0;
    while Instant::now() < until {
        let r = chat(&c, &gw, "pro", &chat_body("hello", 5)).await;
        assert_eq!(r.status(), 200, "a normal request during the crowd");
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_during = rss_kib();
    for (kind, task) in crowd {
        let (held, answer) = task.await.unwrap();
        assert!(
            held < Duration::from_secs(4),
            "kind {kind}: closed after {held:?}, timeouts are 1 s"
        );
        assert!(
            held >= Duration::from_millis(900),
            "kind {kind}: closed after {held:?}, before its timeout"
        );
        match kind {
            // A half-sent body gets its 408 before the close.
            2 => assert!(answer.starts_with("HTTP/1.1 408"), "{answer}"),
            _ => assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "{answer}"
            ),
        }
    }
    assert!(served >= 10, "{served}");
    assert!(
        rss_during < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB for 600 connections"
    );
    let stats = &gw.gateway.connections;
    assert!(stats.timed_out.load(std::sync::atomic::Ordering::Relaxed) >= 400);
    let open = poll(
        50,
        Duration::from_millis(20),
        || async { stats.open.load(std::sync::atomic::Ordering::Relaxed) },
        |n| *n <= 2,
    )
    .await;
    assert!(open <= 2, "{open} connections still open");
}

#[tokio::test]
async fn past_max_connections_a_connection_gets_503_with_retry_after() {
    let sim = sim().await;
    let mut config = common::config(
        &sim.base_url(),
        model(100_000, 100_000_000),
        &[("pro", pro_tier())],
    );
    config.server.max_connections = 20;
    let gw = gateway(config).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // Accepted by now (the gateway answers in order).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = reqwest::Client::new();
    let r = chat(&fresh, &gw, "pro", &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header_u64(&r, "retry-after"), 1);
    assert!(header(&r, "x-request-id").is_some());
    expect_error(r, 503, "too_many_connections").await;
    drop(idle);
    let status = poll(
        50,
        Duration::from_millis(20),
        || async {
            chat(&reqwest::Client::new(), &gw, "pro", &chat_body("hi", 5))
                .await
                .status()
        },
        |s| *s == 200,
    )
    .await;
    assert_eq!(status, 200, "served again once the idle connections left");
}

/// The admin API takes a body too: one without the admin token is refused
/// before its body is read, and one with the token that sends half its body
/// gets its 408 within the body-read timeout, as the proxied paths do; so
/// neither can hold connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_with_half_a_body_are_closed_within_the_timeouts() {
    let sim = sim().await;
    let config = one_second_timeouts(&sim.base_url());
    let gw = gateway(config).await;
    const NO_TOKEN: &[u8] = b"PATCH /admin/tiers/pro HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"rpm\": ";
    let with_token: &'static [u8] = Box::leak(
        format!("PATCH /admin/tiers/pro HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"rpm\": ")
            .into_bytes()
            .into_boxed_slice(),
    );
    let (no_token, with_token) = tokio::join!(hold(gw.addr, NO_TOKEN), hold(gw.addr, with_token));
    let (held, answer) = no_token;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(held < Duration::from_secs(4), "closed after {held:?}");
    let (held, answer) = with_token;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        held < Duration::from_secs(4),
        "closed after {held:?}, timeouts are 1 s"
    );
}
