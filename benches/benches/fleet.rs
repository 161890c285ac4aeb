//! Benchmark 3: a fleet of stalled streams. N concurrent streams on a 2-worker runtime; each
//! sends one token and stalls; budget 300 ms. Every stream must fail at its deadline, none
//! early. Prints lateness percentiles (time from the deadline to the moment the task that
//! reads the body holds the error), the peak heap per stream (counting allocator: task,
//! wrapper, timer, error) and allocations per stream, and the process's peak RSS.
//!
//! `cargo bench -p tower-stream-deadline-benches --bench fleet`
//!
//! Contenders: this crate (`StreamDeadlineLayer::new(300 ms)`); the same with
//! `release_unpolled()` where each stream's task reads one frame and then holds its body
//! without polling it (lateness: from the deadline to the drop of the upstream body, which
//! the watcher does); tower-http `DeadlineBody`
//! (300 ms), and as a floor, a task that sleeps with `tokio::time::sleep_until` to the same
//! deadline (the lateness of tokio's timer and scheduler alone). A last row holds the same
//! stalled streams with no deadline at all, to show the heap that is not the wrapper's.
//! Optional arguments: stream counts (default `10000 100000`).

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, Service};
use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, StreamDeadlineLayer};
use tower_stream_deadline_benches::{Echo, OneThenStall, quantile, start_counting, stop_counting};

const BUDGET: Duration = Duration::from_millis(300);
const RUNS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    ThisCrate,
    ThisCrateUnpolled,
    TowerHttpDeadline,
    TokioSleep,
    NoDeadline,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::ThisCrate => "this crate, total 300 ms",
            Contender::ThisCrateUnpolled => {
                "this crate, total 300 ms, release_unpolled, body held unpolled (lateness of the upstream's drop)"
            }
            Contender::TowerHttpDeadline => "tower-http DeadlineBody 300 ms",
            Contender::TokioSleep => "floor: tokio::time::sleep_until(t0 + 300 ms)",
            Contender::NoDeadline => "no deadline (stalls forever; memory only)",
        }
    }
}

/// Shared by the streams of one run: all wait for the start signal, so that their deadlines
/// fall as close together as the runtime can start them (the fleet stalls together).
#[derive(Clone)]
struct Fleet {
    ready: Arc<AtomicU64>,
    stalled: Arc<AtomicU64>,
    go: tokio::sync::watch::Receiver<bool>,
}

impl Fleet {
    /// Waits for the start signal; returns the start instant.
    async fn start(&mut self) -> Instant {
        self.ready.fetch_add(1, Relaxed);
        self.go.wait_for(|&go| go).await.unwrap();
        Instant::now()
    }
}

/// What one stream saw: lateness in ns (negative: early), whether the error was the right
/// one, and when it started.
type Seen = (i64, bool, Instant);

/// The lateness in ns (negative: early) of the error seen now, for a deadline at `deadline`.
fn lateness(deadline: Instant) -> i64 {
    let now = Instant::now();
    match deadline.checked_duration_since(now) {
        Some(early) if !early.is_zero() => -(early.as_nanos() as i64),
        _ => now.saturating_duration_since(deadline).as_nanos() as i64,
    }
}

// One async fn per contender, so that each task is as large as its own state (a task's
// allocation holds its future).

/// One stream through this crate: the lateness, and whether the error was the right one.
async fn this_crate(mut fleet: Fleet) -> Seen {
    let t0 = fleet.start().await;
    let deadline = t0 + BUDGET;
    // The service is not kept by the stream's task (a gateway shares it).
    let call = StreamDeadlineLayer::new(BUDGET)
        .layer(Echo)
        .call(Request::new(OneThenStall::default()));
    let response = call.await;
    let mut body = pin!(response.unwrap().into_body());
    body.frame().await.unwrap().unwrap();
    fleet.stalled.fetch_add(1, Relaxed);
    let err = body.frame().await.unwrap().unwrap_err();
    let late = lateness(deadline);
    let right = DeadlineExceeded::find(&*err).is_some_and(|d| {
        d.kind() == DeadlineKind::Total && d.budget() == BUDGET && d.elapsed() >= BUDGET
    });
    (late, right, t0)
}

/// An upstream body that reports the instant it is dropped.
struct Reporting {
    body: OneThenStall,
    dropped: Option<tokio::sync::oneshot::Sender<Instant>>,
}

impl http_body::Body for Reporting {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }
}

impl Drop for Reporting {
    fn drop(&mut self) {
        if let Some(tx) = self.dropped.take() {
            let _ = tx.send(Instant::now());
        }
    }
}

/// One stream through this crate with `release_unpolled`, its body held unpolled after the
/// first frame: the lateness of the upstream's release, and whether the next poll then
/// yields the right error.
async fn this_crate_unpolled(mut fleet: Fleet) -> Seen {
    let t0 = fleet.start().await;
    let deadline = t0 + BUDGET;
    let (tx, released) = tokio::sync::oneshot::channel();
    let upstream = Reporting {
        body: OneThenStall::default(),
        dropped: Some(tx),
    };
    let call = StreamDeadlineLayer::new(BUDGET)
        .release_unpolled()
        .layer(Echo)
        .call(Request::new(upstream));
    let response = call.await;
    let mut body = pin!(response.unwrap().into_body());
    body.frame().await.unwrap().unwrap();
    fleet.stalled.fetch_add(1, Relaxed);
    let released_at = released.await.unwrap();
    let late = released_at.saturating_duration_since(deadline).as_nanos() as i64
        - deadline.saturating_duration_since(released_at).as_nanos() as i64;
    let err = body.frame().await.unwrap().unwrap_err();
    let right = DeadlineExceeded::find(&*err).is_some_and(|d| {
        d.kind() == DeadlineKind::Total && d.budget() == BUDGET && d.elapsed() >= BUDGET
    });
    (late, right, t0)
}

