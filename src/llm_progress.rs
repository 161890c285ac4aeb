//! Which events of an LLM server's event stream carry output: the rule behind
//! [`StreamDeadlineLayer::llm_progress`](crate::StreamDeadlineLayer::llm_progress).
//!
//! Servers send events that say nothing about the answer before its first token and
//! between tokens: keep-alives while a request waits in a queue or a prefill, and opening
//! events that every answer starts with at once. A first-frame or idle budget that counts
//! them never fires on a stuck request. The rule reads the data of each event (the crate
//! keeps its dependencies to the HTTP stack, so this is a small reader of the few JSON
//! fields involved, not a JSON library) and decides from the fields each API documents.
//!
//! Checked against what the servers and clients do:
//! - OpenAI chat completions (vLLM's `DeltaMessage` in
//!   `vllm/entrypoints/openai/engine/protocol.py`: `role`, `content`, `reasoning` (older
//!   releases: `reasoning_content`), `tool_calls`, which defaults to `[]`): vLLM's first
//!   chunk is `{"role":"assistant","content":""}` (`serving_chat.py`, on its first
//!   iteration), OpenAI's adds `"refusal":null`. A delta
//!   counts when a field other than `role` has a value: text, reasoning, a tool call, a
//!   refusal, audio. A `finish_reason` counts too (an empty answer is still an answer);
//!   a usage-only chunk (`"choices":[]`) does not. Legacy completions carry `text` in the
//!   choice itself.
//! - OpenAI's Responses API (`openai-python`, `types/responses/response_stream_event.py`):
//!   every event's data names its `type`. `response.created`, `response.in_progress`,
//!   `response.queued`, `response.output_item.added`, `response.content_part.added` and
//!   `response.reasoning_summary_part.added` come before any output; the rest (every
//!   `*.delta`, `*.done`, hosted tools at work, `response.completed`, `error`) count.
//! - Anthropic's Messages API (`anthropic-sdk-python`, `types/raw_message_stream_event.py`
//!   and `_streaming.py`): `message_start` and `content_block_start` open the answer and
//!   `ping` keeps the connection alive (the SDK skips it); `content_block_delta` (text,
//!   thinking, tool input, citations) and the closing events count. Each event's data
//!   carries its `type`, the same as its `event:` name.
//! - Errors count: `openai-python`'s `_streaming.py` raises on any data with an `error`,
//!   and an upstream's error is the answer the client should get.
//! - LiteLLM's proxy (`litellm/proxy/proxy_server.py`, `async_data_generator`) relays each
//!   chunk as one `data:` line of JSON in the shape of the API it serves, so the same rules
//!   apply to what it passes on.
//!
//! Keep-alives that are SSE comments (vLLM's `: keep-alive`, `: ping`) or events without
//! data never reach the rule: an event counts only if it carries data. An event whose data
//! is empty does not count. With the layer, an event named `ping` or as an opening event
//! does not count whatever its data: sse-starlette (the SSE response of many Python
//! servers) sent its pings as `event: ping` with a timestamp for data before it made them
//! comments, and the `anthropic` SDK's `_streaming.py` takes an event's `type` from its
//! name when its data has none. Data that is not a JSON object (`[DONE]`), that is not valid
//! JSON, or whose object has none of the fields above counts: for a stream the rule does
//! not know, a frame is progress, as without it.

/// [`is_llm_output`] of an event's data, unless the event is named `ping` or as an opening
/// event: the rule of [`StreamDeadlineLayer::llm_progress`](crate::StreamDeadlineLayer::llm_progress),
/// which sees each event's name too.
pub(crate) fn is_llm_event(name: &[u8], data: &[u8]) -> bool {
    !OPENING.contains(&name) && is_llm_output(data)
}

/// Opening events: sent at once, before any output (see the module docs for the sources).
const OPENING: [&[u8]; 9] = [
    b"response.created",
    b"response.in_progress",
    b"response.queued",
    b"response.output_item.added",
    b"response.content_part.added",
    b"response.reasoning_summary_part.added",
    b"message_start",
    b"content_block_start",
    b"ping",
];

