//! Integration tests of `kryonix-server`: one binary, one module per area.
//!
//! Every Redis-backed test spawns its own `redis-server` (see `support::redis_server`) and drives
//! the real router; `contract` runs the same scenarios against Redis and the embedded store.

// Test code: a failed unwrap is a failed test. (clippy.toml allows these inside #[test]
// functions only; the shared harness needs the same allowance.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod acl;
mod backpressure;
mod contract;
mod http;
mod isolation;
mod malformed;
mod policy_groups;
mod properties;
mod push;
mod revocation;
mod startup;
mod tls;