async fn tower_http_deadline(mut fleet: Fleet) -> Seen {
    let t0 = fleet.start().await;
    let deadline = t0 + BUDGET;
    let body = tower_http::timeout::DeadlineBody::new(BUDGET, OneThenStall::default());
    let mut body = pin!(body);
    body.frame().await.unwrap().unwrap();
    fleet.stalled.fetch_add(1, Relaxed);
    let err = body.frame().await.unwrap().unwrap_err();
    (
        lateness(deadline),
        err.is::<tower_http::timeout::TimeoutError>(),
        t0,
    )
}

async fn tokio_sleep(mut fleet: Fleet) -> Seen {
    let t0 = fleet.start().await;
    let deadline = t0 + BUDGET;
    let mut body = pin!(OneThenStall::default());
    body.frame().await.unwrap().unwrap();
    fleet.stalled.fetch_add(1, Relaxed);
    tokio::time::sleep_until(deadline).await;
    (lateness(deadline), true, t0)
}

async fn no_deadline(mut fleet: Fleet) -> Seen {
    fleet.start().await;
    let mut body = pin!(OneThenStall::default());
    body.frame().await.unwrap().unwrap();
    fleet.stalled.fetch_add(1, Relaxed);
    body.frame().await;
    unreachable!("the body stalls forever")
}

fn spawn(contender: Contender, fleet: Fleet) -> tokio::task::JoinHandle<Seen> {
    match contender {
        Contender::ThisCrate => tokio::spawn(this_crate(fleet)),
        Contender::ThisCrateUnpolled => tokio::spawn(this_crate_unpolled(fleet)),
        Contender::TowerHttpDeadline => tokio::spawn(tower_http_deadline(fleet)),
        Contender::TokioSleep => tokio::spawn(tokio_sleep(fleet)),
        Contender::NoDeadline => tokio::spawn(no_deadline(fleet)),
    }
}

fn ms(ns: i64) -> String {
    format!("{:.2}", ns as f64 / 1e6)
}

fn run(rt: &tokio::runtime::Runtime, n: usize, contender: Contender) {
    let (go, rx) = tokio::sync::watch::channel(false);
    let fleet = Fleet {
        ready: Arc::new(AtomicU64::new(0)),
        stalled: Arc::new(AtomicU64::new(0)),
        go: rx,
    };
    let mut handles = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);

    start_counting();
    rt.block_on(async {
        for _ in 0..n {
            handles.push(spawn(contender, fleet.clone()));
        }
        while fleet.ready.load(Relaxed) < n as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        go.send(true).unwrap();
        if contender == Contender::NoDeadline {
            while fleet.stalled.load(Relaxed) < n as u64 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            return;
        }
        for handle in handles.drain(..) {
            results.push(handle.await.unwrap());
        }
    });
    let stats = stop_counting();
    let heap = stats.peak as f64 / n as f64;
    let allocs = stats.allocs as f64 / n as f64;

    if contender == Contender::NoDeadline {
        for handle in &handles {
            handle.abort();
        }
        rt.block_on(async {
            for handle in handles {
                let _ = handle.await;
            }
        });
        println!(
            "| {n} | {} | - | - | - | - | - | - | - | {heap:.0} | {allocs:.2} |",
            contender.label()
        );
        return;
    }

    let failed_right = results.iter().filter(|(_, right, _)| *right).count();
    let first = results.iter().map(|r| r.2).min().unwrap();
    let last = results.iter().map(|r| r.2).max().unwrap();
    let spread = last.duration_since(first).as_nanos() as i64;
    let mut late: Vec<i64> = results.iter().map(|(late, _, _)| *late).collect();
    late.sort_unstable();
    let early = late.iter().filter(|&&l| l < 0).count();
    println!(
        "| {n} | {} | {} | {failed_right}/{n} | {early} | {} | {} | {} | {} | {heap:.0} | {allocs:.2} |",
        contender.label(),
        ms(spread),
        ms(late[0]),
        ms(quantile(&late, 0.50)),
        ms(quantile(&late, 0.99)),
        ms(*late.last().unwrap()),
    );
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![10_000, 100_000]
    } else {
        counts
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Warm the runtime up (worker threads, timer wheel, allocator pools).
    run_quietly(&rt);

    println!(
        "| streams | contender | starts spread over (ms) | failed with the deadline error | \
         early | lateness min (ms) | p50 (ms) | p99 (ms) | max (ms) | \
         peak heap per stream (B) | allocations per stream |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &counts {
        for _ in 0..RUNS {
            for contender in [
                Contender::ThisCrate,
                Contender::ThisCrateUnpolled,
                Contender::TowerHttpDeadline,
                Contender::TokioSleep,
            ] {
                run(&rt, n, contender);
            }
        }
        run(&rt, n, Contender::NoDeadline);
    }
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        });
    println!();
    println!("Process peak RSS: {}", peak.as_deref().unwrap_or("unknown"));
}

fn run_quietly(rt: &tokio::runtime::Runtime) {
    let (_go, rx) = tokio::sync::watch::channel(true);
    let fleet = Fleet {
        ready: Arc::new(AtomicU64::new(0)),
        stalled: Arc::new(AtomicU64::new(0)),
        go: rx,
    };
    rt.block_on(async {
        let handles: Vec<_> = (0..1000)
            .map(|_| spawn(Contender::ThisCrate, fleet.clone()))
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
    });
}
