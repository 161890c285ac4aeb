//! The figures of every run, and their summary: per contender, the median over the rounds
//! and the lowest and highest round.

/// One figure: what the table's row says, and how many decimals it gets.
#[derive(Clone, Copy, PartialEq)]
pub struct Figure {
    pub label: &'static str,
    pub decimals: usize,
}

pub const BURST_CPU: Figure = Figure {
    label: "100 streams back to back: CPU per chunk, us",
    decimals: 2,
};
pub const BURST_SYSCALLS: Figure = Figure {
    label: "100 streams back to back: system calls per chunk",
    decimals: 3,
};
pub const BURST_RATE: Figure = Figure {
    label: "100 streams back to back: chunks per s, thousands",
    decimals: 0,
};
pub const BURST_RSS: Figure = Figure {
    label: "100 streams back to back: resident memory, MB",
    decimals: 1,
};
pub const BURST_BENCH_CORE: Figure = Figure {
    label: "100 streams back to back: the bench's core busy (upstream + clients), %",
    decimals: 0,
};
pub const PACED_CPU: Figure = Figure {
    label: "1,000 streams, a chunk every 20 ms: CPU per chunk, us",
    decimals: 2,
};
pub const PACED_RATE: Figure = Figure {
    label: "1,000 streams, a chunk every 20 ms: chunks per s, thousands",
    decimals: 1,
};
pub const PACED_RSS: Figure = Figure {
    label: "1,000 streams, a chunk every 20 ms: resident memory, MB",
    decimals: 1,
};
pub const PACED_P99: Figure = Figure {
    label: "1,000 streams, a chunk every 20 ms: delay p99, ms",
    decimals: 2,
};
pub const PACED_P99_ADDED: Figure = Figure {
    label: "1,000 streams, a chunk every 20 ms: added delay p99 (over direct), ms",
    decimals: 2,
};
pub const SHORT_RATE: Figure = Figure {
    label: "short requests, 50 connections: requests per s, thousands",
    decimals: 1,
};
pub const SHORT_CPU: Figure = Figure {
    label: "short requests, 50 connections: CPU per request, us",
    decimals: 1,
};
pub const SHORT_BENCH_CORE: Figure = Figure {
    label: "short requests, 50 connections: the bench's core busy (upstream + clients), %",
    decimals: 0,
};
pub const SINGLE_P50: Figure = Figure {
    label: "1 stream, a chunk every 20 ms: delay p50, us",
    decimals: 0,
};
pub const SINGLE_P50_ADDED: Figure = Figure {
    label: "1 stream, a chunk every 20 ms: added delay p50 (over direct), us",
    decimals: 0,
};

/// Rows in the order the table shows them.
pub const ROWS: [Figure; 15] = [
    BURST_CPU,
    BURST_SYSCALLS,
    BURST_RATE,
    BURST_RSS,
    BURST_BENCH_CORE,
    PACED_CPU,
    PACED_RATE,
    PACED_RSS,
    PACED_P99,
    PACED_P99_ADDED,
    SHORT_RATE,
    SHORT_CPU,
    SHORT_BENCH_CORE,
    SINGLE_P50,
    SINGLE_P50_ADDED,
];

/// The gateway's targets, each against nginx in the same round: the figure, the most the
/// gateway may take as a multiple of nginx's.
pub const TARGETS: [(Figure, f64); 4] = [
    (BURST_CPU, 1.5),
    (SHORT_CPU, 1.3),
    (PACED_CPU, 1.1),
    (PACED_P99_ADDED, 2.0),
];

#[derive(Default)]
pub struct Results {
    values: Vec<(&'static str, &'static str, usize, f64)>,
}

impl Results {
    pub fn record(&mut self, figure: Figure, contender: &'static str, round: usize, value: f64) {
        self.values.push((figure.label, contender, round, value));
    }

