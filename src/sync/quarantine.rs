//! Quarantine: when cycles keep failing to reach the source or the target
//! (token refused, server unreachable, most calls failing: exit 5), later
//! cycles back off — 1 h, then 6 h, then once a day — until one succeeds, as
//! Entra's provisioning service does. Every real cycle honours it, `sync` from
//! a timer or cron as much as the daemon's: a held cycle is skipped with exit 7
//! before anything is read or sent; `sync --force` runs one anyway, and one
//! that succeeds lifts it. `plan` and `sync --dry-run` are never held. Kept in
//! the state DB's meta table so it survives restarts.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::state::{StateDb, StateError};

const FAILED_CYCLES: &str = "quarantine.failed_cycles";
const UNTIL: &str = "quarantine.until";
const REASON: &str = "quarantine.reason";

/// How long to hold cycles after `failed` consecutive failed cycles.
/// One failure may be a blip: the next cycle runs on schedule.
pub fn backoff(failed: u32) -> Option<Duration> {
    const HOUR: u64 = 3600;
    match failed {
        0 | 1 => None,
        2 => Some(Duration::from_secs(HOUR)),
        3 => Some(Duration::from_secs(6 * HOUR)),
        _ => Some(Duration::from_secs(24 * HOUR)),
    }
}

/// The quarantine as recorded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Quarantine {
    pub failed_cycles: u32,
    pub until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

impl Quarantine {
    /// Whether a cycle should be skipped at `now`.
    pub fn holds(&self, now: DateTime<Utc>) -> bool {
        self.until.is_some_and(|u| u > now)
    }
}

pub fn load(db: &StateDb) -> Result<Quarantine, StateError> {
    Ok(Quarantine {
        failed_cycles: db
            .meta(FAILED_CYCLES)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        until: db
            .meta(UNTIL)?
            .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
            .map(|t| t.with_timezone(&Utc)),
        reason: db.meta(REASON)?,
    })
}

/// Records a cycle's health: a success lifts the quarantine; a failure of the
/// target extends it.
pub fn record(
    db: &StateDb,
    target_failed: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Quarantine, StateError> {
    let Some(reason) = target_failed else {
        db.set_meta(FAILED_CYCLES, None)?;
        db.set_meta(UNTIL, None)?;
        db.set_meta(REASON, None)?;
        return load(db);
    };
    let failed = load(db)?.failed_cycles.saturating_add(1);
    db.set_meta(FAILED_CYCLES, Some(&failed.to_string()))?;
    db.set_meta(REASON, Some(reason))?;
    match backoff(failed) {
        Some(wait) => {
            let until = now + chrono::Duration::from_std(wait).unwrap_or_default();
            db.set_meta(UNTIL, Some(&until.to_rfc3339()))?;
            tracing::warn!(failed_cycles = failed, until = %until, "quarantined: cycles are held back until then (`sync --force` runs one anyway)");
        }
        None => db.set_meta(UNTIL, None)?,
    }
    load(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_one_hour_six_hours_then_daily() {
        assert_eq!(backoff(1), None);
        assert_eq!(backoff(2), Some(Duration::from_secs(3600)));
        assert_eq!(backoff(3), Some(Duration::from_secs(6 * 3600)));
        assert_eq!(backoff(9), Some(Duration::from_secs(24 * 3600)));
    }

    #[test]
    fn a_success_lifts_the_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("q.db")).unwrap();
        let now = Utc::now();
        record(&db, Some("401"), now).unwrap();
        let q = record(&db, Some("401"), now).unwrap();
        assert_eq!(q.failed_cycles, 2);
        assert!(q.holds(now + chrono::Duration::minutes(59)));
        assert!(!q.holds(now + chrono::Duration::minutes(61)));
        let q = record(&db, None, now).unwrap();
        assert_eq!(
            q,
            Quarantine {
                failed_cycles: 0,
                until: None,
                reason: None
            }
        );
    }
}
