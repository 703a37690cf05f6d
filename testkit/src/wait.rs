//! Conditions polled with a deadline. A test waits for what it needs to see, never for time;
//! the deadline only bounds a failure.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it yields `Some`, failing the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` until it is `Ok`; after `timeout` the test fails with `what` and the last
/// `Err`, which says what still stands in the way (what is left, what the pool looks like).
pub async fn until_ok<T, E, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}: {last}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Samples until `done` holds or `timeout` passes, and returns the last sample: for a caller
/// that asserts on what it finds (an empty list of leftovers) and shows it when it is not.
pub async fn settled<T, F, Fut>(timeout: Duration, mut sample: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let value = sample().await;
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`settled`] for code that cannot await (a `Drop`, a plain thread).
pub fn settled_blocking<T>(
    timeout: Duration,
    mut sample: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let value = sample();
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_wait_returns_as_soon_as_its_condition_holds() {
        let mut n = 0;
        let got = eventually(Duration::from_secs(5), "three polls", || {
            n += 1;
            let v = (n == 3).then_some(n);
            async move { v }
        })
        .await;
        assert_eq!(got, 3);
        let mut m = 0;
        let got: u32 = until_ok(Duration::from_secs(5), "two polls", || {
            m += 1;
            let v = if m == 2 { Ok(m) } else { Err("not yet") };
            async move { v }
        })
        .await;
        assert_eq!(got, 2);
        let last = settled(Duration::from_millis(50), || async { 7 }, |v| *v == 8).await;
        assert_eq!(last, 7, "the last sample, once the deadline passed");
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for never: still 1")]
    async fn until_ok_fails_with_what_is_left() {
        until_ok::<(), _, _, _>(Duration::from_millis(50), "never", || async {
            Err("still 1")
        })
        .await;
    }
}
