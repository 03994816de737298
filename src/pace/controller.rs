//! The adaptive concurrency controller: a pure state machine that decides how
//! many requests may be in flight, from what the answers say (additive
//! increase, multiplicative decrease, in the manner of TCP's congestion
//! control). It reads no clock: every event carries its own time, so the same
//! events always give the same limits.
//!
//! The answers are judged in windows of about one round trip (the mean of the
//! past round trips). When a window closes:
//!
//! - **back-pressure** (a 429, a 503, a timeout) in it: the limit is halved,
//!   and the limit it had, less one, becomes a cap the limit climbs back to
//!   but not past — until [`PROBE_AFTER`] quiet windows at the cap let it try
//!   one more;
//! - **rising latency** (the window's mean round trip above the past mean by
//!   more than [`DEVIATIONS`] deviations, and by at least [`MIN_RISE`] of
//!   it): the limit is cut by a tenth;
//! - **saturated and latency held** (the limit was reached while requests
//!   were sent, and the round trip did not rise): the limit grows, doubling
//!   until the first decrease (slow start), by one afterwards;
//! - otherwise it stays.
//!
//! The limit never leaves `1..=ceiling`. The past round trip is an
//! exponentially weighted mean and deviation of the windows' means.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Weight of the newest window in the past mean and deviation.
const ALPHA: f64 = 0.4;
/// How many deviations above the past mean a window's round trip may rise.
const DEVIATIONS: f64 = 2.5;
/// A rise smaller than this share of the past mean is never "rising latency"
/// (a steady target has a tiny deviation).
const MIN_RISE: f64 = 0.15;
/// The share of the limit kept on rising latency.
const LATENCY_KEEP: f64 = 0.9;
/// Quiet windows at the cap (learned from back-pressure) before the limit may
/// try one more than it.
pub const PROBE_AFTER: u32 = 16;
/// The limit a controller starts at (when the ceiling allows).
pub const INITIAL: usize = 4;

/// What one answer says about the target's pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The target answered without asking us to slow down (any answer but
    /// those below: a 404 is an answer too); its round trip counts.
    Held,
    /// The target pushes back: 429, 503, a timeout.
    BackPressure,
    /// Says nothing about the pace (a refused connection, a 500).
    Ignored,
}

/// Why the limit moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Saturated and the round trip held.
    Held,
    /// 429/503/timeouts.
    BackPressure,
    /// The round trip rose.
    Latency,
}

/// A change of the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: usize,
    pub to: usize,
    pub why: Why,
}

/// The limits a controller had since [`Controller::begin_cycle`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub ceiling: usize,
    /// The limit now.
    pub last: usize,
    pub min: usize,
    pub max: usize,
    /// The limit most requests were sent under.
    pub settled: usize,
    pub increases: u64,
    pub decreases: u64,
}

/// Past round trips: an exponentially weighted mean and variance, seconds.
#[derive(Clone, Copy, Debug)]
struct Past {
    mean: f64,
    var: f64,
}

impl Past {
    fn update(&mut self, x: f64) {
        let d = x - self.mean;
        self.mean += ALPHA * d;
        self.var = (1.0 - ALPHA) * (self.var + ALPHA * d * d);
    }

    /// How far above the mean a window may be and still count as held.
    fn tolerance(&self) -> f64 {
        (DEVIATIONS * self.var.sqrt()).max(MIN_RISE * self.mean)
    }
}

/// What the current window saw.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    started: Option<Instant>,
    rtt_sum: f64,
    answers: u32,
    back_pressure: bool,
    saturated: bool,
}

/// The controller. See the module's documentation.
#[derive(Clone, Debug)]
pub struct Controller {
    ceiling: usize,
    limit: usize,
    slow_start: bool,
    /// After back-pressure: the limit climbs back to this, no further, until
    /// `quiet_at_cap` reaches [`PROBE_AFTER`].
    cap: usize,
    /// When the limit last went down: back-pressure on requests sent before
    /// then was answered to the old limit, and is not counted again.
    last_decrease: Option<Instant>,
    quiet_at_cap: u32,
    past: Option<Past>,
    window: Window,
    /// Requests sent under each limit, since the cycle began.
    sent_under: BTreeMap<usize, u64>,
    record: Record,
}

