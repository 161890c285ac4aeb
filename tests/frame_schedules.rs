//! Property: over random frame schedules and budgets, on tokio's paused clock, every frame
//! that arrives before its deadline is delivered in order, none after, and the error fires
//! within one timer tick of the deadline, naming the right budget.

mod support;

use std::sync::LazyLock;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower::Layer;
use tower_stream_deadline::{DeadlineExceeded, DeadlineKind, StreamDeadlineLayer};

use support::{MS, Step, Upstream, call, drain};

static NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    (0..32)
        .map(|i| &*Box::leak(format!("[{i}]").into_boxed_str()))
        .collect()
});

#[derive(Clone, Debug)]
struct Case {
    head_ms: u64,
    /// The wait before each frame, then before the end.
    gaps_ms: Vec<u64>,
    end_gap_ms: u64,
    total_ms: u64,
    first_frame_ms: Option<u64>,
    idle_ms: Option<u64>,
}

/// What the model says the caller sees.
#[derive(Debug, PartialEq)]
struct Outcome {
    delivered: usize,
    /// (kind, when it fires in ms since `call`, the budget, elapsed as measured by that budget)
    deadline: Option<(DeadlineKind, u64, u64, u64)>,
}

impl Case {
    fn expected(&self) -> Outcome {
        let total = self.total_ms;
        let first_frame = self.first_frame_ms.filter(|&ff| ff < total);
        let fail = |delivered, kind, at: u64, budget, since: u64| Outcome {
            delivered,
            deadline: Some((kind, at, budget, at - since)),
        };
        // Each event: a frame (Some(i)) or the end (None), at its time.
        let mut events = Vec::new();
        let mut t = self.head_ms;
        for (i, gap) in self.gaps_ms.iter().enumerate() {
            t += gap;
            events.push((Some(i), *gap, t));
        }
        events.push((None, self.end_gap_ms, t + self.end_gap_ms));

        // Before the head (and, under a first-frame budget, the first event).
        let (head_deadline, head_kind, head_budget) = match first_frame {
            Some(ff) => (ff, DeadlineKind::FirstFrame, ff),
            None => (total, DeadlineKind::Total, total),
        };
        let first_needed = if first_frame.is_some() {
            events[0].2
        } else {
            self.head_ms
        };
        if first_needed >= head_deadline {
            return fail(0, head_kind, head_deadline, head_budget, 0);
        }

        let mut delivered = 0;
        let mut last = self.head_ms;
        for (index, (frame, gap, at)) in events.into_iter().enumerate() {
            let replayed = first_frame.is_some() && index == 0;
            if !replayed {
                // The body waits only when nothing is ready at once.
                let idle = self.idle_ms.filter(|_| gap > 0).map(|idle| last + idle);
                match idle {
                    Some(idle_at) if idle_at < total && at >= idle_at => {
                        return fail(
                            delivered,
                            DeadlineKind::Idle,
                            idle_at,
                            self.idle_ms.unwrap(),
                            last,
                        );
                    }
                    _ if at >= total => {
                        return fail(delivered, DeadlineKind::Total, total, total, 0);
                    }
                    _ => {}
                }
            }
            if frame.is_some() {
                delivered += 1;
            }
            last = at;
        }
        Outcome {
            delivered,
            deadline: None,
        }
    }

    fn run(&self) -> Outcome {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut steps = Vec::new();
            for (i, gap) in self.gaps_ms.iter().enumerate() {
                if *gap > 0 {
                    steps.push(Step::After(MS * *gap as u32));
                }
                steps.push(Step::Data(NAMES[i]));
            }
            if self.end_gap_ms > 0 {
                steps.push(Step::After(MS * self.end_gap_ms as u32));
            }
            let upstream = Upstream::new(MS * self.head_ms as u32, steps);
            let mut layer = StreamDeadlineLayer::new(MS * self.total_ms as u32);
            if let Some(ff) = self.first_frame_ms {
                layer = layer.first_frame(MS * ff as u32);
            }
            if let Some(idle) = self.idle_ms {
                layer = layer.idle(MS * idle as u32);
            }
            let mut svc = layer.layer(upstream.service());

            let start = Instant::now();
            let (delivered, error, at) = match call(&mut svc).await {
                Err(err) => (Vec::new(), Some(err), Instant::now()),
                Ok(response) => {
                    let mut body = response.into_body();
                    let drained = drain(&mut body).await;
                    (drained.data, drained.error, drained.at)
                }
            };
            for (i, data) in delivered.iter().enumerate() {
                assert_eq!(data, NAMES[i], "frames arrive whole and in order");
            }
            let deadline = error.map(|err| {
                let deadline = err
                    .downcast_ref::<DeadlineExceeded>()
                    .unwrap_or_else(|| panic!("only deadlines can fail here: {err:?}"));
                assert!(upstream.body_dropped.is_dropped() || upstream.future_dropped.is_dropped());
                let ms = |d: Duration| d.as_millis() as u64;
                (
                    deadline.kind(),
                    ms(at - start),
                    ms(deadline.budget()),
                    ms(deadline.elapsed()),
                )
            });
            Outcome {
                delivered: delivered.len(),
                deadline,
            }
        })
    }
}

fn cases() -> impl Strategy<Value = Case> {
    (
        0..150u64,
        prop::collection::vec(prop_oneof![Just(0u64), 1..120u64], 0..12),
        prop_oneof![Just(0u64), 1..120u64],
        0..1200u64,
        prop::option::of(0..400u64),
        prop::option::of(1..200u64),
    )
        .prop_map(
            |(head_ms, gaps_ms, end_gap_ms, total_ms, first_frame_ms, idle_ms)| Case {
                head_ms,
                gaps_ms,
                end_gap_ms,
                total_ms,
                first_frame_ms,
                idle_ms,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn frames_before_the_deadline_are_delivered_in_order_and_none_after(case in cases()) {
        prop_assert_eq!(case.run(), case.expected(), "{:?}", case);
    }
}
