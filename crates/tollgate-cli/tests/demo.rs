//! `tollgate serve --demo` as a person runs it: the real binary, its
//! printed banner read line by line, and the key it issued at start used
//! as printed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The demo process, stopped when dropped, with its temporary ledger.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = self.0.id();
        let _ = self.0.kill();
        let _ = self.0.wait();
        for end in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(
                std::env::temp_dir().join(format!("tollgate-demo-ledger-{pid}.sqlite{end}")),
            );
        }
    }
}

/// The word after `after` in `line`.
fn word_after<'a>(line: &'a str, after: &str) -> Option<&'a str> {
    let rest = &line[line.find(after)? + after.len()..];
    rest.split_whitespace().next()
}

#[tokio::test]
async fn the_demo_issues_a_key_at_start_and_the_printed_key_gets_a_200() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the tollgate binary runs");
    let stdout = child.stdout.take().unwrap();
    let _demo = Demo(child);
    // Read the banner on a thread: a demo that prints nothing fails the
    // test after 60 s instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let (mut url, mut key, mut curl) = (None, None, None);
    while url.is_none() || key.is_none() || curl.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the demo's banner stopped short:\n{}", printed.join("\n")));
        if url.is_none() {
            url = word_after(&line, "tollgate demo gateway on ").map(str::to_string);
        }
        if line.trim_start().starts_with("acme-new") {
            key = word_after(&line, " key ").map(str::to_string);
        }
        if let Some(k) = &key {
            if line.contains("curl") && line.contains(&format!("Bearer {k}")) {
                curl = Some(line.clone());
            }
        }
        printed.push(line);
    }
    let (url, key, curl) = (url.unwrap(), key.unwrap(), curl.unwrap());
    assert!(
        key.starts_with("tg-") && key.len() == 43,
        "an issued key: {key}"
    );
    assert!(
        curl.contains(&format!("{url}/v1/chat/completions")),
        "{curl}"
    );
    let banner = printed.join("\n");
    assert!(banner.contains("shown this once"), "{banner}");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    // The request the printed curl line makes.
    let body: serde_json::Value = serde_json::from_str(
        curl.split("-d '")
            .nth(1)
            .and_then(|r| r.split('\'').next())
            .expect("the curl line's body"),
    )
    .expect("the curl line's body is JSON");
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("the demo gateway answers");
    let status = r.status();
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );
    // The registry lists the key by its ends, never whole.
    let keys: serde_json::Value = c
        .get(format!("{url}/admin/clients/acme-new/keys"))
        .bearer_auth(tollgate_gateway::demo::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = keys["keys"][0]["shown"].as_str().unwrap_or_default();
    assert!(listed.ends_with(&key[key.len() - 4..]), "{keys}");
    assert!(!keys.to_string().contains(&key), "{keys}");
    // A key that was not issued (its last character changed) is refused.
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let wrong = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(format!("{}{last}", &key[..key.len() - 1]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}
