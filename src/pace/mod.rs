//! `concurrency: auto`: how many requests the SCIM client keeps in flight,
//! found from the target's answers. The decisions are the pure
//! [`controller`]'s; this module is the gate requests pass: [`Pace::enter`]
//! waits for a free place under the current limit, and the [`Permit`] it
//! hands out reports the request's answer (and its round trip) to the
//! controller when it is done. A permit dropped without an answer (a
//! cancelled request) only frees its place.
//!
//! The gate only holds requests back: the token bucket (`rate_limit`) and a
//! target's hold-off after a 429 apply as before, so the rate never exceeds
//! the configured one.

mod controller;

use std::sync::Mutex;
use std::time::Instant;

use controller::Controller;
pub use controller::{Answer, Record};

/// The gate; shared by the clones of one client.
#[derive(Debug)]
pub struct Pace {
    state: Mutex<State>,
    freed: tokio::sync::Notify,
}

#[derive(Debug)]
struct State {
    controller: Controller,
    in_flight: usize,
}

impl Pace {
    /// A gate that never lets more than `ceiling` requests in flight.
    pub fn new(ceiling: usize) -> Pace {
        Pace {
            state: Mutex::new(State {
                controller: Controller::new(ceiling),
                in_flight: 0,
            }),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.state().controller.limit()
    }

    /// Starts recording a new cycle's limits (what was learned stays).
    pub fn begin_cycle(&self) {
        self.state().controller.begin_cycle();
    }

    /// The limits since the cycle began.
    pub fn record(&self) -> Record {
        self.state().controller.record()
    }

    /// Waits until fewer requests than the limit are in flight, and takes a
    /// place.
    pub async fn enter(&self) -> Permit<'_> {
        loop {
            // Registered before the check: a place freed in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.state();
                if state.in_flight < state.controller.limit() {
                    state.in_flight += 1;
                    let under = state.controller.limit();
                    return Permit {
                        pace: self,
                        sent: Instant::now(),
                        under,
                    };
                }
            }
            freed.await;
        }
    }
}

/// A place under the limit, held while one request is in flight.
#[derive(Debug)]
pub struct Permit<'a> {
    pace: &'a Pace,
    sent: Instant,
    /// The limit it was sent under.
    under: usize,
}

impl Permit<'_> {
    /// The request leaves now (after any wait for the token bucket, which is
    /// not the target's round trip).
    pub fn sending(&mut self) {
        self.sent = Instant::now();
        let mut state = self.pace.state();
        let in_flight = state.in_flight;
        self.under = state.controller.sent(in_flight);
    }

    /// The request was answered: the controller hears how.
    pub fn answered(self, answer: Answer) {
        let change =
            self.pace
                .state()
                .controller
                .answered(self.sent, self.under, Instant::now(), answer);
        if let Some(c) = change {
            tracing::debug!(from = c.from, to = c.to, why = ?c.why, "concurrency limit changed");
        }
        // Dropped here: the place is freed.
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.pace.state().in_flight -= 1;
        // Every waiter looks again: a grown limit may admit more than one.
        self.pace.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_gate_holds_requests_beyond_the_limit_until_a_place_is_freed() {
        let pace = Pace::new(32);
        assert_eq!(pace.limit(), controller::INITIAL);
        let mut held = Vec::new();
        for _ in 0..pace.limit() {
            held.push(pace.enter().await);
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), pace.enter()).await;
        assert!(
            waiting.is_err(),
            "a fifth request entered under a limit of 4"
        );
        drop(held.pop());
        let entered = tokio::time::timeout(Duration::from_secs(5), pace.enter()).await;
        assert!(entered.is_ok(), "the freed place was not taken");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_in_flight_never_exceed_the_limit_as_it_grows() {
        let pace = Arc::new(Pace::new(8));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (pace, in_flight, most) = (pace.clone(), in_flight.clone(), most.clone());
            tasks.spawn(async move {
                for _ in 0..20 {
                    let mut permit = pace.enter().await;
                    permit.sending();
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    permit.answered(Answer::Held);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
        // Saturated the whole time with a steady round trip: it grew to the
        // ceiling, and never past it.
        let record = pace.record();
        assert_eq!(record.max, 8, "{record:?}");
        assert!(most.load(Ordering::SeqCst) <= 8);
    }
}
