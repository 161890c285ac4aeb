//! Where the gateway's `tracing` events go: stderr, as text for people or as one JSON object
//! per line for log pipelines (Loki, Elasticsearch, Datadog), filtered by `RUST_LOG`.
//!
//! Lines are handed to a thread of their own that writes them (tracing-appender's
//! non-blocking writer), so a request's line never waits on stderr inside a worker of the
//! runtime; when the buffer is full the worker waits rather than drop a line, and the guard
//! that [`init`] returns writes out what is left when the process ends. That thread writes
//! the lines it finds waiting together, in one `write` (it flushes each time it has taken
//! them all), rather than one `write` per line.

use std::fmt::{self, Write as _};
use std::io::{BufWriter, IsTerminal};

use clap::ValueEnum;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{Writer, debug_fn};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::prelude::*;

/// The targets and levels logged when `RUST_LOG` is unset or cannot be read.
pub const DEFAULT_FILTER: &str = "stream_deadline_gateway=info,tower_stream_deadline=error,warn";

/// The bytes of waiting lines the log thread gathers before it writes them (a line longer
/// than this goes out alone); it writes sooner when no line waits.
const LINES_BUFFERED: usize = 64 * 1024;

/// The most lines waiting for the log thread; beyond, a worker waits for room. The queue
/// takes its room at start, 32 bytes a line: tracing-appender's default of 128,000 lines
/// is 4 MB resident in every gateway, a second and more of lines at 50,000 requests a
/// second; this is a third of a second.
const LINES_WAITING_AT_MOST: usize = 16 * 1024;

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
pub fn init(format: LogFormat) -> WorkerGuard {
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| DEFAULT_FILTER.parse().unwrap_or_default());
    let (stderr, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LINES_WAITING_AT_MOST)
        .lossy(false)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(LINES_BUFFERED, std::io::stderr()));
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .fmt_fields(text_fields())
            .with_timer(LineTime)
            .with_writer(stderr.clone())
            .with_ansi(std::io::stderr().is_terminal())
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

/// How the text format writes an event's fields: the message, then `name=value` for each
/// other field, a space apart, as tracing-subscriber's default does, and without the calls
/// that default makes to style every name and `=` even when styles are off (measured with
/// callgrind: a tenth of a short request's instructions, for the 12 fields of a request's
/// line). The message keeps the default's escaping of terminal controls; names are not
/// styled on a terminal.
fn text_fields() -> impl for<'writer> FormatFields<'writer> + Send + Sync + 'static {
    debug_fn(
        |writer: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
            if field.name() != "message" {
                // The name and `=` as they are, not through `format_args!`'s padding rules;
                // a raw identifier without its `r#`, as the default writes it.
                let name = field.name();
                writer.write_str(name.strip_prefix("r#").unwrap_or(name))?;
                writer.write_char('=')?;
                return write!(writer, "{value:?}");
            }
            if writer.sanitizes_ansi_escapes() {
                write!(Escaped(writer), "{value:?}")
            } else {
                write!(writer, "{value:?}")
            }
        },
    )
    .delimited(" ")
}

/// Writes what it is given with the controls a terminal would act on written out instead,
/// as tracing-subscriber writes a message: ESC, BEL, BS, FF, DEL and the C1 controls.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
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
/// (RFC 3339 in UTC, to the microsecond), written by humantime, which puts it together in
/// one piece where tracing-subscriber formats seven numbers (measured with callgrind: 2,400
/// instructions a line, a twentieth of a short request's).
struct LineTime;

/// The first second of the year 10000, past humantime's range.
const YEAR_10000: u64 = 253_402_300_800;

impl FormatTime for LineTime {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now();
        // humantime takes 1970 to 9999 (and panics before 1970): a clock set outside that is
        // tracing-subscriber's to write.
        match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) if since.as_secs() < YEAR_10000 => {
                write!(writer, "{}", humantime::format_rfc3339_micros(now))
            }
            _ => tracing_subscriber::fmt::time::SystemTime.format_time(writer),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Everything written to it, shared.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

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
                ending = "completed",
                note = ?vec!["a"],
                "request",
            );
            tracing::warn!(
                "a message with \x1b[31m, \x07, \u{9b}, \x7f, é and a {} argument",
                "formatted"
            );
            tracing::info!(only = 1u8);
        });
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_lines_are_written_as_the_default_fields_write_them() {
        let ours = written(text_fields());
        let default = written(tracing_subscriber::fmt::format::DefaultFields::new());
        assert_eq!(ours, default);
        // What they say, so that both cannot agree on nothing.
        assert!(
            ours.contains(
                "request method=POST path=/v1/chat/completions status=200 \
             upstreams=\"quoted \\\" too\" attempts=2 frames=4 first_frame_ms=34.8 \
             elapsed_ms=97.0 ok=true type=\"raw\" delta=-3 ending=\"completed\" note=[\"a\"]\n"
            ),
            "{ours}"
        );
        assert!(
            ours.contains("a message with \\x1b[31m, \\x07, \\u{9b}, \\x7f, é"),
            "{ours}"
        );
        assert!(ours.contains(" only=1\n"), "{ours}");
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
