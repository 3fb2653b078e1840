//! Parsing and checking a request body before anything is reserved: every
//! refusal here is a precise 4xx and costs the client nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::config::ModelKind;
use crate::error::ApiError;
use crate::routing::{route, Model};

/// The endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses` (OpenAI's Responses API), served by chat models.
    Responses,
}

impl Endpoint {
    /// Path below the provider's base URL.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
        }
    }

    /// Every endpoint, in the order of [`Model`]'s upstream URLs.
    pub const ALL: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Embeddings, Endpoint::Responses];
}

/// A checked request.
#[derive(Debug)]
pub struct Checked {
    /// The model it goes to.
    pub model: Arc<Model>,
    /// The parsed body (model renamed, usage requested for streams).
    pub body: Value,
    /// The bytes to send upstream: the client's own when nothing had to
    /// change (the usual non-streamed call), else `body` serialised.
    pub upstream_body: Bytes,
    /// Estimated input tokens.
    pub input: u64,
    /// Estimated output tokens (`max_tokens` × `n`, or the model's default).
    pub output: u64,
    /// Whether the response is streamed.
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk of a stream.
    pub client_wants_usage: bool,
}

/// Parses and checks a body for an endpoint.
pub fn check(
    models: &BTreeMap<String, Arc<Model>>,
    endpoint: Endpoint,
    bytes: &Bytes,
) -> Result<Checked, ApiError> {
    let mut body: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(
            "invalid_json",
            "body",
            format!("The request body is not valid JSON ({e}). Send a JSON object."),
        )
    })?;
    let obj = body.as_object_mut().ok_or_else(|| {
        ApiError::invalid(
            "invalid_json",
            "body",
            "The request body must be a JSON object.",
        )
    })?;
    let name = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(ApiError::invalid(
                "missing_model",
                "model",
                "You must provide a model parameter (a string).",
            ))
        }
    };
    let model = route(models, &name).and_then(|r| r.primary().cloned()).ok_or_else(|| {
        let mut e = ApiError::invalid(
            "model_not_found",
            "model",
            format!("The model {name:?} does not exist on this gateway; GET /v1/models lists the models you can use."),
        );
        e.status = axum::http::StatusCode::NOT_FOUND;
        e
    })?;
    let wanted = match endpoint {
        Endpoint::Chat | Endpoint::Responses => ModelKind::Chat,
        Endpoint::Embeddings => ModelKind::Embeddings,
    };
    if model.kind != wanted {
        return Err(ApiError::invalid(
            "model_not_supported",
            "model",
            format!(
                "The model {name:?} is a {:?} model and cannot serve this endpoint.",
                model.kind
            )
            .to_lowercase(),
        ));
    }
    let (input, output, stream, client_wants_usage) = match endpoint {
        Endpoint::Chat => check_chat(obj, &model)?,
        Endpoint::Responses => check_responses(obj, &model)?,
        Endpoint::Embeddings => {
            let input = obj
                .get("input")
                .and_then(|v| model.tokenizer.embeddings_input(v))
                .ok_or_else(|| ApiError::invalid("invalid_input", "input", "`input` must be a non-empty string, array of strings, or array of token arrays."))?;
            if input > model.context_window {
                return Err(context_exceeded(&model, input, 0));
            }
            (input, 0, false, false)
        }
    };
    let unchanged = !stream && model.upstream_name == name;
    obj.insert("model".into(), Value::String(model.upstream_name.clone()));
    // The Responses API reports usage in its final event by itself.
    if stream && endpoint == Endpoint::Chat {
        let opts = obj
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        // `null` is as if it were left out; anything but an object is refused
        // (else the upstream would not be asked for usage).
        if opts.is_null() {
            *opts = Value::Object(Default::default());
        }
        let Some(o) = opts.as_object_mut() else {
            return Err(ApiError::invalid(
                "invalid_type",
                "stream_options",
                "`stream_options` must be an object, such as {\"include_usage\": true}.",
            ));
        };
        o.insert("include_usage".into(), Value::Bool(true));
    }
    let upstream_body = if unchanged {
        bytes.clone()
    } else {
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    };
    Ok(Checked {
        model,
        body,
        upstream_body,
        input,
        output,
        stream,
        client_wants_usage,
    })
}

