//! Limits for a process facing many clients: connections, file descriptors, slow request
//! heads and bodies, and credentials that never reach a log.

mod support;

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Gateway, PATIENCE, get, post, refused, send, upstream};

/// Reads what the gateway sends on `stream` until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection")
        .expect("reads");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn beyond_max_connections_a_connection_waits_and_is_served_when_a_slot_frees() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--max-connections",
            "1",
        ],
        &[],
    );
    // Holds the one slot: connected, with no request yet.
    let holder = TcpStream::connect(gateway.addr).await.unwrap();
    let waiting = tokio::spawn(get(gateway.addr, "/v1/waiting"));
    // Not answered while the slot is held (a bound on a negative, not a wait to settle).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served beyond --max-connections 1");
    drop(holder);
    let answer = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.body, "upstream /v1/waiting");
}

/// CPU time (user + system, in clock ticks) the process has used, from /proc.
#[cfg(target_os = "linux")]
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn out_of_file_descriptors_it_neither_spins_nor_floods_and_serves_once_one_frees() {
    let (upstream, _) = upstream::start().await;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_stream-deadline-gateway"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--upstream", &format!("http://{upstream}")])
        .args(["--header-read-timeout", "60s"]);
    let gateway = Gateway::spawn(command, &[]);

    // Idle connections until the gateway has no descriptor left to accept with.
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    gateway
        .wait_for_log("out-of-descriptors warning", |log| {
            log.contains("out of file descriptors")
        })
        .await;
    let request = tokio::spawn(get(gateway.addr, "/v1/after"));
    let before = cpu_ticks(gateway.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = cpu_ticks(gateway.pid()) - before;
    // A spinning accept loop burns the whole half second (50 ticks at 100 Hz).
    assert!(
        spent <= 10,
        "{spent} ticks of CPU in 500 ms while out of descriptors"
    );
    assert!(!request.is_finished());

    drop(idle);
    let answer = tokio::time::timeout(PATIENCE, request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.body, "upstream /v1/after");
    let log = gateway.log();
    assert_eq!(log.matches("out of file descriptors").count(), 1, "{log}");
}

#[tokio::test]
async fn a_request_head_sent_too_slowly_is_cut() {
    let gateway = Gateway::start(&["--header-read-timeout", "300ms"], &[]);
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/complete HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

/// Sends `head` and the start of a body that never goes on, to a gateway with a 300 ms
/// request-body idle timeout: its answer, and the upstream's request counter.
async fn answer_to_a_stalled_body(head: &[u8]) -> (String, std::sync::Arc<upstream::Counts>) {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--request-body-idle",
            "300ms",
        ],
        &[],
    );
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    stream.write_all(b"{\"stream\":").await.unwrap();
    (read_to_close(&mut stream).await, counts)
}

#[tokio::test]
async fn a_stalled_request_body_is_answered_408_and_the_connection_closed() {
    let (answer, counts) = answer_to_a_stalled_body(
        b"POST /v1/complete HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert_eq!(
        upstream::Counts::get(&counts.requests),
        0,
        "nothing went upstream"
    );
}

