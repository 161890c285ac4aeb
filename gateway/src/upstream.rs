//! The client to the upstreams. `http://` upstreams get the gateway's own HTTP/1.1
//! connections ([`crate::http1_pool`]), each driven where its response is read; h2c
//! (`--h2c`) and `https://` upstreams (rustls with the `ring` provider, HTTP/2 when the server
//! offers it through ALPN) get hyper-util's pooled client, whose HTTP/2 connections carry many
//! requests at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use tower::Service;
use tower_stream_deadline::BoxError;

use crate::config::Flags;
use crate::http1_exchange::{self, Http1Body};
use crate::http1_pool::{ConnectError, Http1Pool, Usage};
use crate::log::TARGET;
use crate::request_body::Streamed;

/// What the upstream client sends: a buffered body (replayable) or a streamed one.
pub type UpstreamBody = Either<Full<Bytes>, Streamed>;
/// What an upstream answers with: a body of hyper-util's client, or of the gateway's own
/// HTTP/1.1 connections.
pub type ResponseBody = Either<hyper::body::Incoming, Http1Body>;

/// The client to every upstream (see the module docs); cheap to clone (the request path
/// clones it for every request: one reference count, not one per part of hyper-util's client).
#[derive(Clone)]
pub struct UpstreamClient(Arc<Clients>);

struct Clients {
    shared: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    /// None with `--h2c`: every http:// upstream speaks HTTP/2.
    http1: Option<Arc<Http1Pool>>,
}

impl UpstreamClient {
    /// Sends `request` (with an absolute URI) to its upstream; the response head.
    pub fn request(
        &self,
        request: Request<UpstreamBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>> {
        match &self.0.http1 {
            Some(pool) if request.uri().scheme() == Some(&http::uri::Scheme::HTTP) => {
                Box::pin(http1_exchange::send(pool, request))
            }
            _ => {
                let sent = self.0.shared.request(request);
                Box::pin(async move { Ok(sent.await?.map(Either::Left)) })
            }
        }
    }

    /// What the gateway's own connections to the upstream of `uri` are doing: None for an
    /// upstream reached through hyper-util's client, or not yet used.
    pub fn usage(&self, uri: &http::Uri) -> Option<Usage> {
        match &self.0.http1 {
            Some(pool) if uri.scheme() == Some(&http::uri::Scheme::HTTP) => pool.usage(uri),
            _ => None,
        }
    }
}

impl Service<Request<UpstreamBody>> for UpstreamClient {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Both wait inside the call, within the request's budgets: for a connection, at the
        // limit of an upstream's connections.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<UpstreamBody>) -> Self::Future {
        self.request(request)
    }
}

/// The client, with trusted roots when `https` (an https:// upstream is in use now) or when a
/// `--config` reload may bring one.
pub fn client(flags: &Flags, https: bool) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // The gateway's own pool dials http:// upstreams alike.
    let plain = http.clone();
    // The TLS connector above it takes https:// URIs.
    http.enforce_http(false);
    let roots = if https {
        trusted_roots()?
    } else if flags.config.is_some() {
        // A reload may bring an https:// upstream: have the roots, if the machine has any.
        trusted_roots().unwrap_or_else(|why| {
            tracing::warn!(target: TARGET, %why, "no trusted roots: --config may not add https:// upstreams");
            RootCertStore::empty()
        })
    } else {
        RootCertStore::empty()
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let shared = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(flags.h2c)
        .build(connector);
    let limit = flags
        .upstream_connections
        .map_or(usize::MAX, |n| n as usize);
    Ok(UpstreamClient(Arc::new(Clients {
        shared,
        http1: (!flags.h2c).then(|| Http1Pool::new(limit, plain)),
    })))
}

/// The system's roots, or the PEM bundle named by `SSL_CERT_FILE` (and the directory named by
/// `SSL_CERT_DIR`) when set: the convention curl, Python's `ssl` and rustls-native-certs share.
fn trusted_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(target: TARGET, %err, "could not load some trusted certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(target: TARGET, ignored, "ignored unparsable trusted certificates");
    }
    if added == 0 {
        return Err(
            "no trusted root certificates for the https:// upstream (system store, or SSL_CERT_FILE)"
                .to_owned(),
        );
    }
    tracing::debug!(target: TARGET, roots = added, "trusted roots loaded");
    Ok(roots)
}

/// Whether the upstream could not be reached at all (connection refused, no route, a failed
/// TLS handshake): nothing of the request was sent.
pub fn refused(err: &(dyn std::error::Error + 'static)) -> bool {
    crate::errors::find::<ConnectError>(err).is_some()
        || crate::errors::find::<hyper_util::client::legacy::Error>(err)
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
}

/// The TLS failure behind an upstream error, if it is one: a certificate that failed
/// verification, say.
pub fn tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    crate::errors::find::<rustls::Error>(err)
}
