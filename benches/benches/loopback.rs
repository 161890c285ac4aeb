//! Benchmark 2: loopback throughput. A hyper HTTP/1.1 server on 127.0.0.1 streams 64 MiB in
//! 64-byte frames (chunked, one chunk per frame) to a hyper-util client, which polls the body
//! frame by frame to its end: bare, this crate (total; total + idle; total + idle with
//! `release_unpolled`), tower-http `TimeoutBody` and `DeadlineBody` (through their
//! response-body layers).
//!
//! `cargo bench -p tower-stream-deadline-benches --bench loopback`
//!
//! The server runs on its own thread and current-thread runtime, the client (and its
//! connection task) on the benchmark thread's current-thread runtime: one core each.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Layer, Service, ServiceExt};
use tower_http::timeout::{ResponseBodyDeadlineLayer, ResponseBodyTimeoutLayer};
use tower_stream_deadline_benches::{Config, FRAME, Frames, IDLE, LONG, runtime};

const FRAMES: u64 = 1 << 20; // 1 Mi frames of 64 bytes: 64 MiB
const BYTES: u64 = FRAMES * FRAME.len() as u64;

/// Starts the server on its own thread; returns its address.
fn server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Frames::new(FRAMES)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    });
    rx.recv().unwrap()
}

/// One request through `svc`; polls the body frame by frame and returns the bytes received.
async fn fetch<S, B>(svc: &mut S, uri: &http::Uri) -> u64
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let request = Request::get(uri.clone()).body(Empty::new()).unwrap();
    let response = svc.ready().await.unwrap().call(request).await.unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes += data.len() as u64;
        }
    }
    bytes
}

fn loopback(c: &mut Criterion) {
    let addr = server();
    let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
    let rt = runtime();
    let client =
        rt.block_on(async { Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>() });

    // Each contender fetches the whole body once and returns the bytes it read.
    type Fetch<'a> = Box<dyn FnMut() -> u64 + 'a>;
    let (mut bare, mut bare_timed) = (client.clone(), client.clone());
    let mut total = Config::Total.base_layer().layer(client.clone());
    let mut total_idle = Config::TotalIdle.base_layer().layer(client.clone());
    let mut released = (Config::TotalIdleReleased.base_layer())
        .release_unpolled()
        .layer(client.clone());
    let mut timeout = ResponseBodyTimeoutLayer::new(IDLE).layer(client.clone());
    let mut deadline = ResponseBodyDeadlineLayer::new(LONG).layer(client.clone());
    let (rt, uri) = (&rt, &uri);
    let mut contenders: [(&str, &str, Fetch); 7] = [
        (
            "bare",
            "bare",
            Box::new(|| rt.block_on(fetch(&mut bare, uri))),
        ),
        // Control: the bare client while one unrelated timer is registered in its runtime (as
        // there nearly always is in production: pool, keep-alive and other requests'
        // timers). With a timer registered, every park of the runtime reads the clock and
        // looks up the timer wheel; any wrapper that holds a timer brings that cost along.
        (
            "bare_with_a_timer_in_the_runtime",
            "bare, one unrelated timer in the runtime",
            Box::new(|| {
                let sleeper = with_timer(rt);
                let bytes = rt.block_on(fetch(&mut bare_timed, uri));
                sleeper.abort();
                bytes
            }),
        ),
        (
            "this_crate/total",
            "this crate, total",
            Box::new(|| rt.block_on(fetch(&mut total, uri))),
        ),
        (
            "this_crate/total+idle",
            "this crate, total+idle",
            Box::new(|| rt.block_on(fetch(&mut total_idle, uri))),
        ),
        (
            "this_crate/total+idle+release_unpolled",
            "this crate, total+idle, release_unpolled",
            Box::new(|| rt.block_on(fetch(&mut released, uri))),
        ),
        (
            "tower_http/TimeoutBody",
            "tower-http TimeoutBody",
            Box::new(|| rt.block_on(fetch(&mut timeout, uri))),
        ),
        (
            "tower_http/DeadlineBody",
            "tower-http DeadlineBody",
            Box::new(|| rt.block_on(fetch(&mut deadline, uri))),
        ),
    ];
    let position = |id| {
        contenders
            .iter()
            .position(|c| c.0 == id)
            .expect("a contender")
    };
    let (timeout_body, deadline_body) = (
        position("tower_http/TimeoutBody"),
        position("tower_http/DeadlineBody"),
    );

    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Bytes(BYTES));
    for (id, _, fetch) in &mut contenders {
        group.bench_function(*id, |b| b.iter(|| assert_eq!(fetch(), BYTES)));
    }
    group.finish();

    // The same, interleaved round by round, so that a change in the machine's load between
    // criterion's groups does not show up as a difference between contenders.
    let mut times: [Vec<f64>; 7] = Default::default();
    for _ in 0..ROUNDS {
        for ((_, _, fetch), times) in contenders.iter_mut().zip(&mut times) {
            times.push(timed(fetch));
        }
    }
    let sorted = times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t
    });
    let medians = sorted.each_ref().map(|t| t[t.len() / 2]);
    println!();
    println!("Interleaved, {ROUNDS} rounds, median of each (64 MiB in 64-byte frames):");
    println!();
    println!(
        "| contender | median time (ms) | fastest and slowest round (ms) | MiB/s | throughput vs \
         bare | vs bare with a timer | vs tower-http TimeoutBody | vs tower-http DeadlineBody |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (((_, name, _), t), rounds) in contenders.iter().zip(medians).zip(&sorted) {
        println!(
            "| {name} | {:.0} | {:.0} to {:.0} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} |",
            t * 1e3,
            rounds[0] * 1e3,
            rounds[rounds.len() - 1] * 1e3,
            BYTES as f64 / t / (1 << 20) as f64,
            medians[0] / t,
            medians[1] / t,
            medians[timeout_body] / t,
            medians[deadline_body] / t,
        );
    }
    println!();
}

const ROUNDS: usize = 15;

/// Registers one timer, an hour away, in `rt`'s timer wheel, until the handle is aborted.
fn with_timer(rt: &tokio::runtime::Runtime) -> tokio::task::JoinHandle<()> {
    let sleeper = rt.spawn(async { tokio::time::sleep(LONG).await });
    // Let it run once, which registers its timer.
    rt.block_on(tokio::task::yield_now());
    sleeper
}

/// Runs `f` (which must return the byte count) and returns how long it took, in seconds.
fn timed(f: impl FnOnce() -> u64) -> f64 {
    let start = std::time::Instant::now();
    assert_eq!(f(), BYTES);
    start.elapsed().as_secs_f64()
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .sample_size(10)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = loopback
}
criterion_main!(benches);
