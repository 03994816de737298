//! Connection attempts that take far longer than this target's usually do
//! are given up and made again at once.
//!
//! A server whose listen queue is full drops the SYN of a new connection, and
//! the kernel sends it again only after a second (its initial retransmission
//! timeout). A target that closes its connection after every answer, with a
//! short listen queue, drops some of them whenever several requests connect
//! at once: each such request then waits a second for nothing, and at the end
//! of a run, with nothing else in flight, the whole run waits with it.
//! Browsers meet the same loss and answer it the same way: a connection not
//! made in a fraction of a second is tried again beside it.
//!
//! [`ConnectDeadline`] wraps the HTTP client's connector. Once it has seen
//! [`SAMPLES_BEFORE_DEADLINE`] connections made, it gives each attempt
//! [`MULTIPLE`] times the slowest of the last [`WINDOW`] (never less than
//! [`FLOOR`]), and an attempt past that ends with [`GaveUp`] before a byte of
//! the request was sent, so sending it again is always safe. Each attempt
//! given up makes the next deadline [`MULTIPLE`] times longer until a
//! connection is made: a lost SYN costs one short wait, and a target that has
//! really become slow to accept soon gets more than the client's own connect
//! timeout, and then no deadline at all (its slow connections, once made, set
//! the deadlines after them). The transport tries a given-up connection again
//! at once, a few times, before it is a connect failure like any other.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// What a connector's errors are boxed as.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections made before any attempt gets a deadline: until then, how long
/// this target takes is not known.
pub(super) const SAMPLES_BEFORE_DEADLINE: usize = 3;
/// How many of the latest connections the deadline is drawn from.
pub(super) const WINDOW: usize = 32;
/// The deadline's multiple of the slowest recent connection.
pub(super) const MULTIPLE: u32 = 4;
/// The shortest deadline, whatever the recent connections took (a quarter of
/// a kernel's one-second SYN retransmission).
pub(super) const FLOOR: Duration = Duration::from_millis(50);

/// Why an attempt was given up: it took longer than the deadline this
/// target's recent connections set.
#[derive(Debug)]
pub(crate) struct GaveUp {
    pub after: Duration,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connection not made within {} ms, far longer than this target's recent ones: given up before anything was sent",
            self.after.as_millis()
        )
    }
}

impl std::error::Error for GaveUp {}

/// Whether `error` (a reqwest error, or anything carrying one) ended with a
/// given-up connection attempt.
pub(crate) fn gave_up(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::retry::causes(error).any(|e| e.is::<GaveUp>())
}

/// How long this target's latest connections took, and how many attempts
/// in a row were given up since one was made.
#[derive(Debug, Default)]
pub(super) struct ConnectTimes {
    recent: VecDeque<Duration>,
    given_up_in_a_row: u32,
}

impl ConnectTimes {
    /// The deadline of the next attempt; `None` until enough connections
    /// were made, or when it would be longer than `ceiling` (the client's
    /// connect timeout then applies alone).
    pub(super) fn deadline(&self, ceiling: Duration) -> Option<Duration> {
        if self.recent.len() < SAMPLES_BEFORE_DEADLINE {
            return None;
        }
        let slowest = self.recent.iter().max().copied().unwrap_or_default();
        let mut deadline = slowest.saturating_mul(MULTIPLE).max(FLOOR);
        for _ in 0..self.given_up_in_a_row {
            deadline = deadline.saturating_mul(MULTIPLE);
            if deadline >= ceiling {
                return None;
            }
        }
        (deadline < ceiling).then_some(deadline)
    }

    /// A connection was made in `took`.
    pub(super) fn made(&mut self, took: Duration) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(took);
        self.given_up_in_a_row = 0;
    }

    /// An attempt was given up at its deadline.
    pub(super) fn given_up(&mut self) {
        self.given_up_in_a_row = self.given_up_in_a_row.saturating_add(1);
    }
}

/// The connector layer: shared by every connection of one client.
#[derive(Clone, Debug)]
pub(crate) struct ConnectDeadline {
    times: Arc<Mutex<ConnectTimes>>,
    /// The client's own connect timeout: no deadline reaches it.
    ceiling: Duration,
}

impl ConnectDeadline {
    pub(crate) fn new(ceiling: Duration) -> ConnectDeadline {
        ConnectDeadline {
            times: Arc::default(),
            ceiling,
        }
    }
}

fn lock(times: &Mutex<ConnectTimes>) -> std::sync::MutexGuard<'_, ConnectTimes> {
    times.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S> tower_layer::Layer<S> for ConnectDeadline {
    type Service = Deadlined<S>;

    fn layer(&self, inner: S) -> Deadlined<S> {
        Deadlined {
            inner,
            layer: self.clone(),
        }
    }
}

/// A connector whose attempts end at the deadline.
#[derive(Clone, Debug)]
pub(crate) struct Deadlined<S> {
    inner: S,
    layer: ConnectDeadline,
}

impl<S, R> tower_service::Service<R> for Deadlined<S>
where
    S: tower_service::Service<R, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let deadline = lock(&self.layer.times).deadline(self.layer.ceiling);
        let times = self.layer.times.clone();
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let started = Instant::now();
            let made = match deadline {
                None => connecting.await,
                Some(after) => match tokio::time::timeout(after, connecting).await {
                    Ok(made) => made,
                    Err(_) => {
                        lock(&times).given_up();
                        return Err(Box::new(GaveUp { after }) as BoxError);
                    }
                },
            };
            if made.is_ok() {
                lock(&times).made(started.elapsed());
            }
            made
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CEILING: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_deadline_until_enough_connections_were_made() {
        let mut times = ConnectTimes::default();
        for _ in 1..SAMPLES_BEFORE_DEADLINE {
            times.made(ms(1));
            assert_eq!(times.deadline(CEILING), None);
        }
        times.made(ms(1));
        assert_eq!(times.deadline(CEILING), Some(FLOOR));
    }

    #[test]
    fn the_deadline_is_a_multiple_of_the_slowest_recent_connection() {
        let mut times = ConnectTimes::default();
        for took in [20, 30, 120, 40, 25, 30, 20, 35] {
            times.made(ms(took));
        }
        assert_eq!(times.deadline(CEILING), Some(ms(120) * MULTIPLE));
        // The slow one leaves the window.
        for _ in 0..WINDOW {
            times.made(ms(30));
        }
        assert_eq!(times.deadline(CEILING), Some(ms(30) * MULTIPLE));
    }

    #[test]
    fn each_attempt_given_up_in_a_row_lengthens_the_next_deadline_until_none_applies() {
        let mut times = ConnectTimes::default();
        for _ in 0..WINDOW {
            times.made(Duration::from_micros(300));
        }
        let mut deadlines = Vec::new();
        while let Some(after) = times.deadline(CEILING) {
            deadlines.push(after);
            times.given_up();
            assert!(deadlines.len() < 10, "{deadlines:?}");
        }
        assert_eq!(deadlines, [ms(50), ms(200), ms(800), ms(3200)]);
        // One connection made: a lost SYN, not a slow target.
        times.made(Duration::from_micros(300));
        assert_eq!(times.deadline(CEILING), Some(FLOOR));
    }

    #[test]
    fn gave_up_is_found_under_the_errors_that_wrap_it() {
        #[derive(Debug)]
        struct Wrapper(GaveUp);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Wrapper(GaveUp { after: ms(50) });
        assert!(gave_up(&wrapped));
        let other = std::io::Error::other("refused");
        assert!(!gave_up(&other));
    }
}
