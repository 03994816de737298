//! When to stop reading a paged SCIM list. Servers disagree: some repeat the first
//! page past the end, echo the requested `count` as `itemsPerPage`, cap or default
//! the page size, or leave out `totalResults`. The [`Pager`] advances by what a
//! page actually held, drops repeated resources, and always stops. Pure, no I/O.

use std::collections::HashSet;

/// Extra pages allowed beyond `totalResults` (one resource per page being the
/// worst case), for resources created while we read.
const PAGE_SLACK: u64 = 16;

/// The bound when the server does not say how many resources there are.
const MAX_PAGES_WITHOUT_TOTAL: u64 = 100_000;

/// Tracks one paged read.
#[derive(Debug)]
pub struct Pager {
    next_start: u64,
    /// The `count` sent; `None` when the server's default page size is used.
    requested: Option<u32>,
    seen: HashSet<String>,
    pages: u64,
    max_pages: Option<u64>,
}

/// The server kept returning new resources past any sensible number of pages.
#[derive(Debug, PartialEq, Eq)]
pub struct PageLimitExceeded {
    pub pages: u64,
}

impl Pager {
    pub fn new(page_size: u32) -> Self {
        Self {
            next_start: 1,
            requested: Some(page_size.max(1)),
            seen: HashSet::new(),
            pages: 0,
            max_pages: None,
        }
    }

    /// A read that sends no `count`, for servers that refuse one.
    pub fn with_server_page_size() -> Self {
        Self {
            requested: None,
            ..Self::new(1)
        }
    }

    /// The `startIndex` (1-based) of the next request.
    pub fn start_index(&self) -> u64 {
        self.next_start
    }

    /// The `count` of each request, if one is sent.
    pub fn count(&self) -> Option<u32> {
        self.requested
    }

