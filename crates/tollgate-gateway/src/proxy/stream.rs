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

/// The relay's body stream.
pub struct SseRelay {
    upstream: Upstream,
    buf: BytesMut,
    admission: Option<Admission>,
    /// Drop the usage-only chunk: the client did not ask for it.
    strip_usage: bool,
    usage: Option<(u64, u64)>,
    chunks: u64,
    done: bool,
}

impl SseRelay {
    /// Relays `upstream`; settles `admission` at the end.
    pub fn new(upstream: Upstream, mut admission: Admission, strip_usage: bool) -> Self {
        admission.forwarded = true;
        admission.used = (admission.estimate.0, 0);
        SseRelay {
            upstream,
            buf: BytesMut::new(),
            admission: Some(admission),
            strip_usage,
            usage: None,
            chunks: 0,
            done: false,
        }
    }

    /// Takes the complete events out of the buffer; returns what to forward.
    fn drain_events(&mut self, out: &mut BytesMut) {
        while let Some(end) = find_event_end(&self.buf) {
            let event = self.buf.split_to(end);
            if self.inspect(&event) {
                out.extend_from_slice(&event);
            }
        }
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
        if let Some(adm) = self.admission.as_mut() {
            adm.used = self.usage.unwrap_or((adm.estimate.0, self.chunks));
        }
        forward
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(adm) = self.admission.take() {
            let (input, output) = self.usage.unwrap_or((adm.estimate.0, self.chunks));
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

/// `(prompt_tokens, completion_tokens)` of a response or chunk with usage.
pub fn usage_of(v: &Value) -> Option<(u64, u64)> {
    let u = v.get("usage")?;
    let input = u.get("prompt_tokens").and_then(Value::as_u64)?;
    let output = u
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
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
                    this.buf.extend_from_slice(&bytes);
                    let mut out = BytesMut::new();
                    this.drain_events(&mut out);
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
                    let rest = this.buf.split();
                    let forward = rest.is_empty() || this.inspect(&rest);
                    this.finish();
                    if forward && !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest.freeze())));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}
