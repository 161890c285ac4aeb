//! Reading a `text/event-stream` as it passes, without changing it: where events end, and
//! which events carry data.
//!
//! Frames do not align with events (an event may span frames, a frame may hold several), so
//! the scanner keeps its state across frames. It follows the SSE line rules: lines end with
//! CRLF, LF or CR; a line starting with `:` is a comment; an empty line ends an event; a
//! `data` field (with or without a value) gives the event data; an `event` field, its name.

/// Judges an event by its name (the value of its last `event` field, empty when it has
/// none) and its data: does it count?
pub(crate) type EventFilter<'a> = dyn Fn(&[u8], &[u8]) -> bool + 'a;

/// What one call to [`Scanner::feed`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// The offset just past the last event boundary (an empty line) in the fed bytes.
    pub(crate) last_boundary: Option<usize>,
    /// Whether an event that carries data (and passes the filter) ended in the fed bytes.
    pub(crate) data_event: bool,
}

/// Incremental SSE scanner.
#[derive(Debug)]
pub(crate) struct Scanner {
    at_line_start: bool,
    after_cr: bool,
    line: Line,
    event_has_data: bool,
    /// The current event's data, kept only when a filter needs to read it.
    data: Option<Vec<u8>>,
    /// The current event's name, kept only when a filter needs to read it.
    name: Option<Vec<u8>>,
    /// While the first event that counts is awaited, to tell whether it is an error.
    watch_first: bool,
    /// The first event that counted, when it was an error: its name and data.
    first_error: Option<(Vec<u8>, Vec<u8>)>,
    /// The filter only decides whether the bytes fed count: once an event of them counts,
    /// the later ones are not judged (the crate's own filter; a caller's sees every event).
    judge_until_one_counts: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// In the field name; how many bytes of `data` it has matched so far.
    Name(u8),
    /// In a `data` field's value; `true` until its first byte (a leading space is dropped).
    Data(bool),
    /// In the field name, when names are kept; how many bytes of `event` it has matched.
    EventName(u8),
    /// In an `event` field's value; `true` until its first byte.
    Event(bool),
    /// In a comment or another field.
    Other,
}

/// The current event's data while it is a single value of the bytes being fed: where it is,
/// and whether its line has ended (the data kept across frames is the same value, then an LF).
struct Borrowed {
    range: std::ops::Range<usize>,
    line_ended: bool,
}

const DATA: &[u8; 4] = b"data";
const EVENT: &[u8; 5] = b"event";

impl Scanner {
    /// A scanner at the start of a stream; `keep_data` when a filter must read each event's
    /// name and data.
    pub(crate) fn new(keep_data: bool) -> Self {
        Scanner {
            at_line_start: true,
            after_cr: false,
            line: Line::Name(0),
            event_has_data: false,
            data: keep_data.then(Vec::new),
            name: keep_data.then(Vec::new),
            watch_first: false,
            first_error: None,
            judge_until_one_counts: false,
        }
    }

    /// The filter is asked until one event of the bytes fed counts, not for every event:
    /// for a filter that only tells whether the bytes count, with no effect of its own.
    pub(crate) fn judging_until_one_counts(mut self) -> Self {
        self.judge_until_one_counts = true;
        self
    }

    /// A scanner that also tells whether the first event that counts is an error
    /// ([`take_first_error`](Self::take_first_error)); it reads names and data.
    pub(crate) fn watching_the_first_event() -> Self {
        Scanner {
            watch_first: true,
            ..Scanner::new(true)
        }
    }

    /// The first event that counted, if it was an error: its name and data.
    pub(crate) fn take_first_error(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.first_error.take()
    }

