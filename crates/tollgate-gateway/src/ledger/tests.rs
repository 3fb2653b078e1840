//! The writer and the spool against a real SQLite file.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::row::sample;
use super::store::tests::tempdir;
use super::*;
use crate::outcome::Outcome;

fn settings(dir: &std::path::Path, writer: WriterConfig) -> LedgerSettings {
    LedgerSettings {
        url: dir.join("ledger.sqlite").display().to_string(),
        spool: dir.join("ledger.spool"),
        temporary_spool: false,
        instance: "test".into(),
        writer,
    }
}

fn rows(n: usize, client: &str) -> Vec<Row> {
    (0..n)
        .map(|i| sample(uuid::Uuid::now_v7(), client, Outcome::Ok, i as i64))
        .collect()
}

#[tokio::test]
async fn every_recorded_row_is_written_once() {
    let dir = tempdir();
    let ledger = UsageLedger::open(&settings(&dir, WriterConfig::default()))
        .await
        .unwrap();
    let written = rows(2_000, "acme");
    for r in &written {
        ledger.record(r.clone());
    }
    // The same rows again (a retry): still one each.
    for r in &written[..100] {
        ledger.record(r.clone());
    }
    ledger.flush().await;
    let back = ledger.store().rows().await.unwrap();
    assert_eq!(back.len(), 2_000);
    let s = ledger.stats();
    assert_eq!(s.written.load(Relaxed), 2_000);
    assert_eq!(s.duplicates.load(Relaxed), 100);
    assert_eq!(s.backlog.load(Relaxed), 0);
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_batch_waits_at_most_the_flush_interval() {
    let dir = tempdir();
    let writer = WriterConfig {
        flush_interval: Duration::from_millis(50),
        ..WriterConfig::default()
    };
    let ledger = UsageLedger::open(&settings(&dir, writer)).await.unwrap();
    ledger.record(rows(1, "acme").remove(0));
    let started = std::time::Instant::now();
    while ledger.store().rows().await.unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a lone row was not written"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_spools_rows_and_loses_none() {
    let dir = tempdir();
    let writer = WriterConfig {
        queue_rows: 8,
        ..WriterConfig::default()
    };
    let ledger = UsageLedger::open(&settings(&dir, writer)).await.unwrap();
    // On one thread the writer cannot run between these: the queue fills.
    let written = rows(1_000, "acme");
    for r in &written {
        ledger.record(r.clone());
    }
    let s = ledger.stats();
    assert_eq!(s.overflowed.load(Relaxed), 1_000 - 8);
    assert_eq!(ledger.spooled(), 1_000 - 8);
    ledger.flush().await;
    assert_eq!(ledger.store().rows().await.unwrap().len(), 1_000);
    assert_eq!(ledger.spooled(), 0, "the spool was replayed");
    assert_eq!(s.lost.load(Relaxed), 0);
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_spool_left_by_a_previous_run_is_replayed_at_open() {
    let dir = tempdir();
    let set = settings(&dir, WriterConfig::default());
    let left = rows(300, "acme");
    {
        let spool = Spool::open(&set.spool).unwrap();
        spool.append(&left[..200], true).unwrap();
        spool.append(&left[100..], false).unwrap(); // overlapping: kept once
                                                    // A line cut off by a crash mid-append.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&set.spool)
            .unwrap();
        f.write_all(b"{\"request_id\":\"0192").unwrap();
    }
    let ledger = UsageLedger::open(&set).await.unwrap();
    ledger.flush().await;
    let back = ledger.store().rows().await.unwrap();
    assert_eq!(back.len(), 300);
    assert_eq!(ledger.spool_corrupt(), 1);
    assert_eq!(ledger.spooled(), 0);
    assert!(!set.spool.exists() || std::fs::metadata(&set.spool).unwrap().len() == 0);
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_replay_cut_short_resumes_in_order_without_doubling() {
    let dir = tempdir();
    let spool = Spool::open(&dir.join("s.spool")).unwrap();
    let first = rows(10, "a");
    spool.append(&first, true).unwrap();
    // A replay cut short (the database failed after some rows): nothing
    // is forgotten.
    let cut = spool.next_replay().unwrap().unwrap();
    assert_eq!(cut.rows, first);
    drop(cut);
    // Rows arriving meanwhile queue behind the ones being replayed.
    let later = rows(3, "b");
    spool.append(&later, false).unwrap();
    assert_eq!(spool.len(), 13);
    let again = spool.next_replay().unwrap().unwrap();
    assert_eq!(again.rows, first, "the cut-short file again, whole");
    spool.replayed(again).unwrap();
    let next = spool.next_replay().unwrap().unwrap();
    assert_eq!(next.rows, later, "then the newer appends");
    spool.replayed(next).unwrap();
    assert!(spool.next_replay().unwrap().is_none());
    assert!(spool.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn spend_is_rebuilt_per_client_day_and_month() {
    let dir = tempdir();
    let ledger = UsageLedger::open(&settings(&dir, WriterConfig::default()))
        .await
        .unwrap();
    let now = Period::now();
    let mut yesterday = sample(uuid::Uuid::now_v7(), "acme", Outcome::Ok, 7);
    yesterday.started_at_ms = (now.day - 1) * 86_400_000 + 5;
    let mut last_month = sample(uuid::Uuid::now_v7(), "acme", Outcome::Ok, 1000);
    last_month.started_at_ms = 0;
    ledger.record(sample(uuid::Uuid::now_v7(), "acme", Outcome::Ok, 40));
    ledger.record(sample(uuid::Uuid::now_v7(), "acme", Outcome::Ok, 2));
    ledger.record(sample(uuid::Uuid::now_v7(), "beta", Outcome::Ok, 5));
    ledger.record(yesterday);
    ledger.record(last_month);
    let spend = ledger.spend("acme", now).await.unwrap();
    assert_eq!(spend.today, 42_000, "nano-USD");
    let first_of_month = now.day == days_from_civil(now.month / 100, now.month % 100, 1);
    assert_eq!(spend.month, if first_of_month { 42_000 } else { 49_000 });
    let all = ledger.all_spend(now).await.unwrap();
    assert_eq!(all.len(), 2);
    // Every level's spend is rebuilt the same way: the organisation holds
    // both clients' rows, each key its own.
    let org = ledger.spend_of(Level::Org, "org-1", now).await.unwrap();
    assert_eq!(org.today, 47_000, "nano-USD");
    let key = ledger.spend_of(Level::Key, "key_acme", now).await.unwrap();
    assert_eq!(key.today, 42_000, "nano-USD");
    let keys = ledger.all_spend_of(Level::Key, now).await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}
