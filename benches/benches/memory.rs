//! Benchmark 4: memory. Bytes each wrapper adds to an in-flight stream (`size_of` of the body
//! and of the response future; inline and heap bytes of a stream stalled after its first
//! frame) and heap allocations per response and per frame, against tower-http's
//! `TimeoutBody` and `DeadlineBody`. Prints Markdown tables; measures no time.
//!
//! `cargo bench -p tower-stream-deadline-benches --bench memory`

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Ready;
use std::mem::{size_of, size_of_val};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tower::{Layer, Service};
use tower_http::timeout::{ResponseBodyDeadlineLayer, ResponseBodyTimeoutLayer};
use tower_stream_deadline::{DeadlineBody, ResponseFuture};
use tower_stream_deadline_benches::{
    AllocStats, Config, Echo, Frames, IDLE, LONG, OneThenStall, SlowEcho, block_on_noop, counting,
    drain, poll_once, runtime, start_counting, stop_counting, with_layer,
};

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let rt = runtime();
    let _entered = rt.enter();
    sizes();
    stalled();
    allocations();
}

/// What one in-flight stream stalled after its first frame holds beyond its bare body: the
/// bytes the wrapper adds inline, and the heap still live from `call` on (the timer, and
/// whatever else the wrapper keeps while the stream waits).
fn stalled() {
    fn row<S, B>(name: &str, svc: &mut S)
    where
        S: Service<Request<OneThenStall>, Response = Response<B>>,
        S::Error: Debug,
        B: Body,
        B::Error: Debug,
    {
        let mut cx = Context::from_waker(Waker::noop());
        start_counting();
        let response = block_on_noop(svc.call(Request::new(OneThenStall::default()))).unwrap();
        let mut body = pin!(response.into_body());
        assert_eq!(poll_once(body.as_mut(), &mut cx), Poll::Ready(Some(())));
        assert!(poll_once(body.as_mut(), &mut cx).is_pending());
        let stats = stop_counting();
        let inline = size_of_val(&*body) - size_of::<OneThenStall>();
        println!(
            "| {name} | {inline} | {} | {} | **{}** |",
            stats.live,
            stats.allocs,
            inline as i64 + stats.live
        );
    }
    println!("## An in-flight stream stalled after its first frame (bytes beyond the bare body)");
    println!();
    println!("| contender | inline | heap live | allocations made | inline + heap |");
    println!("|---|---:|---:|---:|---:|");
    for config in Config::ALL {
        let name = format!("this crate, {}", config.label());
        with_layer!(config, |layer| row(&name, &mut layer.layer(Echo)));
    }
    row(
        "tower-http TimeoutBody",
        &mut ResponseBodyTimeoutLayer::new(IDLE).layer(Echo),
    );
    row(
        "tower-http DeadlineBody",
        &mut ResponseBodyDeadlineLayer::new(LONG).layer(Echo),
    );
    println!();
    println!(
        "Heap live: allocated from `call` on and not yet freed while the stream waits for its \
         second frame (the request's `Deadline` extension is freed when the upstream drops the \
         request). With `release_unpolled` it includes the watcher task, spawned but not yet run."
    );
    println!();
}

fn sizes() {
    type Tokio = tokio::time::Sleep;
    type Th<B> = tower_http::timeout::TimeoutBody<B>;
    type Td<B> = tower_http::timeout::DeadlineBody<B>;
    type Fut<B> = Ready<Result<Response<B>, Infallible>>;
    type HyperFut = hyper_util::client::legacy::ResponseFuture;

    println!("## size_of (bytes; `+` is what the wrapper adds)");
    println!();
    println!("| type | in-memory body `B = Frames` | hyper `B = Incoming` |");
    println!("|---|---:|---:|");
    let row = |name: &str, mem: usize, mem_base: usize, hyper: usize, hyper_base: usize| {
        println!(
            "| {name} | {mem} (+{}) | {hyper} (+{}) |",
            mem - mem_base,
            hyper - hyper_base
        )
    };
    let (fm, fh) = (size_of::<Frames>(), size_of::<Incoming>());
    println!("| `B` (bare body) | {fm} | {fh} |");
    row(
        "this crate `DeadlineBody<B>`",
        size_of::<DeadlineBody<Frames>>(),
        fm,
        size_of::<DeadlineBody<Incoming>>(),
        fh,
    );
    row(
        "tower-http `TimeoutBody<B>`",
        size_of::<Th<Frames>>(),
        fm,
        size_of::<Th<Incoming>>(),
        fh,
    );
    row(
        "tower-http `DeadlineBody<B>`",
        size_of::<Td<Frames>>(),
        fm,
        size_of::<Td<Incoming>>(),
        fh,
    );
    println!();
    println!("| future | in-memory service (`Ready`) | hyper-util legacy client |");
    println!("|---|---:|---:|");
    let (gm, gh) = (size_of::<Fut<Frames>>(), size_of::<HyperFut>());
    println!("| inner future `F` (bare) | {gm} | {gh} |");
    row(
        "this crate `ResponseFuture<F, B>`",
        size_of::<ResponseFuture<Fut<Frames>, Frames>>(),
        gm,
        size_of::<ResponseFuture<HyperFut, Incoming>>(),
        gh,
    );
    // tower-http's response futures are not nameable: measure the values.
    let th = size_of_val(
        &ResponseBodyTimeoutLayer::new(IDLE)
            .layer(Echo)
            .call(Request::new(Frames::new(1))),
    );
    let td = size_of_val(
        &ResponseBodyDeadlineLayer::new(LONG)
            .layer(Echo)
            .call(Request::new(Frames::new(1))),
    );
    println!(
        "| tower-http `ResponseBodyTimeoutFuture<F>` | {th} (+{}) | n/a |",
        th - gm
    );
    println!(
        "| tower-http `ResponseBodyDeadlineFuture<F>` | {td} (+{}) | n/a |",
        td - gm
    );
    println!();
    println!(
        "`tokio::time::Sleep`: {} bytes (inline in tower-http's bodies; boxed by this crate, only \
         once a response has to wait).",
        size_of::<Tokio>()
    );
    println!();
}