    /// Feeds the next bytes of the stream; `filter` judges each completed event.
    pub(crate) fn feed(&mut self, bytes: &[u8], filter: Option<&EventFilter<'_>>) -> Scanned {
        let mut scanned = Scanned::default();
        // Once an event of the bytes counts and later ones need no judging, only the last
        // boundary and the state after it are left to find.
        let verdict_stands = self.judge_until_one_counts || filter.is_none();
        let mut skipped = false;
        // The current event's data while it is one value of these bytes: the filter reads it
        // there, and it is copied only if the event goes on past them.
        let mut borrowed = None;
        let mut i = 0;
        while i < bytes.len() {
            match self.line {
                // The rest of a comment, another field or a value: only its end matters.
                Line::Other | Line::Data(_) | Line::Event(_) => {
                    i = self.value(bytes, i, &mut borrowed);
                    if i == bytes.len() {
                        break;
                    }
                }
                // A line that starts with a whole `data:` or `event:`: past it at once.
                Line::Name(0) => {
                    let rest = &bytes[i..];
                    let field = if rest.starts_with(b"data:") {
                        self.event_has_data = true;
                        Some((Line::Data(true), DATA.len() + 1))
                    } else if self.name.is_some() && rest.starts_with(b"event:") {
                        self.clear_name();
                        Some((Line::Event(true), EVENT.len() + 1))
                    } else {
                        None
                    };
                    if let Some((line, len)) = field {
                        self.at_line_start = false;
                        self.after_cr = false;
                        self.line = line;
                        i += len;
                        continue;
                    }
                }
                Line::Name(_) | Line::EventName(_) => {}
            }
            let (at, b) = (i, bytes[i]);
            i += 1;
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                // The LF of a CRLF: an event that ended at the CR ends after it.
                if scanned.last_boundary == Some(at) {
                    scanned.last_boundary = Some(i);
                }
                continue;
            }
            if b == b'\n' || b == b'\r' {
                self.after_cr = b == b'\r';
                if self.at_line_start {
                    scanned.last_boundary = Some(i);
                    // Once the bytes count, the first event that counted has been seen (the
                    // one watched for an error) and no answer can change the verdict.
                    let judged = match self.judge_until_one_counts && scanned.data_event {
                        true => None,
                        false => filter,
                    };
                    let value = borrowed.take().map(|b: Borrowed| &bytes[b.range]);
                    scanned.data_event |= self.end_event(judged, value);
                } else {
                    self.end_line(bytes, &mut borrowed);
                }
                self.at_line_start = true;
                self.line = Line::Name(0);
                if scanned.data_event && verdict_stands && !std::mem::replace(&mut skipped, true) {
                    i = self.skip_to_last_boundary(bytes, i);
                }
                continue;
            }
            self.at_line_start = false;
            self.line = match self.line {
                Line::Name(4) if b == b':' => {
                    self.event_has_data = true;
                    Line::Data(true)
                }
                Line::Name(n) if n < 4 && b == DATA[n as usize] => Line::Name(n + 1),
                // Names are only read for a filter: without one, the line is skipped.
                Line::Name(0) if b == EVENT[0] && self.name.is_some() => Line::EventName(1),
                Line::EventName(5) if b == b':' => {
                    self.clear_name();
                    Line::Event(true)
                }
                Line::EventName(n) if n < 5 && b == EVENT[n as usize] => Line::EventName(n + 1),
                // Another field (values were read to their line end above).
                _ => Line::Other,
            };
        }
        self.keep(bytes, &mut borrowed);
        scanned
    }

    /// Reads the current line's value (or comment) from `at` to its end or the end of
    /// `bytes`, keeping what a filter will read; where it stopped.
    fn value(&mut self, bytes: &[u8], mut at: usize, borrowed: &mut Option<Borrowed>) -> usize {
        if let Line::Data(first) | Line::Event(first) = self.line {
            // One space before a value is not part of it.
            if first && bytes[at] == b' ' {
                at += 1;
            }
            self.line = match self.line {
                Line::Data(_) => Line::Data(false),
                _ => Line::Event(false),
            };
        }
        let len = line_end(&bytes[at..]).unwrap_or(bytes.len() - at);
        let range = at..at + len;
        match (self.line, &mut self.data, &mut self.name) {
            // The first of the event's data: borrowed. The event's data until now is empty
            // only when no data line has come before (each one adds at least its LF).
            (Line::Data(_), Some(data), _) if data.is_empty() && borrowed.is_none() => {
                *borrowed = Some(Borrowed {
                    range,
                    line_ended: false,
                });
            }
            (Line::Data(_), Some(_), _) => {
                self.keep(bytes, borrowed);
                if let Some(data) = &mut self.data {
                    data.extend_from_slice(&bytes[range]);
                }
            }
            (Line::Event(_), _, Some(name)) => name.extend_from_slice(&bytes[range]),
            _ => {}
        }
        at + len
    }

    /// Copies the borrowed data, if any, to the data kept across frames.
    fn keep(&mut self, bytes: &[u8], borrowed: &mut Option<Borrowed>) {
        if let (Some(b), Some(data)) = (borrowed.take(), &mut self.data) {
            data.extend_from_slice(&bytes[b.range]);
            if b.line_ended {
                data.push(b'\n');
            }
        }
    }

    /// The last `event` field of an event names it: each one starts the name afresh.
    fn clear_name(&mut self) {
        if let Some(name) = &mut self.name {
            name.clear();
        }
    }

    /// From `from`, where an event just ended, to the start of the last run of line ends in
    /// `bytes` that holds an empty line, in the line before it: the events in between are
    /// not read. Where no such run starts after `from`, `from`: reading goes on as usual.
    fn skip_to_last_boundary(&mut self, bytes: &[u8], from: usize) -> usize {
        let rest = &bytes[from..];
        // An empty line is a line end right after another: LF LF, CR CR or LF CR (a CR LF is
        // one line end). Searched from the end, a frame that ends with its event is found at once.
        let Some(empty) = rest
            .windows(2)
            .rposition(|pair| matches!(pair, [b'\n', b'\n' | b'\r'] | [b'\r', b'\r']))
        else {
            return from;
        };
        let Some(line) = rest[..empty]
            .iter()
            .rposition(|&b| b != b'\n' && b != b'\r')
        else {
            return from;
        };
        // In a line of the skipped event: its end and the empty line after it end the event,
        // and whatever kind of line it was, nothing of it outlives that.
        self.at_line_start = false;
        self.after_cr = false;
        self.line = Line::Other;
        from + line + 1
    }

    fn end_line(&mut self, bytes: &[u8], borrowed: &mut Option<Borrowed>) {
        let data_line = match self.line {
            // A bare `data` line is a data field with an empty value.
            Line::Name(4) => {
                self.event_has_data = true;
                true
            }
            Line::Data(_) => true,
            // A bare `event` line names the event with the empty string.
            Line::EventName(5) => {
                self.clear_name();
                false
            }
            _ => false,
        };
        if !data_line {
            return;
        }
        match borrowed {
            // The borrowed line is this one: the data is still its value alone.
            Some(b) if !b.line_ended => b.line_ended = true,
            _ => {
                self.keep(bytes, borrowed);
                if let Some(data) = &mut self.data {
                    data.push(b'\n');
                }
            }
        }
    }

    /// Ends the current event; whether it counted as data.
    /// `borrowed`: the event's data, when it was read from the bytes being fed.
    fn end_event(&mut self, filter: Option<&EventFilter<'_>>, borrowed: Option<&[u8]>) -> bool {
        let has_data = std::mem::take(&mut self.event_has_data);
        let (Some(data), Some(name)) = (&mut self.data, &mut self.name) else {
            return has_data;
        };
        // Data lines are joined with LF; the last LF is not part of the data.
        let value = borrowed.unwrap_or_else(|| data.strip_suffix(b"\n").unwrap_or(data));
        let counts = has_data && filter.is_none_or(|filter| filter(name, value));
        if counts && std::mem::take(&mut self.watch_first) && is_error_event(name, value) {
            self.first_error = Some((name.clone(), value.to_vec()));
        }
        data.clear();
        name.clear();
        counts
    }
}