/// Deeper than this, a value is not read: the data counts.
const MAX_DEPTH: usize = 32;

/// Whether the data of one server-sent event carries output of an LLM (a token of text,
/// reasoning or a tool call, the end of the answer, an error), by the APIs of OpenAI (chat
/// completions, completions, Responses), Anthropic (Messages) and the servers compatible with
/// them (vLLM, llama.cpp, TGI, LiteLLM, ...). Opening events, role-only chunks, pings and
/// empty data do not; data the rule does not know (`[DONE]`, another API's events, anything
/// not JSON) does. It never panics, whatever the bytes.
///
/// [`StreamDeadlineLayer::llm_progress`](crate::StreamDeadlineLayer::llm_progress) applies
/// it to the first-frame and idle budgets, and also reads each event's name (an event named
/// `ping` does not count, whatever its data); call it yourself to count tokens or to combine
/// it with a rule of your own in [`sse_progress_filter`](crate::StreamDeadlineLayer::sse_progress_filter).
///
/// ```
/// use tower_stream_deadline::is_llm_output;
///
/// // OpenAI chat completions (vLLM, llama.cpp, ...): the role-only opening chunk, then a token.
/// assert!(!is_llm_output(br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#));
/// assert!(is_llm_output(br#"{"choices":[{"index":0,"delta":{"content":"Hello"}}]}"#));
/// assert!(is_llm_output(br#"{"choices":[{"index":0,"delta":{"reasoning_content":"Hm"}}]}"#));
/// // The Responses API and Anthropic's Messages API name each event's type in its data.
/// assert!(!is_llm_output(br#"{"type":"response.created","response":{}}"#));
/// assert!(is_llm_output(br#"{"type":"response.output_text.delta","delta":"Hi"}"#));
/// assert!(!is_llm_output(br#"{"type": "ping"}"#));
/// assert!(is_llm_output(br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi"}}"#));
/// // What it does not know counts, as every frame would without it.
/// assert!(is_llm_output(b"[DONE]"));
/// ```
pub fn is_llm_output(data: &[u8]) -> bool {
    // Leading white space only: the first byte decides, and nothing after an object is read.
    let data = data.trim_ascii_start();
    match data.first() {
        None => false,
        Some(b'{') => Fields::read(data).is_none_or(|fields| fields.count()),
        Some(_) => true,
    }
}

/// Whether the data of an event is a JSON object that says the answer failed: a top-level
/// `error` that is not null, `"object": "error"`, or a `type` of `error` or
/// `response.failed`.
pub(crate) fn says_error(data: &[u8]) -> bool {
    let data = data.trim_ascii_start();
    if data.first() != Some(&b'{') {
        return false;
    }
    Fields::read(data).is_some_and(|fields| {
        fields.error
            || fields.object == Some(b"error")
            || matches!(fields.kind, Some(b"error" | b"response.failed"))
    })
}

/// What the rule reads of an event's JSON object.
#[derive(Default)]
struct Fields<'a> {
    /// `type`, as written (escapes left in: no event type has any).
    kind: Option<&'a [u8]>,
    /// `choices`: whether any choice carries output.
    choices: Option<bool>,
    /// `error`, not null.
    error: bool,
    /// `object`, as written.
    object: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// `None` when the data is not a well-formed object (as far as it was read).
    fn read(data: &'a [u8]) -> Option<Self> {
        let mut json = Json { bytes: data, at: 0 };
        let mut fields = Fields::default();
        json.object(|json, key| {
            match key {
                b"type" if json.peek()? == b'"' => fields.kind = Some(json.string()?),
                b"choices" if json.peek()? == b'[' => {
                    let mut output = false;
                    json.array(|json| {
                        output |= json.choice()?;
                        Some(())
                    })?;
                    fields.choices = Some(output);
                }
                b"error" => fields.error = json.skip(1)?,
                b"object" if json.peek()? == b'"' => fields.object = Some(json.string()?),
                _ => {
                    json.skip(1)?;
                }
            }
            Some(())
        })?;
        Some(fields)
    }

    fn count(&self) -> bool {
        if self.error {
            return true;
        }
        if let Some(kind) = self.kind {
            return !OPENING.contains(&kind);
        }
        self.choices.unwrap_or(true)
    }
}

