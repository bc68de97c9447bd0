//! The one discrete-event loop that `sluice sim` and the virtual drills both run: a
//! queue of timed events handed in time order to a model, and engine-model replicas
//! stepping in virtual time. Only what happens at an event differs between the two.

use sluice_engine::core::{EngineCore, EngineEvent};
use sluice_engine::EngineParams;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Events by time; at one time by rank, then in the order they were scheduled.
#[derive(Debug)]
pub struct Queue<E: Ord> {
    heap: BinaryHeap<Reverse<(u64, u64, u64, E)>>,
    seq: u64,
}

impl<E: Ord> Default for Queue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E: Ord> Queue<E> {
    /// `ev` at `at`, after everything already scheduled for `at`.
    pub fn push(&mut self, at: u64, ev: E) {
        self.push_ranked(at, 0, ev);
    }

    /// `ev` at `at`, before the events of that time with a higher rank.
    pub fn push_ranked(&mut self, at: u64, rank: u64, ev: E) {
        self.seq += 1;
        self.heap.push(Reverse((at, rank, self.seq, ev)));
    }

    fn pop(&mut self) -> Option<(u64, E)> {
        self.heap.pop().map(|Reverse((at, _, _, ev))| (at, ev))
    }
}

/// What a run of the loop simulates: it owns its queue and handles each event.
pub trait Model {
    type Event: Ord;

    fn queue(&mut self) -> &mut Queue<Self::Event>;

    /// Whether the run ends here instead of handling an event due at `at`.
    fn ends_before(&mut self, at: u64) -> bool;

    fn handle(&mut self, at: u64, ev: Self::Event);
}

/// Hands `model` its events in time order until it ends or none are left.
pub fn run<M: Model>(model: &mut M) {
    while let Some((at, ev)) = model.queue().pop() {
        if model.ends_before(at) {
            break;
        }
        model.handle(at, ev);
    }
}

/// An engine-model replica in virtual time: one step at a time, its events delivered
/// when the step ends.
#[derive(Debug)]
pub struct VirtualEngine {
    pub core: EngineCore,
    pending: Vec<EngineEvent>,
    stepping: bool,
}

impl VirtualEngine {
    pub fn new(params: EngineParams) -> Self {
        Self {
            core: EngineCore::new(params),
            pending: Vec::new(),
            stepping: false,
        }
    }

    pub fn stepping(&self) -> bool {
        self.stepping
    }

    /// Starts the next step at `now` if none is running and there is work: returns when
    /// it ends.
    pub fn start_step(&mut self, now: u64) -> Option<u64> {
        if self.stepping || !self.core.has_work() {
            return None;
        }
        let summary = self.core.step_into(now, &mut self.pending);
        if summary.duration_us == 0 && self.pending.is_empty() {
            return None;
        }
        self.stepping = true;
        Some(now + summary.duration_us.max(1))
    }

    /// The running step ended: its events go into `into` (which should be empty; it is
    /// swapped in, so its allocation is reused).
    pub fn end_step(&mut self, into: &mut Vec<EngineEvent>) {
        self.stepping = false;
        std::mem::swap(into, &mut self.pending);
    }

    /// The running step ends with nothing out of it (the engine hung).
    pub fn drop_step(&mut self) {
        self.stepping = false;
        self.pending.clear();
    }

    /// A new engine process: empty caches, nothing running.
    pub fn restart(&mut self, params: EngineParams) {
        self.core = EngineCore::new(params);
        self.drop_step();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count {
        queue: Queue<(u8, u32)>,
        seen: Vec<(u64, (u8, u32))>,
        end: u64,
    }

    impl Model for Count {
        type Event = (u8, u32);
        fn queue(&mut self) -> &mut Queue<(u8, u32)> {
            &mut self.queue
        }
        fn ends_before(&mut self, at: u64) -> bool {
            at > self.end
        }
        fn handle(&mut self, at: u64, ev: (u8, u32)) {
            self.seen.push((at, ev));
            if ev.0 == 9 && at < 100 {
                self.queue.push(at + 10, ev);
            }
        }
    }

    #[test]
    fn events_come_by_time_then_rank_then_schedule_order_and_the_model_ends_the_run() {
        let mut m = Count {
            queue: Queue::default(),
            seen: Vec::new(),
            end: 30,
        };
        m.queue.push(5, (1, 0));
        m.queue.push_ranked(5, 2, (2, 0));
        m.queue.push_ranked(5, 1, (3, 0));
        m.queue.push(5, (1, 1));
        m.queue.push(0, (9, 0));
        run(&mut m);
        assert_eq!(
            m.seen,
            vec![
                (0, (9, 0)),
                (5, (1, 0)),
                (5, (1, 1)),
                (5, (3, 0)),
                (5, (2, 0)),
                (10, (9, 0)),
                (20, (9, 0)),
                (30, (9, 0)),
            ]
        );
    }

    #[test]
    fn an_engine_steps_one_step_at_a_time_and_delivers_its_events_at_the_end() {
        let params = EngineParams::default();
        let mut e = VirtualEngine::new(params.clone());
        assert_eq!(e.start_step(0), None, "no work, no step");
        e.core
            .add_request(
                sluice_engine::core::EngineRequest::new(
                    sluice_engine::core::RequestId(1),
                    (0..64).collect(),
                    2,
                    2,
                ),
                0,
            )
            .unwrap();
        let end = e.start_step(0).expect("a step starts");
        assert!(end > 0 && e.stepping());
        assert_eq!(e.start_step(0), None, "one step at a time");
        let mut events = Vec::new();
        e.end_step(&mut events);
        assert!(!events.is_empty() && !e.stepping());
        e.restart(params);
        assert!(!e.core.has_work() && !e.stepping());
    }
}
