//! A fixed number of acquire + settle pairs on one Redis key from many
//! tasks: what the library costs its caller per pair, measured by counting
//! instructions rather than time (the machine may be shared).
//!
//! ```text
//! redis-server --port 6390 --save '' --appendonly no &
//! cargo build --release -p tollgate --example redis_pairs
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/p1 \
//!     target/release/examples/redis_pairs redis://127.0.0.1:6390 2000 64
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/p2 \
//!     target/release/examples/redis_pairs redis://127.0.0.1:6390 22000 64
//! ```
//!
//! Instructions per pair are the difference of the two runs' totals over
//! the difference of their pairs (start-up and connecting cancel out). It
//! prints the script calls Redis counted, so the batches the run made
//! (which depend on timing) are known beside the count.
//!
//! Arguments: the Redis URL, the number of pairs (default 10,000), the
//! number of tasks (default 64), and `acquire` to drop permits unsettled
//! (an acquire alone, as `tollgate-harness speed` times it).

use std::sync::Arc;
use std::time::Instant;

use tollgate::{Cost, Limits, RateLimiter};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let pairs: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let tasks: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let settle = args.next().as_deref() != Some("acquire");
    let key = format!("pairs-{}", std::process::id());
    let limiter = Arc::new(
        RateLimiter::new(
            &url,
            &key,
            Limits::new()
                .requests(1_000_000_000)
                .tokens(1_000_000_000_000),
        )
        .await?,
    );
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let before = evalsha_calls(&mut conn).await?;
    let started = Instant::now();
    let mut joins = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let limiter = limiter.clone();
        let count = pairs / tasks + usize::from(t < pairs % tasks);
        joins.push(tokio::spawn(async move {
            for _ in 0..count {
                let permit = limiter.acquire(Cost::tokens(10)).await?;
                if settle {
                    limiter.settle(permit, Cost::tokens(7)).await?;
                }
            }
            Ok::<_, tollgate::Error>(())
        }));
    }
    for j in joins {
        j.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let calls = evalsha_calls(&mut conn).await? - before;
    println!(
        "{pairs} {} from {tasks} tasks in {secs:.3} s ({:.0}/s), {calls} script calls ({:.3} per pair)",
        if settle { "pairs" } else { "acquires" },
        pairs as f64 / secs,
        calls as f64 / pairs as f64
    );
    Ok(())
}

/// `EVALSHA` calls Redis has counted (`INFO commandstats`).
async fn evalsha_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<u64, redis::RedisError> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}
