//! The index against its database: each change replaces one entry, another
//! instance on the database applies it in order, and the file and the
//! database combine field by field.

use std::sync::Arc;

use tollgate::{OutagePolicy, Store};

use super::*;
use crate::config::{ClientConfig, Config};
use crate::ledger::store::sql::Statement;
use crate::ledger::store::tests::tempdir;

fn tier(rpm: u64) -> TierConfig {
    TierConfig {
        rpm: Some(rpm),
        tpm: Some(100_000),
        burst: 1.0,
        priority: 0,
        max_wait_ms: 0,
        daily_budget_usd: None,
        monthly_budget_usd: None,
        floor: None,
        weight: None,
        lendable: None,
    }
}

/// Tiers `pro` (`pro_rpm`) and `free` (5 rpm); clients `pro`, `free` and
/// `other` (on free), each with key `key-ID`.
fn file(pro_rpm: u64) -> Config {
    let mut c = Config::default();
    c.tiers.insert("pro".into(), tier(pro_rpm));
    c.tiers.insert("free".into(), tier(5));
    for (id, t) in [("pro", "pro"), ("free", "free"), ("other", "free")] {
        c.clients.push(ClientConfig {
            id: id.into(),
            tier: t.into(),
            key_sha256: vec![crate::auth::hash_key(&format!("key-{id}"))],
            limits: Default::default(),
        });
    }
    c
}

async fn open(config: &Config, db: &crate::ledger::Store) -> Registry {
    Registry::open(config, db.clone(), &Store::memory(), OutagePolicy::Closed)
        .await
        .expect("registry")
}

fn rpm(r: &Registry, client: &str) -> Option<u64> {
    r.client(client).unwrap().tier.config.rpm
}

