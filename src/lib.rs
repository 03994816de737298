//! idsync: keeps a SCIM 2.0 directory (Atlassian Cloud first) in step with a
//! company directory. The pipeline, one module per stage:
//! `source` → `mapping` → `plan` (pure, with `plan::guard`) → `apply` → `scim`,
//! with `state` as the memory between runs and `report` for output.

pub mod apply;
pub mod cli;
pub mod config;
pub mod mapping;
pub mod model;
pub mod plan;
pub mod quarantine;
pub mod report;
pub mod scim;
pub mod source;
pub mod state;
