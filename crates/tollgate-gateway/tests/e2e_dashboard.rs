//! The dashboard, end to end: a real gateway in front of a simulated
//! upstream, real traffic, and a real headless Chromium that signs in
//! through the form and reads the page. What the page shows is held against
//! what the same gateway reports on `/metrics` and the admin API.

#[path = "common/chromium.rs"]
mod chromium;
mod common;
#[path = "common/scrape.rs"]
mod scrape;

use std::time::{Duration, Instant};

use chromium::{keep_screenshot, Browser};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_gateway::auth::hash_key;
use tollgate_gateway::config::ClientConfig;

const REQUESTS: &str = "tollgate_requests_total";
const REFUSED: &str = "rate_limited|budget_exceeded";

/// Types `q` into the client search and waits for the page to show its
/// answer.
async fn search(b: &mut Browser, q: &str) {
    b.eval(&format!(
        "{{ const s = document.getElementById('search'); s.value = {}; s.dispatchEvent(new Event('input')); }} true",
        json!(q)
    ))
    .await;
    b.wait_for(
        &format!("document.body.dataset.query === {}", json!(q)),
        Duration::from_secs(10),
        "the search's answer",
    )
    .await;
}

/// Every `[data-field]` cell of the rows matching `rows`, keyed by the
/// row's `key` attribute: `{row: {field: {text, value, limit, budget}}}`.
async fn table(b: &mut Browser, rows: &str, key: &str) -> Value {
    b.eval(&format!(
        r#"(() => {{
            const out = {{}};
            for (const tr of document.querySelectorAll({rows})) {{
                const row = {{}};
                for (const td of tr.querySelectorAll('[data-field]')) {{
                    row[td.dataset.field] = {{ text: td.textContent, value: td.dataset.value ?? null,
                        limit: td.dataset.limit ?? null, budget: td.dataset.budget ?? null }};
                }}
                out[tr.getAttribute({key})] = row;
            }}
            return out;
        }})()"#,
        rows = json!(rows),
        key = json!(key)
    ))
    .await
}

fn value(cell: &Value) -> f64 {
    cell["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no value in {cell}"))
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {cell}"))
}

