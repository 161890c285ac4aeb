//! `--worker-threads`: one thread (tokio's current-thread scheduler) and several serve alike,
//! many streams at once and every budget; the ready line says how many serve. The whole
//! gateway suite also runs with `STREAM_DEADLINE_WORKER_THREADS=1` in CI.

mod support;

use support::{Gateway, post, send, upstream};

/// Streams served at once, 25 tokens 20 ms apart each: one after another they would take
/// 30 s, six times the total budget each of them has.
const STREAMS: usize = 60;

async fn serves_streams_at_once_and_cuts_at_the_budget(threads: &str) {
    let (upstream, _) = upstream::start().await;
    let url = format!("http://{upstream}");
    let flags = [
        "--upstream",
        &url,
        "--total",
        "5s",
        "--worker-threads",
        threads,
    ];
    let gateway = Gateway::start(&flags, &[]);
    let ready = gateway
        .wait_for_log("ready line", |log| log.contains("gateway ready"))
        .await;
    let expected = format!("worker_threads={threads}");
    assert!(ready.contains(&expected), "no {expected} in:\n{ready}");

    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        streams.spawn(send(gateway.addr, post("/v1/slow", &[])));
    }
    // Meanwhile a stream that never ends, its total budget shortened by its client.
    let babble = post("/v1/babble", &[("x-request-timeout", "500ms")]);
    let cut = send(gateway.addr, babble).await;
    while let Some(answer) = streams.join_next().await {
        let answer = answer.expect("the client task ends");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer.body.contains("t24 ") && answer.body.ends_with("data: [DONE]\n\n"),
            "a stream cut short with {threads} worker threads: {}",
            answer.body
        );
    }
    assert_eq!(cut.status, 200);
    assert!(
        cut.body.contains("\"code\":\"deadline_exceeded\"")
            && (cut.body.contains("total budget of 500ms")
                || cut.body.contains("total budget of 499.")),
        "the babbling stream was not ended by its total budget: {}",
        cut.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_many_streams_at_once_within_their_budgets() {
    serves_streams_at_once_and_cuts_at_the_budget("1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_worker_threads_serve_many_streams_at_once_within_their_budgets() {
    serves_streams_at_once_and_cuts_at_the_budget("3").await;
}

#[test]
fn a_thread_count_of_zero_or_beyond_1024_is_refused_at_start() {
    for refused in ["0", "1025"] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"));
        command.args(["--listen", "127.0.0.1:0", "--worker-threads", refused]);
        let (status, stderr) = support::refused(command);
        assert_eq!(
            status.code(),
            Some(2),
            "--worker-threads {refused}: {stderr}"
        );
        assert!(
            stderr.contains("--worker-threads"),
            "the refusal does not name its flag: {stderr}"
        );
    }
}
