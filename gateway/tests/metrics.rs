//! The admin listener: metrics that hold exactly what happened, health and readiness.

mod support;

use std::time::{Duration, Instant};

use support::{Gateway, PATIENCE, SHORT_BUDGETS, get, post, sample, send, send_head, upstream};

/// Polls `/metrics` until `ready` holds, for at most `PATIENCE`.
async fn metrics_once(gateway: &Gateway, ready: impl Fn(&str) -> bool) -> String {
    let admin = gateway.admin.expect("an admin listener");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = get(admin, "/metrics").await;
        assert_eq!(answer.status, 200);
        if ready(&answer.body) {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never settled:\n{}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn after_a_known_mix_each_counter_holds_exactly_what_happened() {
    let (upstream, counts) = upstream::start().await;
    let url = format!("http://{upstream}");
    let gateway = Gateway::start(&[&["--upstream", &url][..], &SHORT_BUDGETS].concat(), &[]);
    let addr = gateway.addr;
    let (completed, babbled, retried, idled) = tokio::join!(
        send(addr, post("/v1/complete", &[])),
        send(addr, post("/v1/babble", &[])),
        send(addr, post("/v1/stuck-once", &[])),
        send(addr, post("/v1/idle", &[])),
    );
    assert!(completed.body.ends_with("data: [DONE]\n\n"));
    assert!(
        babbled.body.contains("total budget of 600ms"),
        "{}",
        babbled.body
    );
    assert!(retried.body.ends_with("data: [DONE]\n\n"));
    assert!(
        idled.body.contains("idle budget of 200ms"),
        "{}",
        idled.body
    );
    // A client that leaves mid-stream.
    let left = send_head(addr, post("/v1/babble", &[])).await;
    drop(left);

    let exposition = metrics_once(&gateway, |text| {
        sample(
            text,
            "stream_deadline_requests_total{ending=\"dropped\",model=\"other\"}",
        ) == Some(1.0)
    })
    .await;
    let expected = [
        (
            "stream_deadline_requests_total{ending=\"completed\",model=\"other\"}",
            2.0,
        ),
        (
            "stream_deadline_requests_total{ending=\"deadline_total\",model=\"other\"}",
            1.0,
        ),
        (
            "stream_deadline_requests_total{ending=\"deadline_idle\",model=\"other\"}",
            1.0,
        ),
        (
            "stream_deadline_requests_total{ending=\"dropped\",model=\"other\"}",
            1.0,
        ),
        // One each, and two for the request stuck once.
        ("stream_deadline_attempts_total", 6.0),
        ("stream_deadline_time_to_first_frame_seconds_count", 5.0),
        ("stream_deadline_response_duration_seconds_count", 5.0),
        ("stream_deadline_in_flight", 0.0),
    ];
    for (series, value) in expected {
        assert_eq!(
            sample(&exposition, series),
            Some(value),
            "{series}:\n{exposition}"
        );
    }
    // Endings that did not happen are there, at zero.
    for none in ["deadline_first_frame", "upstream_error"] {
        let series = format!("stream_deadline_requests_total{{ending=\"{none}\",model=\"other\"}}");
        assert_eq!(
            sample(&exposition, &series),
            Some(0.0),
            "{series}:\n{exposition}"
        );
    }
    // The retried request waited through its stuck attempt for its first frame.
    assert_eq!(
        sample(
            &exposition,
            "stream_deadline_time_to_first_frame_seconds_bucket{le=\"0.1\"}"
        ),
        Some(4.0),
        "{exposition}"
    );
    assert!(exposition.contains("stream_deadline_longest_idle_seconds_bucket{le=\"600.0\"}"));
    assert_eq!(upstream::Counts::get(&counts.requests), 6);
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_is_counted_as_dropped_not_as_an_upstream_error() {
    use tokio::io::AsyncWriteExt;

    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    // Larger than the replay buffer: streamed upstream as it comes, to an upstream that
    // answers nothing, so only the body breaking off can end the attempt.
    stream
        .write_all(b"POST /v1/stuck-once HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 65536]).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while upstream::Counts::get(&counts.requests) != 1 {
        assert!(Instant::now() < deadline, "the head never went upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);

    let exposition = metrics_once(&gateway, |text| {
        sample(
            text,
            "stream_deadline_requests_total{ending=\"dropped\",model=\"other\"}",
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(
            &exposition,
            "stream_deadline_requests_total{ending=\"upstream_error\",model=\"other\"}"
        ),
        Some(0.0),
        "{exposition}"
    );
    let log = gateway
        .wait_for_log("request line", |log| log.contains("path=/v1/stuck-once"))
        .await;
    assert!(log.contains("ending=\"dropped\""), "{log}");
}

#[tokio::test]
async fn health_readiness_and_the_proxied_port_keeps_every_path() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let admin = gateway.admin.unwrap();
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
    assert_eq!(get(admin, "/nothing").await.status, 404);
    let forwarded = get(gateway.addr, "/metrics").await;
    assert_eq!(
        (forwarded.status.as_u16(), forwarded.body.as_str()),
        (200, "upstream /metrics")
    );
    let exposition = get(admin, "/metrics").await.body;
    assert!(
        exposition.contains("# TYPE stream_deadline_requests counter"),
        "{exposition}"
    );
    assert!(exposition.ends_with("# EOF\n"), "{exposition}");
}

#[tokio::test]
async fn admin_listen_off_serves_no_admin_port() {
    let (upstream, _) = upstream::start().await;
    let command = {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"));
        command.args(["--listen", "127.0.0.1:0", "--admin-listen", "off"]);
        command.args(["--upstream", &format!("http://{upstream}")]);
        command
    };
    let gateway = Gateway::spawn(command, &[]);
    assert_eq!(gateway.admin, None);
    assert_eq!(
        get(gateway.addr, "/healthz").await.body,
        "upstream /healthz"
    );
}
