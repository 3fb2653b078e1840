//! Reports from the ledger: per client, tier, model, route or day, the
//! requests, refusals by reason, failures, tokens, spend, waits and the
//! savings of routing against each route's baseline. As JSON, CSV and a
//! terminal table. Money stays integer micro-USD to the end; a table shows
//! it as dollars without passing through a float.

use std::collections::BTreeMap;

use serde::Serialize;

use super::row::is_refusal;
use super::store::{GroupBy, GroupSums, Store, StoreError};
use crate::outcome::Outcome;

/// What to report on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    /// Rows whose request arrived at or after this (ms since the epoch).
    pub from_ms: i64,
    /// … and before this.
    pub to_ms: i64,
    /// The grouping.
    pub group_by: GroupBy,
}

impl UsageQuery {
    /// Reads `from`, `to` (a UTC date `2026-12-01`, a UTC time
    /// `2026-12-01T13:00:00Z`, or ms since the epoch; `to` is exclusive, a
    /// date meaning its end) and `group_by` (default `client`).
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        group_by: Option<&str>,
    ) -> Result<UsageQuery, String> {
        let from_ms = match from.filter(|s| !s.is_empty()) {
            Some(s) => parse_time(s, false).ok_or_else(|| bad_time("from", s))?,
            None => 0,
        };
        let to_ms = match to.filter(|s| !s.is_empty()) {
            Some(s) => parse_time(s, true).ok_or_else(|| bad_time("to", s))?,
            None => i64::MAX,
        };
        if to_ms <= from_ms {
            return Err(format!(
                "`to` ({to_ms} ms) must be after `from` ({from_ms} ms)"
            ));
        }
        let group_by = match group_by.filter(|s| !s.is_empty()) {
            Some(g) => GroupBy::parse(g).ok_or_else(|| {
                format!("group_by {g:?} is not one of client, tier, model, route, day")
            })?,
            None => GroupBy::Client,
        };
        Ok(UsageQuery {
            from_ms,
            to_ms,
            group_by,
        })
    }
}

fn bad_time(field: &str, s: &str) -> String {
    format!("`{field}` {s:?} is not a UTC date (2026-12-01), time (2026-12-01T13:00:00Z) or ms since the epoch")
}

/// `2026-12-01`, `2026-12-01T13:00:00Z` (seconds and `Z` optional) or ms;
/// with `end`, a bare date means the start of the next day.
fn parse_time(s: &str, end: bool) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return (ms >= 0).then_some(ms);
    }
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.trim_end_matches('Z'))),
        None => (s, None),
    };
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let days = crate::budget::days_from_civil(y, m, day);
    let mut secs = days * 86_400;
    match time {
        Some(t) => {
            let mut p = t.splitn(3, ':').map(|p| p.parse::<i64>().ok());
            let (h, min) = (p.next()??, p.next()??);
            let sec = p.next().unwrap_or(Some(0))?;
            if !(0..24).contains(&h) || !(0..60).contains(&min) || !(0..61).contains(&sec) {
                return None;
            }
            secs += h * 3600 + min * 60 + sec;
        }
        None if end => secs += 86_400,
        None => {}
    }
    Some(secs * 1000)
}

/// The figures of one group (or of all of them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Group {
    /// The client, tier, model, route, or day (`2026-12-01`); `total` for
    /// the sum of all.
    pub key: String,
    /// Requests that reached admission.
    pub requests: i64,
    /// Answered and charged.
    pub ok: i64,
    /// Refused by the gateway, by reason (outcome name).
    pub refused: BTreeMap<String, i64>,
    /// Failed upstream or on the way back, by outcome name.
    pub failed: BTreeMap<String, i64>,
    /// Input tokens used.
    pub input_tokens: i64,
    /// Output tokens used.
    pub output_tokens: i64,
    /// Spend, micro-USD.
    pub spend_micro_usd: i64,
    /// What the same tokens would have cost on each route's baseline model.
    pub baseline_micro_usd: i64,
    /// `baseline_micro_usd - spend_micro_usd`: what routing saved.
    pub savings_micro_usd: i64,
    /// Summed queue wait, µs.
    pub wait_total_us: i64,
    /// Mean queue wait per request, µs.
    pub wait_mean_us: i64,
    /// Longest queue wait, µs.
    pub wait_max_us: i64,
}

impl Group {
    fn add(&mut self, s: &GroupSums) {
        self.requests += s.requests;
        if s.outcome == Outcome::Ok.as_str() {
            self.ok += s.requests;
        } else if is_refusal(&s.outcome) {
            *self.refused.entry(s.outcome.clone()).or_default() += s.requests;
        } else {
            *self.failed.entry(s.outcome.clone()).or_default() += s.requests;
        }
        self.input_tokens += s.input_tokens;
        self.output_tokens += s.output_tokens;
        self.spend_micro_usd += s.cost_micro_usd;
        self.baseline_micro_usd += s.baseline_cost_micro_usd;
        self.wait_total_us += s.queue_wait_us;
        self.wait_max_us = self.wait_max_us.max(s.max_queue_wait_us);
        self.savings_micro_usd = self.baseline_micro_usd - self.spend_micro_usd;
        self.wait_mean_us = self.wait_total_us / self.requests.max(1);
    }

