//! Which process group listens on a loopback port, read from `/proc` (Linux). A real
//! engine is given a port that was free a moment before it binds it; between the two,
//! another process may take it, and then the engine's `/health` would be answered by a
//! stranger. The launcher checks that the listener belongs to the engine's own process
//! group before it routes a request there.

use std::collections::HashSet;
use std::path::Path;

/// Whether a process of group `pgid` holds a listening TCP socket on `port`. `None`
/// when this cannot be known here (no `/proc`): the caller goes on trusting the port.
pub fn group_listens_on(pgid: i32, port: u16) -> Option<bool> {
    group_listens_on_in(Path::new("/proc"), pgid, port)
}

/// Whether any process listens on `port` (`None`: unknown here).
pub fn anyone_listens_on(port: u16) -> Option<bool> {
    listeners(Path::new("/proc"), port).map(|i| !i.is_empty())
}

/// The inodes of the sockets listening on `port`, from both tables.
fn listeners(proc: &Path, port: u16) -> Option<HashSet<u64>> {
    let mut inodes = HashSet::new();
    let mut readable = false;
    for table in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(proc.join(table)) {
            readable = true;
            inodes.extend(listening_inodes(&text, port));
        }
    }
    readable.then_some(inodes)
}

fn group_listens_on_in(proc: &Path, pgid: i32, port: u16) -> Option<bool> {
    let inodes = listeners(proc, port)?;
    if inodes.is_empty() {
        return Some(false);
    }
    let entries = std::fs::read_dir(proc).ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = proc.join(pid.to_string());
        if process_group(&dir) != Some(pgid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(&target.to_string_lossy()) {
                if inodes.contains(&inode) {
                    return Some(true);
                }
            }
        }
    }
    Some(false)
}

/// The inodes of sockets in LISTEN state on `port` in a `/proc/net/tcp{,6}` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let listening = *cols.get(3)? == LISTEN;
            (listening && u16::from_str_radix(hex_port, 16).ok()? == port)
                .then(|| cols.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The process group in `/proc/PID/stat` (the field after the state; the command name
/// before it may hold spaces and parentheses, so fields are counted from its end).
fn process_group(dir: &Path) -> Option<i32> {
    super::proc_stat::ProcStat::read(dir).map(|p| p.pgrp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn finds_only_listeners_on_the_port() {
        assert_eq!(listening_inodes(TABLE, 8080), vec![4242]);
        assert_eq!(listening_inodes(TABLE, 8081), vec![4444]);
        assert!(listening_inodes(TABLE, 9000).is_empty());
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn a_listener_of_this_process_is_found_and_a_stranger_port_is_not() {
        if !Path::new("/proc/net/tcp").exists() {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // SAFETY: getpgrp has no preconditions.
        let me = unsafe { libc::getpgrp() };
        assert_eq!(group_listens_on(me, port), Some(true));
        assert_eq!(anyone_listens_on(port), Some(true));
        // Another group: not ours.
        assert_eq!(group_listens_on(me + 1_000_000, port), Some(false));
        drop(listener);
        assert_eq!(group_listens_on(me, port), Some(false));
        assert_eq!(anyone_listens_on(port), Some(false));
    }
}
