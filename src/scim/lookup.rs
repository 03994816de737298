//! Finding a user: by id, by `userName` or `externalId` (through the filter,
//! checked client-side, or the listing), and before a create, case-insensitively
//! on targets that do not fold case themselves.

use super::*;

impl ScimClient {
    /// The user with this id; `None` only when the target answers 404.
    pub async fn get_user(&self, id: &ScimId) -> Result<Option<RemoteUser>, ScimError> {
        match self
            .call(Method::GET, self.url(&["Users", id.as_str()]), &[], None)
            .await
        {
            Ok(reply) => resource::user_from_json(&reply.json()?)
                .map(Some)
                .map_err(ScimError::InvalidResponse),
            Err(ScimError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds a user by `userName`, compared case-insensitively here too (servers
    /// may ignore the filter or compare exactly).
    pub async fn find_user_by_user_name(
        &self,
        user_name: &str,
    ) -> Result<Option<RemoteUser>, ScimError> {
        self.find_user(UserAttr::UserName, user_name).await
    }

    /// Finds a user by `userName` where one is known to exist (after a 409,
    /// or before a create on a target that accepts duplicates): an empty
    /// filter answer is suspect there, since some targets compare `eq`
    /// case-sensitively although `userName` is not case-exact. The users are
    /// then listed (once per client, that is once per cycle) and compared
    /// case-insensitively.
    pub async fn find_user_after_conflict(
        &self,
        user_name: &str,
    ) -> Result<Option<RemoteUser>, ScimError> {
        if let Some(found) = self.find_user_by_user_name(user_name).await? {
            return Ok(Some(found));
        }
        let wanted = UserName::new(user_name);
        let found = self
            .find_listed(|u| u.user_name().as_ref() == Some(&wanted))
            .await?;
        if found.is_some() && !self.inner.warned_eq_case.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target_url = %self.inner.base,
                "the SCIM target's userName eq filter missed a user that a listing holds (it compares case-sensitively?); lookups after a conflict fall back to the listing"
            );
        }
        Ok(found)
    }

    /// Finds a user by `externalId`, compared exactly (Atlassian treats it as case-sensitive).
    pub async fn find_user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<RemoteUser>, ScimError> {
        self.find_user(UserAttr::ExternalId, external_id).await
    }

    pub(super) async fn find_user(
        &self,
        attr: UserAttr,
        value: &str,
    ) -> Result<Option<RemoteUser>, ScimError> {
        // Compared as the attribute table says the target compares it.
        let case_exact = attr.spec().case_exact;
        let wanted = UserName::new(value);
        let matches = |u: &RemoteUser| {
            u.attrs.get(attr).is_some_and(|v| {
                if case_exact {
                    v == value
                } else {
                    UserName::new(v) == wanted
                }
            })
        };
        // What a server that honoured the filter could return, whichever way it compares.
        let plausible = |u: &RemoteUser| {
            u.attrs
                .get(attr)
                .is_some_and(|v| UserName::new(v) == wanted)
        };
        match self
            .search("Users", attr.name(), value, resource::user_from_json)
            .await?
        {
            Some(users) if users.iter().all(plausible) => {
                Ok(users.into_iter().find(|u| matches(u)))
            }
            Some(_) => {
                self.warn_filter_ignored();
                self.find_listed(matches).await
            }
            None => self.find_listed(matches).await,
        }
    }

    /// Before a create on a target whose `userName` is not case-exact: the
    /// user it already holds under this userName in another case, whatever
    /// it says about uniqueness (some servers enforce it case-sensitively and
    /// would take `Ann@x.com` beside `ann@x.com`). Answered from the cycle's
    /// listing when there is one; else by the `eq` filter, one request a
    /// create, until those requests would have paid for a listing (then the
    /// users are listed once for the cycle); listed at once on a target whose
    /// `eq` compares case-sensitively or that has no filter.
    pub(super) async fn holder_of(&self, user_name: &str) -> Result<Option<RemoteUser>, ScimError> {
        let wanted = UserName::new(user_name);
        let listed = |client: &Self| {
            client
                .users_cache()
                .as_mut()
                .and_then(|l| l.by_user_name(&wanted).cloned())
        };
        if self.users_cache().is_some() {
            return Ok(listed(self));
        }
        let Some(how) = self.create_lookup().await? else {
            return Ok(None);
        };
        let made = self.inner.create_lookups.fetch_add(1, Ordering::Relaxed);
        if !how.eq_folds_case || made >= how.listing_pages {
            self.ensure_listed().await?;
            return Ok(listed(self));
        }
        self.find_user_by_user_name(user_name).await
    }

    /// Works out, once a cycle, how [`Self::holder_of`] looks names up: what
    /// a listing would cost (from the first page's `totalResults`), and
    /// whether `eq` finds a user the target holds when asked in another case.
    /// `None` when the target cannot be asked (nothing is looked up then, and
    /// its 409 is trusted); a refused credential is an error.
    pub(super) async fn create_lookup(&self) -> Result<Option<CreateLookup>, ScimError> {
        let mut known = self.inner.create_lookup.lock().await;
        if let Some(how) = *known {
            return Ok(how);
        }
        let page = match self.first_page("Users").await {
            Ok(page) => page,
            Err(e) if e.is_auth() => return Err(e),
            // Not asked again this cycle: one failed look, not one per create.
            Err(_) => {
                *known = Some(None);
                return Ok(None);
            }
        };
        let total = page.total.unwrap_or(page.resources.len() as u64);
        let listing_pages = total.div_ceil(u64::from(self.page_size().max(1)));
        let eq_folds_case = if !self.capabilities().filter {
            false
        } else {
            let probe = page
                .resources
                .first()
                .and_then(|r| resource::user_from_json(r).ok())
                .and_then(|u| u.attrs.get(UserAttr::UserName).map(swap_case))
                .filter(|probe| probe.chars().any(char::is_alphabetic));
            match probe {
                Some(probe) => match self
                    .search("Users", "userName", &probe, resource::user_from_json)
                    .await
                {
                    Ok(Some(found)) => !found.is_empty(),
                    Ok(None) => false,
                    Err(e) if e.is_auth() => return Err(e),
                    Err(_) => false,
                },
                // Nothing to ask about (an empty target): a listing is one page.
                None => true,
            }
        };
        if !eq_folds_case && total > 0 {
            tracing::debug!(
                target_url = %self.inner.base,
                "the SCIM target's userName eq filter compares case-sensitively (or there is none): creates look userNames up in one listing of the users"
            );
        }
        let how = CreateLookup {
            listing_pages,
            eq_folds_case,
        };
        *known = Some(Some(how));
        Ok(Some(how))
    }
}

/// How a cycle looks userNames up before creates (see
/// [`ScimClient::holder_of`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct CreateLookup {
    /// Requests a listing of the users would take.
    listing_pages: u64,
    /// Whether the `eq` filter on userName ignores case, as the schema says.
    eq_folds_case: bool,
}

/// `Ann@X.com` → `aNN@x.COM`: the same userName in another case.
pub(super) fn swap_case(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            if c.is_uppercase() {
                c.to_lowercase().collect::<Vec<_>>()
            } else {
                c.to_uppercase().collect::<Vec<_>>()
            }
        })
        .collect()
}
