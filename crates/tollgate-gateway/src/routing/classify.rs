//! The task classifier: keyword and size rules, the configured ones first,
//! then the built-in ones, the first that matches giving the class. Cheap
//! and predictable: one pass over the prompt's text (every keyword of every
//! rule in one Aho-Corasick automaton, ASCII case ignored), no model.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use serde_json::{Map, Value};

use crate::config::{ClassifierConfig, ClassifierRule, TaskClass};

/// The built-in keyword rules, in the order they are tried (after the
/// long-context rule, and before `general`).
pub const DEFAULT_KEYWORDS: &[(TaskClass, &[&str])] = &[
    (
        TaskClass::Code,
        &[
            "```",
            "def ",
            "fn ",
            "function ",
            "function(",
            "class ",
            "import ",
            "#include",
            "traceback",
            "stack trace",
            "compile",
            "refactor",
            "debug",
            "unit test",
            "regex",
            "sql",
            "python",
            "javascript",
            "typescript",
            "source code",
            "code",
            "bug",
        ],
    ),
    (
        TaskClass::Summarisation,
        &[
            "summarise",
            "summarize",
            "summary",
            "summarisation",
            "summarization",
            "tl;dr",
            "tldr",
            "key points",
            "condense",
            "in a nutshell",
            "recap",
        ],
    ),
    (
        TaskClass::Analysis,
        &[
            "analyse",
            "analyze",
            "analysis",
            "compare",
            "comparison",
            "evaluate",
            "assess",
            "pros and cons",
            "trade-off",
            "tradeoff",
            "explain why",
            "root cause",
            "implications",
            "critique",
        ],
    ),
];

/// The text of a request that the classifier reads, and its size.
#[derive(Debug, Default)]
pub struct Prompt<'a> {
    parts: Vec<&'a str>,
    tokens: u64,
}

