//! Drains one body of FRAMES in-memory frames under one contender, for a profiler that counts
//! instructions (callgrind counts the same total for the same binary and input, whatever else
//! the machine does). Instructions per frame, without the set-up:
//!
//! ```text
//! cargo build --release -p tower-stream-deadline-benches --example profile_drain
//! for n in 10000 110000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/profile_drain CONTENDER SHAPE $n
//! done   # (second total - first total) / 100000
//! ```
//!
//! CONTENDER: `bare`, `total`, `total+idle`, `tower_http/DeadlineBody`,
//! `tower_http/TimeoutBody`. SHAPE: `ready` (every frame ready at once) or `wait` (the body is
//! `Pending` once before every frame and wakes itself, as a socket-fed body does).
//! `callgrind_annotate` on an output file shows where the instructions go.

use std::pin::pin;

use tower_stream_deadline_benches::{Config, Frames, IDLE, LONG, drain, runtime, wrap};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [contender, shape, frames] = &args[..] else {
        eprintln!("usage: profile_drain CONTENDER ready|wait FRAMES");
        std::process::exit(2);
    };
    let n: u64 = frames.parse().expect("FRAMES is a number");
    let frames = || match shape.as_str() {
        "ready" => Frames::new(n),
        "wait" => Frames::each_after_a_wait(n),
        other => panic!("unknown shape {other}: ready or wait"),
    };
    let rt = runtime();
    let _entered = rt.enter();
    let drained = match contender.as_str() {
        "bare" => drain(pin!(frames())),
        "total" => drain(pin!(wrap(&Config::Total.base_layer(), frames()))),
        "total+idle" => drain(pin!(wrap(&Config::TotalIdle.base_layer(), frames()))),
        "tower_http/DeadlineBody" => {
            drain(pin!(tower_http::timeout::DeadlineBody::new(LONG, frames())))
        }
        "tower_http/TimeoutBody" => {
            drain(pin!(tower_http::timeout::TimeoutBody::new(IDLE, frames())))
        }
        other => panic!("unknown contender {other}"),
    };
    assert_eq!(drained, n, "every frame drained");
}
