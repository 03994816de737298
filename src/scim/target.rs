//! The SCIM client as the executor's [`Target`].

use crate::apply::{RequiredPaths, Target, TargetError};
use crate::model::TargetRules;
use crate::model::{
    GroupName, MemberRef, RemoteGroup, RemoteUser, ScimId, TargetSnapshot, UserAttr, UserAttrs,
    UserName,
};

use super::{ScimClient, ScimError};

impl From<ScimError> for TargetError {
    fn from(e: ScimError) -> Self {
        match e {
            ScimError::NotFound => TargetError::NotFound,
            ScimError::Conflict { detail } => TargetError::Conflict { detail },
            ScimError::Unauthorized { status, detail } => {
                TargetError::Unauthorized { status, detail }
            }
            ScimError::NotApplied(message) => TargetError::NotApplied { message },
            ScimError::Refused(detail) => TargetError::Refused { detail },
            other => TargetError::Failed {
                status: other.status(),
                message: other.to_string(),
            },
        }
    }
}

impl Target for ScimClient {
    /// Starts the cycle (forgets the last cycle's listing), reads the
    /// capabilities and the schema (later requests honour them) and makes one cheap
    /// authenticated request: one user asked for, never the collection.
    async fn check(&self) -> Result<(), TargetError> {
        self.begin_cycle();
        let spc = self.service_provider_config().await?;
        tracing::debug!(
            page_size = self.page_size_in_force(),
            advertised_max_results = spc.filter_max_results,
            filter = spc.filter,
            patch = spc.patch,
            "target capabilities read"
        );
        self.read_schema().await?;
        self.holds_any("Users").await?;
        Ok(())
    }

    fn rules(&self) -> TargetRules {
        ScimClient::rules(self)
    }

    fn in_flight_limit(&self) -> Option<usize> {
        self.concurrency_limit()
    }

    fn required_paths(&self) -> Option<RequiredPaths> {
        self.learned().map(|l| l.required.clone())
    }

    async fn holds_anything(&self) -> Result<bool, TargetError> {
        Ok(self.holds_any("Users").await? || self.holds_any("Groups").await?)
    }

    async fn read_all(&self) -> Result<TargetSnapshot, TargetError> {
        let (users, groups, created) = self.list_all_created().await?;
        tracing::info!(users = users.len(), groups = groups.len(), "target read");
        Ok(TargetSnapshot {
            users,
            groups,
            created,
            ..TargetSnapshot::default()
        })
    }

    async fn get_user(&self, id: &ScimId) -> Result<Option<RemoteUser>, TargetError> {
        Ok(ScimClient::get_user(self, id).await?)
    }

    async fn get_group(&self, id: &ScimId) -> Result<Option<RemoteGroup>, TargetError> {
        Ok(ScimClient::get_group(self, id).await?)
    }

    async fn create_user(&self, attrs: &UserAttrs) -> Result<RemoteUser, TargetError> {
        Ok(ScimClient::create_user(self, attrs, true).await?)
    }

    async fn find_user(&self, user_name: &UserName) -> Result<Option<RemoteUser>, TargetError> {
        // Only asked when the user should exist (after a 409, or to resume an
        // interrupted create): an empty filter answer is checked in a listing.
        Ok(self.find_user_after_conflict(user_name.as_str()).await?)
    }

    async fn patch_user(
        &self,
        id: &ScimId,
        changes: &[(UserAttr, Option<String>)],
        active: Option<bool>,
    ) -> Result<Option<RemoteUser>, TargetError> {
        Ok(ScimClient::patch_user(self, id, changes, active).await?)
    }

    async fn delete_user(&self, id: &ScimId) -> Result<(), TargetError> {
        Ok(ScimClient::delete_user(self, id).await?)
    }

    async fn create_group(
        &self,
        name: &GroupName,
        external_id: &str,
        members: &[MemberRef],
    ) -> Result<ScimId, TargetError> {
        Ok(self
            .create_group_for(name.as_str(), Some(external_id), members)
            .await?
            .id)
    }

    async fn find_group(&self, name: &GroupName) -> Result<Option<RemoteGroup>, TargetError> {
        Ok(self.find_group_by_display_name(name.as_str()).await?)
    }

    async fn rename_group(&self, id: &ScimId, name: &GroupName) -> Result<(), TargetError> {
        Ok(ScimClient::rename_group(self, id, name.as_str()).await?)
    }

    async fn add_members(&self, group: &ScimId, members: &[MemberRef]) -> Result<(), TargetError> {
        Ok(ScimClient::add_members(self, group, members).await?)
    }

    async fn remove_members(
        &self,
        group: &ScimId,
        members: &[MemberRef],
    ) -> Result<(), TargetError> {
        Ok(ScimClient::remove_members(self, group, members).await?)
    }

    async fn delete_group(&self, id: &ScimId) -> Result<(), TargetError> {
        Ok(ScimClient::delete_group(self, id).await?)
    }
}