/// Waits until `/metrics` counts `n` requests of `tier`.
async fn counted(c: &reqwest::Client, gw: &tollgate_gateway::RunningGateway, tier: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape::Scrape::of(c, gw).await;
        if s.sum(REQUESTS, &[("tier", tier)]) >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{tier}: {n} requests not counted"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_what_the_gateway_reports() {
    let mut pro = pro_tier();
    pro.daily_budget_usd = Some(1.0);
    pro.monthly_budget_usd = Some(10.0);
    // Room for 3 requests at once, then one every 100 ms: a burst of 6 waits.
    let mut batch = tier(600, 1_000_000, 1, 5_000);
    batch.burst = 3.0 / 600.0;
    let free = tier(2, 100_000, 2, 0);
    let (_sim, gw, c) = start(
        model(100_000, 10_000_000),
        &[("pro", pro), ("batch", batch), ("free", free)],
    )
    .await;
    let body = chat_body("how full is my bucket?", 32);
    for _ in 0..5 {
        assert_eq!(chat(&c, &gw, "pro", &body).await.status(), 200);
    }
    let free_statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..4 {
            s.push(chat(&c, &gw, "free", &body).await.status().as_u16());
        }
        s
    };
    assert_eq!(free_statuses, [200, 200, 429, 429]);
    let url = gw.url();
    let batch_statuses = spawn_all(6, |_| {
        let (c, url, body) = (c.clone(), url.clone(), body.clone());
        async move { chat_at(&c, &url, "batch", &body).await.status().as_u16() }
    })
    .await;
    assert_eq!(count(&batch_statuses, 200), 6, "{batch_statuses:?}");
    settled_spend(&gw, "pro", |s| s > 0.0).await;
    for (tier, n) in [("pro", 5.0), ("free", 4.0), ("batch", 6.0)] {
        counted(&c, &gw, tier, n).await;
    }

    let mut b = Browser::start(1400, 1000).await;
    // Without the token: the sign-in form and no figures.
    b.open(&format!("{url}/dashboard")).await;
    assert_eq!(
        b.eval("document.getElementById('login') !== null").await,
        true
    );
    assert_eq!(
        b.eval("document.getElementById('clients') === null").await,
        true
    );
    assert_eq!(
        b.eval("fetch('/dashboard/api/clients').then(r => r.status)")
            .await,
        401
    );
    keep_screenshot("dashboard-login.png", &b.screenshot().await);
    // A wrong token: the form again, saying so.
    b.eval("document.getElementById('token').value = 'not-the-token'; document.getElementById('login').requestSubmit(); true")
        .await;
    b.wait_for(
        "document.getElementById('login-error') && document.getElementById('login-error').textContent.includes('Wrong admin token')",
        Duration::from_secs(10),
        "the wrong-token message",
    )
    .await;

    b.sign_in(&url, ADMIN).await;
    assert_eq!(b.eval("location.pathname").await, "/dashboard");
    // The cookie is HttpOnly: the page's scripts cannot read the token.
    assert_eq!(b.eval("document.cookie").await, "");
    // Nothing was loaded from anywhere but the gateway.
    assert_eq!(
        b.eval("performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))")
            .await,
        true
    );
    assert_eq!(
        b.eval("performance.getEntriesByType('resource').length > 0")
            .await,
        true
    );

    let s = scrape::Scrape::of(&c, &gw).await;
    let admin = admin_json(&c, &gw, "/admin/clients").await;
    let admin_client = |id: &str| {
        admin["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .cloned()
            .unwrap()
    };

    // Clients: rate against limit, spend against budget, refusals.
    let clients = table(&mut b, "#clients tbody tr[data-client]", "data-client").await;
    for id in ["pro", "batch", "free"] {
        let row = &clients[id];
        let a = admin_client(id);
        assert_eq!(
            value(&row["requests"]),
            s.sum(REQUESTS, &[("tier", id)]),
            "{id}: {row}"
        );
        assert_eq!(
            value(&row["refused"]),
            s.sum(REQUESTS, &[("tier", id), ("outcome", REFUSED)]),
            "{id}: {row}"
        );
        assert_eq!(
            value(&row["spend-today"]),
            a["spend"]["today_usd"].as_f64().unwrap(),
            "{id}: {row}"
        );
        let limit = a["usage"]["requests"]["limit"].as_f64().unwrap();
        assert_eq!(
            row["rate-requests"]["limit"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap(),
            limit
        );
        let in_use = a["usage"]["requests"]["in_use"].as_f64().unwrap();
        // The bucket drains while we read it: within a few requests.
        assert!(
            (value(&row["rate-requests"]) - in_use).abs() <= 3.0,
            "{id}: {row} vs {a}"
        );
    }
    assert_eq!(value(&clients["free"]["refused"]), 2.0);
    assert_eq!(clients["free"]["refusal-rate"]["text"], "50.0%");
    assert!(value(&clients["pro"]["spend-today"]) > 0.0);
    assert_eq!(clients["pro"]["spend-today"]["budget"], "1");
    assert!(clients["pro"]["spend-today"]["text"]
        .as_str()
        .unwrap()
        .ends_with("/ $1.0000"));
    assert!(clients["free"]["spend-today"]["text"]
        .as_str()
        .unwrap()
        .contains("no budget"));
    // free's 2 RPM were used up a moment ago (one drains every 30 s).
    assert_eq!(clients["free"]["rate-requests"]["limit"], "2");
    assert!(
        value(&clients["free"]["rate-requests"]) >= 1.0,
        "{}",
        clients["free"]
    );

    // Tiers: requests, refusals and waits (p50/p99) as Prometheus computes them.
    let tiers = table(&mut b, "#tiers tbody tr[data-tier]", "data-tier").await;
    for id in ["pro", "batch", "free"] {
        let row = &tiers[id];
        assert_eq!(
            value(&row["requests"]),
            s.sum(REQUESTS, &[("tier", id)]),
            "{id}"
        );
        assert_eq!(
            value(&row["refused"]),
            s.sum(REQUESTS, &[("tier", id), ("outcome", REFUSED)]),
            "{id}"
        );
        for (field, q) in [("wait-p50", 0.5), ("wait-p99", 0.99)] {
            let want = s
                .quantile("tollgate_queue_wait_seconds", &[("tier", id)], q)
                .unwrap();
            let got = value(&row[field]);
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1.0),
                "{id} {field}: {got} vs {want}"
            );
        }
    }
    let batch_p99 = value(&tiers["batch"]["wait-p99"]);
    assert!(batch_p99 >= 0.1, "the burst of 6 waited: p99 {batch_p99}");
    assert!(value(&tiers["pro"]["wait-p99"]) < batch_p99);

    // Each provider model's use per class.
    let classes = table(
        &mut b,
        "[data-model='gpt-4o-mini'] tbody tr[data-class]",
        "data-class",
    )
    .await;
    for (class, tier) in [("0", "pro"), ("1", "batch"), ("2", "free")] {
        let row = &classes[class];
        assert_eq!(row["tiers"]["text"], tier);
        assert_eq!(
            value(&row["requests"]),
            s.sum(REQUESTS, &[("tier", tier), ("model", "gpt-4o-mini")]),
            "class {class}"
        );
    }
    let tokens = b
        .eval("document.querySelector(\"[data-model='gpt-4o-mini'] [data-field='tokens']\").dataset.value")
        .await;
    assert_eq!(
        tokens.as_str().unwrap().parse::<f64>().unwrap(),
        s.sum("tollgate_tokens_total", &[("model", "gpt-4o-mini")])
    );

    // Store and ledger health.
    assert_eq!(s.sum("tollgate_store_up", &[]), 1.0);
    assert_eq!(
        b.eval("document.getElementById('store-state').dataset.up")
            .await,
        "1"
    );
    assert_eq!(
        b.eval("document.getElementById('store-state').textContent")
            .await,
        "memory · up"
    );
    // The test configuration keeps its usage ledger in SQLite (in memory).
    assert_eq!(
        b.eval("document.getElementById('ledger-state').dataset.enabled")
            .await,
        "1"
    );
    assert_eq!(
        b.eval("document.getElementById('ledger-state').textContent")
            .await,
        "sqlite · up"
    );
    assert_eq!(
        b.eval("Number(document.getElementById('totals-requests').dataset.value)")
            .await,
        json!(s.sum(REQUESTS, &[("tier", "pro|batch|free")]) as u64)
    );

    // Live: new traffic shows without reloading the page.
    for _ in 0..2 {
        assert_eq!(chat(&c, &gw, "pro", &body).await.status(), 200);
    }
    b.wait_for(
        "document.querySelector(\"tr[data-client='pro'] [data-field='requests']\").dataset.value === '7'",
        Duration::from_secs(10),
        "the page refreshing itself",
    )
    .await;
    keep_screenshot("dashboard.png", &b.screenshot().await);

    // Signing out drops the cookie: the form again.
    b.eval("document.querySelector('form[action=\"/dashboard/logout\"]').requestSubmit(); true")
        .await;
    b.wait_for(
        "document.getElementById('login') !== null",
        Duration::from_secs(10),
        "the sign-in form after signing out",
    )
    .await;
    assert_eq!(
        b.eval("fetch('/dashboard/api/overview').then(r => r.status)")
            .await,
        401
    );
}

