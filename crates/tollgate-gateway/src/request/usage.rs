//! What an answer is charged, by one rule for streamed and non-streamed
//! answers alike, Chat Completions and Responses: the upstream's reported usage when there is one, else the
//! estimated input and the output tokens the answer carried, counted with the
//! model's tokenizer (never zero for an answer with text); and never more
//! output than the request allowed (`max_tokens` × `n`).

use serde_json::{Map, Value};

use crate::model::Endpoint;
use crate::tokenizer::Tokenizer;

/// `(prompt_tokens, completion_tokens)` of a response body, read without
/// building the whole document (the rest of it is skipped, not stored).
/// The Responses API names them `input_tokens` and `output_tokens`.
pub(crate) fn usage_in(body: &[u8]) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Body {
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        #[serde(alias = "input_tokens")]
        prompt_tokens: u64,
        #[serde(default, alias = "output_tokens")]
        completion_tokens: Option<u64>,
    }
    let u = serde_json::from_slice::<Body>(body).ok()?.usage?;
    Some((u.prompt_tokens, u.completion_tokens.unwrap_or(0)))
}

/// `(prompt_tokens, completion_tokens)` of a response or chunk with usage,
/// also of the Responses API's final event (`response.usage`, with
/// `input_tokens` and `output_tokens`); `None` when `usage` is absent,
/// `null` or lacks its input count.
pub(crate) fn usage_of(v: &Value) -> Option<(u64, u64)> {
    let u = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.get("response")?.get("usage"))?;
    let tokens = |a: &str, b: &str| u.get(a).or_else(|| u.get(b)).and_then(Value::as_u64);
    let input = tokens("prompt_tokens", "input_tokens")?;
    let output = tokens("completion_tokens", "output_tokens").unwrap_or(0);
    Some((input, output))
}

/// What a piece of an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// One event of a stream: a chat chunk's `choices[].delta`, or a
    /// Responses event's string `delta` (`response.output_text.delta`, …).
    Delta,
    /// A whole answer: a chat completion's `choices[].message`, or a
    /// response's `output` items.
    Whole,
}

/// Output tokens carried by `v`: text, refusals, reasoning text and tool
/// calls (name and arguments), counted with `tokenizer`.
pub(crate) fn output_tokens(tokenizer: Tokenizer, v: &Value, part: Part) -> u64 {
    let mut text = String::new();
    output_text(v, part, &mut text);
    tokenizer.count(&text)
}

/// Appends to `out` the output text `v` carries (see [`output_tokens`]), so
/// that a stream's pieces are counted once, together, and only when the
/// upstream reported no usage.
pub(crate) fn output_text(v: &Value, part: Part, out: &mut String) {
    let mut push = |v: Option<&Value>| {
        if let Some(s) = v.and_then(Value::as_str) {
            out.push_str(s);
        }
    };
    let key = match part {
        Part::Delta => "delta",
        Part::Whole => "message",
    };
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for m in choices.iter().filter_map(|c| c.get(key)) {
            for k in ["content", "refusal", "reasoning_content"] {
                push(m.get(k));
            }
            let calls = m.get("tool_calls").and_then(Value::as_array);
            for c in m
                .get("function_call")
                .into_iter()
                .chain(calls.into_iter().flatten())
            {
                let f = c.get("function").unwrap_or(c);
                push(f.get("name"));
                push(f.get("arguments"));
            }
        }
        return;
    }
    match part {
        // A Responses event whose `delta` is text.
        Part::Delta => push(v.get("delta")),
        // A response's `output` items: message text and refusals, reasoning
        // summaries, function calls.
        Part::Whole => {
            for item in v
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for k in ["content", "summary"] {
                    for p in item.get(k).and_then(Value::as_array).into_iter().flatten() {
                        push(p.get("text"));
                        push(p.get("refusal"));
                    }
                }
                push(item.get("name"));
                push(item.get("arguments"));
            }
        }
    }
}

/// What one answer is charged, and how that was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// Input tokens charged.
    pub input: u64,
    /// Output tokens charged.
    pub output: u64,
    /// The upstream reported no usage: the output was counted.
    pub counted: bool,
    /// The output the upstream reported (or carried) beyond what the request
    /// allowed, when it did; the charge is capped at the allowance.
    pub over_cap: Option<u64>,
}

impl Charge {
    /// The tokens charged.
    pub(crate) fn usage(&self) -> super::settle::Usage {
        super::settle::Usage::new(self.input, self.output)
    }

