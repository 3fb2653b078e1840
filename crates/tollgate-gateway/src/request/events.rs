//! Reading a server-sent event stream as it passes: events split as each
//! one is complete; every `data:` line parsed as JSON: the usage chunk
//! (which the gateway always asks for) read whatever the formatting and
//! passed on only to clients that asked for it; the text the chunks carry
//! collected, to be counted with the model's tokenizer for a stream that
//! ends without usage; a line that is not JSON dropped and counted, never
//! forwarded.

use bytes::BytesMut;
use serde_json::Value;

use super::usage::{output_text, usage_of, Part};
use crate::tokenizer::Tokenizer;

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
        // Comments and events without data pass as they are; lines that are
        // no SSE field at all are dropped like malformed data.
        let Some(data) = data_of(&text) else {
            if is_sse(&text) {
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
        let Ok(v) = serde_json::from_str::<Value>(data) else {
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
        self.track_choices(&v);
        // The Responses API has no `[DONE]`: its last event ends it.
        if matches!(kind, "response.completed" | "response.incomplete") {
            self.finished = true;
            self.done = true;
        }
        self.pass_on(v, event, out);
    }

    /// Each chat choice ends with its `finish_reason` (`n` of them run side
    /// by side).
    fn track_choices(&mut self, v: &Value) {
        let choices = v.get("choices").and_then(Value::as_array);
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
    }

    /// Appends to `out` what of the JSON event `v` goes to the client: all
    /// of it, unless it is a chat chunk's usage that the client did not ask
    /// for (then none of it, or its content alone).
    fn pass_on(&mut self, mut v: Value, event: &[u8], out: &mut BytesMut) {
        let Some(usage) = usage_of(&v) else {
            out.extend_from_slice(event);
            return;
        };
        self.usage = Some(usage);
        let choices = v.get("choices").and_then(Value::as_array);
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

/// An event's `data:` lines joined by `\n`, if it has any.
fn data_of(text: &str) -> Option<String> {
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
    data
}

/// Whether every line of an event without data is an SSE comment or field.
fn is_sse(text: &str) -> bool {
    text.lines().all(|l| {
        l.is_empty()
            || l.starts_with(':')
            || ["event", "id", "retry"]
                .iter()
                .any(|f| l == *f || l.starts_with(&format!("{f}:")))
    })
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
}
