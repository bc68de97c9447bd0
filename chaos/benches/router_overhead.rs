//! Router overhead on loopback: throughput and latency of going through a node versus
//! hitting its replica directly, streaming and not, with the engine in zero-delay mode.
//!
//! ```text
//! cargo build --release -p sluice
//! cargo bench -p sluice-chaos --bench router_overhead [-- --pin split|none] [--duration S] [--rate R]
//! ```
//!
//! It starts one zero-delay replica (`sluice replica sim --time-scale 0`) and one node
//! fronting it (`sluice node start --replica …`), then for each scenario measures the
//! direct path and the node path back to back with the in-process load generator:
//! closed loops at a few concurrencies (throughput, and unloaded latency at 1) and an
//! open loop at a fixed moderate rate (latency from the scheduled start). It also reads
//! each process's CPU time from `/proc`, so the node's CPU cost per request is known
//! even where the three processes' competition for two cores hides it in the rates.
//!
//! `--pin split` puts the load generator on CPU 0 and the replica and node on CPU 1
//! (via `taskset` and `sched_setaffinity`), so that both paths get the same single core
//! server-side; `--pin none` (the default) lets the scheduler place everything.
//! Results go to stdout and, as JSON, to `target/bench-router/results.json`.

use serde::Serialize;
use sluice_chaos::loadgen::{self, Endpoint, LoadConfig, Mode, Report};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Options {
    pin: Pin,
    duration: Duration,
    warmup: Duration,
    rate: f64,
    concurrencies: Vec<usize>,
    max_tokens: u32,
    prompt_words: usize,
    out: PathBuf,
    /// Longest wait for the rest of the machine to go quiet before each pair of runs.
    quiet_wait: Duration,
}

#[derive(Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Pin {
    None,
    Split,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("chaos/ has a parent")
        .to_path_buf()
}

fn parse_options() -> Options {
    let mut o = Options {
        pin: Pin::None,
        duration: Duration::from_secs(4),
        warmup: Duration::from_millis(700),
        rate: 2000.0,
        concurrencies: vec![1, 8, 64],
        max_tokens: 8,
        prompt_words: 32,
        out: workspace_root().join("target/bench-router/results.json"),
        quiet_wait: Duration::from_secs(10),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            "--pin" => {
                o.pin = match value("--pin").as_str() {
                    "none" => Pin::None,
                    "split" => Pin::Split,
                    other => panic!("--pin none|split, got {other}"),
                }
            }
            "--duration" => {
                o.duration = Duration::from_secs_f64(value("--duration").parse().expect("seconds"))
            }
            "--warmup" => {
                o.warmup = Duration::from_secs_f64(value("--warmup").parse().expect("seconds"))
            }
            "--rate" => o.rate = value("--rate").parse().expect("requests per second"),
            "--concurrency" => {
                o.concurrencies = value("--concurrency")
                    .split(',')
                    .map(|c| c.parse().expect("comma-separated integers"))
                    .collect()
            }
            "--max-tokens" => o.max_tokens = value("--max-tokens").parse().expect("integer"),
            "--quiet-wait" => {
                o.quiet_wait =
                    Duration::from_secs_f64(value("--quiet-wait").parse().expect("seconds"))
            }
            "--json" => o.out = PathBuf::from(value("--json")),
            // cargo bench passes --bench; ignore it and anything else libtest-ish.
            _ => {}
        }
    }
    o
}

/// A child process (replica or node) killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    url: String,
}

