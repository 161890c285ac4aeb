//! `.sse_first_event_errors()`: a stream whose first event says the answer failed (an
//! overloaded server answers `200`, then an error event) is an error of the call, which
//! `RetryFirstFrame` retries; an error after the first token is the stream's to deliver. On
//! tokio's paused clock.

mod support;

use std::time::Duration;

use tower::retry::RetryLayer;
use tower::{Layer, ServiceBuilder};
use tower_stream_deadline::{StreamDeadlineLayer, UpstreamErrorEvent};

use support::{MS, Step, Upstream, call, drain};

const SEC: Duration = Duration::from_secs(1);
const SSE: &str = "text/event-stream";

const ANTHROPIC_OVERLOADED: &str = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
const OPENAI_ERROR: &str = "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
const VLLM_OLD_ERROR: &str = "data: {\"object\":\"error\",\"message\":\"out of KV cache\",\"type\":\"InternalServerError\",\"code\":500}\n\n";
const RESPONSES_CREATED: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\",\"status\":\"in_progress\"}}\n\n";
const RESPONSES_FAILED: &str = "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"id\":\"r1\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"failed\"}}}\n\n";
const CHAT_TOKEN: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";

fn layer() -> StreamDeadlineLayer {
    StreamDeadlineLayer::new(60 * SEC)
        .first_frame(10 * SEC)
        .llm_progress()
        .sse_first_event_errors()
}

#[tokio::test(start_paused = true)]
async fn a_first_event_that_is_an_error_fails_the_call_and_releases_the_upstream() {
    for (first, name) in [
        (vec![Step::Data(ANTHROPIC_OVERLOADED)], Some("error")),
        (vec![Step::Data(OPENAI_ERROR)], None),
        (vec![Step::Data(VLLM_OLD_ERROR)], None),
        // Opening events are not the first that counts; the failure is.
        (
            vec![Step::Data(RESPONSES_CREATED), Step::Data(RESPONSES_FAILED)],
            Some("response.failed"),
        ),
        // An error event split across frames is read whole.
        (
            vec![
                Step::Data("event: error\ndata: {\"type\":\"error\",\"err"),
                Step::After(5 * MS),
                Step::Data("or\":{\"type\":\"overloaded_error\"}}\n\n"),
            ],
            Some("error"),
        ),
    ] {
        let mut steps = first.clone();
        steps.push(Step::Stall);
        let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
        let mut svc = layer().layer(upstream.service());

        let err = call(&mut svc).await.unwrap_err();
        let event = UpstreamErrorEvent::find(&*err)
            .unwrap_or_else(|| panic!("{first:?}: not an upstream error event: {err}"));
        assert_eq!(event.name(), name, "{first:?}");
        assert!(upstream.body_dropped.is_dropped(), "{first:?}: released");
        assert!(
            event
                .to_string()
                .starts_with("the upstream's first event was an error: {")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_first_frame_retries_an_error_event_and_the_next_attempt_is_served() {
    let failing = Upstream::new(
        Duration::ZERO,
        [Step::Data(ANTHROPIC_OVERLOADED), Step::Stall],
    )
    .with_content_type(SSE);
    let healthy = Upstream::new(
        Duration::ZERO,
        [Step::After(50 * MS), Step::Data(CHAT_TOKEN)],
    )
    .with_content_type(SSE);
    // The first call goes to the failing server, the others to the healthy one.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (a, b) = (failing.service::<()>(), healthy.service::<()>());
    let upstream = tower::service_fn(move |req: http::Request<()>| {
        use tower::ServiceExt;
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (a, b) = (a.clone(), b.clone());
        async move {
            match n {
                0 => a.oneshot(req).await,
                _ => b.oneshot(req).await,
            }
        }
    });
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            tower_stream_deadline::RetryFirstFrame::new(1),
        ))
        .layer(layer())
        .service(upstream);

    let response = call(&mut svc).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(drain(&mut body).await.text(), CHAT_TOKEN);
    assert_eq!((failing.calls(), healthy.calls()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_error_after_the_first_token_and_a_layer_without_the_option_deliver_the_event() {
    // After a token, an error event is part of the answer.
    let upstream = Upstream::new(
        Duration::ZERO,
        [Step::Data(CHAT_TOKEN), Step::Data(OPENAI_ERROR)],
    )
    .with_content_type(SSE);
    let mut svc = layer().layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    assert_eq!(
        drain(&mut body).await.text(),
        format!("{CHAT_TOKEN}{OPENAI_ERROR}")
    );

    // Without the option, a first error event is the first frame, delivered.
    let upstream =
        Upstream::new(Duration::ZERO, [Step::Data(ANTHROPIC_OVERLOADED)]).with_content_type(SSE);
    let mut svc = StreamDeadlineLayer::new(60 * SEC)
        .first_frame(10 * SEC)
        .llm_progress()
        .layer(upstream.service());
    let mut body = call(&mut svc).await.unwrap().into_body();
    assert_eq!(drain(&mut body).await.text(), ANTHROPIC_OVERLOADED);
}
