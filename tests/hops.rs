//! Deadline propagation across a chain of three real hyper servers on 127.0.0.1, each with
//! `StreamDeadlineLayer` on its server side:
//!
//! ```text
//! test client ──► hop 1 (800 ms, read+forward grpc-timeout, margin 20 ms) ──proxy──►
//!                 hop 2 (60 s,   read+forward grpc-timeout, margin 20 ms) ──proxy──►
//!                 hop 3 (60 s,   read grpc-timeout) : a frame every 10 ms, forever
//! ```
//!
//! The promises: each hop learns from the `grpc-timeout` the hop before it wrote how much
//! time is left, and sees less of it than the hop before; the endless stream at the far end
//! is dropped near the first hop's deadline (not when its own 60 s run out); frames sent in
//! time reach the client; and a client's `grpc-timeout` can shorten the first hop's budget,
//! never lengthen it, and a malformed one is ignored rather than failing the request.
//!
//! Real time: every bound asserted here has a comment saying why a loaded machine cannot
//! break it. Every wait on the network is bounded and names what did not happen.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, service_fn};
use tower_stream_deadline::{BoxError, Deadline, StreamDeadlineLayer};

/// Hop 1's own total budget: the one that binds all three hops.
const HOP1_BUDGET: Duration = Duration::from_millis(800);
/// The budget of hops 2 and 3 when nothing shorter arrives: long enough that it never binds
/// in these tests, so any cut must come from the propagated deadline.
const OWN_BUDGET: Duration = Duration::from_secs(60);
/// What hops 1 and 2 subtract from the remaining budget they forward.
const MARGIN: Duration = Duration::from_millis(20);
/// The interval between hop 3's frames.
const TICK: Duration = Duration::from_millis(10);

/// The promise under test: hop 3's stream is dropped, and the client's body ends, at most
/// this long after hop 1's deadline. Hop 3 is normally cut by its own (propagated) deadline,
/// which is ~2 margins *earlier* than hop 1's; even if it were not, hop 1's cut closes its
/// connection to hop 2 at its deadline plus a 1 ms timer tick, and the disconnect crosses two
/// loopback hops in a few scheduler wake-ups. 150 ms leaves two orders of magnitude for load.
const CUT_SLACK: Duration = Duration::from_millis(150);
/// Bounded waits for things that normally take milliseconds (a head, a drop signal).
const SIGNAL_WAIT: Duration = Duration::from_secs(2);
/// `grpc-timeout` is written rounded down in the finest unit that fits 8 digits: for any
/// budget under ~27 hours that unit is at most a millisecond.
const ROUNDING: Duration = Duration::from_millis(1);
/// How long a frame may take to cross three loopback hops and still count as "sent in time":
/// a frame hop 3 produced this long before the earliest deadline of the chain must reach the
/// client. Normally the crossing takes well under a millisecond (TCP_NODELAY on every socket,
/// so no Nagle/delayed-ACK stalls); 200 ms covers a badly loaded machine.
const TRANSIT: Duration = Duration::from_millis(200);
/// How many connections a test server accepts before it stops accepting (each run makes one
/// request per hop; the rest is headroom for a client that reconnects).
const MAX_CONNECTIONS: usize = 8;

// ---------------------------------------------------------------------------------------
// What each hop saw.
// ---------------------------------------------------------------------------------------

/// What one hop's handler saw when it was entered.
#[derive(Clone, Debug)]
struct Seen {
    /// When the handler was entered (read right after `remaining`).
    entered: Instant,
    /// The `Deadline` extension the layer inserted.
    deadline: Deadline,
    /// `Deadline::remaining()`, read as the handler's first statement.
    remaining: Duration,
    /// The raw `grpc-timeout` header on the request the handler got: for hops 1 and 2 the
    /// one their layer wrote (to forward), for hop 3 the one hop 2 sent.
    grpc_timeout: Option<String>,
}

/// Shared state a hop's handler records into.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    /// Records what the handler sees in `req`. Called synchronously in the `service_fn`
    /// closure, i.e. inside the layer's `call`, microseconds after the layer started its clock.
    fn record<B>(&self, req: &Request<B>) {
        let deadline = *req
            .extensions()
            .get::<Deadline>()
            .expect("the layer inserts a Deadline into every request it passes inward");
        let remaining = deadline.remaining();
        let entered = Instant::now();
        let grpc_timeout = req.headers().get("grpc-timeout").map(|v| {
            v.to_str()
                .unwrap_or_else(|_| panic!("grpc-timeout is ASCII: {v:?}"))
                .to_owned()
        });
        self.0.lock().unwrap().push(Seen {
            entered,
            deadline,
            remaining,
            grpc_timeout,
        });
    }

    /// The one request this hop handled.
    #[track_caller]
    fn only(&self, hop: &str) -> Seen {
        let seen = self.0.lock().unwrap();
        assert_eq!(seen.len(), 1, "{hop} handled exactly one request: {seen:?}");
        seen[0].clone()
    }
}

