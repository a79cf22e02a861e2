//! Scenario 13: answers a device must not trust blindly. A backend stores a gzip "bomb" in the
//! L2 cache — a quarter of a megabyte that inflates to a quarter of a gigabyte; the device's
//! read-through refuses it with a typed error instead of allocating the gigabytes, and caches
//! nothing.

use std::io::Write;

use base64::Engine as _;
use kryonix_core::{CacheError, Error};
use kryonix_protocol::codec::CodecError;
use kryonix_protocol::{Namespace, NetworkProfile};

use crate::support::{TENANT, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_from_the_l2_cache_is_refused() {
    let world = World::plain().await;
    // 200 MiB of zeros compress to ~200 KiB: under the server's value limit (256 KiB).
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..200 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 256 * 1024, "{} bytes", bomb.len());
    let token = world.server.service_token(TENANT).unwrap();
    let put = reqwest::Client::new()
        .put(format!("{}/v1/cache/api_cache/bomb", world.server.url()))
        .bearer_auth(token)
        .header("kryonix-protocol", "2")
        .json(&serde_json::json!({
            "value": base64::engine::general_purpose::STANDARD.encode(&bomb),
            "encoding": "gzip",
            "ttl_secs": 600,
        }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());

    let mut config = world.config("phone-13", &world.server.url());
    config.profile.network = NetworkProfile::WIFI;
    let agent = world.agent("phone-13", config, None);
    let err = agent
        .get_or_fetch(Namespace::ApiCache, "bomb")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Cache(CacheError::Codec(CodecError::TooLarge { .. }))
        ),
        "{err}"
    );
    let key = agent.key(Namespace::ApiCache, "bomb").unwrap();
    assert!(!agent.cache().contains(&key).unwrap(), "nothing was cached");
    agent.close().await.unwrap();
}