#[tokio::test]
async fn a_change_replaces_one_entry_and_leaves_every_other_as_it_was() {
    let db = crate::ledger::Store::open("sqlite::memory:").await.unwrap();
    let r = open(&file(10), &db).await;
    let before: Vec<Arc<Client>> = r.clients();
    let free_tier = r.tier("free").unwrap();

    // A tier's change replaces that tier; its clients follow when next
    // looked up, the others are not touched.
    let patch: TierPatch = serde_json::from_str(r#"{"rpm": 20}"#).unwrap();
    let (v1, t) = r.patch_tier("pro", &patch).await.unwrap();
    assert_eq!((v1, t.rpm), (1, Some(20)));
    assert!(Arc::ptr_eq(&free_tier, &r.tier("free").unwrap()));
    for id in ["free", "other"] {
        let now = r.client(id).unwrap();
        let was = before.iter().find(|c| c.id == id).unwrap();
        assert!(Arc::ptr_eq(&now, was), "{id} was rebuilt");
    }
    assert_eq!(rpm(&r, "pro"), Some(20));
    assert_eq!(r.authenticate("key-pro").unwrap().tier.config.rpm, Some(20));

    // A client's move replaces that client alone.
    let other = r.client("other").unwrap();
    assert_eq!(r.assign_tier("free", "pro").await.unwrap(), 2);
    assert_eq!(r.client("free").unwrap().tier.name, "pro");
    assert!(Arc::ptr_eq(&other, &r.client("other").unwrap()));
    assert_eq!(r.version(), 2);

    // Removing an override returns to the file; removing it again is no
    // change at all.
    let entity = Entity::Assignment("free".into());
    assert_eq!(r.remove_override(&entity).await.unwrap(), Some(3));
    assert_eq!(r.remove_override(&entity).await.unwrap(), None);
    assert_eq!(r.client("free").unwrap().tier.name, "free");
    assert_eq!(db::head(&db).await.unwrap(), 3);
}

#[tokio::test]
async fn another_instance_on_the_database_applies_the_changes_in_order() {
    let dir = tempdir();
    let path = dir.join("registry.sqlite");
    let url = path.to_str().unwrap();
    let db_a = crate::ledger::Store::open(url).await.unwrap();
    let db_b = crate::ledger::Store::open(url).await.unwrap();
    let a = open(&file(10), &db_a).await;
    let b = open(&file(10), &db_b).await;
    let p = |json: &str| serde_json::from_str::<TierPatch>(json).unwrap();
    a.patch_tier("pro", &p(r#"{"rpm": 20}"#)).await.unwrap();
    a.patch_tier("pro", &p(r#"{"tpm": 7000}"#)).await.unwrap();
    a.assign_tier("other", "pro").await.unwrap();
    assert_eq!(rpm(&b, "pro"), Some(10), "not before it catches up");
    assert_eq!(b.catch_up().await.unwrap(), 3);
    assert_eq!(b.version(), 3);
    let pro = b.client("pro").unwrap();
    assert_eq!(
        (pro.tier.config.rpm, pro.tier.config.tpm),
        (Some(20), Some(7000))
    );
    assert_eq!(b.client("other").unwrap().tier.name, "pro");
    assert_eq!(b.catch_up().await.unwrap(), 0, "nothing new");
    // B's changes merge over A's, field by field, whichever wrote last.
    b.patch_tier("pro", &p(r#"{"rpm": 30}"#)).await.unwrap();
    a.catch_up().await.unwrap();
    assert_eq!(a.tier("pro").unwrap().config.tpm, Some(7000));
    assert_eq!(a.tier("pro").unwrap().config.rpm, Some(30));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_database_wins_field_by_field_over_a_file_that_moved_on() {
    let dir = tempdir();
    let url = dir.join("registry.sqlite").display().to_string();
    let db = crate::ledger::Store::open(&url).await.unwrap();
    let r = open(&file(10), &db).await;
    r.patch_tier("pro", &serde_json::from_str(r#"{"rpm": 20}"#).unwrap())
        .await
        .unwrap();
    drop(r);
    // The file changes pro's tpm, and the client it names moves.
    let mut moved = file(10);
    moved.tiers.get_mut("pro").unwrap().tpm = Some(200_000);
    let again = open(&moved, &crate::ledger::Store::open(&url).await.unwrap()).await;
    let pro = again.tier("pro").unwrap();
    assert_eq!((pro.config.rpm, pro.config.tpm), (Some(20), Some(200_000)));
    let (version, o) = again.overrides();
    assert_eq!(version, 1);
    let said = o.describe(&moved).join("\n");
    assert!(said.contains("rpm = 20 (file: 10)"), "{said}");
    // An override the file no longer fits is skipped, the file's tier used.
    let mut narrower = file(10);
    narrower.priority.headroom = vec![1.0];
    narrower.tiers.get_mut("pro").unwrap().priority = 0;
    let db = crate::ledger::Store::open(&url).await.unwrap();
    db::set_tier(
        &db,
        "pro",
        &serde_json::from_str(r#"{"priority": 3}"#).unwrap(),
        Some(1),
    )
    .await
    .unwrap();
    let skipped = open(&narrower, &db).await;
    assert_eq!(skipped.tier("pro").unwrap().config.rpm, Some(10));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn issued_keys_work_until_revoked_or_expired() {
    let db = crate::ledger::Store::open("sqlite::memory:").await.unwrap();
    let r = open(&file(10), &db).await;
    let key = |id: &str, secret: &str, expires: Option<i64>| {
        Statement::new(
            "INSERT INTO registry_keys (id, hash, client, shown, name, models, limits, \
             expires_at_ms, revoked_at_ms, created_at_ms, version) \
             VALUES ($1, $2, 'other', 'tg-…', NULL, NULL, '{}', $3, NULL, 0, 1)",
            vec![
                id.into(),
                crate::auth::hash_key(secret).into(),
                expires.into(),
            ],
        )
    };
    let past = crate::ledger::row::now_ms() - 1;
    for (id, secret, expires) in [("k1", "tg-live", None), ("k2", "tg-old", Some(past))] {
        db::write(&db, &Entity::Key(id.into()), vec![key(id, secret, expires)])
            .await
            .unwrap();
    }
    r.catch_up().await.unwrap();
    assert_eq!(r.authenticate("tg-live").unwrap().id, "other");
    assert!(r.authenticate("tg-old").is_none(), "an expired key");
    assert_eq!(r.authenticate("key-other").unwrap().id, "other");
    db::write(
        &db,
        &Entity::Key("k1".into()),
        vec![Statement::new(
            "UPDATE registry_keys SET revoked_at_ms = 1 WHERE id = 'k1'",
            vec![],
        )],
    )
    .await
    .unwrap();
    r.catch_up().await.unwrap();
    assert!(r.authenticate("tg-live").is_none(), "a revoked key");
}

/// The scale proof's short version (the figures are in docs/BENCHMARKS.md,
/// "Registry at scale"): with 10,000 clients and 20,000 keys, another
/// instance applies a hundred changes of every kind one entry at a time,
/// never building its index again, and leaves every other client as it was.
#[tokio::test]
async fn ten_thousand_clients_take_a_hundred_changes_without_a_rebuild() {
    let dir = tempdir();
    let url = dir.join("registry.sqlite").display().to_string();
    let db_a = crate::ledger::Store::open(&url).await.unwrap();
    const N: usize = 10_000;
    let mut statements = Vec::new();
    for i in 0..N {
        statements.push(Statement::new(
            "INSERT INTO registry_clients (id, tier, org, limits, disabled, created_at_ms, version) \
             VALUES ($1, $2, NULL, '{}', 0, 0, 1)",
            vec![format!("c-{i}").into(), (if i % 2 == 0 { "pro" } else { "free" }).into()],
        ));
        for j in 0..2 {
            statements.push(Statement::new(
                "INSERT INTO registry_keys (id, hash, client, shown, name, models, limits, \
                 expires_at_ms, revoked_at_ms, created_at_ms, version) \
                 VALUES ($1, $2, $3, 'tg-…', NULL, NULL, '{}', NULL, NULL, 0, 1)",
                vec![
                    format!("k-{i}-{j}").into(),
                    crate::auth::hash_key(&format!("bench-key-{i}-{j}")).into(),
                    format!("c-{i}").into(),
                ],
            ));
        }
    }
    db::write(&db_a, &Entity::Client("seed".into()), statements)
        .await
        .unwrap();
    let a = open(&file(10), &db_a).await;
    let b = open(&file(10), &crate::ledger::Store::open(&url).await.unwrap()).await;
    let start = b.stats();
    assert_eq!((start.index_builds, start.changes_applied), (1, 0));
    assert_eq!(start.clients, N + 3);
    assert_eq!(start.keys, 2 * N + 3);
    let before = b.clients();
    // Paged by id with a filter, never sorted: every pro client once, in
    // order (the file's among the API's), across many scans of the index.
    let pro = manage::ClientFilter {
        tier: Some("pro".into()),
        ..Default::default()
    };
    let (mut seen, mut after) = (Vec::new(), None);
    loop {
        let (page, next) = b.client_page(&pro, after.as_deref(), 700);
        assert!(page.len() <= 700);
        seen.extend(page.into_iter().map(|c| c.id));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let expected: Vec<String> = before
        .iter()
        .filter(|c| c.tier.name == "pro")
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(seen.len(), N / 2 + 1);
    assert_eq!(seen, expected);
    let disabled = manage::ClientFilter {
        disabled: Some(true),
        ..Default::default()
    };
    assert_eq!(b.client_page(&disabled, None, 10), (Vec::new(), None));
    let p = |json: &str| serde_json::from_str::<TierPatch>(json).unwrap();
    let mut issued = Vec::new();
    for i in 0..25 {
        let key = a
            .issue_key(&format!("c-{i}"), &issue::NewKey::default())
            .await
            .unwrap();
        a.move_api_client(&format!("c-{}", 100 + i), "pro")
            .await
            .unwrap();
        a.revoke_key(&format!("k-{}-0", 200 + i)).await.unwrap();
        a.patch_tier("free", &p(&format!(r#"{{"rpm": {}}}"#, 6 + i)))
            .await
            .unwrap();
        issued.push(key.key);
    }
    assert_eq!(b.catch_up().await.unwrap(), 100);
    let after = b.stats();
    assert_eq!(after.index_builds, 1, "no change built the index again");
    // One entry re-read and replaced per change, the free tier's 25
    // changes in a row being one.
    assert_eq!(after.changes_applied, 25 * 3 + 1);
    assert_eq!(after.keys, 2 * N + 3, "25 issued, 25 revoked");
    // Every client no change named is the same entry as before (the free
    // tier's change reaches its clients as each is next looked up).
    let named: std::collections::HashSet<String> =
        (0..25).map(|i| format!("c-{}", 100 + i)).collect();
    let untouched = before
        .iter()
        .filter(|c| c.tier.name == "pro" && !named.contains(&c.id))
        .filter(|c| Arc::ptr_eq(c, &b.client(&c.id).unwrap()))
        .count();
    assert_eq!(
        untouched,
        N / 2 + 1 - 13,
        "every pro client but the moved ones kept its entry"
    );
    assert!(b.authenticate(&issued[24]).is_some());
    assert!(b.authenticate("bench-key-224-0").is_none(), "revoked on B");
    assert!(b.authenticate("bench-key-224-1").is_some());
    assert_eq!(b.client("c-1").unwrap().tier.config.rpm, Some(30));
    let _ = std::fs::remove_dir_all(dir);
}

/// A tier's change costs the index two writes, however many clients the
/// tier has: each of its clients takes the new tier up at its next lookup
/// under its own entry's lock, so looking every one of them up (as the
/// dashboard's listing and the admin API's do) takes the index's write
/// lock no more than the change did.
#[tokio::test]
async fn a_tier_change_takes_the_write_lock_once_whatever_its_clients() {
    let db = crate::ledger::Store::open("sqlite::memory:").await.unwrap();
    const N: usize = 2_000;
    let statements = (0..N)
        .map(|i| {
            Statement::new(
                "INSERT INTO registry_clients (id, tier, org, limits, disabled, created_at_ms, version) \
                 VALUES ($1, 'free', NULL, '{}', 0, 0, 1)",
                vec![format!("c-{i}").into()],
            )
        })
        .collect();
    db::write(&db, &Entity::Client("seed".into()), statements)
        .await
        .unwrap();
    let r = open(&file(10), &db).await;
    let before = r.stats();
    let patch: TierPatch = serde_json::from_str(r#"{"rpm": 7}"#).unwrap();
    r.patch_tier("free", &patch).await.unwrap();
    let all = r.clients();
    assert_eq!(all.len(), N + 3);
    for c in all.iter().filter(|c| c.tier.name == "free") {
        assert_eq!(c.tier.config.rpm, Some(7), "{} on the new tier", c.id);
        assert_eq!(r.client(&c.id).unwrap().tier.config.rpm, Some(7));
    }
    assert_eq!(
        r.authenticate("key-other").unwrap().tier.config.rpm,
        Some(7)
    );
    let after = r.stats();
    assert_eq!(
        after.write_holds - before.write_holds,
        2,
        "the tier's change took the index's write lock twice (its entry, then the change's number); its {} clients' lookups never",
        N + 2
    );
    assert_eq!(after.index_builds, 1);
}

/// `limits` from JSON.
fn limits(json: &str) -> LimitsConfig {
    serde_json::from_str(json).expect("limits")
}

#[tokio::test]
async fn organisations_come_from_the_file_and_the_database_and_another_instance_applies_them() {
    let db = crate::ledger::Store::open("sqlite::memory:").await.unwrap();
    let mut config = file(10);
    config.orgs.insert(
        "acme".into(),
        crate::config::OrgConfig {
            name: Some("Acme".into()),
            clients: vec!["pro".into()],
            limits: limits(r#"{"daily_budget_usd": 5.0}"#),
        },
    );
    let a = open(&config, &db).await;
    let b = open(&config, &db).await;
    // The file's organisation holds its client, with its budget.
    let pro = a.client("pro").unwrap();
    let org = pro.org.as_ref().expect("in acme");
    assert_eq!((org.id.as_str(), org.source), ("acme", "file"));
    assert_eq!(org.bounds.budget.daily, Some(5_000_000_000));
    assert!(a.client("free").unwrap().org.is_none());

    // A new organisation, validated as the file's are.
    let bad = new_org("beta", r#"{"rpm": 0}"#);
    let e = a.create_org(&bad).await.unwrap_err().to_string();
    assert!(
        e.contains("orgs.beta.limits.rpm") && e.contains("0 would refuse"),
        "{e}"
    );
    let new = new_org("beta", r#"{"rpm": 7, "monthly_budget_usd": 2.0}"#);
    assert!(matches!(
        a.create_org(&new).await,
        Ok(issue::Created::New(_))
    ));
    assert!(matches!(
        a.create_org(&new).await,
        Ok(issue::Created::Existing(_))
    ));
    let other = new_org("beta", r#"{"rpm": 8}"#);
    assert!(matches!(
        a.create_org(&other).await,
        Err(issue::Refused::Conflict(_))
    ));
    // The file's id is the file's: changed with PATCH, not made again.
    let again = new_org("acme", "{}");
    assert!(matches!(
        a.create_org(&again).await,
        Err(issue::Refused::Conflict(_))
    ));

    // A client the API made, in it, with its own limits over its tier's.
    let own = limits(r#"{"rpm": 3}"#);
    a.create_client_in("c1", "free", Some("beta"), &own)
        .await
        .unwrap();
    let missing = a.create_client_in("c2", "free", Some("nope"), &own).await;
    assert!(
        matches!(missing, Err(issue::Refused::Invalid(_))),
        "{missing:?}"
    );
    let zero = a
        .create_client_in("c3", "free", None, &limits(r#"{"tpm": 0}"#))
        .await;
    assert!(zero
        .unwrap_err()
        .to_string()
        .contains("clients.c3.limits.tpm"));

    // Instance B applies the changes from the database, one by one.
    b.catch_up().await.unwrap();
    for r in [&a, &b] {
        let c1 = r.client("c1").unwrap();
        assert_eq!(c1.org.as_ref().unwrap().id, "beta");
        assert_eq!(
            c1.limiter().policy().limit(tollgate::Dimension::Requests),
            Some(3)
        );
        let beta = r.org("beta").unwrap();
        assert_eq!(beta.bounds.budget.monthly, Some(2_000_000_000));
        assert!(beta.bounds.limiter.is_some());
    }

    // Changing the file's organisation: the database's entry wins, its
    // members stay; its clients take it up as each is next looked up.
    let patch: orgs::OrgPatch =
        serde_json::from_str(r#"{"limits": {"daily_budget_usd": 1.5}, "disabled": true}"#).unwrap();
    a.patch_org("acme", &patch).await.unwrap();
    b.catch_up().await.unwrap();
    for r in [&a, &b] {
        let pro = r.client("pro").unwrap();
        let org = pro.org.as_ref().unwrap();
        assert_eq!((org.source, org.disabled), ("database", true));
        assert_eq!(org.bounds.budget.daily, Some(1_500_000_000));
        // A disabled organisation's clients are refused.
        assert!(r.authenticate("key-pro").is_none());
        assert!(r.authenticate("key-free").is_some());
    }
    // A file client's organisation is the file's to set.
    let e = a.set_client_org("pro", Some("beta")).await.unwrap_err();
    assert!(matches!(e, issue::Refused::Conflict(_)), "{e:?}");

    // Started again on the same database: everything is there.
    let c = open(&config, &db).await;
    assert_eq!(c.orgs().len(), 2);
    assert_eq!(c.client("c1").unwrap().org.as_ref().unwrap().id, "beta");
    assert!(c.org("acme").unwrap().disabled);
}

/// A `NewOrg` of `id` with `limits` (JSON).
fn new_org(id: &str, limits_json: &str) -> orgs::NewOrg {
    orgs::NewOrg {
        id: id.into(),
        name: None,
        limits: limits(limits_json),
    }
}
