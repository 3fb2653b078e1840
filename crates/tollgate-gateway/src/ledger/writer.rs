//! The batched writer: rows leave the request path through a bounded queue
//! and one task writes them in batches.
//!
//! - A batch is written when it holds [`WriterConfig::batch_rows`] rows, or
//!   [`WriterConfig::flush_interval`] after its first row arrived, whichever
//!   comes first: a row reaches the database (or the spool) at most about
//!   one flush interval plus one write after it was recorded. That is all a
//!   SIGKILL of the gateway can lose.
//! - When the queue is full, [`Writer::record`] appends the row to the spool
//!   itself (no wait for the database, one file write) and counts it
//!   ([`Stats::overflowed`]). Only a spool that cannot be written loses a
//!   row, counted in [`Stats::lost`] and logged.
//! - When the database fails, the batch goes to the spool; while the spool
//!   holds rows, every batch first replays it (oldest first) and the writer
//!   retries every [`WriterConfig::retry_interval`] when idle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::row::Row;
use super::spool::Spool;
use super::store::Store;

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most rows in one insert.
    pub batch_rows: usize,
    /// Longest a row waits in the writer before its batch is written.
    pub flush_interval: Duration,
    /// Rows the queue holds before [`Writer::record`] spools them directly.
    pub queue_rows: usize,
    /// How often a spool is retried while the database is away and no row
    /// arrives.
    pub retry_interval: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_rows: 500,
            flush_interval: Duration::from_millis(100),
            queue_rows: 65_536,
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// What the writer did so far (read by `/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Rows recorded and not yet in the database or the spool.
    pub backlog: AtomicU64,
    /// Rows inserted (new).
    pub written: AtomicU64,
    /// Rows whose request id was already there (a replay after a crash).
    pub duplicates: AtomicU64,
    /// Rows spooled because the queue was full.
    pub overflowed: AtomicU64,
    /// Rows spooled because the database failed.
    pub spooled: AtomicU64,
    /// Rows replayed from the spool.
    pub replayed: AtomicU64,
    /// Rows lost: neither the database nor the spool could take them.
    pub lost: AtomicU64,
    /// Failed database writes.
    pub write_errors: AtomicU64,
    /// Whether the last database write succeeded.
    pub database_up: AtomicBool,
}

enum Msg {
    Row(Box<Row>),
    Flush(oneshot::Sender<()>),
}

/// The handle the request path records through.
#[derive(Debug)]
pub struct Writer {
    tx: parking_lot::Mutex<Option<mpsc::Sender<Msg>>>,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writing task (on the current tokio runtime).
    pub fn start(store: Store, spool: Arc<Spool>, config: WriterConfig) -> Writer {
        let (tx, rx) = mpsc::channel(config.queue_rows.max(1));
        let stats = Arc::new(Stats {
            database_up: AtomicBool::new(true),
            ..Stats::default()
        });
        let task = Task {
            store,
            spool: spool.clone(),
            stats: stats.clone(),
            config,
        };
        let handle = tokio::spawn(task.run(rx));
        Writer {
            tx: parking_lot::Mutex::new(Some(tx)),
            spool,
            stats,
            task: tokio::sync::Mutex::new(Some(handle)),
        }
    }

    /// Queues `row` (never waits): when the queue is full, or the writer
    /// has stopped, the row goes straight to the spool.
    pub fn record(&self, row: Row) {
        self.stats.backlog.fetch_add(1, Relaxed);
        let sent = match self.tx.lock().as_ref() {
            Some(tx) => tx.try_send(Msg::Row(Box::new(row))),
            None => Err(mpsc::error::TrySendError::Closed(Msg::Row(Box::new(row)))),
        };
        let Err(e) = sent else { return };
        let (mpsc::error::TrySendError::Full(Msg::Row(row))
        | mpsc::error::TrySendError::Closed(Msg::Row(row))) = e
        else {
            return;
        };
        self.stats.overflowed.fetch_add(1, Relaxed);
        self.stats.backlog.fetch_sub(1, Relaxed);
        if let Err(e) = self.spool.append(std::slice::from_ref(&row), false) {
            self.stats.lost.fetch_add(1, Relaxed);
            tracing::error!(request_id = %row.request_id, error = %e, "ledger row lost: the queue is full and the spool cannot be written");
        }
    }

