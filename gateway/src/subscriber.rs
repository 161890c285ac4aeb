//! Where the gateway's `tracing` events go: stderr, as text for people or as one JSON object
//! per line for log pipelines (Loki, Elasticsearch, Datadog), filtered by `RUST_LOG`.
//!
//! Lines are handed to a thread of their own that writes them (tracing-appender's
//! non-blocking writer), so a request's line never waits on stderr inside a worker of the
//! runtime; when the buffer is full the worker waits rather than drop a line, and the guard
//! that [`init`] returns writes out what is left when the process ends. That thread writes
//! the lines it finds waiting together, in one `write` (it flushes each time it has taken
//! them all), rather than one `write` per line.

use std::io::{BufWriter, IsTerminal};

use clap::ValueEnum;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::Targets;
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
