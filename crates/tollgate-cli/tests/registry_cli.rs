//! `tollgate clients …` and `tollgate keys …`, the real binary against a
//! started gateway (`tollgate serve`, a SQLite registry, a simulated
//! upstream): a client made, listed, shown and disabled; a key issued
//! (printed once, used), listed by its ends, rotated and revoked; a retried
//! issue with an idempotency key prints the same key; the gateway's
//! refusals are the command's errors, exit status 1.

mod common;

use std::process::Command;

use common::{Dir, Gateway, ADMIN};
use serde_json::{json, Value};
use tollgate_gateway::auth::hash_key;
use tollgate_gateway::config::{AdminRole, AdminTokenConfig};

const VIEWER: &str = "viewer-token";

/// Runs `tollgate ARGS` against `url` with `token`: (exit ok, stdout, stderr).
fn tollgate(url: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_URL", url)
        .env("TOLLGATE_ADMIN_TOKEN", token)
        .output()
        .expect("the tollgate binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`tollgate`] as the admin, which must succeed; its stdout.
fn ok(url: &str, args: &[&str]) -> String {
    let (success, out, err) = tollgate(url, ADMIN, args);
    assert!(success, "tollgate {args:?} failed: {err}");
    out
}

fn json_of(url: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(url, &args)).expect("--json prints JSON")
}

async fn chat(c: &reqwest::Client, url: &str, key: &str) -> u16 {
    c.post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_keys_are_managed_from_the_command_line() {
    let dir = Dir::new("registry-cli");
    let sim = common::instant_sim().await;
    let mut config = common::config(
        &sim.base_url(),
        &[
            ("pro", common::tier(10_000, None)),
            ("free", common::tier(100, None)),
        ],
    );
    config.ledger.url = dir.0.join("ledger.sqlite").display().to_string();
    config.admin.tokens = vec![AdminTokenConfig {
        name: "viewer".into(),
        sha256: hash_key(VIEWER),
        role: AdminRole::ReadOnly,
    }];
    let gw = Gateway::start(&dir.0, "gw", config).await;
    let url = gw.url.as_str();
    let c = common::client();

    // Clients: made, listed (filtered), shown.
    let out = ok(url, &["clients", "create", "acme", "--tier", "pro"]);
    assert!(out.contains("acme") && out.contains("pro"), "{out}");
    ok(url, &["clients", "create", "beta", "--tier", "free"]);
    let out = ok(url, &["clients", "list", "--tier", "pro"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("TIER"),
        "{out}"
    );
    let ids: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["acme", "pro"], "{out}");
    let page = json_of(url, &["clients", "list", "--limit", "1"]);
    assert_eq!(page["clients"].as_array().unwrap().len(), 1);
    assert_eq!(page["next"], "acme");
    let all = json_of(url, &["clients", "list", "--limit", "1", "--all"]);
    let every: Vec<&str> = all["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(every, ["acme", "beta", "free", "pro"]);
    assert_eq!(json_of(url, &["clients", "show", "beta"])["tier"], "free");

    // A key issued: printed once, works; listed by its ends only.
    let issued = json_of(
        url,
        &[
            "keys",
            "issue",
            "acme",
            "--name",
            "ci",
            "--idempotency-key",
            "0b6f-cli-retry",
        ],
    );
    let key = issued["key"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    assert_eq!(chat(&c, url, &key).await, 200);
    let again = json_of(
        url,
        &[
            "keys",
            "issue",
            "acme",
            "--name",
            "ci",
            "--idempotency-key",
            "0b6f-cli-retry",
        ],
    );
    assert_eq!(again["key"], issued["key"], "a retry prints the same key");
    let listed = ok(url, &["keys", "list", "acme"]);
    assert!(
        listed.contains(&id) && listed.contains(issued["shown"].as_str().unwrap()),
        "{listed}"
    );
    assert!(
        !listed.contains(&key),
        "the listing shows the key: {listed}"
    );
    assert_eq!(listed.lines().count(), 2, "one key: {listed}");
    assert!(ok(url, &["keys", "show", &id]).contains("ci"));

    // Rotated without overlap: only the new key works; revoked: none.
    let out = ok(url, &["keys", "rotate", &id, "--overlap", "0"]);
    let new_key = out
        .split_whitespace()
        .find(|w| w.starts_with("tg-"))
        .expect("rotate prints the new key")
        .to_string();
    assert_ne!(new_key, key);
    assert_eq!(chat(&c, url, &new_key).await, 200);
    assert_eq!(chat(&c, url, &key).await, 401);
    let new_id = json_of(url, &["keys", "list", "acme"])["keys"][1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ok(url, &["keys", "revoke", &new_id]).contains("revoked"));
    assert_eq!(chat(&c, url, &new_key).await, 401);

    // Disabled: its keys refused; enabled: served again.
    let fresh = json_of(url, &["keys", "issue", "acme"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ok(url, &["clients", "disable", "acme"]).contains("disabled"));
    assert_eq!(chat(&c, url, &fresh).await, 401);
    assert_eq!(json_of(url, &["clients", "show", "acme"])["disabled"], true);
    let out = ok(url, &["clients", "list", "--disabled"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    ok(url, &["clients", "enable", "acme"]);
    assert_eq!(chat(&c, url, &fresh).await, 200);
    ok(url, &["clients", "set-tier", "acme", "free"]);
    assert_eq!(json_of(url, &["clients", "show", "acme"])["tier"], "free");

    // The gateway's refusals are the command's errors.
    for (token, args, says) in [
        (
            ADMIN,
            vec!["clients", "create", "acme", "--tier", "pro"],
            "409 conflict",
        ),
        (
            ADMIN,
            vec!["clients", "create", "x", "--tier", "gold"],
            "No tier \"gold\"",
        ),
        (ADMIN, vec!["keys", "revoke", "key_nope"], "404"),
        (
            VIEWER,
            vec!["clients", "disable", "beta"],
            "403 read_only_token",
        ),
        ("wrong", vec!["clients", "list"], "401"),
        (ADMIN, vec!["clients", "create", "y"], "needs --tier"),
        ("", vec!["clients", "list"], "TOLLGATE_ADMIN_TOKEN"),
    ] {
        let (success, _, err) = tollgate(url, token, &args);
        assert!(!success, "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A read-only token reads.
    let (success, out, err) = tollgate(url, VIEWER, &["clients", "list"]);
    assert!(success && out.contains("beta"), "{err}");
    let (success, _, err) = tollgate("http://127.0.0.1:1", ADMIN, &["clients", "list"]);
    assert!(!success && err.contains("is the gateway running"), "{err}");
}
