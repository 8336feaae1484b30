//! Exponential backoff with jitter, for every retry loop: never a hot loop.

use std::time::Duration;

/// Exponential backoff with full jitter.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt += 1;
        let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
        ceiling.mul_f64(jitter)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays[9] >= Duration::from_secs(15), "{delays:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_secs(1));
    }
}
