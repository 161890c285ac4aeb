//! `.llm_progress()`: against the event streams of LLM servers, the first-frame and idle
//! budgets count tokens, not the keep-alives and opening events servers send before and
//! between them; everything is still delivered, in order. On tokio's paused clock.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tower::retry::RetryLayer;
use tower::{Layer, ServiceBuilder};
use tower_stream_deadline::{DeadlineKind, RetryFirstFrame, StreamDeadlineLayer};

use support::{MS, Step, Upstream, assert_fired, call, call_with, deadline_of, drain};

const SEC: Duration = Duration::from_secs(1);
const SSE: &str = "text/event-stream";

// OpenAI chat completions, as vLLM sends them.
const CHAT_OPENING: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const CHAT_TOKEN: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const KEEP_ALIVE: &str = ": keep-alive\n\n";
/// sse-starlette's ping before it became a comment: a named event with a timestamp for data.
const NAMED_PING: &str = "event: ping\r\ndata: 2024-05-01 12:00:00.000000\r\n\r\n";

// OpenAI's Responses API.
const RESPONSES_OPENING: [&str; 4] = [
    "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r1\",\"status\":\"in_progress\",\"output\":[]}}\n\n",
    "event: response.in_progress\ndata: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"r1\",\"status\":\"in_progress\",\"output\":[]}}\n\n",
    "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{\"type\":\"message\",\"role\":\"assistant\",\"content\":[]}}\n\n",
    "event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\",\"sequence_number\":3,\"part\":{\"type\":\"output_text\",\"text\":\"\"}}\n\n",
];

// Anthropic's Messages API.
const MESSAGES_OPENING: [&str; 2] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"role\":\"assistant\",\"content\":[]}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
];
const MESSAGES_PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
const MESSAGES_TOKEN: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";

/// `event` every 200 ms, `n` times.
fn every_200ms(event: &'static str, n: usize) -> Vec<Step> {
    (0..n)
        .flat_map(|_| [Step::After(200 * MS), Step::Data(event)])
        .collect()
}

fn opening_then(opening: &[&'static str], keep_alive: &'static str) -> Vec<Step> {
    let mut steps: Vec<_> = opening.iter().map(|event| Step::Data(event)).collect();
    steps.extend(every_200ms(keep_alive, 1000));
    steps
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comments_alone_fail_at_the_first_frame_budget_and_are_retried() {
    let upstream =
        Upstream::new(Duration::ZERO, every_200ms(KEEP_ALIVE, 1000)).with_content_type(SSE);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryFirstFrame::new(1)))
        .layer(
            StreamDeadlineLayer::new(60 * SEC)
                .first_frame(SEC)
                .llm_progress(),
        )
        .service(upstream.service());

    let start = Instant::now();
    let result = call_with(&mut svc, Request::new(())).await;

    assert_fired(deadline_of(&result), DeadlineKind::FirstFrame, SEC);
    assert_eq!(upstream.calls(), 2, "retried once");
    assert_eq!(start.elapsed(), 2 * SEC, "two attempts of one second");
}

#[tokio::test(start_paused = true)]
async fn opening_events_then_keep_alives_are_no_first_token_in_any_api() {
    for (api, steps) in [
        ("chat", opening_then(&[CHAT_OPENING], KEEP_ALIVE)),
        ("responses", opening_then(&RESPONSES_OPENING, KEEP_ALIVE)),
        ("messages", opening_then(&MESSAGES_OPENING, MESSAGES_PING)),
        (
            "messages, comments",
            opening_then(&MESSAGES_OPENING, KEEP_ALIVE),
        ),
        ("named pings", opening_then(&[], NAMED_PING)),
    ] {
        let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
        let layer = StreamDeadlineLayer::new(60 * SEC)
            .first_frame(SEC)
            .llm_progress();
        let mut svc = layer.layer(upstream.service());

        let result = call(&mut svc).await;

        let deadline = deadline_of(&result);
        assert_eq!(
            deadline.kind(),
            DeadlineKind::FirstFrame,
            "{api}: {deadline}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_then_only_pings_fail_at_the_idle_budget_after_the_last_token() {
    for (api, opening, token, keep_alive) in [
        ("chat", &[CHAT_OPENING][..], CHAT_TOKEN, KEEP_ALIVE),
        (
            "chat, named pings",
            &[CHAT_OPENING][..],
            CHAT_TOKEN,
            NAMED_PING,
        ),
        (
            "messages",
            &MESSAGES_OPENING[..],
            MESSAGES_TOKEN,
            MESSAGES_PING,
        ),
    ] {
        let mut steps: Vec<_> = opening.iter().map(|event| Step::Data(event)).collect();
        for _ in 0..3 {
            steps.extend([Step::After(100 * MS), Step::Data(token)]);
        }
        steps.extend(every_200ms(keep_alive, 1000));
        let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
        let layer = StreamDeadlineLayer::new(60 * SEC)
            .first_frame(5 * SEC)
            .idle(SEC)
            .llm_progress();
        let mut svc = layer.layer(upstream.service());

        let start = Instant::now();
        let mut body = call(&mut svc).await.unwrap().into_body();
        let drained = drain(&mut body).await;

        assert_fired(drained.deadline(), DeadlineKind::Idle, SEC);
        assert_eq!(
            drained.at - start,
            1300 * MS,
            "{api}: one second after the last token, at 300 ms"
        );
        let mut expected: String = opening.concat();
        expected.push_str(&token.repeat(3));
        // At 500, 700, 900 and 1100 ms; the one at 1300 ms came at the deadline.
        expected.push_str(&keep_alive.repeat(4));
        assert_eq!(drained.text(), expected, "{api}: all delivered, in order");
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_frame_is_the_first_token_and_what_came_before_is_replayed_with_it() {
    let mut steps: Vec<_> = RESPONSES_OPENING
        .iter()
        .map(|event| Step::Data(event))
        .collect();
    steps.extend(every_200ms(KEEP_ALIVE, 4));
    let token = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n";
    steps.push(Step::Data(token));
    let upstream = Upstream::new(Duration::ZERO, steps).with_content_type(SSE);
    let first_frames = Arc::new(Mutex::new(Vec::new()));
    let seen = first_frames.clone();
    let layer = StreamDeadlineLayer::new(60 * SEC)
        .first_frame(SEC)
        .llm_progress()
        .on_outcome(move |outcome| seen.lock().unwrap().push(outcome.time_to_first_frame));
    let mut svc = layer.layer(upstream.service());

    let mut body = call(&mut svc).await.unwrap().into_body();
    let drained = drain(&mut body).await;

    assert!(drained.error.is_none(), "{:?}", drained.error);
    let expected = format!(
        "{}{}{token}",
        RESPONSES_OPENING.concat(),
        KEEP_ALIVE.repeat(4)
    );
    assert_eq!(drained.text(), expected);
    assert_eq!(
        *first_frames.lock().unwrap(),
        [Some(800 * MS)],
        "the token came at 800 ms"
    );
}
