//! The log's writer: every thread puts its lines in one buffer, and a thread of its own
//! writes that buffer to stderr a batch at a time.
//!
//! A request's line never waits on stderr inside a worker of the runtime, and the log
//! thread wakes for a batch, not for a line: when the first line of a batch comes it waits
//! [`LINGER`] for the others (or until [`BATCH`] bytes are waiting), then writes them all in
//! one `write`. Handing each line over on its own, as tracing-appender's non-blocking
//! writer does (a channel message and an allocation per line), woke the log thread every
//! few requests under load: on a core shared with the runtime's worker, each wake-up
//! preempted the worker and cost it a context switch or two (measured with `perf stat`
//! under `wrk -c50`: 0.15 context switches and 0.26 `sched_yield` calls per request, and a
//! short request's CPU 2.5 to 3.7 us higher with the line on than with `RUST_LOG=off`;
//! BENCHMARKS.md, the gateway hop).
//!
//! No line is lost: when [`FULL`] bytes wait (stderr is slow or blocked), a thread with a
//! line to add waits for room; dropping the [`LogWriterGuard`] writes out every line
//! waiting, and a line that comes after that is written by its own thread.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the log thread waits, after a batch's first line, for the batch's other lines:
/// a line reaches stderr this much later at most (when stderr keeps up), and the thread
/// wakes a hundred times a second at most, however many lines come.
pub const LINGER: Duration = Duration::from_millis(10);

/// Waiting lines of this many bytes are written without waiting out [`LINGER`].
pub const BATCH: usize = 64 * 1024;

/// The most bytes of lines waiting; a thread with a line to add waits for room beyond that.
/// At 50,000 requests a second of 300-byte lines, a quarter of a second.
pub const FULL: usize = 4 * 1024 * 1024;

/// A batch's buffer bigger than this (after a burst) is not kept for the next batch.
const KEPT: usize = 4 * BATCH;

/// Where the lines go: a [`MakeWriter`] for `tracing-subscriber`'s layers, and
/// [`LogWriter::write_line`] for lines written without them. Each `write` is taken whole, so
/// a line written in one call (as a layer writes an event) is never split or interleaved.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Keep it until the process ends: dropping it writes out every line waiting and stops the
/// log thread.
#[must_use = "dropping the guard writes out the waiting lines and stops the log thread"]
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The log thread waits here: for a first line, or for a batch to fill.
    lines_came: Condvar,
    /// Threads with a line to add wait here while [`FULL`] bytes are waiting.
    room: Condvar,
    /// Locked by the log thread while it writes a batch, and by a thread writing its own
    /// line once the log thread is gone.
    out: Mutex<Box<dyn Write + Send>>,
    limits: Limits,
}

#[derive(Clone, Copy)]
struct Limits {
    linger: Duration,
    batch: usize,
    full: usize,
}

struct State {
    lines: Vec<u8>,
    thread: Thread,
    /// Threads waiting for room.
    waiting: usize,
    closing: bool,
}

/// What the log thread is doing, so that a line wakes it only when it waits for lines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Thread {
    /// Waiting for a batch's first line.
    Idle,
    /// Waiting out [`LINGER`] for the rest of the batch.
    Lingering,
    /// Taking or writing a batch, or already woken.
    Busy,
    /// Stopped (or never started): each thread writes its own lines.
    Gone,
}

impl LogWriter {
    /// A writer to `out` (the gateway's is stderr), and the guard that stops its thread.
    pub fn spawn(out: impl Write + Send + 'static) -> (LogWriter, LogWriterGuard) {
        LogWriter::with_limits(
            out,
            Limits {
                linger: LINGER,
                batch: BATCH,
                full: FULL,
            },
        )
    }

