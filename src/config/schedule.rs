//! `schedule:` — when the daemon runs a cycle: an interval or a cron line.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::ConfigError;
use crate::yaml::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    cron: Option<String>,
}

/// When the daemon runs a cycle.
#[derive(Clone, Debug)]
pub enum Schedule {
    Interval(Duration),
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// The `schedule:` section of `file`; every 40 minutes without one.
    pub(super) fn compile(
        raw: Option<&Spanned<RawSchedule>>,
        file: &str,
    ) -> Result<Schedule, ConfigError> {
        let Some(s) = raw else {
            return Ok(Schedule::Interval(Duration::from_secs(40 * 60)));
        };
        let at = |message: String, hint: &str| {
            ConfigError::at(file, &s.referenced, message, hint.into())
        };
        match (&s.value.interval, &s.value.cron) {
            (Some(i), None) => Ok(Schedule::Interval(parse_duration(i).map_err(|e| {
                at(format!("schedule.interval: {e}"), "write it like 40m or 1h")
            })?)),
            (None, Some(c)) => Ok(Schedule::Cron(Box::new(parse_cron(c).map_err(|e| {
                at(
                    format!("schedule.cron {c:?}: {e}"),
                    "use the 5-field form, e.g. \"*/40 * * * *\"",
                )
            })?))),
            _ => Err(at(
                "schedule needs exactly one of `interval` or `cron`".into(),
                "e.g. `schedule: { interval: 40m }`",
            )),
        }
    }
}

/// Accepts the usual 5-field cron form (minute first) as well as the 6- and
/// 7-field Quartz form the `cron` crate reads (seconds first).
pub fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {text}")
    } else {
        text.to_string()
    };
    full.parse::<cron::Schedule>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_five_field_cron() {
        assert!(parse_cron("*/40 * * * *").is_ok());
        assert!(parse_cron("0 */40 * * * *").is_ok());
        assert!(parse_cron("not cron").is_err());
    }
}