/// A gateway with 1,000 clients, ids `client-0000` … `client-0999`, every
/// other one on a tier with a budget.
async fn thousand_clients() -> (
    upstream_sim::SimUpstream,
    tollgate_gateway::RunningGateway,
    reqwest::Client,
) {
    let sim = sim().await;
    let mut budgeted = pro_tier();
    budgeted.daily_budget_usd = Some(5.0);
    let mut cfg = config(
        &sim.base_url(),
        model(100_000, 10_000_000),
        &[("pro", budgeted), ("free", tier(20, 100_000, 1, 0))],
    );
    cfg.clients.clear();
    for i in 0..1000 {
        let id = format!("client-{i:04}");
        cfg.clients.push(ClientConfig {
            tier: if i % 2 == 0 { "pro" } else { "free" }.into(),
            key_sha256: vec![hash_key(&format!("key-{id}"))],
            limits: Default::default(),
            id,
        });
    }
    let gw = gateway(cfg).await;
    (sim, gw, http())
}

use tollgate_gateway::upstream_sim;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_clients_are_paged_and_searched_on_the_server() {
    let (_sim, gw, c) = thousand_clients().await;
    let body = chat_body("find me", 16);
    for _ in 0..3 {
        assert_eq!(chat(&c, &gw, "client-0737", &body).await.status(), 200);
    }
    assert_eq!(chat(&c, &gw, "client-0100", &body).await.status(), 200);
    counted(&c, &gw, "free", 3.0).await;

    // The endpoint pages, filters and sorts on the server.
    let page = |q: &str| {
        let c = c.clone();
        let url = format!("{}/dashboard/api/clients?{q}", gw.url());
        async move {
            let r = send(c.get(url).bearer_auth(ADMIN)).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = page("sort=id").await;
    assert_eq!(
        (first["total"].as_u64(), first["matched"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(first["clients"].as_array().unwrap().len(), 25);
    assert_eq!(first["clients"][0]["id"], "client-0000");
    let third = page("sort=id&offset=50&limit=10").await;
    let ids: Vec<&str> = third["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        (50..60)
            .map(|i| format!("client-{i:04}"))
            .collect::<Vec<_>>()
    );
    let want = (0..1000)
        .filter(|i| format!("client-{i:04}").contains("07"))
        .count();
    assert_eq!(
        page("q=07&limit=200").await["matched"].as_u64(),
        Some(want as u64)
    );
    let busiest = page("sort=requests&limit=2").await;
    assert_eq!(busiest["clients"][0]["id"], "client-0737");
    assert_eq!(busiest["clients"][0]["requests"], 3);
    assert_eq!(busiest["clients"][1]["id"], "client-0100");
    let started = Instant::now();
    let by_use = page("sort=use&limit=5").await;
    println!(
        "sort=use over 1,000 clients (memory store): {:?}",
        started.elapsed()
    );
    assert_eq!(
        by_use["clients"][0]["id"], "client-0737",
        "the fullest bucket first"
    );
    let r = send(
        c.get(format!("{}/dashboard/api/clients?sort=cost", gw.url()))
            .bearer_auth(ADMIN),
    )
    .await;
    expect_error(r, 400, "invalid_query").await;

    // The page: the first 25 of 1,000, and a search that finds one.
    let mut b = Browser::start(1400, 900).await;
    b.sign_in(&gw.url(), ADMIN).await;
    assert_eq!(
        b.eval("document.getElementById('client-count').textContent")
            .await,
        "1,000 of 1,000 clients"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#clients tbody tr[data-client]').length")
            .await,
        25
    );
    search(&mut b, "client-0737").await;
    assert_eq!(
        b.eval("document.querySelectorAll('#clients tbody tr[data-client]').length")
            .await,
        1
    );
    let rows = table(&mut b, "#clients tbody tr[data-client]", "data-client").await;
    assert_eq!(value(&rows["client-0737"]["requests"]), 3.0);
    assert_eq!(rows["client-0737"]["tier"]["text"], "free");
    assert_eq!(
        b.eval("document.getElementById('client-count').textContent")
            .await,
        "1 of 1,000 clients"
    );
    // A search that finds nothing says so.
    search(&mut b, "nobody-here").await;
    assert_eq!(
        b.eval("document.querySelector('#clients tbody').textContent")
            .await,
        "No client matches."
    );
    search(&mut b, "07").await;
    keep_screenshot("dashboard-search.png", &b.screenshot().await);
}

#[tokio::test]
async fn the_dashboard_needs_the_admin_token() {
    let (_sim, gw, c) = start(model(1000, 1_000_000), &[("pro", pro_tier())]).await;
    let r = get(&c, &gw, "/dashboard").await;
    assert_eq!(r.status(), 401);
    let csp = header(&r, "content-security-policy").unwrap().to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"login\"") && !page.contains("id=\"clients\""));
    let r = send(admin(&c, &gw, Method::GET, "/dashboard")).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("id=\"clients\""));
    for path in ["/dashboard/api/overview", "/dashboard/api/clients"] {
        expect_error(get(&c, &gw, path).await, 401, "invalid_admin_token").await;
        assert_eq!(send(admin(&c, &gw, Method::GET, path)).await.status(), 200);
    }
    // The form: a wrong token is refused, the right one sets the cookie.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |token: &str| {
        no_redirects
            .post(format!("{}/dashboard/login", gw.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
    };
    let r = send(login("wrong")).await;
    assert_eq!(r.status(), 401);
    assert!(header(&r, "set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("Wrong admin token"));
    let r = send(login(ADMIN)).await;
    assert_eq!(r.status(), 303);
    assert_eq!(header(&r, "location"), Some("/dashboard"));
    let cookie = header(&r, "set-cookie").unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains(ADMIN),
        "the token is not in the cookie as typed: {cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let r = send(login(ADMIN).header("x-forwarded-proto", "https")).await;
    let behind_tls = header(&r, "set-cookie").unwrap().to_string();
    assert!(behind_tls.ends_with("; Secure"), "{behind_tls}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let r = send(
        c.get(format!("{}/dashboard/api/overview", gw.url()))
            .header("cookie", &pair),
    )
    .await;
    assert_eq!(r.status(), 200);
    let o: Value = r.json().await.unwrap();
    assert_eq!(o["store"]["up"], true);
    assert_eq!(o["ledger"]["enabled"], true);
    assert_eq!(o["ledger"]["kind"], "sqlite");
    // A cookie of another token is no way in.
    let r = send(
        c.get(format!("{}/dashboard/api/overview", gw.url()))
            .header("cookie", "tollgate_admin=d3Jvbmc"),
    )
    .await;
    assert_eq!(r.status(), 401);
    // A form larger than a token is refused.
    let r = send(login(&"x".repeat(10_000))).await;
    assert_eq!(r.status(), 413);

    // With the admin API off, the dashboard says how to turn it on.
    let sim2 = sim().await;
    let mut cfg = config(
        &sim2.base_url(),
        model(1000, 1_000_000),
        &[("pro", pro_tier())],
    );
    cfg.admin.token_sha256 = None;
    let off = gateway(cfg).await;
    let r = get(&c, &off, "/dashboard").await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("admin.token_sha256"));
    expect_error(
        get(&c, &off, "/dashboard/api/clients").await,
        403,
        "admin_disabled",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_the_store_going_down_and_coming_back() {
    let redis = common::redis::Redis::start().await;
    let sim = sim().await;
    let mut pro = pro_tier();
    pro.daily_budget_usd = Some(2.0);
    let mut cfg = shared_config(&sim.base_url(), &redis.url, &[("pro", pro)]);
    cfg.store.timeout_ms = 200;
    let gw = gateway(cfg).await;
    let c = http();
    for _ in 0..3 {
        assert_eq!(
            chat(&c, &gw, "pro", &chat_body("on redis", 16))
                .await
                .status(),
            200
        );
    }
    let spent = settled_spend(&gw, "pro", |s| s > 0.0).await;
    let mut b = Browser::start(1400, 900).await;
    b.sign_in(&gw.url(), ADMIN).await;
    assert_eq!(
        b.eval("document.getElementById('store-state').textContent")
            .await,
        "redis · up"
    );
    let rows = table(&mut b, "#clients tbody tr[data-client]", "data-client").await;
    assert_eq!(
        value(&rows["pro"]["spend-today"]),
        spent,
        "spend read from Redis"
    );

    // Redis stops answering: the page says so, and keeps what it can show.
    redis.pause();
    b.wait_for(
        "document.getElementById('store-state').dataset.up === '0'",
        Duration::from_secs(20),
        "the store shown down",
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('store-state').textContent")
            .await,
        "redis · DOWN"
    );
    assert_eq!(
        b.eval("document.querySelector(\"tr[data-client='pro'] [data-field='requests']\").dataset.value").await,
        "3",
        "the instance's own counts are still shown"
    );
    assert_eq!(
        b.eval("document.getElementById('client-count').textContent.includes('store:')")
            .await,
        true
    );
    keep_screenshot("dashboard-store-down.png", &b.screenshot().await);
    redis.resume();
    b.wait_for(
        "document.getElementById('store-state').dataset.up === '1'",
        Duration::from_secs(20),
        "the store shown up again",
    )
    .await;
}
