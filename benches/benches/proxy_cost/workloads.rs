//! The four workloads, one run each: the contender's proxy started fresh, the clients
//! started, a warm-up, then a measured window; CPU time and counts are read at the window's
//! edges, so start-up and teardown are not in them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Tally};
use crate::contenders::{Contender, Placement, Proxy, process_cpu};
use crate::report::{self, Results};
use crate::upstream;

/// What every run shares.
pub struct Bench {
    pub upstream: SocketAddr,
    pub placement: Placement,
    pub window: Duration,
    pub results: Results,
}

const WARM_UP: Duration = Duration::from_millis(1000);

impl Bench {
    /// 100 streams of events back to back: the proxy's CPU per chunk, chunks per second,
    /// resident memory at the end of the window; then, in a second run under `perf stat`,
    /// its system calls per chunk.
    pub async fn burst(&mut self, contender: &Contender, round: usize) {
        let name = contender.name();
        let Some((run, stop, clients)) = self.start_burst(contender, false).await else {
            return;
        };
        let proxy = run.proxy.as_ref().expect("a proxy");
        let before = Reading::take(proxy, &run.tally);
        tokio::time::sleep(self.window).await;
        let after = Reading::take(proxy, &run.tally);
        let rss = proxy.rss();
        let failed = finish(stop, clients, run.proxy).await;
        let window = after.since(&before);
        self.results
            .record(report::BURST_CPU, name, round, window.cpu_per_unit());
        self.results.record(
            report::BURST_RATE,
            name,
            round,
            window.thousands_per_second(),
        );
        self.results
            .record(report::BURST_RSS, name, round, rss as f64 / 1e6);
        self.results
            .record(report::BURST_BENCH_CORE, name, round, window.bench_core());
        println!(
            "  round {round} {name:>11}: {} chunks, {}, RSS {:.1} MB{}",
            window.count,
            window.describe("chunk"),
            rss as f64 / 1e6,
            failures(failed),
        );
        self.burst_syscalls(contender, round).await;
    }

