//! Server-sent events: progress that counts (keep-alives do not), and endings a client can
//! read (at a deadline, and when the upstream fails mid-stream), on tokio's paused clock.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::Layer;
use tower_stream_deadline::{DeadlineKind, Ending, StreamDeadlineLayer};

use support::{MS, Step, Upstream, UpstreamError, assert_fired, call, deadline_of, drain};

const SEC: Duration = Duration::from_secs(1);
const SSE: &str = "text/event-stream";

const TOKEN: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";
const ROLE_ONLY: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const PING: &str = ": ping\n\n";

/// An OpenAI chunk counts only if its delta has content.
fn has_content(data: &[u8]) -> bool {
    let Ok(chunk) = serde_json::from_slice::<serde_json::Value>(data) else {
        return true; // not JSON (`[DONE]`, say): progress all the same
    };
    chunk["choices"][0]["delta"]["content"].is_string()
}

/// A keep-alive every second, `n` times.
fn pings(n: usize) -> Vec<Step> {
    (0..n)
        .flat_map(|_| [Step::After(SEC), Step::Data(PING)])
        .collect()
}

#[tokio::test(start_paused = true)]
async fn keep_alives_alone_fail_at_the_first_frame_budget() {
    let upstream = Upstream::new(Duration::ZERO, pings(100)).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .first_frame(5 * SEC)
        .sse_progress();
    let mut svc = layer.layer(upstream.service());

    let result = call(&mut svc).await;

    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, 5 * SEC);
}

#[tokio::test(start_paused = true)]
async fn without_sse_progress_keep_alives_count_as_the_first_frame() {
    let upstream = Upstream::new(Duration::ZERO, pings(100)).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(60 * SEC).first_frame(5 * SEC);
    let mut svc = layer.layer(upstream.service());

    let start = Instant::now();
    assert!(call(&mut svc).await.is_ok());
    assert_eq!(start.elapsed(), SEC, "the first ping resolved the call");
}

#[tokio::test(start_paused = true)]
async fn a_role_only_prelude_then_silence_fails_at_the_first_frame_budget() {
    let mut steps = vec![Step::After(100 * MS), Step::Data(ROLE_ONLY)];
    steps.extend(pings(100));
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .first_frame(5 * SEC)
        .sse_progress_filter(has_content);
    let mut svc = layer.layer(upstream.service());

    let result = call(&mut svc).await;

    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, 5 * SEC);
}

#[tokio::test(start_paused = true)]
async fn a_role_only_prelude_then_silence_fails_at_the_idle_budget_without_a_first_frame_budget() {
    let mut steps = vec![Step::After(100 * MS), Step::Data(ROLE_ONLY)];
    steps.extend(pings(100));
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .idle(3 * SEC)
        .sse_progress_filter(has_content);
    let mut svc = layer.layer(upstream.service());

    let start = Instant::now();
    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(
        drained.text(),
        format!("{ROLE_ONLY}{PING}{PING}"),
        "delivered all the same"
    );
    assert_fired(drained.deadline(), DeadlineKind::Idle, 3 * SEC);
    assert_eq!(
        start.elapsed(),
        3 * SEC,
        "counted from the head, not from the prelude"
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_then_only_keep_alives_fail_at_the_idle_budget() {
    let mut steps = vec![Step::Data(TOKEN), Step::After(500 * MS), Step::Data(TOKEN)];
    steps.extend(pings(100));
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .idle(3500 * MS)
        .sse_progress();
    let mut svc = layer.layer(upstream.service());

    let start = Instant::now();
    let mut body = call(&mut svc).await.unwrap().into_body();
    let mut arrivals = Vec::new();
    let err = loop {
        match body.frame().await.expect("no end before the deadline") {
            Ok(frame) => arrivals.push((start.elapsed(), frame.into_data().unwrap())),
            Err(err) => break err,
        }
    };

    let deadline = err
        .downcast_ref::<tower_stream_deadline::DeadlineExceeded>()
        .unwrap();
    assert_fired(deadline, DeadlineKind::Idle, 3500 * MS);
    assert_eq!(
        start.elapsed(),
        4 * SEC,
        "3.5 s after the last token at 0.5 s"
    );
    // Keep-alives are delivered at once, as they arrive.
    let times: Vec<_> = arrivals.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        [Duration::ZERO, 500 * MS, 1500 * MS, 2500 * MS, 3500 * MS]
    );
}

#[tokio::test(start_paused = true)]
async fn an_honest_slow_stream_does_not_fail() {
    let mut steps = Vec::new();
    for _ in 0..10 {
        steps.extend([
            Step::After(2 * SEC),
            Step::Data(PING),
            Step::After(2 * SEC),
            Step::Data(TOKEN),
        ]);
    }
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .first_frame(5 * SEC)
        .idle(5 * SEC)
        .sse_progress_filter(has_content);
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none(), "{:?}", drained.error);
    assert_eq!(drained.text().matches("tok").count(), 10);
}

