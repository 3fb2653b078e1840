//! Streaming pass-through: server-sent events are forwarded as each one is
//! complete, while the relay watches them for the usage chunk (which the
//! gateway always asks for) and counts content chunks as a lower bound of the
//! output so far. The relay owns the [`Admission`]: when the stream ends it
//! settles the final usage; when the client disconnects (the body is dropped)
//! or the upstream fails mid-stream, the admission settles what was seen and
//! releases the rest.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde_json::Value;

use crate::admission::Admission;

type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Splits an SSE byte stream into complete events and watches them: the
/// usage chunk (kept or dropped) and the number of content chunks.
#[derive(Debug, Default)]
pub struct EventScanner {
    buf: BytesMut,
    /// Drop the usage-only chunk (the client did not ask for it).
    pub strip_usage: bool,
    /// `(prompt_tokens, completion_tokens)` of the usage chunk, once seen.
    pub usage: Option<(u64, u64)>,
    /// Chunks that carried content so far (about one token each).
    pub chunks: u64,
}

impl EventScanner {
    /// Takes bytes from upstream; returns the complete events to forward.
    pub fn push(&mut self, bytes: &[u8]) -> BytesMut {
        self.buf.extend_from_slice(bytes);
        let mut out = BytesMut::new();
        while let Some(end) = find_event_end(&self.buf) {
            let event = self.buf.split_to(end);
            if self.inspect(&event) {
                out.extend_from_slice(&event);
            }
        }
        out
    }

    /// The upstream ended: returns what is left to forward (an unterminated event).
    pub fn finish(&mut self) -> BytesMut {
        let rest = self.buf.split();
        if rest.is_empty() || !self.inspect(&rest) {
            return BytesMut::new();
        }
        rest
    }

    /// Looks at one event; returns whether to forward it.
    fn inspect(&mut self, event: &[u8]) -> bool {
        let text = String::from_utf8_lossy(event);
        let mut forward = true;
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" || data.is_empty() {
                continue;
            }
            if data.contains("\"content\":\"") && !data.contains("\"content\":\"\"") {
                self.chunks += 1;
            }
            if data.contains("\"usage\":{") {
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    if let Some(u) = usage_of(&v) {
                        self.usage = Some(u);
                    }
                    let no_choices = v
                        .get("choices")
                        .and_then(Value::as_array)
                        .is_some_and(|c| c.is_empty());
                    if self.strip_usage && no_choices {
                        forward = false;
                    }
                }
            }
        }
        forward
    }
}

/// The relay's body stream.
pub struct SseRelay {
    upstream: Upstream,
    scanner: EventScanner,
    admission: Option<Admission>,
    done: bool,
}

impl SseRelay {
    /// Relays `upstream`; settles `admission` at the end.
    pub fn new(upstream: Upstream, mut admission: Admission, strip_usage: bool) -> Self {
        admission.forwarded = true;
        admission.used = (admission.estimate.0, 0);
        SseRelay {
            upstream,
            scanner: EventScanner {
                strip_usage,
                ..Default::default()
            },
            admission: Some(admission),
            done: false,
        }
    }

    /// What is known to be used so far: the usage chunk, or the estimated
    /// input and the content chunks seen.
    fn used(&self, estimate_input: u64) -> (u64, u64) {
        self.scanner
            .usage
            .unwrap_or((estimate_input, self.scanner.chunks))
    }

    fn track(&mut self) {
        if let Some(input) = self.admission.as_ref().map(|a| a.estimate.0) {
            let used = self.used(input);
            if let Some(adm) = self.admission.as_mut() {
                adm.used = used;
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(adm) = self.admission.take() {
            let (input, output) = self.used(adm.estimate.0);
            tokio::spawn(async move {
                adm.settle(input, output).await;
            });
        }
    }
}

/// The end (exclusive) of the first complete event: after a blank line.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `(prompt_tokens, completion_tokens)` of a response body, read without
/// building the whole document (the rest of it is skipped, not stored).
/// The Responses API names them `input_tokens` and `output_tokens`.
pub fn usage_in(body: &[u8]) -> Option<(u64, u64)> {
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

/// `(prompt_tokens, completion_tokens)` of a response or chunk with usage;
/// also of the Responses API's final event (`response.usage`, with
/// `input_tokens` and `output_tokens`).
pub fn usage_of(v: &Value) -> Option<(u64, u64)> {
    let u = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.get("response")?.get("usage"))?;
    let tokens = |a: &str, b: &str| u.get(a).or_else(|| u.get(b)).and_then(Value::as_u64);
    let input = tokens("prompt_tokens", "input_tokens")?;
    let output = tokens("completion_tokens", "output_tokens").unwrap_or(0);
    Some((input, output))
}

impl Stream for SseRelay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => {
                    let out = this.scanner.push(&bytes);
                    this.track();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream failed; settling what was used");
                    this.finish();
                    return Poll::Ready(Some(Err(std::io::Error::other("upstream stream failed"))));
                }
                Poll::Ready(None) => {
                    let rest = this.scanner.finish();
                    this.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest.freeze())));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_whole_events_across_chunk_boundaries_and_finds_usage() {
        let mut s = EventScanner {
            strip_usage: true,
            ..Default::default()
        };
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\r\n\r\n";
        let all = format!("{content}{content}{usage}data: [DONE]\n\n");
        let mut out = Vec::new();
        for piece in all.as_bytes().chunks(5) {
            out.extend_from_slice(&s.push(piece));
        }
        out.extend_from_slice(&s.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{content}{content}data: [DONE]\n\n")
        );
        assert_eq!((s.usage, s.chunks), (Some((7, 3)), 2));
        let body = br#"{"id":"x","choices":[{"message":{"content":"{}"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        assert_eq!(usage_in(body), Some((7, 3)));
        assert_eq!(usage_in(br#"{"usage":{"prompt_tokens":5}}"#), Some((5, 0)));
        assert_eq!(usage_in(br#"{"choices":[]}"#), None);
        // Kept when the client asked for it; an unterminated tail still goes out.
        let mut s = EventScanner::default();
        let out = s.push(usage.as_bytes());
        assert_eq!(out.len(), usage.len());
        assert!(s.push(b"data: [DONE]").is_empty());
        assert_eq!(&s.finish()[..], b"data: [DONE]");
    }
}
