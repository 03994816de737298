//! Faults below HTTP: the SCIM server, and separately the LDAP server
//! (slapd), each in a network namespace of the test's own, joined to the root
//! namespace by a veth pair with private addresses; idsync runs in the root
//! namespace against the server's veth address. The link is then broken at
//! the TCP/IP level: delay with jitter and reordering (`netem` where the
//! kernel has it, a delaying relay in the namespace where not), segments
//! lost at random (`iptables -m statistic … -j DROP`: real drops, real
//! retransmits), connections reset in the middle of an answer (`REJECT
//! --reject-with tcp-reset`), a peer that goes silent mid-run (`DROP`: no
//! answer, no reset).
//!
//! Each test needs root and `ip netns`; without them it is skipped with a
//! message, except under `CI`, where that is a failure
//! (`support::netns::available`). Sizes are small (tens to a couple of
//! hundred users); `scripts/netfaults-figures.sh` runs the 2,000-user figures
//! of the README.

mod figures;
// The end-to-end tests' harness, whole: this binary uses part of what it
// re-exports.
#[allow(unused_imports)]
#[path = "../e2e/harness.rs"]
mod harness;
mod ldap;
mod pace;
mod rig;
mod scim;
#[path = "../support/mod.rs"]
mod support;
