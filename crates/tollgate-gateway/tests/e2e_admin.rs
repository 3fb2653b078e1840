//! The admin API against the config file: overrides win field by field, are
//! kept in the registry's database with a version, listed, described at
//! start and removable; the API accepts exactly what the file would (0 is
//! not "unlimited", null is); a store outage changes nothing of the
//! registry, and the listing that reads the store answers 503, never a 400
//! or made-up zeros; overrides earlier releases kept in the store move into
//! the database.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn tier_of(tiers: &Value, name: &str) -> Value {
    tiers["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tier {name} in {tiers}"))["config"]
        .clone()
}

#[tokio::test]
async fn overrides_win_field_by_field_are_listed_and_removable_across_a_restart() {
    let redis = Redis::start().await;
    let sim = sim().await;
    let db = fresh_database();
    let file = |tpm| {
        let mut c = shared_config(
            &sim.base_url(),
            &redis.url,
            &[("pro", tier(10, tpm, 0, 0)), ("free", tier(5, 1_000, 0, 0))],
        );
        c.ledger.url = db.clone();
        c
    };
    let c = http();
    let a = gateway(file(100_000)).await;
    let r = patch_tier(&c, &a, "pro", &json!({"rpm": 20})).await;
    assert_eq!(r.status(), 200);
    let version = r.json::<Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    assert!(version >= 1);
    assert_eq!(set_client_tier(&c, &a, "pro", "free").await.status(), 200);
    drop(a);
    // The file changes while the override is kept: the field the override
    // does not set follows the file.
    let config = file(200_000);
    let b = gateway(config.clone()).await;
    let pro = tier_of(&admin_json(&c, &b, "/admin/tiers").await, "pro");
    assert_eq!(
        (pro["rpm"].as_u64(), pro["tpm"].as_u64()),
        (Some(20), Some(200_000))
    );
    let listed = admin_json(&c, &b, "/admin/overrides").await;
    let o = &listed["tiers"]["pro"];
    assert_eq!(o["version"].as_u64(), Some(version), "{listed}");
    assert_eq!(o["fields"], json!({"rpm": 20}));
    assert_eq!(o["file"]["rpm"], 10);
    assert_eq!(listed["clients"]["pro"]["tier"], "free");
    assert_eq!(listed["clients"]["pro"]["file_tier"], "pro");
    // What start logs: each override with the file's value it shadows.
    let (_, overrides) = b.gateway.overrides().await;
    let said = overrides.describe(&config).join("\n");
    assert!(said.contains("rpm = 20 (file: 10)"), "{said}");
    assert!(said.contains("tier = \"free\" (file: \"pro\")"), "{said}");
    // Removed: the file applies again, here and for the next start.
    let path = "/admin/overrides/tiers/pro";
    assert_eq!(
        send(admin(&c, &b, Method::DELETE, path)).await.status(),
        200
    );
    assert_eq!(
        send(admin(&c, &b, Method::DELETE, path)).await.status(),
        404
    );
    let path = "/admin/overrides/clients/pro";
    assert_eq!(
        send(admin(&c, &b, Method::DELETE, path)).await.status(),
        200
    );
    let pro = tier_of(&admin_json(&c, &b, "/admin/tiers").await, "pro");
    assert_eq!(pro["rpm"].as_u64(), Some(10));
    drop(b);
    let again = gateway(file(200_000)).await;
    let listed = admin_json(&c, &again, "/admin/overrides").await;
    assert_eq!(
        (
            listed["tiers"].as_object().unwrap().len(),
            listed["clients"].as_object().unwrap().len()
        ),
        (0, 0),
        "{listed}"
    );
    assert_eq!(rpm_limit(&c, &again, "pro").await.as_deref(), Some("10"));
}

