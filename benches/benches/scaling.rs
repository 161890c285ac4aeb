//! Benchmark 5: per-frame cost with 1, 100 and 10,000 live streams. It must not grow with the
//! stream count.
//!
//! `cargo bench -p tower-stream-deadline-benches --bench scaling`
//!
//! Every live stream has waited once, so each wrapper holds a registered timer in the runtime's
//! timer wheel (this crate: armed at its idle deadline; tower-http: its `Sleep`). Two shapes:
//! - `hot_among_idle/N`: one stream delivers frames while N - 1 others stall with their timers
//!   registered (a gateway where a few streams are busy and most are waiting);
//! - `round_robin/N`: all N streams have frames ready and are polled one frame each in turn
//!   (every stream busy; the working set grows with N, for the bare body too).
//!
//! Compare each wrapper with the bare body at the same N: the difference is the wrapper's.

use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http_body::Body;
use tower_stream_deadline_benches::{
    Config, Frames, IDLE, LONG, OneThenStall, poll_once, runtime, wrap,
};

/// Frames per iteration, whatever the stream count.
const FRAMES: u64 = 10_000;
const COUNTS: [usize; 3] = [1, 100, 10_000];

#[derive(Clone, Copy, Debug)]
enum Contender {
    Bare,
    ThisCrate,
    TowerHttpTimeout,
    TowerHttpDeadline,
}

const CONTENDERS: [Contender; 4] = [
    Contender::Bare,
    Contender::ThisCrate,
    Contender::TowerHttpTimeout,
    Contender::TowerHttpDeadline,
];

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Bare => "bare",
            Contender::ThisCrate => "this_crate/total+idle",
            Contender::TowerHttpTimeout => "tower_http/TimeoutBody",
            Contender::TowerHttpDeadline => "tower_http/DeadlineBody",
        }
    }
}

type Boxed = Pin<Box<dyn Body<Data = bytes::Bytes, Error = Box<dyn std::fmt::Debug>>>>;

/// Wraps `body` as `contender` does and boxes it; the box and the dynamic call cost the same
/// for every contender.
fn boxed<B>(contender: Contender, body: B) -> Boxed
where
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Debug + Into<tower_stream_deadline::BoxError> + 'static,
{
    use http_body_util::BodyExt;
    fn debug<E: std::fmt::Debug + 'static>(e: E) -> Box<dyn std::fmt::Debug> {
        Box::new(e)
    }
    match contender {
        Contender::Bare => Box::pin(body.map_err(debug)),
        Contender::ThisCrate => {
            Box::pin(wrap(&Config::TotalIdle.base_layer(), body).map_err(debug))
        }
        Contender::TowerHttpTimeout => {
            Box::pin(tower_http::timeout::TimeoutBody::new(IDLE, body).map_err(debug))
        }
        Contender::TowerHttpDeadline => {
            Box::pin(tower_http::timeout::DeadlineBody::new(LONG, body).map_err(debug))
        }
    }
}

/// A stream that has waited once (its wrapper's timer is registered) and now has frames ready.
fn busy(contender: Contender) -> Boxed {
    let mut body = boxed(contender, Frames::endless_after_one_wait());
    let mut cx = Context::from_waker(Waker::noop());
    assert!(poll_once(body.as_mut(), &mut cx).is_pending());
    body
}

/// A stream that sent its token and is now stalled, its wrapper's timer registered.
fn stalled(contender: Contender) -> Boxed {
    let mut body = boxed(contender, OneThenStall::default());
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(poll_once(body.as_mut(), &mut cx), Poll::Ready(Some(())));
    assert!(poll_once(body.as_mut(), &mut cx).is_pending());
    body
}

fn scaling(c: &mut Criterion) {
    let rt = runtime();
    let _entered = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());

    let mut group = c.benchmark_group("scaling/hot_among_idle");
    group.throughput(Throughput::Elements(FRAMES));
    for n in COUNTS {
        for contender in CONTENDERS {
            let idle: Vec<Boxed> = (1..n).map(|_| stalled(contender)).collect();
            let mut hot = busy(contender);
            group.bench_with_input(BenchmarkId::new(contender.label(), n), &n, |b, _| {
                b.iter(|| {
                    for _ in 0..FRAMES {
                        let frame = poll_once(hot.as_mut(), &mut cx);
                        assert_eq!(black_box(frame), Poll::Ready(Some(())));
                    }
                })
            });
            drop(idle);
        }
    }
    group.finish();

    let mut group = c.benchmark_group("scaling/round_robin");
    group.throughput(Throughput::Elements(FRAMES));
    for n in COUNTS {
        for contender in CONTENDERS {
            let mut streams: Vec<Boxed> = (0..n).map(|_| busy(contender)).collect();
            let rounds = FRAMES as usize / n;
            group.bench_with_input(BenchmarkId::new(contender.label(), n), &n, |b, _| {
                b.iter(|| {
                    for _ in 0..rounds {
                        for stream in &mut streams {
                            let frame = poll_once(stream.as_mut(), &mut cx);
                            assert_eq!(black_box(frame), Poll::Ready(Some(())));
                        }
                    }
                })
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = scaling
}
criterion_main!(benches);
