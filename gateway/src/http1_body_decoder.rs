//! [`BodyDecoder`]: a response body's bytes taken out of what its connection read, all that
//! one read brought in at once.
//!
//! This is why the gateway has its own HTTP/1.1 connections: hyper's client decodes one chunk
//! at a time and hands each to the body through a channel, which for a stream of small
//! server-sent events, each its own chunk, costs more than all the rest of the gateway's work
//! on it. Here the chunks of one read come out as one frame, and the layers above and the
//! client's connection handle that one. Chunk-size lines and trailers are parsed by
//! `httparse`.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use crate::http1_error::Http1Error;
use crate::http1_head::{Framing, MAX_HEADERS};

/// The longest chunk-size line taken (extensions included); hyper takes less.
const SIZE_LINE_AT_MOST: usize = 4096;

/// The most bytes of trailers taken.
const TRAILERS_AT_MOST: usize = 64 * 1024;

/// Where a body is: decoded from the bytes a connection read, whatever they were cut into.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes still to come.
    Length(u64),
    UntilClose,
    /// Chunked, at a chunk-size line.
    Size,
    /// Chunked, inside a chunk with this many bytes still to come.
    Data(u64),
    /// Chunked, at the line end after a chunk's data.
    DataEnd,
    /// Chunked, after the last chunk: the trailers and the empty line.
    Trailers,
    Done,
    /// Malformed here, after data that went out first.
    Failed(&'static str),
}

/// What one [`decode`](BodyDecoder::decode) found.
#[derive(Debug)]
pub enum Decoded {
    /// Data, or the trailers.
    Frame(Frame<Bytes>),
    /// Nothing until more is read.
    More,
    /// The body is over (and had no trailers).
    End,
}

/// The data of one decode: the first piece as it lies in the read buffer, copied into one
/// buffer only when a second piece comes.
#[derive(Default)]
struct Collected {
    data: Option<BytesMut>,
    copied: bool,
}

impl Collected {
    fn push(&mut self, piece: BytesMut, still_buffered: usize) {
        match &mut self.data {
            None => self.data = Some(piece),
            Some(data) if self.copied => data.extend_from_slice(&piece),
            Some(first) => {
                let mut data = BytesMut::with_capacity(first.len() + piece.len() + still_buffered);
                data.extend_from_slice(first);
                data.extend_from_slice(&piece);
                *first = data;
                self.copied = true;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.data.is_none()
    }

    fn decoded(self) -> Decoded {
        match self.data {
            Some(data) => Decoded::Frame(Frame::data(data.freeze())),
            None => Decoded::More,
        }
    }
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Size,
            Framing::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// Whether the whole body, trailers included, has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// How many bytes of the body are still to come, when its length is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(remaining) => Some(remaining),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes out of `read` all of the body it holds, as one frame; what comes after the body
    /// (nothing, from an upstream that keeps to the protocol) is left in it. Malformed input
    /// fails only once the data decoded before it was returned.
    pub fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, Http1Error> {
        match self.state {
            State::Length(_) | State::UntilClose if read.is_empty() => Ok(Decoded::More),
            State::Length(remaining) => {
                let taken = usize::try_from(remaining).map_or(read.len(), |r| r.min(read.len()));
                self.state = match remaining - taken as u64 {
                    0 => State::Done,
                    left => State::Length(left),
                };
                Ok(Decoded::Frame(Frame::data(read.split_to(taken).freeze())))
            }
            State::UntilClose => Ok(Decoded::Frame(Frame::data(read.split().freeze()))),
            State::Done => Ok(Decoded::End),
            State::Failed(what) => Err(Http1Error::Malformed(what)),
            State::Size | State::Data(_) | State::DataEnd | State::Trailers => {
                self.decode_chunked(read)
            }
        }
    }

    /// The upstream closed the connection: the end of a body that only the close ends, or an
    /// error for one that was not over.
    pub fn closed(&mut self) -> Result<(), Http1Error> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(Http1Error::ClosedInBody),
        }
    }

