//! Short accuracy runs (a few seconds each) that fail when the limiter lets
//! a provider's bucket overflow, wastes it, or breaks FIFO order across
//! processes. They start their own redis-server (it must be installed:
//! `scripts/test` installs it) and the provider stand-in, on loopback.

use std::process::Command;

use tollgate_harness::accuracy::AccuracyReport;

/// Runs `tollgate-harness accuracy <args> --json` and parses its report.
fn accuracy(args: &[&str]) -> AccuracyReport {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-harness"))
        .arg("accuracy")
        .args(args)
        .arg("--json")
        .output()
        .expect("running tollgate-harness");
    assert!(
        out.status.success(),
        "tollgate-harness accuracy {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parsing the accuracy report")
}

/// 4 processes × 16 tasks, one shared Redis, a 1 s window: 6 s of load.
const SHORT: [&str; 8] = [
    "--duration",
    "6",
    "--window",
    "1",
    "--tokens",
    "40000",
    "--requests",
    "100",
];

#[test]
fn four_processes_fill_the_bucket_without_a_429_and_in_fifo_order() {
    let report = accuracy(&[&SHORT[..], &["--mode", "exact"]].concat());
    let row = &report.rows[0];
    let a = &row.analysis;
    assert!(a.calls > 100, "too few calls to judge: {row:?}");
    assert_eq!(a.rejected, 0, "the stand-in answered 429: {row:?}");
    assert!(
        a.utilisation >= 0.98,
        "utilisation {:.3} < 0.98: {row:?}",
        a.utilisation
    );
    assert_eq!(a.fifo_inversions, 0, "FIFO order broken: {row:?}");
    assert_eq!(row.acquire_errors, 0, "{row:?}");
    assert_eq!(row.not_from_store, 0, "{row:?}");
}

#[test]
fn doubled_estimates_settled_after_each_call_never_overflow() {
    let report = accuracy(&[&SHORT[..], &["--mode", "double"]].concat());
    let row = &report.rows[0];
    assert!(row.analysis.calls > 50, "too few calls to judge: {row:?}");
    assert_eq!(
        row.analysis.rejected, 0,
        "the stand-in answered 429: {row:?}"
    );
    assert_eq!(row.acquire_errors, 0, "{row:?}");
}

/// The goal: refunds give back what over-estimates held, so that
/// utilisation stays at 95% or more, with 64 callers waiting in the queue
/// (their slots move earlier when the calls ahead settle). 30 s of load with a
/// 5 s window: 25 s of steady part.
#[test]
fn doubled_estimates_settled_after_each_call_keep_utilisation() {
    let report = accuracy(&[
        "--duration",
        "30",
        "--window",
        "5",
        "--tokens",
        "200000",
        "--requests",
        "500",
        "--mode",
        "double",
    ]);
    let row = &report.rows[0];
    assert_eq!(
        row.analysis.rejected, 0,
        "the stand-in answered 429: {row:?}"
    );
    assert!(row.analysis.utilisation >= 0.95, "{row:?}");
}

#[test]
fn tls_only_redis_holds_the_bucket() {
    let report = accuracy(&[
        "--store",
        "tls",
        "--duration",
        "4",
        "--window",
        "1",
        "--tokens",
        "40000",
        "--requests",
        "100",
        "--processes",
        "2",
        "--mode",
        "exact",
    ]);
    let row = &report.rows[0];
    assert_eq!(row.store, "redis-tls");
    assert!(row.analysis.calls > 50, "too few calls to judge: {row:?}");
    assert_eq!(row.analysis.rejected, 0, "{row:?}");
    assert!(row.analysis.utilisation >= 0.95, "{row:?}");
    assert_eq!(row.acquire_errors, 0, "{row:?}");
}
