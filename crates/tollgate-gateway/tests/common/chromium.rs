//! A real headless Chromium, driven through its DevTools protocol over a
//! websocket: start it on a fresh profile, open a page, evaluate script in
//! it, take screenshots. Dropping it kills the process and removes the
//! profile. `bash scripts/test` installs Chromium (Debian package
//! `chromium`) when it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The browser binary: `$CHROMIUM`, else `chromium` on the PATH.
fn binary() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// A running headless Chromium with one page.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    socket: Socket,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium on an empty profile, a window of `width` × `height`.
    /// A start whose DevTools port does not appear within 30 s (seen once
    /// in a suite run on an idle machine, for two of four browsers started
    /// together) is stopped and tried again on a new profile, three times
    /// at most; the last failure shows what Chromium wrote to stderr.
    pub async fn start(width: u32, height: u32) -> Browser {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Browser::launch(width, height).await {
                Ok(b) => return b,
                Err(e) => {
                    eprintln!("{e}");
                    failures.push(e);
                }
            }
        }
        panic!("Chromium did not start: {}", failures.join("; "));
    }

    /// One start of Chromium: the browser, or why it did not open its
    /// DevTools port within 30 s (with the tail of its stderr).
    async fn launch(width: u32, height: u32) -> Result<Browser, String> {
        let profile = std::env::temp_dir().join(format!(
            "tollgate-chromium-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&profile).expect("profile directory");
        // Beside the profile, not in it: Chromium's files come and go there.
        let log_path = profile.with_extension("stderr");
        let log = std::fs::File::create(&log_path).expect("Chromium's log file");
        // The background-networking flags keep Chromium off the network,
        // which this machine does not reach: without them it fails.
        let child = Command::new(binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install Chromium (Debian package chromium; bash scripts/test does) or set $CHROMIUM",
                    binary()
                )
            });
        // Stopped and its profile removed if the start fails below.
        let mut starting = Starting(Some((child, profile.clone())));
        // Chromium writes the port it chose into the profile.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let _ = std::fs::remove_file(&log_path);
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(format!(
                    "Chromium did not open its DevTools port within 30 s (stderr, last lines first: {tail})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let list: Value = crate::common::http()
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
            .expect("DevTools reachable")
            .json()
            .await
            .expect("DevTools target list");
        let ws = list
            .as_array()
            .and_then(|l| l.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let (socket, _) = tokio_tungstenite::connect_async(ws.as_str())
            .await
            .expect("DevTools websocket");
        let (child, profile) = starting.0.take().expect("held until here");
        let mut b = Browser {
            child,
            profile,
            socket,
            next_id: 0,
        };
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        // Chromium keeps writing to it; unlinked, it goes with the process.
        let _ = std::fs::remove_file(&log_path);
        Ok(b)
    }

    /// Sends one DevTools command and returns its result (events in between
    /// are skipped); an error answer fails the test.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}"),
        }
    }

    /// Sends one DevTools command and returns its result, or the error it
    /// was answered with.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(Message::Text(msg.into()))
            .await
            .expect("DevTools send");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
                .expect("DevTools socket open")
                .expect("DevTools message");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"] == id {
                return match v.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value; a script error fails the test.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "script failed: {expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page (read every 50 ms, at
    /// most `within`); panics with `what` otherwise.
    pub async fn wait_for(&mut self, expression: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            // A navigation in progress destroys the context ("Inspected
            // target navigated or closed"): try again.
            let r = self
                .try_call(
                    "Runtime.evaluate",
                    json!({"expression": format!("Boolean({expression})"), "returnByValue": true}),
                )
                .await;
            match &r {
                Ok(r) if r["result"]["value"] == true => return,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{expression}` not true within {within:?} (last answer {r:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            &format!(
                "location.href === {} && document.readyState === 'complete'",
                json!(url)
            ),
            Duration::from_secs(15),
            "page load",
        )
        .await;
    }

    /// Signs in to the dashboard at `url` through its form with `token` and
    /// waits for the page to draw its first figures.
    pub async fn sign_in(&mut self, url: &str, token: &str) {
        self.open(&format!("{url}/dashboard")).await;
        self.eval(&format!(
            "document.getElementById('token').value = {}; document.getElementById('login').requestSubmit(); true",
            json!(token)
        ))
        .await;
        self.wait_for(
            "document.body && document.body.dataset.ready === '1'",
            Duration::from_secs(15),
            "the dashboard after signing in",
        )
        .await;
    }

    /// A PNG of the whole page, at the window's width.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}

/// A Chromium whose start has not finished: killed if it never does.
struct Starting(Option<(Child, PathBuf)>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some((mut child, profile)) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where a test's screenshot goes: `$TOLLGATE_SCREENSHOTS/NAME` when set
/// (`TOLLGATE_SCREENSHOTS=docs` refreshes the ones in the docs), else the
/// test's temporary directory.
pub fn keep_screenshot(name: &str, png: &[u8]) -> PathBuf {
    let dir = match std::env::var("TOLLGATE_SCREENSHOTS") {
        Ok(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../..")
                    .join(d)
            }
        }
        Err(_) => PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    path
}
