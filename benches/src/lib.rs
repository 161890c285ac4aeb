//! Shared pieces of the benchmarks (see `BENCHMARKS.md` at the repository root): a counting
//! global allocator, in-memory bodies whose cost is close to nothing, and helpers that wrap a
//! body the way each contender does.
//!
//! This package is built without tokio's `test-util` feature (the root crate enables it only
//! for its own tests): with it, `tokio::time::Instant::now()` would go through the paused-clock
//! machinery, which production builds do not pay for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::Service;
use tower_stream_deadline::{BoxError, DeadlineBody, StreamDeadline, StreamDeadlineLayer};

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

/// The global allocator of every benchmark: the system allocator, counting allocations and live
/// heap bytes while [`counting`] is on. Off, it costs one relaxed load per allocation.
pub struct CountingAlloc;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ENABLED.load(Relaxed) {
            on_alloc(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ENABLED.load(Relaxed) {
            on_alloc(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ENABLED.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as u64, Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ENABLED.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as u64, Relaxed);
            on_alloc(new_size);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[inline]
fn on_alloc(size: usize) {
    ALLOCS.fetch_add(1, Relaxed);
    ALLOC_BYTES.fetch_add(size as u64, Relaxed);
    let live = LIVE.fetch_add(size as u64, Relaxed) + size as u64;
    PEAK.fetch_max(live, Relaxed);
}

/// What the allocator saw while [`counting`] was on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Allocations (including reallocations).
    pub allocs: u64,
    /// Bytes requested by those allocations.
    pub bytes: u64,
    /// Heap bytes still live at the end (allocated minus freed while counting).
    pub live: i64,
    /// Highest live heap seen, above the level at the start.
    pub peak: u64,
}

/// Runs `f` with the allocator counting (process-wide: keep other threads quiet).
pub fn counting<R>(f: impl FnOnce() -> R) -> (R, AllocStats) {
    ALLOCS.store(0, Relaxed);
    ALLOC_BYTES.store(0, Relaxed);
    LIVE.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    ENABLED.store(true, Relaxed);
    let out = f();
    ENABLED.store(false, Relaxed);
    let stats = AllocStats {
        allocs: ALLOCS.load(Relaxed),
        bytes: ALLOC_BYTES.load(Relaxed),
        live: LIVE.load(Relaxed) as i64,
        peak: PEAK.load(Relaxed),
    };
    (out, stats)
}

/// Starts counting (process-wide) until [`stop_counting`]; for runs that span `await`s.
pub fn start_counting() {
    counting(|| ());
    ENABLED.store(true, Relaxed);
}

/// Stops counting and returns what was seen since [`start_counting`].
pub fn stop_counting() -> AllocStats {
    ENABLED.store(false, Relaxed);
    AllocStats {
        allocs: ALLOCS.load(Relaxed),
        bytes: ALLOC_BYTES.load(Relaxed),
        live: LIVE.load(Relaxed) as i64,
        peak: PEAK.load(Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// 64 bytes, the size of one streamed token frame in every benchmark.
pub const FRAME: &[u8; 64] = &[b'x'; 64];

/// An in-memory body whose next frame is always ready (after `pending` initial `Pending`s):
/// `left` frames of [`FRAME`]. Cloning a static `Bytes` allocates nothing and touches no atomic.
#[derive(Debug)]
pub struct Frames {
    left: u64,
    /// `Pending`s still to return before the first frame.
    pending_first: u32,
    /// Return one `Pending` before every frame.
    wait_each: bool,
    waited: bool,
    data: Bytes,
}

impl Frames {
    /// `frames` frames, every one ready.
    pub fn new(frames: u64) -> Self {
        Frames {
            left: frames,
            pending_first: 0,
            wait_each: false,
            waited: false,
            data: Bytes::from_static(FRAME),
        }
    }

    /// The same body, with `data` (a static `Bytes`, say an SSE event) as every frame.
    pub fn with_data(self, data: Bytes) -> Self {
        Frames { data, ..self }
    }

    /// An endless body whose first poll is `Pending` (so a wrapper arms its timer) and whose
    /// every later poll has a frame ready.
    pub fn endless_after_one_wait() -> Self {
        Frames {
            pending_first: 1,
            ..Frames::new(u64::MAX)
        }
    }

    /// `frames` frames, each preceded by one `Pending` (the caller is woken at once), as when
    /// every frame has to be waited for.
    pub fn each_after_a_wait(frames: u64) -> Self {
        Frames {
            wait_each: true,
            ..Frames::new(frames)
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.pending_first > 0 || (this.wait_each && !this.waited && this.left > 0) {
            this.pending_first = this.pending_first.saturating_sub(1);
            this.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.left == 0 {
            return Poll::Ready(None);
        }
        this.left -= 1;
        this.waited = false;
        Poll::Ready(Some(Ok(Frame::data(this.data.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length, so that hyper streams it chunked, frame by frame.
        SizeHint::default()
    }
}

/// A body that sends one token frame, then never another (and never ends): a stalled model.
#[derive(Debug, Default)]
pub struct OneThenStall {
    sent: bool,
}

impl Body for OneThenStall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            // Nobody will ever wake us: only a deadline ends this body.
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(FRAME)))))
    }
}

// ---------------------------------------------------------------------------------------------
// Wrapping a body the way each contender does
// ---------------------------------------------------------------------------------------------

/// An upstream service that answers a request with its body: `call(Request::new(body))` is
/// ready at once with `Response::new(body)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl<B> Service<Request<B>> for Echo {
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Ready<Result<Response<B>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(Response::new(request.into_body())))
    }
}

/// A long budget that never runs out during a benchmark.
pub const LONG: Duration = Duration::from_secs(3600);
/// A long idle budget.
pub const IDLE: Duration = Duration::from_secs(60);

/// The configurations of this crate that the benchmarks compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// `StreamDeadlineLayer::new(LONG)`.
    Total,
    /// `.idle(IDLE)` as well.
    TotalIdle,
    /// `.first_frame(LONG / 2).idle(IDLE)` as well.
    TotalIdleFirstFrame,
    /// [`Total`](Self::Total) with `.release_unpolled()`.
    TotalReleased,
    /// [`TotalIdle`](Self::TotalIdle) with `.release_unpolled()`.
    TotalIdleReleased,
}

impl Config {
    /// Every configuration, in the order the tables list them.
    pub const ALL: [Config; 5] = [
        Config::Total,
        Config::TotalIdle,
        Config::TotalIdleFirstFrame,
        Config::TotalReleased,
        Config::TotalIdleReleased,
    ];

