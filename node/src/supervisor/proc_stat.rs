//! A process's line in `/proc/<pid>/stat` (Linux), read for what the supervisor needs to
//! know of an engine's process group: whether a member is still alive, which group a
//! process belongs to, and how much CPU the group has used — an engine that holds work,
//! writes no token and uses no CPU is not computing anything (`front::probe`).

use std::path::Path;

/// The fields of one `stat` line the supervisor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z`, `X`, …
    pub state: char,
    pub pgrp: i32,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcStat {
    /// Parses "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
    /// cmajflt utime stime …". `comm` may hold spaces and parentheses, so the fields
    /// are read after the last ')'.
    pub fn parse(line: &str) -> Option<Self> {
        let (_, rest) = line.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let state = f.first()?.chars().next()?;
        let pgrp = f.get(2)?.parse().ok()?;
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some(Self {
            state,
            pgrp,
            cpu_ticks: utime.saturating_add(stime),
        })
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

/// Every process's `stat` under `proc`, those that can be read.
pub fn all(proc: &Path) -> impl Iterator<Item = ProcStat> {
    std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| ProcStat::read(&e.path()))
}

/// CPU time in milliseconds used so far by the live processes of each group in
/// `groups`, in that order; `None` for all when `/proc` cannot be read (not Linux).
/// The time of members that already exited is not counted, so the figure can fall: a
/// reader compares two figures only while both show the group doing nothing else.
pub fn groups_cpu_ms(groups: &[i32]) -> Vec<Option<u64>> {
    groups_cpu_ms_in(Path::new("/proc"), groups, clock_ticks_per_s())
}

fn groups_cpu_ms_in(proc: &Path, groups: &[i32], ticks_per_s: u64) -> Vec<Option<u64>> {
    if groups.is_empty() || ticks_per_s == 0 || !proc.join("self").exists() {
        return vec![None; groups.len()];
    }
    let mut ticks = vec![0u64; groups.len()];
    for p in all(proc).filter(|p| !p.gone()) {
        if let Some(i) = groups.iter().position(|&g| g == p.pgrp) {
            ticks[i] = ticks[i].saturating_add(p.cpu_ticks);
        }
    }
    ticks
        .into_iter()
        .map(|t| Some(t.saturating_mul(1000) / ticks_per_s))
        .collect()
}

fn clock_ticks_per_s() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system constant.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(t).unwrap_or(0)
    }
    #[cfg(not(unix))]
    {
        0
    }
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
                pgrp: 4200,
                cpu_ticks: 300
            })
        );
        assert!(ProcStat::parse("4242 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0").is_some_and(|p| p.gone()));
        assert_eq!(ProcStat::parse("4242 (x) S 1"), None);
        assert_eq!(ProcStat::parse("garbage"), None);
    }

    #[test]
    fn this_process_group_has_used_cpu_and_a_stranger_group_none() {
        if !Path::new("/proc/self/stat").exists() {
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
        let got = groups_cpu_ms(&[me, i32::MAX]);
        assert!(got[0].is_some_and(|ms| ms > 0), "{got:?}");
        assert_eq!(got[1], Some(0));
        assert_eq!(
            groups_cpu_ms_in(Path::new("/nonexistent"), &[me], 100),
            vec![None]
        );
    }
}
