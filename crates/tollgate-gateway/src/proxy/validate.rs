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
}

impl Endpoint {
    /// Path below the provider's base URL.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
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
        Endpoint::Chat => ModelKind::Chat,
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
    if stream {
        let opts = obj
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(o) = opts.as_object_mut() {
            o.insert("include_usage".into(), Value::Bool(true));
        }
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
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_type",
                "stream",
                "`stream` must be a boolean.",
            ))
        }
    };
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
    let mut max_tokens = None;
    for field in ["max_completion_tokens", "max_tokens"] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(t) if t > 0 => {
                    max_tokens = Some(t);
                    break;
                }
                _ => {
                    let param = if field == "max_tokens" {
                        "max_tokens"
                    } else {
                        "max_completion_tokens"
                    };
                    return Err(ApiError::invalid(
                        "invalid_value",
                        param,
                        format!("`{field}` must be a positive integer."),
                    ));
                }
            },
        }
    }
    let input = model.tokenizer.chat_input(messages, obj.get("tools"));
    let output = match max_tokens {
        Some(t) => {
            if input.saturating_add(t) > model.context_window {
                return Err(context_exceeded(model, input, t));
            }
            t
        }
        None => {
            if input >= model.context_window {
                return Err(context_exceeded(model, input, 0));
            }
            model.default_max_tokens.min(model.context_window - input)
        }
    };
    Ok((input, output.saturating_mul(n), stream, client_wants_usage))
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
