//! When a late body gives its upstream back: the two markers of the layer's type-state.
//!
//! The default path must put no bound on the user's service or body beyond what wrapping
//! them needs: a `Send + 'static` bound on the body of a `service_fn` whose future is an
//! `async` block is one rustc often cannot prove inside a spawned task, and the error then
//! names the user's code. Only the watcher of
//! [`release_unpolled`](crate::StreamDeadlineLayer::release_unpolled) spawns, so only its
//! marker carries that bound (on the `Service` impl of `StreamDeadline<S, ReleaseUnpolled>`).

/// The upstream is released when the deadline is observed: by the body's timer waking the
/// task that waits on it, or at the next poll or the drop. The default of
/// [`StreamDeadlineLayer`](crate::StreamDeadlineLayer), which puts no bound on the body.
///
/// Seen only in type annotations, where it is the default and can be left out:
///
/// ```
/// use std::time::Duration;
/// use tower_stream_deadline::{ReleaseOnPoll, StreamDeadlineLayer};
///
/// let layer: StreamDeadlineLayer = StreamDeadlineLayer::new(Duration::from_secs(45));
/// let same: StreamDeadlineLayer<ReleaseOnPoll> = layer.clone();
/// # let _ = same;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReleaseOnPoll;

/// The upstream is released at the total or idle deadline even when nobody polls the body:
/// the marker of a layer built with
/// [`release_unpolled`](crate::StreamDeadlineLayer::release_unpolled). Its service needs
/// `Send + 'static` response bodies (hyper's, axum's and tonic's are), for the watcher task
/// that holds them.
///
/// Name it where the layer's type is written out, in a struct field for example:
///
/// ```
/// use std::time::Duration;
/// use tower_stream_deadline::{ReleaseUnpolled, StreamDeadlineLayer};
///
/// struct Proxy {
///     deadlines: StreamDeadlineLayer<ReleaseUnpolled>,
/// }
///
/// let proxy = Proxy {
///     deadlines: StreamDeadlineLayer::new(Duration::from_secs(45)).release_unpolled(),
/// };
/// # let _ = proxy.deadlines;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReleaseUnpolled;
