//! `tollgate report`: the ledger's sums as a table in the terminal (or CSV,
//! JSON), read straight from the database the configuration names.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tollgate_gateway::ledger::{Report, Store, UsageQuery};

pub const USAGE: &str = "usage: tollgate report --config FILE [--from WHEN] [--to WHEN]
                       [--group-by client|tier|model|route|day] [--csv | --json]

  Requests, refusals by reason, failures, tokens, spend, waits and the
  savings against each route's baseline model, per group, from the usage
  ledger the configuration's [ledger] names (SQLite or PostgreSQL).
  WHEN is a UTC date (2026-12-01), a UTC time (2026-12-01T13:00:00Z) or ms
  since the epoch; --to is exclusive (a date: up to its end). Default: all.";

pub async fn run(args: &[String]) -> Result<()> {
    let mut config: Option<PathBuf> = None;
    let (mut from, mut to, mut group) = (None, None, None);
    let mut format = "table";
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match a.as_str() {
            "--config" => config = Some(value("--config")?.into()),
            "--from" => from = Some(value("--from")?),
            "--to" => to = Some(value("--to")?),
            "--group-by" => group = Some(value("--group-by")?),
            "--csv" => format = "csv",
            "--json" => format = "json",
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown option {other:?} for report\n\n{USAGE}"),
        }
    }
    let Some(path) = config else {
        bail!("tollgate report needs --config FILE (the gateway's)\n\n{USAGE}");
    };
    let query = UsageQuery::parse(from.as_deref(), to.as_deref(), group.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}\n\n{USAGE}"))?;
    let cfg = tollgate_gateway::Config::load(&path)?;
    let Some(settings) = cfg.ledger_settings() else {
        bail!(
            "{}: ledger.url is \"off\": there is no ledger to report on",
            path.display()
        );
    };
    if settings.url == "sqlite::memory:" {
        bail!("{}: the ledger is in the gateway's memory; give ledger.url a file or a postgres:// URL", path.display());
    }
    if !settings.url.starts_with("postgres") && !std::path::Path::new(&settings.url).exists() {
        bail!(
            "no ledger at {}: has the gateway run with this configuration?",
            settings.url
        );
    }
    let store = Store::open(&settings.url).await?;
    let report = Report::run(&store, query).await?;
    match format {
        "csv" => print!("{}", report.to_csv()),
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => print!("{}", report.to_table()),
    }
    Ok(())
}