/// One whole response through `svc`: call, head, every frame, drop.
fn one<S, B>(svc: &mut S, body: Frames) -> u64
where
    S: Service<Request<Frames>, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let response = block_on_noop(svc.call(Request::new(body))).unwrap();
    let body = pin!(response.into_body());
    drain(body)
}

#[derive(Clone, Copy)]
enum Scenario {
    /// Head ready, every frame ready.
    Ready,
    /// Head ready, a wait before every frame.
    WaitEachFrame,
    /// A wait for the head, and before every frame.
    WaitHeadAndEachFrame,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Ready => "head and frames ready",
            Scenario::WaitEachFrame => "a wait before every frame",
            Scenario::WaitHeadAndEachFrame => "a wait for the head and before every frame",
        }
    }

    fn body(self, frames: u64) -> Frames {
        match self {
            Scenario::Ready => Frames::new(frames),
            _ => Frames::each_after_a_wait(frames),
        }
    }
}

/// Counts one response of `frames` frames (after one uncounted warm-up response).
fn measure<S, B>(svc: &mut S, scenario: Scenario, frames: u64) -> AllocStats
where
    S: Service<Request<Frames>, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    one(svc, scenario.body(frames));
    let (n, stats) = counting(|| one(svc, scenario.body(frames)));
    assert_eq!(n, frames);
    stats
}

fn allocations() {
    println!("## Heap per response (counting global allocator; call, head, all frames, drop)");
    println!();
    println!(
        "| contender | scenario | allocations per response | heap bytes per response | \
         allocations per frame | live bytes after drop |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for scenario in [
        Scenario::Ready,
        Scenario::WaitEachFrame,
        Scenario::WaitHeadAndEachFrame,
    ] {
        let slow = matches!(scenario, Scenario::WaitHeadAndEachFrame);
        let row = |name: &str, short: AllocStats, long: AllocStats| {
            let per_frame = (long.allocs as f64 - short.allocs as f64) / 900.0;
            println!(
                "| {name} | {} | {} | {} | {per_frame:.3} | {} |",
                scenario.label(),
                short.allocs,
                short.bytes,
                short.live
            );
        };
        macro_rules! contender {
            ($name:expr, $svc:expr) => {{
                let mut svc = $svc;
                let short = measure(&mut svc, scenario, 100);
                let long = measure(&mut svc, scenario, 1000);
                row($name, short, long);
            }};
        }
        macro_rules! both {
            ($name:expr, $layer:expr) => {
                if slow {
                    contender!($name, $layer.layer(SlowEcho))
                } else {
                    contender!($name, $layer.layer(Echo))
                }
            };
        }
        if slow {
            contender!("bare", SlowEcho);
        } else {
            contender!("bare", Echo);
        }
        for config in Config::ALL {
            let name = format!("this crate, {}", config.label());
            with_layer!(config, |layer| both!(&name, layer));
        }
        both!(
            "tower-http TimeoutBody",
            ResponseBodyTimeoutLayer::new(IDLE)
        );
        both!(
            "tower-http DeadlineBody",
            ResponseBodyDeadlineLayer::new(LONG)
        );
    }
    println!();
    println!(
        "Per response: one response of 100 frames. Per frame: (1,000-frame response − 100-frame response) / 900."
    );
}
