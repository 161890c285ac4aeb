//! The cost per frame of the optional hooks: the outcome callback, the progress filters and
//! the SSE ending, against the same layer without them (each must cost nothing when unset).
//!
//! The `sse/batch/` rows send 64 events per frame, as one read of a fast upstream brings them.
//!
//! `cargo bench -p tower-stream-deadline-benches --bench hooks`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Layer, Service};
use tower_stream_deadline::{DeadlineBody, StreamDeadlineLayer};
use tower_stream_deadline_benches::{Frames, LONG, drain, runtime};

const FRAMES: u64 = 10_000;
/// One OpenAI-style SSE event, as a model server sends per token.
const EVENT: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";
/// Events a fast upstream's read brings at once, passed on as one frame (the gateway does).
const BATCH: usize = 64;
/// One whole length-prefixed gRPC message (flag, 4-byte length, 59 bytes): 64 bytes.
const MESSAGE: &[u8] = b"\0\0\0\0\x3bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Wraps `body` through the layer, with the response's `content-type` set.
fn wrap(
    layer: &StreamDeadlineLayer,
    content_type: &'static str,
    body: Frames,
) -> DeadlineBody<Frames> {
    let upstream = tower::service_fn(move |req: Request<Frames>| {
        let mut response = Response::new(req.into_body());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        std::future::ready(Ok::<_, std::convert::Infallible>(response))
    });
    let mut svc = layer.layer(upstream);
    let mut future = std::pin::pin!(svc.call(Request::new(body)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(response) =
            std::future::Future::poll(future.as_mut(), &mut cx)
        {
            return response.expect("no deadline runs out here").into_body();
        }
    }
}

/// The contender whose callback counts outcomes, checked at the end.
const ON_OUTCOME: &str = "total+on_outcome";

fn hooks(c: &mut Criterion) {
    let rt = runtime();
    let _entered = rt.enter();
    let outcomes = Arc::new(AtomicU64::new(0));
    let counter = outcomes.clone();
    let base = StreamDeadlineLayer::new(LONG);
    let batch: &'static [u8] = EVENT.repeat(BATCH).leak();
    let contenders: Vec<(&str, StreamDeadlineLayer, &'static str, &'static [u8])> = vec![
        (
            "total",
            base.clone(),
            "application/octet-stream",
            &[b'x'; 64],
        ),
        (
            ON_OUTCOME,
            base.clone().on_outcome(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
            "application/octet-stream",
            &[b'x'; 64],
        ),
        (
            "total+progress",
            base.clone().progress(|data| !data.is_empty()),
            "application/octet-stream",
            &[b'x'; 64],
        ),
        ("sse/total", base.clone(), "text/event-stream", EVENT),
        (
            "sse/total+sse_progress",
            base.clone().sse_progress(),
            "text/event-stream",
            EVENT,
        ),
        (
            "sse/total+sse_progress_filter",
            base.clone()
                .sse_progress_filter(|data| data.windows(9).any(|w| w == b"\"content\"")),
            "text/event-stream",
            EVENT,
        ),
        (
            "sse/total+llm_progress",
            base.clone().llm_progress(),
            "text/event-stream",
            EVENT,
        ),
        (
            "sse/total+sse_endings",
            base.clone().sse_endings(),
            "text/event-stream",
            EVENT,
        ),
        ("sse/batch/total", base.clone(), "text/event-stream", batch),
        (
            "sse/batch/total+sse_progress",
            base.clone().sse_progress(),
            "text/event-stream",
            batch,
        ),
        (
            "sse/batch/total+sse_progress_filter",
            base.clone()
                .sse_progress_filter(|data| data.windows(9).any(|w| w == b"\"content\"")),
            "text/event-stream",
            batch,
        ),
        (
            "sse/batch/total+llm_progress",
            base.clone().llm_progress(),
            "text/event-stream",
            batch,
        ),
        ("grpc/total", base.clone(), "application/grpc", MESSAGE),
        (
            "grpc/total+grpc_endings",
            base.clone().grpc_endings(),
            "application/grpc",
            MESSAGE,
        ),
    ];

    let mut group = c.benchmark_group("hooks_per_frame");
    group.throughput(Throughput::Elements(FRAMES));
    // Criterion runs a contender only when it passes the filter (`-- sse/`, say).
    let mut callback_benched = false;
    for (name, layer, content_type, data) in &contenders {
        group.bench_function(*name, |b| {
            callback_benched |= *name == ON_OUTCOME;
            b.iter_batched(
                || {
                    let frames = Frames::new(FRAMES).with_data(Bytes::from_static(data));
                    Box::pin(wrap(layer, content_type, frames))
                },
                |mut body| black_box(drain(body.as_mut())),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    assert!(
        !callback_benched || outcomes.load(Ordering::Relaxed) > 0,
        "the callback ran"
    );
}

criterion_group!(benches, hooks);
criterion_main!(benches);
