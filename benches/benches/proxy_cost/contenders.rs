//! The proxies measured, each started fresh for every run as a child process (pinned to a
//! core of its own when the bench pins), and what is read of them from `/proc`.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::plain_proxy::Client;

/// A contender of one run.
#[derive(Clone, Debug, PartialEq)]
pub enum Contender {
    /// The upstream itself, no proxy: the latency baseline.
    Direct,
    Nginx(PathBuf),
    Gateway(PathBuf),
    /// Another build of the gateway (`PROXY_COST_BASELINE`), run as the gateway is.
    Baseline(PathBuf),
    /// This bench's own executable, as a bare hyper proxy with this client
    /// (`plain_proxy.rs`).
    Plain(Client),
}

impl Contender {
    pub fn name(&self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Nginx(_) => "nginx",
            Contender::Gateway(_) => "gateway",
            Contender::Baseline(_) => "baseline gateway",
            Contender::Plain(Client::Legacy) => "plain hyper",
            Contender::Plain(Client::Gateway) => "hyper + gateway client",
        }
    }
}

/// Where and how the proxies run.
pub struct Placement {
    /// The core every proxy is pinned to, with `taskset`.
    pub core: Option<usize>,
    /// nginx's worker processes: as many as the proxy's cores.
    pub nginx_workers: usize,
    /// Configuration, logs and temporary files of the children.
    pub dir: PathBuf,
}

/// A proxy's processes (nginx: the master and its workers) and its listening address.
pub struct Proxy {
    /// The proxy, or `perf stat` running it.
    child: Child,
    nginx: bool,
    pub pids: Vec<u32>,
    pub addr: SocketAddr,
    /// Where `perf stat` writes the system calls it counts, and when it started.
    syscalls: Option<(PathBuf, Instant)>,
}

impl Proxy {
    /// Starts `contender` in front of `upstream`, under `perf stat` when `count_syscalls`;
    /// `None` for [`Contender::Direct`].
    pub fn start(
        contender: &Contender,
        upstream: SocketAddr,
        placement: &Placement,
        count_syscalls: bool,
    ) -> Result<Option<Proxy>, String> {
        let perf = count_syscalls.then(|| placement.dir.join("perf.csv"));
        let launch = |program: &Path| launcher(program, placement.core, perf.as_deref());
        // perf's intervals count from about here.
        let spawned = Instant::now();
        let mut proxy = match contender {
            Contender::Direct => return Ok(None),
            Contender::Nginx(nginx) => {
                start_nginx(launch(nginx), perf.is_some(), upstream, placement)?
            }
            Contender::Gateway(binary) | Contender::Baseline(binary) => {
                let log = placement.dir.join("gateway.log");
                let mut command = launch(binary);
                command.args([
                    "--listen",
                    "127.0.0.1:0",
                    "--upstream",
                    &format!("http://{upstream}"),
                    "--admin-listen",
                    "off",
                    "--max-connections",
                    "20000",
                    // Longer than any run; the first-frame and idle budgets keep their
                    // defaults (10 s, 5 s), so the layer times every frame as it does for
                    // operators.
                    "--total",
                    "1h",
                ]);
                command.stderr(log_file(&log)?);
                start_announcing(command, "listening on http://")?
            }
            Contender::Plain(client) => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut command = launch(&exe);
                command
                    .env(crate::PLAIN_PROXY, upstream.to_string())
                    .env(crate::PLAIN_PROXY_CLIENT, client.name())
                    .stderr(Stdio::null());
                start_announcing(command, "")?
            }
        };
        if let Some(perf) = perf {
            // Under perf the proxy is perf's child (taskset execs it); nginx's are found
            // already.
            if !proxy.nginx {
                proxy.pids = children_of(proxy.child.id());
            }
            if proxy.pids.is_empty() {
                return Err("the proxy under perf has no process".to_owned());
            }
            proxy.syscalls = Some((perf, spawned));
        }
        Ok(Some(proxy))
    }

    /// Stops the proxy; when it ran under perf, its system calls counted every 100 ms,
    /// as (end of the interval after `since`, count) pairs.
    pub fn stop(mut self, since: Instant) -> Result<Vec<(Duration, u64)>, String> {
        self.end();
        let Some((path, started)) = self.syscalls.take() else {
            return Err("not counted".to_owned());
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let offset = since.saturating_duration_since(started);
        let intervals: Vec<(Duration, u64)> = text
            .lines()
            .filter(|line| line.contains("raw_syscalls:sys_enter"))
            .filter_map(|line| {
                let mut fields = line.split(',');
                let at: f64 = fields.next()?.trim().parse().ok()?;
                // `<not counted>`: no system call in the interval.
                let count = fields.next()?.trim().parse().unwrap_or(0);
                let at = Duration::from_secs_f64(at).checked_sub(offset)?;
                Some((at, count))
            })
            .collect();
        if intervals.is_empty() {
            return Err(format!("perf counted nothing: {}", text.trim()));
        }
        Ok(intervals)
    }

    /// Ends every process of the proxy (and perf, which ends with it).
    fn end(&mut self) {
        if self.nginx {
            // A killed master leaves its workers running: ask it to stop them, then make
            // sure, each by its own id.
            let _ = signal(self.pids[0], "TERM");
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until
                && Path::new(&format!("/proc/{}", self.pids[0])).exists()
                && !matches!(self.child.try_wait(), Ok(Some(_)))
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            for &pid in &self.pids[1..] {
                if Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = signal(pid, "KILL");
                }
            }
        } else if self.pids[0] != self.child.id() {
            let _ = signal(self.pids[0], "KILL");
        }
        if self.syscalls.is_some() {
            // perf writes its counts when the proxy has ended (bounded: it has been killed).
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// User plus system CPU time of every process so far.
    pub fn cpu(&self) -> Duration {
        self.pids.iter().map(|&pid| process_cpu(pid)).sum()
    }

    /// Resident memory of every process, summed, in bytes.
    pub fn rss(&self) -> u64 {
        self.pids
            .iter()
            .map(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|line| line.strip_prefix("VmRSS:"))
                    .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            })
            .sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.end();
        }
    }
}