/// Where the first `"` or `\\` in `bytes` is. Ids, model names and fingerprints make most of
/// a chunk's bytes: they are searched 8 bytes at a time, each word tested for both bytes at
/// once (the lowest flagged byte of the test is exact: a false flag only follows a true one),
/// so that a string shorter than 8 bytes costs one word, not a loop per byte.
fn quote_or_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut start = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return Some(start + (found.trailing_zeros() / 8) as usize);
        }
        start += 8;
    }
    bytes[start..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map(|at| start + at)
}

/// A forward-only reader of JSON text that skips what it does not need.
struct Json<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Json<'a> {
    /// The next byte that is not white space, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string, as written between its quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            self.at += quote_or_escape(self.bytes.get(self.at..)?)?;
            match self.bytes.get(self.at)? {
                b'"' => break,
                _ => self.at += 2,
            }
        }
        let string = self.bytes.get(start..self.at)?;
        self.at += 1;
        Some(string)
    }

    /// An object, calling `field` with each key to read its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, calling `item` to read each element.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Skips one value, `depth` levels down; whether it has a value: not `null`, `false`,
    /// `""`, `[]` nor `{}`.
    fn skip(&mut self, depth: usize) -> Option<bool> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut any = false;
        match self.peek()? {
            b'"' => any = !self.string()?.is_empty(),
            b'{' => self.object(|json, _| {
                any = true;
                json.skip(depth + 1).map(drop)
            })?,
            b'[' => self.array(|json| {
                any = true;
                json.skip(depth + 1).map(drop)
            })?,
            b't' => any = self.literal(b"true")?,
            b'f' => any = !self.literal(b"false")?,
            b'n' => any = !self.literal(b"null")?,
            b'-' | b'0'..=b'9' => {
                while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') =
                    self.bytes.get(self.at)
                {
                    self.at += 1;
                }
                any = true;
            }
            _ => return None,
        }
        Some(any)
    }

    fn literal(&mut self, word: &[u8]) -> Option<bool> {
        let end = self.at.checked_add(word.len())?;
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)?;
        Some(true)
    }

    /// One element of `choices`: whether it carries output.
    fn choice(&mut self) -> Option<bool> {
        if self.peek()? != b'{' {
            return self.skip(2);
        }
        let mut output = false;
        self.object(|json, key| {
            output |= match key {
                b"delta" => json.delta()?,
                b"finish_reason" | b"text" => json.skip(3)?,
                _ => json.skip(3).map(|_| false)?,
            };
            Some(())
        })?;
        Some(output)
    }

    /// A chat delta: whether a field other than `role` has a value.
    fn delta(&mut self) -> Option<bool> {
        if self.peek()? != b'{' {
            return self.skip(3);
        }
        let mut output = false;
        self.object(|json, key| {
            let value = json.skip(4)?;
            output |= value && key != b"role";
            Some(())
        })?;
        Some(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chat_chunks_count_when_they_carry_output() {
        let counts = [
            (
                r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"delta":{"reasoning":"Let me think"}}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"delta":{"reasoning_content":"Hm"}}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#,
                true,
            ),
            (r#"{"choices":[{"delta":{"refusal":"No."}}]}"#, true),
            (r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#, true),
            (
                r#"{"choices":[{"index":0,"text":" world","finish_reason":null}]}"#,
                true,
            ),
            (r#"{"error":{"message":"overloaded","code":503}}"#, true),
            // vLLM's and OpenAI's first chunks.
            (
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
                false,
            ),
            (
                r#"{"choices":[{"delta":{"role":"assistant","content":null,"refusal":null,"tool_calls":[]}}]}"#,
                false,
            ),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}"#,
                false,
            ),
            (
                r#"{"choices":[{"index":0,"text":"","finish_reason":null}]}"#,
                false,
            ),
            (
                r#"{"error":null,"choices":[{"delta":{"role":"assistant"}}]}"#,
                false,
            ),
        ];
        for (data, expected) in counts {
            assert_eq!(is_llm_output(data.as_bytes()), expected, "{data}");
        }
    }

    #[test]
    fn opening_events_and_pings_do_not_count_and_the_rest_does() {
        for kind in OPENING {
            let data = format!(
                r#"{{"type":"{}","sequence_number":0}}"#,
                String::from_utf8_lossy(kind)
            );
            assert!(!is_llm_output(data.as_bytes()), "{data}");
        }
        for kind in [
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.reasoning_summary_text.delta",
            "response.web_search_call.searching",
            "response.completed",
            "content_block_delta",
            "message_delta",
            "message_stop",
            "error",
        ] {
            let data = format!(r#"{{ "type" : "{kind}" , "index": 0 }}"#);
            assert!(is_llm_output(data.as_bytes()), "{data}");
        }
    }

    #[test]
    fn events_named_ping_or_as_an_opening_do_not_count_whatever_their_data() {
        assert!(!is_llm_event(b"ping", b"2024-05-01 12:00:00.000000"));
        assert!(!is_llm_event(
            b"message_start",
            br#"{"message":{"role":"assistant"}}"#
        ));
        assert!(!is_llm_event(b"", br#"{"type":"ping"}"#));
        assert!(is_llm_event(
            b"content_block_delta",
            br#"{"index":0,"delta":{"text":"Hi"}}"#
        ));
        assert!(is_llm_event(b"", b"2024-05-01 12:00:00.000000"));
    }

    #[test]
    fn empty_data_does_not_count_and_data_it_does_not_know_does() {
        assert!(!is_llm_output(b""));
        assert!(!is_llm_output(b" \n"));
        for data in [
            &b"[DONE]"[..],
            b"plain text",
            b"{}",
            b"{\"token\":{\"text\":\"Hi\"}}",
            b"{\"choices\":",
            b"{\"choices\":[{\"delta\":{\"content\":\"unterminated",
            b"{\"type\":\"ping\"",
            b"{\"choices\":[1, \"x\", null]}",
        ] {
            assert!(is_llm_output(data), "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn deep_nesting_is_not_read_to_the_bottom() {
        // Read whole, this is a role-only chunk; past the depth limit it is not read, and
        // counts.
        let deep = format!(
            r#"{{"x":{}{},"choices":[{{"delta":{{"role":"assistant"}}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(is_llm_output(deep.as_bytes()));
        let shallow = format!(
            r#"{{"x":{}{},"choices":[{{"delta":{{"role":"assistant"}}}}]}}"#,
            "[".repeat(8),
            "]".repeat(8)
        );
        assert!(!is_llm_output(shallow.as_bytes()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the bytes, the rule answers without panicking.
        #[test]
        fn any_bytes_get_an_answer(
            parts in prop::collection::vec(prop::sample::select(vec![
                &b"{"[..], b"}", b"[", b"]", b"\"", b":", b",", b"\\", b"type", b"choices",
                b"delta", b"role", b"content", b"null", b"true", b"-1e5", b" ", b"ping", b"\xff",
            ]), 0..40),
        ) {
            let _ = is_llm_output(&parts.concat());
        }

        /// The search 8 bytes at a time finds the first quote or backslash, wherever it lies
        /// and whatever bytes come before and after it.
        #[test]
        fn quote_or_escape_is_the_first_quote_or_backslash(
            bytes in prop::collection::vec(
                prop_oneof![
                    20 => any::<u8>(),
                    2 => Just(b'"'),
                    2 => Just(b'\\'),
                    // Bytes next to the searched ones, where a word's borrow could misflag.
                    1 => Just(b'"' + 1),
                    1 => Just(b'\\' + 1),
                    1 => Just(0u8),
                ],
                0..40,
            ),
        ) {
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\');
            prop_assert_eq!(quote_or_escape(&bytes), expected);
        }
    }
}
