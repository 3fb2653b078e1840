//! `[ledger]`: its rules, and where its database and spool end up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{invalid, Config, ConfigError};
use crate::ledger::{LedgerSettings, WriterConfig};

/// Most rows in one insert: PostgreSQL binds at most 65535 parameters, 22 a
/// row.
const MAX_BATCH_ROWS: usize = 2_000;

impl Config {
    pub(super) fn validate_ledger(&self) -> Result<(), ConfigError> {
        let l = &self.ledger;
        if !(1..=60_000).contains(&l.flush_interval_ms) {
            return Err(invalid(
                "ledger.flush_interval_ms",
                "must be between 1 and 60000 milliseconds",
            ));
        }
        if !(1..=MAX_BATCH_ROWS).contains(&l.batch_rows) {
            return Err(invalid(
                "ledger.batch_rows",
                format!("must be between 1 and {MAX_BATCH_ROWS}"),
            ));
        }
        if l.queue_rows == 0 {
            return Err(invalid("ledger.queue_rows", "must be at least 1"));
        }
        if l.url.starts_with("postgres") && !l.url.contains("://") {
            return Err(invalid(
                "ledger.url",
                format!(
                    "{:?}: a PostgreSQL URL looks like \"postgres://user@host:5432/db\"",
                    l.url
                ),
            ));
        }
        if l.instance.as_deref() == Some("") {
            return Err(invalid("ledger.instance", "must not be empty"));
        }
        Ok(())
    }

    /// Where the ledger lives, or `None` when `ledger.url = "off"`.
    pub fn ledger_settings(&self) -> Option<LedgerSettings> {
        let l = &self.ledger;
        let base = l.base_dir.as_deref();
        let within = |p: &str| -> PathBuf {
            let p = Path::new(p);
            match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p.to_path_buf(),
            }
        };
        let instance = l
            .instance
            .clone()
            .unwrap_or_else(|| self.server.listen.clone());
        let writer = WriterConfig {
            batch_rows: l.batch_rows,
            flush_interval: Duration::from_millis(l.flush_interval_ms),
            queue_rows: l.queue_rows,
            ..WriterConfig::default()
        };
        let url = l.url.as_str();
        let mut settings = if url == "off" {
            return None;
        } else if url.is_empty() && base.is_none() || url == "sqlite::memory:" {
            LedgerSettings::memory()
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let name: String = instance
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            LedgerSettings {
                url: url.to_string(),
                spool: within(&format!("tollgate-ledger-{name}.spool")),
                temporary_spool: false,
                instance: instance.clone(),
                writer,
            }
        } else {
            let file = match url.strip_prefix("sqlite:").unwrap_or(url) {
                "" => "tollgate-ledger.sqlite",
                f => f,
            };
            let path = within(file);
            LedgerSettings {
                url: path.display().to_string(),
                spool: PathBuf::from(format!("{}.spool", path.display())),
                temporary_spool: false,
                instance: instance.clone(),
                writer,
            }
        };
        if let Some(spool) = &l.spool_path {
            settings.spool = within(spool);
            settings.temporary_spool = false;
        }
        settings.instance = instance;
        settings.writer = writer;
        Some(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_lives_beside_the_configuration_unless_told_otherwise() {
        let mut c = Config::default();
        let memory = c.ledger_settings().unwrap();
        assert_eq!(memory.url, "sqlite::memory:");
        assert!(memory.temporary_spool);
        c.ledger.base_dir = Some(PathBuf::from("/etc/tollgate"));
        let file = c.ledger_settings().unwrap();
        assert_eq!(file.url, "/etc/tollgate/tollgate-ledger.sqlite");
        assert_eq!(
            file.spool,
            Path::new("/etc/tollgate/tollgate-ledger.sqlite.spool")
        );
        assert_eq!(file.instance, "127.0.0.1:8080");
        c.ledger.url = "postgres://u@127.0.0.1:5432/db".into();
        c.ledger.instance = Some("gw-1".into());
        let pg = c.ledger_settings().unwrap();
        assert_eq!(
            pg.spool,
            Path::new("/etc/tollgate/tollgate-ledger-gw-1.spool")
        );
        c.ledger.url = "off".into();
        assert!(c.ledger_settings().is_none());
    }

    #[test]
    fn bad_ledger_settings_name_their_field() {
        for (toml, field) in [
            (
                "[ledger]\nflush_interval_ms = 0",
                "ledger.flush_interval_ms",
            ),
            ("[ledger]\nbatch_rows = 5000", "ledger.batch_rows"),
            ("[ledger]\nqueue_rows = 0", "ledger.queue_rows"),
            ("[ledger]\nurl = \"postgres:db\"", "ledger.url"),
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(field), "{toml}: {e}");
        }
    }
}
