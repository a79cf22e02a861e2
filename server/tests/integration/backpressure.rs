//! With a tiny `maxmemory`, tiers 4 and 3 are refused before tier 1, and nothing accepted is
//! missing afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;

use crate::support::{RedisOptions, TestServer, item, new_id};

const BATCH: usize = 40;

#[tokio::test]
async fn lower_tiers_are_refused_first_and_nothing_accepted_is_lost() {
    let server = TestServer::with_redis(
        RedisOptions {
            maxmemory: Some("3mb"),
            ..RedisOptions::default()
        },
        |c| c.backpressure.check_interval = Duration::ZERO,
    )
    .await;
    let token = server.token("acme", "phone-1");
    let payload = vec![b'p'; 512];
    let mut accepted: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    // One counter for every tier: each tier's seqs still increase (gaps are allowed).
    let next_seq = std::cell::Cell::new(1u64);

    // Push one batch of a tier; Ok(ids) when stored, Err(reply) when refused.
    let push_batch = |tier: u8| {
        let server = &server;
        let token = &token;
        let payload = &payload;
        let first = next_seq.get();
        next_seq.set(first + BATCH as u64);
        async move {
            let ids: Vec<String> = (0..BATCH).map(|_| new_id()).collect();
            let items = ids
                .iter()
                .zip(first..)
                .map(|(id, seq)| item(id, seq, tier, "analytics_temp", "events", payload))
                .collect();
            let reply = server.push(token, items).await;
            if reply.status == StatusCode::OK {
                assert_eq!(reply.statuses(), vec!["accepted"; BATCH]);
                Ok(ids)
            } else {
                Err(reply)
            }
        }
    };

    // Fill with each tier in turn, from the least important, until that tier is refused.
    let mut refused_order = Vec::new();
    for tier in [4u8, 3, 2, 1] {
        let mut stored_batches = 0;
        loop {
            assert!(stored_batches < 500, "tier {tier} was never refused");
            match push_batch(tier).await {
                Ok(ids) => {
                    accepted.entry(tier).or_default().extend(ids);
                    stored_batches += 1;
                }
                Err(reply) => {
                    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "backpressure");
                    let wait = reply.retry_after().unwrap();
                    assert!(wait >= 1);
                    refused_order.push(tier);
                    break;
                }
            }
        }
        // Each more important tier still got in after the less important one was refused.
        assert!(stored_batches > 0, "tier {tier} had no headroom left");
        // Every less important tier stays refused.
        for lower in (tier + 1)..=4 {
            push_batch(lower)
                .await
                .expect_err("a lower tier got in after a higher one was refused")
                .assert_error(StatusCode::SERVICE_UNAVAILABLE, "backpressure");
        }
    }
    assert_eq!(refused_order, [4, 3, 2, 1]);

    // Tier 1 was refused by Redis itself (OOM), so the store really is full...
    let mut db11 = server.redis().db(11).await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut db11)
        .await
        .unwrap();
    assert!(info.contains("maxmemory_policy:noeviction"));

    // ...and every accepted item is there, in order, exactly once.
    for (tier, ids) in &accepted {
        assert_eq!(&server.stored_ids("acme", *tier).await, ids, "tier {tier}");
    }
    let total: usize = accepted.values().map(Vec::len).sum();
    assert!(total >= 4 * BATCH);

    let metrics = server
        .call(axum::http::Method::GET, "/metrics", None, None)
        .await;
    let text = String::from_utf8(metrics.bytes.to_vec()).unwrap();
    assert!(
        text.contains("kryonix_backpressured_total{tier=\"4\"}"),
        "{text}"
    );
    assert!(
        text.contains("kryonix_store_errors_total{kind=\"out_of_memory\"}"),
        "{text}"
    );
}