#[tokio::test]
async fn a_stalled_streamed_request_body_is_answered_408_too() {
    // Declared larger than the replay buffer: streamed upstream as it comes.
    let (answer, counts) = answer_to_a_stalled_body(
        b"POST /v1/stuck-once HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("no more of the request body came for 300ms"),
        "{answer}"
    );
    // It was streamed: its head went upstream before the body was complete.
    let deadline = std::time::Instant::now() + PATIENCE;
    while upstream::Counts::get(&counts.requests) != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the head never went upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `head`, then one byte of its body every 100 ms (faster than the 30 s request-body
/// idle timeout) until the gateway answers; that answer, and how long it took.
async fn answer_to_a_trickled_body(gateway: &Gateway, head: &[u8]) -> (String, Duration) {
    let started = std::time::Instant::now();
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(head).await.unwrap();
    let trickle = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline && write.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, read.read_to_end(&mut answer)).await;
    trickle.abort();
    assert!(
        read.is_ok(),
        "no answer to a body still coming after {PATIENCE:?}"
    );
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_request_body_sent_slowly_is_ended_by_the_total_budget_with_408() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--total",
            "1s",
            "--request-body-idle",
            "30s",
        ],
        &[],
    );
    let (answer, took) = answer_to_a_trickled_body(
        &gateway,
        b"POST /v1/complete HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("total budget of 1s"), "{answer}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    // A client's shorter x-request-timeout shortens the body's time too.
    let (answer, _) = answer_to_a_trickled_body(
        &gateway,
        b"POST /v1/complete HTTP/1.1\r\nhost: x\r\nx-request-timeout: 300ms\r\n\
          content-length: 100000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Counted from the arrival, by the header's clock: 300 ms and a hair.
    assert!(answer.contains("total budget of 300"), "{answer}");
    assert_eq!(
        upstream::Counts::get(&counts.requests),
        0,
        "nothing went upstream"
    );
}

#[tokio::test]
async fn credentials_in_the_upstream_are_sent_as_basic_auth_and_never_printed() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(
        &["--upstream", &format!("http://user:s3cret@{upstream}/base")],
        &[],
    );
    let answer = send(gateway.addr, post("/v1/complete", &[])).await;
    assert_eq!(answer.status, 200);
    let own = send(
        gateway.addr,
        post("/v1/x", &[("authorization", "Bearer sk-own")]),
    )
    .await;
    assert_eq!(own.status, 200);
    assert_eq!(
        *counts.authorizations.lock().unwrap(),
        [
            Some("Basic dXNlcjpzM2NyZXQ=".to_owned()),
            Some("Bearer sk-own".to_owned())
        ],
        "the URL's credentials (user:s3cret), unless the client sent its own"
    );
    let log = gateway
        .wait_for_log("request line", |log| log.contains("path=/v1/complete"))
        .await;
    assert!(log.contains("upstreams=http://***@127.0.0.1"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");

    let unreachable = Gateway::start(&["--upstream", "http://user:s3cret@127.0.0.1:1"], &[]);
    let answer = send(unreachable.addr, post("/v1/complete", &[])).await;
    assert_eq!(answer.status, 502);
    let log = unreachable
        .wait_for_log("request line", |log| log.contains("path=/v1/complete"))
        .await;
    assert!(
        !answer.body.contains("s3cret") && !log.contains("s3cret"),
        "{answer:?}\n{log}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"))
        .args(["--upstream", "ftp://user:s3cret@host"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("s3cret"));

    let help = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"))
        .arg("--help")
        .env("STREAM_DEADLINE_UPSTREAM", "https://user:s3cret@host")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(!String::from_utf8_lossy(&help.stdout).contains("s3cret"));
}

/// The password `p/?#@:%w` in every form it could be printed in: as given, escaped in the
/// URL, and in its Basic credentials (`user:p/?#@:%w`).
const PASSWORD_FORMS: [&str; 3] = ["p/?#@:%w", "p%2F%3F%23%40%3A%25w", "dXNlcjpwLz8jQDoldw=="];

#[tokio::test]
async fn a_password_holding_url_delimiters_is_sent_whole_and_never_printed_even_at_trace() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://user:p%2F%3F%23%40%3A%25w@{upstream}/base"),
        ],
        &[("RUST_LOG", "trace")],
    );
    let answer = send(gateway.addr, post("/v1/complete", &[])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        *counts.authorizations.lock().unwrap(),
        [Some("Basic dXNlcjpwLz8jQDoldw==".to_owned())]
    );
    let metrics = get(gateway.admin.unwrap(), "/metrics").await;
    assert_eq!(metrics.status, 200);
    let log = gateway
        .wait_for_log("request line", |log| log.contains("path=/v1/complete"))
        .await;
    let stdout = gateway.stdout();
    assert!(log.contains("upstreams=http://***@127.0.0.1"), "{log}");
    assert!(log.contains("TRACE"), "not logging at trace: {log}");
    for printed in [&stdout, &log, &metrics.body] {
        for form in PASSWORD_FORMS {
            assert!(!printed.contains(form), "{form} printed:\n{printed}");
        }
    }
}

#[test]
fn an_unusable_upstream_is_refused_at_start_naming_what_is_wrong_but_not_the_password() {
    for (url, wrong) in [
        // Unescaped, the password's `/`, `?` or `#` ends the host: what follows `:` is no port.
        ("http://user:p/?#@:%w@127.0.0.1:8000", "invalid port number"),
        ("http://user:8000#p/?#@:%w@127.0.0.1:8000", "fragment"),
        ("http://user:8000?p/?#@:%w@127.0.0.1:8000", "query"),
        ("http://user:8000/p@:%w@127.0.0.1:8000", "`@` in its path"),
        (
            "http://user:p%2F%3F%23%40%3A%25w@127.0.0.1:65536",
            "invalid port number",
        ),
        ("http://user:p%2F%3F%23%40%3A%25w@127.0.0.1:0", "port 0"),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"));
        command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
            .args(["--upstream", url]);
        let (status, stderr) = refused(command);
        assert_eq!(status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("--upstream"), "{url}: {stderr}");
        assert!(stderr.contains(wrong), "{url}: {stderr}");
        for form in PASSWORD_FORMS.iter().chain(&["p/?#@", "p@:%w", "%w@"]) {
            assert!(!stderr.contains(form), "{url}: {stderr}");
        }
    }
}
