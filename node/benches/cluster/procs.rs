//! Real `sluice node start` processes in cluster mode for the `failover-proc` and
//! `forward` sections, which measure what an operator would see: process kills,
//! restarts on the same data dir, the CLI's `cluster status --json`, the front door.

use sluice_node::cluster::rpc::ClusterStatus;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process stopped on drop (SIGTERM, then SIGKILL).
pub struct Proc {
    name: String,
    child: Child,
    /// The front door URL it printed.
    pub url: String,
}

impl Proc {
    fn start(name: &str, bin: &Path, args: &[String], log: &Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            // A panic's message still reaches the log; symbolizing a backtrace for each
            // (RUST_BACKTRACE=1 in the caller's environment) would cost more CPU than
            // the requests being measured.
            .env("RUST_BACKTRACE", "0")
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
                if line.contains("node listening on") {
                    if let Some(i) = line.find("http://") {
                        let _ = tx.send(line[i..].trim().to_owned());
                    }
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not print its listening address within 30 s");
            }
        };
        Proc {
            name: name.to_owned(),
            child,
            url,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        crate::host::stop(&mut self.child, &self.name, Duration::from_secs(2));
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
        .port()
}

fn run_ok(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sluice cluster status --json` asked of the node at `quic` (credentials of `creds`),
/// read as the node's own `ClusterStatus`.
pub fn status(bin: &Path, creds: &Path, quic: SocketAddr) -> Option<ClusterStatus> {
    let out = Command::new(bin)
        .args(["cluster", "status", "--json", "--data-dir"])
        .arg(creds)
        .arg("--node")
        .arg(quic.to_string())
        .env("RUST_LOG", "error")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// One cluster node's settings, to start it again after a kill.
pub struct NodeSpec {
    name: String,
    pub data: PathBuf,
    pub quic: SocketAddr,
    rack: String,
    replicas: usize,
    join: Option<(SocketAddr, String)>,
    /// The model its replicas serve (`--model`), when not the default.
    pub model: Option<String>,
}

impl NodeSpec {
    pub fn start(&self, bin: &Path, logs: &Path) -> Proc {
        let mut args: Vec<String> = [
            "node",
            "start",
            "--http",
            "127.0.0.1:0",
            "--time-scale",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--data-dir".into(),
            self.data.display().to_string(),
            "--listen".into(),
            self.quic.to_string(),
            "--rack".into(),
            self.rack.clone(),
            "--replicas".into(),
            self.replicas.to_string(),
        ]);
        if let Some(model) = &self.model {
            args.extend(["--model".into(), model.clone()]);
        }
        if let Some((peer, token)) = &self.join {
            args.extend([
                "--join".into(),
                peer.to_string(),
                "--token".into(),
                token.clone(),
            ]);
        }
        Proc::start(
            &self.name,
            bin,
            &args,
            &logs.join(format!("{}.log", self.name)),
        )
    }
}

/// Data dirs and settings of `n` nodes; node 0 initialized the cluster.
pub fn cluster_specs(
    bin: &Path,
    root: &Path,
    prefix: &str,
    n: usize,
    replicas: usize,
) -> Vec<NodeSpec> {
    let first = root.join(format!("{prefix}-1"));
    run_ok(
        bin,
        &[
            "cluster",
            "init",
            "--data-dir",
            first.to_str().expect("utf-8 path"),
        ],
    );
    let token = std::fs::read_to_string(first.join("tls/join-token"))
        .expect("join token")
        .trim()
        .to_owned();
    let quic: Vec<SocketAddr> = (0..n)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
        .collect();
    (0..n)
        .map(|i| NodeSpec {
            name: format!("{prefix}-{}", i + 1),
            data: root.join(format!("{prefix}-{}", i + 1)),
            quic: quic[i],
            rack: format!("rack-{}", i + 1),
            replicas,
            join: (i > 0).then(|| (quic[0], token.clone())),
            model: None,
        })
        .collect()
}

/// Polls until `ok` holds for the status of every node in `quics` (or panics after
/// `limit`).
pub fn wait_status(
    bin: &Path,
    creds: &Path,
    quics: &[SocketAddr],
    limit: Duration,
    what: &str,
    ok: impl Fn(&ClusterStatus) -> bool,
) -> Vec<ClusterStatus> {
    let start = Instant::now();
    loop {
        let all: Vec<Option<ClusterStatus>> =
            quics.iter().map(|&q| status(bin, creds, q)).collect();
        if all.iter().all(|s| s.as_ref().is_some_and(&ok)) {
            return all.into_iter().flatten().collect();
        }
        assert!(
            start.elapsed() < limit,
            "cluster did not reach '{what}' within {limit:?}; last status: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `sluice` binary to start: cargo builds the package's binary (bench profile,
/// `target/release/sluice`) along with this bench, so the nodes run the same code as
/// the bench was built from; `SLUICE_BIN` picks another.
pub fn sluice_bin() -> PathBuf {
    let bin = std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")));
    if !bin.exists() {
        eprintln!("{} not found (SLUICE_BIN)", bin.display());
        std::process::exit(2);
    }
    bin
}

/// Lines announcing a panic in the logs of this section's nodes.
pub fn count_panics(logs: &Path, prefix: &str) -> usize {
    std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches("panicked at")
                .count()
        })
        .sum()
}

/// Removes the logs of an earlier run of this section (node logs are appended to, so
/// that a restarted node keeps its history).
pub fn clear_logs(logs: &Path, prefix: &str) {
    for e in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".log") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
