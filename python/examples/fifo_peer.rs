//! A Rust process on a tollgate key, for the Python tests that check that
//! Rust and Python callers share one FIFO queue.
//!
//! `fifo_peer <url> <key> <rpm> <window secs>`; then, on stdin, one line per
//! request: `acquire <label>` starts an acquire of one request (it queues at
//! once), `quit` ends. Each granted request prints `<label> <slot> <queue
//! position>`; an error prints `error <label> <message>`.

use std::io::BufRead;

use tollgate::{Cost, Limits, RateLimiter};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, key, rpm, window] = &args[..] else {
        eprintln!("usage: fifo_peer <url> <key> <rpm> <window secs>");
        std::process::exit(2);
    };
    let (Ok(rpm), Ok(window)) = (rpm.parse::<u64>(), window.parse::<f64>()) else {
        eprintln!("fifo_peer: rpm must be an integer and window a number of seconds");
        std::process::exit(2);
    };
    let limits = Limits::new().rpm(rpm).window_secs(window);
    let limiter = match RateLimiter::new(url, key, limits).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fifo_peer: {e}");
            std::process::exit(1);
        }
    };
    println!("ready");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut tasks = Vec::new();
    while let Some(line) = rx.recv().await {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["acquire", label] => {
                let (limiter, label) = (limiter.clone(), label.to_string());
                tasks.push(tokio::spawn(async move {
                    match limiter.acquire(Cost::request_only()).await {
                        Ok(p) => {
                            println!("{label} {} {}", p.slot(), p.queue_position());
                            let _ = limiter.settle(p, Cost::request_only()).await;
                        }
                        Err(e) => println!("error {label} {e}"),
                    }
                }));
            }
            ["quit"] => break,
            _ => println!("error - unknown command {line:?}"),
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}
