//! The two bare proxies: a hyper HTTP/1.1 server and a client, the upstream's response body
//! passed back as it is, headers untouched but for the request's URI, no deadline layer,
//! log, metrics or routing.
//!
//! - **plain hyper:** hyper-util's legacy pooled client: what a proxy written the usual way
//!   with hyper costs;
//! - **hyper + gateway client:** the gateway's own HTTP/1.1 upstream connections
//!   (`stream_deadline_gateway::upstream::client`, each driven where its response body is
//!   polled): the gateway with its features left out, so that the gateway's figure less this
//!   one is what they cost. The bench's requests are GETs: their bodies are not forwarded.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stream_deadline_gateway::config::Flags;
use stream_deadline_gateway::upstream::{ResponseBody, UpstreamClient};

/// Which client a bare proxy forwards with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Client {
    /// hyper-util's legacy pooled client.
    Legacy,
    /// The gateway's own HTTP/1.1 upstream connections.
    Gateway,
}

impl Client {
    /// As named in the variable that starts a child as this proxy.
    pub fn name(self) -> &'static str {
        match self {
            Client::Legacy => "legacy",
            Client::Gateway => "gateway",
        }
    }

    /// The client of that name.
    pub fn from_name(name: &str) -> Option<Client> {
        [Client::Legacy, Client::Gateway]
            .into_iter()
            .find(|client| client.name() == name)
    }
}

/// Runs the proxy in front of `upstream` until this process's stdin closes (the bench
/// ended); prints its address on stdout first.
pub fn run(upstream: &str, client: Client) {
    let upstream: SocketAddr = match upstream.parse() {
        Ok(upstream) => upstream,
        Err(e) => {
            eprintln!("plain proxy: upstream {upstream:?}: {e}");
            return;
        }
    };
    // One worker per core this process may run on (`taskset` narrows it).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => return eprintln!("plain proxy: bind: {e}"),
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        println!("{addr}");
        let _ = std::io::stdout().flush();
        let orphaned = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_line(&mut String::new());
        });
        let served = async move {
            match client {
                Client::Legacy => serve_with_legacy_client(listener, upstream).await,
                Client::Gateway => serve_with_gateway_client(listener, upstream).await,
            }
        };
        tokio::select! {
            () = served => {}
            _ = orphaned => {}
        }
    });
}

/// Serves every connection of `listener` with hyper's HTTP/1.1 server, each request
/// answered by `forward`.
async fn accept<F, Fut, B>(listener: tokio::net::TcpListener, forward: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, hyper::Error>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let forward = forward.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(forward))
                .await;
        });
    }
}

async fn serve_with_legacy_client(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: LegacyClient<_, Incoming> =
        LegacyClient::builder(TokioExecutor::new()).build(connector);
    accept(listener, move |mut request: Request<Incoming>| {
        let client = client.clone();
        async move {
            let Some(uri) = target(upstream, request.uri()) else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            *request.uri_mut() = uri;
            Ok(match client.request(request).await {
                Ok(response) => response.map(Either::Left),
                Err(_) => status(StatusCode::BAD_GATEWAY),
            })
        }
    })
    .await
}

async fn serve_with_gateway_client(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    let base = format!("http://{upstream}");
    let client = match Flags::try_from_iter(["proxy", "--upstream", &base])
        .map_err(|e| e.to_string())
        .and_then(|flags| stream_deadline_gateway::upstream::client(&flags, false))
    {
        Ok(client) => client,
        Err(e) => return eprintln!("hyper + gateway client: {e}"),
    };
    accept(listener, move |request| {
        forward(client.clone(), upstream, request)
    })
    .await
}

async fn forward(
    client: UpstreamClient,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Either<ResponseBody, Empty<Bytes>>>, hyper::Error> {
    let (mut parts, _) = request.into_parts();
    let Some(uri) = target(upstream, &parts.uri) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    parts.uri = uri;
    let request = Request::from_parts(parts, Either::Left(Full::new(Bytes::new())));
    Ok(match client.request(request).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    })
}

/// The request's target on `upstream`.
fn target(upstream: SocketAddr, uri: &Uri) -> Option<Uri> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{upstream}{path}").parse().ok()
}

fn status<B>(code: StatusCode) -> Response<Either<B, Empty<Bytes>>> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}