    /// The layer of this configuration, but for `release_unpolled`, which makes a layer of
    /// another type: [`with_layer!`] adds it where the configuration has it.
    pub fn base_layer(self) -> StreamDeadlineLayer {
        let layer = StreamDeadlineLayer::new(LONG);
        match self {
            Config::Total | Config::TotalReleased => layer,
            Config::TotalIdle | Config::TotalIdleReleased => layer.idle(IDLE),
            Config::TotalIdleFirstFrame => layer.first_frame(LONG / 2).idle(IDLE),
        }
    }

    /// Whether this configuration has `release_unpolled`.
    pub fn releases_unpolled(self) -> bool {
        matches!(self, Config::TotalReleased | Config::TotalIdleReleased)
    }

    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Config::Total => "total",
            Config::TotalIdle => "total+idle",
            Config::TotalIdleFirstFrame => "total+idle+first_frame",
            Config::TotalReleased => "total, release_unpolled",
            Config::TotalIdleReleased => "total+idle, release_unpolled",
        }
    }
}

/// Evaluates `$body` with `$layer` bound to the layer of the [`Config`] `$config`: a
/// `StreamDeadlineLayer`, or for a configuration with `release_unpolled`, a
/// `StreamDeadlineLayer<ReleaseUnpolled>` (a type of its own, so each is measured as users
/// build it, with no dispatch between the two).
#[macro_export]
macro_rules! with_layer {
    ($config:expr, |$layer:ident| $body:expr) => {{
        let config: $crate::Config = $config;
        let base = config.base_layer();
        if config.releases_unpolled() {
            let $layer = base.release_unpolled();
            $body
        } else {
            let $layer = base;
            $body
        }
    }};
}

/// Wraps `body` in this crate's [`DeadlineBody`], through the layer and its response future,
/// as a user's service would (call in a runtime context to have a timer).
pub fn wrap<R, B>(layer: &StreamDeadlineLayer<R>, body: B) -> DeadlineBody<B>
where
    R: Clone,
    B: Body,
    StreamDeadline<Echo, R>:
        Service<Request<B>, Response = Response<DeadlineBody<B>>, Error = BoxError>,
{
    use tower::Layer;
    let mut svc = layer.layer(Echo);
    let mut future = std::pin::pin!(svc.call(Request::new(body)));
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(response) = future.as_mut().poll(&mut cx) {
            return response.expect("no deadline runs out here").into_body();
        }
    }
}

use std::future::Future as _;

/// Polls `body` once with a waker that does nothing: `Some(frames)` if it yielded a frame.
#[inline]
pub fn poll_once<B: Body + ?Sized>(body: Pin<&mut B>, cx: &mut Context<'_>) -> Poll<Option<()>>
where
    B::Error: std::fmt::Debug,
{
    match body.poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => {
            std::hint::black_box(&frame);
            Poll::Ready(Some(()))
        }
        Poll::Ready(Some(Err(err))) => panic!("body failed: {err:?}"),
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

/// Polls `body` to its end with a waker that does nothing; returns the number of frames.
/// `Pending` is polled again at once (the in-memory bodies wake themselves).
#[inline]
pub fn drain<B: Body + ?Sized>(mut body: Pin<&mut B>) -> u64
where
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = 0;
    loop {
        match poll_once(body.as_mut(), &mut cx) {
            Poll::Ready(Some(())) => frames += 1,
            Poll::Ready(None) => return frames,
            Poll::Pending => {}
        }
    }
}

/// A current-thread tokio runtime with timers (and I/O).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The `q`-quantile (0..=1) of sorted `xs`, nearest rank.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A future that returns `Pending` once (waking its task at once), then is `inner`: a
/// response head that has to be waited for.
#[derive(Debug)]
pub struct WaitOnce<F> {
    waited: bool,
    inner: F,
}

impl<F: std::future::Future + Unpin> std::future::Future for WaitOnce<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// Like [`Echo`], but the head has to be waited for once.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlowEcho;

impl<B> Service<Request<B>> for SlowEcho {
    type Response = Response<B>;
    type Error = Infallible;
    type Future = WaitOnce<Ready<Result<Response<B>, Infallible>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        WaitOnce {
            waited: false,
            inner: ready(Ok(Response::new(request.into_body()))),
        }
    }
}

/// Polls `future` to completion with a no-op waker (it must wake itself when `Pending`).
pub fn block_on_noop<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
