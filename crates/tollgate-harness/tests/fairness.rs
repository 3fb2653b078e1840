//! The fairness run shortened to 80 s (four phases of 20 s: free alone,
//! free + professional, all three tiers, enterprise idle again), with its
//! targets: no upstream 429, utilisation ≥ 97%, a tier alone ≥ 95% of the
//! model, every backlogged tier ≥ 95% of its floor, and with every tier
//! backlogged each one's excess within 10% of its weight's part. The
//! 3.5-minute run is `scripts/harness/fairness` (docs/FAIRNESS.md).

use std::process::Command;

use tollgate_harness::fairness::FairnessReport;

#[test]
fn tiers_sharing_a_model_through_two_gateways_get_their_floors_and_weights() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-harness"))
        .args(["fairness", "--phase-secs", "20", "--phases", "4", "--json"])
        .output()
        .expect("running tollgate-harness");
    let r: FairnessReport = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let text = tollgate_harness::fairness::render(&r);
    assert_eq!(r.upstream_429, 0, "{text}");
    assert!(r.utilisation >= 0.97, "{text}");
    let alone = &r.phases[0];
    assert_eq!(alone.senders, ["free"]);
    assert!(alone.tiers[0].got >= 0.95, "{text}");
    for p in &r.phases {
        for t in &p.tiers {
            assert!(t.got >= 0.95 * t.floor, "{}: {text}", t.tier);
        }
    }
    let all = &r.phases[2];
    assert_eq!(all.senders.len(), 3, "{text}");
    for t in &all.tiers {
        // Every tier backlogged: each gets its weighted share.
        assert!(
            (t.got - t.expected).abs() <= 0.1 * (t.expected - t.floor) + 0.05 * t.floor,
            "{}: {text}",
            t.tier
        );
    }
    assert!(r.missed.is_empty(), "{text}");
    assert!(out.status.success(), "{text}");
}
