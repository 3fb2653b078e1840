//! Spend settlements on a real `redis-server` travel together: those of many
//! clients finishing at once go as one or two script calls, and each is
//! applied exactly once — also when Redis is paused (SIGSTOP) while their
//! call is on its way, so that it times out and is retried, and then
//! resumed (SIGCONT) and runs the call and every retry queued meanwhile.

mod common;

use std::time::Duration;

use common::redis::Redis;
use tollgate::store::{RedisConnection, RedisStore};
use tollgate_gateway::budget::{BudgetError, BudgetLimits, Budgets, Hold, RedisBudgets};

/// What the `j`-th client reserves (when it has a budget) and then costs.
fn costs(j: i64) -> (i64, i64) {
    (1_000 + j, 400 + 7 * j)
}

fn client(j: i64) -> String {
    format!("batch-{j}")
}

/// Even clients have a daily budget (their settlement replaces a reserved
/// estimate), odd ones none (their settlement adds the whole cost).
fn limits(j: i64) -> BudgetLimits {
    BudgetLimits {
        daily: (j % 2 == 0).then_some(1_000_000),
        monthly: None,
    }
}

async fn budgets(redis: &Redis, timeout: Duration) -> Budgets {
    let conn = RedisConnection::from(redis.connection().await);
    let store = RedisStore::with_default_options(conn);
    Budgets::Redis(Box::new(RedisBudgets::new(store, timeout)))
}

/// Script calls Redis has run (`EVALSHA` and `EVAL` in `INFO commandstats`).
async fn script_calls(redis: &Redis) -> u64 {
    let info = redis.info("commandstats").await;
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A hold for each of `n` clients: reserved for those with a budget.
async fn holds(b: &Budgets, n: i64) -> Vec<Hold> {
    let mut holds = Vec::new();
    for j in 0..n {
        let h = b.reserve(&client(j), costs(j).0, limits(j)).await.unwrap();
        assert_eq!(h.reserved, j % 2 == 0);
        holds.push(h);
    }
    holds
}

/// Settles every hold at once, each at its client's cost.
async fn settle_all(b: &Budgets, holds: &[Hold]) -> Vec<Result<(), BudgetError>> {
    futures_util::future::join_all(
        holds
            .iter()
            .enumerate()
            .map(|(j, h)| b.settle(h, costs(j as i64).1)),
    )
    .await
}

/// Every client's spend today and this month is its actual cost.
async fn each_spent_its_cost(b: &Budgets, n: i64) -> Result<(), String> {
    for j in 0..n {
        let s = b.spend(&client(j)).await.map_err(|e| e.to_string())?;
        let want = costs(j).1;
        if s.today != want || s.month != want {
            return Err(format!(
                "{}: spent {s:?}, its settlement cost {want}",
                client(j)
            ));
        }
    }
    Ok(())
}

#[tokio::test]
async fn settlements_of_many_clients_travel_together_and_each_is_applied_once() {
    let redis = Redis::start().await;
    let b = budgets(&redis, Duration::from_secs(2)).await;
    let n = 60;
    let holds = holds(&b, n).await;
    // The script loaded (its first call) before counting.
    let warm = b.reserve("warm", 0, BudgetLimits::default()).await.unwrap();
    b.settle(&warm, 1).await.unwrap();
    let before = script_calls(&redis).await;
    let settled = settle_all(&b, &holds).await;
    let calls = script_calls(&redis).await - before;
    assert!(settled.iter().all(Result::is_ok), "{settled:?}");
    assert!(
        calls <= 3,
        "{n} settlements finishing together took {calls} script calls"
    );
    each_spent_its_cost(&b, n).await.unwrap();
    // Sent again (a retry of a batch whose answer was lost), they change
    // nothing.
    for (j, h) in holds.iter().enumerate() {
        b.settle(h, costs(j as i64).1).await.unwrap();
    }
    each_spent_its_cost(&b, n).await.unwrap();
}

#[tokio::test]
async fn a_batch_that_times_out_while_redis_is_paused_is_applied_once() {
    let redis = Redis::start().await;
    // A settlement's try waits five times this: 250 ms.
    let b = budgets(&redis, Duration::from_millis(50)).await;
    let n = 40;
    let holds = holds(&b, n).await;
    redis.pause();
    let tried = settle_all(&b, &holds).await;
    assert!(
        tried.iter().all(Result::is_err),
        "a paused Redis cannot have answered: {tried:?}"
    );
    // Retries queue up behind the first call meanwhile.
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.resume();
    let mut last = Err(String::new());
    for _ in 0..100 {
        last = each_spent_its_cost(&b, n).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last.expect("every settlement applied once Redis answers");
    // Past every retry's backoff: none was applied a second time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    each_spent_its_cost(&b, n).await.unwrap();
}
