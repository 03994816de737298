//! One read of the directory, streamed: the groups first (their members as
//! digests, see the parent's `members`), then the users, each converted as the
//! search delivers it and handed over with the groups it is in, then the
//! groups' members completed. The whole read ([`super::read`]) is the same
//! read with the users collected.
//!
//! All or nothing: a search that fails fails the read at once; bad entries
//! (no key, a key taken, a group without a name) fail it at the end, with
//! every problem of the users' search (or, when those are fine, of the
//! groups') listed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ldap3::Ldap;

use super::entry::UserReader;
use super::groups::GroupReader;
use super::members::Members;
use super::{Flavour, LdapError, LdapSettings, connect, flavour, user_attributes};
use crate::model::{GroupsOf, SourceGroup, SourceUser};

/// A read in progress.
pub(super) struct LdapRead<'s> {
    settings: &'s LdapSettings,
    attributes: BTreeSet<String>,
    started: Instant,
    ldap: Option<(Ldap, Flavour)>,
    members: Option<Members>,
    /// A group entry that could not be read: reported after the users'.
    bad_groups: Option<LdapError>,
    users: Option<UserReader>,
    groups: usize,
    /// Time spent in the caller with the users handed over (the engine maps
    /// them there), not reading.
    handed_over: Duration,
}

impl<'s> LdapRead<'s> {
    /// `attributes`: the user attributes the mapping references; the key,
    /// `uid` (for posixGroup members) and the DN (as attribute `dn`) are
    /// always there.
    pub(super) fn new(settings: &'s LdapSettings, attributes: &BTreeSet<String>) -> Self {
        LdapRead {
            settings,
            attributes: attributes.clone(),
            started: Instant::now(),
            ldap: None,
            members: None,
            bad_groups: None,
            users: None,
            groups: 0,
            handed_over: Duration::ZERO,
        }
    }

    /// Connects and reads every group (sorted by key; members still empty).
    pub(super) async fn groups(&mut self) -> Result<Vec<SourceGroup>, LdapError> {
        let settings = self.settings;
        self.started = Instant::now();
        let mut ldap = connect::open(settings).await?;
        let flavour = flavour(&mut ldap, settings).await?;
        let group_filter = settings.group_filter(flavour);
        let mut reader = GroupReader::new(settings, flavour, &group_filter);
        let group_attrs = reader.attributes();
        // One search after the other: OpenLDAP keeps one paged search per
        // connection (a second one invalidates the first one's cookie).
        connect::search_each(
            &mut ldap,
            settings,
            &settings.group_base_dn,
            &group_filter,
            group_attrs,
            |e| {
                if settings.reads_group_at(flavour, &e.dn) {
                    reader.add(e);
                }
            },
        )
        .await?;
        reader.complete_ranges(&mut ldap, settings).await?;
        let raw = match reader.finish() {
            Ok(raw) => raw,
            Err(bad) => {
                self.bad_groups = Some(bad);
                Vec::new()
            }
        };
        let (members, groups) = Members::new(raw);
        self.groups = groups.len();
        self.members = Some(members);
        self.ldap = Some((ldap, flavour));
        Ok(groups)
    }

    /// Reads every user and hands it to `each` with the groups it is in
    /// (positions in [`LdapRead::groups`]' groups), keeping none.
    pub(super) async fn users(
        &mut self,
        mut each: impl FnMut(SourceUser, GroupsOf<&[usize]>),
    ) -> Result<(), LdapError> {
        let settings = self.settings;
        let (Some((mut ldap, flavour)), Some(members)) = (self.ldap.take(), self.members.as_mut())
        else {
            panic!("LdapRead::users before LdapRead::groups");
        };
        let mut reader = UserReader::new(settings, flavour);
        let handed_over = &mut self.handed_over;
        let user_attrs = user_attributes(settings, &self.attributes, flavour);
        // Entries are converted and handed over as they arrive: neither raw
        // entries nor users pile up.
        connect::search_each(
            &mut ldap,
            settings,
            &settings.user_base_dn,
            &settings.user_filter,
            user_attrs,
            |e| {
                let Some(read) = reader.convert(e) else {
                    return;
                };
                let user = read.user;
                let groups = members.user(
                    &user.key,
                    user.attrs.first("dn").unwrap_or_default(),
                    user.attrs.get("uid"),
                    read.primary_group.as_ref(),
                );
                let handing = Instant::now();
                each(user, groups);
                *handed_over += handing.elapsed();
            },
        )
        .await?;
        connect::close(ldap).await;
        self.users = Some(reader);
        Ok(())
    }

    /// Completes `groups` with their members; fails on any bad entry. Returns
    /// how many members were neither users nor groups of the read.
    pub(super) fn finish(self, groups: &mut [SourceGroup]) -> Result<usize, LdapError> {
        let users = self.users.expect("LdapRead::finish after LdapRead::users");
        let entries = users.entries();
        users.finish()?;
        if let Some(bad) = self.bad_groups {
            return Err(bad);
        }
        let members = self.members.expect("the groups were read");
        let unresolved = members.complete(groups);
        // The read's own time: the mapping of the users it handed over
        // (`handed_over_ms`) happened in between, but is not reading.
        let elapsed = self.started.elapsed().saturating_sub(self.handed_over);
        tracing::info!(
            url = %self.settings.url,
            users = entries,
            groups = self.groups,
            unresolved_members = unresolved,
            elapsed_ms = elapsed.as_millis() as u64,
            handed_over_ms = self.handed_over.as_millis() as u64,
            peak_rss_mib = peak_rss_kib().map(|kib| kib / 1024),
            "LDAP directory read"
        );
        Ok(unresolved)
    }
}

/// The process's peak resident set so far (Linux's `VmHWM`), in KiB; `None`
/// where /proc does not say. Logged with the read: at its end the users are
/// read and mapped, and planning has not started.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_peak_rss_kib(&status)
}

fn parse_peak_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_resident_set_is_read_from_the_status_file() {
        let status = "Name:\tidsync\nVmPeak:\t  900 kB\nVmHWM:\t  524288 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_peak_rss_kib(status), Some(524_288));
        assert_eq!(parse_peak_rss_kib("VmRSS: 1 kB\n"), None);
        assert_eq!(parse_peak_rss_kib("VmHWM: lots\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().is_some_and(|kib| kib > 0));
        }
    }
}
