//! End-to-end tests: the built `idsync` binary against real servers.
//!
//! One integration-test binary (as ripgrep does) with a small harness
//! (`harness.rs`) over what every test binary shares (`tests/support`).
//! Every test starts its own `scim2-server` on a free loopback port and works in its
//! own temporary directory, so tests are independent and run in parallel. The SCIM
//! server comes from `scripts/test-env.sh` (`$IDSYNC_SCIM2_SERVER`, or
//! `.test-env/venv/bin/scim2-server`).
//!
//! This binary does not own: unit tests of the planner, mapping or SCIM client
//! (next to the code), fault injection (429/5xx) or LDAP sources.

mod alerts;
mod assignment;
mod atlassian;
mod audit;
mod bad_input;
mod cli;
mod controls;
mod crash;
mod csv_sync;
mod endpoint;
mod examples;
mod faults;
mod harness;
mod kubernetes;
mod lifecycle;
mod ops;
mod quirks_field;
mod quirks_members;
mod quirks_schema;
mod quirks_truth;
mod report;
mod review;
mod selftest;
mod snapshots;
mod state_durability;
mod state_recovery;
#[path = "../support/mod.rs"]
mod support;
mod trust_hostile;
mod trust_output;
mod trust_plan;
mod trust_removals;

// The tests name the proxy `crate::proxy`.
use support::proxy;
