//! `OMP_NUM_THREADS` for engines from the container's CPU quota. OpenMP (and the
//! PyTorch CPU code under most engines) starts one thread per host core, which in a
//! container limited to a few CPUs means dozens of threads fighting over a small quota
//! and being throttled. The quota is the container's cgroup's: v2 `cpu.max`, else v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us`. An operator's own setting always wins.
//!
//! The decision is pure (file contents in, thread count out); only [`for_this_host`]
//! reads the environment and the filesystem.

use std::path::Path;

/// The cgroup v2 limit, as seen inside a container with its own cgroup namespace.
pub const CGROUP_V2_CPU_MAX: &str = "/sys/fs/cgroup/cpu.max";
/// Where cgroup v1's cpu controller is mounted: alone, or joined with cpuacct.
pub const CGROUP_V1_CPU_DIRS: [&str; 2] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"];

/// Threads for a cgroup v2 `cpu.max` ("$QUOTA $PERIOD", or "max $PERIOD" for no limit):
/// `ceil(quota / period)`, so a fractional quota is used in full, between 1 and
/// `host_cpus`. `None` for no limit or contents that do not parse.
pub fn threads_from_cgroup_v2(cpu_max: &str, host_cpus: usize) -> Option<usize> {
    let mut fields = cpu_max.split_whitespace();
    let (quota, period) = (fields.next()?, fields.next()?);
    if fields.next().is_some() || quota == "max" {
        return None;
    }
    threads(quota.parse().ok()?, period.parse().ok()?, host_cpus)
}

/// Threads for cgroup v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us`, as for v2; a
/// quota of -1 is no limit (`None`).
pub fn threads_from_cgroup_v1(
    cfs_quota_us: &str,
    cfs_period_us: &str,
    host_cpus: usize,
) -> Option<usize> {
    // A negative quota (-1) is "unlimited"; u64 parsing turns it into None with the rest.
    threads(
        cfs_quota_us.trim().parse().ok()?,
        cfs_period_us.trim().parse().ok()?,
        host_cpus,
    )
}

fn threads(quota: u64, period: u64, host_cpus: usize) -> Option<usize> {
    if quota == 0 || period == 0 {
        return None;
    }
    let n = usize::try_from(quota.div_ceil(period)).unwrap_or(usize::MAX);
    Some(n.clamp(1, host_cpus.max(1)))
}

/// The `OMP_NUM_THREADS` to give an engine, or `None` to leave the variable alone
/// because it is already set (`env_value`, non-empty). Otherwise the cgroup v2 quota,
/// else the v1 quota (from either mount point), else `host_cpus`: a file missing,
/// unreadable, unlimited or garbled just passes the question on. `read` returns a
/// file's contents, if any.
pub fn omp_num_threads(
    env_value: Option<&str>,
    read: impl Fn(&Path) -> Option<String>,
    host_cpus: usize,
) -> Option<usize> {
    if env_value.is_some_and(|v| !v.trim().is_empty()) {
        return None;
    }
    let v2 =
        read(Path::new(CGROUP_V2_CPU_MAX)).and_then(|max| threads_from_cgroup_v2(&max, host_cpus));
    let v1 = || {
        CGROUP_V1_CPU_DIRS.iter().find_map(|dir| {
            let dir = Path::new(dir);
            let quota = read(&dir.join("cpu.cfs_quota_us"))?;
            let period = read(&dir.join("cpu.cfs_period_us"))?;
            threads_from_cgroup_v1(&quota, &period, host_cpus)
        })
    };
    Some(v2.or_else(v1).unwrap_or(host_cpus.max(1)))
}

/// [`omp_num_threads`] for this process: its environment, its cgroup files, and the
/// CPUs it may run on.
pub fn for_this_host() -> Option<usize> {
    let env = std::env::var("OMP_NUM_THREADS").ok();
    omp_num_threads(
        env.as_deref(),
        |path| std::fs::read_to_string(path).ok(),
        host_cpus(),
    )
}