    fn merge(&mut self, g: &Group) {
        self.requests += g.requests;
        self.ok += g.ok;
        for (k, v) in &g.refused {
            *self.refused.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &g.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        self.input_tokens += g.input_tokens;
        self.output_tokens += g.output_tokens;
        self.spend_micro_usd += g.spend_micro_usd;
        self.baseline_micro_usd += g.baseline_micro_usd;
        self.savings_micro_usd = self.baseline_micro_usd - self.spend_micro_usd;
        self.wait_total_us += g.wait_total_us;
        self.wait_max_us = self.wait_max_us.max(g.wait_max_us);
        self.wait_mean_us = self.wait_total_us / self.requests.max(1);
    }

    /// Refusals of every reason.
    pub fn refused_total(&self) -> i64 {
        self.refused.values().sum()
    }

    /// Failures of every kind.
    pub fn failed_total(&self) -> i64 {
        self.failed.values().sum()
    }
}

/// A report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The grouping.
    pub group_by: GroupBy,
    /// Start (ms since the epoch, inclusive).
    pub from_ms: i64,
    /// End (exclusive).
    pub to_ms: i64,
    /// One entry per group, in key order.
    pub groups: Vec<Group>,
    /// The sum of all groups.
    pub total: Group,
}

impl Report {
    /// Runs `query` on `store`.
    pub async fn run(store: &Store, query: UsageQuery) -> Result<Report, StoreError> {
        let sums = store
            .usage(query.group_by, query.from_ms, query.to_ms)
            .await?;
        Ok(Report::from_sums(query, &sums))
    }

    /// Folds the database's sums (ordered by key) into groups.
    pub fn from_sums(query: UsageQuery, sums: &[GroupSums]) -> Report {
        let mut groups: Vec<Group> = Vec::new();
        for s in sums {
            let key = match query.group_by {
                GroupBy::Day => day_name(&s.key),
                _ => s.key.clone(),
            };
            if groups.last().is_none_or(|g| g.key != key) {
                groups.push(Group {
                    key,
                    ..Group::default()
                });
            }
            groups.last_mut().expect("pushed above").add(s);
        }
        let mut total = Group {
            key: "total".into(),
            ..Group::default()
        };
        for g in &groups {
            total.merge(g);
        }
        Report {
            group_by: query.group_by,
            from_ms: query.from_ms,
            to_ms: query.to_ms,
            groups,
            total,
        }
    }

    /// The refusal reasons and failure kinds that occur, in the order of
    /// [`Outcome::ALL`] (the columns of the CSV and the table).
    fn reasons(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let seen = |f: fn(&Group) -> &BTreeMap<String, i64>| {
            Outcome::ALL
                .iter()
                .map(|o| o.as_str())
                .filter(|n| f(&self.total).contains_key(*n))
                .collect::<Vec<_>>()
        };
        (seen(|g| &g.refused), seen(|g| &g.failed))
    }

