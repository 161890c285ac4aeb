//! What a proxy hop costs, side by side: nginx (`proxy_buffering off`, HTTP/1.1 keep-alive
//! to the upstream), `stream-deadline-gateway` (its release binary, run as operators run
//! it) and two bare hyper proxies (`plain_proxy.rs`: hyper-util's legacy client, and the
//! gateway's own upstream client without the gateway's features), on four workloads:
//!
//! 1. 100 streams of server-sent events back to back: the proxy's CPU per chunk, its system
//!    calls per chunk (a second run under `perf stat`), chunks per second, resident memory;
//! 2. 1,000 streams, an event every 20 ms: CPU per chunk, p99 delay added to direct;
//! 3. short requests over 50 keep-alive connections: requests per second, CPU per request;
//! 4. one stream, an event every 20 ms: p50 delay added to direct.
//!
//! `cargo bench -p tower-stream-deadline-benches --bench proxy_cost` (about 5 minutes).
//! Knobs: `PROXY_COST_ROUNDS` (default 3), `PROXY_COST_SECS` (each measured window, default
//! 3), `PROXY_COST_ONLY` (a comma-separated list of `burst`, `paced`, `short`, `single`),
//! `PROXY_COST_GATEWAY` (a gateway binary to measure instead of building this workspace's),
//! `PROXY_COST_BASELINE` (another gateway binary, an earlier build say, measured beside it in
//! every round: its column, and the gateway's figures over its, round by round),
//! `PROXY_COST_NGINX` (nginx's path), `PROXY_COST_PIN=0` (no pinning), `PROXY_COST_RAMP_MS`
//! (the 1,000 paced streams start over this many ms, default 1000, so that their events
//! fall due evenly over the 20 ms; 0 starts them at once, their events then due together).
//!
//! The upstream (`upstream.rs`) and the load generator (`client.rs`) run in this process;
//! each proxy is a child process started fresh for every run, its CPU time and memory read
//! from `/proc`. On a machine of 2 cores or more this process is pinned to core 0 and every
//! proxy to core 1 (`taskset`), so each proxy has one core to itself and the same one. The
//! contenders take turns within every round, in an order that rotates from round to round,
//! so that load from elsewhere on the machine lands on all of them alike.

mod client;
mod contenders;
mod plain_proxy;
mod report;
mod upstream;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use contenders::{Contender, Placement};
use workloads::Bench;

/// Set in a child started as a bare proxy: the upstream's address.
const PLAIN_PROXY: &str = "PROXY_COST_PLAIN_PROXY_UPSTREAM";
/// Set in a child started as a bare proxy: its client (`plain_proxy::Client::name`).
const PLAIN_PROXY_CLIENT: &str = "PROXY_COST_PLAIN_PROXY_CLIENT";

