//! The gateway binary on 127.0.0.1, an upstream model-server stand-in it fronts, and a plain
//! HTTP/1.1 client.

#![allow(dead_code)] // each test file uses part of this

pub mod upstream;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bound on anything a test waits for; never reached in a passing run.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Budgets short enough for a test to see every one of them run out.
pub const SHORT_BUDGETS: [&str; 6] = [
    "--total",
    "600ms",
    "--first-frame",
    "200ms",
    "--idle",
    "200ms",
];

/// What `stream-deadline-gateway --help` prints.
pub fn help() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The gateway, running; killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Gateway {
    /// Starts the binary with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`, then `args`.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stream-deadline-gateway"));
        command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args);
        Gateway::spawn(command, env)
    }

    /// Starts `command` (the binary, or a shell that execs it).
    pub fn spawn(mut command: Command, env: &[(&str, &str)]) -> Gateway {
        command
            .env("RUST_LOG", "stream_deadline_gateway=info,warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the gateway starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut admin = None;
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait();
                panic!(
                    "the gateway exited ({status:?}) before listening: {}",
                    stderr.lock().unwrap()
                );
            };
            stdout.lock().unwrap().push_str(&format!("{line}\n"));
            let addr = line.rsplit("http://").next().map(str::parse::<SocketAddr>);
            match addr {
                Some(Ok(addr)) if line.contains(" admin on ") => admin = Some(addr),
                Some(Ok(addr)) if line.contains(" listening on ") => break addr,
                _ => {}
            }
        };
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Gateway {
            child,
            addr,
            admin,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the gateway has printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls the log until `found` holds, for at most `PATIENCE`.
    pub async fn wait_for_log(&self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if found(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in the gateway's log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The request line of `path` in the log, once it is written (for at most `PATIENCE`).
    pub async fn request_line(&self, path: &str) -> String {
        let needle = format!("path={path} ");
        let log = self
            .wait_for_log("request line", |log| log.contains(&needle))
            .await;
        log.lines()
            .find(|line| line.contains(&needle))
            .unwrap_or_default()
            .to_owned()
    }

    /// Sends a signal (`TERM`, `INT`) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit, for at most `within`.
    pub async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Runs `command` (the binary, expected to refuse its flags), for at most `PATIENCE`: its
/// exit status and stderr. Panics if it is still running then, as a gateway that took its
/// flags would be.
pub fn refused(mut command: Command) -> (ExitStatus, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gateway starts");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?}: still running after {PATIENCE:?}; its flags were taken");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr);
    (status, stderr)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// One request on a new HTTP/1.1 connection, its response read to the end.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Answer {
    let response = send_head(addr, request).await;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("the body ends in time")
        .expect("the body reads without error")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends `request`, which the gateway must answer with its `504` naming everything in
/// `says`: the answer, and how long it took.
pub async fn timed_out(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
    says: &[&str],
) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = send(addr, request).await;
    let took = started.elapsed();
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.body
    );
    for words in says {
        assert!(
            answer.body.contains(words),
            "no {words:?} in {}",
            answer.body
        );
    }
    (answer, took)
}

/// One request on a new HTTP/1.1 connection, up to its response head.
pub async fn send_head(
    addr: SocketAddr,
    mut request: Request<Full<Bytes>>,
) -> Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connects");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    if !request.headers().contains_key(http::header::HOST) {
        let host = http::HeaderValue::from_str(&addr.to_string()).unwrap();
        request.headers_mut().insert(http::header::HOST, host);
    }
    tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("the head comes in time")
        .expect("the request is answered")
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, Request::get(path).body(Full::default()).unwrap()).await
}

/// `POST path` with a small JSON body, plus `headers`.
pub fn post(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
        .unwrap()
}

/// The value of one sample in a Prometheus text exposition (`name{labels}`), if present.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}
