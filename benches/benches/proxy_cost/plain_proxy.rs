//! The plain hyper proxy: hyper-util's legacy pooled client and a hyper HTTP/1.1 server,
//! the upstream's response body passed back as it is, no deadline layer, headers untouched
//! but for the request's URI. What a proxy written the usual way with hyper costs, the
//! reference for what the gateway adds on top of hyper.

use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Runs the proxy in front of `upstream` until this process's stdin closes (the bench
/// ended); prints its address on stdout first.
pub fn run(upstream: &str) {
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
        tokio::select! {
            () = serve(listener, upstream) => {}
            _ = orphaned => {}
        }
    });
}

async fn serve(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut request: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                    let Ok(uri) = format!("http://{upstream}{path}").parse::<Uri>() else {
                        return Ok::<_, hyper::Error>(status(StatusCode::BAD_REQUEST));
                    };
                    *request.uri_mut() = uri;
                    Ok(match client.request(request).await {
                        Ok(response) => response.map(Either::Left),
                        Err(_) => status(StatusCode::BAD_GATEWAY),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn status(code: StatusCode) -> Response<Either<Incoming, Empty<Bytes>>> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}