#[tokio::test]
async fn the_api_validates_as_the_file_does_and_zero_is_not_unlimited() {
    let (_sim, gw, c) = start(model(100_000, 100_000_000), &[("pro", pro_tier())]).await;
    let r = patch_tier(&c, &gw, "pro", &json!({"rpm": 0})).await;
    let e = expect_error(r, 400, "invalid_tier").await;
    assert!(e["message"].as_str().unwrap().contains("null"), "{e}");
    let mut file = config(
        "http://127.0.0.1:9/v1",
        model(100, 100),
        &[("pro", pro_tier())],
    );
    file.tiers.get_mut("pro").unwrap().rpm = Some(0);
    let err = file.validate().unwrap_err().to_string();
    assert!(err.contains("tiers.pro.rpm"), "{err}");
    // The same rules both ways, e.g. a priority class that does not exist.
    let r = patch_tier(&c, &gw, "pro", &json!({"priority": 9})).await;
    let e = expect_error(r, 400, "invalid_tier").await;
    file.tiers.get_mut("pro").unwrap().rpm = Some(100);
    file.tiers.get_mut("pro").unwrap().priority = 9;
    let err = file.validate().unwrap_err().to_string();
    assert!(
        e["message"].as_str().unwrap().contains(&err),
        "{e} vs {err}"
    );
    // Unlimited only when said so: null.
    let r = patch_tier(&c, &gw, "pro", &json!({"rpm": null})).await;
    assert_eq!(r.status(), 200);
    let pro = tier_of(&admin_json(&c, &gw, "/admin/tiers").await, "pro");
    assert!(
        pro["rpm"].is_null() && pro["tpm"].as_u64() == Some(100_000),
        "{pro}"
    );
    let r = chat(&c, &gw, "pro", &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-limit-requests").is_none());
    // Removing the last limit is refused, as in the file.
    let r = patch_tier(&c, &gw, "pro", &json!({"tpm": null})).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("invalid_tier"), "{text}");
}

#[tokio::test]
async fn during_a_store_outage_changes_still_apply_and_the_listing_answers_503() {
    let redis = Redis::start().await;
    let sim = sim().await;
    let mut config = shared_config(
        &sim.base_url(),
        &redis.url,
        &[("pro", pro_tier()), ("free", tier(5, 1_000, 0, 0))],
    );
    config.store.timeout_ms = 200;
    let gw = gateway(config).await;
    let c = http();
    assert_eq!(
        send(admin(&c, &gw, Method::GET, "/admin/clients"))
            .await
            .status(),
        200
    );
    redis.pause();
    // The registry is the database's: changes are kept and apply here; the
    // notice to other instances is what waits for the store.
    let r = patch_tier(&c, &gw, "pro", &json!({"rpm": 50})).await;
    assert_eq!(r.status(), 200);
    let pro = tier_of(&admin_json(&c, &gw, "/admin/tiers").await, "pro");
    assert_eq!(pro["rpm"].as_u64(), Some(50));
    // Bucket use and spend are the store's: no made-up zeros.
    let r = send(admin(&c, &gw, Method::GET, "/admin/clients")).await;
    expect_error(r, 503, "store_unavailable").await;
    redis.resume();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = set_client_tier(&c, &gw, "pro", "free").await;
    assert_eq!(r.status(), 200);
    assert_eq!(rpm_limit(&c, &gw, "pro").await.as_deref(), Some("5"));
}

const OVERRIDES_KEY: &str = "tollgate:{config}:overrides";
const VERSION_KEY: &str = "tollgate:{config}:version";

/// What the previous release (`3204835`) stored under [`OVERRIDES_KEY`],
/// read back from its Redis, after `PATCH /admin/tiers/pro {"rpm": 20}` and
/// `PUT /admin/clients/free/tier {"tier": "pro"}` with the file's tiers pro
/// (10 rpm, 100,000 tpm) and free (5 rpm, 1,000 tpm); [`VERSION_KEY`] then
/// held 2.
const PREVIOUS_RELEASE_OVERRIDES: &str = r#"{"tiers":{"pro":{"rpm":20,"tpm":100000,"burst":1.0,"priority":0,"max_wait_ms":0,"daily_budget_usd":null,"monthly_budget_usd":null}},"client_tiers":{"free":"pro"}}"#;

