//! What the router learns of its replicas from the answers it carries: which are hung
//! (every stream silent past its bound — `router::stall`), which its peers hear from,
//! and whether a request suspected on one could go anywhere else.

use super::*;

impl RouterCore {
    /// The replicas whose producing streams have all been silent past their bound at
    /// `now_ms`: hung, whatever their health checks say. Each is counted a failure (and
    /// so passively ejected); its streams are judged once.
    pub fn take_stalled(&mut self, now_ms: u64) -> Vec<ReplicaId> {
        // Requests still waiting for the first thing back from their replica, each with
        // the work queued there up to it — or the replica's whole queue now, if longer:
        // other routers report the work they place up to a gossip round late, so a
        // long prefill placed there just before it may have been unknown when it was
        // sent, and that work runs first.
        let mut queued_now: HashMap<ReplicaId, u64> = HashMap::new();
        let awaited: Vec<Awaited> = self
            .active
            .values()
            .filter_map(|a| {
                let (since_ms, sent_queue_ms) = a.awaiting?;
                let now_queue_ms = *queued_now
                    .entry(a.replica)
                    .or_insert_with(|| self.queue_ms(a.replica));
                let queue_ms = sent_queue_ms.max(now_queue_ms);
                // A whole answer comes back once it is all written; one whose length
                // has no bound cannot be judged by its wait.
                let tokens = if a.stream {
                    1
                } else {
                    a.max_tokens? / a.n.max(1)
                };
                Some(Awaited {
                    replica: a.replica,
                    since_ms,
                    queue_ms,
                    tokens,
                })
            })
            .collect();
        let stalled = self.stalls.take_stalled_with(now_ms, &awaited);
        for &r in &stalled {
            self.on_replica_failure(r, now_ms);
        }
        stalled
    }

    /// The replicas this router took for hung within the last [`STALLS_ANNOUNCED_FOR_MS`],
    /// each with how long ago: re-announced to the other nodes every gossip round for
    /// that long, so one missed round does not keep a hung replica of theirs in service.
    pub fn announced_stalls(&self, now_ms: u64) -> Vec<(ReplicaId, u64)> {
        let judged = self
            .stalls
            .judged_since(now_ms.saturating_sub(STALLS_ANNOUNCED_FOR_MS));
        ages(judged, now_ms)
    }

    /// The replicas this router heard from within the last [`HEARD_ANNOUNCED_FOR_MS`],
    /// each with how long ago: so that the others do not take a replica busy with their
    /// queued requests for hung (see `router::stall`).
    pub fn announced_heard(&self, now_ms: u64) -> Vec<(ReplicaId, u64)> {
        let heard = self
            .stalls
            .heard_since(now_ms.saturating_sub(HEARD_ANNOUNCED_FOR_MS));
        ages(heard, now_ms)
    }

    /// Other routers heard from these replicas, each `age` ms before `now_ms`.
    pub fn peers_heard(&mut self, heard: &[(ReplicaId, u64)], now_ms: u64) {
        for &(r, age) in heard {
            if self.slots.contains_key(&r) {
                self.stalls.heard_by_peer(r, now_ms.saturating_sub(age));
            }
        }
    }

    /// The newest sign that `replica` is working — a token streamed, an answer or a
    /// probe passed, here or (by their word) at another router; `None` if none yet.
    pub fn last_heard_ms(&self, replica: ReplicaId) -> Option<u64> {
        self.stalls.last_heard_ms(replica)
    }

    /// `replica` answered a request whole or passed a probe at `now_ms`: it is working,
    /// whatever its streams show.
    pub fn heard_from(&mut self, replica: ReplicaId, now_ms: u64) {
        self.stalls.heard(replica, now_ms);
    }

    /// Whether a replica other than `from` could take request `id` at `now_ms`: one the
    /// router may send to (checked healthy, not ejected) and, for a request the
    /// quarantine confines, one of its slice's subset. A necessary condition of its
    /// placement elsewhere (a tenant's blast radius may still rule a replica out): a
    /// request is not taken off a replica that is only suspected when nowhere else
    /// could take it. Linear in the fleet; asked only when a replica is found hung.
    pub fn could_move(&self, id: RequestId, from: ReplicaId, now_ms: u64) -> bool {
        let Some(active) = self.active.get(&id) else {
            return false;
        };
        let confined = active
            .fingerprint
            .is_some_and(|fp| self.quarantine.verdict(fp, now_ms) != Verdict::Clear);
        let subset = confined.then(|| &self.assignment.lookup(active.workload).subset);
        self.replicas.iter().any(|r| {
            r.spec.id != from
                && r.checked_healthy
                && r.passive.available(now_ms)
                && subset.is_none_or(|s| s.contains(&r.spec.id))
        })
    }
}