/// Where the first line end (CR or LF) in `bytes` is. A value or a comment is most of an
/// event: it is searched 16 bytes at a time, in a form the compiler turns into vector
/// compares, then byte by byte within the 16 that hold the end.
fn line_end(bytes: &[u8]) -> Option<usize> {
    let is_end = |b: &u8| *b == b'\n' || *b == b'\r';
    let mut start = 0;
    for chunk in bytes.chunks_exact(16) {
        // A fold, not `any`: stopping at the first end would keep it a byte at a time.
        if chunk.iter().fold(false, |found, b| found | is_end(b)) {
            break;
        }
        start += 16;
    }
    bytes[start..].iter().position(is_end).map(|at| start + at)
}

/// Whether an event says the answer failed: named `error` (Anthropic's Messages API), or
/// whose data is a JSON object with a top-level `error` that is not null (OpenAI's APIs;
/// vLLM's and LiteLLM's streaming errors), an `"object": "error"` (vLLM before 0.8), or a
/// `type` of `error` or `response.failed` (the Responses API).
pub(crate) fn is_error_event(name: &[u8], data: &[u8]) -> bool {
    name == b"error" || crate::llm_progress::says_error(data)
}

/// The default last event of a stream cut at its deadline. See [`error_event`].
pub(crate) fn deadline_event(message: &str) -> String {
    error_event("timeout", "deadline_exceeded", message)
}

