//! Flags, their environment variables, and the `x-request-timeout` header in the same grammar.

mod support;

use std::process::Command;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{Gateway, PATIENCE, post, refused, send, upstream};

fn ready_line(gateway: &Gateway) -> String {
    let log = gateway.log();
    log.lines()
        .find(|line| line.contains("gateway ready"))
        .unwrap_or_else(|| panic!("no ready line in:\n{log}"))
        .to_owned()
}

#[tokio::test]
async fn every_flag_also_comes_from_the_environment_and_the_command_line_wins() {
    let env = [
        ("STREAM_DEADLINE_TOTAL", "1.5s"),
        ("STREAM_DEADLINE_IDLE", "off"),
        ("STREAM_DEADLINE_RETRIES", "7"),
        ("STREAM_DEADLINE_UPSTREAM", "http://127.0.0.1:9/base"),
    ];
    let from_env = Gateway::start(&[], &env);
    from_env
        .wait_for_log("ready line", |log| log.contains("gateway ready"))
        .await;
    let line = ready_line(&from_env);
    for expected in [
        "total=1.5s",
        "idle=off",
        "retries=7",
        "upstreams=http://127.0.0.1:9/base",
    ] {
        assert!(line.contains(expected), "{expected} missing: {line}");
    }

    let flag_wins = Gateway::start(&["--total", "2m", "--retries", "0"], &env);
    flag_wins
        .wait_for_log("ready line", |log| log.contains("gateway ready"))
        .await;
    let line = ready_line(&flag_wins);
    for expected in ["total=120s", "idle=off", "retries=0"] {
        assert!(line.contains(expected), "{expected} missing: {line}");
    }
}

#[test]
fn help_names_the_environment_and_what_a_bare_number_means() {
    let help = support::help();
    for expected in [
        "a bare number is seconds",
        "STREAM_DEADLINE_UPSTREAM",
        "[env: STREAM_DEADLINE_SHUTDOWN_GRACE=]",
        "x-request-timeout",
        "[default: 45s]",
    ] {
        assert!(
            help.contains(expected),
            "--help lacks {expected:?}:\n{help}"
        );
    }
}

#[test]
fn a_duration_too_long_for_the_clock_is_refused_at_start_naming_its_flag() {
    for flag in [
        "--total",
        "--first-frame",
        "--idle",
        "--shutdown-grace",
        "--header-read-timeout",
        "--request-body-idle",
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"));
        command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .args([flag, "500000000000y"]);
        // A gateway that took the value would run (and panic at its first request).
        let (status, stderr) = refused(command);
        assert_eq!(status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        assert!(stderr.contains("too long"), "{flag}: {stderr}");
    }
}

#[test]
fn a_malformed_duration_flag_is_refused_with_its_value_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"))
        .args(["--total", "soon"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("`soon` is not a duration"), "{stderr}");
}

/// A babbling stream under a 30 s budget, shortened by the header: the deadline's error
/// event names the header's budget.
async fn cut_by_header(value: &str) -> String {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--total",
            "30s",
        ],
        &[],
    );
    let answer = send(
        gateway.addr,
        post("/v1/babble", &[("x-request-timeout", value)]),
    )
    .await;
    assert_eq!(answer.status, 200);
    answer.body
}

/// The budget counts from the request's arrival, so the layer sees a hair less than 300 ms.
fn within_300ms(body: &str) -> bool {
    body.contains("total budget of 300ms") || body.contains("total budget of 299.")
}

#[tokio::test]
async fn x_request_timeout_takes_units_and_fractions_like_the_flags() {
    for value in ["300ms", "0.3s"] {
        let body = cut_by_header(value).await;
        assert!(
            body.contains("\"code\":\"deadline_exceeded\""),
            "{value}: {body}"
        );
        assert!(within_300ms(&body), "{value}: {body}");
    }
}

#[tokio::test]
async fn a_bare_number_in_x_request_timeout_is_seconds() {
    let body = cut_by_header("0.3").await;
    assert!(within_300ms(&body), "{body}");
}

#[tokio::test]
async fn an_ignored_header_value_is_named_in_its_request_line_at_warn() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let answer = send(
        gateway.addr,
        post("/v1/complete", &[("x-request-timeout", "soonish")]),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    let line = gateway.request_line("/v1/complete").await;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("\"soonish\""), "{line}");
}

#[tokio::test]
async fn rust_log_at_warn_keeps_the_request_lines_at_warn_and_no_others() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(
        &["--upstream", &format!("http://{upstream}")],
        &[("RUST_LOG", "stream_deadline_gateway=warn")],
    );
    // One kept-alive connection: the first request's line, if it were written, would be
    // written before the second request is read.
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for (id, timeout) in [("quiet", "5"), ("loud", "soonish")] {
        let request = http::Request::post("/v1/complete")
            .header("host", "gateway")
            .header("x-request-id", id)
            .header("x-request-timeout", timeout)
            .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
            .await
            .expect("the body ends in time")
            .unwrap()
            .to_bytes();
        assert!(body.ends_with(b"data: [DONE]\n\n"), "{body:?}");
    }
    let log = gateway
        .wait_for_log("the line of the request at warn", |log| {
            log.contains("request_id=loud")
        })
        .await;
    let line = log
        .lines()
        .find(|line| line.contains("request_id=loud"))
        .unwrap();
    assert!(
        line.contains("  WARN stream_deadline_gateway: request method=POST"),
        "{line}"
    );
    assert!(line.contains("\"soonish\""), "{line}");
    assert!(!log.contains("request_id=quiet"), "{log}");
}
