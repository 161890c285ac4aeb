//! Where the gateway's `tracing` events go: stderr, as text for people or as one JSON object
//! per line for log pipelines (Loki, Elasticsearch, Datadog), filtered by `RUST_LOG`.
//!
//! Lines are written to stderr by a thread of their own, a batch at a time (see
//! [`log_writer`](crate::log_writer)), so a request's line never waits on stderr inside a
//! worker of the runtime; the guard that [`init`] returns writes out what is left when the
//! process ends.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use crate::log_writer::{LogWriter, LogWriterGuard};

/// The targets and levels logged when `RUST_LOG` is unset or cannot be read.
pub const DEFAULT_FILTER: &str = "stream_deadline_gateway=info,tower_stream_deadline=error,warn";

/// How each log line is written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// tracing's text lines: timestamp, level, target, message, then `field=value` pairs.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, `target` and each field of
    /// the event under its own name, at the top level.
    Json,
}

/// Installs the process's subscriber: every event in `format` on stderr. Keep the guard
/// until the process ends: dropping it writes out the lines still buffered.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat) -> LogWriterGuard {
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| DEFAULT_FILTER.parse().unwrap_or_default());
    let (stderr, guard) = LogWriter::spawn(std::io::stderr());
    let ansi = std::io::stderr().is_terminal();
    if format == LogFormat::Text && !ansi {
        // Only `init` sets it, once: the process has one subscriber.
        let _ = TEXT_LINES.set(stderr.clone());
    }
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(TextLine::new(LineTime))
            .fmt_fields(TextFields)
            .with_writer(stderr.clone())
            .with_ansi(ansi)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            // The event's fields beside `timestamp` and `level`, not under `fields`: the
            // names a log query uses are the names of the event's fields.
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(stderr)
    });
    tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(targets)
        .init();
    guard
}

/// How the text format writes a line: tracing-subscriber's full format (the time, the
/// level, the spans, the target, then the fields), which writes each piece through
/// `core::fmt`. A line without styles and outside any span (every line of a request, unless
/// the gateway runs on a terminal) is written here in the same text from its pieces as they
/// are (measured with callgrind: 1,200 instructions of a short request's line); the others
/// are the full format's.
struct TextLine<T> {
    time: T,
    full: Format<Full, T>,
}