fn check_chat(
    obj: &serde_json::Map<String, Value>,
    model: &Model,
) -> Result<(u64, u64, bool, bool), ApiError> {
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "invalid_messages",
                "messages",
                "`messages` must contain at least one message.",
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_messages",
                "messages",
                "`messages` must be an array of message objects.",
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "missing_messages",
                "messages",
                "Missing required parameter: `messages`.",
            ))
        }
    };
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str).is_none() {
            return Err(ApiError::invalid(
                "invalid_messages",
                "messages",
                format!("messages[{i}] must be an object with a string `role`."),
            ));
        }
        check_content(m.get("content"), &format!("messages[{i}].content"))?;
    }
    let stream = stream_flag(obj)?;
    let client_wants_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let n = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=128).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "invalid_value",
                    "n",
                    "`n` must be an integer from 1 to 128.",
                ))
            }
        },
    };
    let max_tokens = max_tokens_of(obj, &["max_completion_tokens", "max_tokens"])?;
    let input = model.tokenizer.chat_input(messages, obj.get("tools"));
    let output = output_estimate(model, input, max_tokens)?;
    Ok((input, output.saturating_mul(n), stream, client_wants_usage))
}

/// `stream`: absent, null or a boolean.
fn stream_flag(obj: &serde_json::Map<String, Value>) -> Result<bool, ApiError> {
    match obj.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            "invalid_type",
            "stream",
            "`stream` must be a boolean.",
        )),
    }
}

/// A message's `content` as OpenAI defines it: a string, an array of
/// content parts (objects with a string `type`), or null/absent (an
/// assistant message with tool calls).
fn check_content(content: Option<&Value>, at: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        ApiError::invalid(
            "invalid_content",
            "messages",
            format!("`{at}` {why}: give a string, or an array of content parts such as [{{\"type\": \"text\", \"text\": \"...\"}}]."),
        )
    };
    match content {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                if p.get("type").and_then(Value::as_str).is_none() {
                    return Err(bad(&format!(
                        "has a part [{j}] that is not an object with a string `type`"
                    )));
                }
            }
            Ok(())
        }
        Some(Value::Object(_)) => Err(bad("is an object")),
        Some(_) => Err(bad("has the wrong type")),
    }
}

/// `POST /v1/responses`: `input` (a string or an array of input items),
/// optional `instructions`, `max_output_tokens` and `stream`.
fn check_responses(
    obj: &serde_json::Map<String, Value>,
    model: &Model,
) -> Result<(u64, u64, bool, bool), ApiError> {
    match obj.get("input") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if !item.is_object() {
                    return Err(ApiError::invalid(
                        "invalid_input",
                        "input",
                        format!("input[{i}] must be an input item (an object such as {{\"role\": \"user\", \"content\": \"...\"}})."),
                    ));
                }
                if item.get("role").is_some() {
                    check_content(item.get("content"), &format!("input[{i}].content"))?;
                }
            }
        }
        _ => {
            return Err(ApiError::invalid(
                "invalid_input",
                "input",
                "`input` must be a non-empty string or a non-empty array of input items.",
            ))
        }
    }
    let instructions = match obj.get("instructions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_type",
                "instructions",
                "`instructions` must be a string.",
            ))
        }
    };
    let stream = stream_flag(obj)?;
    let max_tokens = max_tokens_of(obj, &["max_output_tokens"])?;
    let input = model
        .tokenizer
        .responses_input(&obj["input"], instructions, obj.get("tools"));
    let output = output_estimate(model, input, max_tokens)?;
    Ok((input, output, stream, false))
}

/// The first of `fields` that is set: a positive integer.
fn max_tokens_of(
    obj: &serde_json::Map<String, Value>,
    fields: &[&'static str],
) -> Result<Option<u64>, ApiError> {
    for &field in fields {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(t) if t > 0 => return Ok(Some(t)),
                _ => {
                    return Err(ApiError::invalid(
                        "invalid_value",
                        field,
                        format!("`{field}` must be a positive integer."),
                    ));
                }
            },
        }
    }
    Ok(None)
}

/// The output estimate: `max_tokens`, or the model's default within what
/// the context window leaves.
fn output_estimate(model: &Model, input: u64, max_tokens: Option<u64>) -> Result<u64, ApiError> {
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

fn context_exceeded(model: &Model, input: u64, max_tokens: u64) -> ApiError {
    ApiError::invalid(
        "context_length_exceeded",
        if max_tokens > 0 { "max_tokens" } else { "messages" },
        format!(
            "This model's maximum context length is {} tokens. However, you requested about {} tokens ({input} in the messages, {max_tokens} in max_tokens). Reduce the length of the messages or max_tokens.",
            model.context_window,
            input + max_tokens
        ),
    )
}
