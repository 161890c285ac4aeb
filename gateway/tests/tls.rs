//! HTTPS upstreams: rustls with the system's roots or `SSL_CERT_FILE`, HTTP/2 through ALPN,
//! SNI and authority right, and a 502 naming the reason when verification fails.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use support::upstream::{self, Counts};
use support::{Gateway, post, send};

/// A CA the test makes, written to a PEM file, and a server certificate for `localhost`.
struct Pki {
    ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

fn pki(name: &str) -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "stream-deadline-gateway-{}-{name}-ca.pem",
        std::process::id()
    ));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Pki {
        ca_file,
        chain: vec![leaf.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

/// The upstream over TLS, offering `alpn`; its address, counts and the SNI names it saw.
async fn tls_upstream(
    pki: &Pki,
    alpn: &[&[u8]],
) -> (SocketAddr, Arc<Counts>, Arc<Mutex<Vec<String>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), PrivateKeyDer::Pkcs8(pki.key.clone_key()))
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let names = Arc::new(Mutex::new(Vec::new()));
    let (shared, seen) = (counts.clone(), names.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(tls) = acceptor.accept(stream).await else {
                continue;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
            seen.lock().unwrap().push(sni);
            upstream::serve(hyper_util::rt::TokioIo::new(tls), shared.clone());
        }
    });
    (addr, counts, names)
}

fn gateway_for(upstream: SocketAddr, ca_file: &Path) -> Gateway {
    let url = format!("https://localhost:{}", upstream.port());
    Gateway::start(
        &["--upstream", &url, "--total", "500ms"],
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    )
}

#[tokio::test]
async fn an_https_upstream_streams_over_http2_with_sni_and_authority_right() {
    let pki = pki("h2");
    let (upstream, counts, names) = tls_upstream(&pki, &[b"h2", b"http/1.1"]).await;
    let gateway = gateway_for(upstream, &pki.ca_file);

    let answer = send(gateway.addr, post("/v1/babble", &[])).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("t0 "), "{}", answer.body);
    assert!(
        answer.body.contains("total budget of 500ms"),
        "{}",
        answer.body
    );
    let authority = format!("localhost:{}", upstream.port());
    assert_eq!(
        *counts.seen.lock().unwrap(),
        [(http::Version::HTTP_2, authority)]
    );
    assert_eq!(*names.lock().unwrap(), ["localhost"]);
}

#[tokio::test]
async fn an_https_upstream_without_h2_gets_http1_with_its_host() {
    let pki = pki("h1");
    let (upstream, counts, _) = tls_upstream(&pki, &[b"http/1.1"]).await;
    let gateway = gateway_for(upstream, &pki.ca_file);

    let answer = send(gateway.addr, post("/v1/complete", &[])).await;
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    let authority = format!("localhost:{}", upstream.port());
    assert_eq!(
        *counts.seen.lock().unwrap(),
        [(http::Version::HTTP_11, authority)]
    );
}

#[tokio::test]
async fn a_certificate_that_fails_verification_answers_502_naming_the_reason() {
    let (served, other) = (pki("served"), pki("other"));
    let (upstream, counts, _) = tls_upstream(&served, &[b"h2", b"http/1.1"]).await;
    let gateway = gateway_for(upstream, &other.ca_file);

    let answer = send(gateway.addr, post("/v1/complete", &[])).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(error["error"]["code"], "upstream_tls_error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
    assert_eq!(Counts::get(&counts.requests), 0);
}

#[tokio::test]
async fn an_https_upstream_named_only_in_the_policy_file_is_verified_and_reached() {
    let pki = pki("policy");
    let (upstream, counts, _) = tls_upstream(&pki, &[b"h2", b"http/1.1"]).await;
    let file = std::env::temp_dir().join(format!(
        "stream-deadline-gateway-{}-policy.toml",
        std::process::id()
    ));
    let url = format!("https://localhost:{}", upstream.port());
    std::fs::write(
        &file,
        format!("[models.\"hosted\"]\nupstreams = [\"{url}\"]\n"),
    )
    .unwrap();
    // The flags' upstream is plain http: only the policy file names the https:// one.
    let gateway = Gateway::start(
        &[
            "--upstream",
            "http://127.0.0.1:9",
            "--config",
            file.to_str().unwrap(),
        ],
        &[("SSL_CERT_FILE", pki.ca_file.to_str().unwrap())],
    );
    let request = http::Request::post("/v1/complete")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"hosted","stream":true}"#,
        )))
        .unwrap();
    let answer = send(gateway.addr, request).await;
    let _ = std::fs::remove_file(&file);
    assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    assert_eq!(counts.seen.lock().unwrap().len(), 1);
}