    /// Waits until every row recorded before is in the database or the
    /// spool.
    pub async fn flush(&self) {
        let tx = self.tx.lock().clone();
        let Some(tx) = tx else { return };
        let (ack, done) = oneshot::channel();
        if tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Writes what is queued and stops the task; later rows go to the spool.
    pub async fn close(&self) {
        self.tx.lock().take();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

struct Task {
    store: Store,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    config: WriterConfig,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Row> = Vec::with_capacity(self.config.batch_rows);
        let mut acks = Vec::new();
        if !self.spool.is_empty() {
            self.replay().await;
        }
        loop {
            let first = if self.spool.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(self.config.retry_interval, rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        self.replay().await;
                        continue;
                    }
                }
            };
            let Some(first) = first else { break };
            take(first, &mut batch, &mut acks);
            let deadline = tokio::time::Instant::now() + self.config.flush_interval;
            while batch.len() < self.config.batch_rows && acks.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(m)) => take(m, &mut batch, &mut acks),
                    Ok(None) | Err(_) => break,
                }
            }
            self.write(&batch).await;
            batch.clear();
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
        // Closed: what is left was written by the last turn.
    }

    async fn write(&self, batch: &[Row]) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        if !self.spool.is_empty() {
            self.replay().await;
        }
        if self.spool.is_empty() {
            match self.store.insert(batch).await {
                Ok(added) => {
                    self.up();
                    self.stats.written.fetch_add(added, Relaxed);
                    self.stats.duplicates.fetch_add(n - added, Relaxed);
                    self.stats.backlog.fetch_sub(n, Relaxed);
                    return;
                }
                Err(e) => self.down(&e),
            }
        }
        match self.spool.append(batch, true) {
            Ok(()) => {
                self.stats.spooled.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.stats.lost.fetch_add(n, Relaxed);
                tracing::error!(rows = n, error = %e, "ledger rows lost: the database and the spool both failed");
            }
        }
        self.stats.backlog.fetch_sub(n, Relaxed);
    }

    /// Replays the spool; leaves what it could not insert there.
    async fn replay(&self) {
        let mut total = 0;
        loop {
            let replay = match self.spool.next_replay() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot replay the ledger spool");
                    return;
                }
            };
            for part in replay.rows.chunks(self.config.batch_rows.max(1)) {
                match self.store.insert(part).await {
                    Ok(added) => {
                        let n = part.len() as u64;
                        self.stats.replayed.fetch_add(n, Relaxed);
                        self.stats.written.fetch_add(added, Relaxed);
                        self.stats.duplicates.fetch_add(n - added, Relaxed);
                        total += n;
                    }
                    Err(e) => return self.down(&e),
                }
            }
            if let Err(e) = self.spool.replayed(replay) {
                tracing::error!(error = %e, "cannot remove the replayed ledger spool");
                return;
            }
        }
        if total > 0 {
            self.up();
            tracing::info!(rows = total, "ledger spool replayed into the database");
        }
    }

    fn up(&self) {
        if !self.stats.database_up.swap(true, Relaxed) {
            tracing::info!(
                database = self.store.kind(),
                "ledger database reachable again"
            );
        }
    }

    fn down(&self, e: &super::store::StoreError) {
        self.stats.write_errors.fetch_add(1, Relaxed);
        if self.stats.database_up.swap(false, Relaxed) {
            tracing::warn!(database = self.store.kind(), error = %e, "ledger database unreachable: rows go to the spool until it is back");
        }
    }
}

fn take(m: Msg, batch: &mut Vec<Row>, acks: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Msg::Row(r) => batch.push(*r),
        Msg::Flush(ack) => acks.push(ack),
    }
}