    fn decode_chunked(&mut self, read: &mut BytesMut) -> Result<Decoded, Http1Error> {
        let mut collected = Collected::default();
        loop {
            match self.state {
                State::Size => match httparse::parse_chunk_size(read) {
                    Ok(httparse::Status::Complete((line, size))) => {
                        read.advance(line);
                        self.state = match size {
                            0 => State::Trailers,
                            size => State::Data(size),
                        };
                    }
                    Ok(httparse::Status::Partial) if read.len() <= SIZE_LINE_AT_MOST => break,
                    Ok(httparse::Status::Partial) => {
                        return self.fail("a chunk-size line too long", collected);
                    }
                    Err(_) => return self.fail("a chunk size that is not a number", collected),
                },
                State::Data(_) if read.is_empty() => break,
                State::Data(remaining) => {
                    let taken =
                        usize::try_from(remaining).map_or(read.len(), |r| r.min(read.len()));
                    let piece = read.split_to(taken);
                    collected.push(piece, read.len());
                    self.state = match remaining - taken as u64 {
                        0 => State::DataEnd,
                        left => State::Data(left),
                    };
                }
                State::DataEnd if read.len() < 2 => break,
                State::DataEnd if read.starts_with(b"\r\n") => {
                    read.advance(2);
                    self.state = State::Size;
                }
                State::DataEnd => return self.fail("a chunk longer than its size", collected),
                // No trailers: the end goes with the last data, so the reader knows it is the
                // last and the connection is free at once.
                State::Trailers if read.starts_with(b"\r\n") => {
                    read.advance(2);
                    self.state = State::Done;
                    return Ok(match collected.is_empty() {
                        true => Decoded::End,
                        false => collected.decoded(),
                    });
                }
                // Trailers go out as a frame of their own, after the data.
                State::Trailers if !collected.is_empty() => break,
                State::Trailers => return self.trailers(read),
                State::Length(_) | State::UntilClose | State::Done | State::Failed(_) => break,
            }
        }
        Ok(collected.decoded())
    }

