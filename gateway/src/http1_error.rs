//! [`Http1Error`]: what can go wrong on one of the gateway's own HTTP/1.1 connections once
//! it is open (opening it fails with [`ConnectError`](crate::http1_pool::ConnectError)).

use std::fmt;
use std::io;

/// An exchange with an `http://` upstream failed: the connection broke, the upstream closed
/// it too early, or it answered with something that is not HTTP/1.1. The connection is
/// closed with it, never reused.
#[derive(Debug)]
pub enum Http1Error {
    /// Reading from or writing to the upstream failed.
    Io(io::Error),
    /// The upstream closed the connection before the response's head.
    ClosedBeforeHead,
    /// The upstream closed the connection in the middle of the response's body.
    ClosedInBody,
    /// The response is not valid HTTP/1.1; says what is wrong with it.
    Malformed(&'static str),
    /// The request's body did not match the length its head declared.
    RequestLength,
    /// The request's body failed (the caller's doing) before it was all sent.
    RequestBody(tower_stream_deadline::BoxError),
}

impl fmt::Display for Http1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Http1Error::Io(_) => f.write_str("the upstream connection failed"),
            Http1Error::ClosedBeforeHead => {
                f.write_str("the upstream closed the connection before answering")
            }
            Http1Error::ClosedInBody => {
                f.write_str("the upstream closed the connection before the response's end")
            }
            Http1Error::Malformed(what) => {
                write!(f, "the upstream's response is malformed: {what}")
            }
            Http1Error::RequestLength => {
                f.write_str("the request body's length differs from its content-length")
            }
            Http1Error::RequestBody(_) => {
                f.write_str("the request body failed before it was all sent")
            }
        }
    }
}

impl std::error::Error for Http1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Http1Error::Io(err) => Some(err),
            Http1Error::RequestBody(err) => Some(&**err),
            _ => None,
        }
    }
}

impl From<io::Error> for Http1Error {
    fn from(err: io::Error) -> Self {
        Http1Error::Io(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_says_what_happened_and_an_io_failure_keeps_its_cause() {
        let cases = [
            (
                Http1Error::Io(io::Error::from(io::ErrorKind::ConnectionReset)),
                "the upstream connection failed",
            ),
            (
                Http1Error::ClosedBeforeHead,
                "the upstream closed the connection before answering",
            ),
            (
                Http1Error::ClosedInBody,
                "the upstream closed the connection before the response's end",
            ),
            (
                Http1Error::Malformed("a chunk size that is not a number"),
                "the upstream's response is malformed: a chunk size that is not a number",
            ),
            (
                Http1Error::RequestLength,
                "the request body's length differs from its content-length",
            ),
            (
                Http1Error::RequestBody("the client went away".into()),
                "the request body failed before it was all sent",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
        let io = Http1Error::from(io::Error::from(io::ErrorKind::ConnectionReset));
        let cause = std::error::Error::source(&io).expect("the io error is its source");
        assert_eq!(
            cause.downcast_ref::<io::Error>().map(io::Error::kind),
            Some(io::ErrorKind::ConnectionReset)
        );
        let body = Http1Error::RequestBody("the client went away".into());
        let cause = std::error::Error::source(&body).expect("the body's error is its source");
        assert_eq!(cause.to_string(), "the client went away");
    }
}
