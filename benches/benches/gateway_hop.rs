//! Benchmark 7: what the gateway's hop costs. One local upstream streams server-sent events;
//! three contenders read them: a direct connection, `stream-deadline-gateway` with its
//! budgets, and the same gateway with the layer left out (the floor: a plain hyper proxy with
//! the gateway's upstream client, header handling and listener, and no deadline layer,
//! retries, drain body, log line or metrics).
//!
//! `cargo bench -p tower-stream-deadline-benches --bench gateway_hop`
//!
//! Each proxy runs in a child process (this same executable, started with `HOP_PROXY` set),
//! started fresh for every run, so that its CPU time and resident memory are its own. The
//! upstream and the clients run in this process. Contenders alternate within one run, and
//! each measurement is repeated (`HOP_ROUNDS`, default 3), so that noise from other work on
//! the machine lands on all of them alike.
//!
//! 1. Latency: streams of 200 tokens at 5 ms, one at a time, contenders in turn; the time to
//!    the first token, and each token's delay from the upstream's write to the client's read.
//! 2. 1,000 concurrent streams, a token every 20 ms, a 3 s budget (150 tokens): the proxy's
//!    CPU time per relayed chunk and its resident memory per stream, gateway and floor.
//! 3. 8,000 concurrent streams through the gateway, a token every 100 ms forever, a 5 s
//!    budget, clients ramped over 4 s: lateness of each stream's end past its budget, and the
//!    kernel's `ListenOverflows` before and after.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use stream_deadline_gateway::config::Flags;
use stream_deadline_gateway::request_body::{self, BodyLimits, RequestBody};
use stream_deadline_gateway::{headers, listener, metrics, proxy, upstream};
use tokio::net::TcpStream;

