//! The gateway's own HTTP/1.1 connections to `http://` upstreams: opened as needed, at most
//! `--upstream-connections` to each, kept idle after a response that ended cleanly and handed
//! to the next request, never handed on after a response that was cut or failed.
//!
//! A connection is not a task of its own: whoever waits for its response, and then whoever
//! reads its response body, drives it (see [`crate::http1_exchange`]). So the frames a read
//! brought in go to the client in one write, and nothing wakes a second task per frame. An
//! idle connection is driven by nobody: it is looked at when it is taken (an upstream that
//! closed it meanwhile is seen then) and every [`SWEEP_EVERY`], when those the upstream
//! closed, and those idle for longer than [`IDLE_FOR`], are closed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use http::Uri;
use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_stream_deadline::BoxError;

use crate::log::TARGET;

/// How long a connection is kept idle (hyper-util's pooled client keeps them as long).
pub const IDLE_FOR: Duration = Duration::from_secs(90);

/// How often idle connections are looked over.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Room made in a connection's read buffer before a read, when less than half of it is left:
/// about the most one read takes in, and so the most bytes of a body passed on as one frame.
/// A body is read only as fast as its client takes it, so an upstream that sends faster
/// holds no more than this per stream here (the rest waits in the sockets).
const READ_ROOM: usize = 8 * 1024;

/// The connections to every `http://` upstream, by authority.
pub struct Http1Pool {
    /// Keyed by the authority as written: the gateway writes each upstream's the same way in
    /// every request it makes (an upstream configured twice in different case gets two
    /// pools), and a string hashes whole, where `Authority` hashes a byte at a time to ignore
    /// case (measured: 930 instructions a lookup, most of a request's hashing).
    hosts: Mutex<HashMap<Box<str>, Arc<Host>>>,
    /// The most connections open to one upstream.
    limit: usize,
    /// Opens connections as hyper-util's client does: every address the name resolves to,
    /// the next one tried when one is slow to answer (happy eyeballs), `TCP_NODELAY` set.
    connector: HttpConnector,
}

/// The connections to one upstream.
pub struct Host {
    /// `http://` and the authority: what the connector dials, and how the upstream is named.
    origin: Uri,
    connector: HttpConnector,
    state: Mutex<HostState>,
    /// Told when a connection comes back or closes: a request waiting at the limit looks again.
    changed: Notify,
    limit: usize,
}

#[derive(Default)]
struct HostState {
    /// The most recently used last: it is taken first, as the one least likely to have been
    /// closed by the upstream's keep-alive timeout.
    idle: Vec<Idle>,
    /// Connections open, idle or not, and being opened.
    open: usize,
    /// Requests waiting for a connection at the limit.
    waiting: usize,
}

/// What an upstream's connections are doing, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Kept alive for the next request.
    pub idle: usize,
    /// Carrying a request, or being opened for one.
    pub busy: usize,
    /// Requests waiting for a connection at `--upstream-connections`.
    pub waiting: usize,
}

/// Counts a request as waiting for a connection until dropped.
struct Waiting<'a>(&'a Host);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state().waiting -= 1;
    }
}

struct Idle {
    connection: Http1Connection,
    since: Instant,
}

/// One connection, taken out of the pool for a request; closed when dropped, unless given back
/// with [`Http1Connection::give_back`].
pub struct Http1Connection {
    pub(crate) io: TcpStream,
    /// What was read and not yet taken: a head's start, a body's next bytes.
    pub(crate) read: BytesMut,
    _open: Open,
}

/// Counts a connection as open to its upstream until dropped.
struct Open(Arc<Host>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.state().open -= 1;
        self.0.changed.notify_one();
    }
}

