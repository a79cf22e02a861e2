//! Whole-system scenarios of Kryonix Sync (issue 4, "End-to-end tests"): a real `redis-server`,
//! the real server in-process, real agents on temp databases, and — where the network must
//! misbehave — the harness's fault-injecting proxy. One binary, one module per scenario.
//!
//! "Exactly once" is always checked by reading the up streams in Redis directly.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
mod topology;

mod s10_restored_backup;
mod s11_cluster;
mod s12_sentinel;
mod s13_hostile_answers;
mod s14_slow_token;
mod s15_upgrade_gate;
mod s16_watch;
mod s17_revoked_token;
mod s18_server_trust;
mod s19_sentinel_tls;
mod s1_offline_drain;
mod s2_server_killed;
mod s3_device_killed;
mod s4_connection_faults;
mod s5_redis_restart;
mod s6_retry_after;
mod s7_conflicts;
mod s8_pull_once;
mod s9_dead_letters;
