//! Several upstreams: a retry or a hedge goes to an upstream the request has not tried, a
//! refused connection moves on at once, an upstream that keeps failing is left out of first
//! attempts, and `--total` bounds every attempt together. The gateway binary on 127.0.0.1 in
//! front of model-server stand-ins, one of which is stuck, refusing or slow.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::upstream::{self, Counts};
use support::{Gateway, post, sample, send, timed_out};

/// A stand-in that leaves every request without an answer.
async fn stuck() -> (String, Arc<Counts>) {
    let (addr, counts) = upstream::start().await;
    counts.stuck.store(true, Ordering::SeqCst);
    (format!("http://{addr}"), counts)
}

async fn healthy() -> (String, Arc<Counts>) {
    let (addr, counts) = upstream::start().await;
    (format!("http://{addr}"), counts)
}

/// An address nothing listens on.
async fn refusing() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn requests(counts: &Counts) -> usize {
    Counts::get(&counts.requests)
}

/// The gateway in front of `upstreams`, with `flags`.
fn start(upstreams: &[&str], flags: &[&str]) -> Gateway {
    let mut args = Vec::new();
    for upstream in upstreams {
        args.extend(["--upstream", upstream]);
    }
    args.extend(flags);
    Gateway::start(&args, &[])
}

/// A streamed request for a whole answer: it must come whole; how long it took.
async fn complete(gateway: &Gateway, i: usize) -> Duration {
    let started = Instant::now();
    let answer = send(gateway.addr, post("/v1/complete", &[])).await;
    let took = started.elapsed();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "request {i}: {}",
        answer.body
    );
    assert!(
        answer.body.contains("t2 "),
        "request {i}: whole: {}",
        answer.body
    );
    assert!(
        !answer.body.contains("error"),
        "request {i}: no error: {}",
        answer.body
    );
    took
}

#[tokio::test]
async fn a_stuck_upstream_costs_one_first_frame_budget_at_most_and_is_left_out() {
    let (stuck_url, stuck) = stuck().await;
    let (healthy_url, healthy) = healthy().await;
    let flags = ["--first-frame", "300ms", "--retries", "2"];
    let gateway = start(&[&stuck_url, &healthy_url], &flags);

    for i in 0..8 {
        let took = complete(&gateway, i).await;
        assert!(
            took < Duration::from_millis(300 + 250),
            "request {i} waited {took:?}: more than one first-frame budget"
        );
    }
    // Each stuck attempt was retried on the healthy one, never on the stuck one again; after
    // three misses in a row the stuck one got no more first attempts.
    assert_eq!(requests(&stuck), 3, "attempts at the stuck upstream");
    assert_eq!(requests(&healthy), 8);
    assert_eq!(
        Counts::get(&stuck.cancelled),
        3,
        "each stuck attempt released"
    );

    let metrics = support::get(gateway.admin.unwrap(), "/metrics").await.body;
    let series = |name: &str, labels: &str| sample(&metrics, &format!("{name}{{{labels}}}"));
    let attempts = |upstream: &str, result: &str| {
        let labels = format!("upstream=\"{upstream}\",result=\"{result}\"");
        series("stream_deadline_upstream_attempts_total", &labels)
    };
    let stuck_out = format!("upstream=\"{stuck_url}\"");
    assert_eq!(
        series("stream_deadline_upstream_out", &stuck_out),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        attempts(&stuck_url, "deadline_first_frame"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(attempts(&healthy_url, "answered"), Some(8.0), "{metrics}");
    let log = gateway
        .wait_for_log("a request line naming both upstreams", |log| {
            log.contains(&format!("upstreams={stuck_url},{healthy_url}"))
        })
        .await;
    assert!(log.contains("upstream left out for a while"), "{log}");
}

#[tokio::test]
async fn a_refused_connection_moves_to_the_next_upstream_at_once_and_is_no_retry() {
    let refused_url = refusing().await;
    let (healthy_url, healthy) = healthy().await;
    let gateway = start(&[&refused_url, &healthy_url], &["--retries", "0"]);
    for i in 0..4 {
        let took = complete(&gateway, i).await;
        assert!(took < Duration::from_millis(500), "request {i}: at once");
    }
    assert_eq!(requests(&healthy), 4);
}

#[tokio::test]
async fn a_hedge_on_another_upstream_wins_and_the_slow_attempt_is_cancelled() {
    let (slow_url, slow) = healthy().await;
    *slow.first_token_after.lock().unwrap() = Duration::from_secs(2);
    let (fast_url, fast) = healthy().await;
    let flags = ["--hedge-after", "300ms", "--retries", "1"];
    let gateway = start(&[&slow_url, &fast_url], &flags);
    for i in 0..4 {
        let took = complete(&gateway, i).await;
        assert!(took < Duration::from_secs(1), "request {i} took {took:?}");
    }
    // The slow upstream got the first attempt of some requests; each was hedged on the fast
    // one and cancelled as soon as the fast one's first token came.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Counts::get(&slow.cancelled) < requests(&slow) {
        assert!(Instant::now() < deadline, "slow attempts not cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        requests(&slow) >= 1,
        "the slow upstream got a first attempt"
    );
    assert_eq!(Counts::get(&slow.completed), 0);
    assert_eq!(Counts::get(&fast.completed), 4);
}

#[tokio::test]
async fn the_total_budget_bounds_every_attempt_together() {
    let (first_url, _) = stuck().await;
    let (second_url, _) = stuck().await;
    let flags = ["--total", "1s", "--first-frame", "700ms", "--retries", "1"];
    let gateway = start(&[&first_url, &second_url], &flags);
    let (_, took) = timed_out(gateway.addr, post("/v1/complete", &[]), &["(2 attempts)"]).await;
    // One first-frame budget (700 ms), then the retry has what is left of the second.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1300),
        "took {took:?}: not bounded by --total"
    );
}

#[tokio::test]
async fn a_first_event_that_is_an_error_moves_to_another_upstream_and_alone_reaches_the_client() {
    let (overloaded_url, overloaded) = healthy().await;
    overloaded.overloaded.store(true, Ordering::SeqCst);
    let (healthy_url, healthy) = healthy().await;
    let gateway = start(&[&overloaded_url, &healthy_url], &["--retries", "1"]);
    for i in 0..4 {
        complete(&gateway, i).await;
    }
    assert_eq!(requests(&healthy), 4);
    let metrics = support::get(gateway.admin.unwrap(), "/metrics").await.body;
    let series = format!(
        "stream_deadline_upstream_attempts_total{{upstream=\"{overloaded_url}\",result=\"error_event\"}}"
    );
    assert_eq!(
        sample(&metrics, &series),
        Some(requests(&overloaded) as f64),
        "{metrics}"
    );

    // Alone: after its retries, the client gets the upstream's own error event.
    let alone = start(&[&overloaded_url], &["--retries", "1"]);
    let before = requests(&overloaded);
    let answer = send(alone.addr, post("/v1/complete", &[])).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, upstream::OVERLOADED);
    assert_eq!(
        requests(&overloaded) - before,
        2,
        "one attempt and one retry"
    );
}
