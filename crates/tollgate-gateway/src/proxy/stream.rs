//! Streaming pass-through: server-sent events are forwarded as each one is
//! complete. Every `data:` line is parsed as JSON: the usage chunk (which the
//! gateway always asks for) is read whatever the formatting and passed on
//! only to clients that asked for it; the text the chunks carry is counted
//! with the model's tokenizer, for a stream that ends without usage; a line
//! that is not JSON is dropped and counted, never forwarded.
//!
//! The relay owns the request's [`Admission`] and [`Tally`] and ends the
//! stream itself when the upstream does not: a stream that stops before its
//! end (no `[DONE]` and no `finish_reason`), breaks off, or stays silent past
//! the first-byte or between-chunks timeout ends with an error event in
//! OpenAI's shape. However it ends — the client leaving included (the body is
//! dropped) — what was used is settled once and the outcome counted once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::time::{Instant, Sleep};

use super::tally::{Stage, Tally};
use super::usage::{output_text, usage_of, Charge, Part};
use crate::admission::Admission;
use crate::estimate::Tokenizer;
use crate::gateway::Gateway;
use crate::outcome::Outcome;
use crate::routing::Model;

type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Splits an SSE byte stream into complete events and reads each.
#[derive(Debug)]
pub struct EventScanner {
    buf: BytesMut,
    tokenizer: Tokenizer,
    /// Drop the usage chunk (the client did not ask for it).
    pub strip_usage: bool,
    /// `(prompt_tokens, completion_tokens)` of the usage chunk, once seen
    /// (the last one wins: a repeated usage chunk is charged once).
    pub usage: Option<(u64, u64)>,
    /// The output text the chunks carried (counted only if no usage came).
    text: String,
    /// Every choice seen reported its `finish_reason` (or the Responses
    /// API's last event came).
    pub finished: bool,
    /// The choices (by `index`) seen and not finished yet.
    open: std::collections::BTreeSet<u64>,
    /// `data: [DONE]` was seen.
    pub done: bool,
    /// The upstream sent an error event (forwarded as it is).
    pub errored: bool,
    /// `data:` lines that were not JSON (dropped).
    pub malformed: u64,
}

impl EventScanner {
    /// A scanner counting with `tokenizer`.
    pub fn new(tokenizer: Tokenizer, strip_usage: bool) -> Self {
        EventScanner {
            buf: BytesMut::new(),
            tokenizer,
            strip_usage,
            usage: None,
            text: String::new(),
            finished: false,
            open: Default::default(),
            done: false,
            errored: false,
            malformed: 0,
        }
    }

    /// Output tokens the chunks carried, counted with the model's tokenizer.
    pub fn counted(&self) -> u64 {
        self.tokenizer.count(&self.text)
    }

    /// Takes bytes from upstream; returns the complete events to forward.
    pub fn push(&mut self, bytes: &[u8]) -> BytesMut {
        self.buf.extend_from_slice(bytes);
        let mut out = BytesMut::new();
        while let Some(end) = find_event_end(&self.buf) {
            let event = self.buf.split_to(end);
            self.inspect(&event, &mut out);
        }
        out
    }

    /// The upstream ended: returns what is left to forward (an unterminated
    /// event, read like the others).
    pub fn finish(&mut self) -> BytesMut {
        let rest = self.buf.split();
        let mut out = BytesMut::new();
        if !rest.is_empty() {
            self.inspect(&rest, &mut out);
        }
        out
    }

