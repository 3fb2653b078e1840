//! The local spool: rows the database could not take yet, appended to a
//! file (one JSON row per line) and replayed in order when it answers again.
//!
//! Two files: `PATH` takes appends; a replay first renames it to
//! `PATH.replay` (under the lock, so no append is lost between), then
//! inserts that file's rows in order and deletes it only once all of them
//! are in. A replay cut short (the database went away again, or the process
//! died) leaves `PATH.replay` to be replayed first next time; inserts are
//! idempotent on the request id, so rows replayed twice are kept once.
//!
//! A line cut off by a crash in the middle of an append cannot be read: it
//! is skipped, counted ([`Spool::corrupt`]) and logged.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use super::row::Row;

/// Why the spool could not be used.
#[derive(Debug, thiserror::Error)]
#[error("ledger spool {path}: {source}; check that its folder exists, is writable and has space (ledger.spool_path)")]
pub struct SpoolError {
    /// The file.
    pub path: String,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Rows taken from the spool to be replayed.
#[derive(Debug)]
pub struct Replay {
    /// The rows, oldest first.
    pub rows: Vec<Row>,
    /// Lines that could not be read.
    skipped: u64,
}

/// The append-only spool of one instance.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    replay: PathBuf,
    file: Mutex<Option<File>>,
    /// Rows in the spool files now (appended, not yet replayed).
    rows: AtomicU64,
    corrupt: AtomicU64,
}

impl Spool {
    /// The spool at `path`, counting the rows a previous run left there.
    pub fn open(path: &Path) -> Result<Spool, SpoolError> {
        let replay = PathBuf::from(format!("{}.replay", path.display()));
        let spool = Spool {
            path: path.to_path_buf(),
            replay,
            file: Mutex::new(None),
            rows: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        };
        let mut left = 0;
        for p in [&spool.replay, &spool.path] {
            left += count_lines(p).map_err(|source| spool.err(p, source))?;
        }
        spool.rows.store(left, Relaxed);
        // Fail at start, not at the first outage, when the folder is wrong
        // (the file itself is made at the first append).
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() && !m.permissions().readonly() => {}
            Ok(_) => {
                return Err(spool.err(
                    dir,
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "not a writable folder",
                    ),
                ))
            }
            Err(e) => return Err(spool.err(dir, e)),
        }
        Ok(spool)
    }

    fn err(&self, p: &Path, source: std::io::Error) -> SpoolError {
        SpoolError {
            path: p.display().to_string(),
            source,
        }
    }

    fn file(&self) -> std::io::Result<parking_lot::MappedMutexGuard<'_, File>> {
        let mut guard = self.file.lock();
        if guard.is_none() {
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        Ok(parking_lot::MutexGuard::map(guard, |f| {
            f.as_mut().expect("opened above")
        }))
    }

    /// Appends `rows` in one write; with `sync`, waits until they are on
    /// disk (the writer does; an overflow from a request does not, the
    /// writer's next sync covers it — a killed process loses nothing the
    /// kernel already has).
    pub fn append(&self, rows: &[Row], sync: bool) -> Result<(), SpoolError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut text = Vec::with_capacity(rows.len() * 400);
        for r in rows {
            serde_json::to_writer(&mut text, r).expect("a row always serializes");
            text.push(b'\n');
        }
        let mut file = self.file().map_err(|e| self.err(&self.path, e))?;
        file.write_all(&text).map_err(|e| self.err(&self.path, e))?;
        if sync {
            file.sync_data().map_err(|e| self.err(&self.path, e))?;
        }
        self.rows.fetch_add(rows.len() as u64, Relaxed);
        Ok(())
    }

    /// Rows waiting in the spool.
    pub fn len(&self) -> u64 {
        self.rows.load(Relaxed)
    }

    /// Whether no row waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines that could not be read back (cut off by a crash), so far.
    pub fn corrupt(&self) -> u64 {
        self.corrupt.load(Relaxed)
    }

    /// The oldest spooled rows, to be inserted in order and then
    /// [`Spool::replayed`]: the replay file a cut-short replay left, or else
    /// the appends so far (taken under the lock, so new ones start a new
    /// file). `None` when nothing waits.
    pub fn next_replay(&self) -> Result<Option<Replay>, SpoolError> {
        if !self.replay.exists() {
            let mut guard = self.file.lock();
            let has_rows = std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0);
            if !has_rows {
                return Ok(None);
            }
            if let Some(f) = guard.as_mut() {
                let _ = f.sync_data();
            }
            *guard = None;
            std::fs::rename(&self.path, &self.replay).map_err(|e| self.err(&self.path, e))?;
            drop(guard);
            let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(dir) = dir.and_then(|d| File::open(d).ok()) {
                let _ = dir.sync_all();
            }
        }
        let (rows, skipped) = self.read_replay().map_err(|e| self.err(&self.replay, e))?;
        Ok(Some(Replay { rows, skipped }))
    }

    /// Forgets a replay whose rows are all in the database.
    pub fn replayed(&self, replay: Replay) -> Result<(), SpoolError> {
        std::fs::remove_file(&self.replay).map_err(|e| self.err(&self.replay, e))?;
        let gone = replay.rows.len() as u64 + replay.skipped;
        let _ = self
            .rows
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(gone)));
        Ok(())
    }

    /// The rows of the replay file, and how many lines could not be read.
    fn read_replay(&self) -> std::io::Result<(Vec<Row>, u64)> {
        let file = File::open(&self.replay)?;
        let mut rows = Vec::new();
        let mut skipped = 0;
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Row>(&line) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    skipped += 1;
                    tracing::error!(line = n + 1, error = %e, path = %self.replay.display(), "a ledger spool line cannot be read (cut off by a crash?); skipped");
                }
            }
        }
        self.corrupt.fetch_add(skipped, Relaxed);
        Ok((rows, skipped))
    }
}

fn count_lines(p: &Path) -> std::io::Result<u64> {
    match File::open(p) {
        Ok(f) => {
            let mut n = 0;
            for line in BufReader::new(f).split(b'\n') {
                if !line?.is_empty() {
                    n += 1;
                }
            }
            Ok(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}
