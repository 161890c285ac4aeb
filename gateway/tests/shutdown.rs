//! Graceful shutdown on SIGTERM: no new connections, not ready, responses in flight run for
//! the grace, then event streams end with an error event, and the process exits 0.

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::net::TcpStream;

use support::upstream::{self, Counts};
use support::{Gateway, PATIENCE, get, post, send_head};

/// Reads a streamed body to its end; its text, and whether it ended cleanly.
async fn read_all(body: hyper::body::Incoming) -> (String, bool) {
    let mut body = body;
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
            }
            Err(_) => return (text, false),
        }
    }
    (text, true)
}

#[tokio::test]
async fn sigterm_drains_then_ends_event_streams_with_an_error_event_and_exits_0() {
    let (upstream, counts) = upstream::start().await;
    let mut gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--total",
            "30s",
            "--shutdown-grace",
            "1s",
        ],
        &[],
    );
    let admin = gateway.admin.unwrap();
    let babbling = send_head(gateway.addr, post("/v1/babble", &[])).await;
    let finishing = send_head(gateway.addr, post("/v1/slow", &[])).await;
    let babbling = tokio::spawn(read_all(babbling.into_body()));
    let finishing = tokio::spawn(read_all(finishing.into_body()));

    gateway.signal("TERM");
    let signalled = Instant::now();
    // Not ready from now on, while the admin listener still answers.
    let deadline = Instant::now() + PATIENCE;
    while get(admin, "/readyz").await.status != 503 {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New connections are refused once the listening socket is closed.
    while TcpStream::connect(gateway.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The stream that ends within the grace ends as usual.
    let (text, clean) = finishing.await.unwrap();
    assert!(clean && text.ends_with("data: [DONE]\n\n"), "{text}");
    // The one still running at the end of the grace gets the shutdown event, then a clean end.
    let (text, clean) = babbling.await.unwrap();
    assert!(clean, "not a clean end: {text}");
    assert!(text.contains("t0 "), "{text}");
    let last_event = text
        .strip_suffix("\n\n")
        .and_then(|t| t.rsplit("\n\n").next());
    assert!(
        last_event.is_some_and(
            |e| e.contains("data: {") && e.contains("\"code\":\"gateway_shutting_down\"")
        ),
        "{last_event:?}"
    );
    let status = gateway.exit_within(Duration::from_secs(3)).await;
    assert!(status.success(), "{status:?}\n{}", gateway.log());
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "cut before the grace"
    );
    while Counts::get(&counts.cancelled) != 1 {
        assert!(
            Instant::now() < deadline,
            "the babbling upstream was never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = gateway.log();
    assert_eq!(log.matches("path=/v1/babble").count(), 1, "{log}");
    assert!(log.contains("cut by the shutdown"), "{log}");
}

#[tokio::test]
async fn a_second_signal_ends_the_grace_at_once() {
    let (upstream, counts) = upstream::start().await;
    let mut gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--total",
            "60s",
            "--shutdown-grace",
            "60s",
        ],
        &[],
    );
    let babbling = send_head(gateway.addr, post("/v1/babble", &[])).await;
    let babbling = tokio::spawn(read_all(babbling.into_body()));
    gateway.signal("TERM");
    gateway
        .wait_for_log("draining line", |log| log.contains("shutting down"))
        .await;
    gateway.signal("INT");

    let (text, clean) = tokio::time::timeout(PATIENCE, babbling)
        .await
        .unwrap()
        .unwrap();
    assert!(clean && text.contains("gateway_shutting_down"), "{text}");
    let status = gateway.exit_within(PATIENCE).await;
    assert!(status.success(), "{status:?}");
    assert!(
        gateway.log().contains("because=\"SIGINT\""),
        "{}",
        gateway.log()
    );
    let deadline = Instant::now() + PATIENCE;
    while Counts::get(&counts.cancelled) != 1 {
        assert!(
            Instant::now() < deadline,
            "the babbling upstream was never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn with_nothing_in_flight_sigterm_exits_0_at_once() {
    let (upstream, _) = upstream::start().await;
    let mut gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--shutdown-grace",
            "30s",
        ],
        &[],
    );
    // An idle keep-alive connection does not hold the process.
    let _idle = TcpStream::connect(gateway.addr).await.unwrap();
    assert_eq!(get(gateway.addr, "/x").await.body, "upstream /x");
    gateway.signal("INT");
    let status = gateway.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn every_request_answered_before_sigterm_has_its_line_in_the_log_at_exit() {
    let (upstream, _) = upstream::start().await;
    let mut gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    // Requests in parallel, so that the runtime's workers are busy and gather their lines.
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let addr = gateway.addr;
            tokio::spawn(async move {
                for request in 0..25 {
                    let answer = get(addr, &format!("/line/{client}/{request}")).await;
                    assert_eq!(answer.status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    gateway.signal("TERM");
    let status = gateway.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
    // The process has exited: what its log lacks now, it never wrote.
    let lines = |log: &str| log.matches("path=/line/").count();
    let log = gateway
        .wait_for_log("line for each of the 200 requests", |log| lines(log) == 200)
        .await;
    assert_eq!(lines(&log), 200);
}
