//! [`Attempt`]: which attempt at a request this is, so that a router can send a retry or a
//! hedge somewhere else.

use http::Request;

/// Which attempt at a request this is: 1 for the first, 2 for the first retry or hedge, and so
/// on. [`RetryFirstFrame`](struct.RetryFirstFrame.html) (feature `retry`) and
/// [`HedgeFirstFrame`](crate::HedgeFirstFrame)
/// put it in the extensions of every request they send again; a request without one is a
/// first attempt.
///
/// A replica that left one request stuck before its first token is usually stuck for the
/// next one too (an overloaded server, a long prefill queue, a wedged GPU), so a retry is
/// worth more on another backend. A router inside the retry or hedging layer reads the
/// number and picks accordingly: a hand-written `Service` that indexes its backends by it,
/// as below, or a key that a `tower::balance` or `tower::steer` picker reads.
///
/// Numbers count from the request each layer is given: with `tower::retry` outside hedging,
/// the hedges of a retry continue from the retry's number, so two attempts of one request
/// may carry the same number. Keep a set of tried backends in the request's extensions (an
/// `Arc<Mutex<..>>` is shared by every clone) where that matters.
///
/// # Example
///
/// ```
/// use tower_stream_deadline::Attempt;
///
/// /// The backend for an attempt: the first goes to the primary, each retry to the next.
/// fn backend<'a, B>(backends: &'a [&'a str], request: &http::Request<B>) -> &'a str {
///     let attempt = Attempt::of(request).number();
///     backends[(attempt - 1) % backends.len()]
/// }
///
/// let backends = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"];
/// let mut request = http::Request::new(());
/// assert_eq!(backend(&backends, &request), "http://10.0.0.1:8000");
/// let retry = Attempt::of(&request).next();
/// request.extensions_mut().insert(retry);
/// assert_eq!(backend(&backends, &request), "http://10.0.0.2:8000");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt {
    number: usize,
}

impl Attempt {
    /// The first attempt.
    pub const FIRST: Attempt = Attempt { number: 1 };

    /// The attempt `request` is: the one in its extensions, or the first.
    pub fn of<B>(request: &Request<B>) -> Attempt {
        request
            .extensions()
            .get::<Attempt>()
            .copied()
            .unwrap_or(Attempt::FIRST)
    }

    /// Its number, from 1.
    pub fn number(self) -> usize {
        self.number
    }

    /// Whether this is the first attempt.
    pub fn is_first(self) -> bool {
        self.number == 1
    }

    /// The attempt after this one.
    pub fn next(self) -> Attempt {
        Attempt {
            number: self.number.saturating_add(1),
        }
    }

    /// `request` marked as the attempt after the one it is.
    pub(crate) fn mark_next<B>(request: &mut Request<B>) {
        let next = Attempt::of(request).next();
        request.extensions_mut().insert(next);
    }
}
