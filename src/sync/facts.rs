//! A cycle as metrics and notifications see it ([`CycleFacts`]): gathered by
//! `observe`, read by `notify` and by the metrics renderer. Plain data in a
//! module of its own, so neither reader imports the other.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::Exit;

/// One cycle as metrics and notifications see it: counts and codes, never a
/// user's or group's name.
#[derive(Clone, Debug)]
pub struct CycleFacts {
    /// When the cycle ended.
    pub finished_at: DateTime<Utc>,
    pub duration: Duration,
    pub exit_code: Exit,
    /// The newest run that ended with exit code 0, from the state DB's
    /// history; `None` when the DB cannot tell (the renderer then keeps the
    /// previous file's value).
    pub last_success: Option<DateTime<Utc>>,
    /// This cycle's operations by (operation, outcome).
    pub operations: Vec<(String, String, u64)>,
    /// What the state DB records after the cycle, by (kind, status).
    pub objects: Vec<(&'static str, String, u64)>,
    /// Users and groups the source held in scope, when the cycle read it.
    pub source_objects: Option<SourceCounts>,
    /// This cycle's SCIM requests by HTTP status (0: no answer).
    pub http: BTreeMap<u16, u64>,
    /// This cycle's 429 answers.
    pub throttled: u64,
    /// The requests in flight the cycle allowed, when it reached the target.
    pub concurrency: Option<ConcurrencyFacts>,
    /// Whether cycles are held back now.
    pub quarantined: bool,
    /// Whether this cycle put the target into quarantine.
    pub entered_quarantine: bool,
    /// Operations applied.
    pub applied: u64,
    /// Operations that failed.
    pub failed: u64,
    /// Why the cycle ended badly, when it did.
    pub trouble: Option<Trouble>,
    /// When this cycle ended well after bad ones: those.
    pub recovered: Option<BadCycles>,
}

/// The requests in flight a cycle allowed: the limits `concurrency: auto`
/// chose, or the fixed number (then every figure is that number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcurrencyFacts {
    pub auto: bool,
    pub ceiling: u64,
    /// The limit most requests were sent under.
    pub settled: u64,
    pub last: u64,
    pub min: u64,
    pub max: u64,
}

/// Why a cycle ended badly, as notifications name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trouble {
    pub kind: TroubleKind,
    /// What happened, in one line (an error's first line: the records it may
    /// go on to list are left out).
    pub what: String,
    /// What to do about it.
    pub hint: Option<String>,
}

/// The kinds of bad ends notifications tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TroubleKind {
    /// A guard stopped the cycle, or a lost state DB did (exit 3).
    GuardStop,
    /// The source could not be read (exit 5).
    SourceError,
    /// The source was read, but its data cannot be used (exit 2).
    BadData,
    /// Operations failed, the cycle stopped early, or it could not run for
    /// another reason (the target, the token, the state DB).
    Failures,
}

/// The bad cycles since the last good one, as the state DB's history records
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadCycles {
    pub count: u64,
    /// When the first of them started.
    pub since: Option<DateTime<Utc>>,
    /// How the last of them ended; `None`: it was interrupted.
    pub last_exit: Option<Exit>,
}

/// Users and groups in scope in the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub users: u64,
    pub groups: u64,
}

/// The daemon as its own series on `/metrics` see it (beside the last
/// cycle's): plain data for the renderer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DaemonFacts {
    pub started_at: DateTime<Utc>,
    /// Whether a cycle is running now.
    pub cycle_running: bool,
    /// When the next cycle is due, while the daemon waits for it.
    pub next_cycle_at: Option<DateTime<Utc>>,
    /// Whether `/healthz` answers 200 now.
    pub live: bool,
    /// Whether `/readyz` answers 200 now.
    pub ready: bool,
}

/// The last cycle's metrics text as the daemon serves it on `/metrics`:
/// the text the metrics file gets, rendered once for both.
pub type ServedMetrics = std::sync::Mutex<Option<String>>;
