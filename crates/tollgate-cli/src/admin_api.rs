//! A client of the gateway's admin API for the commands that manage the
//! registry (`tollgate clients`, `tollgate keys`): where the gateway is and
//! which admin token to send, from flags or the environment, and each
//! answer as JSON or an error that says what the gateway refused.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where the gateway is when neither `--url` nor `TOLLGATE_URL` says.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The environment variable of the gateway's URL.
pub const URL_ENV: &str = "TOLLGATE_URL";
/// The environment variable of the admin token.
pub const TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";
/// The longest an admin request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The flags every admin command takes.
pub const FLAGS: &str =
    "  --url URL        the gateway (default $TOLLGATE_URL, else http://127.0.0.1:8080)
  --token TOKEN    an admin token (default $TOLLGATE_ADMIN_TOKEN; the
                   environment keeps it out of the process list)
  --json           print the gateway's JSON answer instead of a table";

/// The admin API of one gateway.
pub struct AdminApi {
    url: String,
    token: String,
    http: reqwest::Client,
}

/// The arguments left once `--url`, `--token` and `--json` are taken out.
pub struct Parsed {
    /// The API.
    pub api: AdminApi,
    /// `--json` was given.
    pub json: bool,
    /// Everything else, in order.
    pub rest: Vec<String>,
}

impl AdminApi {
    /// Takes `--url`, `--token` and `--json` out of `args`.
    pub fn from_args(args: &[String], usage: &str) -> Result<Parsed> {
        let mut url = std::env::var(URL_ENV).ok();
        let mut token = std::env::var(TOKEN_ENV).ok();
        let mut json = false;
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--url" => url = Some(it.next().context("--url needs a URL")?.clone()),
                "--token" => token = Some(it.next().context("--token needs a token")?.clone()),
                "--json" => json = true,
                _ => rest.push(a.clone()),
            }
        }
        let url = url.unwrap_or_else(|| DEFAULT_URL.into());
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--url {url:?}: give the gateway's http:// or https:// URL");
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            bail!("no admin token: set {TOKEN_ENV} (or give --token)\n\n{usage}");
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(TIMEOUT).build()?;
        Ok(Parsed {
            api: AdminApi {
                url: url.trim_end_matches('/').to_string(),
                token,
                http,
            },
            json,
            rest,
        })
    }

    /// Sends `method path` with `body` (and `headers`); the answer's JSON,
    /// or the gateway's error as an error.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        let mut r = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(b)?);
        }
        let r = r
            .send()
            .await
            .with_context(|| format!("{method} {url}: is the gateway running there?"))?;
        let status = r.status();
        let text = r.text().await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(v);
        }
        let e = &v["error"];
        match (e["code"].as_str(), e["message"].as_str()) {
            (Some(code), Some(message)) => {
                bail!("{method} {path}: {} {code}: {message}", status.as_u16())
            }
            _ => bail!("{method} {path}: {} {v}", status.as_u16()),
        }
    }
}

/// The table of `rows` under `header`, columns padded to their widest.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// A JSON value as a table cell (`-` for none).
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_its_columns_to_the_widest_cell() {
        let t = table(
            &["ID", "TIER"],
            &[
                vec!["acme".into(), "pro".into()],
                vec!["b".into(), "-".into()],
            ],
        );
        assert_eq!(t, "ID    TIER\nacme  pro\nb     -\n");
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a,b");
        assert_eq!(cell(&Value::Null), "-");
    }
}
