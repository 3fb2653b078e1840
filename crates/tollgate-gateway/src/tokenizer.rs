//! Token estimates made before a request is admitted.
//!
//! OpenAI-family models are counted with tiktoken's own encodings (bundled in
//! the `tiktoken-rs` crate, no network): `o200k_base` for GPT-4o, GPT-4.1,
//! GPT-5 and the o-series, `cl100k_base` for GPT-4, GPT-3.5 and the
//! `text-embedding-*` models. Every other model uses the documented
//! approximation of one token per 4 bytes of UTF-8 text, rounded up, which
//! over-counts English slightly (the settlement refunds the difference).
//!
//! Chat messages add OpenAI's framing: 3 tokens per message, 1 per `name`,
//! 3 to prime the reply. Image parts count a flat 765 tokens (a 1024×1024
//! image at high detail); tool definitions and tool calls count as their JSON.

use serde_json::Value;

/// A way to count tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    /// tiktoken `o200k_base`.
    O200k,
    /// tiktoken `cl100k_base`.
    Cl100k,
    /// One token per 4 bytes, rounded up.
    Approx,
}

/// Tokens charged for an image part of a message.
pub const IMAGE_TOKENS: u64 = 765;

impl Tokenizer {
    /// The tokenizer of a config name (`o200k_base`, `cl100k_base`, `approx`).
    pub fn from_name(name: &str) -> Option<Tokenizer> {
        match name {
            "o200k_base" => Some(Tokenizer::O200k),
            "cl100k_base" => Some(Tokenizer::Cl100k),
            "approx" => Some(Tokenizer::Approx),
            _ => None,
        }
    }

    /// The tokenizer a model name implies.
    pub fn for_model(model: &str) -> Tokenizer {
        let m = model.rsplit('/').next().unwrap_or(model);
        let o200k = [
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "o1",
            "o3",
            "o4",
            "chatgpt-4o",
        ];
        let cl100k = ["gpt-4", "gpt-3.5", "text-embedding-"];
        if o200k.iter().any(|p| m.starts_with(p)) {
            Tokenizer::O200k
        } else if cl100k.iter().any(|p| m.starts_with(p)) {
            Tokenizer::Cl100k
        } else {
            Tokenizer::Approx
        }
    }

    /// Loads the encoding now, so the first request does not pay for it.
    pub fn warm_up(self) {
        self.count("warm up");
    }

    /// Tokens in a text.
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        match self {
            Tokenizer::O200k => tiktoken_rs::o200k_base_singleton().count_ordinary(text) as u64,
            Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton().count_ordinary(text) as u64,
            Tokenizer::Approx => (text.len() as u64).div_ceil(4),
        }
    }

    /// Tokens in a message's role: the usual roles are counted once per
    /// process (each is a single token, but the count comes from the encoding).
    fn count_role(self, role: &str) -> u64 {
        use std::sync::OnceLock;
        const ROLES: [&str; 5] = ["user", "assistant", "system", "developer", "tool"];
        static COUNTS: [OnceLock<[u64; 5]>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        match ROLES.iter().position(|r| *r == role) {
            Some(i) => COUNTS[self as usize].get_or_init(|| ROLES.map(|r| self.count(r)))[i],
            None => self.count(role),
        }
    }

    /// Input tokens of a chat request's `messages` (and `tools`, if any).
    pub fn chat_input(self, messages: &[Value], tools: Option<&Value>) -> u64 {
        let mut n = 3;
        for m in messages {
            n += 3;
            if let Some(obj) = m.as_object() {
                for (k, v) in obj {
                    match (k.as_str(), v) {
                        ("content", v) => n += self.content(v),
                        ("name", Value::String(s)) => n += 1 + self.count(s),
                        ("role", Value::String(s)) => n += self.count_role(s),
                        ("tool_calls" | "function_call", v) => n += self.count(&v.to_string()),
                        _ => {}
                    }
                }
            }
        }
        if let Some(tools) = tools {
            n += self.count(&tools.to_string());
        }
        n
    }

    /// Input tokens of a Responses API request: its `input` (a string, or
    /// input items counted as chat messages) and `instructions`.
    pub fn responses_input(
        self,
        input: &Value,
        instructions: Option<&str>,
        tools: Option<&Value>,
    ) -> u64 {
        let mut items = match input {
            Value::String(s) => vec![serde_json::json!({"role": "user", "content": s})],
            Value::Array(items) => items.clone(),
            _ => Vec::new(),
        };
        if let Some(text) = instructions {
            items.push(serde_json::json!({"role": "system", "content": text}));
        }
        self.chat_input(&items, tools)
    }

    fn content(self, v: &Value) -> u64 {
        match v {
            Value::String(s) => self.count(s),
            Value::Array(parts) => parts
                .iter()
                .map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("text" | "input_text" | "output_text") => p
                        .get("text")
                        .and_then(Value::as_str)
                        .map_or(0, |t| self.count(t)),
                    Some("image_url" | "input_image") => IMAGE_TOKENS,
                    _ => self.count(&p.to_string()),
                })
                .sum(),
            Value::Null => 0,
            other => self.count(&other.to_string()),
        }
    }

    /// Input tokens of an embeddings request's `input` (a string, strings, or
    /// token arrays). `None` when `input` has none of these shapes.
    pub fn embeddings_input(self, input: &Value) -> Option<u64> {
        match input {
            Value::String(s) => Some(self.count(s)),
            Value::Array(items) if !items.is_empty() => {
                let mut n = 0;
                for item in items {
                    n += match item {
                        Value::String(s) => self.count(s),
                        Value::Number(_) => 1,
                        Value::Array(tokens) => tokens.len() as u64,
                        _ => return None,
                    };
                }
                Some(n)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn picks_the_encoding_from_the_model_name() {
        assert_eq!(Tokenizer::for_model("gpt-4o-mini"), Tokenizer::O200k);
        assert_eq!(Tokenizer::for_model("openai/gpt-4.1"), Tokenizer::O200k);
        assert_eq!(Tokenizer::for_model("gpt-4-turbo"), Tokenizer::Cl100k);
        assert_eq!(Tokenizer::for_model("claude-3-5-sonnet"), Tokenizer::Approx);
    }

    #[test]
    fn counts_like_openai() {
        // "hello world" is 2 tokens in both encodings.
        assert_eq!(Tokenizer::O200k.count("hello world"), 2);
        assert_eq!(Tokenizer::Cl100k.count("hello world"), 2);
        assert_eq!(Tokenizer::Approx.count("hello world"), 3);
        let msgs = [json!({"role": "user", "content": "hello world"})];
        // 3 priming + 3 framing + 1 ("user") + 2.
        assert_eq!(Tokenizer::O200k.chat_input(&msgs, None), 9);
        assert_eq!(
            Tokenizer::O200k.embeddings_input(&json!(["a", [1, 2, 3]])),
            Some(4)
        );
        assert_eq!(Tokenizer::O200k.embeddings_input(&json!({})), None);
    }

    #[test]
    fn cached_role_counts_are_the_encodings_own() {
        for t in [Tokenizer::O200k, Tokenizer::Cl100k, Tokenizer::Approx] {
            for role in ["user", "assistant", "system", "developer", "tool", "critic"] {
                assert_eq!(t.count_role(role), t.count(role), "{t:?} {role}");
            }
        }
    }
}