/// Parses a `grpc-timeout` value (1 to 8 digits, unit `H M S m u n`), failing the test on
/// anything else: the layer must only ever forward well-formed values.
#[track_caller]
fn parse_grpc_timeout(value: &str, what: &str) -> Duration {
    parse_grpc_value(value)
        .unwrap_or_else(|| panic!("{what}: forwarded a malformed grpc-timeout {value:?}"))
}

fn parse_grpc_value(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Hop 3's endless stream: records, timestamps, and a drop signal.
// ---------------------------------------------------------------------------------------

/// The length of one record.
const RECORD_LEN: usize = 13;

/// Record `i` of hop 3's stream: `frame 000042\n`, always [`RECORD_LEN`] bytes.
fn record(i: usize) -> Bytes {
    Bytes::from(format!("frame {i:06}\n"))
}

/// Sends the instant it is dropped: lives inside hop 3's body stream.
struct DropSignal(mpsc::UnboundedSender<Instant>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(Instant::now());
    }
}

/// What hop 3's stream reports.
#[derive(Clone, Default)]
struct Produced(Arc<Mutex<Vec<Instant>>>);

/// A body stream of records `0, 1, 2, ...`: the first at once, then one every [`TICK`],
/// forever. It owns `guard`, so its drop (the hyper server giving up on the response) is
/// signalled; each record's production instant is logged in `produced`.
fn endless_stream(
    guard: DropSignal,
    produced: Produced,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    futures::stream::unfold(
        (0usize, guard, produced),
        |(i, guard, produced)| async move {
            if i > 0 {
                tokio::time::sleep(TICK).await;
            }
            produced.0.lock().unwrap().push(Instant::now());
            Some((Ok(Frame::data(record(i))), (i + 1, guard, produced)))
        },
    )
}

// ---------------------------------------------------------------------------------------
// Servers and clients.
// ---------------------------------------------------------------------------------------

