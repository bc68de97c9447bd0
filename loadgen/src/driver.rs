//! Pacing: the closed-loop workers and the open-loop dispatcher, and the shared state
//! they record into.

use super::config::{LoadConfig, Mode};
use super::error::LoadError;
use super::exchange::{self, HttpClient, Target};
use super::report::Report;
use super::schedule::{FixedRate, Timetable};
use super::source::RequestSource;
use super::stats::Stats;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Stats are kept in a few mutex-guarded shards so that recording never contends.
const SHARDS: usize = 16;
/// How long past the last request's own timeout the run waits before giving up on it.
const GRACE: Duration = Duration::from_secs(1);
/// How far ahead of now the open-loop timetable begins.
const OPEN_LOOP_LEAD: Duration = Duration::from_millis(20);

struct Shared {
    client: HttpClient,
    target: Target,
    source: Arc<dyn RequestSource>,
    shards: Vec<Mutex<Stats>>,
    start: Instant,
    warm_end: Instant,
    end: Instant,
    timeout: Duration,
    /// Closed loop: the next sequence number to draw.
    seq: AtomicU64,
    /// Nanoseconds after `start` at which the source ran dry (`u64::MAX`: never).
    exhausted_ns: AtomicU64,
}

impl Shared {
    fn shard(&self, i: u64) -> MutexGuard<'_, Stats> {
        let m = &self.shards[(i % SHARDS as u64) as usize];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exhausted(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.start).as_nanos() as u64;
        self.exhausted_ns.fetch_min(ns, Ordering::Relaxed);
    }

    /// The measurement window actually covered.
    fn window(&self) -> Duration {
        let ns = self.exhausted_ns.load(Ordering::Relaxed);
        let end = if ns == u64::MAX {
            self.end
        } else {
            self.end.min(self.start + Duration::from_nanos(ns))
        };
        end.saturating_duration_since(self.warm_end)
    }

    fn hard_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.end + self.timeout + GRACE)
    }
}

pub async fn run(cfg: &LoadConfig, source: Arc<dyn RequestSource>) -> Result<Report, LoadError> {
    let target = Target::new(cfg)?;
    let pool = match cfg.mode {
        Mode::Closed { concurrency } => concurrency,
        Mode::Open { max_in_flight, .. } => max_in_flight,
    };
    let client = exchange::client(pool, cfg.request_timeout.min(Duration::from_secs(10)));
    // The open-loop timetable starts a little ahead, so that the dispatcher thread's
    // start-up is not charged to the first requests as schedule lag.
    let lead = match cfg.mode {
        Mode::Closed { .. } => Duration::ZERO,
        Mode::Open { .. } => OPEN_LOOP_LEAD,
    };
    let start = Instant::now() + lead;
    let shared = Arc::new(Shared {
        client,
        target,
        source,
        shards: (0..SHARDS).map(|_| Mutex::new(Stats::default())).collect(),
        start,
        warm_end: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
        timeout: cfg.request_timeout,
        seq: AtomicU64::new(0),
        exhausted_ns: AtomicU64::new(u64::MAX),
    });
    let dropped = match cfg.mode {
        Mode::Closed { concurrency } => {
            closed(&shared, concurrency).await?;
            None
        }
        Mode::Open {
            rate_per_s,
            max_in_flight,
        } => Some(open(&shared, Arc::new(FixedRate::new(rate_per_s)), max_in_flight).await?),
    };
    let mut total = Stats::default();
    for i in 0..SHARDS as u64 {
        total.merge(&shared.shard(i));
    }
    Ok(Report::new(cfg, &total, dropped, shared.window()))
}

async fn closed(sh: &Arc<Shared>, concurrency: usize) -> Result<(), LoadError> {
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        workers.spawn(worker(sh.clone(), w as u64));
    }
    let hard = sh.hard_deadline();
    loop {
        match tokio::time::timeout_at(hard, workers.join_next()).await {
            Ok(None) => return Ok(()),
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) if e.is_panic() => {
                return Err(LoadError::Internal(format!("a worker panicked: {e}")))
            }
            Ok(Some(Err(_))) => {}
            // Each request times out on its own, so this is a backstop only; dropping
            // the set aborts what is left.
            Err(_) => return Ok(()),
        }
    }
}

