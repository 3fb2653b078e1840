//! A client's dashboard page, end to end: a real gateway in front of a
//! simulated upstream and a real headless Chromium that signs in, opens a
//! client from the list, issues a key on the page, and revokes it there;
//! the key is used against `/v1/chat/completions` in between.

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use std::time::Duration;

use chromium::{keep_screenshot, Browser};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// A chat request with `key`.
async fn chat_with(c: &reqwest::Client, url: &str, key: &str) -> u16 {
    send(
        c.post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body("hello from a new key", 16)),
    )
    .await
    .status()
    .as_u16()
}

/// Waits for the client page to have drawn itself again after an action.
async fn redrawn(b: &mut Browser, before: &Value, what: &str) {
    b.wait_for(
        &format!("Number(document.body.dataset.refreshed) > {before}"),
        Duration::from_secs(10),
        what,
    )
    .await;
}

/// Opens client `id`'s page and waits for it to draw itself.
async fn client_page(b: &mut Browser, url: &str, id: &str) {
    b.open(&format!("{url}/dashboard/clients/{id}")).await;
    b.wait_for(
        "document.body.dataset.ready === '1'",
        Duration::from_secs(10),
        "the client page",
    )
    .await;
}

/// The page's buttons: (revoke buttons, whether the issue form is hidden).
async fn buttons(b: &mut Browser) -> (Value, Value) {
    (
        b.eval("document.querySelectorAll('button.revoke').length")
            .await,
        b.eval("document.getElementById('issue-section').hidden")
            .await,
    )
}