/// The upstream could not be reached: nothing of the request was sent.
#[derive(Debug)]
pub struct ConnectError {
    origin: Uri,
    source: BoxError,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let authority = self.origin.authority().map_or("", Authority::as_str);
        write!(f, "connecting to {authority} failed")
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl Http1Pool {
    /// A pool with at most `limit` connections open to each upstream. Idle connections are
    /// looked over by a task of the current runtime, which ends with the pool.
    pub fn new(limit: usize, connector: HttpConnector) -> Arc<Http1Pool> {
        let pool = Arc::new(Http1Pool {
            hosts: Mutex::new(HashMap::new()),
            limit: limit.max(1),
            connector,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// The connections to the host and port of `uri`.
    pub fn host(&self, uri: &http::Uri) -> Option<Arc<Host>> {
        let authority = uri.authority()?;
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(host) = hosts.get(authority.as_str()) {
            return Some(host.clone());
        }
        let origin = Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        let host = Arc::new(Host {
            origin,
            connector: self.connector.clone(),
            state: Mutex::default(),
            changed: Notify::new(),
            limit: self.limit,
        });
        hosts.insert(authority.as_str().into(), host.clone());
        Some(host)
    }

    /// What the connections to the authority of `uri` are doing; None before its first request.
    pub fn usage(&self, uri: &http::Uri) -> Option<Usage> {
        let authority = uri.authority()?;
        let host = self
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(authority.as_str())?
            .clone();
        let state = host.state();
        Some(Usage {
            idle: state.idle.len(),
            busy: state.open - state.idle.len(),
            waiting: state.waiting,
        })
    }

    fn hosts(&self) -> Vec<Arc<Host>> {
        let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        hosts.values().cloned().collect()
    }
}

impl Host {
    fn state(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for one request: an idle one that is still open, else a new one while
    /// there is room under the limit, else the first to come back or make room.
    pub async fn connection(self: &Arc<Self>) -> Result<Http1Connection, ConnectError> {
        loop {
            if let Some(found) = self.idle_or_room().await {
                return found;
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Registered now: a connection given back since the look above is seen by this one.
            if let Some(found) = self.idle_or_room().await {
                return found;
            }
            self.state().waiting += 1;
            let _waiting = Waiting(self);
            changed.await;
        }
    }

    /// An idle connection, else a new one if there is room; None at the limit.
    async fn idle_or_room(self: &Arc<Self>) -> Option<Result<Http1Connection, ConnectError>> {
        if let Some(idle) = std::future::poll_fn(|cx| Poll::Ready(self.take_idle(cx))).await {
            return Some(Ok(idle));
        }
        let open = self.try_open()?;
        Some(self.dial(open).await)
    }

    /// The most recently idle connection that can take a request; those that cannot (closed
    /// by the upstream, idle too long) are closed on the way.
    fn take_idle(&self, cx: &mut Context<'_>) -> Option<Http1Connection> {
        loop {
            // Taken out before it is looked at: closing one takes the lock.
            let Idle {
                mut connection,
                since,
            } = self.state().idle.pop()?;
            if since.elapsed() < IDLE_FOR && connection.can_take_a_request(cx) {
                tracing::trace!(target: TARGET, upstream = %self.origin, "upstream connection reused");
                return Some(connection);
            }
        }
    }

    fn try_open(self: &Arc<Self>) -> Option<Open> {
        let mut state = self.state();
        if state.open >= self.limit {
            return None;
        }
        state.open += 1;
        Some(Open(self.clone()))
    }

    async fn dial(&self, open: Open) -> Result<Http1Connection, ConnectError> {
        let failed = |source| ConnectError {
            origin: self.origin.clone(),
            source,
        };
        let stream = (self.connector.clone())
            .oneshot(self.origin.clone())
            .await
            .map_err(|err| failed(err.into()))?;
        tracing::trace!(target: TARGET, upstream = %self.origin, "upstream connection opened");
        Ok(Http1Connection {
            io: stream.into_inner(),
            read: BytesMut::new(),
            _open: open,
        })
    }

    fn give_back(&self, connection: Http1Connection) {
        self.state().idle.push(Idle {
            connection,
            since: Instant::now(),
        });
        self.changed.notify_one();
    }

    /// Closes the idle connections that the upstream closed or that were idle too long.
    fn sweep(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        let idle = std::mem::take(&mut self.state().idle);
        let kept: Vec<Idle> = idle
            .into_iter()
            .filter_map(|mut idle| {
                let keep =
                    idle.since.elapsed() < IDLE_FOR && idle.connection.can_take_a_request(&mut cx);
                keep.then_some(idle)
            })
            .collect();
        let mut state = self.state();
        // Any given back meanwhile are more recent: they stay last.
        let newer = std::mem::replace(&mut state.idle, kept);
        state.idle.extend(newer);
        drop(state);
        // A request that found none idle while they were looked over looks again.
        self.changed.notify_waiters();
    }
}

impl Http1Connection {
    /// Whether the connection waits for a request: the upstream has sent nothing since the
    /// last response, not even its close.
    fn can_take_a_request(&mut self, cx: &mut Context<'_>) -> bool {
        let mut probe = [0; 1];
        let mut probe = ReadBuf::new(&mut probe);
        self.read.is_empty()
            && Pin::new(&mut self.io)
                .poll_read(cx, &mut probe)
                .is_pending()
    }

    /// Reads what the upstream sent next into the read buffer, making room first when less
    /// than half of its 8 KiB of room is left; `Ok(0)` once the upstream closed.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_ROOM / 2 {
            self.read.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// After a response that ended cleanly, and that the upstream lets the connection outlive:
    /// keeps it for the next request, unless the upstream has sent anything since (its close).
    pub fn give_back(mut self, host: &Host, cx: &mut Context<'_>) {
        if self.can_take_a_request(cx) {
            host.give_back(self);
        } else {
            tracing::debug!(target: TARGET, "an upstream connection closed after its response");
        }
    }
}

/// Looks over the idle connections of every upstream, every [`SWEEP_EVERY`], while the pool
/// is in use.
async fn sweep(pool: Weak<Http1Pool>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        for host in pool.hosts() {
            host.sweep();
        }
    }
}
