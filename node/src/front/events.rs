//! What happened lately that an operator watches for — migrations, ejections, engine
//! restarts, new assignments, actors restarted — kept as a short ring for the live
//! view, each with a sequence number so that a page shows every one once.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept: enough for a page polling every second through a burst of failures.
const KEPT: usize = 256;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    /// Wall-clock time, Unix milliseconds (for display).
    pub at_ms: u64,
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<(u64, VecDeque<Event>)>,
}

impl Events {
    pub fn push(&self, kind: &'static str, detail: String) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.0 += 1;
        let seq = ring.0;
        if ring.1.len() == KEPT {
            ring.1.pop_front();
        }
        ring.1.push_back(Event {
            seq,
            at_ms,
            kind,
            detail,
        });
    }

    /// The kept events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.1.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_in_order_with_their_numbers() {
        let e = Events::default();
        for i in 0..(KEPT + 10) {
            e.push("migration", format!("{i}"));
        }
        let r = e.recent();
        assert_eq!(r.len(), KEPT);
        assert_eq!((r[0].seq, r[KEPT - 1].seq), (11, (KEPT + 10) as u64));
        assert_eq!(r[KEPT - 1].detail, format!("{}", KEPT + 9));
    }
}
