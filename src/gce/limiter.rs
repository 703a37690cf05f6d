//! A client-side limit on calls per minute, so a burst of creates stays under the project's
//! per-minute quota instead of discovering it through 403s.
//!
//! A token bucket that holds a tenth of the minute's budget as burst and refills the rest
//! evenly: in any 60 s window at most `burst + 0.9 × per_min × 60/60 = per_min` calls pass.
//! Callers reserve a slot (the bucket may go negative) and then sleep until it is theirs, so
//! waiting callers are served in order and none spins.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct RateLimiter {
    burst: f64,
    per_s: f64,
    // A std Mutex: the reservation is a few arithmetic operations, nothing awaits under it.
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn per_minute(per_min: u32) -> RateLimiter {
        let per_min = f64::from(per_min.max(1));
        let burst = (per_min / 10.0).max(1.0);
        RateLimiter {
            burst,
            per_s: (per_min - burst).max(1.0) / 60.0,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// How long the caller must wait for the slot it reserves now.
    fn reserve(&self) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = *state;
        let refilled =
            (tokens + now.duration_since(last).as_secs_f64() * self.per_s).min(self.burst);
        let left = refilled - 1.0;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.per_s)
        }
    }

    /// Waits for a slot.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_minute_sees_more_calls_than_the_limit() {
        let limiter = std::sync::Arc::new(RateLimiter::per_minute(60));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..150 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire().await;
                Instant::now().duration_since(start)
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap());
        }
        at.sort();
        // The burst passes at once; the rest is paced.
        assert_eq!(at.iter().filter(|d| d.is_zero()).count(), 6);
        for (i, t) in at.iter().enumerate() {
            let in_window = at[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(60))
                .count();
            assert!(
                in_window <= 60,
                "{in_window} calls within a minute of {t:?}"
            );
        }
        // And it is not slower than it needs to be: 150 calls at 54/min after a burst of 6.
        let last = at.last().copied().unwrap_or_default();
        assert!(
            last <= Duration::from_secs_f64(144.0 / 0.9 + 1.0),
            "{last:?}"
        );
    }
}
