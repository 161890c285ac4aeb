//! The load generator: raw tokio sockets, `httparse` for the response head and chunk sizes,
//! and `memchr` to find where events end, so that reading costs the bench's core as little
//! as possible (a hyper client per stream would need a task and a channel hop per frame).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::upstream::now_ns;

/// What the clients of one run share: events (or responses) read so far, and the window of
/// write instants whose events' delays are kept.
#[derive(Default)]
pub struct Tally {
    pub read: AtomicU64,
    timed_from_ns: AtomicU64,
    timed_to_ns: AtomicU64,
}

impl Tally {
    /// Keeps the delays of events written from now on, for `window`.
    pub fn time_from_now(&self, window: Duration) {
        let from = now_ns();
        self.timed_to_ns
            .store(from + window.as_nanos() as u64, Relaxed);
        self.timed_from_ns.store(from, Relaxed);
    }
}

/// Reads an event stream from `GET path` until `stop`; the delays (from the upstream's write
/// to the read here) of the events written within the tally's window, when `timed`.
pub async fn stream(
    addr: SocketAddr,
    path: &str,
    tally: &Tally,
    stop: &CancellationToken,
    timed: bool,
) -> Result<Vec<Duration>, String> {
    let mut tcp = connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let (mut reader, mut events, mut delays) = (Reader::new(), Events::default(), Vec::new());
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(delays),
            read = reader.read_from(&mut tcp) => read?,
        }
        let now = now_ns();
        let (from, to) = (
            tally.timed_from_ns.load(Relaxed),
            tally.timed_to_ns.load(Relaxed),
        );
        let mut count = 0;
        let ended = reader.advance(&mut |data| {
            events.feed(data, &mut |prefix| {
                count += 1;
                if timed {
                    let written = written_ns(prefix);
                    if (from..to).contains(&written) {
                        delays.push(Duration::from_nanos(now.saturating_sub(written)));
                    }
                }
            })
        })?;
        tally.read.fetch_add(count, Relaxed);
        if ended {
            return Err("the event stream ended".to_owned());
        }
    }
}

/// Sends `GET path` and reads its whole response, again and again on one connection, until
/// `stop`; counts each response in the tally.
pub async fn requests(
    addr: SocketAddr,
    path: &str,
    tally: &Tally,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut tcp = connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n");
    let mut reader = Reader::new();
    loop {
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending a request: {e}"))?;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                read = reader.read_from(&mut tcp) => read?,
            }
            if reader.advance(&mut |_| {})? {
                break;
            }
        }
        tally.read.fetch_add(1, Relaxed);
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(tcp)
}

// ----------------------------------------------------------------------------------------

/// Where the reader is within a response.
#[derive(Clone, Copy)]
enum Part {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    /// After the last (empty) chunk: the blank line that ends an empty trailer section.
    Trailer,
}

/// One HTTP/1.1 response after another off a connection's bytes.
struct Reader {
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    part: Part,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            buffer: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            part: Part::Head,
        }
    }

    /// Reads what the socket has (at least one byte); an error at the end of the stream.
    async fn read_from(&mut self, tcp: &mut TcpStream) -> Result<(), String> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buffer.len() {
            return Err("a response head larger than 64 KiB".to_owned());
        }
        match tcp.read(&mut self.buffer[self.end..]).await {
            Ok(0) => Err("the connection was closed".to_owned()),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) => Err(format!("reading: {e}")),
        }
    }

    /// Takes what the buffer holds, giving body bytes to `on_data`; whether a response
    /// ended (then the next bytes are the next response's).
    fn advance(&mut self, on_data: &mut impl FnMut(&[u8])) -> Result<bool, String> {
        loop {
            let available = &self.buffer[self.start..self.end];
            match self.part {
                Part::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut head = httparse::Response::new(&mut headers);
                    let httparse::Status::Complete(len) = head
                        .parse(available)
                        .map_err(|e| format!("a response head: {e}"))?
                    else {
                        return Ok(false);
                    };
                    if head.code != Some(200) {
                        return Err(format!("status {:?}, not 200", head.code));
                    }
                    self.part = body_part(head.headers)?;
                    self.start += len;
                }
                Part::Length(0) => {
                    self.part = Part::Head;
                    return Ok(true);
                }
                Part::Length(left) | Part::ChunkData(left) => {
                    if available.is_empty() {
                        return Ok(false);
                    }
                    let taken = available.len().min(left.try_into().unwrap_or(usize::MAX));
                    on_data(&available[..taken]);
                    self.start += taken;
                    let left = left - taken as u64;
                    self.part = match self.part {
                        Part::Length(_) => Part::Length(left),
                        _ if left == 0 => Part::ChunkEnd,
                        _ => Part::ChunkData(left),
                    };
                }
                Part::ChunkSize => match httparse::parse_chunk_size(available)
                    .map_err(|_| "a malformed chunk size".to_owned())?
                {
                    httparse::Status::Partial => return Ok(false),
                    httparse::Status::Complete((len, size)) => {
                        self.start += len;
                        self.part = match size {
                            0 => Part::Trailer,
                            size => Part::ChunkData(size),
                        };
                    }
                },
                Part::ChunkEnd | Part::Trailer => {
                    if available.len() < 2 {
                        return Ok(false);
                    }
                    if &available[..2] != b"\r\n" {
                        return Err("a chunk not followed by CRLF (or trailers)".to_owned());
                    }
                    self.start += 2;
                    if let Part::Trailer = self.part {
                        self.part = Part::Head;
                        return Ok(true);
                    }
                    self.part = Part::ChunkSize;
                }
            }
        }
    }
}

fn body_part(headers: &[httparse::Header<'_>]) -> Result<Part, String> {
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return if header.value.eq_ignore_ascii_case(b"chunked") {
                Ok(Part::ChunkSize)
            } else {
                Err("a transfer-encoding other than chunked".to_owned())
            };
        }
    }
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            return std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse().ok())
                .map(Part::Length)
                .ok_or_else(|| "a malformed content-length".to_owned());
        }
    }
    Err("a response without a length (read to the connection's end)".to_owned())
}

// ----------------------------------------------------------------------------------------

/// Bytes of an event that hold its write instant: `data: ` and 20 digits.
const PREFIX: usize = 26;

/// Finds the ends of server-sent events (a blank line) in body bytes however they are
/// split, keeping each event's first bytes.
#[derive(Default)]
struct Events {
    prefix: [u8; PREFIX],
    len: usize,
    after_newline: bool,
}

impl Events {
    fn feed(&mut self, data: &[u8], on_event: &mut impl FnMut(&[u8])) {
        let mut from = 0;
        for at in memchr::memchr_iter(b'\n', data) {
            if at == from && self.after_newline {
                on_event(&self.prefix[..self.len.min(PREFIX)]);
                (self.len, self.after_newline) = (0, false);
            } else {
                self.take(&data[from..=at]);
                self.after_newline = true;
            }
            from = at + 1;
        }
        if from < data.len() {
            self.take(&data[from..]);
            self.after_newline = false;
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.len < PREFIX {
            let n = bytes.len().min(PREFIX - self.len);
            self.prefix[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        }
        self.len += bytes.len();
    }
}

/// The write instant an event carries; 0 when it carries none.
fn written_ns(prefix: &[u8]) -> u64 {
    prefix
        .strip_prefix(b"data: ")
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.trim().parse().ok())
        .unwrap_or(0)
}