    /// The system calls per chunk of a burst run under `perf stat`, in a run of its own so
    /// that counting (a tracepoint on every call) does not weigh on the CPU figures.
    async fn burst_syscalls(&mut self, contender: &Contender, round: usize) {
        let name = contender.name();
        let Some((run, stop, clients)) = self.start_burst(contender, true).await else {
            return;
        };
        let proxy = run.proxy.as_ref().expect("a proxy");
        let window = (self.window / 2).max(Duration::from_millis(500));
        let before = Reading::take(proxy, &run.tally);
        tokio::time::sleep(window).await;
        let after = Reading::take(proxy, &run.tally);
        stop.cancel();
        let proxy = run.proxy.expect("a proxy");
        let counted = proxy.stop(before.at);
        let failed = finish(stop, clients, None).await;
        let intervals = match counted {
            Ok(intervals) => intervals,
            Err(why) => {
                println!("  round {round} {name:>11}: system calls not counted: {why}");
                return;
            }
        };
        // The 100 ms intervals wholly inside the window, as a rate over their span.
        let span = after.at - before.at;
        let inside: Vec<_> = intervals
            .iter()
            .filter(|(end, _)| *end >= Duration::from_millis(100) && *end <= span)
            .collect();
        let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
            println!("  round {round} {name:>11}: no whole perf interval within the window");
            return;
        };
        let covered = last.0 - (first.0 - Duration::from_millis(100));
        let syscalls: u64 = inside.iter().map(|(_, count)| count).sum();
        let chunks = after.read - before.read;
        let rate = syscalls as f64 / covered.as_secs_f64();
        let per_chunk = rate / (chunks as f64 / span.as_secs_f64());
        self.results
            .record(report::BURST_SYSCALLS, name, round, per_chunk);
        println!(
            "  round {round} {name:>11}: under perf stat: {syscalls} system calls in {:.1} s, {chunks} chunks in {:.2} s: {per_chunk:.3} per chunk{}",
            covered.as_secs_f64(),
            span.as_secs_f64(),
            failures(failed),
        );
    }

    /// A burst run warmed up: the proxy, 100 clients reading events back to back, and
    /// what stops them.
    async fn start_burst(&self, contender: &Contender, count_syscalls: bool) -> Option<Clients> {
        const STREAMS: usize = 100;
        let run = self.start(contender, count_syscalls)?;
        let addr = run.proxy.as_ref().expect("a proxy").addr;
        let stop = CancellationToken::new();
        let clients = spawn(
            STREAMS,
            Duration::ZERO,
            &run.tally,
            &stop,
            |addr, tally, stop| async move {
                client::stream(addr, "/burst", &tally, &stop, false)
                    .await
                    .map(drop)
            },
            addr,
        )
        .await;
        tokio::time::sleep(WARM_UP).await;
        Some((run, stop, clients))
    }

    /// `streams` streams of an event every 20 ms, started over `ramp` (so their events
    /// do not all fall due at once): the proxy's CPU per chunk, and each event's delay
    /// from the upstream's write to the client's read, for events written in the window.
    pub async fn paced(
        &mut self,
        contender: &Contender,
        round: usize,
        streams: usize,
        ramp: Duration,
    ) {
        let name = contender.name();
        let Some(run) = self.start(contender, false) else {
            return;
        };
        let addr = run.proxy.as_ref().map_or(self.upstream, |proxy| proxy.addr);
        let stop = CancellationToken::new();
        let clients =
            spawn(
                streams,
                ramp,
                &run.tally,
                &stop,
                |addr, tally, stop| async move {
                    client::stream(addr, "/paced", &tally, &stop, true).await
                },
                addr,
            )
            .await;
        tokio::time::sleep(WARM_UP / 2).await;
        let before = run
            .proxy
            .as_ref()
            .map(|proxy| Reading::take(proxy, &run.tally));
        let started = Instant::now();
        let read_before = run.tally.read.load(Relaxed);
        run.tally.time_from_now(self.window);
        tokio::time::sleep(self.window).await;
        let wall = started.elapsed();
        let chunks = run.tally.read.load(Relaxed) - read_before;
        let after = run
            .proxy
            .as_ref()
            .map(|proxy| Reading::take(proxy, &run.tally));
        let rss = run.proxy.as_ref().map(Proxy::rss);
        // The events written near the window's end are still on their way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        let mut delays = Vec::new();
        let mut failed = Vec::new();
        for client in clients {
            match client.await {
                Ok(Ok(seen)) => delays.extend(seen),
                Ok(Err(e)) => failed.push(e),
                Err(e) => failed.push(e.to_string()),
            }
        }
        let failed = finish::<()>(stop, Vec::new(), run.proxy)
            .await
            .into_iter()
            .chain(failed)
            .collect();
        delays.sort();
        let (p50, p99) = (quantile(&delays, 0.5), quantile(&delays, 0.99));
        let cpu = match (before, after) {
            (Some(before), Some(after)) => Some(after.cpu - before.cpu),
            _ => None,
        };
        let (delay_figure, rate_figure) = if streams == 1 {
            (report::SINGLE_P50, None)
        } else {
            (report::PACED_P99, Some(report::PACED_RATE))
        };
        let delay = if streams == 1 { p50 } else { p99 };
        let delay_value = if streams == 1 {
            us(delay)
        } else {
            us(delay) / 1e3
        };
        self.results.record(delay_figure, name, round, delay_value);
        if let Some(rate_figure) = rate_figure {
            self.results.record(
                rate_figure,
                name,
                round,
                chunks as f64 / wall.as_secs_f64() / 1e3,
            );
            if let Some(cpu) = cpu {
                self.results
                    .record(report::PACED_CPU, name, round, per(cpu, chunks));
            }
            if let Some(rss) = rss {
                self.results
                    .record(report::PACED_RSS, name, round, rss as f64 / 1e6);
            }
        }
        println!(
            "  round {round} {name:>11}: {} delays timed, {chunks} chunks in the window ({:.1}k/s); delay p50 {:.0} us, p99 {:.0} us{}{}",
            delays.len(),
            chunks as f64 / wall.as_secs_f64() / 1e3,
            us(p50),
            us(p99),
            cpu.filter(|_| streams > 1).map_or(String::new(), |cpu| {
                format!(
                    "; CPU {:.2} s = {:.2} us per chunk",
                    cpu.as_secs_f64(),
                    per(cpu, chunks)
                )
            }),
            failures(failed),
        );
    }

    /// 50 connections each sending short requests one after another: requests per second
    /// and the proxy's CPU per request.
    pub async fn short(&mut self, contender: &Contender, round: usize) {
        const CONNECTIONS: usize = 50;
        let name = contender.name();
        let Some(run) = self.start(contender, false) else {
            return;
        };
        let proxy = run.proxy.as_ref().expect("a proxy");
        let stop = CancellationToken::new();
        let clients = spawn(CONNECTIONS, Duration::ZERO, &run.tally, &stop, |addr, tally, stop| async move {
            client::requests(addr, "/short", &tally, &stop).await
        }, proxy.addr).await;
        tokio::time::sleep(WARM_UP / 2).await;
        let before = Reading::take(proxy, &run.tally);
        tokio::time::sleep(self.window).await;
        let after = Reading::take(proxy, &run.tally);
        let failed = finish(stop, clients, run.proxy).await;
        let window = after.since(&before);
        self.results.record(
            report::SHORT_RATE,
            name,
            round,
            window.thousands_per_second(),
        );
        self.results
            .record(report::SHORT_CPU, name, round, window.cpu_per_unit());
        self.results
            .record(report::SHORT_BENCH_CORE, name, round, window.bench_core());
        println!(
            "  round {round} {name:>11}: {} requests, {}{}",
            window.count,
            window.describe("request"),
            failures(failed),
        );
    }

    /// The figures over direct of one round: added delay, for each proxy.
    pub fn added(&mut self, round: usize, contenders: &[Contender]) {
        for (figure, added) in [
            (report::PACED_P99, report::PACED_P99_ADDED),
            (report::SINGLE_P50, report::SINGLE_P50_ADDED),
        ] {
            let Some(direct) = self.results.get(figure, "direct", round) else {
                continue;
            };
            for contender in contenders.iter().filter(|c| **c != Contender::Direct) {
                if let Some(value) = self.results.get(figure, contender.name(), round) {
                    self.results
                        .record(added, contender.name(), round, value - direct);
                }
            }
        }
    }

    fn start(&self, contender: &Contender, count_syscalls: bool) -> Option<Run> {
        match Proxy::start(contender, self.upstream, &self.placement, count_syscalls) {
            Ok(proxy) => Some(Run {
                proxy,
                tally: Arc::new(Tally::default()),
            }),
            Err(why) => {
                println!("  {}: not measured: {why}", contender.name());
                None
            }
        }
    }
}

