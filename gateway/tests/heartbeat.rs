//! `--heartbeat`: a request that asks for a stream and has no answer after the interval gets
//! the response head from the gateway, an SSE comment every interval, then the upstream's
//! stream (or the error that ended it, as an error event); any other request is unchanged.
//! The gateway binary on 127.0.0.1, in front of a server whose answers begin late or never.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};

use support::upstream::Counts;
use support::{Gateway, PATIENCE, send_head};

/// How late the late answers begin.
const LATE: Duration = Duration::from_millis(1000);
/// The heartbeat interval of these tests.
const EVERY: Duration = Duration::from_millis(200);
const COMMENT: &str = ": heartbeat\n\n";
const TOKENS: [&str; 4] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\n\n",
    "data: [DONE]\n\n",
];
const ANSWER: &str =
    r#"{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":"abc"}}]}"#;
const BUSY: &str = r#"{"error":{"message":"rate limited: try again in 20s","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#;

/// Frames played after their delays: an upstream that streams as it generates.
struct Script {
    frames: VecDeque<(Duration, Bytes)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Script {
    fn new(frames: impl IntoIterator<Item = (Duration, &'static str)>) -> Self {
        let frames = frames
            .into_iter()
            .map(|(after, text)| (after, Bytes::from_static(text.as_bytes())))
            .collect();
        Script {
            frames,
            sleep: None,
        }
    }
}

impl Body for Script {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(&(after, _)) = self.frames.front() else {
            return Poll::Ready(None);
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        let (_, frame) = self.frames.pop_front().unwrap_or_default();
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

/// A model server: `/v1/late` streams tokens from `LATE` on; `/v1/quick` at once;
/// `/v1/busy` answers `429` after `LATE`; `/v1/late-json` a whole JSON answer after `LATE`;
/// anything else never answers. It counts the requests it gets.
async fn model_server() -> (SocketAddr, Arc<Counts>) {
    support::upstream::answering(|request: Request<hyper::body::Incoming>| async move {
        let tokens = |first: Duration| {
            let delays = [
                first,
                Duration::from_millis(20),
                Duration::ZERO,
                Duration::ZERO,
            ];
            Script::new(delays.into_iter().zip(TOKENS))
        };
        let (content_type, status, body) = match request.uri().path() {
            "/v1/late" => ("text/event-stream", 200, tokens(LATE)),
            "/v1/quick" => ("text/event-stream", 200, tokens(Duration::ZERO)),
            "/v1/busy" => {
                tokio::time::sleep(LATE).await;
                (
                    "application/json",
                    429,
                    Script::new([(Duration::ZERO, BUSY)]),
                )
            }
            "/v1/late-json" => {
                tokio::time::sleep(LATE).await;
                (
                    "application/json",
                    200,
                    Script::new([(Duration::ZERO, ANSWER)]),
                )
            }
            _ => std::future::pending().await,
        };
        let response = Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(body);
        response.unwrap()
    })
    .await
}

fn gateway(upstream: SocketAddr, flags: &[&str]) -> Gateway {
    let upstream = format!("http://{upstream}");
    let mut args = vec!["--upstream", upstream.as_str(), "--heartbeat", "200ms"];
    args.extend_from_slice(flags);
    Gateway::start(&args, &[])
}

/// A response as it came: its head, and each body frame with when it came, counted from
/// the request's sending.
struct Timed {
    head_at: Duration,
    head: http::response::Parts,
    frames: Vec<(Duration, String)>,
}

impl Timed {
    fn body(&self) -> String {
        self.frames.iter().map(|(_, text)| text.as_str()).collect()
    }

    /// When each heartbeat comment came.
    fn comments(&self) -> Vec<Duration> {
        let mut at = Vec::new();
        for (when, text) in &self.frames {
            at.extend(std::iter::repeat_n(*when, text.matches(COMMENT).count()));
        }
        at
    }

    /// When the first frame that is not only comments came.
    fn first_answer(&self) -> Option<Duration> {
        self.frames
            .iter()
            .find(|(_, text)| !text.replace(COMMENT, "").is_empty())
            .map(|(when, _)| *when)
    }
}

async fn timed(addr: SocketAddr, path: &str, body: &'static str) -> Timed {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let sent = Instant::now();
    let response = send_head(addr, request).await;
    let head_at = sent.elapsed();
    let (head, mut body) = response.into_parts();
    let mut frames = Vec::new();
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("the body ends in time")
    {
        let frame = frame.expect("the body reads without error");
        if let Ok(data) = frame.into_data() {
            frames.push((sent.elapsed(), String::from_utf8_lossy(&data).into_owned()));
        }
    }
    Timed {
        head_at,
        head,
        frames,
    }
}

const STREAMED: &str = r#"{"model":"m","stream":true}"#;

fn field(line: &str, name: &str) -> f64 {
    let value = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    value.parse().unwrap()
}

#[tokio::test]
async fn a_late_stream_gets_the_head_at_the_interval_comments_every_interval_then_the_answer() {
    let (upstream, counts) = model_server().await;
    let gateway = gateway(upstream, &["--first-frame", "5s"]);
    let answer = timed(gateway.addr, "/v1/late", STREAMED).await;

    assert_eq!(answer.head.status, StatusCode::OK);
    let header = |name: &str| answer.head.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("content-type"), Some("text/event-stream"));
    assert_eq!(header("x-accel-buffering"), Some("no"));
    assert_eq!(header("cache-control"), Some("no-cache"));
    assert!(answer.head_at >= EVERY, "head at {:?}", answer.head_at);
    assert!(
        answer.head_at < LATE,
        "head at {:?}: not before the answer",
        answer.head_at
    );

    let comments = answer.comments();
    let first_answer = answer.first_answer().expect("the answer came");
    assert!(first_answer >= LATE, "{first_answer:?}");
    assert!(comments.len() >= 2, "comments at {comments:?}");
    for (k, at) in comments.iter().enumerate() {
        // One comment at the head, one more every interval after it.
        assert!(
            *at >= EVERY * (k as u32 + 1),
            "comment {k} at {at:?}: {comments:?}"
        );
        assert!(*at < first_answer, "comment {k} at {at:?} after the answer");
    }
    let upstreams: String = TOKENS.concat();
    assert_eq!(
        answer.body().replace(COMMENT, ""),
        upstreams,
        "the upstream's stream, whole"
    );
    assert_eq!(Counts::get(&counts.requests), 1);

    // The comments are not the upstream's frames: the first frame is its first token.
    let line = gateway.request_line("/v1/late").await;
    assert!(
        line.contains("ending=\"completed\"") || line.contains("ending=completed"),
        "{line}"
    );
    // Tokens that arrive in one read go on as one frame: the bytes say exactly what came.
    assert_eq!(field(&line, "bytes"), upstreams.len() as f64, "{line}");
    let frames = field(&line, "frames");
    assert!((1.0..=TOKENS.len() as f64).contains(&frames), "{line}");
    assert!(
        field(&line, "first_frame_ms") >= LATE.as_millis() as f64,
        "{line}"
    );
}

#[tokio::test]
async fn a_stream_stuck_on_every_attempt_ends_in_the_deadlines_error_event_after_the_head() {
    let (upstream, counts) = model_server().await;
    let gateway = gateway(upstream, &["--first-frame", "500ms", "--retries", "1"]);
    let answer = timed(gateway.addr, "/v1/stuck", STREAMED).await;

    assert_eq!(answer.head.status, StatusCode::OK);
    assert!(answer.head_at >= EVERY && answer.head_at < Duration::from_millis(500));
    assert_eq!(
        Counts::get(&counts.requests),
        2,
        "both attempts, behind the head"
    );
    let body = answer.body();
    let event = body.replace(COMMENT, "");
    assert!(event.starts_with("event: error\ndata: {"), "{body}");
    assert!(
        event.contains("\"code\":\"deadline_exceeded\"")
            && event.contains("first-frame budget of 500ms")
            && event.contains("(2 attempts)"),
        "{body}"
    );
    let ended = answer.frames.last().unwrap().0;
    assert!(ended >= Duration::from_secs(1), "ended at {ended:?}");
    let line = gateway.request_line("/v1/stuck").await;
    assert!(line.contains("deadline_first_frame"), "{line}");
    assert!(line.contains("status=200"), "{line}");
}

#[tokio::test]
async fn an_upstream_error_after_the_head_is_told_as_an_error_event_with_its_message() {
    let (upstream, _) = model_server().await;
    let gateway = gateway(upstream, &[]);
    let answer = timed(gateway.addr, "/v1/busy", STREAMED).await;

    assert_eq!(answer.head.status, StatusCode::OK);
    assert!(!answer.comments().is_empty());
    let body = answer.body();
    let event = body.replace(COMMENT, "");
    let data = event
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("{body}"));
    let json: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
    assert_eq!(json["error"]["message"], "rate limited: try again in 20s");
    assert_eq!(json["error"]["type"], "rate_limit_error");
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
    let line = gateway.request_line("/v1/busy").await;
    assert!(line.contains("429"), "{line}");
}

#[tokio::test]
async fn a_request_that_does_not_ask_for_a_stream_gets_no_heartbeat() {
    let (upstream, _) = model_server().await;
    let gateway = gateway(upstream, &[]);
    let answer = timed(gateway.addr, "/v1/late-json", r#"{"model":"m"}"#).await;
    assert!(answer.head_at >= LATE, "head at {:?}", answer.head_at);
    assert_eq!(answer.head.headers["content-type"], "application/json");
    assert_eq!(answer.body(), ANSWER);
}

#[tokio::test]
async fn an_answer_before_the_interval_passes_as_it_came() {
    let (upstream, _) = model_server().await;
    let gateway = gateway(upstream, &[]);
    let answer = timed(gateway.addr, "/v1/quick", STREAMED).await;
    assert_eq!(answer.head.status, StatusCode::OK);
    assert!(answer.comments().is_empty(), "{}", answer.body());
    assert_eq!(answer.body(), TOKENS.concat());
}

#[tokio::test]
async fn a_shutdown_ends_a_stream_still_waiting_behind_heartbeats_with_its_error_event() {
    let (upstream, _) = model_server().await;
    let mut gateway = gateway(
        upstream,
        &["--first-frame", "30s", "--shutdown-grace", "300ms"],
    );
    let request = Request::post("/v1/stuck")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(STREAMED.as_bytes())))
        .unwrap();
    let response = send_head(gateway.addr, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The head came from the heartbeat; the grace starts now, the upstream still silent.
    gateway.signal("TERM");
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("the body ends in time")
        .expect("the body reads without error")
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with(COMMENT), "{body}");
    let event = body.replace(COMMENT, "");
    assert!(
        event.starts_with("event: error\ndata: ")
            && event.contains("\"code\":\"gateway_shutting_down\""),
        "{body}"
    );
    let status = gateway.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
}
