//! Restarts the agent when its session loop stops making progress (a
//! deadlock, a blocked executor): a plain thread, outside the async
//! runtime it watches, that fires when the loop has not beaten for longer
//! than the limit while armed.
// The point is to run outside tokio: std's clock and a blocking sleep on a
// thread of its own are right here.
#![allow(clippy::disallowed_methods)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// The loop's side: beats while armed.
#[derive(Debug, Clone)]
pub struct Watchdog {
    inner: Arc<Inner>,
    configured_ms: u64,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    last_beat_ms: AtomicU64,
    /// The limit of the current arming, at least the configured one.
    limit_ms: AtomicU64,
    armed: AtomicBool,
}

impl Watchdog {
    /// Starts the watching thread; `on_stuck` runs once, on that thread,
    /// when the limit passes without a beat while armed. Returns `None` when
    /// the limit is zero (watchdog off) or no thread could be started.
    pub fn start(
        limit: Duration,
        on_stuck: impl FnOnce(Duration) + Send + 'static,
    ) -> Option<Self> {
        if limit.is_zero() {
            return None;
        }
        let inner = Arc::new(Inner {
            start: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            limit_ms: AtomicU64::new(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)),
            armed: AtomicBool::new(false),
        });
        // Weak: the thread ends once every handle is gone.
        let watched = Arc::downgrade(&inner);
        let check_every = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        std::thread::Builder::new()
            .name("tether-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(check_every);
                    let Some(watched) = watched.upgrade() else {
                        return;
                    };
                    if !watched.armed.load(Ordering::Relaxed) {
                        continue;
                    }
                    let silent = watched.since_beat();
                    let limit = Duration::from_millis(watched.limit_ms.load(Ordering::Relaxed));
                    if silent > limit {
                        on_stuck(silent);
                        return;
                    }
                }
            })
            .ok()?;
        Some(Self {
            inner,
            configured_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The loop made progress.
    pub fn beat(&self) {
        self.inner
            .last_beat_ms
            .store(self.inner.now_ms(), Ordering::Relaxed);
    }

    /// Watch from now on (a session loop started) with a limit of at least
    /// `at_least`: an idle loop wakes only once per heartbeat interval, so a
    /// limit shorter than a few intervals would fire on a healthy agent.
    pub fn arm(&self, at_least: Duration) {
        self.beat();
        let at_least = u64::try_from(at_least.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .limit_ms
            .store(self.configured_ms.max(at_least), Ordering::Relaxed);
        self.inner.armed.store(true, Ordering::Relaxed);
    }

    /// Stop watching (between sessions: backoff waits are not progress).
    pub fn disarm(&self) {
        self.inner.armed.store(false, Ordering::Relaxed);
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn since_beat(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_beat_ms.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn fires_when_an_armed_loop_stops_beating() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start(Duration::from_millis(200), move |silent| {
            let _ = tx.send(silent);
        })
        .unwrap();
        dog.arm(Duration::ZERO);
        let silent = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the watchdog fires within the bound");
        assert!(silent > Duration::from_millis(200), "{silent:?}");
    }

    #[test]
    fn stays_quiet_while_disarmed_or_beating() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start(Duration::from_millis(300), move |_| {
            let _ = tx.send(());
        })
        .unwrap();
        // Disarmed: silence is fine. Armed and beating: fine. Beats are
        // driven by the test's own loop, bounded in count.
        for i in 0..40 {
            if i == 20 {
                dog.arm(Duration::ZERO);
            }
            dog.beat();
            assert!(
                rx.recv_timeout(Duration::from_millis(25)).is_err(),
                "the watchdog fired on a live loop"
            );
        }
        dog.disarm();
        assert!(rx.recv_timeout(Duration::from_millis(700)).is_err());
    }

    #[test]
    fn zero_turns_it_off() {
        assert!(Watchdog::start(Duration::ZERO, |_| {}).is_none());
    }
}