    fn with_limits(
        out: impl Write + Send + 'static,
        limits: Limits,
    ) -> (LogWriter, LogWriterGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lines: Vec::new(),
                thread: Thread::Busy,
                waiting: 0,
                closing: false,
            }),
            lines_came: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(Box::new(out)),
            limits,
        });
        let writes = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writes.write_batches());
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(err) => {
                // Without the thread, each line is written by the thread that logs it.
                shared.lock().thread = Thread::Gone;
                let _ = writeln!(
                    shared.out(),
                    "stream-deadline-gateway: no log thread ({err}): lines are written as they come"
                );
                None
            }
        };
        let guard = LogWriterGuard {
            shared: shared.clone(),
            thread,
        };
        (LogWriter { shared }, guard)
    }

    /// Adds `line` (or any bytes) to the lines waiting, after waiting for room if need be.
    pub fn write_line(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut state = shared.lock();
        while state.lines.len() >= shared.limits.full && state.thread != Thread::Gone {
            state.waiting += 1;
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
        }
        if state.thread == Thread::Gone {
            // Written under the state's lock: the lines of one thread stay in order.
            let _ = shared.out().write_all(line);
            return;
        }
        state.lines.extend_from_slice(line);
        let wake = match state.thread {
            Thread::Idle => true,
            Thread::Lingering => state.lines.len() >= shared.limits.batch,
            Thread::Busy | Thread::Gone => false,
        };
        if wake {
            // Woken once: the lines that come before it takes them need no other call.
            state.thread = Thread::Busy;
            drop(state);
            shared.lines_came.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn out(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log thread: takes the waiting lines a batch at a time and writes them, until the
    /// guard is dropped and no line waits.
    fn write_batches(&self) {
        let mut batch = Vec::new();
        let mut state = self.lock();
        let mut lingered = false;
        loop {
            if state.lines.is_empty() {
                if state.closing {
                    state.thread = Thread::Gone;
                    drop(state);
                    self.room.notify_all();
                    return;
                }
                state.thread = Thread::Idle;
                state = self
                    .lines_came
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            if !lingered && !state.closing && state.lines.len() < self.limits.batch {
                state.thread = Thread::Lingering;
                state = self
                    .lines_came
                    .wait_timeout(state, self.limits.linger)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                lingered = true;
                continue;
            }
            lingered = false;
            state.thread = Thread::Busy;
            std::mem::swap(&mut state.lines, &mut batch);
            let waiting = state.waiting > 0;
            drop(state);
            if waiting {
                self.room.notify_all();
            }
            // A log that cannot be written has nowhere to say so: the batch is dropped and
            // the next one tried.
            let mut out = self.out();
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            drop(out);
            batch.clear();
            if batch.capacity() > KEPT {
                batch = Vec::new();
            }
            state = self.lock();
        }
    }
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closing = true;
        drop(state);
        self.shared.lines_came.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                // The thread panicked (it holds no line of its own): the lines still
                // waiting are written here, and later ones by their own threads.
                let mut state = self.shared.lock();
                state.thread = Thread::Gone;
                let lines = std::mem::take(&mut state.lines);
                let _ = self.shared.out().write_all(&lines);
                drop(state);
                self.shared.room.notify_all();
            }
        }
    }
}

