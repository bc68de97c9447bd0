//! The bench's flags (listed in `main.rs`'s header), parsed by hand because cargo's
//! bench runner passes its own (`--bench`) along with ours.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Options {
    pub sections: Vec<String>,
    pub duration: Duration,
    pub writers: Vec<usize>,
    pub trials: usize,
    pub proc_trials: usize,
    pub concurrency: usize,
    pub max_tokens: u32,
    pub dir: PathBuf,
    pub out: PathBuf,
    /// Longest wait for the machine to go quiet before each section.
    pub quiet_wait: Duration,
    /// failover-proc: least time between restarting a killed node and the next kill.
    pub proc_settle: Duration,
}

impl Options {
    pub fn on(&self, section: &str) -> bool {
        self.sections.iter().any(|x| x == section)
    }
}

pub const SECTIONS: [&str; 5] = ["raft", "failover", "failover-proc", "forward", "handoff"];

/// Cargo runs benches in the package directory (node/); paths given to the bench are
/// taken from the workspace root instead, as the docs' commands assume.
pub fn workspace_root() -> PathBuf {
    let node = Path::new(env!("CARGO_MANIFEST_DIR"));
    node.parent().unwrap_or(node).to_path_buf()
}

pub fn parse_options() -> Result<Options> {
    let mut o = Options {
        sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
        duration: Duration::from_secs(3),
        writers: vec![1, 8, 64],
        trials: 10,
        proc_trials: 10,
        concurrency: 16,
        max_tokens: 8,
        dir: std::env::temp_dir(),
        out: workspace_root().join("target/bench-cluster/results.json"),
        quiet_wait: Duration::from_secs(5),
        proc_settle: Duration::from_secs(6),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        let secs = |v: String| -> Result<Duration> {
            let s: f64 = v
                .parse()
                .with_context(|| format!("{a}: seconds, not '{v}'"))?;
            Duration::try_from_secs_f64(s).with_context(|| format!("{a}: {v} seconds"))
        };
        let int = |v: String| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{a}: an integer, not '{v}'"))
        };
        match a.as_str() {
            "--only" => {
                o.sections = value()?.split(',').map(str::to_owned).collect();
                for s in &o.sections {
                    if !SECTIONS.contains(&s.as_str()) {
                        bail!("unknown section {s}; known: {SECTIONS:?}");
                    }
                }
            }
            "--duration" => o.duration = secs(value()?)?,
            "--writers" => {
                o.writers = value()?
                    .split(',')
                    .map(|c| int(c.to_owned()))
                    .collect::<Result<_>>()?
            }
            "--trials" => o.trials = int(value()?)?,
            "--proc-trials" => o.proc_trials = int(value()?)?,
            "--concurrency" => o.concurrency = int(value()?)?,
            "--max-tokens" => {
                let v = value()?;
                o.max_tokens = v
                    .parse()
                    .with_context(|| format!("{a}: an integer, not '{v}'"))?
            }
            "--dir" => o.dir = workspace_root().join(value()?),
            "--json" => o.out = workspace_root().join(value()?),
            "--quiet-wait" => o.quiet_wait = secs(value()?)?,
            "--proc-settle" => o.proc_settle = secs(value()?)?,
            // cargo bench passes --bench; ignore it and anything else libtest-ish.
            _ => {}
        }
    }
    Ok(o)
}
