//! The tokio runtime the gateway serves on: `--worker-threads`, or one thread per core this
//! process may run on.
//!
//! One thread gets tokio's current-thread scheduler, which polls ready connections in the
//! order they became ready, as nginx's worker does. The multi-thread scheduler with a single
//! worker does too until more than 256 are ready at once: then it moves the oldest 128 to its
//! global queue, and takes one from there per 200 µs or so of polls while newer ones keep
//! coming, so in a burst the connections that waited longest wait longest again. With 1,000
//! paced streams on one core, the current-thread scheduler's p99 delay was the lower of the
//! two in 20 rounds of 28 (BENCHMARKS.md, section 10). Two threads or more get the
//! multi-thread scheduler, whose idle workers take waiting connections from busy ones.

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// The threads to serve on: `flag`, or the cores this process may run on (its CPU affinity
/// and cgroup quota), or 1 where they cannot be counted.
pub fn worker_threads(flag: Option<NonZeroUsize>) -> NonZeroUsize {
    flag.or_else(|| std::thread::available_parallelism().ok())
        .unwrap_or(NonZeroUsize::MIN)
}

/// A runtime with `threads` workers, I/O and timers enabled.
///
/// `TOKIO_WORKER_THREADS` is not read: the gateway's flags and `STREAM_DEADLINE_*` variables
/// are its whole configuration (and tokio panics on a value it cannot parse).
pub fn build(threads: NonZeroUsize) -> std::io::Result<Runtime> {
    let mut builder = if threads.get() == 1 {
        Builder::new_current_thread()
    } else {
        let mut builder = Builder::new_multi_thread();
        builder.worker_threads(threads.get());
        builder
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    fn threads(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn one_thread_is_the_current_thread_scheduler_and_more_the_multi_thread_one() {
        for (n, flavor) in [
            (1, RuntimeFlavor::CurrentThread),
            (3, RuntimeFlavor::MultiThread),
        ] {
            let runtime = build(threads(n)).unwrap();
            assert_eq!(runtime.handle().runtime_flavor(), flavor, "{n} threads");
            assert_eq!(runtime.metrics().num_workers(), n);
            // Timers and I/O are on: the gateway's budgets and sockets need both.
            runtime.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            });
        }
    }

    #[test]
    fn without_the_flag_one_thread_per_core_this_process_may_use() {
        assert_eq!(
            worker_threads(None),
            std::thread::available_parallelism().unwrap()
        );
        assert_eq!(worker_threads(Some(threads(5))), threads(5));
    }
}
