//! Worker heartbeats: how the control thread knows a worker is stuck without waiting on it.
//!
//! Each worker runtime runs one small task that marks the time every `BEAT`. A worker whose
//! mark is older than `STUCK_AFTER` has not run its event loop for that long (a blocking call,
//! an endless loop, a stopped thread): the connections its accept loops took are stuck with it.
//! Then the systemd watchdog ping is withheld and /healthz answers 503, so that systemd or the
//! container runtime restarts the process. Reading the marks never blocks, so signals, reloads
//! and /metrics go on while a worker is stuck.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

/// How often a worker marks the time.
const BEAT: Duration = Duration::from_millis(250);

/// A worker silent this long is stuck: eight missed beats, well past any scheduling delay of a
/// busy but healthy event loop.
pub const STUCK_AFTER: Duration = Duration::from_secs(2);

pub struct Heartbeats {
    base: Instant,
    /// Per worker: milliseconds since `base` at its last beat.
    marks: Box<[AtomicU64]>,
}

impl Heartbeats {
    /// Heartbeats for `workers` workers, each counted as having beaten just now.
    pub fn new(workers: usize) -> Arc<Heartbeats> {
        Arc::new(Heartbeats {
            base: Instant::now(),
            marks: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts worker `index`'s beating task on its runtime; it lasts as long as the runtime.
    pub fn start(self: &Arc<Self>, index: usize, worker: &Handle) {
        let beats = Arc::clone(self);
        worker.spawn(async move {
            let mut every = tokio::time::interval(BEAT);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                beats.beat(index);
            }
        });
    }

    fn beat(&self, index: usize) {
        self.marks[index].store(self.now_ms(), Ordering::Relaxed);
    }

    /// The worker silent the longest, with how long, if that is `STUCK_AFTER` or more.
    pub fn stuck(&self) -> Option<(usize, Duration)> {
        self.silent_for(STUCK_AFTER)
    }

    /// The worker silent the longest, with how long, if that is `threshold` or more.
    pub fn silent_for(&self, threshold: Duration) -> Option<(usize, Duration)> {
        let now = self.now_ms();
        self.marks
            .iter()
            .map(|mark| Duration::from_millis(now.saturating_sub(mark.load(Ordering::Relaxed))))
            .enumerate()
            .max_by_key(|&(_, silent)| silent)
            .filter(|&(_, silent)| silent >= threshold)
    }
}

/// How long a worker may be silent before the watchdog ping is withheld, for a watchdog pinged
/// every `ping`: as long as the ping period, but at least two beats and at most `STUCK_AFTER`.
pub fn watchdog_threshold(ping: Duration) -> Duration {
    ping.clamp(BEAT * 2, STUCK_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_stuck_once_its_last_beat_is_old_enough() {
        let beats = Heartbeats::new(3);
        assert_eq!(beats.stuck(), None, "all count as fresh at the start");
        // Worker 1 last beat 5 s ago, worker 2 3 s ago; worker 0 beats now.
        let now = 10_000;
        let beats = Heartbeats {
            base: Instant::now() - Duration::from_millis(now),
            marks: [now, now - 5_000, now - 3_000]
                .into_iter()
                .map(AtomicU64::new)
                .collect(),
        };
        let (index, silent) = beats.stuck().expect("two workers are stuck");
        assert_eq!(index, 1, "the longest silent one is named");
        assert!(silent >= Duration::from_secs(5), "{silent:?}");
        beats.beat(1);
        assert_eq!(beats.stuck().map(|(i, _)| i), Some(2));
        beats.beat(2);
        assert_eq!(beats.stuck(), None);
    }

    #[test]
    fn the_watchdog_threshold_follows_the_ping_period_within_bounds() {
        assert_eq!(watchdog_threshold(Duration::from_secs(15)), STUCK_AFTER);
        assert_eq!(
            watchdog_threshold(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(watchdog_threshold(Duration::from_millis(150)), BEAT * 2);
    }

    #[test]
    fn a_running_worker_beats_and_is_no_longer_stuck() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A worker last heard of 10 s ago, then started.
        let beats = Arc::new(Heartbeats {
            base: Instant::now() - Duration::from_secs(10),
            marks: [AtomicU64::new(0)].into_iter().collect(),
        });
        assert_eq!(beats.stuck().map(|(i, _)| i), Some(0));
        beats.start(0, runtime.handle());
        let deadline = Instant::now() + Duration::from_secs(5);
        runtime.block_on(async {
            while beats.stuck().is_some() {
                assert!(Instant::now() < deadline, "no beat within 5 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
}