    fn trailers(&mut self, read: &mut BytesMut) -> Result<Decoded, Http1Error> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (length, fields) = match httparse::parse_headers(read, &mut fields) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) if read.len() <= TRAILERS_AT_MOST => {
                return Ok(Decoded::More);
            }
            _ => return Err(Http1Error::Malformed("invalid trailers")),
        };
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for field in fields {
            let name = HeaderName::from_bytes(field.name.as_bytes());
            let value = HeaderValue::from_bytes(field.value);
            let (Ok(name), Ok(value)) = (name, value) else {
                return Err(Http1Error::Malformed("invalid trailers"));
            };
            trailers.append(name, value);
        }
        read.advance(length);
        self.state = State::Done;
        Ok(Decoded::Frame(Frame::trailers(trailers)))
    }

    /// Malformed input: the data before it first, if there is any; the error at once if not.
    /// The body is not done either way: a reader that trusts `is_end_stream` must not take a
    /// failed body for a whole one.
    fn fail(&mut self, what: &'static str, collected: Collected) -> Result<Decoded, Http1Error> {
        self.state = State::Failed(what);
        if collected.is_empty() {
            return Err(Http1Error::Malformed(what));
        }
        Ok(collected.decoded())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What a decoder made of a body's bytes.
    struct Read {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        /// What came after the body.
        left: Vec<u8>,
    }

    /// Feeds `wire` to a decoder in the pieces `cuts` make of it, as reads would bring it in.
    fn decode_in_reads(framing: Framing, wire: &[u8], cuts: &[usize]) -> Result<Read, Http1Error> {
        let mut decoder = BodyDecoder::new(framing);
        let mut read = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut from = 0;
        let mut edges: Vec<usize> = cuts.iter().map(|&cut| cut.min(wire.len())).collect();
        edges.sort_unstable();
        edges.push(wire.len());
        for to in edges {
            read.extend_from_slice(&wire[from..to.max(from)]);
            from = to.max(from);
            while let Decoded::Frame(frame) = decoder.decode(&mut read)? {
                match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                }
            }
        }
        if !decoder.is_done() {
            decoder.closed()?;
        }
        Ok(Read {
            data,
            trailers,
            left: read.to_vec(),
        })
    }

    /// `chunks` sent chunked, with `trailers` text (whole lines) and a final empty line.
    fn chunked(chunks: &[Vec<u8>], trailers: &str) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in chunks.iter().filter(|chunk| !chunk.is_empty()) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
        wire
    }

    proptest! {
        #[test]
        fn chunked_bodies_decode_to_their_bytes_however_reads_cut_them(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..12),
            cuts in prop::collection::vec(0usize..4000, 0..8),
            with_trailers in any::<bool>(),
            after in prop::collection::vec(any::<u8>(), 0..4),
        ) {
            let trailers = if with_trailers { "grpc-status: 0\r\nx-a: b\r\n" } else { "" };
            let mut wire = chunked(&chunks, trailers);
            wire.extend_from_slice(&after);
            let read = decode_in_reads(Framing::Chunked, &wire, &cuts).unwrap();
            prop_assert_eq!(read.data, chunks.concat());
            prop_assert_eq!(
                read.trailers.map(|t| t["grpc-status"].clone()),
                with_trailers.then(|| HeaderValue::from_static("0"))
            );
            prop_assert_eq!(read.left, after);
        }

        #[test]
        fn any_bytes_decode_or_fail_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(0usize..600, 0..4),
        ) {
            for framing in [Framing::Chunked, Framing::Length(300), Framing::UntilClose] {
                let _ = decode_in_reads(framing, &bytes, &cuts);
            }
        }

        #[test]
        fn bodies_of_a_length_end_at_it_however_reads_cut_them(
            body in prop::collection::vec(any::<u8>(), 1..2000),
            cuts in prop::collection::vec(0usize..2100, 0..8),
            after in prop::collection::vec(any::<u8>(), 0..4),
        ) {
            let wire = [&body[..], &after[..]].concat();
            let framing = Framing::Length(body.len() as u64);
            let read = decode_in_reads(framing, &wire, &cuts).unwrap();
            prop_assert_eq!(read.data, body);
            prop_assert!(read.trailers.is_none());
            prop_assert_eq!(read.left, after);
        }
    }

    #[test]
    fn every_chunk_one_read_brought_comes_out_as_one_frame_with_the_end() {
        let events: Vec<Vec<u8>> = (0..64).map(|n| format!("data: {n}\n\n").into()).collect();
        let mut read = BytesMut::from(&chunked(&events, "")[..]);
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let Decoded::Frame(frame) = decoder.decode(&mut read).unwrap() else {
            panic!("a frame");
        };
        assert_eq!(frame.into_data().unwrap(), events.concat());
        assert!(decoder.is_done(), "the end came with the data");
        assert!(read.is_empty());
        assert!(matches!(decoder.decode(&mut read), Ok(Decoded::End)));
    }

    #[test]
    fn malformed_chunks_fail_after_the_data_before_them() {
        for (wire, before, what) in [
            (
                &b"5\r\nhello\r\nnot-a-size\r\n"[..],
                "hello",
                "a chunk size that is not a number",
            ),
            (
                b"5\r\nhello\r\n3\r\nabcdef\r\n",
                "helloabc",
                "a chunk longer than its size",
            ),
            (
                b"5\r\nhello\r\n1ffffffffffffffff\r\n",
                "hello",
                "a chunk size that is not a number",
            ),
        ] {
            let mut read = BytesMut::from(wire);
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            match decoder.decode(&mut read) {
                Ok(Decoded::Frame(frame)) => assert_eq!(frame.into_data().unwrap(), before),
                other => panic!("{other:?}"),
            }
            match decoder.decode(&mut read) {
                Err(Http1Error::Malformed(found)) => assert_eq!(found, what),
                other => panic!("{other:?}"),
            }
            assert!(!decoder.is_done(), "a failed body is not a whole one");
        }
        let mut endless = BytesMut::from(&[b'a'; SIZE_LINE_AT_MOST + 1][..]);
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        assert!(
            decoder.decode(&mut endless).is_err(),
            "a size line is bounded"
        );
    }

    #[test]
    fn a_close_ends_only_a_body_the_close_delimits() {
        let until_close = decode_in_reads(Framing::UntilClose, b"all of it", &[3]).unwrap();
        assert_eq!(until_close.data, b"all of it");
        for (framing, wire) in [
            (Framing::Length(10), &b"short"[..]),
            (Framing::Chunked, b"5\r\nhello\r\n"),
            (Framing::Chunked, b"5\r\nhel"),
        ] {
            assert!(matches!(
                decode_in_reads(framing, wire, &[]),
                Err(Http1Error::ClosedInBody)
            ));
        }
    }

    #[test]
    fn the_length_still_to_come_is_known_only_for_a_length() {
        let mut decoder = BodyDecoder::new(Framing::Length(10));
        assert_eq!(decoder.remaining(), Some(10));
        decoder.decode(&mut BytesMut::from("four")).unwrap();
        assert_eq!(decoder.remaining(), Some(6));
        assert_eq!(BodyDecoder::new(Framing::Empty).remaining(), Some(0));
        assert_eq!(BodyDecoder::new(Framing::Chunked).remaining(), None);
        assert_eq!(BodyDecoder::new(Framing::UntilClose).remaining(), None);
    }
}
