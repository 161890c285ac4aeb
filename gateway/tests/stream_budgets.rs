//! Which budgets a request gets: one that asks for a stream (`"stream": true`) all three and
//! the first-frame retries, counting tokens, not keep-alives; any other only the total, since
//! a non-streamed answer comes whole, at its end. The gateway binary on 127.0.0.1, in front
//! of a server whose answers come late, never, or as keep-alives only.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};

use support::upstream::Counts;
use support::{Gateway, send, timed_out};

/// What the `504` of a streamed request stuck on all three attempts says.
const STUCK_THRICE: [&str; 2] = ["first-frame budget of 200ms", "(3 attempts)"];

/// How late `/v1/late` answers: longer than the gateway's first-frame budget below.
const LATE: Duration = Duration::from_millis(600);
const ANSWER: &str = r#"{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":"the whole answer"},"finish_reason":"stop"}]}"#;

/// An event stream of `: keep-alive` comments every 100 ms, forever: vLLM while a request
/// waits in its queue.
struct KeepAlives(tokio::time::Interval);

impl Body for KeepAlives {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        ready!(self.0.poll_tick(cx));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            b": keep-alive\n\n",
        )))))
    }
}

/// A model server whose `/v1/late` answers (not streamed) after `LATE`, whose
/// `/v1/keep-alive` streams keep-alives only, and whose other paths never answer; it counts
/// the requests it gets.
async fn model_server() -> (SocketAddr, Arc<Counts>) {
    support::upstream::answering(|request: Request<hyper::body::Incoming>| async move {
        let response = Response::builder();
        let response = match request.uri().path() {
            "/v1/late" => {
                tokio::time::sleep(LATE).await;
                let answer = Full::new(Bytes::from_static(ANSWER.as_bytes()));
                response
                    .header("content-type", "application/json")
                    .body(Either::Left(answer))
            }
            "/v1/keep-alive" => {
                let every = tokio::time::interval(Duration::from_millis(100));
                response
                    .header("content-type", "text/event-stream")
                    .body(Either::Right(KeepAlives(every)))
            }
            _ => std::future::pending().await,
        };
        response.unwrap()
    })
    .await
}

fn gateway(upstream: SocketAddr, total: &str) -> Gateway {
    Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--total",
            total,
            "--first-frame",
            "200ms",
            "--idle",
            "200ms",
            "--retries",
            "2",
        ],
        &[],
    )
}

fn post(path: &str, content_type: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn an_answer_not_asked_as_a_stream_may_come_after_the_first_frame_budget() {
    let (upstream, counts) = model_server().await;
    let gateway = gateway(upstream, "5s");
    let bodies = [
        ("application/json", r#"{"model":"m","messages":[]}"#),
        (
            "application/json",
            r#"{"model":"m","messages":[],"stream":false}"#,
        ),
        ("text/plain", "not JSON"),
    ];
    for (content_type, body) in bodies {
        let before = Counts::get(&counts.requests);
        let answer = send(gateway.addr, post("/v1/late", content_type, body)).await;
        assert_eq!(answer.status, StatusCode::OK, "{body}: {}", answer.body);
        assert_eq!(answer.body, ANSWER, "{body}: the whole answer");
        assert_eq!(
            Counts::get(&counts.requests) - before,
            1,
            "{body}: one attempt"
        );
    }

    // The contrast: asked as a stream, an answer that late is a stuck one, retried, then a 504.
    let before = Counts::get(&counts.requests);
    let streamed = post(
        "/v1/late",
        "application/json",
        r#"{"model":"m","stream":true}"#,
    );
    timed_out(gateway.addr, streamed, &STUCK_THRICE).await;
    assert_eq!(Counts::get(&counts.requests) - before, 3);
}

#[tokio::test]
async fn a_stuck_answer_not_asked_as_a_stream_ends_at_the_total_budget() {
    let (upstream, counts) = model_server().await;
    let gateway = gateway(upstream, "1s");

    let started = Instant::now();
    let answer = send(
        gateway.addr,
        post(
            "/v1/never",
            "application/json",
            r#"{"model":"m","messages":[]}"#,
        ),
    )
    .await;

    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "before the total budget"
    );
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.body
    );
    let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(error["error"]["code"], "deadline_exceeded");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("total budget of 1s") && message.contains("(1 attempt)"),
        "{message}"
    );
    assert_eq!(Counts::get(&counts.requests), 1, "not retried");
}

#[tokio::test]
async fn a_stream_of_keep_alives_has_no_first_token_and_is_retried() {
    let (upstream, counts) = model_server().await;
    let gateway = gateway(upstream, "5s");

    let streamed = post(
        "/v1/keep-alive",
        "application/json",
        r#"{"model":"m","stream":true}"#,
    );
    let (_, took) = timed_out(gateway.addr, streamed, &STUCK_THRICE).await;
    assert_eq!(Counts::get(&counts.requests), 3);
    assert!(
        took >= Duration::from_millis(600),
        "three attempts of 200 ms"
    );
}
