//! The `policy:` section: what idsync may do to the target, as written
//! ([`PolicyConfig`]) and compiled into a [`Policy`]. A mistake is a
//! [`PolicyConfigError`] at the offending value; the top-level config places
//! it in its file.

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::actions::Actions;
use super::policy::{DisabledAction, OnRename, Policy, RemovalLimit, RemoveAction, ReuseAccounts};

/// The `policy:` section, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    remove_action: Option<RemoveAction>,
    #[serde(default)]
    max_removals: Option<Spanned<RawLimit>>,
    #[serde(default)]
    max_member_removals: Option<Spanned<RawLimit>>,
    #[serde(default)]
    groups: Option<RawGroupPolicy>,
    #[serde(default)]
    skip_out_of_scope_deletions: bool,
    #[serde(default)]
    protect: Option<RawProtect>,
    /// Whether a new key given a leaver's address takes over the leaver's
    /// account: `never` (default: the create fails for that user, naming both
    /// keys, while the leaver's account holds the address) or `after_removal`
    /// (once the leaver is removed, the new key gets the same SCIM id,
    /// re-enabled with its own attributes). Under `remove_action: delete` the
    /// leaver's account is deleted first and a new one is created either way.
    #[serde(default)]
    reuse_accounts: Option<ReuseAccounts>,
    /// What a user disabled in the source becomes: `disable` (default) or
    /// `remove_action` (deleted under `remove_action: delete`).
    #[serde(default)]
    disabled_action: Option<DisabledAction>,
    /// Per-action switches, each on unless written `false`.
    #[serde(default)]
    actions: Option<Actions>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Count(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroupPolicy {
    #[serde(default)]
    provision: Option<bool>,
    #[serde(default)]
    delete: Option<bool>,
    #[serde(default)]
    on_rename: Option<OnRename>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtect {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

/// A mistake in the `policy:` section, at the line and column of the offending
/// value. The top-level config turns it into a located error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PolicyConfigError {
    pub location: Location,
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl PolicyConfig {
    /// The section applied over `base`: the defaults with what the target
    /// decides (member chunk, group renames, verified domains).
    pub fn compile(&self, base: Policy) -> Result<Policy, PolicyConfigError> {
        let mut policy = base;
        if let Some(a) = self.remove_action {
            policy.remove_action = a;
        }
        if let Some(r) = self.reuse_accounts {
            policy.reuse_accounts = r;
        }
        if let Some(d) = self.disabled_action {
            policy.disabled_action = d;
        }
        if let Some(actions) = self.actions {
            policy.actions = actions;
        }
        if let Some(limit) = &self.max_removals {
            policy.max_removals = limit_at(
                "max_removals",
                limit,
                "write a count (10) or a percentage of managed users (\"5%\")",
            )?;
        }
        if let Some(limit) = &self.max_member_removals {
            policy.max_member_removals = limit_at(
                "max_member_removals",
                limit,
                "write a count (25) or a percentage of managed group memberships (\"10%\")",
            )?;
        }
        if let Some(g) = &self.groups {
            policy.provision_groups = g.provision.unwrap_or(true);
            policy.delete_groups = g.delete.unwrap_or(false);
            policy.on_rename = g.on_rename.unwrap_or(OnRename::Keep);
        }
        policy.skip_out_of_scope_deletions = self.skip_out_of_scope_deletions;
        if let Some(p) = &self.protect {
            policy.protected_users = p.users.iter().map(|u| u.as_str().into()).collect();
            policy.protected_groups = p.groups.iter().map(|g| g.as_str().into()).collect();
        }
        Ok(policy)
    }
}

/// A removal limit, or the mistake at its value with `hint`.
fn limit_at(
    key: &str,
    limit: &Spanned<RawLimit>,
    hint: &str,
) -> Result<RemovalLimit, PolicyConfigError> {
    parse_limit(key, &limit.value).map_err(|message| PolicyConfigError {
        location: limit.referenced,
        message,
        hint: hint.to_string(),
    })
}

/// Parses a removal limit; `key` names the setting in messages.
fn parse_limit(key: &str, raw: &RawLimit) -> Result<RemovalLimit, String> {
    match raw {
        RawLimit::Count(n) => Ok(RemovalLimit::Count(*n)),
        RawLimit::Text(t) => {
            let t = t.trim();
            if let Some(p) = t.strip_suffix('%') {
                let p: f64 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("{key} {t:?} is not a percentage"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("{key} {t:?} is not between 0% and 100%"));
                }
                Ok(RemovalLimit::Percent(p))
            } else {
                t.parse()
                    .map(RemovalLimit::Count)
                    .map_err(|_| format!("{key} {t:?} is neither a count nor a percentage"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_removal_limits() {
        let parse = |raw| parse_limit("max_removals", &raw);
        assert_eq!(parse(RawLimit::Count(7)), Ok(RemovalLimit::Count(7)));
        assert_eq!(
            parse(RawLimit::Text("5%".into())),
            Ok(RemovalLimit::Percent(5.0))
        );
        assert_eq!(
            parse(RawLimit::Text("12".into())),
            Ok(RemovalLimit::Count(12))
        );
        assert!(parse(RawLimit::Text("150%".into())).is_err());
        assert!(parse(RawLimit::Text("lots".into())).is_err());
        assert_eq!(RemovalLimit::Percent(5.0).resolve(50), 2);
    }

    fn compiled(yaml: &str) -> Policy {
        let raw: PolicyConfig = serde_saphyr::from_str(yaml).expect("policy parses");
        raw.compile(Policy::default()).expect("policy compiles")
    }

    #[test]
    fn actions_are_on_unless_written_off_and_disabled_action_defaults_to_disable() {
        let default = compiled("remove_action: delete\n");
        assert!(default.actions.all_on());
        assert_eq!(default.disabled_action, DisabledAction::Disable);
        assert!(!default.deletes_disabled_users());

        let some = compiled(
            "remove_action: delete\ndisabled_action: remove_action\nactions:\n  users: { create: false, delete: false }\n  groups: { update: false }\n",
        );
        let off: Vec<&str> = some.actions.off().iter().map(|a| a.name()).collect();
        assert_eq!(off, ["users.create", "users.delete", "groups.update"]);
        assert!(some.deletes_disabled_users());
        // Under remove_action: disable, a disabled user is disabled either way.
        let disable = compiled("disabled_action: remove_action\n");
        assert!(!disable.deletes_disabled_users());
    }

    #[test]
    fn a_misspelt_action_is_an_error() {
        for yaml in [
            "actions: { users: { craete: false } }\n",
            "actions: { people: { create: false } }\n",
            "actions: { groups: { disable: false } }\n",
            "disabled_action: delete\n",
        ] {
            assert!(
                serde_saphyr::from_str::<PolicyConfig>(yaml).is_err(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn a_percentage_limit_has_a_floor_and_a_count_is_taken_as_written() {
        let policy = |yaml: &str| compiled(yaml);
        // 5% of 19 users is 0: the floor lets the first leavers through.
        assert_eq!(policy("max_removals: 5%\n").removal_limit(19), 3);
        assert_eq!(policy("max_removals: 5%\n").removal_limit(200), 10);
        assert_eq!(policy("max_removals: 0\n").removal_limit(19), 0);
        assert_eq!(policy("max_removals: 1\n").removal_limit(1000), 1);
        assert_eq!(Policy::default().removal_limit(19), 3);
        assert_eq!(Policy::default().member_removal_limit(30), 10);
    }
}