/// The instant every timestamp in a token counts from (upstream and clients share it).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn main() {
    if let Ok(kind) = std::env::var("HOP_PROXY") {
        return proxy_child(&kind);
    }
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo bench -- --list` and clippy's runs: nothing to list.
    }
    let rounds: usize = std::env::var("HOP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let only = std::env::var("HOP_ONLY").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let upstream = serve_upstream().await;
        println!("upstream on {upstream}; {rounds} rounds, contenders alternating");
        if only.is_empty() || only == "latency" {
            latency(upstream, rounds).await;
        }
        if only.is_empty() || only == "concurrency" {
            for round in 0..rounds {
                for kind in ["gateway", "plain"] {
                    concurrency(upstream, kind, round).await;
                }
            }
        }
        if only.is_empty() || only == "burst" {
            for round in 0..rounds.min(2) {
                burst(upstream, round).await;
            }
        }
    });
}

// ----------------------------------------------------------------------------------------
// The upstream: `GET /?n=N&every_ms=M&for_ms=D` streams N tokens (0: no limit), one every
// M ms, for at most D ms (0: no limit), each
// `data: <nanoseconds since the epoch at its write>\n\n`, padded to a model chunk's size.

async fn serve_upstream() -> SocketAddr {
    let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 16384).expect("bind upstream");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(tokens(request.uri().query().unwrap_or("")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The upstream's body: tokens as a timer task sends them.
type Tokens = StreamBody<futures::channel::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>>;

fn tokens(query: &str) -> Response<Tokens> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (n, every) = (param("n"), Duration::from_millis(param("every_ms")));
    let until = match param("for_ms") {
        0 => None,
        ms => Some(Instant::now() + Duration::from_millis(ms)),
    };
    let (mut tx, rx) = futures::channel::mpsc::channel(4);
    tokio::spawn(async move {
        use futures::SinkExt as _;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0;
        while n == 0 || sent < n {
            tick.tick().await;
            if until.is_some_and(|until| Instant::now() >= until) {
                return;
            }
            let at = epoch().elapsed().as_nanos();
            // About the size of an OpenAI chat chunk with one word of content.
            let event = format!("data: {at:>20} {:>170}\n\n", "");
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
            sent += 1;
        }
    });
    let mut response = Response::new(StreamBody::new(rx));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

// ----------------------------------------------------------------------------------------
// The proxies, each in a child process.

struct ProxyChild {
    child: Child,
    addr: SocketAddr,
}

impl ProxyChild {
    /// `kind` is `gateway` or `plain`; `total` the gateway's budget.
    fn start(kind: &str, upstream: SocketAddr, total: &str) -> ProxyChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("HOP_PROXY", kind)
            .env("HOP_UPSTREAM", upstream.to_string())
            .env("HOP_TOTAL", total)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the proxy child");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the proxy child's address");
        let addr = line.trim().parse().expect("an address");
        ProxyChild { child, addr }
    }

    /// User plus system CPU time so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces): utime is the 14th field.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    /// Resident set size, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy_child(kind: &str) {
    let upstream = std::env::var("HOP_UPSTREAM").unwrap();
    let total = std::env::var("HOP_TOTAL").unwrap_or_else(|_| "60s".to_owned());
    let args = [
        "gw",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("http://{upstream}"),
        "--total",
        &total,
        "--admin-listen",
        "off",
        "--max-connections",
        "20000",
    ];
    let flags = Flags::try_from_iter(args).expect("flags");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = listener::bind(flags.listen, flags.backlog).expect("bind");
        println!("{}", listener.local_addr().unwrap());
        let _ = std::io::stdout().flush();
        // The child ends with its parent: stdin closes.
        let orphaned = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_line(&mut String::new());
        });
        let serve = async {
            match kind {
                "gateway" => {
                    let metrics = Arc::new(metrics::Metrics::new());
                    let cut = stream_deadline_gateway::shutdown::Cut::new();
                    let gateway = Arc::new(proxy::Gateway::new(&flags, metrics, cut).unwrap());
                    let _ =
                        listener::serve(listener, gateway, &flags, std::future::pending()).await;
                }
                _ => plain_proxy(listener, &flags).await,
            }
        };
        tokio::select! {
            () = serve => {}
            _ = orphaned => {}
        }
    });
}

/// The floor: the gateway's listener settings, upstream client and header handling, and the
/// upstream's body passed back as it is.
async fn plain_proxy(listener: tokio::net::TcpListener, flags: &Flags) {
    let client = upstream::client(flags, flags.any_https()).unwrap();
    let upstream = flags.upstreams[0].clone();
    let (idle, total) = (flags.request_body_idle, flags.total);
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        // As the gateway's listener: no header read timer of hyper's (the gateway bounds
        // heads with a timer per connection, which these clients never run into).
        .header_read_timeout(None);
    let server = Arc::new(server);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream, server) = (client.clone(), upstream.clone(), server.clone());
        let forwarded_for = headers::ForwardedFor::new(peer);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                let forwarded_for = forwarded_for.clone();
                async move {
                    let (mut parts, body) = request.into_parts();
                    parts.uri = upstream.uri_for(&parts.uri).unwrap();
                    headers::prepare_request(&mut parts, &forwarded_for);
                    let limits = BodyLimits::new(idle, tokio::time::Instant::now(), total);
                    let body = match request_body::read(&parts.headers, body, limits).await {
                        Ok(RequestBody::Replayable(bytes)) => {
                            http_body_util::Either::Left(Full::new(bytes))
                        }
                        Ok(RequestBody::Streamed(body)) => http_body_util::Either::Right(body),
                        Err(_) => return Err("request body"),
                    };
                    let response = client
                        .request(Request::from_parts(parts, body))
                        .await
                        .map_err(|_| "upstream")?;
                    let (mut parts, body) = response.into_parts();
                    headers::prepare_response(&mut parts.headers);
                    Ok(Response::from_parts(parts, body))
                }
            });
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

// ----------------------------------------------------------------------------------------
// The clients.

/// What one stream saw: when its first token arrived after the request was sent, each
/// token's delay from the upstream's write, how many tokens, and when the stream ended
/// (after the request was sent).
struct Seen {
    first: Duration,
    delays: Vec<Duration>,
    tokens: usize,
    ended: Duration,
    deadline_event: bool,
}

async fn stream(addr: SocketAddr, path: &str, timestamps: bool) -> Result<Seen, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "bench")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let sent = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let mut body = response.into_body();
    let (mut first, mut delays, mut tokens, mut deadline_event) = (None, Vec::new(), 0, false);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        first.get_or_insert(now - sent);
        for event in data
            .split(|&b| b == b'\n')
            .filter(|line| line.starts_with(b"data: "))
        {
            if event.starts_with(b"data: {") {
                deadline_event = true;
                continue;
            }
            tokens += 1;
            if timestamps {
                let written: u64 = std::str::from_utf8(&event[6..26])
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let arrived = now.duration_since(epoch()).as_nanos() as u64;
                delays.push(Duration::from_nanos(arrived.saturating_sub(written)));
            }
        }
    }
    Ok(Seen {
        first: first.unwrap_or_default(),
        delays,
        tokens,
        ended: sent.elapsed(),
        deadline_event,
    })
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn signed_us(a: Duration, b: Duration) -> f64 {
    us(a) - us(b)
}

// 1. -------------------------------------------------------------------------------------

async fn latency(upstream: SocketAddr, rounds: usize) {
    const STREAMS: usize = 20;
    let path = "/?n=200&every_ms=5";
    println!("\n1. latency: {STREAMS} streams of 200 tokens at 5 ms per contender per round");
    for round in 0..rounds {
        let gateway = ProxyChild::start("gateway", upstream, "60s");
        let plain = ProxyChild::start("plain", upstream, "60s");
        let contenders = [
            ("direct", upstream),
            ("gateway", gateway.addr),
            ("plain", plain.addr),
        ];
        let mut firsts = vec![Vec::new(); 3];
        let mut delays = vec![Vec::new(); 3];
        for _ in 0..STREAMS {
            for (i, (_, addr)) in contenders.iter().enumerate() {
                let seen = stream(*addr, path, true).await.expect("a latency stream");
                assert_eq!(seen.tokens, 200, "a latency stream lost tokens");
                firsts[i].push(seen.first);
                delays[i].extend(seen.delays);
            }
        }
        for list in firsts.iter_mut().chain(delays.iter_mut()) {
            list.sort();
        }
        for (i, (name, _)) in contenders.iter().enumerate() {
            let (f50, f99) = (quantile(&firsts[i], 0.5), quantile(&firsts[i], 0.99));
            let (d50, d99) = (quantile(&delays[i], 0.5), quantile(&delays[i], 0.99));
            let added = if i == 0 {
                String::new()
            } else {
                format!(
                    "; over direct: first token {:+.0} us (median) {:+.0} us (p99), per chunk {:+.0} us (median) {:+.0} us (p99)",
                    signed_us(f50, quantile(&firsts[0], 0.5)),
                    signed_us(f99, quantile(&firsts[0], 0.99)),
                    signed_us(d50, quantile(&delays[0], 0.5)),
                    signed_us(d99, quantile(&delays[0], 0.99)),
                )
            };
            println!(
                "  round {round} {name:>7}: first token {:.0} / {:.0} us, chunk delay {:.0} / {:.0} us (median / p99){added}",
                us(f50),
                us(f99),
                us(d50),
                us(d99)
            );
        }
    }
}

// 2. -------------------------------------------------------------------------------------

async fn concurrency(upstream: SocketAddr, kind: &str, round: usize) {
    const STREAMS: usize = 1000;
    if round == 0 && kind == "gateway" {
        println!("\n2. {STREAMS} concurrent streams, a token every 20 ms, a 3 s budget");
    }
    let proxy = ProxyChild::start(kind, upstream, "3s");
    tokio::time::sleep(Duration::from_millis(200)).await; // the child's runtime settles
    let (cpu0, rss0) = (proxy.cpu(), proxy.rss());
    // The upstream ends each stream of the floor after 3 s; the gateway's at its 3 s budget,
    // so that both relay as many chunks per stream.
    let path = if kind == "gateway" {
        "/?n=0&every_ms=20"
    } else {
        "/?for_ms=3000&every_ms=20"
    };
    let addr = proxy.addr;
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| tokio::spawn(async move { stream(addr, path, false).await }))
        .collect();
    // The peak: every stream open, half way through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss = proxy.rss();
    let (mut chunks, mut failed, mut firsts, mut ends) = (0, 0, Vec::new(), Vec::new());
    for handle in streams {
        match handle.await.unwrap() {
            Ok(seen) => {
                chunks += seen.tokens;
                firsts.push(seen.first);
                ends.push(seen.ended);
            }
            Err(_) => failed += 1,
        }
    }
    let cpu = proxy.cpu() - cpu0;
    firsts.sort();
    ends.sort();
    println!(
        "  round {round} {kind:>7}: {chunks} chunks relayed, {failed} failed, first token {:.1} / {:.1} ms, end {:.2} / {:.2} s (median / p99); CPU {:.2} s = {:.2} us per chunk, {:.2} ms per stream; RSS {:.1} MB idle, +{:.1} KB per stream",
        quantile(&firsts, 0.5).as_secs_f64() * 1e3,
        quantile(&firsts, 0.99).as_secs_f64() * 1e3,
        quantile(&ends, 0.5).as_secs_f64(),
        quantile(&ends, 0.99).as_secs_f64(),
        cpu.as_secs_f64(),
        us(cpu) / chunks.max(1) as f64,
        cpu.as_secs_f64() * 1e3 / STREAMS as f64,
        rss0 as f64 / 1e6,
        (rss.saturating_sub(rss0)) as f64 / 1024.0 / STREAMS as f64,
    );
}

// 3. -------------------------------------------------------------------------------------

fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

async fn burst(upstream: SocketAddr, round: usize) {
    const STREAMS: usize = 8000;
    const RAMP: Duration = Duration::from_secs(4);
    const BUDGET: Duration = Duration::from_secs(5);
    if round == 0 {
        println!(
            "\n3. {STREAMS} concurrent streams through the gateway, a token every 100 ms, a 5 s budget, ramped over {RAMP:?}"
        );
    }
    let proxy = ProxyChild::start("gateway", upstream, "5s");
    let overflows = listen_overflows();
    let addr = proxy.addr;
    let start = Instant::now();
    let mut streams = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        tokio::time::sleep_until((start + RAMP.mul_f64(i as f64 / STREAMS as f64)).into()).await;
        streams.push(tokio::spawn(async move {
            stream(addr, "/?n=0&every_ms=100", false).await
        }));
    }
    let mut late = Vec::with_capacity(STREAMS);
    let (mut failed, mut early, mut no_event) = (0, 0, 0);
    for handle in streams {
        match handle.await.unwrap() {
            Ok(seen) => {
                if seen.ended < BUDGET {
                    early += 1;
                }
                if !seen.deadline_event {
                    no_event += 1;
                }
                late.push(seen.ended.saturating_sub(BUDGET));
            }
            Err(_) => failed += 1,
        }
    }
    late.sort();
    println!(
        "  round {round}: {} streams ended, {failed} failed, {early} before the budget, {no_event} without the deadline event; lateness (from the client's send) median {:.1} ms, p99 {:.1} ms, max {:.1} ms; ListenOverflows +{}",
        late.len(),
        quantile(&late, 0.5).as_secs_f64() * 1e3,
        quantile(&late, 0.99).as_secs_f64() * 1e3,
        late.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        listen_overflows() - overflows,
    );
}
