//! Request ids: the client's `x-request-id` (or a new UUID v4) goes to the upstream, comes
//! back on the response and is written on the request's log line.

mod support;

use support::{Gateway, post, send, upstream};

/// The request line of the request with `id`.
async fn logged(gateway: &Gateway, id: &str) -> String {
    let field = format!("request_id={id}");
    let log = gateway
        .wait_for_log(&field, |log| log.contains(&field))
        .await;
    log.lines()
        .find(|line| line.contains(&field))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_client_s_id_goes_upstream_comes_back_and_is_logged() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let answer = send(
        gateway.addr,
        post("/v1/complete", &[("x-request-id", "client-7")]),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["x-request-id"], "client-7");
    assert_eq!(
        *counts.request_ids.lock().unwrap(),
        [Some("client-7".to_owned())]
    );
    let line = logged(&gateway, "client-7").await;
    assert!(line.contains(" INFO "), "{line}");
}

#[tokio::test]
async fn a_request_without_an_id_gets_a_new_uuid_v4_sent_upstream_returned_and_logged() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let mut returned = Vec::new();
    for _ in 0..2 {
        let answer = send(gateway.addr, post("/v1/complete", &[])).await;
        assert_eq!(answer.status, 200);
        let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
        let uuid = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        logged(&gateway, &id).await;
        returned.push(Some(id));
    }
    assert_ne!(returned[0], returned[1]);
    assert_eq!(*counts.request_ids.lock().unwrap(), returned);
}

#[tokio::test]
async fn the_gateway_s_own_error_answers_carry_the_id() {
    let unreachable = Gateway::start(&["--upstream", "http://127.0.0.1:1"], &[]);
    let answer = send(
        unreachable.addr,
        post("/v1/complete", &[("x-request-id", "client-502")]),
    )
    .await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.headers["x-request-id"], "client-502");
    logged(&unreachable, "client-502").await;

    let (upstream, _) = upstream::start().await;
    let stuck = Gateway::start(
        &[
            "--upstream",
            &format!("http://{upstream}"),
            "--first-frame",
            "100ms",
            "--retries",
            "0",
        ],
        &[],
    );
    let answer = send(stuck.addr, post("/v1/stuck-once", &[])).await;
    assert_eq!(answer.status, 504);
    let id = answer.headers["x-request-id"].to_str().unwrap();
    logged(&stuck, id).await;
}

#[tokio::test]
async fn an_unusable_client_id_is_replaced_and_named_at_warn() {
    let (upstream, counts) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let long = "x".repeat(129);
    let answer = send(
        gateway.addr,
        post("/v1/complete", &[("x-request-id", long.as_str())]),
    )
    .await;
    assert_eq!(answer.status, 200);
    let id = answer.headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(*counts.request_ids.lock().unwrap(), [Some(id.to_owned())]);
    let line = logged(&gateway, id).await;
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("ignored an x-request-id of 129 bytes (at most 128)"),
        "{line}"
    );
}

#[tokio::test]
async fn an_upstream_s_own_id_is_replaced_on_the_response_and_logged() {
    let (upstream, _) = upstream::start().await;
    let gateway = Gateway::start(&["--upstream", &format!("http://{upstream}")], &[]);
    let answer = send(
        gateway.addr,
        post("/v1/own-id", &[("x-request-id", "client-9")]),
    )
    .await;
    assert_eq!(answer.body, "upstream /v1/own-id");
    assert_eq!(
        answer
            .headers
            .get_all("x-request-id")
            .iter()
            .collect::<Vec<_>>(),
        ["client-9"]
    );
    let line = logged(&gateway, "client-9").await;
    assert!(
        line.contains("upstream_request_id=\"upstream-own-id\""),
        "{line}"
    );
}
