//! The ready-made monitoring in deploy/: the Prometheus alert rules pass
//! `promtool check rules` and their own unit tests (`promtool test rules`),
//! the Grafana dashboard's queries are valid PromQL, and every metric either
//! names is one a real gateway exports on `/metrics`, so neither can go
//! stale silently when a metric is renamed. `bash scripts/test` installs
//! promtool (Debian package `prometheus`) when it is missing.

mod common;
#[path = "common/scrape.rs"]
mod scrape;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

/// Runs promtool with `args`; fails the test with its output unless it
/// succeeds.
fn promtool(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): install it (Debian package prometheus; bash scripts/test does)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Every query of the Grafana dashboard.
fn grafana_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/tollgate.json")).expect("tollgate.json");
    let dash: Value = serde_json::from_str(&text).expect("tollgate.json is JSON");
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], &mut out);
    out
}

/// Every `tollgate_…` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("tollgate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy("prometheus");
    let checked = promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_grafana_queries_are_valid_promql() {
    let queries = grafana_queries();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    // Each query as a recording rule, with Grafana's variables filled in:
    // promtool parses every one.
    let mut rules = String::from("groups:\n  - name: grafana\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: grafana:panel_query_{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("tollgate-grafana-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("queries.yml"), rules).unwrap();
    let out = promtool(&["check", "rules", "queries.yml"], &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_monitoring_names_is_one_the_gateway_exports() {
    let mut pro = pro_tier();
    pro.daily_budget_usd = Some(1.0);
    let (_sim, gw, c) = start(model(1000, 1_000_000), &[("pro", pro)]).await;
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("hello", 8)).await.status(),
        200
    );
    let exported = scrape::Scrape::of(&c, &gw).await.names();
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let alert_names = metric_names(&alerts);
    let grafana_names = metric_names(&grafana_queries().join("\n"));
    assert!(alert_names.len() >= 5, "{alert_names:?}");
    assert!(grafana_names.len() >= 15, "{grafana_names:?}");
    for (what, names) in [
        ("alerts.yml", &alert_names),
        ("tollgate.json", &grafana_names),
    ] {
        let unknown: Vec<&String> = names.iter().filter(|n| !exported.contains(n)).collect();
        assert!(
            unknown.is_empty(),
            "{what} uses metrics the gateway does not export: {unknown:?}; it exports {exported:?}"
        );
    }
    // The check itself can fail: a misspelt name is caught.
    assert!(!exported.contains(&"tollgate_request_total".to_string()));
}
