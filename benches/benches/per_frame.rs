//! Benchmark 1: the cost per frame of each wrapper, over an in-memory body whose next frame is
//! always ready, polled to its end (so what is left is the wrapper's cost).
//!
//! `cargo bench -p tower-stream-deadline-benches --bench per_frame`
//!
//! Bodies are polled by hand with a no-op waker, outside any task but inside a runtime context
//! (tower-http's bodies create their `Sleep` there). Outside a task, tokio's cooperative budget
//! is unconstrained, so tower-http's `Sleep` really is polled on every frame, as it is when the
//! body is polled by a connection task that has budget left.

use std::hint::black_box;
use std::pin::Pin;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};
use http::{Request, Response};
use tower::{Layer, Service};
use tower_http::timeout::{ResponseBodyDeadlineLayer, ResponseBodyTimeoutLayer};
use tower_stream_deadline_benches::{
    Config, Echo, Frames, IDLE, LONG, block_on_noop, counting, drain, runtime, with_layer, wrap,
};

/// Frames per body: large enough that creating and dropping the body (excluded anyway) is noise.
const FRAMES: u64 = 10_000;

/// Benches draining `FRAMES` frames of `frames` bare, under each of `configs`, and under
/// tower-http's two bodies. Making each body is not timed.
fn drain_group(c: &mut Criterion, name: &str, frames: fn(u64) -> Frames, configs: &[Config]) {
    fn bench<B: http_body::Body>(
        group: &mut BenchmarkGroup<'_, WallTime>,
        name: &str,
        make: impl Fn() -> B,
    ) where
        B::Error: std::fmt::Debug,
    {
        group.bench_function(name, |b| {
            b.iter_batched(
                || Box::pin(make()),
                |mut body| black_box(drain(body.as_mut())),
                BatchSize::SmallInput,
            )
        });
    }

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(FRAMES));
    bench(&mut group, "bare", || frames(FRAMES));
    for config in configs {
        let name = format!("this_crate/{}", config.label());
        with_layer!(*config, |layer| {
            bench(&mut group, &name, || wrap(&layer, frames(FRAMES)))
        });
    }
    bench(&mut group, "tower_http/TimeoutBody", || {
        tower_http::timeout::TimeoutBody::new(IDLE, frames(FRAMES))
    });
    bench(&mut group, "tower_http/DeadlineBody", || {
        tower_http::timeout::DeadlineBody::new(LONG, frames(FRAMES))
    });
    group.finish();
}

fn per_frame(c: &mut Criterion) {
    let rt = runtime();
    let _entered = rt.enter();

    drain_group(c, "per_frame", Frames::new, &Config::ALL);
    // The same when every frame has to be waited for (the body is `Pending` once before each
    // frame and wakes itself): the path a body over a socket takes (see the loopback bench).
    drain_group(
        c,
        "per_frame_after_a_wait",
        Frames::each_after_a_wait,
        &[
            Config::Total,
            Config::TotalIdle,
            Config::TotalReleased,
            Config::TotalIdleReleased,
        ],
    );

    // The fixed cost of one response: call, head, one ready frame, end, drop.
    let mut group = c.benchmark_group("per_response");
    group.bench_function("bare", |b| b.iter(|| one_response(&mut Echo)));
    for config in Config::ALL {
        with_layer!(config, |layer| {
            let mut svc = layer.layer(Echo);
            group.bench_function(format!("this_crate/{}", config.label()), |b| {
                b.iter(|| one_response(&mut svc))
            });
        });
    }
    let mut svc = ResponseBodyTimeoutLayer::new(IDLE).layer(Echo);
    group.bench_function("tower_http/TimeoutBody", |b| {
        b.iter(|| one_response(&mut svc))
    });
    let mut svc = ResponseBodyDeadlineLayer::new(LONG).layer(Echo);
    group.bench_function("tower_http/DeadlineBody", |b| {
        b.iter(|| one_response(&mut svc))
    });
    group.finish();

    // For reference: the clock read that the deadline check makes on every frame.
    let mut group = c.benchmark_group("clock");
    group.bench_function("tokio::time::Instant::now", |b| {
        b.iter(tokio::time::Instant::now)
    });
    group.bench_function("std::time::Instant::now", |b| {
        b.iter(std::time::Instant::now)
    });
    group.finish();

    allocations_per_frame();
}

/// One response of one ready frame through `svc`: call, head, the frame, the end, drop.
fn one_response<S, B>(svc: &mut S) -> u64
where
    S: Service<Request<Frames>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = block_on_noop(svc.call(Request::new(Frames::new(1)))).unwrap();
    let body = std::pin::pin!(response.into_body());
    black_box(drain(body))
}

/// Heap allocations while draining one body of `FRAMES` frames (the body itself is created
/// before counting starts): the target is none at all, for every frame.
fn allocations_per_frame() {
    fn row<B: http_body::Body>(name: &str, mut body: Pin<Box<B>>)
    where
        B::Error: std::fmt::Debug,
    {
        let (frames, stats) = counting(|| drain(body.as_mut()));
        assert_eq!(frames, FRAMES);
        println!(
            "| {name} | {frames} | {} | {} | {:.4} |",
            stats.allocs,
            stats.bytes,
            stats.allocs as f64 / frames as f64
        );
    }
    println!();
    println!("Heap allocations while draining {FRAMES} ready frames (counting global allocator):");
    println!();
    println!("| body | frames | allocations | bytes | allocations per frame |");
    println!("|---|---:|---:|---:|---:|");
    row("bare", Box::pin(Frames::new(FRAMES)));
    for config in Config::ALL {
        let name = format!("this crate, {}", config.label());
        with_layer!(config, |layer| {
            row(&name, Box::pin(wrap(&layer, Frames::new(FRAMES))))
        });
    }
    for config in Config::ALL {
        // Every frame waited for: the timer is armed on the first wait and reused after.
        let name = format!("this crate, {}, a wait before every frame", config.label());
        with_layer!(config, |layer| {
            row(
                &name,
                Box::pin(wrap(&layer, Frames::each_after_a_wait(FRAMES))),
            )
        });
    }
    row(
        "tower-http TimeoutBody",
        Box::pin(tower_http::timeout::TimeoutBody::new(
            IDLE,
            Frames::new(FRAMES),
        )),
    );
    row(
        "tower-http DeadlineBody",
        Box::pin(tower_http::timeout::DeadlineBody::new(
            LONG,
            Frames::new(FRAMES),
        )),
    );
    println!();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = per_frame
}
criterion_main!(benches);
