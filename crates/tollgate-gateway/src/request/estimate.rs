//! The token estimate a request is admitted on: its input counted with the
//! model's tokenizer, its output from `max_tokens` (× `n`) or the model's
//! default within what the context window leaves, and the most output the
//! answer may be charged. A request the model's context window cannot hold
//! is refused here, before anything is reserved.

use serde_json::Value;

use super::parse::Parsed;
use super::settle::Usage;
use super::usage::output_cap;
use super::Invalid;
use crate::model::{Endpoint, Model};

/// What a request is admitted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Estimated input and output tokens.
    pub(crate) tokens: Usage,
    /// The most output the answer may be charged.
    pub(crate) cap: u64,
}

/// The estimate of `req` on `model`.
pub(crate) fn estimate(req: &Parsed, model: &Model) -> Result<Estimate, Invalid> {
    let obj = &req.body;
    let (input, output) = match req.endpoint {
        Endpoint::Chat => {
            let messages = obj["messages"].as_array().map_or(&[][..], Vec::as_slice);
            let input = model.tokenizer.chat_input(messages, obj.get("tools"));
            let output = output_estimate(model, input, req.max_tokens)?;
            (input, output.saturating_mul(req.n))
        }
        Endpoint::Responses => {
            let instructions = obj.get("instructions").and_then(Value::as_str);
            let input =
                model
                    .tokenizer
                    .responses_input(&obj["input"], instructions, obj.get("tools"));
            (input, output_estimate(model, input, req.max_tokens)?)
        }
        Endpoint::Embeddings => (embeddings_input(req, model)?, 0),
    };
    let cap = output_cap(req.endpoint, obj, model.context_window, input, output);
    Ok(Estimate {
        tokens: Usage::new(input, output),
        cap,
    })
}

/// The tokens of an embeddings request's `input`, which must fit the
/// context window.
fn embeddings_input(req: &Parsed, model: &Model) -> Result<u64, Invalid> {
    let input = req
        .body
        .get("input")
        .and_then(|v| model.tokenizer.embeddings_input(v))
        .ok_or_else(|| {
            Invalid::new(
                "invalid_input",
                "input",
                "`input` must be a non-empty string, array of strings, or array of token arrays.",
            )
        })?;
    if input > model.context_window {
        return Err(context_exceeded(model, input, 0));
    }
    Ok(input)
}

/// The output estimate: `max_tokens`, or the model's default within what
/// the context window leaves.
fn output_estimate(model: &Model, input: u64, max_tokens: Option<u64>) -> Result<u64, Invalid> {
    match max_tokens {
        Some(t) => {
            if input.saturating_add(t) > model.context_window {
                return Err(context_exceeded(model, input, t));
            }
            Ok(t)
        }
        None => {
            if input >= model.context_window {
                return Err(context_exceeded(model, input, 0));
            }
            Ok(model.default_max_tokens.min(model.context_window - input))
        }
    }
}

fn context_exceeded(model: &Model, input: u64, max_tokens: u64) -> Invalid {
    Invalid::new(
        "context_length_exceeded",
        if max_tokens > 0 { "max_tokens" } else { "messages" },
        format!(
            "This model's maximum context length is {} tokens. However, you requested about {} tokens ({input} in the messages, {max_tokens} in max_tokens). Reduce the length of the messages or max_tokens.",
            model.context_window,
            input + max_tokens
        ),
    )
}