#[tokio::test(start_paused = true)]
async fn keep_alives_before_the_first_token_are_replayed_in_order_with_it() {
    let steps = [
        Step::After(SEC),
        Step::Data(PING),
        Step::After(SEC),
        Step::Data(ROLE_ONLY),
        Step::Data(TOKEN),
    ];
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .first_frame(5 * SEC)
        .sse_progress_filter(has_content);
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none());
    assert_eq!(drained.text(), format!("{PING}{ROLE_ONLY}{TOKEN}"));
}

/// The last event, which must be named `error` (the `anthropic` SDK raises only those) and
/// carry `{"type":"error","error":{...}}` (which the `openai` SDK raises whatever the name).
fn error_event_of(text: &str) -> serde_json::Value {
    let event = text.rsplit("\n\n").nth(1).expect("a last event");
    let data = event
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("an event named error: {event:?}"));
    let event: serde_json::Value = serde_json::from_str(data).expect("JSON");
    assert_eq!(event["type"], "error", "{event}");
    assert!(event["error"]["message"].is_string(), "{event}");
    event
}

#[tokio::test(start_paused = true)]
async fn a_late_sse_stream_ends_with_an_error_event_openai_and_anthropic_clients_raise() {
    let upstream = Upstream::new(
        Duration::ZERO,
        [
            Step::Data(TOKEN),
            Step::After(10 * MS),
            Step::Data(TOKEN),
            Step::Stall,
        ],
    )
    .with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(SEC).sse_endings();
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(
        drained.error.is_none(),
        "a clean end, not an error: {:?}",
        drained.error
    );
    let text = drained.text();
    assert!(text.starts_with(&format!("{TOKEN}{TOKEN}")), "{text}");
    let error = error_event_of(&text);
    assert_eq!(error["error"]["type"], "timeout");
    assert_eq!(error["error"]["code"], "deadline_exceeded");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("total budget of 1s"), "{message}");
    assert!(
        upstream.body_dropped.is_dropped(),
        "the upstream is released all the same"
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_event_is_never_spliced_into_a_half_sent_event() {
    // The second event is cut at the deadline, half sent.
    let steps = [
        Step::Data("data: {\"n\":1}\n\ndata: {\"n\""),
        Step::After(100 * MS),
        Step::Data(":2}\n\ndata: {\"n\":"),
        Step::Stall,
    ];
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(SEC).sse_endings();
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    let text = drained.text();
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(
        &events[..2],
        ["data: {\"n\":1}", "data: {\"n\":2}"],
        "complete events, whole: {text:?}"
    );
    assert_eq!(
        events.len(),
        3,
        "then the error event, nothing of the half: {text:?}"
    );
    assert_eq!(error_event_of(&text)["error"]["type"], "timeout");
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_mid_event_in_time_delivers_every_byte() {
    let steps = [
        Step::Data("data: 1\n\ndata: 2"),
        Step::After(MS),
        Step::Data("\n\ndata: 3"),
    ];
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(SEC).sse_endings();
    let mut svc = layer.layer(upstream.service());

    let body = call(&mut svc).await.unwrap().into_body();
    let bytes = body.collect().await.unwrap().to_bytes();

    assert_eq!(bytes, "data: 1\n\ndata: 2\n\ndata: 3");
}

#[tokio::test(start_paused = true)]
async fn the_ending_event_can_be_customised() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Stall]).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(SEC)
        .sse_ending_event(|d| Bytes::from(format!("event: deadline\ndata: {}\n\n", d.kind())));
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "event: deadline\ndata: total\n\n");
    assert!(body.is_end_stream());
}

#[tokio::test(start_paused = true)]
async fn sse_settings_leave_other_content_types_alone() {
    let upstream = Upstream::new(Duration::ZERO, [Step::Data(PING), Step::Stall])
        .with_content_type("application/json");
    let layer = StreamDeadlineLayer::new(SEC)
        .first_frame(500 * MS)
        .sse_progress()
        .sse_endings();
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), PING, "the ping is a first frame here");
    assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
}

#[tokio::test(start_paused = true)]
async fn a_progress_filter_judges_frames_of_any_body() {
    // A JSON-lines stream whose heartbeats are "{}".
    let steps = [
        Step::Data("{\"n\":1}\n"),
        Step::After(SEC),
        Step::Data("{}\n"),
        Step::After(SEC),
        Step::Data("{}\n"),
        Step::Stall,
    ];
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type("application/x-ndjson");
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .idle(1500 * MS)
        .progress(|data| data != b"{}\n");
    let mut svc = layer.layer(upstream.service());

    let start = Instant::now();
    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), "{\"n\":1}\n{}\n");
    assert_fired(drained.deadline(), DeadlineKind::Idle, 1500 * MS);
    assert_eq!(start.elapsed(), 1500 * MS);
}

