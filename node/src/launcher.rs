//! Launches engine replicas as child processes of the node — the simulated engine (the
//! embedded default) or a real one from a command template — waits until each is ready,
//! and stops them with it.
//!
//! Each engine runs in its own process group: a real engine is a tree of processes
//! (vLLM's API server starts an EngineCore and workers, each holding gigabytes and, on
//! a GPU host, the GPU), so every signal goes to the whole group, and a stop or kill
//! waits until no process of the group is left.

use crate::supervisor::listening;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The line a replica prints on stdout once it is listening.
pub const READY_PREFIX: &str = "sluice replica listening on ";

/// How to start one replica.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub model: String,
    pub profile: Option<PathBuf>,
    pub time_scale: f64,
    /// A real engine's command template; `None`: the simulated engine.
    pub command: Option<String>,
    /// How long a real engine may take to answer `/health`.
    pub start_timeout: Duration,
}

/// A running child replica: the leader of its own process group.
pub struct ChildReplica {
    pub url: String,
    child: Child,
    /// The process group (the leader's pid); `None` once the group is gone.
    pgid: Option<i32>,
}

/// Starts `count` replicas, numbered from `first` (a node's engine numbers are unique
/// across its models), and waits until each is ready.
pub async fn launch(first: usize, count: usize, spec: &EngineSpec) -> Result<Vec<ChildReplica>> {
    let mut out = Vec::with_capacity(count);
    for i in first..first + count {
        out.push(launch_one(i, spec).await?);
    }
    Ok(out)
}

/// Starts replica number `i` and waits until it is ready.
pub async fn launch_one(i: usize, spec: &EngineSpec) -> Result<ChildReplica> {
    match &spec.command {
        Some(template) => launch_command(i, template, spec).await,
        None => launch_sim(i, spec).await,
    }
}

