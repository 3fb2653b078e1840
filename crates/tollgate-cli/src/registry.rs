//! `tollgate clients …` and `tollgate keys …`: the registry's clients and
//! keys through a running gateway's admin API (see docs/ADMIN.md).

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin_api::{cell, table, AdminApi, Parsed, FLAGS};

pub const CLIENTS_USAGE: &str =
    "usage: tollgate clients list [--tier T] [--org O] [--disabled | --enabled]
                             [--limit N] [--after ID] [--all]
       tollgate clients create ID --tier T
       tollgate clients show ID
       tollgate clients set-tier ID TIER
       tollgate clients disable ID
       tollgate clients enable ID

  The gateway's clients, by id (list shows one page; --all every page).
  Disabling a client refuses its keys on every instance within a second.";

pub const KEYS_USAGE: &str = "usage: tollgate keys list CLIENT
       tollgate keys issue CLIENT [--name N] [--expires-in SECS] [--models M,M]
                                  [--idempotency-key K]
       tollgate keys show KEY_ID
       tollgate keys rotate KEY_ID [--overlap SECS]
       tollgate keys revoke KEY_ID

  A client's API keys. issue and rotate print the new key once: the gateway
  keeps only its hash. --idempotency-key (a UUID) makes a retried issue
  print the same key instead of issuing a second.";

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value after flag `name`.
fn value(it: &mut std::slice::Iter<'_, String>, name: &str, usage: &str) -> Result<String> {
    it.next()
        .cloned()
        .with_context(|| format!("{name} needs a value\n\n{usage}"))
}

/// The one positional argument `what` of a subcommand, and its flags.
fn one<'a>(rest: &'a [String], what: &str, usage: &str) -> Result<(&'a str, &'a [String])> {
    match rest.split_first() {
        Some((first, flags)) if !first.starts_with("--") => Ok((first, flags)),
        _ => bail!("give the {what}\n\n{usage}"),
    }
}

/// The subcommand and the API with the rest of its arguments; `None`
/// once the help was printed.
fn command<'a>(args: &'a [String], usage: &str) -> Result<Option<(&'a str, Parsed)>> {
    match args.first().map(String::as_str) {
        None | Some("--help" | "-h" | "help") => {
            println!("{usage}");
            Ok(None)
        }
        Some(cmd) => Ok(Some((cmd, AdminApi::from_args(&args[1..], usage)?))),
    }
}

fn full_usage(usage: &str) -> String {
    format!("{usage}\n\n{FLAGS}")
}

fn print(json: bool, v: &Value, text: impl FnOnce(&Value) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", text(v));
    }
    Ok(())
}

fn client_rows(clients: &Value) -> Vec<Vec<String>> {
    clients
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            vec![
                cell(&c["id"]),
                cell(&c["tier"]),
                cell(&c["org"]),
                cell(&c["source"]),
                if c["disabled"] == true {
                    "disabled"
                } else {
                    "active"
                }
                .into(),
                cell(&c["spend"]["today_usd"]),
            ]
        })
        .collect()
}

const CLIENT_HEADER: &[&str] = &["ID", "TIER", "ORG", "SOURCE", "STATE", "TODAY_USD"];
const KEY_HEADER: &[&str] = &[
    "ID",
    "SHOWN",
    "NAME",
    "MODELS",
    "EXPIRES_AT_MS",
    "REVOKED_AT_MS",
];

fn key_rows(keys: &[Value]) -> Vec<Vec<String>> {
    keys.iter()
        .map(|k| {
            vec![
                cell(&k["id"]),
                cell(&k["shown"]),
                cell(&k["name"]),
                cell(&k["models"]),
                cell(&k["expires_at_ms"]),
                cell(&k["revoked_at_ms"]),
            ]
        })
        .collect()
}

