//! # A stuck batch of OpenAI calls, reproduced on a paused clock
//!
//! The OpenAI stuck-requests article on stream timeouts and retry sent 1000 OpenAI calls in
//! 10 batches of 100, each batch run concurrently with `asyncio.gather`. A few calls got stuck for
//! minutes before their first token, and each stuck call held up its whole batch:
//!
//! | article's variant | total | speed-up |
//! |---|---|---|
//! | no timeout | 13 min 10 s | 1x |
//! | `stream=True, timeout=10` + tenacity, 3 attempts | 1 min 39 s | 8x |
//! | `stream=True, timeout=20` + tenacity, 3 attempts | 2 min 42 s | 5x |
//!
//! This example runs the same experiment against an in-process stand-in for the model
//! server, three ways: (a) no deadline, (b) [`StreamDeadlineLayer`] with
//! `first_frame(10s)` under `RetryLayer::new(RetryFirstFrame::new(2))` (3 attempts, like
//! tenacity's `stop_after_attempt(3)`), and (c) the same with `first_frame(20s)`. Every
//! call reads its whole body. It runs on tokio's paused clock, which jumps ahead whenever
//! every task waits on a timer, so tens of simulated minutes take about a second:
//!
//! ```text
//! cargo run --example stuck_batch
//! cargo run --example stuck_batch -- --stuck-rate 0.02 --stuck-for 300s --seed 11
//! ```
//!
//! ## Two replicas, one often stuck: failover on the attempt number
//!
//! With `--replicas P,P..` the stand-in is several replicas of one model, each attempt at
//! replica `r` stuck with probability `P[r]`; the calls take turns for their first attempt
//! (call `i` to replica `i % n`). Three variants: no deadline; `first_frame(10s)` with 3
//! attempts, each retry on the replica of the call's first attempt; and the same with each
//! retry on the next replica (failover):
//!
//! ```text
//! cargo run --example stuck_batch -- --replicas 0.2,0.01
//! ```
//!
//! The router is the pattern for any tower stack that retries or hedges across backends:
//! [`RetryFirstFrame`] (and `HedgeFirstFrame`) mark each attempt with its
//! [`Attempt`] number in the request's extensions, and a service *inside* the retry and
//! deadline layers reads it with [`Attempt::of`] to pick the backend:
//!
//! ```text
//! ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryFirstFrame::new(2)))   // marks attempts 2 and 3
//!     .layer(StreamDeadlineLayer::new(total).first_frame(budget))
//!     .service(service_fn(|request| {
//!         let attempt = Attempt::of(&request).number();  // 1, 2, 3
//!         backends[(first_backend + attempt - 1) % backends.len()].call(request)
//!     }))
//! ```
//!
//! ## What the stand-in models
//!
//! - A `tower::service_fn` answering at once with headers and a streaming body: the first
//!   frame after a sampled latency, then `--tokens` frames `--token-gap` apart (the head
//!   arrives at once, so only a first-*frame* budget can see a stuck call).
//! - Each *attempt* is stuck with probability `--stuck-rate`; a stuck attempt's first frame
//!   comes after `--stuck-for` instead of `--normal-first-token`. A retry is a fresh draw.
//! - Draws are keyed by (seed, call, attempt), so the three variants meet the same stuck
//!   calls on their first attempts, and a run is the same every time. With `--replicas`, an
//!   attempt's draw is the same whichever replica it goes to, and is stuck there if it falls
//!   below that replica's rate.
//!
//! The defaults are read off the article's own figures: the 20 s run is about 6.3 s per batch
//! slower than the 10 s run, so about 63 % of batches held a stuck call, which is a 1 %
//! stuck rate per call; a batch with no stuck call takes about 5 s (2 s to 5 s per call);
//! and 13 min 10 s spread over those stuck batches means stuck for about two minutes.
//!
//! ## What it leaves out
//!
//! Network, connection pools and HTTP/2 stream limits, rate limiting (429s), server load
//! that makes stuck calls cluster in time, answers of varying length, the `openai` client's
//! own 600 s timeout and retries, and tenacity retrying *any* error (here only first-frame
//! deadlines are retried). A stuck attempt here does answer in the end; the article's may
//! not have. With `--replicas`, a replica's stuck attempts are drawn independently: a
//! replica that is stuck for a while (and that the gateway's passive health would leave
//! out) is not modelled.

