//! How a command ends, as its process exit code: what scripts, cron and
//! systemd units read, what the history and the metrics record.

use std::fmt;

use serde::{Serialize, Serializer};

/// How a command ends, as its process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Some operations failed (or the run stopped early); the rest were applied.
    Partial = 1,
    /// A usage, configuration or data error: fix the input.
    Usage = 2,
    /// A guard stopped the cycle; nothing was changed.
    Guard = 3,
    /// Another run holds the state DB's lock.
    Locked = 4,
    /// The source or target is unreachable or refused the credentials.
    Unreachable = 5,
    /// Provisioning is paused (`paused: true`): the cycle was skipped,
    /// nothing was read or sent. Not a failure.
    Paused = 6,
    /// The cycles are quarantined after repeated failures: this one was
    /// skipped (`sync --force` runs it anyway). Nothing was read or sent.
    Quarantined = 7,
}

impl Exit {
    pub const ALL: [Exit; 8] = [
        Exit::Ok,
        Exit::Partial,
        Exit::Usage,
        Exit::Guard,
        Exit::Locked,
        Exit::Unreachable,
        Exit::Paused,
        Exit::Quarantined,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether the cycle was skipped on purpose (paused, or held by the
    /// quarantine): nothing was read or sent, and nothing failed.
    pub fn is_skip(self) -> bool {
        matches!(self, Exit::Paused | Exit::Quarantined)
    }

    /// The exit with this code, if idsync has one.
    pub fn from_code(code: i64) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| i64::from(e.code()) == code)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.code(), f)
    }
}

/// As the number, in JSON summaries.
impl Serialize for Exit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn every_exit_reads_back_from_its_code() {
        for exit in Exit::ALL {
            assert_eq!(Exit::from_code(exit.code().into()), Some(exit));
        }
        assert_eq!(Exit::from_code(99), None);
        assert_eq!(Exit::from_code(6), Some(Exit::Paused));
        assert_eq!(Exit::from_code(7), Some(Exit::Quarantined));
        let skips: Vec<Exit> = Exit::ALL.into_iter().filter(|e| e.is_skip()).collect();
        assert_eq!(skips, [Exit::Paused, Exit::Quarantined]);
    }
}