fn main() {
    if let Ok(upstream) = std::env::var(PLAIN_PROXY) {
        let client = std::env::var(PLAIN_PROXY_CLIENT).unwrap_or_default();
        return match plain_proxy::Client::from_name(&client) {
            Some(client) => plain_proxy::run(&upstream, client),
            None => eprintln!("bare proxy: no client named {client:?}"),
        };
    }
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo bench -- --list`: nothing to list.
    }
    let rounds = knob("PROXY_COST_ROUNDS", 3);
    let window = Duration::from_secs(knob("PROXY_COST_SECS", 3) as u64);
    let ramp = Duration::from_millis(knob("PROXY_COST_RAMP_MS", 1000) as u64);
    let only = std::env::var("PROXY_COST_ONLY").unwrap_or_default();
    let runs = |workload: &str| only.is_empty() || only.split(',').any(|w| w.trim() == workload);

    let Some(gateway) = gateway_binary() else {
        return;
    };
    let mut contenders = Vec::new();
    match find_nginx() {
        Ok(nginx) => {
            println!("nginx: {} ({})", nginx.display(), nginx_version(&nginx));
            contenders.push(Contender::Nginx(nginx));
        }
        Err(why) => println!(
            "nginx: {why}: its column is left out (tests/python/run.sh installs Debian's \
             nginx-light: `apt-get install nginx-light`)"
        ),
    }
    contenders.push(Contender::Gateway(gateway.clone()));
    let baseline = std::env::var_os("PROXY_COST_BASELINE").map(PathBuf::from);
    if let Some(baseline) = &baseline {
        contenders.push(Contender::Baseline(baseline.clone()));
    }
    contenders.push(Contender::Plain(plain_proxy::Client::Legacy));
    contenders.push(Contender::Plain(plain_proxy::Client::Gateway));

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = knob("PROXY_COST_PIN", 1) != 0 && cores >= 2 && pin_this_process(0);
    let placement = Placement {
        core: pin.then_some(1),
        nginx_workers: if pin { 1 } else { cores },
        dir: std::env::temp_dir().join(format!("proxy-cost-{}", std::process::id())),
    };
    if let Err(e) = std::fs::create_dir_all(&placement.dir) {
        eprintln!("{}: {e}", placement.dir.display());
        return;
    }
    println!(
        "{}; gateway: {}",
        if pin {
            "pinned: upstream and clients on core 0, each proxy on core 1 (taskset)".to_owned()
        } else {
            format!("not pinned: every process may run on any of {cores} cores")
        },
        gateway.display()
    );
    println!(
        "{rounds} rounds, windows of {} s; load average before: {}",
        window.as_secs(),
        load_average()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let upstream = match upstream::serve().await {
            Ok(upstream) => upstream,
            Err(e) => return eprintln!("the upstream: {e}"),
        };
        let mut bench = Bench {
            upstream,
            placement,
            window,
            results: report::Results::default(),
        };
        let mut with_direct = vec![Contender::Direct];
        with_direct.extend(contenders.iter().cloned());
        if runs("burst") {
            println!("\n1. 100 streams, events back to back (load average {})", load_average());
            for round in 0..rounds {
                for contender in rotated(&contenders, round) {
                    bench.burst(contender, round).await;
                }
            }
        }
        if runs("paced") {
            println!(
                "\n2. 1,000 streams, an event every 20 ms, started over {} ms (load average {})",
                ramp.as_millis(),
                load_average()
            );
            for round in 0..rounds {
                for contender in rotated(&with_direct, round) {
                    bench.paced(contender, round, 1000, ramp).await;
                }
            }
        }
        if runs("short") {
            println!("\n3. short requests over 50 connections (load average {})", load_average());
            for round in 0..rounds {
                for contender in rotated(&contenders, round) {
                    bench.short(contender, round).await;
                }
            }
        }
        if runs("single") {
            println!("\n4. one stream, an event every 20 ms (load average {})", load_average());
            for round in 0..rounds {
                for contender in rotated(&with_direct, round) {
                    bench.paced(contender, round, 1, Duration::ZERO).await;
                }
            }
        }
        for round in 0..rounds {
            bench.added(round, &with_direct);
        }
        let names: Vec<&'static str> = with_direct.iter().map(Contender::name).collect();
        println!(
            "\nload average after: {}\n\nmedian (lowest to highest round) of {rounds} rounds:\n\n{}\n{}",
            load_average(),
            bench.results.table(&names),
            bench.results.targets(rounds),
        );
        if baseline.is_some() {
            println!("{}", bench.results.against_baseline(rounds));
        }
        let _ = std::fs::remove_dir_all(&bench.placement.dir);
    });
}

fn knob(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| {
            println!("{name}={value:?} is not a number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// `items` starting at the one after `round` turns.
fn rotated<T>(items: &[T], round: usize) -> impl Iterator<Item = &T> {
    let start = round % items.len().max(1);
    items[start..].iter().chain(&items[..start])
}

/// The gateway's release binary: `PROXY_COST_GATEWAY`, or this workspace's, built now (a
/// no-op when it is current) next to this bench's executable.
fn gateway_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PROXY_COST_GATEWAY") {
        return Some(PathBuf::from(path));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    println!("building the gateway: cargo build --release -p stream-deadline-gateway");
    let mut build = Command::new(&cargo);
    // What cargo sets for this bench's run is not the caller's environment: build scripts
    // that watch these (ring's does) would be rebuilt now, and again by the next `cargo
    // bench`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || ["OUT_DIR", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*name)
        {
            build.env_remove(&*name);
        }
    }
    let built = build
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "stream-deadline-gateway",
        ])
        .args(["--bin", "stream-deadline-gateway", "--manifest-path"])
        .arg(&manifest)
        .status();
    if !matches!(built, Ok(status) if status.success()) {
        eprintln!(
            "building the gateway failed ({built:?}); set PROXY_COST_GATEWAY to measure a built one"
        );
        return None;
    }
    // This executable is `<target>/release/deps/proxy_cost-<hash>`.
    let exe = std::env::current_exe().ok()?;
    let binary = exe.parent()?.parent()?.join("stream-deadline-gateway");
    if binary.exists() {
        Some(binary)
    } else {
        eprintln!("no gateway at {}; set PROXY_COST_GATEWAY", binary.display());
        None
    }
}

/// nginx: `PROXY_COST_NGINX`, or the first on `PATH`, `/usr/sbin` or `/sbin`.
fn find_nginx() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("PROXY_COST_NGINX") {
        let path = PathBuf::from(path);
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!("PROXY_COST_NGINX={} is not a file", path.display())),
        };
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| "not found on PATH, in /usr/sbin or /sbin".to_owned())
}

fn nginx_version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stderr).trim().to_owned())
        .unwrap_or_default()
}

/// Pins this process (the threads it will start inherit it) to `core`.
fn pin_this_process(core: usize) -> bool {
    let pinned = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !pinned {
        println!("taskset could not pin this process: nothing is pinned");
    }
    pinned
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}
