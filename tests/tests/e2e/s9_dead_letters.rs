//! Scenario 9: items the server rejects for good (a namespace the tenant may not use, a payload
//! over the server's limit) go to the dead-letter lane — kept, visible, reported to the
//! observer — while every other item before and after them is delivered exactly once.

use kryonix_core::TierSet;
use kryonix_e2e::RecordingObserver;
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, NetworkProfile, Tier};
use kryonix_server::config::TenantPolicy;

use crate::support::{Expected, TENANT, World, enqueue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_items_are_dead_lettered_and_the_rest_flows() {
    let mut world = World::new(Default::default(), |config| {
        config.max_value_bytes = 4096;
        config.tenants.insert(
            TENANT.to_owned(),
            TenantPolicy {
                allowed_namespaces: Some(vec![Namespace::UserCache, Namespace::ApiCache]),
                rate_per_sec: 0,
                device_rate_per_sec: 0,
                ..TenantPolicy::default()
            },
        );
    })
    .await;
    let observer = RecordingObserver::new();
    let agent = world.agent(
        "phone-9",
        world.config("phone-9", &world.server.url()),
        Some(observer.clone()),
    );

    let mut expected = Expected::new();
    let mut rejected = Vec::new();
    for (round, bad) in [(0, "forbidden"), (1, "too_large"), (2, "forbidden")] {
        let tag = format!("s9r{round}");
        for (tier, ids) in enqueue(&agent, 100, &[Tier::Critical, Tier::Preferences], &tag) {
            expected.entry(tier).or_default().extend(ids);
        }
        let id = match bad {
            "forbidden" => agent
                .enqueue(Namespace::Sessions, "s", Op::Put, b"x", Tier::Critical)
                .unwrap(),
            _ => agent
                .enqueue(
                    Namespace::UserCache,
                    "big",
                    Op::Put,
                    &vec![7u8; 8000],
                    Tier::Preferences,
                )
                .unwrap(),
        };
        rejected.push((id, bad));
    }
    for (tier, ids) in enqueue(&agent, 100, &[Tier::Critical, Tier::Preferences], "s9tail") {
        expected.entry(tier).or_default().extend(ids);
    }

    agent.set_network(NetworkProfile::WIFI).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0, "{report:?}");
    world.assert_exactly_once(&expected).await;

    // The lane holds exactly the rejected items, with the server's codes.
    let dead = agent.dead_letters().unwrap();
    // Oldest first, as `dead_letters` documents.
    let lane: Vec<_> = dead.iter().map(|d| (d.item.id, d.code.as_str())).collect();
    assert_eq!(lane, rejected);
    // The observer hears of them as the server answers, tier 1 first: compare as sets.
    rejected.sort();
    let mut told: Vec<_> = observer
        .dead_letters()
        .into_iter()
        .map(|d| (d.id, d.code))
        .collect();
    told.sort();
    assert_eq!(
        told,
        rejected
            .iter()
            .map(|(id, code)| (*id, (*code).to_owned()))
            .collect::<Vec<_>>()
    );
    let status = agent.status();
    assert_eq!(status.tiers[&Tier::Critical].dead_letters, 2);
    assert_eq!(status.tiers[&Tier::Preferences].dead_letters, 1);

    // The queue keeps flowing after dead letters: new items go through, the lane stays.
    for (tier, ids) in enqueue(&agent, 20, &[Tier::Critical], "s9after") {
        expected.entry(tier).or_default().extend(ids);
    }
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0);
    world.assert_exactly_once(&expected).await;
    assert_eq!(agent.dead_letters().unwrap().len(), 3);

    // A retried dead letter goes out under a new number: the server judges it again (and
    // refuses it again) instead of taking it for a duplicate of the numbers stored since, which
    // would have made the device drop it silently.
    let (retried, code) = rejected[0];
    agent.retry_dead_letter(retried).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.remaining, 0);
    let dead = agent.dead_letters().unwrap();
    assert_eq!(dead.len(), 3, "back in the lane, not dropped");
    assert!(dead.iter().any(|d| d.item.id == retried && d.code == code));
    world.assert_exactly_once(&expected).await;

    // The hello told the device the server's value limit (4 KiB here): from now on, and in the
    // next session, a payload the server would dead-letter is refused at enqueue.
    let too_large = |agent: &kryonix_core::Agent| {
        agent.enqueue(
            Namespace::UserCache,
            "big-again",
            Op::Put,
            &vec![7u8; 5000],
            Tier::Critical,
        )
    };
    assert!(
        matches!(
            too_large(&agent),
            Err(kryonix_core::Error::Outbox(
                kryonix_core::OutboxError::PayloadTooLarge { max: 4096, .. }
            ))
        ),
        "accepted a payload the server refuses"
    );
    agent.close().await.unwrap();
    drop(agent);
    let again = world.agent(
        "phone-9",
        world.config("phone-9", &world.server.url()),
        None,
    );
    assert!(matches!(
        too_large(&again),
        Err(kryonix_core::Error::Outbox(
            kryonix_core::OutboxError::PayloadTooLarge { max: 4096, .. }
        ))
    ));
    again
        .enqueue(
            Namespace::UserCache,
            "fits",
            Op::Put,
            &[1u8; 4096],
            Tier::Critical,
        )
        .unwrap();
    again.close().await.unwrap();
}