/// One closed-loop connection: send, wait for the whole answer, repeat until the end.
async fn worker(sh: Arc<Shared>, w: u64) {
    loop {
        let start = Instant::now();
        if start >= sh.end {
            return;
        }
        let seq = sh.seq.fetch_add(1, Ordering::Relaxed);
        let Some(req) = sh.source.request(seq) else {
            sh.exhausted(start);
            return;
        };
        let outcome = exchange::exchange(&sh.client, &sh.target, req, start, sh.timeout).await;
        if start >= sh.warm_end {
            sh.shard(w).record(outcome, None);
        }
    }
}

struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Runs the timetable on a dedicated thread (tokio's timer only has millisecond
/// resolution, which would add up to a millisecond of schedule lag to every
/// request), spawning each due request onto the runtime. Returns how many requests
/// of the measurement window were dropped because `max_in_flight` were outstanding.
async fn open(
    sh: &Arc<Shared>,
    timetable: Arc<dyn Timetable>,
    max_in_flight: usize,
) -> Result<u64, LoadError> {
    let in_flight = Arc::new(InFlight {
        count: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    let handle = tokio::runtime::Handle::current();
    let dispatcher = {
        let (sh, in_flight) = (sh.clone(), in_flight.clone());
        tokio::task::spawn_blocking(move || {
            dispatch(&sh, &*timetable, max_in_flight, &in_flight, &handle)
        })
    };
    let dropped = dispatcher
        .await
        .map_err(|e| LoadError::Internal(format!("the open-loop dispatcher failed: {e}")))?;
    let hard = sh.hard_deadline();
    while in_flight.count.load(Ordering::Acquire) > 0 {
        // `notify_one` leaves a permit if nobody waits yet, so the last completion
        // between the check and the wait is not missed.
        if tokio::time::timeout_at(hard, in_flight.idle.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    Ok(dropped)
}

fn dispatch(
    sh: &Arc<Shared>,
    timetable: &dyn Timetable,
    max_in_flight: usize,
    in_flight: &Arc<InFlight>,
    handle: &tokio::runtime::Handle,
) -> u64 {
    let _slack = FineTimerSlack::set();
    let total = sh.end - sh.start;
    let mut dropped = 0;
    for seq in 0u64.. {
        let Some(offset) = timetable.due(seq) else {
            break;
        };
        if offset >= total {
            break;
        }
        let due = sh.start + offset;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let measured = due >= sh.warm_end;
        if in_flight.count.load(Ordering::Acquire) >= max_in_flight {
            dropped += u64::from(measured);
            continue;
        }
        let Some(req) = sh.source.request(seq) else {
            sh.exhausted(due);
            break;
        };
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        let (sh, in_flight) = (sh.clone(), in_flight.clone());
        handle.spawn(async move {
            let lag = due.elapsed().as_micros() as u64;
            let outcome = exchange::exchange(&sh.client, &sh.target, req, due, sh.timeout).await;
            if measured {
                sh.shard(seq).record(outcome, Some(lag));
            }
            if in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                in_flight.idle.notify_one();
            }
        });
    }
    dropped
}

/// Lowers this thread's timer slack to 1 ns while alive (Linux's default of 50 µs
/// would delay every wake-up by up to that much), restoring it on drop.
struct FineTimerSlack(Option<libc::c_ulong>);

impl FineTimerSlack {
    #[cfg(target_os = "linux")]
    fn set() -> Self {
        // SAFETY: PR_GET/SET_TIMERSLACK only read or change this thread's timer slack.
        unsafe {
            let old = libc::prctl(libc::PR_GET_TIMERSLACK);
            if old <= 0 || libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) != 0 {
                return Self(None);
            }
            Self(Some(old as libc::c_ulong))
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn set() -> Self {
        Self(None)
    }
}

impl Drop for FineTimerSlack {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(old) = self.0 {
            // SAFETY: as above; the blocking-pool thread gets its old slack back.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, old);
            }
        }
    }
}
