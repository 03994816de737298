//! Record problems collected so the operator sees them all at once: CSV rows
//! and LDAP entries that cannot become records, listed up to a limit and
//! counted beyond it, and the report that lists them.

/// Reports at most this many record problems; the rest are counted.
pub(super) const MAX_PROBLEMS: usize = 50;

/// Collects record problems so the operator sees them all at once, not one per
/// run: the first `MAX_PROBLEMS`, and a count of the rest.
pub(crate) struct Problems<T> {
    listed: Vec<T>,
    more: usize,
}

impl<T> Default for Problems<T> {
    fn default() -> Self {
        Problems {
            listed: Vec::new(),
            more: 0,
        }
    }
}

impl<T> Problems<T> {
    pub(crate) fn push(&mut self, problem: T) {
        if self.listed.len() < MAX_PROBLEMS {
            self.listed.push(problem);
        } else {
            self.more += 1;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The listed problems and how many more there were.
    pub(crate) fn into_parts(self) -> (Vec<T>, usize) {
        (self.listed, self.more)
    }
}

/// "`what`: N problems found; …", then one listed problem per line, then how
/// many were left out.
pub(super) fn render_list(
    what: &str,
    listed: impl ExactSizeIterator<Item = String>,
    more: usize,
) -> String {
    let total = listed.len() + more;
    let mut out = format!(
        "{what}: {total} problem{} found; nothing was planned or changed",
        if total == 1 { "" } else { "s" }
    );
    for line in listed {
        out.push('\n');
        out.push_str(&line);
    }
    if more > 0 {
        out.push_str(&format!("\n… and {more} more"));
    }
    out
}
