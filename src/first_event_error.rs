//! [`UpstreamErrorEvent`]: a stream whose first event says the answer failed, as an error of
//! the call ([`StreamDeadlineLayer::sse_first_event_errors`](crate::StreamDeadlineLayer::sse_first_event_errors)).

use std::error::Error;
use std::fmt;

use bytes::Bytes;

/// The upstream answered `200` and a first event that says the answer failed: an overloaded
/// server's `event: error`, an OpenAI-style `{"error": {...}}`, a Responses
/// `response.failed`. Nothing of the answer was sent, so the call fails with this error
/// (and the upstream is released), which [`RetryFirstFrame`](struct.RetryFirstFrame.html)
/// retries like a first-frame deadline and [`HedgeFirstFrame`](crate::HedgeFirstFrame)
/// counts as a failed attempt.
///
/// It carries the event, so a proxy that gives up can hand it to its client as the upstream
/// sent it (with [`event`](Self::event)): the client's SDK then raises the upstream's error.
///
/// ```
/// use tower_stream_deadline::UpstreamErrorEvent;
///
/// fn upstream_message(err: &(dyn std::error::Error + 'static)) -> Option<String> {
///     UpstreamErrorEvent::find(err).map(|event| String::from_utf8_lossy(event.data()).into_owned())
/// }
/// # let _ = upstream_message;
/// ```
#[derive(Clone, Debug)]
pub struct UpstreamErrorEvent {
    name: Option<String>,
    data: Bytes,
}

/// How much of the data the message quotes.
const QUOTED: usize = 300;

impl UpstreamErrorEvent {
    pub(crate) fn new(name: &[u8], data: Vec<u8>) -> Self {
        let name = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());
        UpstreamErrorEvent {
            name,
            data: Bytes::from(data),
        }
    }

    /// The event's name (its `event` field), if it had one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The event's data (its `data` lines, joined with `\n`).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The event as server-sent events text, ready to send on: its `event` line if it had a
    /// name, a `data` line per line of data, and the blank line that ends it.
    pub fn event(&self) -> Bytes {
        let mut text = Vec::with_capacity(self.data.len() + 32);
        if let Some(name) = &self.name {
            text.extend_from_slice(b"event: ");
            text.extend_from_slice(name.as_bytes());
            text.push(b'\n');
        }
        for line in self.data.split(|&b| b == b'\n') {
            text.extend_from_slice(b"data: ");
            text.extend_from_slice(line);
            text.push(b'\n');
        }
        text.push(b'\n');
        Bytes::from(text)
    }

    /// The `UpstreamErrorEvent` in `err`'s source chain, if any.
    pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a UpstreamErrorEvent> {
        crate::error::find_in_chain(err)
    }
}

impl fmt::Display for UpstreamErrorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = String::from_utf8_lossy(&self.data);
        let quoted: String = data.chars().take(QUOTED).collect();
        let more = if quoted.len() < data.len() { "..." } else { "" };
        write!(f, "the upstream's first event was an error: {quoted}{more}")
    }
}

impl Error for UpstreamErrorEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_sent_on_as_it_came() {
        let event = UpstreamErrorEvent::new(b"error", br#"{"type":"error"}"#.to_vec());
        assert_eq!(
            event.event(),
            "event: error\ndata: {\"type\":\"error\"}\n\n"
        );
        let unnamed = UpstreamErrorEvent::new(b"", b"a\nb".to_vec());
        assert_eq!(unnamed.name(), None);
        assert_eq!(unnamed.event(), "data: a\ndata: b\n\n");
        let long = UpstreamErrorEvent::new(b"", vec![b'x'; 1000]);
        assert!(long.to_string().ends_with("x..."));
        assert!(long.to_string().len() < 400);
    }
}
