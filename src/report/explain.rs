//! `idsync explain USER`: why one user is or is not provisioned, and as what.

use std::fmt::Write as _;

use crate::model::{Ownership, UserAttr, UserName};
use crate::plan::{MemberNames, Operation};
use crate::sync::inspect::{Explanation, Found, Mapped};

use super::plan::{PlanView, op_lines};
use super::{Style, escape, quote, show};

/// The user's groups on both sides, and what the next cycle would send.
fn groups_and_next(out: &mut String, e: &Explanation) {
    let list = |names: &[String]| {
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.iter().map(|n| show(n)).collect::<Vec<_>>().join(", ")
        }
    };
    let _ = writeln!(out, "\nGroups in the source: {}", list(&e.source_groups));
    let _ = writeln!(
        out,
        "Groups in the target (as pushed): {}",
        list(&e.target_groups)
    );
    match &e.next {
        Err(why) => {
            let _ = writeln!(out, "\nNext cycle: cannot be planned: {why}");
        }
        Ok(ops) if ops.is_empty() => out.push_str("\nNext cycle: nothing to send for this user.\n"),
        Ok(ops) => {
            out.push_str("\nNext cycle would send:\n");
            let view = PlanView {
                style: Style { color: false },
                detail: true,
            };
            let names = member_names(e, ops);
            for op in ops {
                out.push_str(&op_lines(op, view, &names));
            }
        }
    }
}

/// The explained user's userName, for the membership lines of the next
/// cycle (which name only this user): as mapped from the source, else as
/// the user's own operation carries it.
fn member_names(e: &Explanation, ops: &[Operation]) -> MemberNames {
    let mapped = match &e.found {
        Found::InSource(user) => match &user.mapping {
            Mapped::InScope { attrs, .. } => attrs
                .get(UserAttr::UserName)
                .map(|name| (user.key.clone(), UserName::new(name))),
            _ => None,
        },
        Found::NotInSource { .. } => None,
    };
    ops.iter()
        .filter_map(|op| Some((op.user_key()?.clone(), op.user_name()?.clone())))
        .chain(mapped)
        .collect()
}

pub fn explain_text(e: &Explanation) -> String {
    let mut out = String::new();
    let user = match &e.found {
        Found::NotInSource { known } => {
            let _ = writeln!(
                out,
                "{} is not in the source ({}).",
                quote(&e.asked),
                e.source
            );
            if let Some(k) = known {
                let _ = writeln!(
                    out,
                    "The state DB knows it as key {} (SCIM id {}, {}); a user who left the source gets remove_action {:?} (unless protected or held by a guard).",
                    quote(k.key.as_str()),
                    k.scim_id,
                    k.status.as_str(),
                    e.remove_action
                );
                groups_and_next(&mut out, e);
            }
            return out;
        }
        Found::InSource(user) => user,
    };
    let _ = writeln!(
        out,
        "Source record: {} (key {})",
        user.origin,
        quote(user.key.as_str())
    );
    for (name, values) in &user.attrs {
        let values: Vec<String> = values.iter().map(|v| quote(v)).collect();
        let _ = writeln!(out, "  {name}: {}", values.join(", "));
    }
    let _ = writeln!(out, "\nScope: {}", user.scope);
    match &user.mapping {
        Mapped::Error(e) => {
            let _ = writeln!(out, "\nMapping: cannot be mapped: {e}");
        }
        Mapped::OutOfScope => out.push_str("\nMapping: not mapped (out of scope)\n"),
        Mapped::InScope { active, attrs } => {
            let _ = writeln!(
                out,
                "\nMapping: in scope, {}",
                if *active {
                    "active"
                } else {
                    "inactive in the source"
                }
            );
            for (attr, value) in attrs {
                let _ = writeln!(out, "  {attr}: {}", quote(value));
            }
        }
    }
    match &user.target {
        Some(t) => {
            let _ = writeln!(
                out,
                "\nTarget (as last pushed): SCIM id {}, {}, {} by idsync",
                t.scim_id,
                t.status.as_str(),
                match t.ownership {
                    Ownership::Created => "created",
                    Ownership::Adopted => "adopted",
                }
            );
            for (attr, value) in t.attrs.iter().flatten() {
                let _ = writeln!(out, "  {attr}: {}", quote(value));
            }
            if !t.history.is_empty() {
                out.push_str("\nHistory:\n");
                for h in &t.history {
                    let status = h
                        .http_status
                        .map(|s| format!(" HTTP {s}"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "  run #{} {} {}{status} {}",
                        h.run_id,
                        h.at,
                        h.op,
                        escape(h.error.as_deref().unwrap_or_default())
                    );
                }
            }
        }
        None => out.push_str("\nTarget: not provisioned by idsync yet.\n"),
    }
    groups_and_next(&mut out, e);
    out
}