impl<T: FormatTime + Clone> TextLine<T> {
    fn new(time: T) -> Self {
        TextLine {
            full: tracing_subscriber::fmt::format().with_timer(time.clone()),
            time,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for TextLine<T>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    N: for<'writer> FormatFields<'writer> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() || context.event_scope().is_some() {
            return self.full.format_event(context, writer, event);
        }
        let metadata = event.metadata();
        write_line_start(
            &self.time,
            &mut writer,
            *metadata.level(),
            metadata.target(),
        )?;
        context.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// The start of a text line without styles and outside any span, as the full format writes
/// it: the time, the level right-aligned in five, the target.
fn write_line_start(
    time: &impl FormatTime,
    writer: &mut Writer<'_>,
    level: Level,
    target: &str,
) -> fmt::Result {
    // As the full format does: a clock that cannot be read does not lose the line.
    if time.format_time(writer).is_err() {
        writer.write_str("<unknown time>")?;
    }
    // The space after the time, the level right-aligned in five, a space.
    writer.write_str(match level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    })?;
    writer.write_str(target)?;
    writer.write_str(": ")
}

/// The log's writer when the process logs in the text format without styles (set by
/// [`init`]): a request's line is then written to it by [`write_text_line`].
static TEXT_LINES: std::sync::OnceLock<LogWriter> = std::sync::OnceLock::new();

/// Writes a line, as the text format writes an event of `level` and `target` outside any
/// span, with the fields that `fields` writes as [`TextFields`] would; false, with nothing
/// written, unless the process logs in the text format without styles. The caller checks
/// that the level and target are enabled.
///
/// For a request's line (see `request_line`): through `tracing`, its fifteen fields are each
/// a call through `dyn Value` and `dyn Visit`, and the line a pass through the text layer
/// (measured with callgrind: 5,000 instructions of a short request's, 2,500 written here).
pub(crate) fn write_text_line(
    level: Level,
    target: &str,
    fields: impl FnOnce(&mut String),
) -> bool {
    let Some(lines) = TEXT_LINES.get() else {
        return false;
    };
    let mut line = lend_buffer();
    // Writing to a `String` does not fail.
    let _ = write_line_start(&LineTime, &mut Writer::new(&mut line), level, target);
    fields(&mut line);
    line.push('\n');
    lines.write_line(line.as_bytes());
    give_back_buffer(line);
    true
}

/// How the text format writes an event's fields: the message, then `name=value` for each
/// other field, a space apart, as tracing-subscriber's default does, and without the calls
/// that default makes to style every name and `=` even when styles are off (measured with
/// callgrind: a tenth of a short request's instructions, for the 12 fields of a request's
/// line). Numbers, booleans and plain strings are written without `core::fmt` (a request's
/// line has four integers, two milliseconds and two strings); the text is the default's
/// all the same. The message keeps the default's escaping of terminal controls; names are
/// not styled on a terminal.
///
/// The fields are put together in a buffer of the thread's own, a `String` written to
/// directly, and handed to the line's writer in one piece: through the writer, each of the
/// line's fifty-odd pieces is a call through `dyn fmt::Write` (measured with callgrind:
/// 2,000 instructions of a short request's line).
pub(crate) struct TextFields;

thread_local! {
    /// The buffer in which a thread puts an event's fields together, kept from one event to
    /// the next so that a line costs no allocation.
    static FIELDS: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// Past this, a thread's buffer is not kept for the next line (one line with a long note
/// does not hold its room for ever).
const FIELDS_KEPT: usize = 4096;

/// This thread's buffer for a line's fields, empty.
fn lend_buffer() -> String {
    // A thread being torn down has no buffer to lend: the line gets a new one.
    FIELDS.try_with(std::cell::Cell::take).unwrap_or_default()
}

/// Keeps `buffer`, emptied, for this thread's next line, unless it grew past
/// [`FIELDS_KEPT`].
fn give_back_buffer(mut buffer: String) {
    if buffer.capacity() <= FIELDS_KEPT {
        buffer.clear();
        // A thread being torn down keeps nothing.
        let _ = FIELDS.try_with(|kept| kept.set(buffer));
    }
}

impl<'writer> MakeVisitor<Writer<'writer>> for TextFields {
    type Visitor = TextVisitor<'writer>;

    fn make_visitor(&self, writer: Writer<'writer>) -> TextVisitor<'writer> {
        TextVisitor {
            fields: lend_buffer(),
            sanitizes: writer.sanitizes_ansi_escapes(),
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

/// One event's fields on their way into a text line.
pub(crate) struct TextVisitor<'writer> {
    /// The fields so far; written to `writer` at the end.
    fields: String,
    /// Whether the message's terminal controls are written out (`writer`'s setting).
    sanitizes: bool,
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    /// A space unless `field` is the first, `name=` unless it is the message, then the value
    /// that `value` writes (told whether it is the message).
    fn write(&mut self, field: &Field, value: impl FnOnce(&mut String, bool) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.write_field(field, value);
        }
    }

    fn write_field(
        &mut self,
        field: &Field,
        value: impl FnOnce(&mut String, bool) -> fmt::Result,
    ) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.fields.push(' ');
        }
        let name = field.name();
        let message = name == "message";
        if !message {
            // A raw identifier without its `r#`, as the default writes it.
            self.fields
                .push_str(name.strip_prefix("r#").unwrap_or(name));
            self.fields.push('=');
        }
        value(&mut self.fields, message)
    }
}

impl Visit for TextVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let sanitizes = self.sanitizes;
        self.write(field, |fields, message| {
            if message && sanitizes {
                write!(Escaped(fields), "{value:?}")
            } else {
                write!(fields, "{value:?}")
            }
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            // The default writes a message given as a string as it is, not quoted.
            return self.record_debug(field, &format_args!("{value}"));
        }
        self.write(field, |fields, _| write_str_debug(fields, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, |fields, _| {
            fields.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, |fields, _| {
            fields.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, |fields, _| {
            fields.push_str(if value { "true" } else { "false" });
            Ok(())
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.write(field, |fields, _| write_f64_debug(fields, value));
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(mut self) -> fmt::Result {
        let written = self
            .result
            .and_then(|()| self.writer.write_str(&self.fields));
        give_back_buffer(std::mem::take(&mut self.fields));
        written
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.fields
    }
}

/// `value` as `{:?}` writes it: quoted, with `"`, `\`, controls and other characters
/// escaped. A string of printable ASCII without `"` or `\` (a request's ending, an
/// upstream's URL) has nothing to escape, and goes as it is between the quotes.
pub(crate) fn write_str_debug(writer: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let plain = value
        .bytes()
        .all(|byte| matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\');
    if !plain {
        return write!(writer, "{value:?}");
    }
    writer.write_char('"')?;
    writer.write_str(value)?;
    writer.write_char('"')
}

/// Tenths below this are written by [`write_f64_debug`] itself: doubles below 10^14 are
/// less than a tenth apart, so a tenth's nearest double has no other tenth that rounds to it.
const TENTHS_WRITTEN: f64 = 1e15;

/// `value` as `{:?}` writes it. The log's milliseconds are rounded to a tenth, and the
/// shortest text that reads back as the double nearest a tenth is that tenth, with one
/// digit after the point (`12.0`, `12.3`): written from two integers, not by `core::fmt`'s
/// search for the shortest digits. Any other value is `core::fmt`'s.
pub(crate) fn write_f64_debug(writer: &mut impl fmt::Write, value: f64) -> fmt::Result {
    let tenths = (value * 10.0).round();
    // `-0.0` passes the range and comparison but is written with its sign.
    if value.is_sign_positive() && (0.0..TENTHS_WRITTEN).contains(&tenths) && tenths / 10.0 == value
    {
        // Exact: a whole number below 2^53.
        let tenths = tenths as u64;
        writer.write_str(itoa::Buffer::new().format(tenths / 10))?;
        writer.write_char('.')?;
        return writer.write_char(char::from(b'0' + (tenths % 10) as u8));
    }
    write!(writer, "{value:?}")
}

/// Writes what it is given with the controls a terminal would act on written out instead,
/// as tracing-subscriber writes a message: ESC, BEL, BS, FF, DEL and the C1 controls.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(is_terminal_control) {
            self.0.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().unwrap_or_default();
            match control {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                    write!(self.0, "\\x{:02x}", control as u32)?;
                }
                _ => write!(self.0, "\\u{{{:x}}}", control as u32)?,
            }
            rest = &rest[at + control.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn is_terminal_control(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

/// The time at the start of a text line, as tracing-subscriber's `SystemTime` writes it
/// (RFC 3339 in UTC, to the microsecond). humantime writes the date and the second, once a
/// second on each thread; the microseconds are put after them (measured with callgrind:
/// tracing-subscriber's seven formatted numbers cost 2,400 instructions a line, humantime's
/// whole timestamp 515, the kept second and its microseconds 350, the clock read included).
#[derive(Clone, Copy)]
struct LineTime;

/// The first second of the year 10000, past humantime's range.
const YEAR_10000: u64 = 253_402_300_800;

/// `2026-12-02T14:14:06`: a line time up to its second.
type SecondText = [u8; 19];

thread_local! {
    /// The last second a line time was written for on this thread, and its text.
    static SECOND: std::cell::Cell<(u64, SecondText)> =
        const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

impl FormatTime for LineTime {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now();
        // humantime takes 1970 to 9999 (and panics before 1970): a clock set outside that is
        // tracing-subscriber's to write.
        match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) if since.as_secs() < YEAR_10000 => write_line_time(writer, since),
            _ => tracing_subscriber::fmt::time::SystemTime.format_time(writer),
        }
    }
}

/// The line time `since` the epoch (before the year 10000), as humantime's
/// `format_rfc3339_micros` writes it.
fn write_line_time(writer: &mut impl fmt::Write, since: std::time::Duration) -> fmt::Result {
    let seconds = since.as_secs();
    // A thread being torn down has no kept second: it is written anew.
    let kept = SECOND.try_with(std::cell::Cell::get).ok();
    let text = match kept {
        Some((kept, text)) if kept == seconds => text,
        _ => {
            let whole = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
            let mut text: SecondText = [0; 19];
            // `2026-12-02T14:14:06Z`: the second, then the zone.
            let written = humantime::format_rfc3339_seconds(whole).to_string();
            text.copy_from_slice(&written.as_bytes()[..19]);
            let _ = SECOND.try_with(|kept| kept.set((seconds, text)));
            text
        }
    };
    // Then `.000042Z`: six digits, zeros first.
    let mut line_time = *b"1970-01-01T00:00:00.000000Z";
    line_time[..19].copy_from_slice(&text);
    let mut digits = itoa::Buffer::new();
    let micros = digits.format(since.subsec_micros()).as_bytes();
    line_time[26 - micros.len()..26].copy_from_slice(micros);
    writer.write_str(std::str::from_utf8(&line_time).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Everything written to it, shared: a writer for a test's subscriber.
    #[derive(Clone, Default)]
    pub(crate) struct Lines(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// The fields of the events below, as a text layer with `fields` writes them (no time,
    /// no styles).
    fn written<N>(fields: N) -> String
    where
        N: for<'writer> FormatFields<'writer> + Send + Sync + 'static,
    {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(fields)
            .with_writer(lines.clone())
            .with_ansi(false)
            .without_time();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let (none, some): (Option<&str>, Option<&str>) = (None, Some("quoted \" too"));
            let path = "/v1/chat/completions";
            tracing::info!(
                method = %http::Method::POST,
                path = %path,
                status = Some(200u16),
                model = none,
                upstreams = some,
                attempts = 2u32,
                frames = 4u64,
                first_frame_ms = Some(34.8f64),
                elapsed_ms = 97.0f64,
                ok = true,
                r#type = "raw",
                delta = -3i64,
                largest = u64::MAX,
                smallest = i64::MIN,
                sum = 0.1f64 + 0.2,
                negative_zero = -0.0f64,
                not_a_number = f64::NAN,
                huge = 1e300f64,
                ending = "completed",
                escaped = "tab\t, newline\n, é and \\",
                note = ?vec!["a"],
                "request",
            );
            tracing::warn!(
                "a message with \x1b[31m, \x07, \u{9b}, \x7f, é and a {} argument",
                "formatted"
            );
            tracing::info!(only = 1u8);
            tracing::info!(message = "a message given as a string", after = false);
        });
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_lines_are_written_as_the_default_fields_write_them() {
        let ours = written(TextFields);
        let default = written(tracing_subscriber::fmt::format::DefaultFields::new());
        assert_eq!(ours, default);
        // What they say, so that both cannot agree on nothing.
        assert!(
            ours.contains(
                "request method=POST path=/v1/chat/completions status=200 \
             upstreams=\"quoted \\\" too\" attempts=2 frames=4 first_frame_ms=34.8 \
             elapsed_ms=97.0 ok=true type=\"raw\" delta=-3 largest=18446744073709551615 \
             smallest=-9223372036854775808 sum=0.30000000000000004 negative_zero=-0.0 \
             not_a_number=NaN huge=1e300 ending=\"completed\" \
             escaped=\"tab\\t, newline\\n, é and \\\\\" note=[\"a\"]\n"
            ),
            "{ours}"
        );
        assert!(
            ours.contains("a message with \\x1b[31m, \\x07, \\u{9b}, \\x7f, é"),
            "{ours}"
        );
        assert!(ours.contains(" only=1\n"), "{ours}");
        assert!(
            ours.contains(" a message given as a string after=false\n"),
            "{ours}"
        );
    }

    /// A clock that always reads the same, or cannot be read.
    #[derive(Clone, Copy)]
    struct Clock(bool);

    impl FormatTime for Clock {
        fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
            match self.0 {
                true => writer.write_str("2026-12-02T16:00:00.000000Z"),
                false => Err(fmt::Error),
            }
        }
    }

    /// Lines of every level, outside and inside spans, as a text layer with `format` and
    /// our fields writes them, with or without styles.
    fn lines<F>(format: F, ansi: bool) -> String
    where
        F: FormatEvent<tracing_subscriber::Registry, TextFields> + Send + Sync + 'static,
    {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(TextFields)
            .event_format(format)
            .with_writer(lines.clone())
            .with_ansi(ansi);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::trace!(target: "a_target", frames = 1u64, "trace");
            tracing::debug!("debug");
            tracing::info!(target: "stream_deadline_gateway", status = 200u16, "request");
            tracing::warn!(upstream = "http://10.0.0.1:8000", "left out");
            tracing::error!("error");
            let span = tracing::info_span!("attempt", upstream = 2u64);
            span.in_scope(|| {
                tracing::info!("inside");
                tracing::info_span!("inner").in_scope(|| tracing::warn!("deeper"));
            });
            tracing::info!("after");
        });
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_lines_are_the_full_formats() {
        for clock in [Clock(true), Clock(false)] {
            for ansi in [false, true] {
                let ours = lines(TextLine::new(clock), ansi);
                let full = lines(tracing_subscriber::fmt::format().with_timer(clock), ansi);
                assert_eq!(ours, full, "ansi {ansi}");
                assert_eq!(ours.lines().count(), 8, "{ours}");
            }
        }
        // What they say, so that both cannot agree on nothing.
        let ours = lines(TextLine::new(Clock(true)), false);
        for line in [
            "2026-12-02T16:00:00.000000Z TRACE a_target: trace frames=1\n",
            "2026-12-02T16:00:00.000000Z  INFO stream_deadline_gateway: request status=200\n",
            "2026-12-02T16:00:00.000000Z  WARN stream_deadline_gateway::subscriber::tests: left out upstream=\"http://10.0.0.1:8000\"\n",
            "2026-12-02T16:00:00.000000Z ERROR stream_deadline_gateway::subscriber::tests: error\n",
            "2026-12-02T16:00:00.000000Z  WARN attempt{upstream=2}:inner: stream_deadline_gateway::subscriber::tests: deeper\n",
        ] {
            assert!(ours.contains(line), "{line} in {ours}");
        }
        let unread = lines(TextLine::new(Clock(false)), false);
        assert!(
            unread.starts_with("<unknown time> TRACE a_target: trace"),
            "{unread}"
        );
    }

    fn debug_written(write: impl FnOnce(&mut String) -> fmt::Result) -> String {
        let mut written = String::new();
        write(&mut written).unwrap();
        written
    }

    #[test]
    fn milliseconds_at_the_edges_are_written_as_debug_writes_them() {
        // Zero both ways, and values about the bound and past it: from 2^49 doubles are a
        // tenth or more apart, and past 2^50 a tenth's nearest double is another tenth's.
        let (two_to_49, two_to_50) = (2f64.powi(49), 2f64.powi(50));
        for value in [
            0.0,
            -0.0,
            0.1,
            99_999_999_999_999.9,
            1e14,
            100_000_000_000_000.1,
            two_to_49 - 0.1,
            two_to_49,
            two_to_49 + 0.1,
            two_to_50 + 0.5,
            two_to_50 + 1.5,
            1e15 + 0.1,
            1e16,
        ] {
            assert_eq!(
                debug_written(|w| write_f64_debug(w, value)),
                format!("{value:?}")
            );
        }
    }

    proptest! {
        #[test]
        fn numbers_are_written_as_debug_writes_them(
            tenths in prop_oneof![0u64..10_000_000, 0u64..20_000_000_000_000_000],
            bits in any::<u64>(),
            near in any::<f64>(),
        ) {
            // The log's milliseconds (tenths, past where the shortcut stops), any double,
            // and doubles a few steps from a tenth.
            let tenth = tenths as f64 / 10.0;
            let stepped = f64::from_bits(tenth.to_bits().wrapping_add(bits % 5));
            for value in [tenth, stepped, f64::from_bits(bits), near, near.round() / 10.0] {
                prop_assert_eq!(
                    debug_written(|w| write_f64_debug(w, value)),
                    format!("{value:?}")
                );
            }
        }

        #[test]
        fn line_times_are_written_as_humantime_writes_them(
            seconds in prop_oneof![0u64..YEAR_10000, 1_700_000_000u64..1_700_000_100],
            micros in prop_oneof![0u32..1_000_000, 0u32..10, 999_990u32..1_000_000],
        ) {
            // Seconds anywhere in range, and a hundred seconds of lines, most of them written
            // after the thread kept their second.
            let since = std::time::Duration::new(seconds, micros * 1_000 + micros % 1_000);
            let mut written = String::new();
            write_line_time(&mut written, since).unwrap();
            let theirs = humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + since);
            prop_assert_eq!(written, theirs.to_string());
        }

        #[test]
        fn strings_are_written_as_debug_writes_them(
            value in any::<String>(),
            ascii in "[ -~]{0,40}",
        ) {
            for value in [value.as_str(), ascii.as_str()] {
                prop_assert_eq!(
                    debug_written(|w| write_str_debug(w, value)),
                    format!("{value:?}")
                );
            }
        }
    }

    #[test]
    fn line_times_are_written_as_tracing_subscriber_writes_them() {
        let time = |timer: &dyn FormatTime| {
            let mut written = String::new();
            timer.format_time(&mut Writer::new(&mut written)).unwrap();
            written
        };
        // Two clocks read one after the other agree to the second but across a second's end:
        // a few tries find a pair within one.
        for _ in 0..10 {
            let (ours, theirs) = (
                time(&LineTime),
                time(&tracing_subscriber::fmt::time::SystemTime),
            );
            assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
            assert_eq!(ours.len(), "2026-12-02T14:14:06.489973Z".len(), "{ours}");
            assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
            if ours[..19] == theirs[..19] {
                return;
            }
        }
        panic!("ten pairs of timestamps, none within one second");
    }
}
