//! Changing the classes' shares of a bucket on a live limiter
//! (`RateLimiter::set_class_shares`): the calls reserved afterwards use the
//! new lanes, a lane keeps the part of its capacity it had in use, and a
//! change that could not be built is refused with nothing changed.

use tollgate::{
    AcquireOptions, ClassShare, Cost, Error, Limits, PriorityClass, RateLimiter, Store,
};

/// A bucket of 1,000 tokens (60,000 TPM, burst 1/60) shared by two classes
/// that lend nothing, so that each admits at once only what its own lane
/// holds.
async fn limiter(store: &Store, shares: [(f64, f64); 2]) -> RateLimiter {
    let class = PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    RateLimiter::builder("reshare")
        .limits(Limits::new().tpm(60_000).burst(1.0 / 60.0))
        .priority_classes(vec![class.clone(), class])
        .class_shares(no_lending(shares))
        .store(store.clone())
        .build_unchecked()
        .unwrap()
}

/// Shares of these floors and weights that lend nothing.
fn no_lending(shares: [(f64, f64); 2]) -> Vec<ClassShare> {
    shares
        .iter()
        .map(|&(floor, weight)| ClassShare::new(floor, weight).lendable(0.0))
        .collect()
}

/// Calls of 10 tokens class `class` gets at once, without waiting.
async fn admitted_at_once(limiter: &RateLimiter, class: u8) -> u64 {
    let options = AcquireOptions::class(class).max_wait(std::time::Duration::ZERO);
    let mut n = 0;
    while n < 1_000 {
        match limiter.reserve(Cost::tokens(10), &options).await {
            Ok(p) if p.waited().is_zero() => n += 1,
            Ok(p) => {
                limiter.cancel(p).await.unwrap();
                break;
            }
            Err(_) => break,
        }
    }
    n
}

fn tokens_in_use(status: &tollgate::Status, class: usize) -> (f64, f64) {
    let d = &status.classes[class].dimensions[0];
    (d.in_use, d.capacity)
}

#[tokio::test]
async fn a_change_of_shares_moves_what_each_lane_admits_at_once() {
    // floor 0.5 and weights 1:1: lanes of 75% and 25% of the bucket.
    let unchanged = limiter(&Store::memory(), [(0.5, 1.0), (0.0, 1.0)]).await;
    assert_eq!(admitted_at_once(&unchanged, 1).await, 25);

    // No floors, weights 1:3: class 1's lane is 75% of the bucket.
    let changed = limiter(&Store::memory(), [(0.5, 1.0), (0.0, 1.0)]).await;
    changed
        .set_class_shares(no_lending([(0.0, 1.0), (0.0, 3.0)]))
        .unwrap();
    assert_eq!(changed.lane_shares(), vec![0.25, 0.75]);
    assert_eq!(admitted_at_once(&changed, 1).await, 75);
    assert_eq!(admitted_at_once(&changed, 0).await, 25);
    let status = changed.status().await.unwrap();
    assert_eq!(
        (status.classes[1].floor, status.classes[1].weight),
        (0.0, 3.0)
    );
}

#[tokio::test]
async fn a_lane_keeps_the_part_of_its_capacity_it_had_in_use() {
    let store = Store::memory();
    let l = limiter(&store, [(0.5, 1.0), (0.0, 1.0)]).await;
    // Class 1 fills 20 of its 25 calls' room (80% of its lane).
    let options = AcquireOptions::class(1);
    for _ in 0..20 {
        let p = l.reserve(Cost::tokens(10), &options).await.unwrap();
        std::mem::forget(p);
    }
    let before = l.status().await.unwrap();
    let (used, capacity) = tokens_in_use(&before, 1);
    assert!((used / capacity - 0.8).abs() < 0.01, "{used} of {capacity}");
    l.set_class_shares(no_lending([(0.0, 1.0), (0.0, 3.0)]))
        .unwrap();
    let after = l.status().await.unwrap();
    let (used, capacity) = tokens_in_use(&after, 1);
    assert!((capacity - 750.0).abs() < 1e-6, "{capacity}");
    assert!((used / capacity - 0.8).abs() < 0.01, "{used} of {capacity}");
    // So it admits the rest of its new lane, 20% of 750 tokens: 15 calls.
    let more = admitted_at_once(&l, 1).await;
    assert!((14..=15).contains(&more), "{more}");
}

#[tokio::test]
async fn a_change_that_cannot_be_built_is_refused_and_changes_nothing() {
    let l = limiter(&Store::memory(), [(0.5, 1.0), (0.0, 1.0)]).await;
    let bad: [(Vec<ClassShare>, &str); 3] = [
        (vec![ClassShare::new(0.5, 1.0)], "class_shares"),
        (
            vec![ClassShare::new(0.7, 1.0), ClassShare::new(0.5, 1.0)],
            "floor",
        ),
        (
            vec![ClassShare::new(0.1, 0.0), ClassShare::new(0.1, 1.0)],
            "weight",
        ),
    ];
    for (shares, names) in bad {
        let e = l.set_class_shares(shares).unwrap_err();
        assert!(
            matches!(e, Error::Config { .. } | Error::Shares { .. }),
            "{e}"
        );
        assert!(e.to_string().contains(names), "{e}");
        assert_eq!(l.lane_shares(), vec![0.75, 0.25]);
    }
    // A limiter whose classes do not share the bucket has no shares to change.
    let plain = RateLimiter::memory("plain", Limits::new().rpm(10)).unwrap();
    let e = plain
        .set_class_shares(vec![ClassShare::new(0.0, 1.0)])
        .unwrap_err();
    assert!(e.to_string().contains("class_shares"), "{e}");
    assert!(plain.lane_shares().is_empty());
}
