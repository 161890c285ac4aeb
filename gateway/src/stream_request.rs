//! The budgets of a request that does not ask for a streamed answer (`request_fields` reads
//! whether it does).
//!
//! A non-streamed answer (the SDKs' default, LangChain's `invoke()`) has its head and its
//! only body frame when the whole answer is ready: a first-frame budget would read every
//! answer slower than it as a stuck one, and retry it from scratch. Such a request is
//! bounded by the total budget only.

use std::time::Duration;

use tower_stream_deadline::{RequestBudgets, StreamDeadlineLayer};

/// The budgets of a request that does not ask for a stream: no first-frame budget (so no
/// first-frame retries) and no idle budget; the layer's total budget stays.
pub fn total_only() -> RequestBudgets {
    RequestBudgets::new().first_frame(OFF).idle(OFF)
}

/// `layer` with the budgets of [`total_only`], for requests that carry no budgets of their
/// own.
pub fn total_only_layer<R>(layer: StreamDeadlineLayer<R>) -> StreamDeadlineLayer<R> {
    layer.first_frame(OFF).idle(OFF)
}

/// No deadline; a first-frame budget beyond the total is ignored.
const OFF: Duration = Duration::MAX;