    /// Takes one page: `total` is its `totalResults`, `items` its resources with
    /// their ids, in order. Returns the resources not seen before, and whether
    /// another page should be read.
    pub fn accept<T>(
        &mut self,
        total: Option<u64>,
        items: Vec<(String, T)>,
    ) -> Result<(Vec<T>, bool), PageLimitExceeded> {
        self.pages += 1;
        let max_pages = *self.max_pages.get_or_insert_with(|| {
            total.map_or(MAX_PAGES_WITHOUT_TOTAL, |t| t.saturating_add(PAGE_SLACK))
        });
        let returned = items.len() as u64;
        let fresh: Vec<T> = items
            .into_iter()
            .filter_map(|(id, item)| self.seen.insert(id).then_some(item))
            .collect();
        // An empty page is the end; a page of nothing new is a server repeating itself.
        if fresh.is_empty() {
            return Ok((fresh, false));
        }
        // Advance by what the page held, not by `itemsPerPage` or our `count`.
        self.next_start += returned;
        let more = match total {
            Some(total) => self.next_start <= total && (self.seen.len() as u64) < total,
            // Without a total, a short page is the only sign of the end (when
            // the page size is known), else an empty or repeated page.
            None => self.requested.is_none_or(|r| returned >= u64::from(r)),
        };
        if more && self.pages >= max_pages {
            return Err(PageLimitExceeded { pages: self.pages });
        }
        Ok((fresh, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a server over `n` resources named `u1..un`; `serve` answers a
    /// (startIndex, count) request with (totalResults, ids).
    fn read_all(
        page_size: u32,
        mut serve: impl FnMut(u64, u32) -> (Option<u64>, Vec<String>),
    ) -> Result<(Vec<String>, u64), PageLimitExceeded> {
        let mut pager = Pager::new(page_size);
        let mut all = Vec::new();
        let mut requests = 0;
        loop {
            requests += 1;
            assert!(requests < 1_000_000, "unbounded");
            let (total, ids) = serve(pager.start_index(), pager.count().unwrap_or(20));
            let items = ids.into_iter().map(|id| (id.clone(), id)).collect();
            let (fresh, more) = pager.accept(total, items)?;
            all.extend(fresh);
            if !more {
                return Ok((all, requests));
            }
        }
    }

    fn ids(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
        range.map(|i| format!("u{i}")).collect()
    }

    /// A well-behaved server holding `n` resources, serving at most `cap` per page.
    fn honest(n: u64, cap: u32) -> impl FnMut(u64, u32) -> (Option<u64>, Vec<String>) {
        move |start, count| {
            let size = u64::from(count.min(cap));
            let end = (start + size - 1).min(n);
            (Some(n), if start > n { vec![] } else { ids(start..=end) })
        }
    }

    #[test]
    fn reads_exact_pages() {
        let (all, requests) = read_all(2, honest(6, 100)).expect("ok");
        assert_eq!(all, ids(1..=6));
        assert_eq!(requests, 3);
    }

    #[test]
    fn reads_a_short_last_page() {
        let (all, requests) = read_all(4, honest(6, 100)).expect("ok");
        assert_eq!(all, ids(1..=6));
        assert_eq!(requests, 2);
    }

    #[test]
    fn empty_directory_is_one_request() {
        let (all, requests) = read_all(100, honest(0, 100)).expect("ok");
        assert!(all.is_empty());
        assert_eq!(requests, 1);
    }

    #[test]
    fn server_capping_page_size_is_followed() {
        let (all, requests) = read_all(100, honest(45, 20)).expect("ok");
        assert_eq!(all, ids(1..=45));
        assert_eq!(requests, 3);
    }

    #[test]
    fn server_repeating_the_first_page_forever_terminates() {
        let (all, requests) = read_all(2, |_, _| (Some(10), ids(1..=2))).expect("ok");
        assert_eq!(all, ids(1..=2));
        assert_eq!(requests, 2);
    }

    #[test]
    fn server_repeating_first_page_past_the_end_without_total() {
        let mut honest = honest(5, 100);
        let serve = move |start: u64, count: u32| {
            if start > 5 {
                (None, ids(1..=2))
            } else {
                (None, honest(start, count).1)
            }
        };
        let (all, requests) = read_all(2, serve).expect("ok");
        assert_eq!(all, ids(1..=5));
        assert_eq!(requests, 3);
    }

    #[test]
    fn overlapping_pages_are_deduplicated() {
        // A server whose pages overlap by one (say, a resource created mid-read).
        let serve = |start: u64, _| {
            let start = start.saturating_sub(1).max(1);
            (Some(5), ids(start..=(start + 1).min(5)))
        };
        let (all, _) = read_all(2, serve).expect("ok");
        assert_eq!(all, ids(1..=5));
    }

    #[test]
    fn a_server_inventing_resources_is_cut_off() {
        // Every page holds a new resource and claims one more exists than the
        // next index, so neither the index nor the count check ever ends the read.
        let mut pager = Pager::new(1);
        let mut outcome = Ok((vec![], true));
        for n in 0..100 {
            let total = pager.start_index() + 1;
            outcome = pager.accept(Some(total), vec![(format!("x{n}"), ())]);
            if !matches!(outcome, Ok((_, true))) {
                break;
            }
        }
        // The bound comes from the first page's total (2) plus the slack.
        assert_eq!(
            outcome,
            Err(PageLimitExceeded {
                pages: 2 + PAGE_SLACK
            })
        );
    }

    #[test]
    fn server_default_page_size_without_total_reads_to_the_empty_page() {
        let mut pager = Pager::with_server_page_size();
        let mut honest = honest(45, 20);
        let mut all = Vec::new();
        let mut requests = 0;
        loop {
            requests += 1;
            assert_eq!(pager.count(), None);
            let ids = honest(pager.start_index(), 20).1;
            let (fresh, more) = pager
                .accept(None, ids.into_iter().map(|id| (id.clone(), id)).collect())
                .expect("bounded");
            all.extend(fresh);
            if !more {
                break;
            }
        }
        assert_eq!(all, ids(1..=45));
        assert_eq!(requests, 4);
    }

    #[test]
    fn unknown_total_stops_on_short_page() {
        let mut honest = honest(7, 100);
        let (all, requests) = read_all(3, move |s, c| (None, honest(s, c).1)).expect("ok");
        assert_eq!(all, ids(1..=7));
        assert_eq!(requests, 3);
    }
}
