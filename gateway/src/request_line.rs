//! What a request's log line says, in the order every format writes it (README: Logs), and
//! how it goes out: as a `tracing` event, or, where the process logs in the text format
//! without styles, written in that format's text straight to the log's writer.

use tracing::Level;

use crate::log::TARGET;
use crate::subscriber::{self, write_f64_debug, write_str_debug};

/// A request's line. `None` fields are left out.
pub struct RequestLine<'a> {
    /// Something the caller sent was ignored: the line goes out at warn, not info.
    pub warn: bool,
    pub method: &'a str,
    pub path: &'a str,
    pub status: Option<u16>,
    pub model: Option<&'a str>,
    pub attempts: u32,
    pub first_frame_ms: Option<f64>,
    pub frames: u64,
    pub bytes: u64,
    pub ending: &'a str,
    pub elapsed_ms: f64,
    pub request_id: &'a str,
    pub upstreams: Option<&'a str>,
    pub upstream_request_id: Option<&'a str>,
    pub note: Option<&'a str>,
}

impl RequestLine<'_> {
    /// Logs the line, if its level is enabled for the gateway's target.
    pub fn write(&self) {
        let (level, enabled) = match self.warn {
            true => (Level::WARN, tracing::enabled!(target: TARGET, Level::WARN)),
            false => (Level::INFO, tracing::enabled!(target: TARGET, Level::INFO)),
        };
        if enabled && !subscriber::write_text_line(level, TARGET, |fields| self.text_fields(fields))
        {
            self.event();
        }
    }

    /// The line as a `tracing` event: what every format but the plain text one writes.
    fn event(&self) {
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: TARGET,
                    method = %self.method,
                    path = %self.path,
                    status = self.status,
                    model = self.model,
                    attempts = self.attempts,
                    first_frame_ms = self.first_frame_ms,
                    frames = self.frames,
                    bytes = self.bytes,
                    ending = self.ending,
                    elapsed_ms = self.elapsed_ms,
                    request_id = %self.request_id,
                    upstreams = self.upstreams,
                    upstream_request_id = self.upstream_request_id,
                    note = self.note.map(tracing::field::display),
                    "request",
                )
            };
        }
        match self.warn {
            true => line!(warn),
            false => line!(info),
        }
    }

    /// The event's message and fields as the text format writes them: the message, then
    /// `name=value` for each field that is there, a space apart; the displayed ones as they
    /// are, strings quoted and escaped as `{:?}` writes them.
    fn text_fields(&self, out: &mut String) {
        // Writing to a `String` does not fail.
        let _ = self.write_text_fields(out);
    }

    fn write_text_fields(&self, out: &mut String) -> std::fmt::Result {
        let mut number = itoa::Buffer::new();
        out.push_str("request method=");
        out.push_str(self.method);
        out.push_str(" path=");
        out.push_str(self.path);
        if let Some(status) = self.status {
            out.push_str(" status=");
            out.push_str(number.format(status));
        }
        if let Some(model) = self.model {
            out.push_str(" model=");
            write_str_debug(out, model)?;
        }
        out.push_str(" attempts=");
        out.push_str(number.format(self.attempts));
        if let Some(first_frame_ms) = self.first_frame_ms {
            out.push_str(" first_frame_ms=");
            write_f64_debug(out, first_frame_ms)?;
        }
        out.push_str(" frames=");
        out.push_str(number.format(self.frames));
        out.push_str(" bytes=");
        out.push_str(number.format(self.bytes));
        out.push_str(" ending=");
        write_str_debug(out, self.ending)?;
        out.push_str(" elapsed_ms=");
        write_f64_debug(out, self.elapsed_ms)?;
        out.push_str(" request_id=");
        out.push_str(self.request_id);
        if let Some(upstreams) = self.upstreams {
            out.push_str(" upstreams=");
            write_str_debug(out, upstreams)?;
        }
        if let Some(id) = self.upstream_request_id {
            out.push_str(" upstream_request_id=");
            write_str_debug(out, id)?;
        }
        if let Some(note) = self.note {
            out.push_str(" note=");
            out.push_str(note);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tracing_subscriber::prelude::*;

    use super::*;
    use crate::subscriber::TextFields;
    use crate::subscriber::tests::Lines;

    /// The line's message and fields as the text layer writes its event.
    fn through_tracing(line: &RequestLine<'_>) -> String {
        let written = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false)
                    .with_target(false),
            )
            .fmt_fields(TextFields)
            .with_writer(written.clone())
            .with_ansi(false);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            line.write()
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        text.strip_suffix('\n').unwrap_or(&text).to_owned()
    }

    fn written_directly(line: &RequestLine<'_>) -> String {
        let mut text = String::new();
        line.text_fields(&mut text);
        text
    }

    fn a_line<'a>(
        texts: &'a [String; 7],
        numbers: (u16, u32, u64, u64),
        times: (f64, f64),
        some: u8,
    ) -> RequestLine<'a> {
        let on = |bit: u8| some & (1 << bit) != 0;
        RequestLine {
            warn: on(7),
            method: &texts[0],
            path: &texts[1],
            status: on(0).then_some(numbers.0),
            model: on(1).then_some(texts[2].as_str()),
            attempts: numbers.1,
            first_frame_ms: on(2).then_some(times.0),
            frames: numbers.2,
            bytes: numbers.3,
            ending: &texts[3],
            elapsed_ms: times.1,
            request_id: &texts[4],
            upstreams: on(3).then_some(texts[5].as_str()),
            upstream_request_id: on(4).then_some(texts[6].as_str()),
            note: on(5).then_some(texts[6].as_str()),
        }
    }

    #[test]
    fn a_full_line_reads_as_the_text_format_writes_it() {
        let texts = [
            "POST",
            "/v1/chat/completions",
            "qwen",
            "deadline_idle",
            "req-1",
            "http://a:8000,http://b:8000",
            "slow \"upstream\"",
        ]
        .map(str::to_owned);
        let line = a_line(&texts, (200, 2, 4, 812), (34.8, 1500.0), 0xff);
        let expected = "request method=POST path=/v1/chat/completions status=200 model=\"qwen\" \
            attempts=2 first_frame_ms=34.8 frames=4 bytes=812 ending=\"deadline_idle\" \
            elapsed_ms=1500.0 request_id=req-1 upstreams=\"http://a:8000,http://b:8000\" \
            upstream_request_id=\"slow \\\"upstream\\\"\" note=slow \"upstream\"";
        assert_eq!(written_directly(&line), expected);
        assert_eq!(through_tracing(&line), expected);
    }

    proptest! {
        #[test]
        fn lines_are_written_as_the_text_format_writes_their_events(
            texts in proptest::array::uniform7(any::<String>()),
            numbers in any::<(u16, u32, u64, u64)>(),
            tenths in (0u64..100_000_000, 0u64..100_000_000),
            odd in any::<(f64, f64)>(),
            some in any::<u8>(),
        ) {
            // The gateway's milliseconds (a tenth each), and any doubles.
            let tenth = |t: u64| t as f64 / 10.0;
            for times in [(tenth(tenths.0), tenth(tenths.1)), odd] {
                let line = a_line(&texts, numbers, times, some);
                prop_assert_eq!(written_directly(&line), through_tracing(&line));
            }
        }
    }
}