impl Write for &LogWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_line(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> &'a LogWriter {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Sends each `write` it gets, as one message, and waits for `gate` (when there is one)
    /// before taking the first.
    struct Out {
        writes: mpsc::Sender<Vec<u8>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Write for Out {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            let _ = self.writes.send(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn writer(
        limits: Limits,
        gated: bool,
    ) -> (
        LogWriter,
        LogWriterGuard,
        mpsc::Receiver<Vec<u8>>,
        mpsc::Sender<()>,
    ) {
        let (writes, written) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let out = Out {
            writes,
            gate: gated.then_some(gate),
        };
        let (writer, guard) = LogWriter::with_limits(out, limits);
        (writer, guard, written, open)
    }

    const LIMITS: Limits = Limits {
        linger: LINGER,
        batch: BATCH,
        full: FULL,
    };

    const PATIENCE: Duration = Duration::from_secs(10);

    #[test]
    fn a_line_alone_is_written_without_waiting_for_others() {
        let (writer, _guard, written, _open) = writer(LIMITS, false);
        writer.write_line(b"one line\n");
        let write = written
            .recv_timeout(PATIENCE)
            .expect("a line alone was not written in 10 s");
        assert_eq!(write, b"one line\n");
    }

    #[test]
    fn every_line_of_every_thread_is_written_whole_and_in_its_order_by_the_time_the_guard_is_dropped()
     {
        // Small batches, to split the lines among many writes, and the last lines still
        // waiting when the guard is dropped.
        let (writer, guard, written, _open) = writer(
            Limits {
                batch: 512,
                linger: Duration::from_secs(3600),
                ..LIMITS
            },
            false,
        );
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let writer = &writer;
                scope.spawn(move || {
                    for line in 0..2000 {
                        // As a layer writes an event: the line put together, then one
                        // `write_all`.
                        let mut out = writer;
                        out.write_all(format!("thread {thread} line {line}\n").as_bytes())
                            .unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(written.try_iter().flatten().collect()).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let [_, thread, _, number] = words[..] else {
                panic!("a line was split or interleaved: {line:?}");
            };
            let thread: usize = thread.parse().unwrap();
            assert_eq!(
                number.parse::<usize>().unwrap(),
                next[thread],
                "thread {thread}'s lines out of order"
            );
            next[thread] += 1;
        }
        assert_eq!(next, [2000; 4], "lines lost");
    }

    #[test]
    fn lines_that_come_while_a_batch_is_written_go_out_together() {
        let (writer, _guard, written, open) = writer(LIMITS, true);
        writer.write_line(b"first\n");
        for line in 0..100 {
            writer.write_line(format!("line {line}\n").as_bytes());
        }
        open.send(()).unwrap();
        let mut lines = 0;
        let mut writes = 0;
        while lines < 101 {
            let write = written
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("{lines} lines of 101 written in 10 s"));
            lines += write.iter().filter(|&&b| b == b'\n').count();
            writes += 1;
        }
        // The first batch may have taken only the first line: the others were waiting
        // together when it was written.
        assert!(writes <= 2, "101 lines took {writes} writes");
    }

    #[test]
    fn a_line_waits_for_room_when_the_buffer_is_full_and_none_is_lost() {
        let (writer, guard, written, open) = writer(
            Limits {
                batch: 64,
                full: 256,
                ..LIMITS
            },
            true,
        );
        let (added, lines_added) = mpsc::channel();
        let adding = std::thread::spawn({
            let writer = writer.clone();
            move || {
                for line in 0..100 {
                    writer.write_line(format!("line {line:>5}\n").as_bytes());
                    let _ = added.send(line);
                }
            }
        });
        // The out is shut: the lines waiting stop at the limit, and so does the thread adding
        // them.
        let mut last = None;
        while let Ok(line) = lines_added.recv_timeout(Duration::from_millis(200)) {
            last = Some(line);
        }
        let last = last.expect("no line was added");
        assert!(
            last < 99,
            "every line was added while nothing could be written"
        );
        open.send(()).unwrap();
        adding.join().unwrap();
        drop(guard);
        let text = String::from_utf8(written.try_iter().flatten().collect()).unwrap();
        let expected: String = (0..100).map(|line| format!("line {line:>5}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_line_that_comes_after_the_guard_is_dropped_is_written_by_its_own_thread() {
        let (writer, guard, written, _open) = writer(LIMITS, false);
        writer.write_line(b"before\n");
        drop(guard);
        writer.write_line(b"after\n");
        let writes: Vec<Vec<u8>> = written.try_iter().collect();
        assert_eq!(writes, [b"before\n".to_vec(), b"after\n".to_vec()]);
    }
}