    /// CSV: a header, one line per group, then the total; money in
    /// micro-USD, waits in µs.
    pub fn to_csv(&self) -> String {
        let (refusals, failures) = self.reasons();
        let mut head = vec![
            self.group_by.as_str().to_string(),
            "requests".into(),
            "ok".into(),
        ];
        head.push("refused".into());
        head.extend(refusals.iter().map(|r| format!("refused_{r}")));
        head.push("failed".into());
        head.extend(failures.iter().map(|f| format!("failed_{f}")));
        for c in [
            "input_tokens",
            "output_tokens",
            "spend_micro_usd",
            "baseline_micro_usd",
            "savings_micro_usd",
            "wait_mean_us",
            "wait_max_us",
        ] {
            head.push(c.into());
        }
        let mut out = head.join(",");
        out.push('\n');
        for g in self.groups.iter().chain(std::iter::once(&self.total)) {
            let mut cells = vec![csv_cell(&g.key), g.requests.to_string(), g.ok.to_string()];
            cells.push(g.refused_total().to_string());
            cells.extend(
                refusals
                    .iter()
                    .map(|r| g.refused.get(*r).copied().unwrap_or(0).to_string()),
            );
            cells.push(g.failed_total().to_string());
            cells.extend(
                failures
                    .iter()
                    .map(|f| g.failed.get(*f).copied().unwrap_or(0).to_string()),
            );
            for v in [
                g.input_tokens,
                g.output_tokens,
                g.spend_micro_usd,
                g.baseline_micro_usd,
                g.savings_micro_usd,
                g.wait_mean_us,
                g.wait_max_us,
            ] {
                cells.push(v.to_string());
            }
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// A table for a terminal: dollars, milliseconds, refusals by reason.
    pub fn to_table(&self) -> String {
        let head = [
            self.group_by.as_str(),
            "requests",
            "ok",
            "refused",
            "failed",
            "tokens in",
            "tokens out",
            "spend $",
            "baseline $",
            "saved $",
            "wait mean ms",
            "wait max ms",
        ];
        let mut lines: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
        for g in self.groups.iter().chain(std::iter::once(&self.total)) {
            let reasons = |m: &BTreeMap<String, i64>, total: i64| {
                if m.is_empty() {
                    total.to_string()
                } else {
                    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    format!("{total} ({})", parts.join(", "))
                }
            };
            lines.push(vec![
                g.key.clone(),
                g.requests.to_string(),
                g.ok.to_string(),
                reasons(&g.refused, g.refused_total()),
                reasons(&g.failed, g.failed_total()),
                g.input_tokens.to_string(),
                g.output_tokens.to_string(),
                dollars(g.spend_micro_usd),
                dollars(g.baseline_micro_usd),
                dollars(g.savings_micro_usd),
                millis(g.wait_mean_us),
                millis(g.wait_max_us),
            ]);
        }
        let widths: Vec<usize> = (0..head.len())
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let n = lines.len();
        for (i, line) in lines.iter().enumerate() {
            if i == n - 1 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                out.push_str(rule.join("  ").trim_end());
                out.push('\n');
            }
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (s, w))| {
                    if c == 0 || c == 3 || c == 4 {
                        format!("{s:<w$}")
                    } else {
                        format!("{s:>w$}")
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// A day number (since 1970-01-01) as `YYYY-MM-DD`.
fn day_name(key: &str) -> String {
    match key.parse::<i64>() {
        Ok(day) => {
            let (y, m, d) = crate::budget::civil_from_days(day);
            format!("{y:04}-{m:02}-{d:02}")
        }
        Err(_) => key.to_string(),
    }
}

/// Micro-USD as dollars with six decimals, exactly.
pub fn dollars(micro: i64) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let m = micro.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

fn millis(us: i64) -> String {
    format!("{}.{:01}", us / 1000, (us % 1000) / 100)
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(key: &str, outcome: &str, n: i64, cost: i64) -> GroupSums {
        GroupSums {
            key: key.into(),
            outcome: outcome.into(),
            requests: n,
            input_tokens: 10 * n,
            output_tokens: 20 * n,
            cost_micro_usd: cost,
            baseline_cost_micro_usd: cost * 2,
            queue_wait_us: 1000 * n,
            max_queue_wait_us: 3000,
        }
    }

    #[test]
    fn groups_fold_outcomes_and_the_total_sums_them() {
        let q = UsageQuery::parse(None, None, Some("client")).unwrap();
        let r = Report::from_sums(
            q,
            &[
                sums("a,b", "budget_exceeded", 2, 0),
                sums("a,b", "ok", 3, 1_500_000),
                sums("z", "rate_limited", 1, 0),
                sums("z", "upstream_error", 4, 0),
            ],
        );
        assert_eq!(r.groups.len(), 2);
        let a = &r.groups[0];
        assert_eq!((a.requests, a.ok, a.refused_total()), (5, 3, 2));
        assert_eq!(a.savings_micro_usd, 1_500_000);
        assert_eq!(r.total.requests, 10);
        assert_eq!(r.total.failed["upstream_error"], 4);
        assert_eq!(r.total.spend_micro_usd, 1_500_000);
        let csv = r.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "client,requests,ok,refused,refused_rate_limited,refused_budget_exceeded,failed,failed_upstream_error,input_tokens,output_tokens,spend_micro_usd,baseline_micro_usd,savings_micro_usd,wait_mean_us,wait_max_us"
        );
        assert_eq!(
            lines[1],
            "\"a,b\",5,3,2,0,2,0,0,50,100,1500000,3000000,1500000,1000,3000"
        );
        assert!(
            lines[3].starts_with("total,10,3,3,1,2,4,4,"),
            "{}",
            lines[3]
        );
        let table = r.to_table();
        assert!(table.contains("1.500000"), "{table}");
        assert!(table.contains("budget_exceeded 2"), "{table}");
    }

    #[test]
    fn times_parse_as_utc_and_bad_ones_say_why() {
        let q = UsageQuery::parse(Some("2026-12-01"), Some("2026-12-01"), Some("day")).unwrap();
        assert_eq!(q.from_ms, 1_796_083_200_000);
        assert_eq!(q.to_ms - q.from_ms, 86_400_000);
        let t =
            UsageQuery::parse(Some("2026-12-01T13:30:00Z"), Some("1796140800000"), None).unwrap();
        assert_eq!(t.from_ms, 1_796_083_200_000 + 13 * 3_600_000 + 30 * 60_000);
        assert_eq!(t.group_by, GroupBy::Client);
        let e = UsageQuery::parse(Some("yesterday"), None, None).unwrap_err();
        assert!(e.contains("`from` \"yesterday\""), "{e}");
        let e = UsageQuery::parse(None, None, Some("week")).unwrap_err();
        assert!(e.contains("client, tier, model, route, day"), "{e}");
        let e = UsageQuery::parse(Some("2026-12-02"), Some("2026-12-01T00:00Z"), None).unwrap_err();
        assert!(e.contains("must be after"), "{e}");
        assert_eq!(day_name("20423"), "2025-12-01");
        assert_eq!(dollars(-1_234_567), "-1.234567");
    }
}
