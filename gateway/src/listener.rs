//! The proxied port: a listen queue sized for bursts, at most `--max-connections` served at
//! once, connections closed when they wait too long for a request (see `connection_idle`),
//! and an accept loop that neither spins nor floods the log when the process runs out of
//! file descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, Semaphore};

use crate::config::Flags;
use crate::connection_idle::{Activity, Tracked};
use crate::headers::ForwardedFor;
use crate::log::TARGET;
use crate::proxy::Gateway;

/// Waits between accept attempts while out of file descriptors, doubling up to the cap;
/// a connection that closes ends the wait at once.
const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_CAP: Duration = Duration::from_millis(200);
/// A shortage episode ends with an accept this long after its last failure: under sustained
/// pressure, accepts that succeed between failures do not start a new episode (and log line).
const EPISODE_QUIET: Duration = Duration::from_secs(1);

pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves connections until `stop` resolves, then closes the listening socket (new
/// connections are refused from then on) and hands back the connections still open.
/// The most bytes a client connection holds for a client that reads slower than its upstream
/// sends (hyper's default is about 400 KiB): beyond, the upstream is read no further until the
/// client catches up. A request head must fit in it too (nginx allows 32 KiB).
const WRITE_QUEUE_AT_MOST: usize = 64 * 1024;

pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    flags: &Flags,
    stop: impl Future<Output = ()>,
) -> GracefulShutdown {
    let mut server = auto::Builder::new(TokioExecutor::new());
    // No header read timer of hyper's: `connection_idle` bounds the wait for every head
    // (from the accept or the end of the last response, which is sooner than hyper's start
    // at a head's first byte), and hyper's would be armed and dropped for every request.
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(WRITE_QUEUE_AT_MOST);
    server.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(flags.max_connections as usize));
    let freed = Arc::new(Notify::new());
    let mut backoff = BACKOFF_START;
    // While out of descriptors: when the last accept failed, and how many failed.
    let mut shortage: Option<(Instant, u64)> = None;
    tokio::pin!(stop);

    loop {
        // Beyond the limit, connections wait in the kernel's listen queue.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) if out_of_descriptors(&err) => {
                    let failed = match shortage {
                        Some((_, failed)) => failed + 1,
                        None => {
                            tracing::warn!(target: TARGET, %err, "out of file descriptors: accepting more connections as they free up");
                            1
                        }
                    };
                    shortage = Some((Instant::now(), failed));
                    tokio::select! {
                        () = freed.notified() => {}
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut stop => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    continue;
                }
                Err(err) => {
                    // The peer reset the connection before it was accepted, say: nothing to
                    // wait for.
                    tracing::debug!(target: TARGET, %err, "accept failed");
                    continue;
                }
            },
            () = &mut stop => break,
        };
        if let Some((last, failed)) = shortage {
            if last.elapsed() >= EPISODE_QUIET {
                tracing::info!(target: TARGET, failed_accepts = failed, "file descriptors available again");
                shortage = None;
            }
        }
        backoff = BACKOFF_START;
        // Tokens are small writes that should leave at once.
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let activity = Activity::new();
        let requests = activity.clone();
        let forwarded_for = ForwardedFor::new(peer);
        let service = service_fn(move |request| {
            let (gateway, forwarded_for) = (gateway.clone(), forwarded_for.clone());
            let in_flight = requests.start();
            async move {
                let response = gateway.handle(request, forwarded_for).await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        });
        let connection = server
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watcher().watch(connection);
        let freed = freed.clone();
        let head_timeout = flags.header_read_timeout;
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(err) = ended {
                    tracing::debug!(target: TARGET, %peer, %err, "connection ended with an error");
                },
                // No request in flight: dropping the connection closes it at once.
                () = activity.waited(head_timeout) => {
                    tracing::debug!(target: TARGET, %peer, timeout = ?head_timeout, "closed a connection that sent no request head in time");
                }
            }
            drop(slot);
            freed.notify_one();
        });
    }
    drop(listener);
    graceful
}

/// EMFILE or ENFILE (the same numbers on Linux and the BSDs): the process or the system has
/// no file descriptor left for a new connection. ENOMEM is the same kind of shortage.
fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24)) || err.kind() == io::ErrorKind::OutOfMemory
}