use std::convert::Infallible;
use std::future::ready;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use futures::stream::{self, Stream, StreamExt};
use http::{Request, Response};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::{Instant, sleep};
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_stream_deadline::{Attempt, BoxError, RetryFirstFrame, StreamDeadlineLayer};

/// Retries after the first attempt: tenacity's `stop_after_attempt(3)`.
const RETRIES: usize = 2;
/// What every frame carries: one OpenAI-style chunk with one token.
const TOKEN: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";

const USAGE: &str = "\
usage: cargo run --example stuck_batch -- [flags]

  --stuck-rate P                chance that an attempt is stuck      [0.01]
  --stuck-for D[..D]            how long a stuck attempt waits       [60s..180s]
  --normal-first-token D[..D]   first-token latency otherwise        [1s..4s]
  --tokens N                    frames per answer                    [50]
  --token-gap D                 gap between frames                   [20ms]
  --batches N                   batches, run one after another       [10]
  --batch-size N                calls per batch, run concurrently    [100]
  --seed N                      seed of the draws                    [7]
  --replicas P,P..              replicas, each attempt at replica r stuck
                                with p = P[r]; replaces --stuck-rate  [one replica]

durations: 20ms, 4s, 1.5s, 3m; D..D is drawn uniformly.";

/// The article's figures for the three variants, in order: (total, speed-up).
const ARTICLE: [(&str, &str); 3] = [
    ("13 min 10 s", "1x"),
    ("1 min 39 s", "8x"),
    ("2 min 42 s", "5x"),
];

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    if std::env::args().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(config) => Arc::new(config),
        Err(why) => {
            eprintln!("{why}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!("{config}\n");

    let wall = std::time::Instant::now();
    let mut reports = Vec::new();
    if config.replicas.is_some() {
        for variant in [None, Some(Retry::SameReplica), Some(Retry::Failover)] {
            reports.push(run_replicas(&config, variant).await);
        }
        print_replicas_table(&reports);
    } else {
        for first_frame in [None, Some(10), Some(20)] {
            reports.push(run_variant(&config, first_frame.map(Duration::from_secs)).await);
        }
        print_table(&reports);
    }
    print_batches(&reports);
    println!(
        "\nreal wall time for all three: {:.2} s",
        wall.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// The experiment.
// ---------------------------------------------------------------------------------------

/// What one variant measured.
struct Report {
    label: String,
    total: Duration,
    batches: Vec<Duration>,
    attempts: u32,
    stuck: usize,
    failed: usize,
    /// Attempts and stuck attempts at each replica.
    replicas: Vec<(usize, usize)>,
}

/// Where a retry of a call goes, with several replicas.
#[derive(Clone, Copy)]
enum Retry {
    /// To the replica of the call's first attempt.
    SameReplica,
    /// To the next replica: attempt `k` of call `i` to replica `(i + k - 1) % n`.
    Failover,
}

/// Runs every batch against a fresh stand-in, with the deadline and retry layers when
/// `first_frame` is set, and without any deadline otherwise.
async fn run_variant(config: &Arc<Config>, first_frame: Option<Duration>) -> Report {
    let server = StandIn::new(config.clone());
    let (label, (total, batches, failed)) = match first_frame {
        None => (
            "no deadline".to_owned(),
            run_batches(config, server.service()).await,
        ),
        Some(budget) => {
            let svc = ServiceBuilder::new()
                // Outside the deadline layer, so that each attempt gets its own budget.
                .layer(RetryLayer::new(RetryFirstFrame::new(RETRIES)))
                // No total budget: like the article, only the wait for the first token is bounded.
                .layer(StreamDeadlineLayer::new(Duration::MAX).first_frame(budget))
                .service(server.service());
            let label = format!(
                "first_frame({}s), {} attempts",
                budget.as_secs(),
                RETRIES + 1
            );
            (label, run_batches(config, svc).await)
        }
    };
    server.report(label, total, batches, failed)
}

/// Runs every batch against fresh replicas: without any deadline when `retry` is `None`,
/// otherwise with `first_frame(10s)`, 3 attempts, each retry routed as `retry` says.
async fn run_replicas(config: &Arc<Config>, retry: Option<Retry>) -> Report {
    let server = StandIn::new(config.clone());
    let router = server.router(retry);
    let (label, (total, batches, failed)) = match retry {
        None => ("no deadline".to_owned(), run_batches(config, router).await),
        Some(retry) => {
            let svc = ServiceBuilder::new()
                .layer(RetryLayer::new(RetryFirstFrame::new(RETRIES)))
                .layer(StreamDeadlineLayer::new(Duration::MAX).first_frame(REPLICAS_BUDGET))
                .service(router);
            let label = match retry {
                Retry::SameReplica => "first_frame(10s), 3 attempts, same replica",
                Retry::Failover => "first_frame(10s), 3 attempts, failover",
            };
            (label.to_owned(), run_batches(config, svc).await)
        }
    };
    server.report(label, total, batches, failed)
}

/// The article's loop: batch after batch, the calls of one batch all at once (`join_all`, like
/// `asyncio.gather`), so a batch lasts as long as its slowest call. Returns the simulated
/// total, each batch's time, and how many calls failed.
async fn run_batches<S, B>(config: &Config, svc: S) -> (Duration, Vec<Duration>, usize)
where
    S: Service<Request<()>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let mut batches = Vec::with_capacity(config.batches);
    let mut failed = 0;
    for batch in 0..config.batches {
        let batch_start = Instant::now();
        let calls =
            (0..config.batch_size).map(|i| call(svc.clone(), batch * config.batch_size + i));
        failed += join_all(calls).await.iter().filter(|r| r.is_err()).count();
        batches.push(batch_start.elapsed());
    }
    (start.elapsed(), batches, failed)
}

/// One call, read to the end of its body.
async fn call<S, B>(svc: S, id: usize) -> Result<(), BoxError>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut request = Request::new(());
    request.extensions_mut().insert(CallId(id));
    let response = svc.oneshot(request).await.map_err(Into::into)?;
    response.into_body().collect().await.map_err(Into::into)?;
    Ok(())
}

/// The first-frame budget of the variants with several replicas.
const REPLICAS_BUDGET: Duration = Duration::from_secs(10);

fn print_replicas_table(reports: &[Report]) {
    let baseline = reports[0].total.as_secs_f64();
    println!("| variant | simulated total | speed-up | attempts (stuck) per replica | failed |");
    println!("|---|---|---|---|---|");
    for report in reports {
        let replicas: Vec<String> = report
            .replicas
            .iter()
            .map(|(attempts, stuck)| format!("{attempts} ({stuck})"))
            .collect();
        println!(
            "| {} | {} | {:.1}x | {} | {} |",
            report.label,
            minutes(report.total),
            baseline / report.total.as_secs_f64(),
            replicas.join(", "),
            report.failed,
        );
    }
}

fn print_table(reports: &[Report]) {
    let baseline = reports[0].total.as_secs_f64();
    println!(
        "| variant | simulated total | speed-up | attempts (stuck) | failed | article's total | article's speed-up |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (report, (article_total, article_speedup)) in reports.iter().zip(ARTICLE) {
        println!(
            "| {} | {} | {:.1}x | {} ({}) | {} | {article_total} | {article_speedup} |",
            report.label,
            minutes(report.total),
            baseline / report.total.as_secs_f64(),
            report.attempts,
            report.stuck,
            report.failed,
        );
    }
}

fn print_batches(reports: &[Report]) {
    println!("\nper batch, simulated seconds:");
    for report in reports {
        let secs: Vec<String> = report
            .batches
            .iter()
            .map(|b| format!("{:.0}", b.as_secs_f64()))
            .collect();
        println!("  {:<44} {}", report.label, secs.join(" "));
    }
}

/// `13 min 10 s`, the article's way of writing it.
fn minutes(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    match secs / 60 {
        0 => format!("{secs} s"),
        m => format!("{m} min {} s", secs % 60),
    }
}

// ---------------------------------------------------------------------------------------
// The model server stand-in.
// ---------------------------------------------------------------------------------------

/// Which of the 1000 calls a request is; retries carry it along (the request is cloned).
#[derive(Clone, Copy, Debug)]
struct CallId(usize);

/// The stand-in, and what it saw: attempts per call, and attempts and stuck attempts per
/// replica (one replica unless `--replicas`).
#[derive(Clone)]
struct StandIn {
    config: Arc<Config>,
    attempts: Arc<[AtomicU32]>,
    at_replica: Arc<[AtomicUsize]>,
    stuck_at_replica: Arc<[AtomicUsize]>,
}

impl StandIn {
    fn new(config: Arc<Config>) -> Self {
        let calls = config.batches * config.batch_size;
        let replicas = config.stuck_rates().len();
        StandIn {
            config,
            attempts: (0..calls).map(|_| AtomicU32::new(0)).collect(),
            at_replica: (0..replicas).map(|_| AtomicUsize::new(0)).collect(),
            stuck_at_replica: (0..replicas).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// The stand-in as a tower service. It answers at once: the wait is in the body.
    fn service(
        &self,
    ) -> impl Service<Request<()>, Response = Response<TokenBody>, Error = Infallible> + Clone + use<>
    {
        let server = self.clone();
        tower::service_fn(move |req: Request<()>| ready(Ok(server.respond(0, &req))))
    }

    /// The replicas behind a router: a call's first attempt to replica `call % n`, and each
    /// retry (its [`Attempt`] number read from the request) to the same replica or the next.
    /// Without a deadline there are no retries, and both routes are the same.
    fn router(
        &self,
        retry: Option<Retry>,
    ) -> impl Service<Request<()>, Response = Response<TokenBody>, Error = Infallible> + Clone + use<>
    {
        let server = self.clone();
        let replicas = server.at_replica.len();
        tower::service_fn(move |req: Request<()>| {
            let CallId(id) = *req.extensions().get().expect("every call carries its id");
            let moved_on = match retry {
                Some(Retry::Failover) => Attempt::of(&req).number() - 1,
                Some(Retry::SameReplica) | None => 0,
            };
            ready(Ok(server.respond((id + moved_on) % replicas, &req)))
        })
    }

    /// What the variant saw.
    fn report(
        &self,
        label: String,
        total: Duration,
        batches: Vec<Duration>,
        failed: usize,
    ) -> Report {
        let load = |counts: &[AtomicUsize]| -> Vec<usize> {
            counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
        };
        let (attempts, stuck) = (load(&self.at_replica), load(&self.stuck_at_replica));
        Report {
            label,
            total,
            batches,
            attempts: self
                .attempts
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .sum(),
            stuck: stuck.iter().sum(),
            failed,
            replicas: attempts.into_iter().zip(stuck).collect(),
        }
    }

    /// Draws this attempt's fate at `replica` and returns a body that plays it out.
    fn respond(&self, replica: usize, req: &Request<()>) -> Response<TokenBody> {
        let CallId(id) = *req.extensions().get().expect("every call carries its id");
        let attempt = self.attempts[id].fetch_add(1, Ordering::Relaxed);
        self.at_replica[replica].fetch_add(1, Ordering::Relaxed);
        let mut rng = SplitMix64::keyed(self.config.seed, id, attempt);
        let first_token = if rng.unit() < self.config.stuck_rates()[replica] {
            self.stuck_at_replica[replica].fetch_add(1, Ordering::Relaxed);
            self.config.stuck_for.sample(&mut rng)
        } else {
            self.config.normal_first_token.sample(&mut rng)
        };
        let frames = tokens(first_token, self.config.tokens, self.config.token_gap);
        Response::new(StreamBody::new(frames).boxed_unsync())
    }
}

/// The stand-in's answer: a stream of frames (boxed, to name it in signatures).
type TokenBody = UnsyncBoxBody<Bytes, Infallible>;

/// `count` frames: the first after `first`, the rest `gap` apart.
fn tokens(
    first: Duration,
    count: usize,
    gap: Duration,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> {
    stream::iter(0..count).then(move |i| async move {
        sleep(if i == 0 { first } else { gap }).await;
        Ok(Frame::data(Bytes::from_static(TOKEN)))
    })
}

/// SplitMix64: a few lines instead of a dependency, and plenty for drawing latencies.
struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for one attempt of one call: keyed, not shared, so the draws do not
    /// depend on the order in which concurrent calls reach the server.
    fn keyed(seed: u64, call: usize, attempt: u32) -> Self {
        let mut rng = SplitMix64(seed);
        rng.0 ^= rng.next().wrapping_add(call as u64);
        rng.0 ^= rng.next().wrapping_add(u64::from(attempt));
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------------------
// Flags.
// ---------------------------------------------------------------------------------------

/// A duration drawn uniformly from `lo..=hi` (`lo == hi` for a fixed one).
#[derive(Clone, Copy, Debug)]
struct Span {
    lo: Duration,
    hi: Duration,
}

impl Span {
    fn sample(&self, rng: &mut SplitMix64) -> Duration {
        self.lo + (self.hi - self.lo).mul_f64(rng.unit())
    }

    fn parse(s: &str) -> Result<Self, String> {
        let (lo, hi) = s.split_once("..").unwrap_or((s, s));
        let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
        if lo > hi {
            return Err(format!("empty range {s}"));
        }
        Ok(Span { lo, hi })
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{:?}", self.lo)
        } else {
            write!(f, "{:?}..{:?}", self.lo, self.hi)
        }
    }
}

/// `20ms`, `4s`, `1.5s`, `3m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?} (try 20ms, 4s, 3m)");
    let (number, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|at| s.split_at(at))
        .ok_or_else(bad)?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// The stand-in's behaviour and the experiment's size.
struct Config {
    stuck_rate: f64,
    stuck_for: Span,
    normal_first_token: Span,
    tokens: usize,
    token_gap: Duration,
    batches: usize,
    batch_size: usize,
    seed: u64,
    /// With several replicas, the stuck rate of each.
    replicas: Option<Vec<f64>>,
}

impl Config {
    /// The stuck rate of each replica: `--replicas`, or `--stuck-rate` for the one.
    fn stuck_rates(&self) -> &[f64] {
        self.replicas
            .as_deref()
            .unwrap_or(std::slice::from_ref(&self.stuck_rate))
    }

    fn from_args(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut config = Config {
            stuck_rate: 0.01,
            stuck_for: Span::parse("60s..180s")?,
            normal_first_token: Span::parse("1s..4s")?,
            tokens: 50,
            token_gap: Duration::from_millis(20),
            batches: 10,
            batch_size: 100,
            seed: 7,
            replicas: None,
        };
        while let Some(flag) = args.next() {
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            let number = |what| format!("{flag}: {value:?} is not {what}");
            match flag.as_str() {
                "--stuck-rate" => {
                    config.stuck_rate = value.parse().map_err(|_| number("a number"))?;
                }
                "--stuck-for" => config.stuck_for = Span::parse(&value)?,
                "--normal-first-token" => config.normal_first_token = Span::parse(&value)?,
                "--tokens" => config.tokens = value.parse().map_err(|_| number("a count"))?,
                "--token-gap" => config.token_gap = parse_duration(&value)?,
                "--batches" => config.batches = value.parse().map_err(|_| number("a count"))?,
                "--batch-size" => {
                    config.batch_size = value.parse().map_err(|_| number("a count"))?;
                }
                "--seed" => config.seed = value.parse().map_err(|_| number("a number"))?,
                "--replicas" => {
                    let rates = value.split(',').map(|rate| rate.trim().parse::<f64>());
                    let rates = rates
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| number("a list of numbers"))?;
                    config.replicas = Some(rates);
                }
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if !config
            .stuck_rates()
            .iter()
            .all(|rate| (0.0..=1.0).contains(rate))
        {
            return Err("--stuck-rate and --replicas must be between 0 and 1".into());
        }
        if config.batches == 0 || config.batch_size == 0 {
            return Err("--batches and --batch-size must be at least 1".into());
        }
        Ok(config)
    }
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rates: Vec<String> = self.stuck_rates().iter().map(f64::to_string).collect();
        let replicas = match self.stuck_rates().len() {
            1 => String::new(),
            n => format!(" at replica 1..{n}"),
        };
        write!(
            f,
            "{} batches of {} calls; each attempt stuck with p = {}{replicas} for {}, \
             otherwise first token after {}; then {} tokens {:?} apart; seed {}",
            self.batches,
            self.batch_size,
            rates.join(", "),
            self.stuck_for,
            self.normal_first_token,
            self.tokens,
            self.token_gap,
            self.seed,
        )
    }
}
