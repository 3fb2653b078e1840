//! The cost of routing one request for `model: "auto"`: reading its
//! prompt, classifying it (every keyword of every rule in one Aho-Corasick
//! pass) and matching the demo's route rules, on a 4,000-token prompt and
//! on a short one; beside a naive classifier (the prompt lowercased, then
//! `str::contains` for each keyword, rule by rule) in the same run.
//!
//! Run: `cargo bench -p tollgate-gateway --bench route_selection`. Results
//! are recorded in `docs/BENCHMARKS.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map, Value};
use tollgate_gateway::config::TaskClass;
use tollgate_gateway::routing::{Classifier, Facts, Prompt, DEFAULT_KEYWORDS};

/// About `tokens` tokens (4 bytes each) of prose that no keyword matches:
/// the classifier reads all of it.
fn prose(tokens: usize) -> String {
    let sentence = "The quarterly meeting covered staffing, travel and the new office layout. ";
    sentence.repeat((tokens * 4).div_ceil(sentence.len()))[..tokens * 4].to_string()
}

fn body(text: &str) -> Map<String, Value> {
    let v = json!({"model": "auto", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text}
    ], "max_tokens": 256});
    v.as_object().cloned().unwrap()
}

/// The naive way: lowercase the text, then look for each keyword in turn.
fn naive(text: &str, rules: &[(TaskClass, Vec<String>)]) -> TaskClass {
    let lower = text.to_lowercase();
    rules
        .iter()
        .find(|(_, words)| words.iter().any(|w| lower.contains(w.as_str())))
        .map_or(TaskClass::General, |(t, _)| *t)
}

/// The built-in keyword lists, as the naive classifier holds them.
fn naive_rules() -> Vec<(TaskClass, Vec<String>)> {
    DEFAULT_KEYWORDS
        .iter()
        .map(|(task, words)| (*task, words.iter().map(|w| w.to_string()).collect()))
        .collect()
}

fn bench(c: &mut Criterion) {
    let (routes, classifier_config) = tollgate_gateway::demo::routes();
    let auto = &routes["auto"];
    let classifier = Classifier::new(&classifier_config);
    let rules = naive_rules();
    for tokens in [4_000, 20] {
        let text = prose(tokens);
        let b = body(&text);
        let mut g = c.benchmark_group(format!("route_{tokens}_tokens"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("classify", |bench| {
            let prompt = Prompt::of(&b);
            bench.iter(|| black_box(classifier.classify(black_box(&prompt))))
        });
        g.bench_function("classify_naive", |bench| {
            bench.iter(|| black_box(naive(black_box(&text), &rules)))
        });
        g.bench_function("select", |bench| {
            bench.iter(|| {
                let prompt = Prompt::of(black_box(&b));
                let facts = Facts {
                    tier: "enterprise",
                    task: classifier.classify(&prompt),
                    prompt_tokens: prompt.tokens(),
                    hint: None,
                };
                black_box(auto.select(&facts).map(|(i, _)| i))
            })
        });
        g.finish();
    }
    // Both classifiers agree on the prose: general.
    let text = prose(4_000);
    assert_eq!(naive(&text, &rules), TaskClass::General);
    assert_eq!(
        classifier.classify(&Prompt::of(&body(&text))),
        TaskClass::General
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
