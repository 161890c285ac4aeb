//! A policy per model from `--config`: each model's requests go to its own upstreams under
//! its own budgets, SIGHUP applies a changed file, and a file that does not load is refused
//! at start (exit 2, naming the line) and ignored on reload (the last good one stays).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::upstream::{self, Counts};
use support::{Answer, Gateway, refused, sample, send};

/// A streamed request for `model` to the stand-in's babbling path (a token every 20 ms,
/// forever): it ends at its total budget.
fn babble(model: &str) -> Request<Full<Bytes>> {
    let body = format!(r#"{{"model":"{model}","stream":true,"messages":[]}}"#);
    Request::post("/v1/babble")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Sends `request`; the answer and how long it took.
async fn timed(gateway: &Gateway, request: Request<Full<Bytes>>) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = send(gateway.addr, request).await;
    (answer, started.elapsed())
}

#[track_caller]
fn cut_at(answer: &Answer, took: Duration, budget: Duration) {
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("deadline_exceeded"), "{}", answer.body);
    assert!(
        took >= budget && took < budget + Duration::from_millis(400),
        "cut after {took:?}, budget {budget:?}"
    );
}

fn requests(counts: &Counts) -> usize {
    Counts::get(&counts.requests)
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn config(a: &str, a_total: &str, b: &str) -> String {
    format!(
        "[models.\"model-a\"]\nupstreams = [\"{a}\"]\ntotal = \"{a_total}\"\n\n\
         [models.\"model-b\"]\nupstreams = [\"{b}\"]\ntotal = \"900ms\"\n"
    )
}

#[tokio::test]
async fn each_model_goes_to_its_own_upstreams_under_its_own_budgets_and_sighup_applies_a_change() {
    let (a, a_counts) = upstream::start().await;
    let (b, b_counts) = upstream::start().await;
    let (flags_upstream, flags_counts) = upstream::start().await;
    let dir = tempdir();
    let file = dir.join("models.toml");
    write(
        &file,
        &config(&format!("http://{a}"), "400ms", &format!("http://{b}")),
    );
    let flags_url = format!("http://{flags_upstream}");
    let file_arg = file.to_str().unwrap();
    let gateway = Gateway::start(
        &[
            "--upstream",
            &flags_url,
            "--total",
            "1500ms",
            "--config",
            file_arg,
        ],
        &[],
    );

    let (answer, took) = timed(&gateway, babble("model-a")).await;
    cut_at(&answer, took, Duration::from_millis(400));
    let (answer, took) = timed(&gateway, babble("model-b")).await;
    cut_at(&answer, took, Duration::from_millis(900));
    // A model without a table gets the flags.
    let (answer, took) = timed(&gateway, babble("model-c")).await;
    cut_at(&answer, took, Duration::from_millis(1500));
    assert_eq!(
        (
            requests(&a_counts),
            requests(&b_counts),
            requests(&flags_counts)
        ),
        (1, 1, 1),
        "each request to its own model's upstream"
    );

    let metrics = support::get(gateway.admin.unwrap(), "/metrics").await.body;
    for (model, count) in [("model-a", 1.0), ("model-b", 1.0), ("other", 1.0)] {
        let series = format!(
            "stream_deadline_requests_total{{ending=\"deadline_total\",model=\"{model}\"}}"
        );
        assert_eq!(sample(&metrics, &series), Some(count), "{metrics}");
    }

    // A change, then SIGHUP: requests from then on get the new policy.
    write(
        &file,
        &config(&format!("http://{a}"), "200ms", &format!("http://{b}")),
    );
    gateway.signal("HUP");
    gateway
        .wait_for_log("the reload", |log| log.contains("--config reloaded"))
        .await;
    let (answer, took) = timed(&gateway, babble("model-a")).await;
    cut_at(&answer, took, Duration::from_millis(200));

    // A file that does not load: named in the log, and the last good one stays in force.
    write(&file, "[models.\"model-a\"]\ntotal = \"soon\"\n");
    gateway.signal("HUP");
    let log = gateway
        .wait_for_log("the failed reload", |log| {
            log.contains("--config not reloaded")
        })
        .await;
    assert!(log.contains("total"), "{log}");
    let (answer, took) = timed(&gateway, babble("model-a")).await;
    cut_at(&answer, took, Duration::from_millis(200));
    assert_eq!(requests(&a_counts), 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_file_that_does_not_load_at_start_is_an_exit_2_naming_its_line() {
    for (text, named) in [
        ("[models.\"m\"]\nretries = 1\nretries = 2\n", "line 3"),
        (
            "[models.\"m\"]\nupstreams = []\n",
            "[models.\"m\"]: `upstreams` is empty",
        ),
    ] {
        let dir = tempdir();
        let file = dir.join("models.toml");
        write(&file, text);
        let mut command = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"));
        command.args([
            "--listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ]);
        let (status, stderr) = refused(command);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--config"), "{stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A directory of its own under the system's temporary directory.
fn tempdir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "stream-deadline-gateway-policies-{}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_model_s_table_may_turn_heartbeats_on_for_its_requests_only() {
    let (slow, counts) = upstream::start().await;
    *counts.first_token_after.lock().unwrap() = Duration::from_millis(600);
    let dir = tempdir();
    let file = dir.join("models.toml");
    write(&file, "[models.\"model-a\"]\nheartbeat = \"200ms\"\n");
    let gateway = Gateway::start(
        &[
            "--upstream",
            &format!("http://{slow}"),
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let request = |model: &str| {
        let body = format!(r#"{{"model":"{model}","stream":true}}"#);
        Request::post("/v1/complete")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let answer = send(gateway.addr, request("model-a")).await;
    assert!(answer.body.starts_with(": heartbeat"), "{}", answer.body);
    assert!(answer.body.contains("t2 "), "{}", answer.body);
    let answer = send(gateway.addr, request("model-b")).await;
    assert!(answer.body.starts_with("data: "), "{}", answer.body);
    let _ = std::fs::remove_dir_all(dir);
}
