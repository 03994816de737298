//! What the client learns about the target: its `/ServiceProviderConfig`, its
//! schema (`/Schemas`, `/ResourceTypes`) and what follows from them (payload
//! shape, comparison rules, whether userNames are unique).

use super::*;

impl ScimClient {
    /// Reads `/ServiceProviderConfig` and remembers it: later calls honour its
    /// PATCH and filter support and its `maxResults`. Until it is read, the client
    /// assumes PATCH and filters work (true of Atlassian).
    pub async fn service_provider_config(&self) -> Result<ServiceProviderConfig, ScimError> {
        let reply = self
            .call(Method::GET, self.url(&["ServiceProviderConfig"]), &[], None)
            .await?;
        let config = resource::parse_service_provider_config(&reply.json()?)
            .map_err(ScimError::InvalidResponse)?;
        *self
            .inner
            .capabilities
            .write()
            .unwrap_or_else(|p| p.into_inner()) = config.clone();
        Ok(config)
    }

    /// The capabilities in force (defaults until [`Self::service_provider_config`] ran).
    pub fn capabilities(&self) -> ServiceProviderConfig {
        self.inner
            .capabilities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the target enforces unique userNames, as its schema says
    /// (`uniqueness` of `userName`): `Some(false)` makes every create look the
    /// userName up first; `None` (unknown) trusts the target's 409. A listing
    /// that shows two users with one userName sets `Some(false)` too.
    pub fn set_user_names_unique(&self, unique: Option<bool>) {
        *self
            .inner
            .user_names_unique
            .write()
            .unwrap_or_else(|p| p.into_inner()) = unique;
    }

    /// Whether the target enforces unique `userName`s: `Some(false)` once a
    /// listing showed it does not (see [`Self::set_user_names_unique`]), else
    /// what its schema says (`uniqueness`), else `None` (unknown: the target's
    /// 409 is trusted).
    pub fn user_names_unique(&self) -> Option<bool> {
        let learned = *self
            .inner
            .user_names_unique
            .read()
            .unwrap_or_else(|p| p.into_inner());
        learned.or_else(|| self.schema().and_then(|s| s.user_names_unique()))
    }

    /// Reads `/Schemas` and `/ResourceTypes` and remembers what they say: later
    /// payloads are shaped by it (see [`schema`]). A server that does not serve
    /// them (an error status, a body that is not a schema) gets RFC 7643's
    /// defaults, and the model says why; a refused token or a target that
    /// cannot be reached is an error. Read at the start of every cycle.
    pub async fn read_schema(&self) -> Result<TargetSchema, ScimError> {
        let fetch = |name: &'static str| async move {
            match self.call(Method::GET, self.url(&[name]), &[], None).await {
                Ok(reply) => reply
                    .json()
                    .map_err(|e| Err(format!("/{name} could not be read ({e})"))),
                // Not an answer about the schema: the target cannot be asked.
                Err(e)
                    if e.is_auth()
                        || matches!(e, ScimError::Transport(_) | ScimError::RateLimited { .. }) =>
                {
                    Err(Ok(e))
                }
                Err(e) => Err(Err(format!("/{name} could not be read ({e})"))),
            }
        };
        let model = match fetch("Schemas").await {
            Ok(schemas) => {
                let types = match fetch("ResourceTypes").await {
                    Ok(doc) => Ok(doc),
                    Err(Ok(auth)) => return Err(auth),
                    Err(Err(why)) => Err(why),
                };
                TargetSchema::from_documents(&schemas, types.as_ref().map_err(Clone::clone))
            }
            Err(Ok(auth)) => return Err(auth),
            Err(Err(why)) => TargetSchema::defaults(why),
        };
        if let schema::SchemaOrigin::Defaults { why } = &model.origin {
            tracing::info!(target_url = %self.inner.base, "{why}; RFC 7643 defaults assumed");
        }
        let shape = flavour_shape(model.payload_shape(), self.inner.flavour);
        let rules = TargetRules {
            folded: model.folded(),
            unheld: model.unheld(),
            fixed: shape.immutable.clone(),
        };
        *self
            .inner
            .learned
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Learned {
            required: RequiredPaths {
                user: model.required_user_paths(),
                group: model.required_group_paths(),
            },
            schema: Arc::new(model.clone()),
            shape: Arc::new(shape),
            rules,
        }));
        Ok(model)
    }

    pub(super) fn learned(&self) -> Option<Arc<Learned>> {
        self.inner
            .learned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The schema read last by [`Self::read_schema`], if any.
    pub fn schema(&self) -> Option<Arc<TargetSchema>> {
        self.learned().map(|l| Arc::clone(&l.schema))
    }

    /// How user payloads are shaped for this target: as its schema says,
    /// except that Atlassian always gets `emails.primary`, which it requires.
    pub fn payload_shape(&self) -> Arc<PayloadShape> {
        self.learned().map_or_else(
            || Arc::clone(&self.inner.default_shape),
            |l| Arc::clone(&l.shape),
        )
    }

    /// How idsync compares what this target holds, as its schema says (empty
    /// until the schema is read).
    pub fn rules(&self) -> TargetRules {
        self.learned().map(|l| l.rules.clone()).unwrap_or_default()
    }
}

/// What the target's schema means for this client.
pub(super) struct Learned {
    schema: Arc<TargetSchema>,
    shape: Arc<PayloadShape>,
    rules: TargetRules,
    /// What a create must carry, worked out once (every create checks it).
    pub(super) required: RequiredPaths,
}

/// `shape` as `flavour` needs it: Atlassian always gets `emails.primary`,
/// which it requires, whatever its schema lists.
pub(super) fn flavour_shape(mut shape: PayloadShape, flavour: Flavour) -> PayloadShape {
    if flavour == Flavour::Atlassian {
        shape.email_primary = true;
    }
    shape
}
