//! Push invariants over generated batches (embedded store, so each case is cheap): one result per
//! item in request order; an item is stored exactly when it is valid and its seq is above both
//! the last stored seq of its tier and the previous valid item of its tier in the batch; stored
//! items keep their order; a replay stores nothing.

use proptest::prelude::*;
use serde_json::Value;

use crate::support::{Backend, TestServer, item};

#[derive(Debug, Clone)]
struct Gen {
    id: String,
    seq: u64,
    tier: u8,
    namespace: &'static str,
    key: String,
}

impl Gen {
    fn is_valid(&self) -> bool {
        (1..=4).contains(&self.tier)
            && self.namespace != "bogus"
            && !self.key.is_empty()
            && self.key.len() <= 200
            && !self.id.contains(':')
    }
}

fn gen_item() -> impl Strategy<Value = Gen> {
    (
        // A small id space, so batches repeat ids; ':' makes an id invalid.
        prop_oneof![
            (0u8..12).prop_map(|n| format!("id-{n}")),
            Just("bad:id".to_owned())
        ],
        // A small seq space, so batches repeat, reorder and replay seqs, and send 0.
        0u64..10,
        0u8..6,
        prop_oneof![Just("user_cache"), Just("api_cache"), Just("bogus")],
        prop_oneof!["[a-z:]{1,20}", Just(String::new()), Just("k".repeat(240))],
    )
        .prop_map(|(id, seq, tier, namespace, key)| Gen {
            id,
            seq,
            tier,
            namespace,
            key,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn push_results_match_the_batch(batches in prop::collection::vec(prop::collection::vec(gen_item(), 0..12), 1..4)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let server = TestServer::start(Backend::Embedded, |_| {}).await;
            let token = server.token("acme", "phone-1");
            // The model: the last stored seq per tier, and the stored ids per tier.
            let mut last = [0u64; 5];
            let mut expected: [Vec<String>; 5] = Default::default();
            for batch in &batches {
                let json: Vec<Value> = batch
                    .iter()
                    .map(|g| item(&g.id, g.seq, g.tier, g.namespace, &g.key, b"p"))
                    .collect();
                let reply = server.push(&token, json.clone()).await;
                prop_assert_eq!(reply.status, axum::http::StatusCode::OK);
                let v = reply.value();
                let results = v["results"].as_array().unwrap();
                prop_assert_eq!(results.len(), batch.len());
                let mut previous = [0u64; 5];
                for (g, r) in batch.iter().zip(results) {
                    prop_assert_eq!(r["id"].as_str().unwrap(), g.id.as_str());
                    let status = r["status"].as_str().unwrap();
                    let tier = usize::from(g.tier);
                    if !g.is_valid() {
                        prop_assert_eq!(status, "rejected");
                    } else if g.seq <= previous[tier] {
                        // seq 0 included: `previous` starts at 0.
                        prop_assert_eq!(status, "rejected");
                        prop_assert_eq!(r["code"].as_str().unwrap(), "invalid_seq");
                    } else {
                        previous[tier] = g.seq;
                        if g.seq > last[tier] {
                            prop_assert_eq!(status, "accepted");
                            last[tier] = g.seq;
                            expected[tier].push(g.id.clone());
                        } else {
                            prop_assert_eq!(status, "duplicate");
                        }
                    }
                }
                let answered: [u64; 4] = reply.last_seq();
                prop_assert_eq!(&answered[..], &last[1..]);
                // A replay of the same batch stores nothing new.
                let replay = server.push(&token, json).await.value();
                for r in replay["results"].as_array().unwrap() {
                    prop_assert_ne!(r["status"].as_str().unwrap(), "accepted");
                }
            }
            for tier in 1..=4u8 {
                prop_assert_eq!(&server.stored_ids("acme", tier).await, &expected[usize::from(tier)]);
            }
            Ok(())
        })?;
    }
}

fn valid_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "producer": "0193a1f0-7c2e-7b61-9d1a-3f4e5a6b7c8d",
        "items": [item("id-1", 1, 1, "user_cache", "k:1", b"payload"), item("id-2", 7, 4, "api_cache", "k:2", b"")]
    }))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever bytes arrive as a push body (a valid body cut short or with bytes overwritten),
    /// the answer is 200, 400 or 413 in the documented shape: never a 5xx, never a panic.
    #[test]
    fn mangled_push_bodies_get_documented_answers(
        cut in 0usize..400,
        edits in prop::collection::vec((0usize..400, any::<u8>()), 0..6),
        gzip_header in any::<bool>(),
    ) {
        let mut body = valid_body();
        for (at, byte) in edits {
            if let Some(slot) = body.get_mut(at) {
                *slot = byte;
            }
        }
        body.truncate(cut.max(1).min(body.len()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let server = TestServer::start(Backend::Embedded, |_| {}).await;
            let token = server.token("acme", "phone-1");
            let mut request = axum::http::Request::builder()
                .method("POST")
                .uri("/v1/sync/push")
                .header("authorization", format!("Bearer {token}"));
            if gzip_header {
                request = request.header("content-encoding", "gzip");
            }
            let reply = server
                .send(request.body(axum::body::Body::from(body)).unwrap())
                .await;
            let status = reply.status.as_u16();
            prop_assert!([200, 400, 413].contains(&status), "status {}", status);
            let v = reply.value();
            if status == 200 {
                prop_assert!(v["results"].is_array());
            } else {
                prop_assert!(v["error"]["code"].is_string());
            }
            Ok(())
        })?;
    }
}
