//! `--log-format json`: every line one JSON object, and the request line's fields under
//! fixed names for every way a response ends.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Map, Value};
use support::{Gateway, SHORT_BUDGETS, post, send, send_head, upstream};

const README: &str = include_str!("../README.md");

/// Every line of the gateway's stderr, each of which must be one JSON object.
fn json_lines(log: &str) -> Vec<Map<String, Value>> {
    log.lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            _ => panic!("not a JSON object: {line}\n{log}"),
        })
        .collect()
}

/// Waits for the request line of the request with `id`.
async fn request_line(gateway: &Gateway, id: &str) -> Map<String, Value> {
    let quoted = format!("\"request_id\":\"{id}\"");
    let log = gateway
        .wait_for_log(&quoted, |log| log.contains(&quoted))
        .await;
    json_lines(&log)
        .into_iter()
        .find(|line| line.get("request_id") == Some(&Value::from(id)))
        .unwrap()
}

fn keys(line: &Map<String, Value>) -> BTreeSet<&str> {
    line.keys().map(String::as_str).collect()
}

fn with_id(path: &str, id: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn in_json_every_line_is_an_object_with_the_request_fields_of_each_ending() {
    let (upstream, _) = upstream::start().await;
    let url = format!("http://{upstream}");
    let flags = ["--upstream", &url, "--log-format", "json", "--retries", "0"];
    let gateway = Gateway::start(&[&flags[..], &SHORT_BUDGETS].concat(), &[]);
    let addr = gateway.addr;
    let model = r#"{"model":"llama-3.1-8b","stream":true}"#;
    let plain = r#"{"stream":true}"#;
    let (completed, total, idle, first_frame) = tokio::join!(
        send(addr, with_id("/v1/complete", "completed", model)),
        send(addr, with_id("/v1/babble", "deadline_total", plain)),
        send(addr, with_id("/v1/idle", "deadline_idle", plain)),
        send(
            addr,
            with_id("/v1/stuck-once", "deadline_first_frame", plain)
        ),
    );
    assert_eq!(
        [
            completed.status,
            total.status,
            idle.status,
            first_frame.status
        ],
        [200, 200, 200, 504]
    );
    // A client that leaves mid-stream.
    drop(send_head(addr, with_id("/v1/babble", "dropped", plain)).await);
    let unreachable = Gateway::start(
        &["--upstream", "http://127.0.0.1:1", "--log-format", "json"],
        &[],
    );
    let refused = send(
        unreachable.addr,
        with_id("/v1/complete", "upstream_error", plain),
    )
    .await;
    assert_eq!(refused.status, 502);

    let always = [
        "timestamp",
        "level",
        "message",
        "target",
        "method",
        "path",
        "status",
        "attempts",
        "frames",
        "bytes",
        "ending",
        "elapsed_ms",
        "request_id",
    ];
    for (ending, status, first_frame_ms, model) in [
        ("completed", 200, true, true),
        ("deadline_total", 200, true, false),
        ("deadline_idle", 200, true, false),
        ("deadline_first_frame", 504, false, false),
        ("dropped", 200, true, false),
        ("upstream_error", 502, false, false),
    ] {
        let server = if ending == "upstream_error" {
            &unreachable
        } else {
            &gateway
        };
        let line = request_line(server, ending).await;
        let mut expected: BTreeSet<&str> = always.into();
        if first_frame_ms {
            expected.insert("first_frame_ms");
        }
        if model {
            expected.insert("model");
        }
        if ending == "upstream_error" {
            // Why it failed, in words.
            expected.insert("note");
        }
        // The upstream of each attempt (an unreachable one too).
        expected.insert("upstreams");
        assert_eq!(keys(&line), expected, "{ending}: {line:?}");
        assert_eq!(line["message"], "request", "{line:?}");
        assert_eq!(line["level"], "INFO", "{line:?}");
        assert_eq!(line["target"], "stream_deadline_gateway", "{line:?}");
        assert_eq!(line["method"], "POST", "{line:?}");
        assert_eq!(line["ending"], ending, "{line:?}");
        assert_eq!(line["status"], status, "{line:?}");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        for number in ["attempts", "frames", "bytes", "elapsed_ms"] {
            assert!(line[number].is_number(), "{number}: {line:?}");
        }
        if model {
            assert_eq!(line["model"], "llama-3.1-8b");
        }
    }
    let babbled = request_line(&gateway, "deadline_total").await;
    let elapsed = babbled["elapsed_ms"].as_f64().unwrap();
    assert!((600.0..1000.0).contains(&elapsed), "{babbled:?}");
    assert!(babbled["frames"].as_u64().unwrap() > 0, "{babbled:?}");
    assert!(babbled["bytes"].as_u64().unwrap() > 0, "{babbled:?}");

    // Every line, the startup and shutdown ones included, is an object.
    assert!(
        json_lines(&gateway.log())
            .iter()
            .any(|line| line["message"] == "gateway ready")
    );

    // The README's example line has the fields of a real one, under the same names.
    let example = README
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```json example in the README");
    let example = json_lines(example).pop().expect("one example line");
    let completed = request_line(&gateway, "completed").await;
    assert_eq!(keys(&example), keys(&completed), "{example:?}");
}

#[tokio::test]
async fn the_text_format_is_the_default_and_carries_the_same_fields() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let answer = send(
        gateway.addr,
        post("/v1/complete", &[("x-request-id", "t-1")]),
    )
    .await;
    assert_eq!(answer.status, 200);
    let log = gateway
        .wait_for_log("request line", |log| log.contains("request_id=t-1"))
        .await;
    let line = log.lines().find(|l| l.contains("request_id=t-1")).unwrap();
    for field in [
        " INFO ",
        "request method=POST path=/v1/complete status=200 attempts=1 first_frame_ms=",
        // Four events; the last token and `[DONE]` may come in one read, and go on as one frame.
        " frames=",
        " bytes=161 ",
        "ending=\"completed\" elapsed_ms=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_choices() {
    for env in [None, Some("STREAM_DEADLINE_LOG_FORMAT")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"));
        match env {
            Some(name) => command.env(name, "xml"),
            None => command.args(["--log-format", "xml"]),
        };
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{env:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains("'xml'"), "{stderr}");
        assert!(stderr.contains("[possible values: text, json]"), "{stderr}");
    }
}
