//! Listing collections: pages as the target serves them (a `count` it may
//! refuse, pages it may repeat), filtered searches, and the cycle's user
//! listing, kept up to date with the cycle's own writes.

use super::*;

impl ScimClient {
    /// GETs one page of a list. A request carrying `count` is tried once
    /// (not retried): any failure but a refused credential or a missing
    /// collection makes the caller fall back to the target's default page size,
    /// where the retry layer applies again.
    pub(super) async fn list_page(
        &self,
        url: &Url,
        query: &[(&str, String)],
        with_count: bool,
    ) -> Result<resource::ListPage, ScimError> {
        let reply = if with_count {
            let once = RetryPolicy {
                max_attempts: 1,
                ..self.inner.retry
            };
            match self
                .call_with(&once, Method::GET, url.clone(), query, None)
                .await
            {
                // Nothing reached the target: says nothing of `count`; the
                // attempts left are tried as usual.
                Err(ScimError::Transport(_)) if self.inner.retry.max_attempts > 1 => {
                    let rest = RetryPolicy {
                        max_attempts: self.inner.retry.max_attempts - 1,
                        ..self.inner.retry
                    };
                    self.call_with(&rest, Method::GET, url.clone(), query, None)
                        .await?
                }
                other => other?,
            }
        } else {
            self.call(Method::GET, url.clone(), query, None).await?
        };
        resource::parse_list(reply.json()?).map_err(ScimError::InvalidResponse)
    }

