//! idsync: keeps a SCIM 2.0 directory (Atlassian Cloud first) in step with a
//! company directory. The pipeline, one module per stage:
//!
//! `source` (read) → `mapping` (desired snapshot) → `plan` (pure: one
//! `PlanningInput` in, a `Plan` out; guards) → `apply` (executor over a
//! `Target`) → `scim` (the SCIM client, a `Target`), with `state` as the memory
//! between runs, `model` as the vocabulary every stage speaks, `sync` running
//! one cycle end to end, `report` rendering, `config` compiling the file and
//! `cli` dispatching. `secret` (the rule every credential file is held to) and
//! `yaml` (where a YAML mistake is) are leaves any stage may use.

pub mod apply;
pub mod cli;
pub mod config;
mod endpoint;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod mapping;
pub mod model;
mod pace;
pub mod plan;
mod report;
mod retry;
pub mod scim;
mod secret;
pub mod source;
pub mod state;
mod sync;
mod tls;
mod yaml;