async fn launch_sim(i: usize, spec: &EngineSpec) -> Result<ChildReplica> {
    let exe =
        std::env::current_exe().context("cannot find the sluice executable to launch replicas")?;
    let mut cmd = Command::new(&exe);
    cmd.args([
        "replica",
        "sim",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model",
        &spec.model,
    ])
    .args([
        "--time-scale",
        &spec.time_scale.to_string(),
        "--seed",
        &i.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .kill_on_drop(true);
    if let Some(p) = &spec.profile {
        cmd.arg("--profile").arg(p);
    }
    engine_env(&mut cmd);
    die_with_parent(&mut cmd);
    let mut replica = ChildReplica::spawn(cmd, i)?;
    let url =
        match tokio::time::timeout(Duration::from_secs(30), ready_url(&mut replica.child)).await {
            Ok(Ok(url)) => url,
            Ok(Err(e)) => return Err(e.context(format!("replica {i} did not start"))),
            Err(_) => bail!("replica {i} did not report it was listening within 30 s"),
        };
    tracing::info!(replica = i, %url, pid = replica.child.id(), "replica started");
    replica.url = url;
    Ok(replica)
}

/// The words of a command template with its placeholders filled in. Split on
/// whitespace before filling, so a value can never add arguments.
pub fn fill_template(
    template: &str,
    model: &str,
    host: &str,
    port: u16,
    index: usize,
) -> Vec<String> {
    template
        .split_whitespace()
        .map(|w| {
            w.replace("{model}", model)
                .replace("{host}", host)
                .replace("{port}", &port.to_string())
                .replace("{index}", &index.to_string())
        })
        .collect()
}

/// Whether an engine started with these words will ignore request priorities: vLLM
/// schedules first-come-first-served unless started with `--scheduling-policy priority`,
/// and then takes a `priority` field without a word (so probes would queue behind real
/// work). Other engines are not judged.
pub fn ignores_priority(template: &str) -> bool {
    let words: Vec<&str> = template.split_whitespace().collect();
    let vllm = words.iter().any(|w| {
        w.rsplit('/').next().is_some_and(|b| b == "vllm") || w.starts_with("vllm.entrypoints")
    });
    let priority = words
        .windows(2)
        .any(|p| p[0] == "--scheduling-policy" && p[1] == "priority")
        || words.contains(&"--scheduling-policy=priority");
    vllm && !priority
}

/// How many ports a real engine is tried on when another process takes the one it was
/// given before it binds it.
const PORT_ATTEMPTS: usize = 3;

/// A real engine: a free loopback port, the filled template, then `/health` polled
/// until it answers 200 (model loading can take minutes) or the process exits. The port
/// was free a moment before the engine binds it: if another process took it meanwhile
/// (the engine exits, or a stranger answers `/health`), a new port is tried.
async fn launch_command(i: usize, template: &str, spec: &EngineSpec) -> Result<ChildReplica> {
    for attempt in 1..=PORT_ATTEMPTS {
        match try_port(i, template, spec).await? {
            Some(replica) => return Ok(replica),
            None => tracing::warn!(
                replica = i,
                attempt,
                "another process took the engine's port before it did; trying another"
            ),
        }
    }
    bail!("replica {i}: another process took its port {PORT_ATTEMPTS} times in a row")
}

/// One start on a fresh port: the ready engine, or `None` when the port turned out to
/// be someone else's.
async fn try_port(i: usize, template: &str, spec: &EngineSpec) -> Result<Option<ChildReplica>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for the engine")?
        .port();
    let words = fill_template(template, &spec.model, "127.0.0.1", port, i);
    let Some((program, args)) = words.split_first() else {
        bail!("replicas.command is empty");
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    engine_env(&mut cmd);
    die_with_parent(&mut cmd);
    let mut replica = ChildReplica::spawn(cmd, i)
        .with_context(|| format!("cannot start replica {i} with `{}`", words.join(" ")))?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + spec.start_timeout;
    let client = crate::front::http_client(Duration::from_secs(1));
    // Whether the port is held by another process than the engine (`None`: the engine
    // is gone) — when /proc cannot tell, the port is trusted.
    let stranger = |pgid: Option<i32>| {
        listening::anyone_listens_on(port) == Some(true)
            && pgid.is_none_or(|g| listening::group_listens_on(g, port) == Some(false))
    };
    loop {
        if let Some(status) = replica.child.try_wait()? {
            // What the engine started (an EngineCore, workers) goes with it.
            replica.kill().await;
            if stranger(None) {
                return Ok(None);
            }
            bail!("replica {i} exited with {status} before it was ready");
        }
        if health_ok(&client, &url).await {
            if stranger(replica.pgid) {
                replica.kill().await;
                return Ok(None);
            }
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            replica.kill().await;
            bail!(
                "replica {i} did not answer {url}/health within {:?}",
                spec.start_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tracing::info!(replica = i, %url, pid = replica.child.id(), "replica started");
    replica.url = url;
    Ok(Some(replica))
}

async fn health_ok(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
) -> bool {
    let Ok(req) = hyper::Request::get(format!("{url}/health"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.request(req)).await,
        Ok(Ok(resp)) if resp.status().is_success()
    )
}

/// The host's core count is the wrong default inside a container: size the engine's
/// thread pools from the CPU quota (unless the operator set OMP_NUM_THREADS).
fn engine_env(cmd: &mut Command) {
    if let Some(n) = crate::supervisor::cpu_quota::for_this_host() {
        cmd.env("OMP_NUM_THREADS", n.to_string());
    }
}

/// How long a group that was sent SIGKILL may take to disappear before we stop waiting
/// (a process in uninterruptible sleep, or a zombie nobody reaps).
const GROUP_GONE_WAIT: Duration = Duration::from_secs(10);

impl ChildReplica {
    /// The engine's process group, while it has one.
    pub fn group(&self) -> Option<i32> {
        self.pgid
    }

    /// Starts `cmd` as the leader of a new process group.
    fn spawn(mut cmd: Command, i: usize) -> Result<Self> {
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start replica {i}"))?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        Ok(Self {
            url: String::new(),
            child,
            pgid,
        })
    }

    /// Resolves when the group's leader exits (crashed, killed, or stopped). The rest
    /// of the group may live on: [`ChildReplica::kill`] takes it.
    pub async fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.wait().await.ok()
    }

    /// SIGKILL to the whole group (an engine that no longer makes progress, or what is
    /// left of one that exited), then waits until no process of it is left.
    pub async fn kill(&mut self) {
        signal_group(self.pgid, libc::SIGKILL);
        let _ = self.child.wait().await;
        self.wait_group_gone(GROUP_GONE_WAIT).await;
    }

    /// SIGTERM to the group (and SIGCONT, so a stopped group can act on it), SIGKILL
    /// to whatever is left after `grace`, then waits until the group is gone.
    pub async fn stop(&mut self, grace: Duration) {
        signal_group(self.pgid, libc::SIGTERM);
        signal_group(self.pgid, libc::SIGCONT);
        let deadline = tokio::time::Instant::now() + grace;
        let _ = tokio::time::timeout_at(deadline, self.child.wait()).await;
        // The leader may be gone while its EngineCore still shuts down.
        while group_alive(self.pgid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill().await;
    }

    async fn wait_group_gone(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while group_alive(self.pgid) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(pgid = ?self.pgid, "engine processes outlived SIGKILL");
                return;
            }
            signal_group(self.pgid, libc::SIGKILL);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.pgid = None;
    }
}

impl Drop for ChildReplica {
    /// However the node lets go of an engine (a panic, an aborted start), its whole
    /// group goes with it.
    fn drop(&mut self) {
        signal_group(self.pgid, libc::SIGKILL);
    }
}

fn signal_group(pgid: Option<i32>, sig: libc::c_int) {
    if let Some(g) = pgid.filter(|g| *g > 1) {
        // SAFETY: signals a process group this node created for its engine.
        unsafe {
            libc::killpg(g, sig);
        }
    }
}

/// Whether any live process of the group is left. Zombies do not count: an orphaned
/// EngineCore that died is reaped by whoever inherits it, not by us.
fn group_alive(pgid: Option<i32>) -> bool {
    let Some(g) = pgid.filter(|g| *g > 1) else {
        return false;
    };
    #[cfg(target_os = "linux")]
    if std::path::Path::new("/proc/self").exists() {
        return crate::supervisor::proc_stat::all(std::path::Path::new("/proc"))
            .any(|(_, p)| p.pgrp == g && !p.gone());
    }
    // SAFETY: signal 0 sends nothing; it asks whether the group exists.
    unsafe { libc::killpg(g, 0) == 0 }
}

async fn ready_url(child: &mut Child) -> Result<String> {
    let stdout = child
        .stdout
        .take()
        .context("replica stdout was not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix(READY_PREFIX) {
            let url = url.trim().to_owned();
            // Keep draining so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(url);
        }
    }
    bail!("replica exited before it was listening")
}

/// On Linux, a child gets SIGTERM if the node dies without stopping it (even `kill -9`).
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vllm_without_priority_scheduling_is_recognised() {
        assert!(ignores_priority("vllm serve {model} --port {port}"));
        assert!(ignores_priority(
            "/venv/bin/python -m vllm.entrypoints.openai.api_server --model m"
        ));
        assert!(!ignores_priority(
            "vllm serve m --scheduling-policy priority --port {port}"
        ));
        assert!(!ignores_priority(
            "python -m vllm.entrypoints.openai.api_server --scheduling-policy=priority"
        ));
        assert!(!ignores_priority("sglang.launch_server --model m"));
    }

    #[test]
    fn templates_fill_placeholders_without_adding_arguments() {
        let w = fill_template(
            "vllm serve {model} --host {host} --port {port} --seed {index}",
            "meta llama",
            "127.0.0.1",
            8001,
            3,
        );
        assert_eq!(
            w,
            [
                "vllm",
                "serve",
                "meta llama",
                "--host",
                "127.0.0.1",
                "--port",
                "8001",
                "--seed",
                "3"
            ]
        );
    }
}