/// A run, what stops its clients, and the clients.
type Clients = (Run, CancellationToken, Vec<JoinHandle<Result<(), String>>>);

/// One run's proxy (none for direct) and what its clients count.
struct Run {
    proxy: Option<Proxy>,
    tally: Arc<Tally>,
}

/// CPU time and counts at one instant.
struct Reading {
    at: Instant,
    cpu: Duration,
    own_cpu: Duration,
    read: u64,
}

/// What happened between two readings.
struct Measured {
    count: u64,
    cpu: Duration,
    wall: Duration,
    own_cpu: Duration,
}

impl Measured {
    fn cpu_per_unit(&self) -> f64 {
        per(self.cpu, self.count)
    }

    fn thousands_per_second(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64() / 1e3
    }

    /// The share of the bench's core this process used, in %.
    fn bench_core(&self) -> f64 {
        self.own_cpu.as_secs_f64() / self.wall.as_secs_f64() * 100.0
    }

    fn describe(&self, unit: &str) -> String {
        format!(
            "{:.2} s ({:.1}k/s), CPU {:.2} s = {:.2} us per {unit}, bench core {:.0}%",
            self.wall.as_secs_f64(),
            self.thousands_per_second(),
            self.cpu.as_secs_f64(),
            self.cpu_per_unit(),
            self.bench_core(),
        )
    }
}

impl Reading {
    fn since(&self, before: &Reading) -> Measured {
        Measured {
            count: self.read - before.read,
            cpu: self.cpu - before.cpu,
            wall: self.at - before.at,
            own_cpu: self.own_cpu - before.own_cpu,
        }
    }

    fn take(proxy: &Proxy, tally: &Tally) -> Reading {
        Reading {
            at: Instant::now(),
            cpu: proxy.cpu(),
            own_cpu: process_cpu(std::process::id()),
            read: tally.read.load(Relaxed),
        }
    }
}

/// Starts `count` clients over `ramp`, each given the address and the tally.
async fn spawn<F, Fut, T>(
    count: usize,
    ramp: Duration,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
    client: F,
    addr: SocketAddr,
) -> Vec<JoinHandle<Result<T, String>>>
where
    F: Fn(SocketAddr, Arc<Tally>, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
    T: Send + 'static,
{
    let start = tokio::time::Instant::now();
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        if !ramp.is_zero() {
            tokio::time::sleep_until(start + ramp.mul_f64(i as f64 / count as f64)).await;
        }
        clients.push(tokio::spawn(client(addr, tally.clone(), stop.clone())));
    }
    clients
}

/// Stops the clients and the proxy, and waits (bounded) until the upstream has closed
/// every connection of the run; the clients' errors.
async fn finish<T>(
    stop: CancellationToken,
    clients: Vec<JoinHandle<Result<T, String>>>,
    proxy: Option<Proxy>,
) -> Vec<String> {
    stop.cancel();
    let mut failed = Vec::new();
    for client in clients {
        match tokio::time::timeout(Duration::from_secs(10), client).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => failed.push(e),
            Ok(Err(e)) => failed.push(e.to_string()),
            Err(_) => failed.push("a client did not stop within 10 s".to_owned()),
        }
    }
    drop(proxy);
    let until = Instant::now() + Duration::from_secs(10);
    while upstream::open_connections() > 0 {
        if Instant::now() > until {
            println!(
                "  (the upstream still has {} connections 10 s after the run)",
                upstream::open_connections()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failed
}

fn failures(failed: Vec<String>) -> String {
    match failed.first() {
        None => String::new(),
        Some(first) => format!("; {} clients FAILED, the first: {first}", failed.len()),
    }
}

fn per(cpu: Duration, count: u64) -> f64 {
    us(cpu) / count.max(1) as f64
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
