//! Integration tests of `kryonix-server`: one binary, one module per area.
//!
//! Every Redis-backed test spawns its own `redis-server` (see `support::redis_server`) and drives
//! the real router; `contract` runs the same scenarios against Redis and the embedded store.

mod support;

mod backpressure;
mod isolation;
mod malformed;
mod push;
mod startup;