impl<'a> Prompt<'a> {
    /// The text of a request body: chat `messages` (string contents and
    /// text parts), a Responses request's `instructions` and `input`, an
    /// embeddings request's `input`.
    pub fn of(body: &'a Map<String, Value>) -> Prompt<'a> {
        let mut p = Prompt::default();
        if let Some(Value::String(s)) = body.get("instructions") {
            p.push(s);
        }
        for field in ["messages", "input"] {
            match body.get(field) {
                Some(Value::String(s)) => p.push(s),
                Some(Value::Array(items)) => {
                    for item in items {
                        match item {
                            Value::String(s) => p.push(s),
                            Value::Object(o) => p.content(o.get("content")),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        p
    }

    fn content(&mut self, content: Option<&'a Value>) {
        match content {
            Some(Value::String(s)) => self.push(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(Value::String(s)) = part.get("text") {
                        self.push(s);
                    }
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, s: &'a str) {
        // One token per 4 bytes, as the `approx` tokenizer counts: the same
        // for every model, since the model is not chosen yet.
        self.tokens += (s.len() as u64).div_ceil(4);
        self.parts.push(s);
    }

    /// A prompt of these pieces of text.
    pub fn of_text(parts: &[&'a str]) -> Prompt<'a> {
        let mut p = Prompt::default();
        for s in parts {
            p.push(s);
        }
        p
    }

    /// Its size in tokens (4 bytes of text a token, rounded up per piece).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// One rule as the classifier holds it.
#[derive(Debug)]
struct Rule {
    task: TaskClass,
    min: u64,
    max: u64,
    keyworded: bool,
}

/// Tells a request's [`TaskClass`] from its prompt.
#[derive(Debug)]
pub struct Classifier {
    rules: Vec<Rule>,
    /// Every rule's keywords; a match's pattern index leads to its rule
    /// through `rule_of`.
    keywords: Option<AhoCorasick>,
    rule_of: Vec<usize>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(&ClassifierConfig::default())
    }
}

impl Classifier {
    /// The classifier `config` describes (checked by the config's
    /// validation: every configured rule has keywords or a size).
    pub fn new(config: &ClassifierConfig) -> Classifier {
        let mut all: Vec<ClassifierRule> = config.rules.clone();
        if config.defaults {
            all.push(ClassifierRule {
                task: TaskClass::LongContext,
                keywords: Vec::new(),
                min_prompt_tokens: Some(config.long_context_tokens),
                max_prompt_tokens: None,
            });
            all.extend(DEFAULT_KEYWORDS.iter().map(|(task, words)| ClassifierRule {
                task: *task,
                keywords: words.iter().map(|w| w.to_string()).collect(),
                min_prompt_tokens: None,
                max_prompt_tokens: None,
            }));
        }
        let mut patterns = Vec::new();
        let mut rule_of = Vec::new();
        for (i, r) in all.iter().enumerate() {
            for k in &r.keywords {
                patterns.push(k.as_str());
                rule_of.push(i);
            }
        }
        let keywords = (!patterns.is_empty())
            .then(|| {
                // A DFA: built once at start, the fastest to run over a
                // long prompt (see benches/route_selection.rs).
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&patterns)
                    .map_err(|e| tracing::error!(error = %e, "classifier keywords not built"))
                    .ok()
            })
            .flatten();
        let rules = all
            .iter()
            .map(|r| Rule {
                task: r.task,
                min: r.min_prompt_tokens.unwrap_or(0),
                max: r.max_prompt_tokens.unwrap_or(u64::MAX),
                keyworded: !r.keywords.is_empty(),
            })
            .collect();
        Classifier {
            rules,
            keywords,
            rule_of,
        }
    }

    /// The class of `prompt`: the first rule whose size bounds hold and,
    /// if it has keywords, one of which the prompt contains; else
    /// `general`.
    pub fn classify(&self, prompt: &Prompt<'_>) -> TaskClass {
        let sized = |r: &Rule| (r.min..=r.max).contains(&prompt.tokens);
        // The first rule that needs no keyword and fits: no rule after it
        // can win, so the text is searched only for the rules before it.
        let unkeyed = self
            .rules
            .iter()
            .position(|r| !r.keyworded && sized(r))
            .unwrap_or(self.rules.len());
        // No keyed rule before this one can match: once it has, the
        // search is over.
        let first = self.rules[..unkeyed]
            .iter()
            .position(sized)
            .unwrap_or(unkeyed);
        let mut best = unkeyed;
        if let Some(ac) = self.keywords.as_ref().filter(|_| first < unkeyed) {
            'parts: for part in &prompt.parts {
                for m in ac.find_overlapping_iter(*part) {
                    let i = self.rule_of[m.pattern().as_usize()];
                    if i < best && sized(&self.rules[i]) {
                        best = i;
                        if best == first {
                            break 'parts;
                        }
                    }
                }
            }
        }
        self.rules.get(best).map_or(TaskClass::General, |r| r.task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class_of(c: &Classifier, text: &str) -> TaskClass {
        c.classify(&Prompt::of_text(&[text]))
    }

    #[test]
    fn the_default_rules_tell_the_five_classes_apart() {
        let c = Classifier::default();
        let long = "word ".repeat(16_000);
        for (text, want) in [
            (
                "Write a Python function that reverses a list",
                TaskClass::Code,
            ),
            (
                "Why does this panic?\n```rust\nlet v = vec![];\n```",
                TaskClass::Code,
            ),
            ("I get a Traceback when I run it", TaskClass::Code),
            (
                "Please SUMMARISE the meeting notes below",
                TaskClass::Summarisation,
            ),
            ("tl;dr of this article?", TaskClass::Summarisation),
            (
                "Give me the key points of the report",
                TaskClass::Summarisation,
            ),
            (
                "Compare the two offers and list the pros and cons",
                TaskClass::Analysis,
            ),
            ("Evaluate this business plan", TaskClass::Analysis),
            ("What is the root cause of the outage?", TaskClass::Analysis),
            ("Hello! How are you today?", TaskClass::General),
            ("Tell me a joke about cats", TaskClass::General),
            // Code comes before summarisation and analysis.
            ("Summarise what this code does", TaskClass::Code),
            // Size comes first: a long prompt is long context, whatever it says.
            (long.as_str(), TaskClass::LongContext),
        ] {
            assert_eq!(class_of(&c, text), want, "{:.60}", text);
        }
        // Just below the threshold, the same words are general.
        let below = "word ".repeat(12_799);
        assert_eq!(class_of(&c, &below), TaskClass::General);
    }

    #[test]
    fn configured_rules_come_first_and_may_replace_the_defaults() {
        let mut cfg = ClassifierConfig {
            long_context_tokens: 100,
            ..ClassifierConfig::default()
        };
        cfg.rules.push(ClassifierRule {
            task: TaskClass::Analysis,
            keywords: vec!["Audit".into()],
            min_prompt_tokens: None,
            max_prompt_tokens: None,
        });
        cfg.rules.push(ClassifierRule {
            task: TaskClass::Summarisation,
            keywords: vec!["digest".into()],
            min_prompt_tokens: Some(5),
            max_prompt_tokens: Some(50),
        });
        let c = Classifier::new(&cfg);
        for (text, want) in [
            ("audit this code", TaskClass::Analysis),
            ("a digest please", TaskClass::General),
            (
                "a digest of the week's news, in plain words",
                TaskClass::Summarisation,
            ),
            ("fix this code", TaskClass::Code),
            (&"x".repeat(400), TaskClass::LongContext),
        ] {
            assert_eq!(class_of(&c, text), want, "{text:.60}");
        }
        cfg.defaults = false;
        let c = Classifier::new(&cfg);
        assert_eq!(class_of(&c, "fix this code"), TaskClass::General);
        assert_eq!(class_of(&c, "AUDIT"), TaskClass::Analysis);
        assert_eq!(class_of(&c, &"x".repeat(400)), TaskClass::General);
    }

    #[test]
    fn the_prompt_is_read_from_every_endpoints_fields() {
        let chat = json!({"messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "summarize"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null}
        ]});
        let p = Prompt::of(chat.as_object().unwrap());
        assert_eq!(p.tokens(), 4 + 3);
        assert_eq!(Classifier::default().classify(&p), TaskClass::Summarisation);
        let responses =
            json!({"instructions": "abcd", "input": [{"role": "user", "content": "debug it"}]});
        let p = Prompt::of(responses.as_object().unwrap());
        assert_eq!(p.tokens(), 1 + 2);
        assert_eq!(Classifier::default().classify(&p), TaskClass::Code);
        let plain = json!({"input": "hello"});
        assert_eq!(Prompt::of(plain.as_object().unwrap()).tokens(), 2);
    }
}
