//! The deadline of one `participate` call: [`ClientBuilder::round_timeout`]
//! after the call started, restarted by every Lobby frame the server sends
//! while the client waits.
//!
//! A server samples each round's cohort from the clients waiting, so a
//! client may wait through several rounds it is not chosen for; the server
//! sends it a Lobby frame every few seconds (its `lobby_keepalive`) to say
//! it is still waiting. Each one restarts the clock: the call times out
//! only after `round_timeout` with no keep-alive (the lobby went silent, or
//! connecting and the round itself took that long), never merely because
//! the wait was long. An application that wants a bound on the whole wait
//! drops the call's future (`tokio::time::timeout` around it).
//!
//! The deadline lives in a task-local for the call, so the driver's lobby
//! loop restarts it with one call ([`keep_alive`]) and the round's code
//! needs no extra argument.
//!
//! [`ClientBuilder::round_timeout`]: crate::ClientBuilder::round_timeout

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CALL: CallDeadline;
}

/// When the call times out, and by how much a keep-alive pushes that back.
#[derive(Debug)]
struct CallDeadline {
    timeout: Duration,
    at: Mutex<Instant>,
}

impl CallDeadline {
    fn at(&self) -> Instant {
        *self
            .at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Restarts the current call's deadline: `round_timeout` from now. Outside
/// a call (nothing to restart) it does nothing.
pub(crate) fn keep_alive() {
    let _ = CALL.try_with(|call| {
        let mut at = call
            .at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *at = (*at).max(Instant::now() + call.timeout);
    });
}

/// Runs `call` until it ends or its deadline (`timeout` from now, restarted
/// by [`keep_alive`]) passes; `None` if the deadline passed first.
pub(crate) async fn bounded<T>(timeout: Duration, call: impl Future<Output = T>) -> Option<T> {
    let deadline = CallDeadline {
        timeout,
        at: Mutex::new(Instant::now() + timeout),
    };
    CALL.scope(deadline, async move {
        let mut call = std::pin::pin!(call);
        loop {
            let at = CALL.with(CallDeadline::at);
            tokio::select! {
                out = &mut call => return Some(out),
                () = tokio::time::sleep_until(at) => {
                    // A keep-alive may have moved it while we slept.
                    if CALL.with(CallDeadline::at) <= Instant::now() {
                        return None;
                    }
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_call_times_out_after_the_timeout_without_keep_alives() {
        let start = Instant::now();
        let out = bounded(TIMEOUT, std::future::pending::<()>()).await;
        assert_eq!(out, None);
        assert!(start.elapsed() >= TIMEOUT);
    }

    /// Keep-alives every 100 ms keep a call going for 1.5 s, five times its
    /// timeout; once they stop, it times out a timeout after the last one.
    #[tokio::test]
    async fn keep_alives_within_the_timeout_keep_a_long_call_going() {
        let start = Instant::now();
        let out = bounded(TIMEOUT, async {
            for _ in 0..15 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                keep_alive();
            }
            "done"
        })
        .await;
        assert_eq!(out, Some("done"));
        assert!(start.elapsed() >= 5 * TIMEOUT);

        let last = std::sync::Mutex::new(None);
        let out = bounded(TIMEOUT, async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            keep_alive();
            *last.lock().unwrap() = Some(Instant::now());
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(out, None);
        let last = last.lock().unwrap().expect("kept alive once");
        assert!(last.elapsed() >= TIMEOUT);
    }

    #[test]
    fn keep_alive_outside_a_call_does_nothing() {
        keep_alive();
    }
}