#[tokio::test(start_paused = true)]
async fn with_sse_endings_no_content_length_promises_a_size_the_last_event_would_break() {
    let sized = tower::service_fn(|_req: http::Request<()>| async {
        let body = http_body_util::Full::new(Bytes::from_static(b"data: 1\n\n"));
        let response = http::Response::builder()
            .header(http::header::CONTENT_TYPE, SSE)
            .header(http::header::CONTENT_LENGTH, "9")
            .body(body)
            .unwrap();
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut svc = StreamDeadlineLayer::new(SEC).sse_endings().layer(sized);

    let response = call(&mut svc).await.unwrap();

    assert!(
        response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_none()
    );
    assert_eq!(response.body().size_hint().upper(), None);
    assert_eq!(response.body().size_hint().lower(), 9);
}

/// Two events and half of a third, then the upstream fails.
const DIES_MID_EVENT: [Step; 2] = [
    Step::Data("data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: {\"n\""),
    Step::Fail("connection reset by peer"),
];

/// The outcome reported for the one response through `layer`.
fn reporting(
    layer: StreamDeadlineLayer,
) -> (StreamDeadlineLayer, std::sync::Arc<std::sync::Mutex<Vec<Ending>>>) {
    let endings = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = endings.clone();
    let layer = layer.on_outcome(move |outcome| seen.lock().unwrap().push(outcome.ending));
    (layer, endings)
}

#[tokio::test(start_paused = true)]
async fn with_sse_upstream_errors_a_failing_upstream_ends_with_whole_events_then_an_upstream_error_event()
 {
    let upstream = Upstream::new(Duration::ZERO, DIES_MID_EVENT).with_content_type(SSE);
    let (layer, endings) = reporting(StreamDeadlineLayer::new(SEC).sse_upstream_errors());
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none(), "a clean end: {:?}", drained.error);
    let text = drained.text();
    assert!(
        text.starts_with("data: {\"n\":1}\n\ndata: {\"n\":2}\n\nevent: error\n"),
        "every whole event, nothing of the half, then the error event: {text:?}"
    );
    let error = error_event_of(&text);
    assert_eq!(error["error"]["type"], "upstream_error");
    assert_eq!(error["error"]["code"], "upstream_failed");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("connection reset by peer"), "{message}");
    assert!(body.is_end_stream());
    assert_eq!(
        *endings.lock().unwrap(),
        [Ending::UpstreamError],
        "on_outcome still reports the upstream error"
    );
}

#[tokio::test(start_paused = true)]
async fn without_sse_upstream_errors_an_upstream_failure_passes_through_untouched() {
    let upstream = Upstream::new(Duration::ZERO, DIES_MID_EVENT).with_content_type(SSE);
    let (layer, endings) = reporting(StreamDeadlineLayer::new(SEC));
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(
        drained.text(),
        "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: {\"n\""
    );
    let err = drained.error.expect("the upstream error");
    assert!(err.downcast_ref::<UpstreamError>().is_some(), "{err:?}");
    assert_eq!(*endings.lock().unwrap(), [Ending::UpstreamError]);
}

#[tokio::test(start_paused = true)]
async fn sse_upstream_errors_leave_other_content_types_alone() {
    let upstream =
        Upstream::new(Duration::ZERO, DIES_MID_EVENT).with_content_type("application/json");
    let layer = StreamDeadlineLayer::new(SEC).sse_upstream_errors();
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    let err = drained.error.expect("the upstream error");
    assert!(err.downcast_ref::<UpstreamError>().is_some(), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn sse_upstream_errors_alone_leave_a_late_stream_failing_with_the_deadline() {
    let upstream =
        Upstream::new(Duration::ZERO, [Step::Data(TOKEN), Step::Stall]).with_content_type(SSE);
    let layer = StreamDeadlineLayer::new(SEC).sse_upstream_errors();
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert_eq!(drained.text(), TOKEN);
    assert_fired(drained.deadline(), DeadlineKind::Total, SEC);
}

#[tokio::test(start_paused = true)]
async fn with_both_sse_settings_a_deadline_and_an_upstream_failure_each_get_their_event() {
    let layer = StreamDeadlineLayer::new(SEC)
        .sse_endings()
        .sse_upstream_errors();
    for (steps, kind) in [
        (vec![Step::Data(TOKEN), Step::Stall], "timeout"),
        (DIES_MID_EVENT.to_vec(), "upstream_error"),
    ] {
        let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
        let mut svc = layer.clone().layer(upstream.service());

        let mut body = call(&mut svc).await.unwrap().into_body();
        let drained = drain(&mut body).await;

        assert!(drained.error.is_none(), "{:?}", drained.error);
        assert_eq!(error_event_of(&drained.text())["error"]["type"], kind);
    }
}
