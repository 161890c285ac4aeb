//! A deadline leaves one `tracing` event saying what ran out and what got through before it.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::Layer;
use tower_stream_deadline::StreamDeadlineLayer;

use support::{MS, Step, Upstream, call, drain};

/// Collects everything a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_everything() -> (Captured, tracing::subscriber::DefaultGuard) {
    capture_up_to(tracing::Level::TRACE)
}

fn capture_up_to(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(start_paused = true)]
async fn a_deadline_emits_one_warning_with_kind_budget_elapsed_frames_and_bytes() {
    let (captured, _guard) = capture_everything();
    // Three 4-byte frames at 0, 100 and 200 ms, then silence.
    let upstream = Upstream::new(Duration::ZERO, [Step::Babble { every: 100 * MS }]);
    let mut svc = StreamDeadlineLayer::new(250 * MS).layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;
    assert_eq!(drained.data.len(), 3);

    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "one event, none per frame: {lines:#?}");
    let line = &lines[0];
    for field in [
        "WARN",
        "tower_stream_deadline",
        "kind=\"total\"",
        "budget=250ms",
        "elapsed=250ms",
        "frames=3",
        "bytes=12",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_of_warnings_only_still_gets_the_deadline_with_what_got_through() {
    let (captured, _guard) = capture_up_to(tracing::Level::WARN);
    let upstream = Upstream::new(Duration::ZERO, [Step::Babble { every: 100 * MS }]);
    let mut svc = StreamDeadlineLayer::new(250 * MS).layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    assert_eq!(drain(&mut body).await.data.len(), 3);

    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("frames=3") && lines[0].contains("bytes=12"),
        "{}",
        lines[0]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_that_fails_before_the_body_reports_nothing_delivered() {
    let (captured, _guard) = capture_everything();
    let upstream = Upstream::new(Duration::ZERO, [Step::Stall]);
    let layer = StreamDeadlineLayer::new(Duration::from_secs(5)).first_frame(100 * MS);
    let mut svc = layer.layer(upstream.service());

    assert!(call(&mut svc).await.is_err());

    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("kind=\"first-frame\"") && lines[0].contains("frames=0"),
        "{}",
        lines[0]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_completes_emits_one_debug_event_with_its_outcome() {
    let (captured, _guard) = capture_everything();
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data("a"), Step::After(MS), Step::Data("b")],
    );
    let layer = StreamDeadlineLayer::new(Duration::from_secs(5)).idle(Duration::from_secs(1));
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    assert!(drain(&mut body).await.error.is_none());

    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for field in [
        "DEBUG",
        "ending=\"completed\"",
        "frames=2",
        "bytes=2",
        "longest_idle=Some(1ms)",
    ] {
        assert!(
            lines[0].contains(field),
            "{field} missing from {}",
            lines[0]
        );
    }
}