impl Controller {
    /// A controller starting at [`INITIAL`] (or `ceiling`, when lower).
    pub fn new(ceiling: usize) -> Controller {
        let ceiling = ceiling.max(1);
        let limit = INITIAL.min(ceiling);
        let mut c = Controller {
            ceiling,
            limit,
            slow_start: true,
            cap: ceiling,
            last_decrease: None,
            quiet_at_cap: 0,
            past: None,
            window: Window::default(),
            sent_under: BTreeMap::new(),
            record: Record::default(),
        };
        c.begin_cycle();
        c
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Forgets the limits recorded so far (what was learned stays).
    pub fn begin_cycle(&mut self) {
        self.sent_under.clear();
        self.record = Record {
            ceiling: self.ceiling,
            last: self.limit,
            min: self.limit,
            max: self.limit,
            settled: self.limit,
            increases: 0,
            decreases: 0,
        };
    }

    /// A request was sent with `in_flight` requests in flight (itself
    /// included).
    pub fn sent(&mut self, in_flight: usize) {
        *self.sent_under.entry(self.limit).or_default() += 1;
        if in_flight >= self.limit {
            self.window.saturated = true;
        }
    }

    /// A request sent at `sent` was answered at `now`; the limit's change, if
    /// this answer closed a window that moved it. A window lasts about one
    /// past round trip (the first one, until a second answer): the first
    /// answer after that closes it and opens the next one.
    pub fn answered(&mut self, sent: Instant, now: Instant, answer: Answer) -> Option<Change> {
        let period = self.past.map_or(Duration::ZERO, |p| {
            Duration::from_secs_f64(p.mean.clamp(0.0, 60.0))
        });
        let mut change = None;
        match self.window.started {
            None => self.window.started = Some(now),
            Some(started) if now.saturating_duration_since(started) >= period => {
                let window = std::mem::take(&mut self.window);
                self.window.started = Some(now);
                change = self.close(&window);
                if let Some(c) = change {
                    self.moved(now, c);
                }
            }
            Some(_) => {}
        }
        match answer {
            Answer::Held => {
                self.window.rtt_sum += now.saturating_duration_since(sent).as_secs_f64();
                self.window.answers += 1;
            }
            Answer::BackPressure if self.last_decrease.is_none_or(|at| sent >= at) => {
                self.window.back_pressure = true;
            }
            Answer::BackPressure | Answer::Ignored => {}
        }
        change
    }

    /// Judges a closed window; moves the limit.
    fn close(&mut self, window: &Window) -> Option<Change> {
        let from = self.limit;
        let mean = (window.answers > 0).then(|| window.rtt_sum / f64::from(window.answers));
        let rose = match (self.past, mean) {
            (Some(past), Some(m)) => m > past.mean + past.tolerance(),
            _ => false,
        };
        if let Some(m) = mean {
            match &mut self.past {
                Some(past) => past.update(m),
                None => self.past = Some(Past { mean: m, var: 0.0 }),
            }
        }
        let (to, why) = if window.back_pressure {
            self.slow_start = false;
            self.cap = from.saturating_sub(1).max(1);
            self.quiet_at_cap = 0;
            ((from / 2).max(1), Why::BackPressure)
        } else if rose {
            self.slow_start = false;
            (
                ((from as f64 * LATENCY_KEEP).floor() as usize).max(1),
                Why::Latency,
            )
        } else if window.saturated && mean.is_some() {
            if from >= self.cap {
                self.quiet_at_cap += 1;
                if self.quiet_at_cap < PROBE_AFTER {
                    return None;
                }
                self.quiet_at_cap = 0;
                self.cap = (self.cap + 1).min(self.ceiling);
            }
            let grown = if self.slow_start { from * 2 } else { from + 1 };
            (grown.min(self.cap).min(self.ceiling), Why::Held)
        } else {
            return None;
        };
        (to != from).then_some(Change { from, to, why })
    }

    fn moved(&mut self, now: Instant, change: Change) {
        self.limit = change.to;
        if change.to < change.from {
            self.last_decrease = Some(now);
        }
        let r = &mut self.record;
        r.last = change.to;
        r.min = r.min.min(change.to);
        r.max = r.max.max(change.to);
        if change.to > change.from {
            r.increases += 1;
        } else {
            r.decreases += 1;
        }
    }

    /// The limits since the cycle began.
    pub fn record(&self) -> Record {
        let settled = self
            .sent_under
            .iter()
            // The most requests; of equal counts, the higher limit.
            .max_by_key(|(limit, sent)| (**sent, **limit))
            .map_or(self.limit, |(limit, _)| *limit);
        Record {
            settled,
            ..self.record.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Rounds of a target `rtt` away that answers 429 to every request beyond
    /// the first `allowed` in flight: each round sends the limit's worth at
    /// once, and all are answered one round trip later. The limits the
    /// rounds ran at.
    fn rounds(
        c: &mut Controller,
        t: &mut Instant,
        n: usize,
        rtt: Duration,
        allowed: usize,
    ) -> Vec<usize> {
        let mut limits = Vec::new();
        for _ in 0..n {
            let limit = c.limit();
            limits.push(limit);
            let sent = *t;
            for i in 1..=limit {
                c.sent(i);
            }
            *t += rtt;
            for i in 1..=limit {
                let answer = if i > allowed {
                    Answer::BackPressure
                } else {
                    Answer::Held
                };
                c.answered(sent, *t, answer);
            }
        }
        limits
    }

    #[test]
    fn slow_start_doubles_to_the_ceiling_while_the_round_trip_holds() {
        let mut t = Instant::now();
        let mut c = Controller::new(32);
        assert_eq!(c.limit(), INITIAL);
        let limits = rounds(&mut c, &mut t, 8, 100 * MS, usize::MAX);
        // A round is judged when the next one's answers begin to arrive
        // (the first, at its second answer).
        assert_eq!(limits[..5], [4, 8, 16, 32, 32]);
        assert_eq!(c.limit(), 32, "never above the ceiling");
        let r = c.record();
        assert_eq!((r.min, r.max, r.last, r.ceiling), (4, 32, 32, 32));
        assert_eq!(r.settled, 32);
    }

    #[test]
    fn a_ceiling_below_the_start_is_where_it_starts() {
        assert_eq!(Controller::new(2).limit(), 2);
        assert_eq!(Controller::new(0).limit(), 1);
    }

    #[test]
    fn an_unsaturated_limit_does_not_grow() {
        let mut t = Instant::now();
        let mut c = Controller::new(32);
        for _ in 0..50 {
            let sent = t;
            c.sent(1);
            t += 100 * MS;
            assert_eq!(c.answered(sent, t, Answer::Held), None);
        }
        assert_eq!(c.limit(), INITIAL);
    }

    #[test]
    fn back_pressure_halves_the_limit_once_per_window() {
        let mut t = Instant::now();
        let mut c = Controller::new(32);
        rounds(&mut c, &mut t, 6, 100 * MS, usize::MAX);
        assert_eq!(c.limit(), 32);
        // 32 answers of one round, half of them 429: one halving, not five.
        rounds(&mut c, &mut t, 1, 100 * MS, 16);
        rounds(&mut c, &mut t, 1, 100 * MS, usize::MAX);
        assert_eq!(c.limit(), 16);
        // A 429 to a request sent before the decrease is not counted again.
        let before = t - 50 * MS;
        t += 200 * MS;
        assert_eq!(c.answered(before, t, Answer::BackPressure), None);
        assert_eq!(c.limit(), 16);
    }

    #[test]
    fn under_an_in_flight_limit_it_settles_below_it() {
        for allowed in [3, 6, 10, 20] {
            let mut t = Instant::now();
            let mut c = Controller::new(32);
            let limits = rounds(&mut c, &mut t, 400, 100 * MS, allowed);
            let over = limits[100..].iter().filter(|&&l| l > allowed).count();
            // Only the probes go over: two rounds (the probe, and the one
            // sent before it was judged) in every PROBE_AFTER or so.
            assert!(
                over * PROBE_AFTER as usize <= 2 * 300,
                "allowed {allowed}: {over} rounds of 300 above it: {limits:?}"
            );
            let r = c.record();
            assert!(
                r.settled <= allowed && r.settled + 1 >= allowed,
                "allowed {allowed}: {r:?}"
            );
        }
    }

    #[test]
    fn a_rising_round_trip_cuts_a_tenth() {
        let mut t = Instant::now();
        let mut c = Controller::new(64);
        rounds(&mut c, &mut t, 7, 100 * MS, usize::MAX);
        assert_eq!(c.limit(), 64);
        // The round trip doubles: 64 → 57, and slow start is over.
        rounds(&mut c, &mut t, 1, 200 * MS, usize::MAX);
        rounds(&mut c, &mut t, 1, 100 * MS, usize::MAX);
        assert_eq!(c.limit(), 57);
        let sent = t;
        c.sent(57);
        // Past the window (the past mean rose to 140 ms).
        t += 200 * MS;
        let change = c.answered(sent, t, Answer::Held);
        assert_eq!(
            change,
            Some(Change {
                from: 57,
                to: 58,
                why: Why::Held
            }),
            "additive once slow start is over"
        );
    }

    #[test]
    fn a_steady_round_trip_with_jitter_is_not_rising_latency() {
        let mut t = Instant::now();
        let mut c = Controller::new(16);
        for i in 0..200u32 {
            let rtt = Duration::from_micros(100_000 + u64::from(i % 7) * 2_000);
            rounds(&mut c, &mut t, 1, rtt, usize::MAX);
        }
        assert_eq!(c.record().decreases, 0);
        assert_eq!(c.limit(), 16);
    }

    #[derive(Clone, Debug)]
    enum Event {
        Sent(usize),
        Answered {
            sent_ago: u64,
            after: u64,
            answer: Answer,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (1usize..80).prop_map(Event::Sent),
            (0u64..2000, 0u64..300, 0u8..3).prop_map(|(sent_ago, after, a)| Event::Answered {
                sent_ago,
                after,
                answer: [Answer::Held, Answer::BackPressure, Answer::Ignored][usize::from(a)],
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_move_follows_the_rules(
            ceiling in 1usize..=64,
            events in proptest::collection::vec(event(), 1..400),
        ) {
            let mut t = Instant::now();
            let mut c = Controller::new(ceiling);
            let mut saturated = false;
            for e in events {
                match e {
                    Event::Sent(n) => {
                        saturated |= n >= c.limit();
                        c.sent(n);
                    }
                    Event::Answered { sent_ago, after, answer } => {
                        t += Duration::from_millis(after);
                        let sent = t.checked_sub(Duration::from_millis(sent_ago)).unwrap_or(t);
                        let open = c.window.started;
                        let change = c.answered(sent, t, answer);
                        let closed = open.is_some() && c.window.started != open;
                        if let Some(ch) = change {
                            prop_assert_eq!(ch.from, ch.from.max(1));
                            match ch.why {
                                Why::BackPressure => prop_assert_eq!(ch.to, (ch.from / 2).max(1)),
                                Why::Latency => prop_assert!(ch.to < ch.from && ch.to * 10 >= ch.from * 9 - 10),
                                Why::Held => {
                                    prop_assert!(saturated, "grew without being saturated");
                                    prop_assert!(ch.to > ch.from && ch.to <= ch.from * 2);
                                }
                            }
                        }
                        if closed {
                            saturated = false;
                        }
                    }
                }
                prop_assert!(c.limit() >= 1 && c.limit() <= ceiling, "limit {} ceiling {}", c.limit(), ceiling);
            }
            let r = c.record();
            prop_assert!(r.min >= 1 && r.max <= ceiling && r.min <= r.settled && r.settled <= r.max);
        }
    }
}
