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
use std::time::{Duration, Instant};

use controller::Controller;
pub use controller::{Answer, Record};

/// The shortest wait the gate sleeps for (tokio's timer granularity).
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

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
    /// When the last place was given out (or is due to leave).
    last_release: Option<Instant>,
}

impl Pace {
    /// A gate that never lets more than `ceiling` requests in flight.
    pub fn new(ceiling: usize) -> Pace {
        Pace {
            state: Mutex::new(State {
                controller: Controller::new(ceiling),
                in_flight: 0,
                last_release: None,
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
            let taken = {
                let mut state = self.state();
                (state.in_flight < state.controller.limit()).then(|| {
                    state.in_flight += 1;
                    let now = Instant::now();
                    let release = match (state.last_release, state.controller.spacing()) {
                        (Some(last), Some(spacing)) => now.max(last + spacing),
                        _ => now,
                    };
                    state.last_release = Some(release);
                    (state.controller.limit(), release)
                })
            };
            if let Some((under, release)) = taken {
                // The place is held from here (a cancelled wait frees it),
                // and its request leaves spaced from the one before.
                let mut permit = Permit {
                    pace: self,
                    sent: release,
                    under,
                };
                // The timer's resolution is a millisecond: a shorter wait
                // would cost up to one (a target that near needs none).
                if release.saturating_duration_since(Instant::now()) >= TIMER_RESOLUTION {
                    tokio::time::sleep_until(release.into()).await;
                }
                permit.sent = Instant::now();
                return permit;
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

    /// Requests one at a time, each answered after `rtt`: the controller
    /// learns its base round trip without growing (never saturated).
    async fn learn_round_trip(pace: &Pace, rtt: Duration, n: usize) {
        for _ in 0..n {
            let mut permit = pace.enter().await;
            permit.sending();
            tokio::time::sleep(rtt).await;
            permit.answered(Answer::Held);
        }
    }

    #[tokio::test]
    async fn places_given_out_together_leave_spaced_by_the_base_round_trip() {
        let pace = Pace::new(32);
        learn_round_trip(&pace, Duration::from_millis(40), 6).await;
        let spacing = pace.state().controller.spacing().expect("a base by now");
        // 40 ms or a little more, over twice the limit of 4.
        assert!(spacing >= Duration::from_millis(5), "{spacing:?}");
        let started = Instant::now();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pace.enter().await);
        }
        let took = started.elapsed();
        assert!(
            took >= spacing * 3,
            "four places in {took:?}, spacing {spacing:?}"
        );
    }

    #[tokio::test]
    async fn a_request_cancelled_while_it_waits_to_leave_frees_its_place() {
        let pace = Pace::new(32);
        learn_round_trip(&pace, Duration::from_millis(400), 3).await;
        let first = pace.enter().await;
        // The next one waits its spacing (400 ms ÷ 8): cancelled meanwhile.
        let waited = tokio::time::timeout(Duration::from_millis(1), pace.enter()).await;
        assert!(waited.is_err(), "it should have waited to leave");
        drop(first);
        assert_eq!(pace.state().in_flight, 0, "a place was kept");
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
