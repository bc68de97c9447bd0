//! Launches simulated replicas as child processes of the node (the embedded default)
//! and stops them with it.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The line a replica prints on stdout once it is listening.
pub const READY_PREFIX: &str = "sluice replica listening on ";

/// How to start one simulated replica.
#[derive(Debug, Clone)]
pub struct SimSpec {
    pub model: String,
    pub profile: Option<PathBuf>,
    pub time_scale: f64,
}

/// A running child replica.
pub struct ChildReplica {
    pub url: String,
    child: Child,
}

/// Starts `count` simulated replicas and waits until each is listening.
pub async fn launch(count: usize, spec: &SimSpec) -> Result<Vec<ChildReplica>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        out.push(launch_one(i, spec).await?);
    }
    Ok(out)
}

/// Starts simulated replica number `i` and waits until it is listening.
pub async fn launch_one(i: usize, spec: &SimSpec) -> Result<ChildReplica> {
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
    // The host's core count is the wrong default inside a container: size the engine's
    // thread pools from the CPU quota (unless the operator set OMP_NUM_THREADS).
    if let Some(n) = crate::supervisor::cpu_quota::for_this_host() {
        cmd.env("OMP_NUM_THREADS", n.to_string());
    }
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start replica {i}"))?;
    let url = match tokio::time::timeout(Duration::from_secs(30), ready_url(&mut child)).await {
        Ok(Ok(url)) => url,
        Ok(Err(e)) => return Err(e.context(format!("replica {i} did not start"))),
        Err(_) => bail!("replica {i} did not report it was listening within 30 s"),
    };
    tracing::info!(replica = i, %url, pid = child.id(), "replica started");
    Ok(ChildReplica { url, child })
}

impl ChildReplica {
    /// Resolves when the process exits (crashed, killed, or stopped).
    pub async fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.wait().await.ok()
    }

    /// SIGKILL: for an engine that no longer makes progress.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
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