/// CPUs this process may run on: its affinity mask (a cpuset limits it), which unlike
/// `available_parallelism` has not already been cut down by the quota.
fn host_cpus() -> usize {
    #[cfg(target_os = "linux")]
    // SAFETY: cpu_set_t is plain bits, zero is a valid value, and sched_getaffinity
    // writes at most the size it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            if let Ok(n @ 1..) = usize::try_from(libc::CPU_COUNT(&set)) {
                return n;
            }
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn v2_quota_rounds_up_within_the_host() {
        let t = |s| threads_from_cgroup_v2(s, 8);
        assert_eq!(t("max 100000"), None);
        assert_eq!(t("max 100000\n"), None);
        assert_eq!(t("200000 100000\n"), Some(2));
        assert_eq!(t("50000 100000"), Some(1));
        assert_eq!(t("150000 100000"), Some(2));
        assert_eq!(t("1000 100000"), Some(1), "at least one");
        assert_eq!(t("6400000 100000"), Some(8), "at most the host");
        assert_eq!(threads_from_cgroup_v2("200000 100000", 0), Some(1));
    }

    #[test]
    fn v2_garbage_is_none() {
        for s in [
            "",
            "\n",
            "max",
            "200000",
            "abc 100000",
            "200000 xyz",
            "200000 0",
            "0 100000",
            "-1 100000",
            "200000 100000 7",
            "99999999999999999999999 100000",
        ] {
            assert_eq!(threads_from_cgroup_v2(s, 8), None, "{s:?}");
        }
    }

    #[test]
    fn v1_quota_and_period() {
        assert_eq!(threads_from_cgroup_v1("-1\n", "100000\n", 8), None);
        assert_eq!(threads_from_cgroup_v1("300000\n", "100000\n", 8), Some(3));
        assert_eq!(threads_from_cgroup_v1("250000", "100000", 8), Some(3));
        assert_eq!(threads_from_cgroup_v1("50000", "100000", 8), Some(1));
        assert_eq!(threads_from_cgroup_v1("900000", "100000", 4), Some(4));
        for (q, p) in [
            ("", "100000"),
            ("x", "100000"),
            ("100000", ""),
            ("100000", "0"),
        ] {
            assert_eq!(threads_from_cgroup_v1(q, p, 8), None, "{q:?} {p:?}");
        }
    }

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<String, String> = entries
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect();
        move |path| map.get(path.to_str()?).cloned()
    }

    const V1_QUOTA: &str = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us";
    const V1_PERIOD: &str = "/sys/fs/cgroup/cpu/cpu.cfs_period_us";
    const V1_JOINED_QUOTA: &str = "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us";
    const V1_JOINED_PERIOD: &str = "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us";

    #[test]
    fn an_operators_setting_wins() {
        let read = files(&[(CGROUP_V2_CPU_MAX, "200000 100000\n")]);
        assert_eq!(omp_num_threads(Some("8"), &read, 16), None);
        assert_eq!(omp_num_threads(Some("garbage"), &read, 16), None, "theirs");
        assert_eq!(
            omp_num_threads(Some(""), &read, 16),
            Some(2),
            "empty is unset"
        );
        assert_eq!(omp_num_threads(None, &read, 16), Some(2));
    }

    #[test]
    fn v2_then_v1_then_the_host() {
        let v1 = [(V1_QUOTA, "300000\n"), (V1_PERIOD, "100000\n")];
        let both = [&v1[..], &[(CGROUP_V2_CPU_MAX, "200000 100000\n")]].concat();
        assert_eq!(omp_num_threads(None, files(&both), 16), Some(2), "v2 first");
        assert_eq!(omp_num_threads(None, files(&v1), 16), Some(3));
        let joined = [(V1_JOINED_QUOTA, "100000"), (V1_JOINED_PERIOD, "100000")];
        assert_eq!(omp_num_threads(None, files(&joined), 16), Some(1));
        assert_eq!(omp_num_threads(None, files(&[]), 16), Some(16), "no cgroup");
        assert_eq!(omp_num_threads(None, files(&[]), 0), Some(1));
    }

    #[test]
    fn unlimited_or_garbled_files_fall_through() {
        let read = files(&[
            (CGROUP_V2_CPU_MAX, "max 100000\n"),
            (V1_QUOTA, "-1\n"),
            (V1_PERIOD, "100000\n"),
            (V1_JOINED_QUOTA, "400000"),
            (V1_JOINED_PERIOD, "100000"),
        ]);
        assert_eq!(omp_num_threads(None, read, 16), Some(4));
        let read = files(&[
            (CGROUP_V2_CPU_MAX, "\u{fffd}\u{0}"),
            (V1_QUOTA, "lots"),
            (V1_PERIOD, "100000"),
        ]);
        assert_eq!(omp_num_threads(None, read, 6), Some(6));
        let read = files(&[(V1_QUOTA, "200000")]);
        assert_eq!(omp_num_threads(None, read, 6), Some(6), "period missing");
    }

    #[test]
    fn this_host_gets_a_sane_answer() {
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            let n = for_this_host().expect("unset, so computed");
            assert!((1..=host_cpus()).contains(&n));
        }
        assert!(host_cpus() >= 1);
    }
}
