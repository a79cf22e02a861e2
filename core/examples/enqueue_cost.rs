//! Where the time of one `Agent::enqueue` goes: the outbox alone, then the agent (which also
//! wakes the sync task), plaintext and encrypted. `cargo run --release -p kryonix-core
//! --features encryption --example enqueue_cost`.

use std::sync::Arc;
use std::time::Instant;

use kryonix_core::sync::StaticToken;
use kryonix_core::{Agent, AgentConfig, EncryptionKey};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, TenantId, Tier};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for encrypted in [false, true] {
        let dir = tempfile::tempdir()?;
        let mut config = AgentConfig::new(
            dir.path().join("a.db"),
            "http://127.0.0.1:9",
            TenantId::new("acme")?,
        );
        if encrypted {
            config.encryption_key = Some(EncryptionKey::try_from(&[7u8; 32][..])?);
        }
        let _guard = runtime.enter();
        let agent = Agent::open(
            config,
            Arc::new(StaticToken("t".into())),
            None,
            runtime.handle(),
        )?;
        let n = 2000;
        let started = Instant::now();
        for i in 0..n {
            agent.outbox().enqueue(
                Namespace::UserCache,
                &format!("o{i}"),
                Op::Put,
                b"v",
                Tier::Background,
            )?;
        }
        let outbox = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        let started = Instant::now();
        for i in 0..n {
            agent.enqueue(
                Namespace::UserCache,
                &format!("a{i}"),
                Op::Put,
                b"v",
                Tier::Background,
            )?;
        }
        let whole = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!(
            "encrypted={encrypted}: Outbox::enqueue {outbox:.1} µs, Agent::enqueue {whole:.1} µs per call"
        );
        runtime.block_on(agent.close())?;
    }
    Ok(())
}