async fn refreshed(b: &mut Browser) -> Value {
    b.eval("Number(document.body.dataset.refreshed || 0)").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_issued_on_the_client_page_works_until_revoked_there() {
    let mut pro = pro_tier();
    pro.daily_budget_usd = Some(2.0);
    let (_sim, gw, c) = start(model(100_000, 10_000_000), &[("pro", pro)]).await;
    let url = gw.url();
    // A client made through the admin API, so the page has one of each kind.
    let made = send(
        admin(&c, &gw, Method::POST, "/admin/clients").json(&json!({"id": "acme", "tier": "pro"})),
    )
    .await;
    assert_eq!(made.status(), 201);
    assert_eq!(
        chat(&c, &gw, "pro", &chat_body("spend a little", 16))
            .await
            .status(),
        200
    );

    let mut b = Browser::start(1300, 900).await;
    // Without a session the page is the sign-in form, and its API refuses.
    b.open(&format!("{url}/dashboard/clients/acme")).await;
    assert_eq!(
        b.eval("document.getElementById('login') !== null").await,
        true
    );
    let unsigned = b
        .eval("fetch('/dashboard/api/clients/acme/keys', {method: 'POST', headers: {'x-tollgate-dashboard': '1'}}).then(r => r.status)")
        .await;
    assert_eq!(unsigned, 401);

    b.sign_in(&url, ADMIN).await;
    // From the list to the client's page.
    b.wait_for(
        "document.querySelector(\"tr[data-client='acme'] a\") !== null",
        Duration::from_secs(10),
        "acme in the clients list",
    )
    .await;
    b.eval("document.querySelector(\"tr[data-client='acme'] a\").click(); true")
        .await;
    b.wait_for(
        "location.pathname === '/dashboard/clients/acme' && document.body.dataset.ready === '1'",
        Duration::from_secs(15),
        "the client page",
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('client-id').textContent")
            .await,
        "acme"
    );
    assert_eq!(
        b.eval("document.getElementById('client-tier').dataset.value")
            .await,
        "pro"
    );
    assert_eq!(
        b.eval("document.querySelector(\"#spend [data-field='spend-today']\").dataset.budget")
            .await,
        "2"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#keys tr[data-key]').length")
            .await,
        0
    );

    // Issue a key named "ci" that expires in 30 days.
    let before = refreshed(&mut b).await;
    b.eval("document.getElementById('key-name').value = 'ci'; document.getElementById('key-expiry').value = '2592000'; document.getElementById('issue-key').click(); true")
        .await;
    b.wait_for(
        "!document.getElementById('new-key-box').hidden",
        Duration::from_secs(10),
        "the new key shown",
    )
    .await;
    redrawn(&mut b, &before, "the keys after issuing").await;
    let key = b
        .eval("document.getElementById('new-key').textContent")
        .await;
    let key = key.as_str().expect("the key as text").to_string();
    assert!(key.starts_with("tg-") && key.len() > 20, "{key}");
    let key_id = b
        .eval("document.getElementById('new-key-box').dataset.key")
        .await;
    let row = b
        .eval(&format!(
            "(() => {{ const tr = document.querySelector('#keys tr[data-key=' + JSON.stringify({key_id}) + ']');
                return tr && {{ state: tr.dataset.state, shown: tr.querySelector('[data-field=shown]').textContent,
                    name: tr.querySelector('[data-field=name]').textContent,
                    expires: Number(tr.querySelector('[data-field=expires]').dataset.value) }}; }})()"
        ))
        .await;
    assert_eq!(row["state"], "active", "{row}");
    assert_eq!(row["name"], "ci");
    let shown = row["shown"].as_str().unwrap();
    assert!(
        shown.starts_with(&key[..7]) && shown.ends_with(&key[key.len() - 4..]),
        "{shown} for {key}"
    );
    assert!(
        !shown.contains(&key[7..key.len() - 4]),
        "the key's middle is never listed: {shown}"
    );
    let in_30_days = tollgate_gateway::ledger::row::now_ms() + 30 * 86_400_000;
    assert!(
        (row["expires"].as_i64().unwrap() - in_30_days).abs() < 60_000,
        "{row}"
    );
    // The admin API lists the same key, the same way.
    let listed = admin_json(&c, &gw, "/admin/clients/acme/keys").await;
    assert_eq!(listed["keys"][0]["id"], key_id);
    assert_eq!(listed["keys"][0]["shown"], shown);

    // The copy button puts the key on the clipboard.
    b.call(
        "Browser.grantPermissions",
        json!({"origin": url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}),
    )
    .await;
    b.eval("document.getElementById('copy-key').click(); true")
        .await;
    b.wait_for(
        "!document.getElementById('copied').hidden",
        Duration::from_secs(5),
        "the key copied",
    )
    .await;
    // On the clipboard, or (no clipboard in this browser) selected for Ctrl-C.
    let copied = b
        .eval("(async () => { try { return await navigator.clipboard.readText(); } catch (_) { return window.getSelection().toString(); } })()")
        .await;
    assert_eq!(copied, key.as_str());
    keep_screenshot("dashboard-client.png", &b.screenshot().await);

    // The key works.
    assert_eq!(chat_with(&c, &url, &key).await, 200);

    // Shown once: the page opened again lists it by its ends only.
    client_page(&mut b, &url, "acme").await;
    let text = b.eval("document.documentElement.outerHTML").await;
    assert!(
        !text.as_str().unwrap().contains(&key),
        "the key is shown once"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#keys tr[data-key]').length")
            .await,
        1
    );

    // A change without the page's header (a forged form would lack it) is refused.
    let forged = b
        .eval("fetch('/dashboard/api/clients/acme/keys', {method: 'POST'}).then(r => r.status)")
        .await;
    assert_eq!(forged, 403);
    assert_eq!(
        admin_json(&c, &gw, "/admin/clients/acme/keys").await["keys"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the forged request issued nothing"
    );

    // Revoke it on the page: one click arms the button, the second revokes.
    let revoke = format!(
        "document.querySelector('button.revoke[data-key=' + JSON.stringify({key_id}) + ']')"
    );
    b.eval(&format!("{revoke}.click(); true")).await;
    assert_eq!(
        b.eval(&format!("{revoke}.textContent")).await,
        "Really revoke?"
    );
    assert_eq!(
        chat_with(&c, &url, &key).await,
        200,
        "not revoked by one click"
    );
    let before = refreshed(&mut b).await;
    b.eval(&format!("{revoke}.click(); true")).await;
    redrawn(&mut b, &before, "the keys after revoking").await;
    b.wait_for(
        &format!("document.querySelector('#keys tr[data-key=' + JSON.stringify({key_id}) + ']').dataset.state === 'revoked'"),
        Duration::from_secs(10),
        "the key shown revoked",
    )
    .await;
    assert_eq!(
        chat_with(&c, &url, &key).await,
        401,
        "a revoked key is refused"
    );
    // Both changes are audited under the session's token, as the page made them.
    let id = key_id.as_str().unwrap();
    let audit = admin_json(&c, &gw, &format!("/admin/audit?object=key:{id}")).await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["token"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        (
            "admin".to_string(),
            format!("DELETE /dashboard/api/keys/{id}"),
        ),
        (
            "admin".to_string(),
            "POST /dashboard/api/clients/acme/keys".to_string(),
        ),
    ];
    assert_eq!(actions, expected, "{audit}");
    assert_eq!(
        b.eval("document.getElementById('error').hidden").await,
        true
    );

    // A file client's page says its file keys are not listed, and issues
    // keys too.
    client_page(&mut b, &url, "pro").await;
    assert_eq!(
        b.eval("document.getElementById('file-keys').hidden").await,
        false
    );
    assert!(
        b.eval(
            "Number(document.querySelector(\"#spend [data-field='spend-today']\").dataset.value)"
        )
        .await
        .as_f64()
        .unwrap()
            > 0.0,
        "the file client's spend today"
    );
    // An unknown client: the page says so.
    b.open(&format!("{url}/dashboard/clients/nobody")).await;
    b.wait_for(
        "!document.getElementById('error').hidden",
        Duration::from_secs(10),
        "the unknown client's error",
    )
    .await;
    assert!(b
        .eval("document.getElementById('error').textContent")
        .await
        .as_str()
        .unwrap()
        .contains("No client \"nobody\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_sign_in_sees_the_keys_and_cannot_change_them() {
    use tollgate_gateway::config::{AdminRole, AdminTokenConfig};
    const VIEWER: &str = "viewer-token";
    let sim = sim().await;
    let mut cfg = config(
        &sim.base_url(),
        model(100_000, 10_000_000),
        &[("pro", pro_tier())],
    );
    cfg.admin.tokens = vec![AdminTokenConfig {
        name: "viewer".into(),
        sha256: tollgate_gateway::auth::hash_key(VIEWER),
        role: AdminRole::ReadOnly,
    }];
    let gw = gateway(cfg).await;
    let c = http();
    let url = gw.url();
    let issued: Value =
        send(admin(&c, &gw, Method::POST, "/admin/clients/pro/keys").json(&json!({"name": "ops"})))
            .await
            .json()
            .await
            .unwrap();
    let (key, key_id) = (
        issued["key"].as_str().unwrap(),
        issued["id"].as_str().unwrap(),
    );

    let mut b = Browser::start(1300, 900).await;
    b.sign_in(&url, VIEWER).await;
    client_page(&mut b, &url, "pro").await;
    // The key is listed; nothing on the page can change it.
    assert_eq!(
        b.eval("document.querySelectorAll('#keys tr[data-key]').length")
            .await,
        1
    );
    assert_eq!(buttons(&mut b).await, (json!(0), json!(true)));
    assert_eq!(
        b.eval("document.getElementById('read-only').hidden").await,
        false
    );
    // Nor can the session's own requests: the admin API's guard refuses them.
    for (method, path) in [
        ("POST", "/dashboard/api/clients/pro/keys".to_string()),
        ("DELETE", format!("/dashboard/api/keys/{key_id}")),
    ] {
        let answer = b
            .eval(&format!(
                "fetch({}, {{method: {}, headers: {{'x-tollgate-dashboard': '1', 'content-type': 'application/json'}}, body: {}}}).then(async r => [r.status, (await r.json()).error.code])",
                json!(path),
                json!(method),
                if method == "POST" { "'{}'" } else { "undefined" }
            ))
            .await;
        assert_eq!(answer, json!([403, "read_only_token"]), "{method} {path}");
    }
    assert_eq!(chat_with(&c, &url, key).await, 200, "the key still works");
    let keys = admin_json(&c, &gw, "/admin/clients/pro/keys").await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "nothing issued");
    assert!(
        keys["keys"][0]["revoked_at_ms"].is_null(),
        "nothing revoked"
    );
    // Signed out, then in with a read-write token: the buttons are there.
    b.eval("document.querySelector('form[action=\"/dashboard/logout\"]').requestSubmit(); true")
        .await;
    b.wait_for(
        "document.getElementById('login') !== null",
        Duration::from_secs(10),
        "the sign-in form",
    )
    .await;
    b.sign_in(&url, ADMIN).await;
    client_page(&mut b, &url, "pro").await;
    assert_eq!(buttons(&mut b).await, (json!(1), json!(false)));
}
