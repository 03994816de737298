//! What the target kept of what was sent: the user a create (201) or a PATCH
//! (200 with the resource) answered with is compared with the values sent.
//! One answer is evidence about one user only: a value not kept as sent
//! becomes an [`AttrNote`] on that user, a value kept clears that user's note,
//! and a difference a documented rule of the target explains is no evidence
//! at all.

use crate::model::{AttrNote, RemoteUser, UserAttr};

/// What one answer says about the values sent.
#[derive(Debug, Default, PartialEq)]
pub struct Evidence {
    /// The values not kept as sent.
    pub noted: Vec<AttrNote>,
    /// The attributes held as sent (their earlier notes are cleared).
    pub kept: Vec<UserAttr>,
}

impl Evidence {
    pub fn is_empty(&self) -> bool {
        self.noted.is_empty() && self.kept.is_empty()
    }
}

/// The target's answer, judged against what was sent.
#[derive(Debug, Default, PartialEq)]
pub struct Kept {
    /// For each attribute sent with a value: what to record (`None`: the
    /// target holds none).
    pub recorded: Vec<(UserAttr, Option<String>)>,
    pub evidence: Evidence,
    /// Name parts a `displayName` sent in the same write overwrote: the
    /// values sent, to send again alone.
    pub overwritten: Vec<(UserAttr, String)>,
}

/// The name parts a write carrying `displayName` may overwrite: Atlassian
/// documents that setting `displayName` sets first and last name from it, so
/// name parts read back after one was sent say nothing about whether the
/// target keeps name parts.
const DERIVED_FROM_DISPLAY_NAME: &[UserAttr] = &[
    UserAttr::GivenName,
    UserAttr::FamilyName,
    UserAttr::FormattedName,
];

/// Judges `answer` (the user as the target answered holding it) against the
/// values `sent`. `None` when the answer is no representation of the user (it
/// lacks a `userName`: a minimal body says nothing of what was kept).
///
/// - A value held as sent, or differing only in case (how the target compares
///   case is the schema's business), is recorded as sent and kept.
/// - A name part that differs while `displayName` was sent in the same write
///   is recorded as held, without a note, and listed in `overwritten`: the
///   executor sends it again alone, which the target keeps.
/// - Any other difference is recorded as *sent*, with a note on this user: the
///   value is not sent again while the source keeps it (a target that drops
///   it would be patched every cycle), and `--full`, which compares what the
///   target holds, sends it again.
///
/// `userName` is recorded as sent and never noted: it is what a user is
/// matched by.
pub fn judge<'a>(
    sent: impl IntoIterator<Item = (UserAttr, &'a str)>,
    answer: &RemoteUser,
) -> Option<Kept> {
    answer.attrs.get(UserAttr::UserName)?;
    let sent: Vec<(UserAttr, &str)> = sent.into_iter().collect();
    let display_name_sent = sent.iter().any(|(a, _)| *a == UserAttr::DisplayName);
    let mut kept = Kept::default();
    for (attr, value) in sent {
        let stored = answer.attrs.get(attr);
        let same = stored.is_some_and(|s| s == value || s.to_lowercase() == value.to_lowercase());
        if same || attr == UserAttr::UserName {
            kept.recorded.push((attr, Some(value.to_owned())));
            kept.evidence.kept.push(attr);
        } else if display_name_sent && DERIVED_FROM_DISPLAY_NAME.contains(&attr) {
            kept.recorded.push((attr, stored.map(str::to_owned)));
            kept.overwritten.push((attr, value.to_owned()));
        } else {
            kept.recorded.push((attr, Some(value.to_owned())));
            kept.evidence.noted.push(AttrNote {
                attr,
                sent: value.to_owned(),
                stored: stored.map(str::to_owned),
            });
        }
    }
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ScimId, UserAttrs};

    fn answer(pairs: &[(UserAttr, &str)]) -> RemoteUser {
        RemoteUser {
            id: ScimId::new("u1"),
            attrs: pairs
                .iter()
                .map(|(a, v)| (*a, (*v).to_owned()))
                .collect::<UserAttrs>(),
            active: true,
        }
    }

    #[test]
    fn a_value_not_kept_is_noted_on_the_user_and_recorded_as_sent() {
        let got = answer(&[
            (UserAttr::UserName, "ann@example.com"),
            (UserAttr::DisplayName, "Ann Lee"),
            (UserAttr::Title, "Engineer"),
        ]);
        let sent = [
            (UserAttr::UserName, "ann@example.com"),
            (UserAttr::DisplayName, " Ann Lee "),
            (UserAttr::Title, "ENGINEER"),
            (UserAttr::ExternalId, "k1"),
        ];
        let kept = judge(sent, &got).expect("a representation");
        assert_eq!(
            kept.recorded,
            vec![
                (UserAttr::UserName, Some("ann@example.com".into())),
                (UserAttr::DisplayName, Some(" Ann Lee ".into())),
                (UserAttr::Title, Some("ENGINEER".into())),
                (UserAttr::ExternalId, Some("k1".into())),
            ]
        );
        let noted: Vec<_> = kept.evidence.noted.iter().map(|n| n.attr).collect();
        assert_eq!(noted, [UserAttr::DisplayName, UserAttr::ExternalId]);
        assert_eq!(kept.evidence.kept, [UserAttr::UserName, UserAttr::Title]);
        assert_eq!(
            kept.evidence.noted[1].to_string(),
            "the target did not keep `externalId` (sent \"k1\", stored none)"
        );
    }

    /// Atlassian sets first and last name from `displayName`: name parts read
    /// back after a write that carried one are no evidence, and are recorded
    /// as held so the next plan sends them alone.
    #[test]
    fn name_parts_overwritten_by_a_display_name_sent_with_them_are_no_evidence() {
        let got = answer(&[
            (UserAttr::UserName, "ann@example.com"),
            (UserAttr::DisplayName, "Lee, Ann"),
            (UserAttr::GivenName, "Lee,"),
            (UserAttr::FamilyName, "Ann"),
        ]);
        let sent = [
            (UserAttr::UserName, "ann@example.com"),
            (UserAttr::DisplayName, "Lee, Ann"),
            (UserAttr::GivenName, "Ann"),
            (UserAttr::FamilyName, "Lee"),
        ];
        let kept = judge(sent, &got).expect("a representation");
        assert!(kept.evidence.noted.is_empty(), "{:?}", kept.evidence);
        assert_eq!(
            kept.overwritten,
            [
                (UserAttr::GivenName, "Ann".to_owned()),
                (UserAttr::FamilyName, "Lee".to_owned()),
            ]
        );
        assert_eq!(
            kept.recorded[2..],
            [
                (UserAttr::GivenName, Some("Lee,".into())),
                (UserAttr::FamilyName, Some("Ann".into())),
            ]
        );
        // Without displayName in the write, the same answer is evidence.
        let kept = judge(
            [
                (UserAttr::UserName, "ann@example.com"),
                (UserAttr::FamilyName, "Lee"),
            ],
            &got,
        )
        .expect("a representation");
        let noted: Vec<_> = kept.evidence.noted.iter().map(|n| n.attr).collect();
        assert_eq!(noted, [UserAttr::FamilyName]);
    }

    #[test]
    fn an_answer_without_user_name_judges_nothing() {
        let got = answer(&[(UserAttr::Title, "x")]);
        assert_eq!(judge([(UserAttr::Title, "y")], &got), None);
    }
}
