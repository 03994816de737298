//! `idsync explain USER`: why one user is or is not provisioned, and as what.

use std::fmt::Write as _;

use crate::model::Ownership;
use crate::sync::inspect::{Explanation, Found, Mapped};

use super::{escape, quote};

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
                    "The state DB knows it as key {} (SCIM id {}, {}); the next sync applies remove_action {:?} unless it is protected or held by a guard.",
                    quote(k.key.as_str()),
                    k.scim_id,
                    k.status.as_str(),
                    e.remove_action
                );
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
    match &user.mapping {
        Mapped::Error(e) => {
            let _ = writeln!(out, "\nMapping: cannot be mapped: {e}");
        }
        Mapped::OutOfScope => out.push_str(
            "\nMapping: out of scope (no include rule matches, or an exclude rule does)\n",
        ),
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
    out
}
