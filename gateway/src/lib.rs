//! The parts of `stream-deadline-gateway`, one module per concern; the binary (`main.rs`)
//! wires them together. They are a library so that the benchmarks can build the same proxy
//! with and without the deadline layer; they are not a stable API.

#![forbid(unsafe_code)]
// The parts are built once each, from the flags: a `Default` would only be another way to
// get them wrong.
#![allow(clippy::new_without_default)]

pub mod admin;
pub mod client_budgets;
pub mod config;
pub mod connection_idle;
pub mod duration;
pub mod errors;
pub mod headers;
pub mod heartbeat;
pub mod http1_body_decoder;
pub mod http1_error;
pub mod http1_exchange;
pub mod http1_head;
pub mod http1_pool;
pub mod http1_request;
pub mod listener;
pub mod log;
pub mod log_writer;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod request_body;
pub mod request_fields;
pub mod request_id;
pub mod request_line;
pub mod routing;
pub mod runtime;
pub mod shutdown;
pub mod stream_request;
pub mod subscriber;
pub mod upstream;
pub mod upstream_url;