    pub fn get(&self, figure: Figure, contender: &str, round: usize) -> Option<f64> {
        self.values
            .iter()
            .find(|(label, name, r, _)| *label == figure.label && *name == contender && *r == round)
            .map(|value| value.3)
    }

    fn all(&self, figure: Figure, contender: &str) -> Vec<f64> {
        let mut values: Vec<f64> = self
            .values
            .iter()
            .filter(|(label, name, _, _)| *label == figure.label && *name == contender)
            .map(|value| value.3)
            .collect();
        values.sort_by(f64::total_cmp);
        values
    }

    /// The table, in Markdown: median (lowest to highest round) per contender.
    pub fn table(&self, contenders: &[&'static str]) -> String {
        let mut table = format!("| figure | {} |\n|---|", contenders.join(" | "));
        table.push_str(&"---:|".repeat(contenders.len()));
        table.push('\n');
        for figure in ROWS {
            let cells: Vec<String> = contenders
                .iter()
                .map(|contender| summary(&self.all(figure, contender), figure.decimals))
                .collect();
            if cells.iter().all(|cell| cell == "-") {
                continue;
            }
            table.push_str(&format!("| {} | {} |\n", figure.label, cells.join(" | ")));
        }
        table
    }

    /// The gateway's figure over nginx's, round by round, against each target.
    pub fn targets(&self, rounds: usize) -> String {
        let mut lines = String::new();
        for (figure, most) in TARGETS {
            let pairs = self.pairs(figure, "nginx", rounds);
            if pairs.is_empty() {
                continue;
            }
            // An added delay nginx keeps within direct's noise (0 or below) counts as 0:
            // the gateway then has to add nothing either.
            let met = pairs
                .iter()
                .filter(|(gateway, nginx)| *gateway <= most * nginx.max(0.0))
                .count();
            lines.push_str(&format!(
                "- {}: gateway / nginx, round by round: {}; target at most {most} x nginx: met in {met} of {} rounds\n",
                figure.label,
                ratios(&pairs, figure.decimals),
                pairs.len(),
            ));
        }
        lines
    }

    /// The gateway's figure over the baseline gateway's, round by round, for every figure
    /// that has a target: two builds compared within the same rounds.
    pub fn against_baseline(&self, rounds: usize) -> String {
        let mut lines = String::new();
        for (figure, _) in TARGETS {
            let pairs = self.pairs(figure, "baseline gateway", rounds);
            if pairs.is_empty() {
                continue;
            }
            let lower = pairs
                .iter()
                .filter(|(gateway, baseline)| gateway < baseline)
                .count();
            lines.push_str(&format!(
                "- {}: gateway / baseline gateway, round by round: {}; the gateway's the lower in {lower} of {} rounds\n",
                figure.label,
                ratios(&pairs, figure.decimals),
                pairs.len(),
            ));
        }
        lines
    }

    /// The gateway's figure and `other`'s, in each round that has both.
    fn pairs(&self, figure: Figure, other: &str, rounds: usize) -> Vec<(f64, f64)> {
        (0..rounds)
            .filter_map(|round| {
                Some((
                    self.get(figure, "gateway", round)?,
                    self.get(figure, other, round)?,
                ))
            })
            .collect()
    }
}

/// Each round's pair as `a / b = ratio` (no ratio where `b`, an added delay, is 0 or below).
fn ratios(pairs: &[(f64, f64)], decimals: usize) -> String {
    let d = decimals;
    let texts: Vec<String> = pairs
        .iter()
        .map(|(a, b)| match *b > 0.0 {
            true => format!("{a:.d$} / {b:.d$} = {:.2}", a / b),
            false => format!("{a:.d$} / {b:.d$}"),
        })
        .collect();
    texts.join("; ")
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn summary(sorted: &[f64], decimals: usize) -> String {
    match sorted {
        [] => "-".to_owned(),
        [one] => format!("{one:.decimals$}"),
        [low, .., high] => format!(
            "{:.decimals$} ({low:.decimals$} to {high:.decimals$})",
            median(sorted)
        ),
    }
}