/// A hyper server on 127.0.0.1; dropping it aborts its accept loop and, with it, every
/// connection it serves (they live in the loop's `JoinSet`).
struct Hop {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Hop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `svc` (a tower service, wrapped with `TowerToHyperService`) on a fresh port, HTTP/1
/// or h2c, accepting at most [`MAX_CONNECTIONS`] connections.
async fn serve<S, B>(svc: S) -> Hop
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        for _ in 0..MAX_CONNECTIONS {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            // Small frames must leave at once, not wait for a delayed ACK.
            let _ = stream.set_nodelay(true);
            let svc = TowerToHyperService::new(svc.clone());
            connections.spawn(async move {
                // A connection ends in an error when a body is cut: that is the point.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
        // Stop accepting; keep serving until the test drops the `Hop`.
        while connections.join_next().await.is_some() {}
    });
    Hop { addr, task }
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// The layer of hops 1 and 2: read `grpc-timeout`, forward what is left of the budget less
/// [`MARGIN`].
fn proxy_layer(total: Duration) -> StreamDeadlineLayer {
    StreamDeadlineLayer::new(total)
        .read_grpc_timeout()
        .forward_grpc_timeout()
        .forward_margin(MARGIN)
}

/// A proxy hop: `layer` around a handler that records what it saw, forwards the request to
/// `next` (same method, path and headers, in particular the `grpc-timeout` the layer wrote)
/// with a hyper_util legacy client, and returns the upstream response with its body
/// streaming, unbuffered.
async fn proxy_hop(layer: StreamDeadlineLayer, next: SocketAddr, log: Log) -> Hop {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector());
    let handler = service_fn(move |req: Request<Incoming>| {
        log.record(&req);
        let client = client.clone();
        async move {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut out = Request::builder()
                .method(req.method().clone())
                .uri(format!("http://{next}{path}"));
            for (name, value) in req.headers() {
                if name != HOST {
                    out = out.header(name, value);
                }
            }
            let out = out.body(req.into_body()).expect("a valid proxied request");
            client.request(out).await
        }
    });
    serve(ServiceBuilder::new().layer(layer).service(handler)).await
}

/// Hop 3: `read_grpc_timeout` with a long own budget, around a handler that records what it
/// saw and streams [`endless_stream`].
async fn streaming_hop(
    log: Log,
    dropped: mpsc::UnboundedSender<Instant>,
    produced: Produced,
) -> Hop {
    let handler = service_fn(move |req: Request<Incoming>| {
        log.record(&req);
        let body = StreamBody::new(endless_stream(
            DropSignal(dropped.clone()),
            produced.clone(),
        ));
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let layer = StreamDeadlineLayer::new(OWN_BUDGET).read_grpc_timeout();
    serve(ServiceBuilder::new().layer(layer).service(handler)).await
}

/// Fails the test, naming `what`, if `fut` takes longer than `limit`.
async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------
// One run through the chain.
// ---------------------------------------------------------------------------------------

/// Everything one call through the chain showed.
#[derive(Debug)]
struct Run {
    what: String,
    /// Just before the test client sent its request.
    start: Instant,
    status: StatusCode,
    /// When the client's body ended (with an error or an early end).
    ended: Instant,
    /// How it ended: `None` for a clean end, else the client's error.
    error: Option<String>,
    /// Every byte the client received.
    bytes: Vec<u8>,
    /// What hops 1, 2 and 3 saw.
    seen: [Seen; 3],
    /// When hop 3's stream was dropped.
    dropped: Instant,
    /// When hop 3 produced each record.
    produced: Vec<Instant>,
}

/// Starts three fresh hops, calls hop 1 with a plain client (with `grpc_timeout` if given),
/// reads the body to its end, and waits for hop 3's stream to be dropped.
async fn run_chain(grpc_timeout: Option<&'static str>) -> Run {
    let what = match grpc_timeout {
        Some(value) => format!("client sent grpc-timeout: {value}"),
        None => "client sent no grpc-timeout".to_owned(),
    };
    let logs: [Log; 3] = Default::default();
    let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel();
    let produced = Produced::default();

    let hop3 = streaming_hop(logs[2].clone(), dropped_tx, produced.clone()).await;
    let hop2 = proxy_hop(proxy_layer(OWN_BUDGET), hop3.addr, logs[1].clone()).await;
    let hop1 = proxy_hop(proxy_layer(HOP1_BUDGET), hop2.addr, logs[0].clone()).await;

    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector());
    let mut req = Request::get(format!("http://{}/generate", hop1.addr))
        .body(Empty::new())
        .unwrap();
    if let Some(value) = grpc_timeout {
        req.headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static(value));
    }

    let start = Instant::now();
    let response = within(
        &format!("{what}: the head from hop 1"),
        SIGNAL_WAIT,
        client.request(req),
    )
    .await
    .unwrap_or_else(|err| panic!("{what}: hop 1 must answer with a head: {err:?}"));
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    // Bounded: if no hop cut the stream, it would run for a minute.
    let error = within(
        &format!("{what}: the client's body to be cut (it streams forever otherwise)"),
        HOP1_BUDGET + SIGNAL_WAIT,
        async {
            loop {
                match body.frame().await {
                    None => break None,
                    Some(Err(err)) => break Some(format!("{err:?}")),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            bytes.extend_from_slice(&data);
                        }
                    }
                }
            }
        },
    )
    .await;
    let ended = Instant::now();

    let dropped = within(
        &format!("{what}: hop 3 to observe the disconnect (its endless stream dropped)"),
        SIGNAL_WAIT,
        dropped_rx.recv(),
    )
    .await
    .expect("the drop signal sends before its sender goes");

    let seen = [
        logs[0].only("hop 1"),
        logs[1].only("hop 2"),
        logs[2].only("hop 3"),
    ];
    let produced = produced.0.lock().unwrap().clone();
    drop((client, hop1, hop2, hop3));
    eprintln!(
        "{what}: status {status}, body ended after {:?} ({}), {} bytes; hop 3 dropped {:?} after start; \
         remaining seen {:?} / {:?} / {:?}; grpc-timeout {:?} / {:?} / {:?}",
        ended - start,
        error.as_deref().unwrap_or("clean end"),
        bytes.len(),
        dropped - start,
        seen[0].remaining,
        seen[1].remaining,
        seen[2].remaining,
        seen[0].grpc_timeout,
        seen[1].grpc_timeout,
        seen[2].grpc_timeout,
    );
    Run {
        what,
        start,
        status,
        ended,
        error,
        bytes,
        seen,
        dropped,
        produced,
    }
}

// ---------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------

