//! Short fault runs: under load, Redis is killed and restarted, its scripts
//! flushed, the limiter's connections killed and the server paused longer
//! than the timeouts — for each outage policy. They fail on a panic, a call
//! stuck past the configured timeouts, a decision that is not the policy's, a
//! store that is not used again within 1 s of Redis answering, or a 429 from
//! the stand-in outside the fault and the window after it.

use std::process::Command;

use tollgate_harness::faults::FaultRow;

fn faults(policy: &str) -> Vec<FaultRow> {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-harness"))
        .args([
            "faults",
            "--policies",
            policy,
            "--faults",
            "kill,flush,clients,pause",
        ])
        .args([
            "--before", "1.5", "--outage", "2", "--after", "2.5", "--json",
        ])
        .output()
        .expect("running tollgate-harness");
    assert!(
        out.status.success(),
        "tollgate-harness faults --policies {policy} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parsing the fault report")
}

fn check(policy: &str) {
    let rows = faults(policy);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in &rows {
        assert!(r.clean_exit, "a worker panicked or crashed: {r:?}");
        assert!(
            r.max_overhead_ms <= r.bound_ms,
            "a call took {:.0} ms beyond its slot, more than the {:.0} ms the timeouts allow: {r:?}",
            r.max_overhead_ms,
            r.bound_ms
        );
        assert!(
            r.policy_applied,
            "a decision while Redis was down was not the policy's: {r:?}"
        );
        let recovery = r.recovery_secs.expect("the store never answered again");
        assert!(
            recovery <= 1.0,
            "the store answered again only after {recovery:.3} s: {r:?}"
        );
        assert_eq!(
            r.other_errors, 0,
            "errors the policy does not explain: {r:?}"
        );
        assert_eq!(r.rejected.0, 0, "429 before the fault: {r:?}");
        assert_eq!(
            r.rejected.3, 0,
            "429 more than a window after Redis came back: {r:?}"
        );
        if !matches!(r.fault.as_str(), "kill+restart" | "pause") {
            assert_eq!(
                r.rejected,
                (0, 0, 0, 0),
                "an instant fault let the bucket overflow: {r:?}"
            );
        }
    }
    let kill = rows
        .iter()
        .find(|r| r.fault == "kill+restart")
        .expect("kill row");
    let expected = match policy.split(':').next() {
        Some("open") => "open",
        Some("closed") => "closed",
        _ => "local",
    };
    assert!(
        kill.during.iter().any(|(o, n)| o == expected && *n > 0),
        "no {expected} decision while Redis was dead: {kill:?}"
    );
    if expected == "closed" {
        assert_eq!(
            kill.rejected.1, 0,
            "closed let calls overflow the bucket: {kill:?}"
        );
    }
}

#[test]
fn open_policy_lets_calls_through_and_recovers() {
    check("open");
}

#[test]
fn closed_policy_refuses_and_recovers() {
    check("closed");
}

#[test]
fn local_policy_limits_in_process_and_recovers() {
    check("local:0.5");
}
