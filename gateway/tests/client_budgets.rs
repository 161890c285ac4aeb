//! The budgets a client's headers ask for, which only ever shorten the gateway's:
//! `x-first-frame-timeout`, `x-idle-timeout`, Envoy's `x-envoy-expected-rq-timeout-ms`, and
//! the SDKs' `x-stainless-read-timeout`. The gateway binary on 127.0.0.1, in front of a
//! server whose streams get stuck or stall.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::upstream::{self, Counts};
use support::{Answer, Gateway, post, send, timed_out};

async fn gateway_with(flags: &[&str]) -> (Gateway, std::sync::Arc<Counts>) {
    let (upstream, counts) = upstream::start().await;
    let upstream = format!("http://{upstream}");
    let mut args = vec!["--upstream", upstream.as_str()];
    args.extend_from_slice(flags);
    (Gateway::start(&args, &[]), counts)
}

/// `POST path` asking for a stream, with `headers`: the answer and how long it took.
async fn timed(gateway: &Gateway, path: &str, headers: &[(&str, &str)]) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = send(gateway.addr, post(path, headers)).await;
    (answer, started.elapsed())
}

fn requests(counts: &Counts) -> usize {
    Counts::get(&counts.requests)
}

#[tokio::test]
async fn x_first_frame_timeout_retries_a_stuck_attempt_at_its_budget_not_the_flags() {
    let (gateway, counts) = gateway_with(&["--first-frame", "5s", "--retries", "1"]).await;
    let header = [("x-first-frame-timeout", "300ms")];
    let (answer, took) = timed(&gateway, "/v1/stuck-once", &header).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    assert_eq!(requests(&counts), 2, "the stuck attempt, then the retry");
    assert!(took >= Duration::from_millis(300), "retried after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "retried at the flag's budget: {took:?}"
    );
}

#[tokio::test]
async fn a_longer_x_first_frame_timeout_than_the_flags_changes_nothing() {
    let (gateway, counts) = gateway_with(&["--first-frame", "300ms", "--retries", "1"]).await;
    let header = [("x-first-frame-timeout", "1m")];
    let (answer, took) = timed(&gateway, "/v1/stuck-once", &header).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(requests(&counts), 2);
    assert!(
        took < Duration::from_secs(5),
        "waited for the header's budget: {took:?}"
    );
}

#[tokio::test]
async fn x_idle_timeout_cuts_a_stalled_stream_at_its_budget_and_a_longer_one_does_not() {
    let (gateway, _) = gateway_with(&["--idle", "5s"]).await;
    let (answer, took) = timed(&gateway, "/v1/idle", &[("x-idle-timeout", "300ms")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.body.contains("idle budget of 300ms")
            && answer.body.contains("\"code\":\"deadline_exceeded\""),
        "{}",
        answer.body
    );
    assert!(
        took < Duration::from_secs(5),
        "cut at the flag's budget: {took:?}"
    );

    let (gateway, _) = gateway_with(&["--idle", "300ms"]).await;
    let (answer, _) = timed(&gateway, "/v1/idle", &[("x-idle-timeout", "1m")]).await;
    assert!(
        answer.body.contains("idle budget of 300ms"),
        "{}",
        answer.body
    );
}

/// Whether `body` names a total budget of 750 ms, counted from the request's arrival (so
/// the layer, later, sees a hair less).
fn total_of_750ms(body: &str) -> bool {
    body.contains("total budget of 750ms") || body.contains("total budget of 749.")
}

#[tokio::test]
async fn envoys_expected_timeout_shortens_the_total_less_the_margin() {
    let (gateway, _) = gateway_with(&["--total", "30s"]).await;
    let header = [("x-envoy-expected-rq-timeout-ms", "1000")];
    let (answer, took) = timed(&gateway, "/v1/babble", &header).await;
    assert_eq!(answer.status, StatusCode::OK);
    // 1 s less a margin of 250 ms: the error reaches Envoy before its route timeout.
    assert!(total_of_750ms(&answer.body), "{}", answer.body);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn a_clients_read_timeout_ends_a_silence_before_its_own_timer() {
    let (gateway, counts) = gateway_with(&[
        "--total",
        "30s",
        "--first-frame",
        "10s",
        "--idle",
        "10s",
        "--retries",
        "2",
    ])
    .await;
    let read_timeout = [("x-stainless-read-timeout", "1.5")];

    // A stalled stream: the idle budget is 1.5 s less its margin of 250 ms.
    let (answer, took) = timed(&gateway, "/v1/idle", &read_timeout).await;
    assert!(
        answer.body.contains("idle budget of 1.25s"),
        "{}",
        answer.body
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // A stuck one: all three attempts' first-frame budgets fit in those 1.25 s.
    let before = requests(&counts);
    let (answer, took) = timed(&gateway, "/v1/stuck", &read_timeout).await;
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.body
    );
    assert!(answer.body.contains("(3 attempts)"), "{}", answer.body);
    assert_eq!(requests(&counts) - before, 3);
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // Not asked as a stream, the answer comes whole: the total is what the client waits.
    let unstreamed = http::Request::post("/v1/stuck")
        .header("x-stainless-read-timeout", "1.5")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let (_, took) = timed_out(gateway.addr, unstreamed, &["total budget of 1.25s"]).await;
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn the_sdks_default_read_timeout_changes_nothing() {
    let (gateway, _) = gateway_with(&["--idle", "300ms"]).await;
    let header = [("x-stainless-read-timeout", "600.0")];
    let (answer, _) = timed(&gateway, "/v1/idle", &header).await;
    assert!(
        answer.body.contains("idle budget of 300ms"),
        "{}",
        answer.body
    );
    let line = gateway.request_line("/v1/idle").await;
    assert!(
        line.contains(" INFO ") && !line.contains("ignored"),
        "{line}"
    );
}

#[tokio::test]
async fn unreadable_budget_headers_are_ignored_and_named_in_the_request_line_at_warn() {
    let (gateway, _) = gateway_with(&[]).await;
    let headers = [
        ("x-first-frame-timeout", "soon"),
        ("x-idle-timeout", "-1s"),
        ("x-envoy-expected-rq-timeout-ms", "1.5s"),
        ("x-stainless-read-timeout", "None"),
    ];
    let (answer, _) = timed(&gateway, "/v1/complete", &headers).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    let line = gateway.request_line("/v1/complete").await;
    assert!(line.contains("WARN"), "{line}");
    for (name, value) in headers {
        assert!(
            line.contains(&format!("ignored {name}: \"{value}\"")),
            "{name}: {line}"
        );
    }
}