/// `program` run by `taskset -c core` when pinned, under `perf stat` (system calls every
/// 100 ms, into `perf`) when given.
fn launcher(program: &Path, core: Option<usize>, perf: Option<&Path>) -> Command {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if let Some(perf) = perf {
        argv.extend(
            [
                "perf",
                "stat",
                "-I",
                "100",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter",
                "-o",
            ]
            .map(Into::into),
        );
        argv.push(perf.into());
        argv.push("--".into());
    }
    if let Some(core) = core {
        argv.extend(["taskset".into(), "-c".into(), core.to_string().into()]);
    }
    argv.push(program.into());
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    command
}

fn log_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts a child that prints its address on stdout, on the first line containing `after`
/// (right after it), and reads that address. Its stdin stays open for its life: a child of
/// this bench ends when the bench does.
fn start_announcing(mut command: Command, after: &str) -> Result<Proxy, String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {command:?}: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut addr = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(at) = line.find(after) {
            addr = line[at + after.len()..].trim().parse().ok();
            break;
        }
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{command:?} did not say where it listens"));
    };
    // taskset execs the program: the child's id is the proxy's (unless perf runs it).
    let pids = vec![child.id()];
    Ok(Proxy {
        child,
        nginx: false,
        pids,
        addr,
        syscalls: None,
    })
}

fn start_nginx(
    mut command: Command,
    under_perf: bool,
    upstream: SocketAddr,
    placement: &Placement,
) -> Result<Proxy, String> {
    let dir = &placement.dir;
    let listen = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(dir, upstream, listen, placement.nginx_workers),
    )
    .map_err(|e| format!("{}: {e}", conf.display()))?;
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(&dir.join("nginx-stderr.log"))?);
    let child = command
        .spawn()
        .map_err(|e| format!("starting {command:?}: {e}"))?;
    let mut proxy = Proxy {
        pids: vec![child.id()],
        child,
        nginx: true,
        addr: listen,
        syscalls: None,
    };
    // Serving once it accepts and its workers are up (bounded: nginx starts in
    // milliseconds, or fails and says why in its error log).
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!(
                "nginx exited ({status}); see {}",
                dir.join("nginx-error.log").display()
            ));
        }
        // Under perf, the master is perf's child.
        let master = if under_perf {
            children_of(proxy.child.id()).first().copied()
        } else {
            Some(proxy.child.id())
        };
        let workers = master.map(children_of).unwrap_or_default();
        if workers.len() == placement.nginx_workers && TcpStream::connect(listen).is_ok() {
            proxy.pids = master.into_iter().chain(workers).collect();
            return Ok(proxy);
        }
        if Instant::now() > until {
            return Err(format!(
                "nginx was not serving on {listen} within 5 s; see {}",
                dir.join("nginx-error.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// nginx as the issue's comparison runs it: one worker per core of the proxy's, events
/// passed on as they are read (`proxy_buffering off`), HTTP/1.1 keep-alive to the upstream,
/// an access log line per request (the gateway writes one too), every path inside `dir`.
fn nginx_conf(dir: &Path, upstream: SocketAddr, listen: SocketAddr, workers: usize) -> String {
    let dir = dir.display();
    // Workers of a root master drop to `nobody` unless told otherwise.
    let user = if running_as_root() { "user root;" } else { "" };
    format!(
        r#"# Written by the proxy_cost bench: a plain process on 127.0.0.1, nothing outside {dir}.
{user}
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log {dir}/nginx-access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;

    upstream bench_upstream {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}

    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        .unwrap_or(false)
}

/// A port nobody listens on now (nginx needs its port in its configuration).
fn free_port() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|fields| fields.get(1) == Some(&parent.to_string()))
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces): the
/// state is field 0, the parent 1, utime 11, stime 12.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    Some(after_name.split(' ').map(str::to_owned).collect())
}

/// User plus system CPU time of a process (every thread, living or ended) so far.
pub fn process_cpu(pid: u32) -> Duration {
    let ticks: u64 = stat_fields(pid)
        .map(|fields| {
            fields[11..13]
                .iter()
                .filter_map(|ticks| ticks.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|ticks| ticks.trim().parse().ok())
            .unwrap_or(100)
    })
}

fn signal(pid: u32, name: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
}