/// `tollgate clients …`.
pub async fn clients(args: &[String]) -> Result<()> {
    let usage = full_usage(CLIENTS_USAGE);
    let Some((cmd, p)) = command(args, &usage)? else {
        return Ok(());
    };
    let (api, json) = (&p.api, p.json);
    match cmd {
        "list" => {
            let mut query = Vec::new();
            let mut after: Option<String> = None;
            let mut all = false;
            let mut it = p.rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--tier" => query.push(format!("tier={}", encode(&value(&mut it, a, &usage)?))),
                    "--org" => query.push(format!("org={}", encode(&value(&mut it, a, &usage)?))),
                    "--limit" => {
                        query.push(format!("limit={}", encode(&value(&mut it, a, &usage)?)))
                    }
                    "--after" => after = Some(value(&mut it, a, &usage)?),
                    "--disabled" => query.push("disabled=true".into()),
                    "--enabled" => query.push("disabled=false".into()),
                    "--all" => all = true,
                    other => bail!("unknown option {other:?} for clients list\n\n{usage}"),
                }
            }
            let mut pages = Vec::new();
            loop {
                let mut q = query.clone();
                if let Some(a) = &after {
                    q.push(format!("after={}", encode(a)));
                }
                let page = api
                    .call(
                        Method::GET,
                        &format!("/admin/clients?{}", q.join("&")),
                        None,
                        &[],
                    )
                    .await?;
                after = page["next"].as_str().map(str::to_string);
                pages.push(page);
                if !all || after.is_none() {
                    break;
                }
            }
            let clients: Vec<Value> = pages
                .iter()
                .flat_map(|p| p["clients"].as_array().cloned().unwrap_or_default())
                .collect();
            let v = json!({"clients": clients, "next": after});
            print(json, &v, |v| {
                let mut out = table(CLIENT_HEADER, &client_rows(&v["clients"]));
                if let Some(next) = v["next"].as_str() {
                    out.push_str(&format!("more: --after {next} (or --all)\n"));
                }
                out
            })
        }
        "create" => {
            let (id, flags) = one(&p.rest, "client id", &usage)?;
            let mut tier = None;
            let mut it = flags.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--tier" => tier = Some(value(&mut it, a, &usage)?),
                    other => bail!("unknown option {other:?} for clients create\n\n{usage}"),
                }
            }
            let tier = tier.with_context(|| format!("clients create needs --tier\n\n{usage}"))?;
            let v = api
                .call(
                    Method::POST,
                    "/admin/clients",
                    Some(&json!({"id": id, "tier": tier})),
                    &[],
                )
                .await?;
            print(json, &v, |v| {
                format!("client {} on tier {}\n", cell(&v["id"]), cell(&v["tier"]))
            })
        }
        "show" => {
            let (id, _) = one(&p.rest, "client id", &usage)?;
            let v = api
                .call(Method::GET, &format!("/admin/clients/{id}"), None, &[])
                .await?;
            print(json, &v, |v| {
                table(CLIENT_HEADER, &client_rows(&json!([v])))
            })
        }
        "set-tier" => {
            let [id, tier] = p.rest.as_slice() else {
                bail!("clients set-tier needs ID TIER\n\n{usage}");
            };
            let v = api
                .call(
                    Method::PATCH,
                    &format!("/admin/clients/{id}"),
                    Some(&json!({"tier": tier})),
                    &[],
                )
                .await?;
            print(json, &v, |v| {
                format!("client {} on tier {}\n", cell(&v["id"]), cell(&v["tier"]))
            })
        }
        cmd @ ("disable" | "enable") => {
            let (id, _) = one(&p.rest, "client id", &usage)?;
            let body = json!({"disabled": cmd == "disable"});
            let v = api
                .call(
                    Method::PATCH,
                    &format!("/admin/clients/{id}"),
                    Some(&body),
                    &[],
                )
                .await?;
            print(json, &v, |v| {
                let state = if v["disabled"] == true {
                    "disabled: its keys are refused"
                } else {
                    "enabled"
                };
                format!("client {} {state}\n", cell(&v["id"]))
            })
        }
        other => bail!("unknown clients command {other:?}\n\n{usage}"),
    }
}