impl Run {
    /// Hop 1's absolute deadline.
    fn hop1_deadline(&self) -> Instant {
        self.seen[0].deadline.at()
    }

    /// The earliest deadline anywhere in the chain: nothing can be cut before it.
    fn earliest_deadline(&self) -> Instant {
        self.seen.iter().map(|s| s.deadline.at()).min().unwrap()
    }

    /// Hop 1 ran on a total budget of exactly `budget`, the client's body and hop 3's stream
    /// were cut by the chain's deadlines (not before the earliest, at most [`CUT_SLACK`]
    /// after hop 1's), and the frames sent in time reached the client.
    #[track_caller]
    fn assert_cut_at_hop1_budget(&self, budget: Duration) {
        let what = &self.what;
        assert_eq!(self.status, StatusCode::OK, "{what}: served normally");

        // Hop 1's budget is `budget`: the layer set `at = call + budget`, and its `call` came
        // after the client's `start` and before the handler was entered.
        let at1 = self.hop1_deadline();
        assert!(
            at1 >= self.start + budget,
            "{what}: hop 1's deadline is {:?} after the call, less than its {budget:?} budget",
            at1 - self.start
        );
        assert!(
            at1 <= self.seen[0].entered + budget,
            "{what}: hop 1's deadline is {:?} after its handler was entered: more than {budget:?}",
            at1 - self.seen[0].entered
        );

        // Nothing is cut before a deadline: the crate never fires early, and nothing else
        // ends a stream that runs forever.
        let earliest = self.earliest_deadline();
        assert!(
            self.ended >= earliest,
            "{what}: the client's body ended {:?} before the earliest deadline of the chain",
            earliest - self.ended
        );
        assert!(
            self.dropped >= earliest,
            "{what}: hop 3's stream was dropped {:?} before the earliest deadline of the chain",
            earliest - self.dropped
        );
        // Each hop's deadline is at most one margin (plus rounding) earlier than the one
        // before, so the chain as a whole cuts no earlier than two margins before hop 1.
        assert!(
            earliest + 2 * (MARGIN + ROUNDING) >= at1,
            "{what}: a hop's deadline is {:?} before hop 1's: more than two margins",
            at1 - earliest
        );

        // Cut near hop 1's deadline (see CUT_SLACK for why this bound holds under load).
        assert!(
            self.ended <= at1 + CUT_SLACK,
            "{what}: the client's body ended {:?} after hop 1's deadline (bound {CUT_SLACK:?}); \
             it ended with {:?}",
            self.ended - at1,
            self.error
        );
        assert!(
            self.dropped <= at1 + CUT_SLACK,
            "{what}: hop 3's endless stream was dropped {:?} after hop 1's deadline (bound {CUT_SLACK:?})",
            self.dropped - at1
        );

        // What the client got: records 0, 1, 2, ... in order, none skipped or repeated, the
        // last possibly cut short by the disconnect; and every record hop 3 produced well
        // before the first cut (TRANSIT earlier) among them.
        let mut whole = 0;
        for (i, chunk) in self.bytes.chunks(RECORD_LEN).enumerate() {
            let expected = record(i);
            assert!(
                expected.starts_with(chunk),
                "{what}: the client got {:?} where record {i} was due",
                String::from_utf8_lossy(chunk)
            );
            if chunk.len() == RECORD_LEN {
                whole += 1;
            }
        }
        let in_time = self
            .produced
            .iter()
            .take_while(|&&at| at + TRANSIT <= earliest)
            .count();
        assert!(
            whole >= in_time,
            "{what}: the client got {whole} records, but hop 3 produced {in_time} at least \
             {TRANSIT:?} before the first deadline of the chain ({} produced in all)",
            self.produced.len()
        );
        assert!(
            whole >= 1,
            "{what}: the first record, sent at once, reached the client"
        );
    }