#[tokio::test]
async fn overrides_an_earlier_release_kept_in_the_store_move_into_the_database_and_hold() {
    let mut redis = Redis::start().await;
    redis.set(OVERRIDES_KEY, PREVIOUS_RELEASE_OVERRIDES).await;
    redis.set(VERSION_KEY, "2").await;
    let sim = sim().await;
    // The file has moved on since (pro's tpm): the previous release's
    // override replaced the whole tier, and still does.
    let mut config = shared_config(
        &sim.base_url(),
        &redis.url,
        &[
            ("pro", tier(10, 200_000, 0, 0)),
            ("free", tier(5, 1_000, 0, 0)),
        ],
    );
    config.ledger.url = fresh_database();
    let c = http();
    let gw = gateway(config.clone()).await;
    let pro = tier_of(&admin_json(&c, &gw, "/admin/tiers").await, "pro");
    assert_eq!(
        (pro["rpm"].as_u64(), pro["tpm"].as_u64()),
        (Some(20), Some(100_000))
    );
    assert_eq!(rpm_limit(&c, &gw, "free").await.as_deref(), Some("20"));
    let listed = admin_json(&c, &gw, "/admin/overrides").await;
    assert_eq!(listed["tiers"]["pro"]["fields"]["rpm"], 20, "{listed}");
    assert_eq!(listed["clients"]["free"]["tier"], "pro", "{listed}");
    let (_, overrides) = gw.gateway.overrides().await;
    let said = overrides.describe(&config).join("\n");
    assert!(said.contains("tpm = 100000 (file: 200000)"), "{said}");
    // Moved, not copied: the store no longer holds them.
    assert_eq!(redis.get(OVERRIDES_KEY).await, None);
    assert_eq!(redis.get(VERSION_KEY).await, None);

    // The next change joins them in the database; with the store restarted
    // empty, a new instance on the database has them all.
    let r = patch_tier(&c, &gw, "free", &json!({"rpm": 7})).await;
    assert_eq!(r.status(), 200);
    drop(gw);
    redis.restart_empty().await;
    let again = gateway(config).await;
    assert_eq!(rpm_limit(&c, &again, "free").await.as_deref(), Some("20"));
    let free = tier_of(&admin_json(&c, &again, "/admin/tiers").await, "free");
    assert_eq!(free["rpm"].as_u64(), Some(7));
    let pro = tier_of(&admin_json(&c, &again, "/admin/tiers").await, "pro");
    assert_eq!(pro["rpm"].as_u64(), Some(20));
    let listed = admin_json(&c, &again, "/admin/overrides").await;
    assert_eq!(listed["tiers"]["free"]["fields"], json!({"rpm": 7}));
    assert_eq!(listed["clients"]["free"]["tier"], "pro", "{listed}");
}

#[tokio::test]
async fn unreadable_overrides_stop_the_start_with_the_key_and_how_to_remove_it() {
    let redis = Redis::start().await;
    // Cut short, as by a hand edit gone wrong.
    redis
        .set(
            OVERRIDES_KEY,
            r#"{"tiers":{"pro":{"fields":{"rpm":20},"vers"#,
        )
        .await;
    let sim = sim().await;
    let config = shared_config(&sim.base_url(), &redis.url, &[("pro", pro_tier())]);
    let Err(e) = tollgate_gateway::start(config.clone()).await else {
        panic!("started on overrides it cannot read");
    };
    let said = e.to_string();
    assert!(said.contains(OVERRIDES_KEY), "{said}");
    assert!(said.contains(&format!("DEL '{OVERRIDES_KEY}'")), "{said}");
    // Removed as it says, the gateway starts from the file alone.
    redis.del(OVERRIDES_KEY).await;
    let gw = gateway(config).await;
    assert_eq!(rpm_limit(&http(), &gw, "pro").await.as_deref(), Some("100"));
}
