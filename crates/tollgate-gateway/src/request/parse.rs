//! Parsing and checking a request body before anything is reserved: every
//! refusal here is a precise 4xx ([`Invalid`]) and costs the client nothing.
//! What a body asks is read without knowing its model; the
//! [`estimate`](super::estimate) step counts it with the model's tokenizer.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::Invalid;
use crate::model::Endpoint;

/// A checked request body.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The endpoint it came to.
    pub(crate) endpoint: Endpoint,
    /// The parsed body.
    pub(crate) body: Map<String, Value>,
    /// The body as the client sent it (sent upstream as it is when nothing
    /// has to change: the usual non-streamed call).
    pub(crate) bytes: Bytes,
    /// The model (or route) it names.
    pub(crate) model: String,
    /// Whether the response is streamed.
    pub(crate) stream: bool,
    /// Whether the client itself asked for the usage chunk of a stream.
    pub(crate) client_wants_usage: bool,
    /// Choices asked for (`n`, chat only; else 1).
    pub(crate) n: u64,
    /// The output limit it set (`max_tokens`, `max_completion_tokens` or
    /// `max_output_tokens`).
    pub(crate) max_tokens: Option<u64>,
}

/// Parses and checks a body for an endpoint.
pub(crate) fn parse(endpoint: Endpoint, bytes: &Bytes) -> Result<Parsed, Invalid> {
    let body: Value = serde_json::from_slice(bytes).map_err(|e| {
        Invalid::new(
            "invalid_json",
            "body",
            format!("The request body is not valid JSON ({e}). Send a JSON object."),
        )
    })?;
    let Value::Object(body) = body else {
        return Err(Invalid::new(
            "invalid_json",
            "body",
            "The request body must be a JSON object.",
        ));
    };
    let model = match body.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(Invalid::new(
                "missing_model",
                "model",
                "You must provide a model parameter (a string).",
            ))
        }
    };
    let fields = match endpoint {
        Endpoint::Chat => check_chat(&body)?,
        Endpoint::Responses => check_responses(&body)?,
        // `input` is read (and checked) as it is counted.
        Endpoint::Embeddings => Fields::default(),
    };
    Ok(Parsed {
        endpoint,
        body,
        bytes: bytes.clone(),
        model,
        stream: fields.stream,
        client_wants_usage: fields.client_wants_usage,
        n: fields.n,
        max_tokens: fields.max_tokens,
    })
}

/// What an endpoint's own fields ask.
struct Fields {
    stream: bool,
    client_wants_usage: bool,
    n: u64,
    max_tokens: Option<u64>,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            stream: false,
            client_wants_usage: false,
            n: 1,
            max_tokens: None,
        }
    }
}

fn check_chat(obj: &Map<String, Value>) -> Result<Fields, Invalid> {
    check_messages(obj.get("messages"))?;
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
                return Err(Invalid::new(
                    "invalid_value",
                    "n",
                    "`n` must be an integer from 1 to 128.",
                ))
            }
        },
    };
    let max_tokens = max_tokens_of(obj, &["max_completion_tokens", "max_tokens"])?;
    // `null` is as if it were left out; anything but an object is refused
    // (else the upstream could not be asked for usage).
    if stream
        && !obj
            .get("stream_options")
            .is_none_or(|o| o.is_null() || o.is_object())
    {
        return Err(Invalid::new(
            "invalid_type",
            "stream_options",
            "`stream_options` must be an object, such as {\"include_usage\": true}.",
        ));
    }
    Ok(Fields {
        stream,
        client_wants_usage,
        n,
        max_tokens,
    })
}

/// `messages`: a non-empty array of objects with a string `role` and a
/// `content` as OpenAI defines it.
fn check_messages(messages: Option<&Value>) -> Result<(), Invalid> {
    let messages = match messages {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(Invalid::new(
                "invalid_messages",
                "messages",
                "`messages` must contain at least one message.",
            ))
        }
        Some(_) => {
            return Err(Invalid::new(
                "invalid_messages",
                "messages",
                "`messages` must be an array of message objects.",
            ))
        }
        None => {
            return Err(Invalid::new(
                "missing_messages",
                "messages",
                "Missing required parameter: `messages`.",
            ))
        }
    };
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str).is_none() {
            return Err(Invalid::new(
                "invalid_messages",
                "messages",
                format!("messages[{i}] must be an object with a string `role`."),
            ));
        }
        check_content(m.get("content"), &format!("messages[{i}].content"))?;
    }
    Ok(())
}

/// `stream`: absent, null or a boolean.
fn stream_flag(obj: &Map<String, Value>) -> Result<bool, Invalid> {
    match obj.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Invalid::new(
            "invalid_type",
            "stream",
            "`stream` must be a boolean.",
        )),
    }
}

/// A message's `content` as OpenAI defines it: a string, an array of
/// content parts (objects with a string `type`), or null/absent (an
/// assistant message with tool calls).
fn check_content(content: Option<&Value>, at: &str) -> Result<(), Invalid> {
    let bad = |why: &str| {
        Invalid::new(
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
fn check_responses(obj: &Map<String, Value>) -> Result<Fields, Invalid> {
    match obj.get("input") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if !item.is_object() {
                    return Err(Invalid::new(
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
            return Err(Invalid::new(
                "invalid_input",
                "input",
                "`input` must be a non-empty string or a non-empty array of input items.",
            ))
        }
    }
    match obj.get("instructions") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(Invalid::new(
                "invalid_type",
                "instructions",
                "`instructions` must be a string.",
            ))
        }
    }
    let stream = stream_flag(obj)?;
    let max_tokens = max_tokens_of(obj, &["max_output_tokens"])?;
    Ok(Fields {
        stream,
        max_tokens,
        ..Fields::default()
    })
}

/// The first of `fields` that is set: a positive integer.
fn max_tokens_of(
    obj: &Map<String, Value>,
    fields: &[&'static str],
) -> Result<Option<u64>, Invalid> {
    for &field in fields {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(t) if t > 0 => return Ok(Some(t)),
                _ => {
                    return Err(Invalid::new(
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
