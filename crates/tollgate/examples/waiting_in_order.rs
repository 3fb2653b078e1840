//! Eight callers share a limit of 4 requests and 2,000 tokens per 2 seconds on
//! the embedded store: the first ones start at once, the others wait their turn
//! in arrival order, and a settlement gives unused tokens back.
//!
//! Run: `cargo run -p tollgate --example waiting_in_order`

use std::time::{Duration, Instant};

use tollgate::{Cost, Limits, RateLimiter};

#[tokio::main]
async fn main() -> Result<(), tollgate::Error> {
    let limits = Limits::new().requests(4).tokens(2_000).window_secs(2.0);
    let limiter = RateLimiter::memory("demo/gpt-4o", limits)?;
    println!("limit: 4 requests and 2000 tokens per 2 s; 8 callers of 400 tokens each\n");
    let start = Instant::now();
    let mut callers = Vec::new();
    for n in 1..=8u32 {
        let limiter = limiter.clone();
        callers.push(tokio::spawn(async move {
            let permit = limiter.acquire(Cost::split(300, 100)).await?;
            println!(
                "caller {n}: started at {:>5.2} s after waiting {:>4.2} s (queue position {})",
                start.elapsed().as_secs_f64(),
                permit.waited().as_secs_f64(),
                permit.queue_position()
            );
            tokio::time::sleep(Duration::from_millis(50)).await; // the "call"
                                                                 // It used fewer output tokens than estimated: settle gives them back.
            limiter.settle(permit, Cost::split(300, 20)).await?;
            Ok::<_, tollgate::Error>(())
        }));
        // Arrive one after another so the order is easy to see.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in callers {
        c.await.expect("caller task")?;
    }
    let status = limiter.status().await?;
    println!("\nafter settling:");
    for d in &status.dimensions {
        println!(
            "  {:<4} limit {:>5}  in use {:>7.1}  available {:>7.1}  full again in {:.2} s",
            d.dimension.to_string(),
            d.limit,
            d.in_use,
            d.available,
            d.full_in.as_secs_f64()
        );
    }
    match limiter.acquire(Cost::tokens(5_000)).await {
        Err(e) => println!("\na request that can never fit: {e}"),
        Ok(_) => unreachable!("5000 tokens cannot fit a 2000-token bucket"),
    }
    Ok(())
}
