//! # stream-deadline-gateway
//!
//! A reverse proxy for teams that cannot link a Rust crate: point the `openai` SDK's or
//! LangChain's `base_url` at it instead of at the model server (vLLM, TGI, llama.cpp, a
//! hosted API over https://), and every streamed answer gets a hard time budget, whichever
//! client reads it. The budgets are `tower-stream-deadline`'s layer on the upstream client;
//! `--help` lists the flags.
//!
//! - Every request (method, path, query, headers minus hop-by-hop ones, body) goes to the
//!   upstream through one pooled client; the response streams back frame by frame.
//! - After the head, a late `text/event-stream` answer ends with an OpenAI-style error event
//!   and a clean end (the `openai` SDK raises `APIError`), and the upstream connection is
//!   closed at once, so the model server stops generating. Before the head: `504` (or `502`
//!   when the upstream cannot be reached), with an OpenAI-shaped JSON error.
//! - Request bodies up to 1 MiB are buffered so that a request stuck before its first frame
//!   can be retried with fresh budgets.
//! - With `--heartbeat`, a request that asks for a stream and has no answer after the
//!   interval gets the response head and an SSE comment every interval, so that proxies in
//!   front do not time out while its first token is awaited and retried.
//! - A client's headers may shorten its budgets (`x-request-timeout`,
//!   `x-first-frame-timeout`, `x-idle-timeout`, Envoy's `x-envoy-expected-rq-timeout-ms`),
//!   and the SDKs' `x-stainless-read-timeout` makes the gateway's error come before theirs.
//! - Only a request that asks for a stream (`"stream": true`) gets the first-frame and idle
//!   budgets, counted in tokens (keep-alives and opening events are not); any other has the
//!   total budget only, since a non-streamed answer comes whole, at its end.
//! - One log line per request on stderr (text, or JSON with `--log-format json`), written
//!   when its response has ended, with the request's id; metrics and health on the admin
//!   listener; SIGTERM drains within `--shutdown-grace`.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stream_deadline_gateway::config::Flags;
use stream_deadline_gateway::log::TARGET;
use stream_deadline_gateway::{admin, listener, metrics, proxy, runtime, shutdown, subscriber};

// A short request allocates and frees some two dozen small blocks (its heads, its log, its
// futures): measured with callgrind, glibc's allocator spent 4,200 instructions of the
// request's 45,900 on them, mimalloc 1,000 (BENCHMARKS.md, the gateway hop).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// After the grace, how long the cut responses get to flush their last event and close.
const AFTER_CUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let flags = Flags::from_args();
    // Kept to the end of `main`: dropping it writes out the last log lines.
    let _log_writer = subscriber::init(flags.log_format);
    let threads = runtime::worker_threads(
        flags
            .worker_threads
            .and_then(|n| NonZeroUsize::new(n.into())),
    );
    let runtime = match runtime::build(threads) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("stream-deadline-gateway: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags, threads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stream-deadline-gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags, threads: NonZeroUsize) -> Result<(), String> {
    let listener = listener::bind(flags.listen, flags.backlog)
        .map_err(|err| format!("--listen {}: {err}", flags.listen))?;
    let addr = listener.local_addr().map_err(|err| err.to_string())?;
    let metrics = Arc::new(metrics::Metrics::new());
    let draining = Arc::new(AtomicBool::new(false));
    let cut = shutdown::Cut::new();
    let gateway = Arc::new(proxy::Gateway::new(&flags, metrics.clone(), cut.clone())?);

    // Scripts wait for the `listening` line on stdout and read the addresses from it.
    let mut stdout = std::io::stdout();
    if let Some(admin_addr) = flags.admin_listen.0 {
        let admin_listener = listener::bind(admin_addr, 128)
            .map_err(|err| format!("--admin-listen {admin_addr}: {err}"))?;
        let admin_addr = admin_listener.local_addr().map_err(|err| err.to_string())?;
        let _ = writeln!(
            stdout,
            "stream-deadline-gateway admin on http://{admin_addr}"
        );
        let admin = Arc::new(admin::Admin {
            metrics,
            draining: draining.clone(),
            refresh: Box::new({
                let gateway = gateway.clone();
                move || gateway.refresh_health()
            }),
        });
        tokio::spawn(admin::serve(admin_listener, admin));
    }
    let _ = writeln!(stdout, "stream-deadline-gateway listening on http://{addr}");
    let _ = stdout.flush();
    tracing::info!(
        target: TARGET,
        upstreams = %flags.shown_upstreams(),
        h2c = flags.h2c,
        total = ?flags.total,
        first_frame = %flags.first_frame,
        idle = %flags.idle,
        retries = flags.retries,
        heartbeat = %flags.heartbeat,
        max_connections = flags.max_connections,
        worker_threads = threads.get(),
        "gateway ready"
    );

    if flags.config.is_some() {
        tokio::spawn(reload_on_hangup(gateway.clone()));
    }

    let stop = async {
        let signal = shutdown::signal().await;
        draining.store(true, Ordering::Relaxed);
        tracing::info!(
            target: TARGET,
            signal,
            grace = ?flags.shutdown_grace,
            "shutting down: no new connections; responses in flight may run for the grace"
        );
    };
    let open = listener::serve(listener, gateway, &flags, stop).await;
    let drained = open.shutdown();
    tokio::pin!(drained);
    // A second signal ends the grace early, as operators expect of a second Ctrl-C.
    let cut_because = tokio::select! {
        () = &mut drained => None,
        () = tokio::time::sleep(flags.shutdown_grace) => Some("the shutdown grace is over"),
        signal = shutdown::signal() => Some(signal),
    };
    if let Some(because) = cut_because {
        tracing::info!(target: TARGET, because, "ending the responses still in flight");
        cut.cancel();
        if tokio::time::timeout(AFTER_CUT, &mut drained).await.is_err() {
            tracing::warn!(target: TARGET, "connections still open after the cut; closing them");
        }
    }
    tracing::info!(target: TARGET, "gateway stopped");
    Ok(())
}

/// Reads `--config` again at each SIGHUP; a file that does not load is named in the log, and
/// the last good one stays in force.
async fn reload_on_hangup(gateway: Arc<proxy::Gateway>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!(target: TARGET, "cannot listen for SIGHUP: --config is read at start only");
            return;
        };
        while hangups.recv().await.is_some() {
            match gateway.reload() {
                Ok(()) => tracing::info!(target: TARGET, "--config reloaded"),
                Err(why) => tracing::error!(
                    target: TARGET,
                    error = %why,
                    "--config not reloaded: the last good one stays in force"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = gateway;
}
