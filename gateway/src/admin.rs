//! The admin listener: `GET /metrics` (OpenMetrics text), `GET /healthz` (200 while the
//! process runs) and `GET /readyz` (200 while accepting, 503 once draining).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::log::TARGET;
use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints read.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub draining: Arc<AtomicBool>,
    /// Brings the gauges that change with time (an upstream's time out ending) up to date
    /// before each scrape.
    pub refresh: Box<dyn Fn() + Send + Sync>,
}

/// Serves the admin endpoints until the process ends.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server.http1().timer(TokioTimer::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(target: TARGET, %err, "admin accept failed");
                // Out of descriptors, most likely: the proxied port's loop logs it.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answer = admin.answer(&request);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

impl Admin {
    fn scrape(&self) -> Result<String, std::fmt::Error> {
        (self.refresh)();
        self.metrics.encode()
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match request.uri().path() {
            "/metrics" => match self.scrape() {
                Ok(exposition) => {
                    let mut response = Response::new(Full::new(Bytes::from(exposition)));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
                    response
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.draining.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => text(StatusCode::OK, "ready\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz, /readyz\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