    /// Reads one event and appends to `out` what of it goes to the client.
    fn inspect(&mut self, event: &[u8], out: &mut BytesMut) {
        let text = String::from_utf8_lossy(event);
        let mut data: Option<String> = None;
        for line in text.lines() {
            if let Some(d) = line.strip_prefix("data:") {
                let d = d.strip_prefix(' ').unwrap_or(d);
                match &mut data {
                    Some(acc) => {
                        acc.push('\n');
                        acc.push_str(d);
                    }
                    None => data = Some(d.to_string()),
                }
            }
        }
        // Comments and events without data pass as they are; lines that are
        // no SSE field at all are dropped like malformed data.
        let Some(data) = data else {
            let sse = text.lines().all(|l| {
                l.is_empty()
                    || l.starts_with(':')
                    || ["event", "id", "retry"]
                        .iter()
                        .any(|f| l == *f || l.starts_with(&format!("{f}:")))
            });
            if sse {
                out.extend_from_slice(event);
            } else {
                self.malformed += 1;
            }
            return;
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            out.extend_from_slice(event);
            return;
        }
        if data.is_empty() {
            return;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(data) else {
            self.malformed += 1;
            // The line still carried something: count it as output text.
            self.text.push_str(data);
            return;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        if v.get("error").is_some_and(|e| !e.is_null())
            || matches!(kind, "error" | "response.failed")
        {
            self.errored = true;
            out.extend_from_slice(event);
            return;
        }
        output_text(&v, Part::Delta, &mut self.text);
        let choices = v.get("choices").and_then(Value::as_array);
        // Each chat choice ends with its `finish_reason` (`n` of them run
        // side by side); a response with its last event.
        for c in choices.into_iter().flatten() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                self.open.remove(&index);
                self.finished = self.open.is_empty();
            } else {
                self.open.insert(index);
                self.finished = false;
            }
        }
        if matches!(kind, "response.completed" | "response.incomplete") {
            self.finished = true;
        }
        // The Responses API has no `[DONE]`: its last event ends it.
        if matches!(kind, "response.completed" | "response.incomplete") {
            self.done = true;
        }
        let Some(usage) = usage_of(&v) else {
            out.extend_from_slice(event);
            return;
        };
        self.usage = Some(usage);
        // Only a chat chunk's usage is the client's to ask for.
        let chat_chunk = choices.is_some()
            || v.get("object").and_then(Value::as_str) == Some("chat.completion.chunk");
        if !self.strip_usage || !chat_chunk {
            out.extend_from_slice(event);
            return;
        }
        if choices.is_none_or(|c| c.is_empty()) {
            return;
        }
        // Usage riding on a chunk with content: pass the content on alone.
        if let Some(o) = v.as_object_mut() {
            o.remove("usage");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(v.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
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

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The upstream finished (`[DONE]`, or a `finish_reason` and then EOF).
    Complete,
    /// The upstream's own error event was forwarded.
    UpstreamError,
    /// Ended or broke off before the answer was complete.
    Broken,
    /// No byte within the first-byte or between-chunks timeout, or past
    /// the total.
    Timeout,
    /// The client went away.
    ClientGone,
}

impl End {
    fn outcome(self) -> Outcome {
        match self {
            End::Complete => Outcome::Ok,
            End::UpstreamError => Outcome::UpstreamError,
            End::Broken => Outcome::StreamBroken,
            End::Timeout => Outcome::UpstreamTimeout,
            End::ClientGone => Outcome::ClientGone,
        }
    }

    /// The error event the client gets, if any.
    fn event(self, provider: &str, timeouts: &Timeouts) -> Option<Bytes> {
        let message = match self {
            End::Complete | End::UpstreamError | End::ClientGone => return None,
            End::Broken => format!(
                "The upstream provider {provider:?} ended the stream before the answer was complete; retry."
            ),
            End::Timeout => format!(
                "The upstream provider {provider:?} sent nothing for too long (first byte within {:?}, then a chunk at least every {:?}, all within {:?}); retry.",
                timeouts.first_byte, timeouts.idle, timeouts.total
            ),
        };
        let body = json!({"error": {
            "message": message,
            "type": "server_error",
            "param": null,
            "code": self.outcome().as_str(),
        }});
        Some(Bytes::from(format!("data: {body}\n\n")))
    }
}

/// The timeouts of a streamed answer.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the request going out to the first byte of the body.
    pub first_byte: Duration,
    /// Longest silence between two chunks.
    pub idle: Duration,
    /// The whole request.
    pub total: Duration,
}

/// What the relay needs to know of its request.
pub struct Relayed {
    /// The gateway (metrics).
    pub gw: Arc<Gateway>,
    /// The model it went to.
    pub model: Arc<Model>,
    /// Its reservations.
    pub admission: Admission,
    /// Its entry in the request counter.
    pub tally: Tally,
    /// The most output it may be charged.
    pub cap: u64,
    /// Drop the usage chunk (the client did not ask for it).
    pub strip_usage: bool,
    /// When the request went upstream.
    pub sent: Instant,
    /// Its timeouts.
    pub timeouts: Timeouts,
}

/// The relay's body stream.
pub struct SseRelay {
    upstream: Upstream,
    scanner: EventScanner,
    req: Option<Relayed>,
    deadline: Pin<Box<Sleep>>,
    total_end: Instant,
    idle: Duration,
    timeouts: Timeouts,
    provider: String,
}

impl SseRelay {
    /// Relays `upstream` for the request `req`.
    pub fn new(upstream: Upstream, mut req: Relayed) -> Self {
        req.tally.stage(Stage::Streaming);
        let t = req.timeouts;
        let total_end = req.sent + t.total;
        let first = (req.sent + t.first_byte).min(total_end);
        SseRelay {
            upstream,
            scanner: EventScanner::new(req.model.tokenizer, req.strip_usage),
            provider: req.model.provider.clone(),
            deadline: Box::pin(tokio::time::sleep_until(first)),
            total_end,
            idle: t.idle,
            timeouts: t,
            req: Some(req),
        }
    }

    /// How a stream that stopped (`cut`: broken off, or timed out) ended:
    /// with the upstream's own error, complete (its last event or a
    /// `finish_reason` came: only `[DONE]` or the usage chunk is missing),
    /// or as `cut`.
    fn verdict(&self, cut: End) -> End {
        let s = &self.scanner;
        if s.errored {
            End::UpstreamError
        } else if s.done || s.finished {
            End::Complete
        } else {
            cut
        }
    }

    /// Ends the stream: settles, counts, logs; returns what to send last.
    fn end(&mut self, how: End) -> Option<Bytes> {
        let mut req = self.req.take()?;
        // Close the upstream connection now, not when the body is dropped.
        self.upstream = Box::pin(futures_util::stream::empty());
        let s = &self.scanner;
        // Counting is done only when it is needed: no usage came.
        let counted = if s.usage.is_some() { 0 } else { s.counted() };
        let charge = Charge::of(s.usage, counted, req.admission.estimate.0, req.cap);
        let model = &req.model;
        let client = req.tally.client_id().to_string();
        note_charge(&req.gw, model, &client, &charge);
        if s.malformed > 0 {
            req.gw.metrics.add(
                "tollgate_stream_malformed_lines_total",
                &[("model", &model.name)],
                s.malformed as f64,
            );
            tracing::warn!(model = %model.name, client = %client, lines = s.malformed, "upstream stream had data: lines that are not JSON; dropped");
        }
        let adm = req.admission;
        let (input, output) = (charge.input, charge.output);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { adm.settle(input, output).await });
        }
        req.tally.record(how.outcome());
        let tail = how.event(&self.provider, &self.timeouts);
        if how == End::Complete && !self.scanner.done {
            // It finished but did not say so: end it as OpenAI does.
            return Some(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        tail
    }
}

/// Counts a charge that was not the upstream's plain report: usage missing
/// (counted instead) or output beyond what the request allowed (capped).
pub(crate) fn note_charge(gw: &Gateway, model: &Model, client: &str, c: &Charge) {
    if c.counted {
        gw.metrics
            .inc("tollgate_usage_missing_total", &[("model", &model.name)]);
        tracing::info!(model = %model.name, client = %client, output = c.output, "upstream answer without usage; charged the tokens it carried");
    }
    if let Some(reported) = c.over_cap {
        gw.metrics
            .inc("tollgate_usage_over_limit_total", &[("model", &model.name)]);
        tracing::warn!(model = %model.name, client = %client, reported, charged = c.output, "upstream output beyond max_tokens x n; charged at most that");
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.req.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    let next = (Instant::now() + this.idle).min(this.total_end);
                    this.deadline.as_mut().reset(next);
                    let out = this.scanner.push(&bytes);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let cut = if e.is_timeout() {
                        End::Timeout
                    } else {
                        End::Broken
                    };
                    let how = this.verdict(cut);
                    let outcome = how.outcome().as_str();
                    tracing::warn!(provider = %this.provider, outcome, error = %e, "upstream stream stopped before its end");
                    return Poll::Ready(this.end(how).map(Ok));
                }
                Poll::Ready(None) => {
                    let mut out = this.scanner.finish();
                    let how = this.verdict(End::Broken);
                    if let Some(tail) = this.end(how) {
                        out.extend_from_slice(&tail);
                    }
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(out.freeze())));
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        let how = this.verdict(End::Timeout);
                        return Poll::Ready(this.end(how).map(Ok));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        self.end(End::ClientGone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(all: &str, strip: bool, piece: usize) -> (EventScanner, String) {
        let mut s = EventScanner::new(Tokenizer::O200k, strip);
        let mut out = Vec::new();
        for p in all.as_bytes().chunks(piece) {
            out.extend_from_slice(&s.push(p));
        }
        out.extend_from_slice(&s.finish());
        (s, String::from_utf8(out).unwrap())
    }

    #[test]
    fn reads_usage_however_it_is_spaced_and_strips_it_for_clients_that_did_not_ask() {
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\n";
        let last = "data: {\"choices\": [{\"delta\": {}, \"finish_reason\": \"stop\"}]}\n\n";
        for usage in [
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\r\n\r\n",
            "data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 7, \"completion_tokens\": 3}}\n\n",
            // One JSON document over several data: lines (joined by "\n").
            "data:{ \"choices\" : [ ] ,\ndata: \"usage\" :\ndata: {\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n",
        ] {
            let all = format!("{content}{content}{last}{usage}data: [DONE]\n\n");
            let (s, out) = scan(&all, true, 5);
            assert_eq!(out, format!("{content}{content}{last}data: [DONE]\n\n"));
            assert_eq!((s.usage, s.counted()), (Some((7, 3)), 2));
            assert!(s.done && s.finished && s.malformed == 0);
            // Kept when the client asked for it.
            let (_, out) = scan(&all, false, 7);
            assert_eq!(out, all);
        }
    }

    #[test]
    fn drops_malformed_lines_and_takes_usage_off_a_content_chunk() {
        let all = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[{\"delta\n\n: keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"!\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]";
        let (s, out) = scan(all, true, 3);
        assert_eq!(s.malformed, 1);
        assert_eq!(s.usage, Some((5, 2)));
        assert!(!out.contains("{\"delta\n"), "{out}");
        assert!(out.contains(": keep-alive\n\n"), "{out}");
        assert!(!out.contains("usage"), "{out}");
        assert!(out.contains("\"finish_reason\":\"stop\""), "{out}");
        assert!(out.ends_with("data: [DONE]"), "{out}");
        let (s, out) = scan("<html>oops</html>\n\nevent: ping\n\n", true, 4);
        assert_eq!((s.malformed, out.as_str()), (1, "event: ping\n\n"));
    }

    #[test]
    fn reads_the_responses_api_events_and_knows_its_last_one() {
        let delta = "event: response.output_text.delta\ndata: {\"type\": \"response.output_text.delta\", \"delta\": \"hello world\"}\n\n";
        let done = "event: response.completed\ndata: {\"type\": \"response.completed\", \"response\": {\"usage\": {\"input_tokens\": 4, \"output_tokens\": 2}}}\n\n";
        let all = format!("{delta}{done}");
        // Nothing is stripped: the usage is part of the response's last event.
        let (s, out) = scan(&all, true, 9);
        assert_eq!(out, all);
        assert_eq!((s.usage, s.counted()), (Some((4, 2)), 2));
        assert!(s.done && s.finished && !s.errored);
        // Two choices, one of them finished: not finished.
        let a = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n";
        let b = "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"b\"}}]}\n\n";
        let a_end =
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        let b_end =
            "data: {\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n";
        let (s, _) = scan(&format!("{a}{b}{a_end}"), true, 7);
        assert!(!s.finished);
        let (s, _) = scan(&format!("{a}{b}{a_end}{b_end}"), true, 7);
        assert!(s.finished);
        // Cut before its last event: not done.
        let (s, _) = scan(delta, true, 9);
        assert!(!s.done && !s.finished);
        let failed =
            "event: response.failed\ndata: {\"type\": \"response.failed\", \"response\": {}}\n\n";
        let (s, out) = scan(failed, true, 9);
        assert!(s.errored);
        assert_eq!(out, failed, "the upstream's own failure is passed on");
    }

    #[test]
    fn error_events_are_named_in_openai_shape() {
        let t = Timeouts {
            first_byte: Duration::from_secs(1),
            idle: Duration::from_secs(2),
            total: Duration::from_secs(3),
        };
        for how in [End::Broken, End::Timeout] {
            let e = how.event("p", &t).unwrap();
            let text = std::str::from_utf8(&e).unwrap();
            let v: Value = serde_json::from_str(text.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["error"]["code"], how.outcome().as_str());
            assert_eq!(v["error"]["type"], "server_error");
        }
        assert!(End::Complete.event("p", &t).is_none());
    }
}
