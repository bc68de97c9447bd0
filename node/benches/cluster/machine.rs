//! CPU accounting from /proc: on a small machine other work shows up as latency, so
//! every run records how busy the rest of the machine was, and each section first
//! waits for it to go quiet.

use crate::host::{cpu_seconds, machine_busy_seconds};
use std::time::{Duration, Instant};

/// `pid` and all its live descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Waits (at most `max`) until the machine is nearly idle (below 10% busy over half a
/// second): other work on a small machine is measured as latency. Returns the busy
/// share of the last sample, in percent.
pub fn wait_for_quiet(max: Duration) -> f64 {
    let cores = cores();
    let began = Instant::now();
    loop {
        let b0 = machine_busy_seconds();
        std::thread::sleep(Duration::from_millis(500));
        let busy = (machine_busy_seconds() - b0) / (0.5 * cores) * 100.0;
        if busy < 10.0 || began.elapsed() >= max {
            if busy >= 10.0 {
                eprintln!("(the machine is {busy:.0}% busy with other work; measuring anyway)");
            }
            return busy;
        }
    }
}

/// Measures the share of the machine's CPU that processes other than `ours` (and their
/// descendants) use during a run.
pub struct Background {
    cores: f64,
    ours: Vec<u32>,
    start: (f64, f64, Instant),
}

impl Background {
    pub fn start(ours: &[u32]) -> Self {
        let ours = ours.to_vec();
        let start = (
            machine_busy_seconds(),
            Self::ours_cpu(&ours),
            Instant::now(),
        );
        Self {
            cores: cores(),
            ours,
            start,
        }
    }

    fn ours_cpu(ours: &[u32]) -> f64 {
        ours.iter()
            .flat_map(|&p| process_tree(p))
            .map(cpu_seconds)
            .sum()
    }

    /// (background %, our CPU seconds) since `start`.
    pub fn stop(&self) -> (f64, f64) {
        let busy = machine_busy_seconds() - self.start.0;
        let ours = Self::ours_cpu(&self.ours) - self.start.1;
        let wall = self.start.2.elapsed().as_secs_f64();
        let bg = ((busy - ours) / (wall * self.cores) * 100.0).clamp(0.0, 100.0);
        (bg, ours)
    }
}
