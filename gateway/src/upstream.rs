//! The one pooled client to the upstream: HTTP/1.1 or h2c over TCP, or HTTPS over rustls
//! (the `ring` provider) with HTTP/2 when the server offers it through ALPN.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use crate::config::Flags;
use crate::log::TARGET;
use crate::request_body::Streamed;

/// What the upstream client sends: a buffered body (replayable) or a streamed one.
pub type UpstreamBody = Either<Full<Bytes>, Streamed>;
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;
/// What an upstream answers with.
pub type ResponseBody = hyper::body::Incoming;

/// The client, with trusted roots when `https` (an https:// upstream is in use now) or when a
/// `--config` reload may bring one.
pub fn client(flags: &Flags, https: bool) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
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
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(flags.h2c)
        .build(connector))
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
    crate::errors::find::<hyper_util::client::legacy::Error>(err)
        .is_some_and(hyper_util::client::legacy::Error::is_connect)
}

/// The TLS failure behind an upstream error, if it is one: a certificate that failed
/// verification, say.
pub fn tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    crate::errors::find::<rustls::Error>(err)
}