impl Server {
    fn start(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        cpu: Option<usize>,
        log: &Path,
    ) -> Server {
        let mut cmd = match cpu {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.arg("-c").arg(c.to_string()).arg(bin);
                t
            }
            None => Command::new(bin),
        };
        let log = std::fs::File::create(log).expect("create log file");
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(i) = line.find("http://") {
                    let _ = tx.send(line[i..].trim().to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("{name} did not print its listening address within 20 s");
            }
        };
        Server { name, child, url }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM for a graceful stop, then make sure.
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds used so far by process `pid` (all its threads).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and
    // 15th fields overall, i.e. the 12th and 13th after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Busy CPU seconds of the whole machine so far (all CPUs; idle and iowait excluded).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0.0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Waits (at most `max`) until the rest of the machine is nearly idle: other work on
/// a 2-CPU box (a compiler, say) would otherwise be measured as router overhead.
/// Returns the busy fraction of the last sample.
fn wait_for_quiet(cores: usize, max: Duration) -> f64 {
    let began = std::time::Instant::now();
    loop {
        let b0 = machine_busy_seconds();
        std::thread::sleep(Duration::from_millis(500));
        let busy = (machine_busy_seconds() - b0) / (0.5 * cores as f64);
        if busy < 0.10 || began.elapsed() >= max {
            return busy;
        }
    }
}

#[derive(Serialize)]
struct Measurement {
    path: &'static str,
    stream: bool,
    mode: String,
    /// CPU µs per successful request, by process.
    cpu_us_per_request: CpuCost,
    /// Share of the machine's CPU time used by other processes during the run.
    background_cpu_pct: f64,
    report: Report,
}

#[derive(Serialize, Clone, Copy, Default)]
struct CpuCost {
    loadgen: f64,
    node: f64,
    replica: f64,
}

struct Bench<'a> {
    o: &'a Options,
    cores: usize,
    replica: &'a Server,
    node: &'a Server,
}

impl Bench<'_> {
    async fn measure(&self, via_node: bool, stream: bool, mode: Mode) -> Measurement {
        let url = if via_node {
            &self.node.url
        } else {
            &self.replica.url
        };
        let mut cfg = LoadConfig::new(url.clone(), mode);
        cfg.endpoint = Endpoint::Chat;
        cfg.stream = stream;
        cfg.max_tokens = self.o.max_tokens;
        cfg.prompt_tokens = self.o.prompt_words;
        cfg.ignore_eos = true;
        cfg.sessions = 64;
        cfg.request_timeout = Duration::from_secs(10);
        // Warm the connections and both servers up in a separate, discarded run so
        // that the CPU counters below cover the measured window only.
        cfg.duration = self.o.warmup;
        cfg.warmup = Duration::ZERO;
        loadgen::run(&cfg).await.expect("warm-up run");
        cfg.duration = self.o.duration;
        let pids = [std::process::id(), self.node.pid(), self.replica.pid()];
        let (before, busy0, t0) = (
            pids.map(cpu_seconds),
            machine_busy_seconds(),
            std::time::Instant::now(),
        );
        let report = loadgen::run(&cfg).await.expect("load run");
        let (after, busy1, elapsed) = (pids.map(cpu_seconds), machine_busy_seconds(), t0.elapsed());
        let ours: f64 = (0..3).map(|i| after[i] - before[i]).sum();
        let background_cpu_pct =
            ((busy1 - busy0 - ours) / (elapsed.as_secs_f64() * self.cores as f64) * 100.0).max(0.0);
        let per = |i: usize| (after[i] - before[i]) * 1e6 / report.ok.max(1) as f64;
        let cpu = CpuCost {
            loadgen: per(0),
            node: if via_node { per(1) } else { 0.0 },
            replica: per(2),
        };
        let mode = match mode {
            Mode::Closed { concurrency } => format!("closed c={concurrency}"),
            Mode::Open { rate_per_s, .. } => format!("open {rate_per_s}/s"),
        };
        let path = if via_node { "node" } else { "direct" };
        eprintln!(
            "  {path:<6} {:<9} {mode:<14} {:>8.0} ok/s  p50 {:>6} µs  p99 {:>6} µs  errors {}  cpu/req: lg {:.0} node {:.0} replica {:.0} µs  (background {:.0}%)",
            if stream { "stream" } else { "json" },
            report.rps,
            report.latency_us.p50,
            report.latency_us.p99,
            report.errors + report.dropped.unwrap_or(0),
            cpu.loadgen,
            cpu.node,
            cpu.replica,
            background_cpu_pct,
        );
        Measurement {
            background_cpu_pct,
            path,
            stream,
            mode,
            cpu_us_per_request: cpu,
            report,
        }
    }
}

fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; we pass its real size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!(
                "sched_setaffinity({cpu}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn main() {
    let o = parse_options();
    let bin = std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/sluice"));
    if !bin.exists() {
        eprintln!(
            "{} not found: run `cargo build --release -p sluice` first (or set SLUICE_BIN)",
            bin.display()
        );
        std::process::exit(2);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (lg_cpu, server_cpu) = match o.pin {
        Pin::Split if cores >= 2 => (Some(0), Some(1)),
        Pin::Split => panic!("--pin split needs at least 2 CPUs"),
        Pin::None => (None, None),
    };
    if let Some(c) = lg_cpu {
        pin_self(c);
    }
    let logs = o.out.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&logs).expect("create output directory");
    let replica = Server::start(
        "replica",
        &bin,
        &[
            "replica",
            "sim",
            "--port",
            "0",
            "--time-scale",
            "0",
            "--seed",
            "1",
        ],
        server_cpu,
        &logs.join("replica.log"),
    );
    let node = Server::start(
        "node",
        &bin,
        &[
            "node",
            "start",
            "--http",
            "127.0.0.1:0",
            "--replica",
            &replica.url,
        ],
        server_cpu,
        &logs.join("node.log"),
    );
    eprintln!(
        "router overhead: {cores} CPUs, pin {}, replica {} (pid {}), node {} (pid {}), {} s per run, max_tokens {}",
        match o.pin {
            Pin::None => "none",
            Pin::Split => "split (load generator on CPU 0; node and replica on CPU 1)",
        },
        replica.url,
        replica.pid(),
        node.url,
        node.pid(),
        o.duration.as_secs_f64(),
        o.max_tokens
    );
    // Two workers unpinned; one when the generator has a single CPU to itself.
    let workers = if lg_cpu.is_some() { 1 } else { 2 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let bench = Bench {
        o: &o,
        cores,
        replica: &replica,
        node: &node,
    };
    let mut results = Vec::new();
    rt.block_on(async {
        for stream in [false, true] {
            let mut modes: Vec<Mode> = o
                .concurrencies
                .iter()
                .map(|&c| Mode::Closed { concurrency: c })
                .collect();
            modes.push(Mode::Open {
                rate_per_s: o.rate,
                max_in_flight: 256,
            });
            for mode in modes {
                // Direct then through the node, back to back, so drifting background
                // load hits both sides alike; first wait (briefly) for a quiet machine.
                let busy = wait_for_quiet(cores, o.quiet_wait);
                if busy >= 0.10 {
                    eprintln!("  (machine still {:.0}% busy with other work after waiting; measuring anyway)", busy * 100.0);
                }
                results.push(bench.measure(false, stream, mode).await);
                results.push(bench.measure(true, stream, mode).await);
            }
        }
    });
    drop(node);
    drop(replica);

    println!();
    println!(
        "{:<9} {:<14} {:>10} {:>10} {:>7} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>9}",
        "kind",
        "mode",
        "direct/s",
        "node/s",
        "ratio",
        "p50 d",
        "p50 n",
        "Δp50",
        "p99 d",
        "p99 n",
        "Δp99",
        "node cpu"
    );
    for pair in results.chunks(2) {
        let (d, n) = (&pair[0].report, &pair[1].report);
        println!(
            "{:<9} {:<14} {:>10.0} {:>10.0} {:>7.2} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>6.1} µs | {:>2.0}/{:<2.0}",
            if pair[0].stream { "stream" } else { "json" },
            pair[0].mode,
            d.rps,
            n.rps,
            n.rps / d.rps.max(1e-9),
            d.latency_us.p50,
            n.latency_us.p50,
            n.latency_us.p50 as i64 - d.latency_us.p50 as i64,
            d.latency_us.p99,
            n.latency_us.p99,
            n.latency_us.p99 as i64 - d.latency_us.p99 as i64,
            pair[1].cpu_us_per_request.node,
            pair[0].background_cpu_pct,
            pair[1].background_cpu_pct,
        );
    }
    println!("(latencies in µs; Δ = node − direct; node cpu = node process CPU time per request;");
    println!(
        " bg % = share of the machine's CPU used by other processes during the direct/node runs)"
    );
    #[derive(Serialize)]
    struct Out<'a> {
        cpus: usize,
        pin: Pin,
        duration_s: f64,
        max_tokens: u32,
        open_rate: f64,
        measurements: &'a [Measurement],
    }
    let out = Out {
        cpus: cores,
        pin: o.pin,
        duration_s: o.duration.as_secs_f64(),
        max_tokens: o.max_tokens,
        open_rate: o.rate,
        measurements: &results,
    };
    std::fs::write(
        &o.out,
        serde_json::to_string_pretty(&out).expect("serialise results"),
    )
    .expect("write results");
    eprintln!("results written to {}", o.out.display());
    let failed: u64 = results.iter().map(|m| m.report.errors).sum();
    if failed > 0 {
        eprintln!(
            "warning: {failed} requests failed; see the per-run lines above and the logs in {}",
            logs.display()
        );
    }
}