    /// The charge of an answer: `reported` usage if any, else the estimated
    /// input and the `counted` output; output at most `cap`.
    pub(crate) fn of(
        reported: Option<(u64, u64)>,
        counted: u64,
        estimate_input: u64,
        cap: u64,
    ) -> Self {
        let (input, output) = reported.unwrap_or((estimate_input, counted));
        Charge {
            input,
            output: output.min(cap),
            counted: reported.is_none(),
            over_cap: (output > cap).then_some(output),
        }
    }
}

/// The most output a request may be charged: its own limit — `max_tokens`
/// or `max_completion_tokens` × `n` for a chat, `max_output_tokens` for a
/// response; that is the estimate `output` — else what the context window
/// leaves after the input (× `n`). Embeddings produce no output.
pub(crate) fn output_cap(
    endpoint: Endpoint,
    body: &Map<String, Value>,
    context_window: u64,
    input: u64,
    output: u64,
) -> u64 {
    let limits: &[&str] = match endpoint {
        Endpoint::Embeddings => return 0,
        Endpoint::Chat => &["max_completion_tokens", "max_tokens"],
        Endpoint::Responses => &["max_output_tokens"],
    };
    if limits
        .iter()
        .any(|k| body.get(*k).is_some_and(|v| !v.is_null()))
    {
        return output;
    }
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    context_window.saturating_sub(input).saturating_mul(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_usage_and_counts_what_the_choices_carry() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"{}"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        assert_eq!(usage_in(body), Some((7, 3)));
        assert_eq!(usage_in(br#"{"usage":{"prompt_tokens":5}}"#), Some((5, 0)));
        assert_eq!(usage_in(br#"{"choices":[]}"#), None);
        assert_eq!(usage_of(&json!({"usage": null})), None);
        let completed = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 2}}});
        assert_eq!(usage_of(&completed), Some((4, 2)));
        let t = Tokenizer::O200k;
        let answer = json!({"choices": [
            {"message": {"content": "hello world"}},
            {"message": {"content": null, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}
        ]});
        assert_eq!(
            output_tokens(t, &answer, Part::Whole),
            t.count("hello worldf{}")
        );
        assert_eq!(output_tokens(t, &answer, Part::Delta), 0);
        let chunk = json!({"choices": [{"delta": {"content": " world"}}]});
        assert_eq!(output_tokens(t, &chunk, Part::Delta), 1);
        let delta = json!({"type": "response.output_text.delta", "delta": "hello world"});
        assert_eq!(output_tokens(t, &delta, Part::Delta), 2);
        let response = json!({"output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hello"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "hello world"}]},
            {"type": "function_call", "name": "f", "arguments": "{}"}
        ]});
        assert_eq!(
            output_tokens(t, &response, Part::Whole),
            t.count("hellohello worldf{}")
        );
    }

    #[test]
    fn charges_reported_usage_else_counted_output_never_beyond_the_cap() {
        assert_eq!(
            Charge::of(Some((11, 3)), 99, 20, 16_000),
            Charge {
                input: 11,
                output: 3,
                counted: false,
                over_cap: None
            }
        );
        let c = Charge::of(None, 5, 20, 16_000);
        assert_eq!((c.input, c.output, c.counted), (20, 5, true));
        let c = Charge::of(Some((9, 50_000)), 0, 9, 10);
        assert_eq!((c.output, c.over_cap), (10, Some(50_000)));
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let with = json!({"messages": msgs, "max_tokens": 10, "n": 2});
        assert_eq!(
            output_cap(Endpoint::Chat, with.as_object().unwrap(), 4096, 9, 20),
            20
        );
        let without = json!({"messages": msgs, "n": 2});
        assert_eq!(
            output_cap(Endpoint::Chat, without.as_object().unwrap(), 4096, 96, 512),
            8000
        );
        let response = json!({"input": "hi", "max_output_tokens": 30});
        assert_eq!(
            output_cap(
                Endpoint::Responses,
                response.as_object().unwrap(),
                4096,
                9,
                30
            ),
            30
        );
        let response = json!({"input": "hi"});
        assert_eq!(
            output_cap(
                Endpoint::Responses,
                response.as_object().unwrap(),
                4096,
                96,
                512
            ),
            4000
        );
        let embed = json!({"input": "x"});
        assert_eq!(
            output_cap(Endpoint::Embeddings, embed.as_object().unwrap(), 4096, 1, 0),
            0
        );
    }
}
