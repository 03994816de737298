//! What the integration-test binaries (`tests/e2e`, `tests/ldap`, `tests/ad`,
//! `tests/entra`, `tests/soak`) share, included by each with
//! `#[path = "../support/mod.rs"] mod support;`:
//!
//! - `process`: child processes killed by PID on drop, bounded runs with their
//!   output captured and checked for secrets, signals, free ports, bounded waits;
//! - `scim`: a real `scim2-server` on loopback and what it holds, plans and run
//!   summaries;
//! - `workdir`: a throw-away directory with `config.yaml` and `state/` in which
//!   the built `idsync` runs;
//! - `compare`: the pieces of comparing a target with a directory;
//! - `ldap`: the OpenLDAP client tools and their LDIF;
//! - `proxy`: a fault-injecting HTTP proxy in front of a SCIM server;
//! - `netns`, `relay`: faults below HTTP: a network namespace of a test's own
//!   joined by veth, iptables rules in it, and a delaying TCP relay.
//!
//! Safety rules every test inherits: servers listen on 127.0.0.1 only (or on
//! the private veth address of a network namespace of the test's own) and are
//! killed by PID on drop (also on panic); every wait is bounded; no secret may
//! appear in anything `idsync` prints (checked on every run).

// Each binary uses a different part of this module, and an item one of them
// leaves unused would warn there; this allow covers this module alone.
#![allow(dead_code)]

pub mod compare;
pub mod ldap;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod relay;
pub mod scim;
pub mod workdir;
