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
    /// How many times a waiter looked for a place (each wake-up is one).
    #[cfg(test)]
    looks: usize,
}

impl Pace {
    /// A gate that never lets more than `ceiling` requests in flight.
    pub fn new(ceiling: usize) -> Pace {
        Pace {
            state: Mutex::new(State {
                controller: Controller::new(ceiling),
                in_flight: 0,
                last_release: None,
                #[cfg(test)]
                looks: 0,
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
    ///
    /// A freed place wakes one waiter, not all of them: a waiter that takes
    /// a place and finds another still free (the limit grew) wakes the next,
    /// and one woken but cancelled before it looked passes its wake-up on
    /// (tokio's `Notify` does that for `notify_one`).
    pub async fn enter(&self) -> Permit<'_> {
        loop {
            // Registered before the check: a place freed in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let taken = {
                let mut state = self.state();
                #[cfg(test)]
                {
                    state.looks += 1;
                }
                (state.in_flight < state.controller.limit()).then(|| {
                    state.in_flight += 1;
                    let now = Instant::now();
                    let release = match (state.last_release, state.controller.spacing()) {
                        (Some(last), Some(spacing)) => now.max(last + spacing),
                        _ => now,
                    };
                    state.last_release = Some(release);
                    let more = state.in_flight < state.controller.limit();
                    (state.controller.limit(), release, more)
                })
            };
            if let Some((under, release, more)) = taken {
                if more {
                    self.freed.notify_one();
                }
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
        // One waiter looks; it wakes the next if a grown limit admits more.
        self.pace.freed.notify_one();
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

    /// `waiters` tasks waiting at a full gate of `pace` (limit 4).
    async fn waiting_at_a_full_gate(
        pace: &Arc<Pace>,
        waiters: usize,
    ) -> (Vec<Permit<'_>>, Vec<tokio::task::JoinHandle<()>>) {
        let held: Vec<_> = futures_util::future::join_all((0..4).map(|_| pace.enter())).await;
        let entered = Arc::new(AtomicUsize::new(0));
        let tasks = (0..waiters)
            .map(|_| {
                let (pace, entered) = (pace.clone(), entered.clone());
                tokio::spawn(async move {
                    let permit = pace.enter().await;
                    entered.fetch_add(1, Ordering::SeqCst);
                    // Held until the task is aborted or the test ends.
                    std::future::pending::<()>().await;
                    drop(permit);
                })
            })
            .collect();
        // Every waiter has looked once and is waiting.
        for _ in 0..1000 {
            if pace.state().looks >= 4 + waiters {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pace.state().looks,
            4 + waiters,
            "the waiters did not all wait"
        );
        (held, tasks)
    }

    #[tokio::test]
    async fn a_freed_place_wakes_one_waiter_not_all() {
        let pace = Arc::new(Pace::new(32));
        let (mut held, _tasks) = waiting_at_a_full_gate(&pace, 28).await;
        let before = pace.state().looks;
        drop(held.pop());
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let state = pace.state();
        assert_eq!(state.in_flight, 4, "the freed place was not taken");
        assert!(
            state.looks - before <= 2,
            "{} waiters looked for one place",
            state.looks - before
        );
    }

    #[tokio::test]
    async fn a_waiter_woken_then_cancelled_passes_its_wake_up_on() {
        let pace = Arc::new(Pace::new(32));
        let (mut held, tasks) = waiting_at_a_full_gate(&pace, 2).await;
        // The first waiter is woken for the freed place, and cancelled
        // before it looks: the second must take the place.
        drop(held.pop());
        tasks[0].abort();
        for _ in 0..100 {
            tokio::task::yield_now().await;
            if pace.state().in_flight == 4 {
                break;
            }
        }
        assert_eq!(pace.state().in_flight, 4, "the freed place stayed free");
        assert!(!tasks[1].is_finished());
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