    /// Every resource of a collection, paged (see [`paging`]).
    pub(super) async fn list<T>(
        &self,
        collection: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Result<Vec<T>, ScimError> {
        let url = self.url(&[collection]);
        let mut pager = if self.inner.count_refused.load(Ordering::Relaxed) {
            Pager::with_server_page_size()
        } else {
            Pager::new(self.page_size())
        };
        tracing::debug!(
            collection,
            page_size = pager
                .count()
                .map_or_else(|| "target default".to_owned(), |n| n.to_string()),
            "listing"
        );
        let mut all = Vec::new();
        loop {
            let mut query = vec![("startIndex", pager.start_index().to_string())];
            if let Some(count) = pager.count() {
                query.push(("count", count.to_string()));
            }
            let first_with_count = pager.start_index() == 1 && pager.count().is_some();
            let page = match self.list_page(&url, &query, first_with_count).await {
                // Some servers refuse or fail any `count` (400, 500, a body that
                // is no list): page with their default size instead.
                Err(e) if first_with_count && count_may_be_at_fault(&e) => {
                    self.count_failed(collection, &e);
                    pager = Pager::with_server_page_size();
                    continue;
                }
                other => other?,
            };
            let items = page
                .resources
                .iter()
                .map(|r| {
                    let id = resource::resource_id(r).map_err(ScimError::InvalidResponse)?;
                    let item = parse(r).map_err(ScimError::InvalidResponse)?;
                    Ok((id.as_str().to_owned(), item))
                })
                .collect::<Result<Vec<_>, ScimError>>()?;
            let (fresh, more) = pager.accept(page.total, items).map_err(|e| {
                ScimError::InvalidResponse(format!(
                    "/{collection} kept returning new resources after {} pages; refusing an unbounded read",
                    e.pages
                ))
            })?;
            all.extend(fresh);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Candidates for `attr eq value` from one filtered request; `None` when
    /// the target does not support filters (the caller reads the collection).
    pub(super) async fn search<T>(
        &self,
        collection: &str,
        attr: &str,
        value: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, ScimError> {
        if !self.capabilities().filter {
            return Ok(None);
        }
        let query = [("filter", resource::eq_filter(attr, value))];
        let reply = match self
            .call(Method::GET, self.url(&[collection]), &query, None)
            .await
        {
            // The target does not filter on this attribute after all.
            Err(ScimError::Http {
                status: 400,
                scim_type: Some(t),
                ..
            }) if t == "invalidFilter" => {
                self.warn_filter_ignored();
                return Ok(None);
            }
            other => other?,
        };
        let page = resource::parse_list(reply.json()?).map_err(ScimError::InvalidResponse)?;
        page.resources
            .iter()
            .map(|r| parse(r).map_err(ScimError::InvalidResponse))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The first page of a list request that carries `count` failed: page with
    /// the target's default page size from now on in this cycle, and say so.
    pub(super) fn count_failed(&self, collection: &str, error: &ScimError) {
        if !self.inner.count_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                collection,
                error = %error,
                "the SCIM target failed a list request carrying `count`; paging with its default page size instead (no `count` sent this cycle)"
            );
        }
    }

    pub(super) fn warn_filter_ignored(&self) {
        if !self
            .inner
            .warned_filter_ignored
            .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                target_url = %self.inner.base,
                "the SCIM target ignored or refused a filter; falling back to full listings"
            );
        }
    }

    /// The page size in force: the configured one, else the target's
    /// advertised `maxResults`, else 100; never above what the target
    /// advertises nor the flavour's limit (Atlassian 100, others 1000).
    pub(super) fn page_size(&self) -> u32 {
        let cap = match self.inner.flavour {
            Flavour::Atlassian => ATLASSIAN_MAX_PAGE,
            Flavour::Generic => GENERIC_MAX_PAGE,
        };
        let advertised = self.capabilities().filter_max_results.filter(|n| *n > 0);
        let size = match (self.inner.page_size, advertised) {
            (Some(configured), Some(max)) => configured.min(max),
            (Some(configured), None) => configured,
            (None, Some(max)) => max,
            (None, None) => DEFAULT_PAGE,
        };
        size.clamp(1, cap)
    }

    /// The page size list requests ask for (see [`Self::page_size`]); `None`
    /// when the target failed a request with `count` this cycle.
    pub fn page_size_in_force(&self) -> Option<u32> {
        (!self.inner.count_refused.load(Ordering::Relaxed)).then(|| self.page_size())
    }

    /// The first page of a collection, one resource long where the target
    /// takes `count`. The `Users` page is read once a cycle, and again only
    /// after this client has sent a change.
    pub(super) async fn first_page(
        &self,
        collection: &str,
    ) -> Result<resource::ListPage, ScimError> {
        let users = collection == "Users";
        if users && let Some(page) = self.users_first_page() {
            return Ok(page);
        }
        // Kept with the changes counted before it was sent: one that ends
        // while it is out makes it stale.
        let changes = self.inner.changes.load(Ordering::SeqCst);
        let page = self.read_first_page(collection).await?;
        if users {
            *self.first_page_kept() = Some((changes, page.clone()));
        }
        Ok(page)
    }

    /// The first page of `Users` read this cycle, if no change this client
    /// sent has ended since it was asked for.
    fn users_first_page(&self) -> Option<resource::ListPage> {
        let changes = self.inner.changes.load(Ordering::SeqCst);
        self.first_page_kept()
            .as_ref()
            .filter(|(at, _)| *at == changes)
            .map(|(_, page)| page.clone())
    }

    fn first_page_kept(&self) -> std::sync::MutexGuard<'_, Option<(u64, resource::ListPage)>> {
        self.inner
            .users_first_page
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    async fn read_first_page(&self, collection: &str) -> Result<resource::ListPage, ScimError> {
        let url = self.url(&[collection]);
        let page = if self.inner.count_refused.load(Ordering::Relaxed) {
            self.list_page(&url, &[], false).await?
        } else {
            let one = [("startIndex", "1".to_string()), ("count", "1".to_string())];
            match self.list_page(&url, &one, true).await {
                // Some servers refuse or fail any `count`: ask with their default
                // page size (one page, whatever its size).
                Err(e) if count_may_be_at_fault(&e) => {
                    self.count_failed(collection, &e);
                    self.list_page(&url, &[], false).await?
                }
                other => other?,
            }
        };
        Ok(page)
    }

    /// Whether a collection (`Users`, `Groups`) holds at least one resource:
    /// one request for one resource, not a read of the collection. Also the
    /// connectivity probe of [`crate::apply::Target::check`].
    pub async fn holds_any(&self, collection: &str) -> Result<bool, ScimError> {
        let page = self.first_page(collection).await?;
        Ok(page.total.is_some_and(|n| n > 0) || !page.resources.is_empty())
    }

    /// All users, every page: read once per cycle (see [`Self::begin_cycle`]),
    /// then answered from that listing as kept up to date by this client's
    /// own creates, changes and deletes. A listing with two users of one
    /// userName (case-insensitively) shows the target accepts duplicates:
    /// creates look the userName up first from then on.
    pub async fn list_users(&self) -> Result<Vec<RemoteUser>, ScimError> {
        self.ensure_listed().await?;
        Ok(self
            .users_cache()
            .as_ref()
            .map(|l| l.users.clone())
            .unwrap_or_default())
    }

    /// The user of this cycle's listing that `matches` (listing the users
    /// first if this cycle has not): only the match is copied, so a lookup on
    /// a target without filters costs a scan, not a copy of every user.
    pub(super) async fn find_listed(
        &self,
        matches: impl Fn(&RemoteUser) -> bool,
    ) -> Result<Option<RemoteUser>, ScimError> {
        self.ensure_listed().await?;
        Ok(self
            .users_cache()
            .as_ref()
            .and_then(|l| l.users.iter().find(|u| matches(u)).cloned()))
    }

    /// Lists the users unless this cycle already has.
    pub(super) async fn ensure_listed(&self) -> Result<(), ScimError> {
        let _one_at_a_time = self.inner.listing_users.lock().await;
        if self.users_cache().is_some() {
            return Ok(());
        }
        // An empty first page, read since this client's last change, is the
        // whole listing.
        if self
            .users_first_page()
            .is_some_and(|page| page.total == Some(0) && page.resources.is_empty())
        {
            self.keep_listing(Vec::new());
            return Ok(());
        }
        let users = self.list("Users", resource::user_from_json).await?;
        self.keep_listing(users);
        Ok(())
    }

    /// Every user and every group, listed now, each with when the target
    /// says it made it: what a `--full` read (and `audit`) sees. The user
    /// listing becomes this cycle's.
    pub async fn list_all_created(
        &self,
    ) -> Result<(Vec<RemoteUser>, Vec<RemoteGroup>, CreatedAt), ScimError> {
        let users = {
            let _one_at_a_time = self.inner.listing_users.lock().await;
            let listed = self.list("Users", resource::listed_user).await?;
            let (users, created) = with_created(listed, |u: &RemoteUser| &u.id);
            self.keep_listing(users.clone());
            (users, created)
        };
        let listed = self.list("Groups", resource::listed_group).await?;
        let (groups, group_created) = with_created(listed, |g: &RemoteGroup| &g.id);
        let created = CreatedAt {
            users: users.1,
            groups: group_created,
        };
        Ok((users.0, groups, created))
    }

    /// Makes `users` the cycle's user listing.
    fn keep_listing(&self, users: Vec<RemoteUser>) {
        if self.user_names_unique() != Some(false)
            && let Some(name) = duplicate_user_name(&users)
        {
            tracing::warn!(
                user_name = name.as_str(),
                "the SCIM target holds two users with one userName, so it does not refuse duplicates; every create looks the userName up first"
            );
            self.set_user_names_unique(Some(false));
        }
        *self.users_cache() = Some(Listing::new(users));
    }

    pub(super) fn users_cache(&self) -> std::sync::MutexGuard<'_, Option<Listing>> {
        self.inner.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Edits the cycle's user listing, if there is one.
    pub(super) fn edit_cached_users(&self, edit: impl FnOnce(&mut Listing)) {
        if let Some(users) = self.users_cache().as_mut() {
            edit(users);
        }
    }

    /// Starts a cycle: forgets the user listing and what paging taught, so
    /// this cycle's reads see the target as it is now.
    pub fn begin_cycle(&self) {
        *self.users_cache() = None;
        *self.first_page_kept() = None;
        self.inner.count_refused.store(false, Ordering::Relaxed);
        self.inner.create_lookups.store(0, Ordering::Relaxed);
        if let Some(pace) = &self.inner.pace {
            pace.begin_cycle();
        }
        if let Ok(mut lookup) = self.inner.create_lookup.try_lock() {
            *lookup = None;
        }
    }
}

/// The cycle's user listing, in the target's order, with each user's place by
/// id: the cycle's own changes edit it in place, without a scan per request.
pub(super) struct Listing {
    pub(super) users: Vec<RemoteUser>,
    pub(super) by_id: HashMap<String, usize>,
    /// userName (compared as [`UserName`] does) → the first user holding it:
    /// built by the first lookup by name, kept by [`Self::push`] (the
    /// cycle's creates), dropped by any other change.
    by_name: Option<HashMap<UserName, usize>>,
}

impl Listing {
    pub(super) fn new(users: Vec<RemoteUser>) -> Listing {
        let by_id = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.as_str().to_owned(), i))
            .collect();
        Listing {
            users,
            by_id,
            by_name: None,
        }
    }

    pub(super) fn push(&mut self, user: RemoteUser) {
        if let (Some(index), Some(name)) = (self.by_name.as_mut(), user.user_name()) {
            index.entry(name).or_insert(self.users.len());
        }
        self.by_id
            .insert(user.id.as_str().to_owned(), self.users.len());
        self.users.push(user);
    }

    pub(super) fn get_mut(&mut self, id: &ScimId) -> Option<&mut RemoteUser> {
        // The caller may change the userName.
        self.by_name = None;
        let i = *self.by_id.get(id.as_str())?;
        self.users.get_mut(i)
    }

    /// The first user holding `name`: a look in an index, not a scan, so a
    /// cycle's thousands of creates do not each walk the listing.
    pub(super) fn by_user_name(&mut self, name: &UserName) -> Option<&RemoteUser> {
        let users = &self.users;
        let index = self.by_name.get_or_insert_with(|| {
            let mut index = HashMap::with_capacity(users.len());
            for (i, u) in users.iter().enumerate() {
                if let Some(n) = u.user_name() {
                    index.entry(n).or_insert(i);
                }
            }
            index
        });
        index.get(name).and_then(|i| users.get(*i))
    }

    /// Removes a user, keeping the others' order (deletes are few: the
    /// removal guards bound them).
    pub(super) fn remove(&mut self, id: &ScimId) {
        self.by_name = None;
        if let Some(i) = self.by_id.remove(id.as_str()) {
            self.users.remove(i);
            for u in &self.users[i..] {
                if let Some(at) = self.by_id.get_mut(u.id.as_str()) {
                    *at -= 1;
                }
            }
        }
    }
}

