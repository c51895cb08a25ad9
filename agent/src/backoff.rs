//! Reconnect delays: capped exponential backoff with full jitter (DESIGN.md
//! defaults 0.5 s → 30 s), so that a thousand agents that lost the control
//! plane at the same moment do not come back at the same moment.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

/// Delays for successive failed attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never exceeds `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: uniform in [0, min(cap, base · 2^attempt)].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .checked_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .map_or(self.cap, |d| d.min(self.cap));
        self.attempt = self.attempt.saturating_add(1);
        let mut b = [0u8; 8];
        // Without randomness the delay is the ceiling: still bounded.
        if SystemRandom::new().fill(&mut b).is_err() {
            return ceiling;
        }
        let fraction = u64::from_le_bytes(b) as f64 / u64::MAX as f64;
        ceiling.mul_f64(fraction)
    }

    /// After a session that stayed healthy: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for attempt in 0..40u32 {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(500)
                .saturating_mul(2u32.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(30));
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
