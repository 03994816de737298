//! What the target kept of what was sent: the user a create (201) or a PATCH
//! (200 with the resource) answered with is compared with the values sent, so
//! the state records what the target holds, and an attribute it dropped or
//! stored otherwise becomes an [`AttrNote`].

use crate::model::{AttrNote, RemoteUser, UserAttr};

/// The target's answer, judged against what was sent.
#[derive(Debug, Default, PartialEq)]
pub struct Kept {
    /// For each attribute sent with a value: what to record (`None`: the
    /// target holds none).
    pub recorded: Vec<(UserAttr, Option<String>)>,
    /// The attributes not kept as sent.
    pub notes: Vec<AttrNote>,
}

/// Judges `answer` (the user as the target answered holding it) against the
/// values `sent`. `None` when the answer is no representation of the user (it
/// lacks a `userName`: a minimal body says nothing of what was kept).
///
/// A value that differs only in case is recorded as sent and not noted: how
/// the target compares case is the schema's business, not a dropped value.
/// `userName` is never noted: it is what a user is matched by.
pub fn judge<'a>(
    sent: impl IntoIterator<Item = (UserAttr, &'a str)>,
    answer: &RemoteUser,
) -> Option<Kept> {
    answer.attrs.get(UserAttr::UserName)?;
    let mut kept = Kept::default();
    for (attr, value) in sent {
        let stored = answer.attrs.get(attr);
        let same = stored.is_some_and(|s| s == value || s.to_lowercase() == value.to_lowercase());
        if same || attr == UserAttr::UserName {
            kept.recorded.push((attr, Some(value.to_owned())));
            continue;
        }
        kept.recorded.push((attr, stored.map(str::to_owned)));
        kept.notes.push(AttrNote {
            attr,
            sent: value.to_owned(),
            stored: stored.map(str::to_owned),
        });
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
    fn dropped_and_normalised_values_are_noted_and_recorded_as_stored() {
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
                (UserAttr::DisplayName, Some("Ann Lee".into())),
                (UserAttr::Title, Some("ENGINEER".into())),
                (UserAttr::ExternalId, None),
            ]
        );
        let noted: Vec<_> = kept.notes.iter().map(|n| n.attr).collect();
        assert_eq!(noted, [UserAttr::DisplayName, UserAttr::ExternalId]);
        assert_eq!(
            kept.notes[1].to_string(),
            "the target does not keep `externalId` (sent \"k1\", stored none)"
        );
    }

    #[test]
    fn an_answer_without_user_name_judges_nothing() {
        let got = answer(&[(UserAttr::Title, "x")]);
        assert_eq!(judge([(UserAttr::Title, "y")], &got), None);
    }
}
