//! What the supervisor reads of an engine's process group in `/proc` (Linux): from each
//! process's `stat`, whether it is still alive and which group it belongs to; from its
//! threads' `schedstat`, how long the group has run on a CPU or waited for one — an
//! engine that holds work, writes no token and neither runs nor waits to run is not
//! computing anything (`front::probe`).

use std::path::{Path, PathBuf};

/// The fields of one `stat` line the supervisor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z`, `X`, …
    pub state: char,
    pub pgrp: i32,
}

impl ProcStat {
    /// Parses "pid (comm) state ppid pgrp …". `comm` may hold spaces and parentheses,
    /// so the fields are read after the last ')'.
    pub fn parse(line: &str) -> Option<Self> {
        let (_, rest) = line.rsplit_once(')')?;
        let mut f = rest.split_whitespace();
        let state = f.next()?.chars().next()?;
        let pgrp = f.nth(1)?.parse().ok()?;
        Some(Self { state, pgrp })
    }

    /// A zombie or a dead entry: it runs nothing.
    pub fn gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// `/proc/<pid>/stat` of the process in `dir`.
    pub fn read(dir: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(dir.join("stat")).ok()?)
    }
}

/// Every process under `proc` whose `stat` can be read: its directory and its `stat`.
pub fn all(proc: &Path) -> impl Iterator<Item = (PathBuf, ProcStat)> {
    std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| {
            let dir = e.path();
            ProcStat::read(&dir).map(|p| (dir, p))
        })
}

/// How long (ms) the live processes of each group in `groups` have run on a CPU or
/// waited runnable for one, summed over all their threads (`/proc/<pid>/task/*/schedstat`:
/// time on the CPU, time on a run queue), in that order. The wait counts because an
/// engine starved of CPU by its neighbours uses little of it while it computes; only
/// one that neither runs nor asks to is idle. `None` for a group when the figures
/// cannot be read (not Linux, no scheduler statistics, a member unreadable) or a
/// thread is blocked in uninterruptible I/O. Threads
/// and members that exited take their time with them, so a figure can fall: a reader
/// compares two only while both show the group doing nothing else.
pub fn groups_busy_ms(groups: &[i32]) -> Vec<Option<u64>> {
    groups_busy_ms_in(Path::new("/proc"), groups)
}

fn groups_busy_ms_in(proc: &Path, groups: &[i32]) -> Vec<Option<u64>> {
    let mut busy_ns: Vec<Option<u64>> = vec![Some(0); groups.len()];
    if groups.is_empty() || !proc.join("self").exists() {
        return vec![None; groups.len()];
    }
    for (dir, stat) in all(proc).filter(|(_, p)| !p.gone()) {
        let Some(i) = groups.iter().position(|&g| g == stat.pgrp) else {
            continue;
        };
        let threads = process_busy_ns(&dir);
        busy_ns[i] = busy_ns[i].zip(threads).map(|(a, b)| a.saturating_add(b));
    }
    busy_ns
        .into_iter()
        .map(|ns| ns.map(|ns| ns / 1_000_000))
        .collect()
}

/// A process's threads' time on a CPU plus time waiting on a run queue (ns); `None`
/// if any thread's statistics cannot be read, or a thread is blocked in the kernel
/// (`D`: disk or other uninterruptible I/O, swapping): neither running nor runnable,
/// yet not idle by the engine's choice, so the figure would not mean what it says.
fn process_busy_ns(dir: &Path) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(dir.join("task")).ok()?.flatten() {
        let path = task.path();
        if ProcStat::read(&path)?.state == 'D' {
            return None;
        }
        let text = std::fs::read_to_string(path.join("schedstat")).ok()?;
        total = total.saturating_add(schedstat_busy_ns(&text)?);
    }
    Some(total)
}

/// "on-cpu-ns runqueue-wait-ns timeslices" → the first two summed.
fn schedstat_busy_ns(line: &str) -> Option<u64> {
    let mut f = line.split_whitespace();
    let run: u64 = f.next()?.parse().ok()?;
    let wait: u64 = f.next()?.parse().ok()?;
    Some(run.saturating_add(wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_after_its_name() {
        let line = "4242 (python3 (vllm) x) S 1 4200 4200 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(
            ProcStat::parse(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 4200
            })
        );
        assert!(ProcStat::parse("4242 (x) Z 1 7 7 0").is_some_and(|p| p.gone()));
        assert_eq!(ProcStat::parse("4242 (x) S 1"), None);
        assert_eq!(ProcStat::parse("garbage"), None);
    }

    #[test]
    fn a_schedstat_line_gives_time_run_and_waited() {
        assert_eq!(schedstat_busy_ns("100780 808711 2\n"), Some(909_491));
        assert_eq!(schedstat_busy_ns("100780"), None);
        assert_eq!(schedstat_busy_ns("x y z"), None);
    }

    #[test]
    fn this_process_group_has_been_busy_and_a_stranger_group_not() {
        if !Path::new("/proc/self/task").exists() {
            return;
        }
        // SAFETY: getpgrp has no preconditions.
        let me = unsafe { libc::getpgrp() };
        // Burn a little CPU so the figure cannot round to zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let got = groups_busy_ms(&[me, i32::MAX]);
        assert!(got[0].is_some_and(|ms| ms > 0), "{got:?}");
        assert_eq!(got[1], Some(0));
        assert_eq!(
            groups_busy_ms_in(Path::new("/nonexistent"), &[me]),
            vec![None]
        );
    }
}