/// Listed resources apart from their `meta.created`, kept by id.
fn with_created<T>(
    listed: Vec<(T, Option<String>)>,
    id: impl Fn(&T) -> &ScimId,
) -> (Vec<T>, HashMap<ScimId, String>) {
    let mut created = HashMap::new();
    let items = listed
        .into_iter()
        .map(|(item, at)| {
            if let Some(at) = at {
                created.insert(id(&item).clone(), at);
            }
            item
        })
        .collect();
    (items, created)
}

/// Whether a failed list request that carried `count` may have failed because
/// of it: any answer but a refused credential or a missing collection, and not
/// a target that could not be reached.
pub(super) fn count_may_be_at_fault(error: &ScimError) -> bool {
    !error.is_auth() && !matches!(error, ScimError::NotFound | ScimError::Transport(_))
}

/// A userName two users share (compared case-insensitively), if any.
pub(super) fn duplicate_user_name(users: &[RemoteUser]) -> Option<UserName> {
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    users
        .iter()
        .filter_map(RemoteUser::user_name)
        .find(|name| !seen.insert(name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> RemoteUser {
        RemoteUser {
            id: ScimId::new(id),
            attrs: [(UserAttr::UserName, name.to_owned())].into(),
            active: true,
        }
    }

    #[test]
    fn a_user_name_is_found_by_index_through_creates_and_renames() {
        let mut listing = Listing::new(vec![user("a", "Ann@X.com"), user("b", "ann@x.com")]);
        let find =
            |l: &mut Listing, n: &str| l.by_user_name(&UserName::new(n)).map(|u| u.id.clone());
        // Case-insensitively, the first holder.
        assert_eq!(find(&mut listing, "ANN@x.com"), Some(ScimId::new("a")));
        // A create after the index was built is found.
        listing.push(user("c", "Cy@x.com"));
        assert_eq!(find(&mut listing, "cy@X.COM"), Some(ScimId::new("c")));
        // A rename through get_mut is seen, not a stale index.
        listing
            .get_mut(&ScimId::new("c"))
            .expect("listed")
            .attrs
            .insert(UserAttr::UserName, "dee@x.com");
        assert_eq!(find(&mut listing, "cy@x.com"), None);
        assert_eq!(find(&mut listing, "dee@x.com"), Some(ScimId::new("c")));
        listing.remove(&ScimId::new("a"));
        assert_eq!(find(&mut listing, "ann@x.com"), Some(ScimId::new("b")));
    }
}