/// The last event of a stream whose upstream failed after the head. See [`error_event`].
pub(crate) fn upstream_error_event(message: &str) -> String {
    error_event("upstream_error", "upstream_failed", message)
}

/// One error event that the OpenAI and Anthropic clients all raise as an API error:
///
/// ```text
/// event: error
/// data: {"type":"error","error":{"type":"timeout","code":"deadline_exceeded","message":"...","param":null}}
/// ```
///
/// The `openai` SDK raises any event whose data has an `error` object (chat completions and
/// the Responses API alike), whatever its name; the `anthropic` SDK skips events without a
/// name and raises the one named `error`, reading Anthropic's own
/// `{"type":"error","error":{"type":..,"message":..}}`. OpenAI's `code` and `param` ride along.
///
/// The crate's own endings use it; a proxy can send the same event for failures of its own
/// (a graceful shutdown that cuts a stream, say), so every client reads them alike. The
/// message is JSON-escaped; `error_type` and `code` are written as they are, so keep them
/// to plain identifiers.
///
/// ```
/// let event = tower_stream_deadline::sse_error_event(
///     "server_error",
///     "shutting_down",
///     "the server is shutting down",
/// );
/// assert!(event.starts_with("event: error\ndata: {\"type\":\"error\",\"error\":{"));
/// assert!(event.ends_with("\n\n"));
/// ```
pub fn error_event(error_type: &str, code: &str, message: &str) -> String {
    let kind = error_type;
    let mut escaped = String::with_capacity(message.len());
    for c in message.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            c if c.is_control() => escaped.push_str(&format!("\\u{:04x}", c as u32)),
            c => escaped.push(c),
        }
    }
    format!(
        "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"code\":\"{code}\",\"message\":\"{escaped}\",\"param\":null}}}}\n\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_all(chunks: &[&[u8]], filter: Option<&EventFilter<'_>>) -> Vec<Scanned> {
        let mut scanner = Scanner::new(filter.is_some());
        chunks.iter().map(|c| scanner.feed(c, filter)).collect()
    }

    #[test]
    fn judging_until_one_counts_asks_less_and_finds_the_same() {
        let asked = std::cell::Cell::new(0);
        let filter = |_: &[u8], data: &[u8]| {
            asked.set(asked.get() + 1);
            data != b"role"
        };
        let chunks: [&[u8]; 3] = [
            b"data: role\n\ndata: tok\n\ndata: tok\n\ndata: [DONE]\n\n",
            b": keep-alive\n\ndata: role\n\n",
            b"data: to",
        ];
        let every = scan_all(&chunks, Some(&filter));
        assert_eq!(asked.replace(0), 5);
        let mut scanner = Scanner::new(true).judging_until_one_counts();
        let until: Vec<_> = chunks
            .iter()
            .map(|c| scanner.feed(c, Some(&filter)))
            .collect();
        assert_eq!(until, every);
        // The first chunk: `role`, then the `tok` that counts; the second: `role`.
        assert_eq!(asked.get(), 3);
    }

    #[test]
    fn comments_and_blank_keep_alives_are_not_data_events() {
        let scanned = scan_all(
            &[b": ping\n\n", b"\n", b"event: ping\n\n", b"data: tok\n\n"],
            None,
        );
        let data: Vec<_> = scanned.iter().map(|s| s.data_event).collect();
        assert_eq!(data, [false, false, false, true]);
        assert_eq!(scanned[0].last_boundary, Some(8));
    }

    #[test]
    fn events_split_across_frames_end_where_the_blank_line_is() {
        let scanned = scan_all(&[b"da", b"ta: {\"a\"", b":1}\r\n", b"\r\ndata: b"], None);
        assert_eq!(scanned[2], Scanned::default(), "no blank line yet");
        assert_eq!(
            scanned[3],
            Scanned {
                last_boundary: Some(2),
                data_event: true
            }
        );
    }

    #[test]
    fn line_ends_of_every_kind_end_events() {
        for stream in [
            &b"data: x\n\ndata: y\n\n"[..],
            b"data: x\r\rdata: y\r\r",
            b"data: x\r\n\r\ndata: y\r\n\r\n",
        ] {
            let mut scanner = Scanner::new(false);
            let scanned = scanner.feed(stream, None);
            assert_eq!(
                scanned,
                Scanned {
                    last_boundary: Some(stream.len()),
                    data_event: true
                }
            );
        }
    }

    #[test]
    fn the_filter_reads_each_events_data_lines_joined() {
        let seen = std::cell::RefCell::new(Vec::new());
        let filter = |_: &[u8], data: &[u8]| {
            seen.borrow_mut()
                .push(String::from_utf8_lossy(data).into_owned());
            !data.starts_with(b"{\"role\"")
        };
        let scanned = scan_all(
            &[
                b"data: {\"role\":\"assistant\"}\n\n",
                b"data:a\ndata: b\ndata\n\n",
                b": c\n\n",
            ],
            Some(&filter),
        );
        let data: Vec<_> = scanned.iter().map(|s| s.data_event).collect();
        assert_eq!(data, [false, true, false]);
        assert_eq!(*seen.borrow(), ["{\"role\":\"assistant\"}", "a\nb\n"]);
    }

    /// Each event as the filter sees it, name and data, for a stream fed in `chunks`.
    fn events_seen(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let seen = std::cell::RefCell::new(Vec::new());
        let filter = |name: &[u8], data: &[u8]| {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            seen.borrow_mut().push((text(name), text(data)));
            true
        };
        scan_all(chunks, Some(&filter));
        seen.into_inner()
    }

    #[test]
    fn the_filter_reads_each_events_last_name_which_ends_with_it() {
        let seen = events_seen(&[
            b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
            b"event:message_start\r\nevent: content_block_start\r\ndata: x\r\n\r\n",
            b"data: unnamed\n\n",
            b"event: named\nevent\ndata: emptied\n\n",
            b"event: no-data\n\ndata: after\n\n",
            b"events: not a name\neven: nor this\ndata: y\n\n",
        ]);
        let expected = [
            ("ping", "{\"type\": \"ping\"}"),
            ("content_block_start", "x"),
            ("", "unnamed"),
            ("", "emptied"),
            ("", "after"),
            ("", "y"),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(name, data)| (name.to_string(), data.to_string()))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn fields_that_only_start_like_data_are_not_data() {
        let scanned = scan_all(&[b"dat: x\ndatas: y\n:data: z\n\n"], None);
        assert!(!scanned[0].data_event);
    }

    #[test]
    fn the_error_event_is_named_error_and_carries_an_error_object() {
        let event = deadline_event("budget \"45s\" ran out\\\n");
        assert_eq!(
            event,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"timeout\",\"code\":\"deadline_exceeded\",\"message\":\"budget \\\"45s\\\" ran out\\\\\\u000a\",\"param\":null}}\n\n"
        );
        let data = event.strip_prefix("event: error\ndata: ").unwrap();
        let json: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
        assert_eq!(json["error"]["message"], "budget \"45s\" ran out\\\n");
        let upstream: serde_json::Value = serde_json::from_str(
            upstream_error_event("reset")
                .strip_prefix("event: error\ndata: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(upstream["type"], "error");
        assert_eq!(upstream["error"]["type"], "upstream_error");
        assert_eq!(upstream["error"]["code"], "upstream_failed");
    }

    /// Where frames of a stream of `len` bytes start and end: 0, the cuts, `len`.
    fn frame_edges(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
        let mut edges: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
        edges.extend([0, len]);
        edges.sort_unstable();
        edges.dedup();
        edges
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// The line end found 16 bytes at a time is the first one, wherever it lies.
        #[test]
        fn line_end_is_the_first_cr_or_lf(
            bytes in prop::collection::vec(
                prop_oneof![28 => Just(b'a'), 1 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(0x85u8)],
                0..80,
            ),
        ) {
            let expected = bytes.iter().position(|&b| b == b'\n' || b == b'\r');
            prop_assert_eq!(line_end(&bytes), expected);
        }

        /// However a stream is cut into frames, the scanner finds the same boundaries and
        /// data events as when it reads it whole.
        #[test]
        fn framing_does_not_change_what_is_found(
            parts in prop::collection::vec(prop::sample::select(vec![
                &b"data: tok"[..], b"data", b":", b": ping", b"\n", b"\r", b"\r\n", b"event: x", b" ",
            ]), 0..40),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let stream: Vec<u8> = parts.concat();
            let mut whole = Scanner::new(false);
            let mut expected = Vec::new();
            for (i, _) in stream.iter().enumerate() {
                let s = whole.feed(&stream[i..=i], None);
                if s.last_boundary.is_some() { expected.push((i + 1, s.data_event)); }
            }
            let offsets = frame_edges(stream.len(), &cuts);
            let mut framed = Scanner::new(false);
            let mut last = None;
            let mut any_data = false;
            for w in offsets.windows(2) {
                let s = framed.feed(&stream[w[0]..w[1]], None);
                if let Some(b) = s.last_boundary { last = Some(w[0] + b); }
                any_data |= s.data_event;
            }
            // An event ending in CRLF may be cut after its CR or its LF, depending on framing.
            let norm = |b: usize| match stream.get(b) {
                Some(b'\n') if stream[b - 1] == b'\r' => b + 1,
                _ => b,
            };
            prop_assert_eq!(last.map(norm), expected.last().map(|e| norm(e.0)));
            prop_assert_eq!(any_data, expected.iter().any(|e| e.1));
        }

        /// Once the verdict on a frame stands (an event of it counted, and no filter reads the
        /// later ones), the events after it are skipped: the scanner still finds, frame after
        /// frame, what it finds when it reads every event.
        #[test]
        fn skipping_events_after_the_verdict_finds_the_same(
            parts in prop::collection::vec(prop::sample::select(vec![
                &b"data: tok"[..], b"data: to", b"k", b"data", b":", b": ping", b"\n", b"\r",
                b"\r\n", b"event: x", b" ",
            ]), 0..40),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let stream: Vec<u8> = parts.concat();
            let offsets = frame_edges(stream.len(), &cuts);
            let tok = |_: &[u8], data: &[u8]| data == b"tok";
            let any = |_: &[u8], _: &[u8]| true;
            // Scanners that read every event (a filter of the caller's is asked for each).
            let (mut every_tok, mut every_any) = (Scanner::new(true), Scanner::new(true));
            let mut until_tok = Scanner::new(true).judging_until_one_counts();
            let mut unfiltered = Scanner::new(false);
            for w in offsets.windows(2) {
                let frame = &stream[w[0]..w[1]];
                prop_assert_eq!(until_tok.feed(frame, Some(&tok)), every_tok.feed(frame, Some(&tok)));
                prop_assert_eq!(unfiltered.feed(frame, None), every_any.feed(frame, Some(&any)));
            }
        }

        /// However a stream is cut into frames, the filter sees the same names and data as
        /// when the stream is read whole, and as when it is read a byte at a time (where no
        /// field name nor value is ever whole in one frame).
        #[test]
        fn framing_does_not_change_what_the_filter_sees(
            parts in prop::collection::vec(prop::sample::select(vec![
                &b"data: tok"[..], b"data", b"event: ping", b"event", b"ev", b":", b": ping",
                b"\n", b"\r", b"\r\n", b" ", b"x", b"data:", b"event:", b"\n\n",
            ]), 0..40),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let stream: Vec<u8> = parts.concat();
            let offsets = frame_edges(stream.len(), &cuts);
            let framed: Vec<&[u8]> = offsets.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            let whole = events_seen(&[&stream[..]]);
            prop_assert_eq!(events_seen(&framed), whole.clone());
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(events_seen(&bytes), whole);
        }
    }
}
