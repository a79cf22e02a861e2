//! Scenario 3: the device process is SIGKILLed in the middle of a sync and started again.
//!
//! The items are enqueued (and the agent closed) in this process. A child process — this test
//! binary re-executed to run [`child_device`] only — opens the same database and syncs through
//! the proxy. The proxy withholds the answer to the child's fourth push, so at the moment of
//! the kill the server has stored a batch that the child's outbox still holds in flight. The
//! parent then reopens the database: the interrupted batch is pending again, goes out again
//! (answered `duplicate`), and every item is in Redis exactly once.

use std::process::{Command, Stdio};
use std::time::Duration;

use kryonix_core::TierSet;
use kryonix_e2e::{Fault, Proxy, Rule, agent_config, open_agent, wait_for};
use kryonix_protocol::{NetworkProfile, Tier};

use crate::support::{TENANT, World, enqueue, total};

const CHILD_DB: &str = "KRYONIX_E2E_CHILD_DB";
const CHILD_URL: &str = "KRYONIX_E2E_CHILD_URL";
const CHILD_TOKEN: &str = "KRYONIX_E2E_CHILD_TOKEN";

/// The device process. A no-op unless the parent scenario started it with its variables set.
#[test]
fn child_device() {
    let (Ok(db), Ok(url), Ok(token)) = (
        std::env::var(CHILD_DB),
        std::env::var(CHILD_URL),
        std::env::var(CHILD_TOKEN),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut config = agent_config(std::path::Path::new(&db), &url, TENANT).unwrap();
        config.profile.network = NetworkProfile::WIFI;
        let agent = open_agent(config, token, None).unwrap();
        let _ = agent.sync_now(TierSet::ALL).await;
        // Wait to be killed; never exit on our own.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_killed_mid_sync_and_restarted_loses_and_duplicates_nothing() {
    let mut world = World::plain().await;
    let proxy = Proxy::start(world.server.addr()).await.unwrap();
    let db = world.db("phone-3.db");

    let expected = {
        let agent = world.agent("phone-3", world.config("phone-3", &proxy.url()), None);
        let expected = enqueue(&agent, 2000, &Tier::ALL, "s3");
        agent.close().await.unwrap();
        expected
    };

    proxy.set_rule(
        Rule::new(Fault::StallAnswer)
            .only("POST /v1/sync/push")
            .skip(3)
            .times(1),
    );
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "s3_device_killed::child_device",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &db)
        .env(CHILD_URL, proxy.url())
        .env(
            CHILD_TOKEN,
            world.server.device_token(TENANT, "phone-3").unwrap(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let waited = wait_for(
        Duration::from_secs(60),
        "the child's fourth push answered",
        || async { (proxy.fired() >= 1).then_some(()) },
    )
    .await;
    // SIGKILL: no destructor, no close, no flush.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    waited.unwrap();
    assert!(!status.success(), "the child ended by itself: {status}");
    assert_eq!(
        world.stored_total().await,
        400,
        "four batches stored when the device died"
    );

    // The device starts again on the same file.
    let mut config = world.config("phone-3", &proxy.url());
    config.db_path = db;
    let agent = world.agent("phone-3", config, None);
    let stats = agent.outbox().stats().unwrap();
    assert_eq!(
        stats.depth(),
        total(&expected) - 300,
        "the batch in flight at the kill is queued again"
    );
    assert_eq!(stats.tiers.values().map(|t| t.in_flight).sum::<u64>(), 0);

    agent.set_network(NetworkProfile::WIFI).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");
    world.assert_exactly_once(&expected).await;
    agent.close().await.unwrap();
}