    /// Each hop saw strictly less time than the one before, learned it from the
    /// `grpc-timeout` the hop before wrote, and forwarded no more than what it had left less
    /// the margin. `budget` is hop 1's total budget.
    #[track_caller]
    fn assert_each_hop_sees_less_time(&self, budget: Duration) {
        let what = &self.what;
        let [hop1, hop2, hop3] = &self.seen;
        let forwarded = |seen: &Seen, hop: &str| {
            let value = seen
                .grpc_timeout
                .as_deref()
                .unwrap_or_else(|| panic!("{what}: {hop} got no grpc-timeout"));
            parse_grpc_timeout(value, &format!("{what}: {hop}"))
        };

        // Hop 1: its own budget (or the client's shorter header), less the microseconds
        // between the layer's `call` and the handler's first statement.
        assert!(
            hop1.remaining < budget,
            "{what}: hop 1 saw {:?} left of its {budget:?}",
            hop1.remaining
        );
        // What hop 1 forwarded replaced the client's header: its remaining budget at `call`
        // (at most `budget`) less the margin, rounded down. And rounding down is all it lost:
        // at least what was still left when the handler ran, less the margin and one unit.
        let sent1 = forwarded(hop1, "hop 1");
        assert!(
            sent1 <= budget - MARGIN,
            "{what}: hop 1 forwarded {sent1:?}, more than its {budget:?} budget less the {MARGIN:?} margin"
        );
        assert!(
            sent1 + MARGIN + ROUNDING >= hop1.remaining,
            "{what}: hop 1 forwarded {sent1:?} while it still had {:?} left at its handler",
            hop1.remaining
        );

        // Hop 2: its budget came from hop 1's header (its own is 60 s), so it saw at most
        // that. Strictly less than hop 1 saw: hop 1's header is hop 1's remaining at `call`
        // less 20 ms, and hop 1 read its remaining microseconds after `call` in the same
        // stack frame, so hop 1 would have to be descheduled for 20 ms between two adjacent
        // statements for this to fail.
        assert!(
            hop2.remaining <= sent1,
            "{what}: hop 2 saw {:?} left, more than the {sent1:?} hop 1 forwarded",
            hop2.remaining
        );
        assert!(
            hop2.remaining < hop1.remaining,
            "{what}: hop 2 saw {:?} left, not less than hop 1's {:?}",
            hop2.remaining,
            hop1.remaining
        );
        // Hop 2's remaining budget at `call` is what hop 1 forwarded: it forwards that less
        // the margin, rounded down.
        let sent2 = forwarded(hop2, "hop 2");
        assert!(
            sent2 + MARGIN <= sent1,
            "{what}: hop 2 forwarded {sent2:?}, more than the {sent1:?} it got less the {MARGIN:?} margin"
        );
        assert!(
            sent2 + MARGIN + ROUNDING >= hop2.remaining,
            "{what}: hop 2 forwarded {sent2:?} while it still had {:?} left at its handler",
            hop2.remaining
        );

        // Hop 3: got hop 2's header as written (the proxy copies it), and its budget came
        // from it (its own is 60 s). Strictly less than hop 2 saw, for the reason above.
        assert_eq!(
            hop3.grpc_timeout, hop2.grpc_timeout,
            "{what}: hop 3 got the grpc-timeout hop 2 forwarded"
        );
        assert!(
            hop3.remaining <= sent2,
            "{what}: hop 3 saw {:?} left, more than the {sent2:?} hop 2 forwarded",
            hop3.remaining
        );
        assert!(
            hop3.remaining < hop2.remaining,
            "{what}: hop 3 saw {:?} left, not less than hop 2's {:?}",
            hop3.remaining,
            hop2.remaining
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_hop_stream_is_cut_at_the_first_hop_deadline_and_each_hop_sees_less_time() {
    let run = run_chain(None).await;
    run.assert_each_hop_sees_less_time(HOP1_BUDGET);
    run.assert_cut_at_hop1_budget(HOP1_BUDGET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_grpc_timeout_shortens_the_first_hop_budget_but_never_lengthens_it() {
    // 300 ms < 800 ms: hop 1 runs on 300 ms, and so does everything behind it.
    let shorter = run_chain(Some("300m")).await;
    shorter.assert_each_hop_sees_less_time(Duration::from_millis(300));
    shorter.assert_cut_at_hop1_budget(Duration::from_millis(300));
    // `assert_cut_at_hop1_budget` pinned hop 1's deadline to `call + 300 ms` (between the
    // client's call and hop 1's handler), and the cut to at most CUT_SLACK after it.

    // 5 s > 800 ms: ignored in favour of hop 1's own budget.
    let longer = run_chain(Some("5S")).await;
    longer.assert_each_hop_sees_less_time(HOP1_BUDGET);
    longer.assert_cut_at_hop1_budget(HOP1_BUDGET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_client_grpc_timeout_is_ignored_and_the_request_is_served_and_cut_at_800ms() {
    // A sign, and nine digits: not the gRPC wire format. Served (200, never a 500), on hop
    // 1's own budget.
    for value in ["+5S", "123456789S"] {
        let run = run_chain(Some(value)).await;
        run.assert_each_hop_sees_less_time(HOP1_BUDGET);
        run.assert_cut_at_hop1_budget(HOP1_BUDGET);
    }
}
