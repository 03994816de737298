//! Months of running, compressed into minutes: the built `idsync` against
//! real servers over many cycles, as an operator leaves it running.
//!
//! - `daemon`: `idsync daemon` on a 1-second interval for many cycles, its
//!   CSV source churned between cycles, its SCIM target behind the fault
//!   proxy; memory, threads, open file descriptors and the state DB sampled
//!   as it runs; the target compared with the source at the end.
//! - `kills`: `idsync sync` killed with SIGKILL at random moments of CSV,
//!   LDAP (a real slapd) and Entra (the Graph stand-in) cycles, each kill
//!   resumed by the next run; at the end the target is exactly the source's
//!   and holds nothing twice.
//!
//! CI runs the short forms; `scripts/soak.sh` the long ones (`#[ignore]`d
//! here) and writes their figures to a report. Every server listens on
//! 127.0.0.1 and is stopped by PID on drop; every wait is bounded.

mod churn;
mod daemon;
#[path = "../entra/graph_server.rs"]
mod graph_server;
// Shared with the e2e and LDAP binaries: what they re-export for their own
// tests goes partly unused here.
#[allow(unused_imports)]
#[path = "../e2e/harness.rs"]
mod harness;
mod kill_entra;
mod kill_ldap;
mod kills;
mod probe;
#[allow(unused_imports)]
#[path = "../ldap/harness.rs"]
mod slapd;
#[path = "../support/mod.rs"]
mod support;