fn issued_text(v: &Value) -> String {
    format!(
        "key {} for client {}: {}\n(shown once: the gateway keeps only its hash)\n",
        cell(&v["id"]),
        cell(&v["client"]),
        cell(&v["key"])
    )
}

/// `tollgate keys …`.
pub async fn keys(args: &[String]) -> Result<()> {
    let usage = full_usage(KEYS_USAGE);
    let Some((cmd, p)) = command(args, &usage)? else {
        return Ok(());
    };
    let (api, json) = (&p.api, p.json);
    match cmd {
        "list" => {
            let (client, _) = one(&p.rest, "client id", &usage)?;
            let mut keys = Vec::new();
            let mut after = String::new();
            loop {
                let page = api
                    .call(
                        Method::GET,
                        &format!(
                            "/admin/clients/{client}/keys?limit=1000&after={}",
                            encode(&after)
                        ),
                        None,
                        &[],
                    )
                    .await?;
                keys.extend(page["keys"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => after = next.to_string(),
                    None => break,
                }
            }
            let v = json!({"client": client, "keys": keys});
            print(json, &v, |_| table(KEY_HEADER, &key_rows(&keys)))
        }
        "issue" => {
            let (client, flags) = one(&p.rest, "client id", &usage)?;
            let mut body = serde_json::Map::new();
            let mut idem = None;
            let mut it = flags.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--name" => {
                        body.insert("name".into(), json!(value(&mut it, a, &usage)?));
                    }
                    "--expires-in" => {
                        let secs: u64 = value(&mut it, a, &usage)?
                            .parse()
                            .context("--expires-in takes whole seconds")?;
                        body.insert("expires_in_secs".into(), json!(secs));
                    }
                    "--models" => {
                        let models: Vec<String> = value(&mut it, a, &usage)?
                            .split(',')
                            .map(|m| m.trim().to_string())
                            .filter(|m| !m.is_empty())
                            .collect();
                        body.insert("models".into(), json!(models));
                    }
                    "--idempotency-key" => idem = Some(value(&mut it, a, &usage)?),
                    other => bail!("unknown option {other:?} for keys issue\n\n{usage}"),
                }
            }
            let headers: Vec<(&str, &str)> = idem
                .iter()
                .map(|k| ("idempotency-key", k.as_str()))
                .collect();
            let v = api
                .call(
                    Method::POST,
                    &format!("/admin/clients/{client}/keys"),
                    Some(&Value::Object(body)),
                    &headers,
                )
                .await?;
            print(json, &v, issued_text)
        }
        "show" => {
            let (id, _) = one(&p.rest, "key id", &usage)?;
            let v = api
                .call(Method::GET, &format!("/admin/keys/{id}"), None, &[])
                .await?;
            print(json, &v, |v| {
                table(KEY_HEADER, &key_rows(std::slice::from_ref(v)))
            })
        }
        "rotate" => {
            let (id, flags) = one(&p.rest, "key id", &usage)?;
            let mut overlap = 3600u64;
            let mut it = flags.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--overlap" => {
                        overlap = value(&mut it, a, &usage)?
                            .parse()
                            .context("--overlap takes whole seconds")?
                    }
                    other => bail!("unknown option {other:?} for keys rotate\n\n{usage}"),
                }
            }
            let v = api
                .call(
                    Method::POST,
                    &format!("/admin/keys/{id}/rotate"),
                    Some(&json!({"overlap_secs": overlap})),
                    &[],
                )
                .await?;
            print(json, &v, |v| {
                format!(
                    "{}(key {id} keeps working for {overlap} s)\n",
                    issued_text(v)
                )
            })
        }
        "revoke" => {
            let (id, _) = one(&p.rest, "key id", &usage)?;
            let v = api
                .call(Method::DELETE, &format!("/admin/keys/{id}"), None, &[])
                .await?;
            print(json, &v, |v| format!("key {} revoked\n", cell(&v["id"])))
        }
        other => bail!("unknown keys command {other:?}\n\n{usage}"),
    }
}
