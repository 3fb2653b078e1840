//! The futures of the request path, and what axum moves of them. A future
//! is as large as the most it holds at any await, its sub-futures
//! included, and every move of it (into axum's box, into a task) copies it
//! whole: the request path's are kilobytes, so they are made in boxes of
//! their own ([`super::boxed`]) and what is moved is a few words.

use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;

use super::{admit, forward, handle};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::model::Endpoint;
use crate::request_id::RequestId;

/// The most the future axum boxes for each request may take.
const HANDLER_MOST: usize = 1024;

#[tokio::test]
async fn the_future_axum_moves_per_request_is_a_few_words() {
    let key = crate::auth::hash_key("tg-k");
    let config = Config::from_toml(&format!(
        r#"
[providers.p]
base_url = "http://127.0.0.1:9"
[providers.p.models."m"]
rpm = 1000
tpm = 1000000
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[tiers.t]
rpm = 100
tpm = 100000
[[clients]]
id = "c"
tier = "t"
key_sha256 = ["{key}"]
[ledger]
url = "off"
"#
    ))
    .expect("a valid configuration");
    let gw = Gateway::new(config).await.expect("a gateway");
    let path = &gw.pipeline;
    let registry = gw.registry();
    let client = registry.client("c").expect("the client");
    let model = path.models["m"].clone();

    let proxy = std::mem::size_of_val(&crate::server::proxy(
        gw.clone(),
        RequestId::new(),
        HeaderMap::new(),
        Body::empty(),
        Endpoint::Chat,
    ));
    // What the boxes hold, for docs/BENCHMARKS.md (`cargo test --release`
    // gives the sizes of the build that is benched).
    let held = [
        (
            "handle",
            std::mem::size_of_val(&handle(
                path,
                registry.clone(),
                HeaderMap::new(),
                Body::empty(),
                Endpoint::Chat,
                RequestId::new(),
            )),
        ),
        (
            "admit_with",
            std::mem::size_of_val(&admit::admit_with(
                &path.books,
                &client,
                None,
                &model,
                super::settle::Usage::new(10, 10),
            )),
        ),
        (
            "forward",
            std::mem::size_of_val(&forward::forward(
                &path.upstream,
                &model,
                forward::Ask {
                    endpoint: Endpoint::Chat,
                    payload: bytes::Bytes::new(),
                    stream: false,
                    cap: 10,
                    input: 10,
                    within: Duration::from_secs(1),
                },
            )),
        ),
    ];
    eprintln!("future of server::proxy (moved by axum): {proxy} bytes");
    for (name, size) in held {
        eprintln!("future of {name}: {size} bytes");
    }
    let whole = held[0].1;
    assert!(
        whole > HANDLER_MOST,
        "the request path's future ({whole} bytes) is no longer large: this test measures nothing"
    );
    assert!(
        proxy <= HANDLER_MOST,
        "the future axum boxes and moves per request takes {proxy} bytes, more than {HANDLER_MOST}"
    );
}
