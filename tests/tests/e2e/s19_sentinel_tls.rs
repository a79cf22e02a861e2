//! Scenario 19: Sentinel over TLS with a password. The primary, its replica and the three
//! Sentinels speak TLS only and the data nodes require a password, as a managed Sentinel setup
//! does; the server finds the primary through the Sentinels over TLS, authenticates, and stores a
//! device's uploads exactly once.

use kryonix_core::TierSet;
use kryonix_e2e::{RedisSentinels, SentinelOptions, ServerOptions, TestServer, open_agent};
use kryonix_protocol::{NetworkProfile, Tier};
use kryonix_server::store::redis::{RedisAccess, Secret, TlsMaterial};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const PASSWORD: &str = "sentinel-data-password-2b7f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_follows_sentinels_over_tls_with_a_password() {
    let certs = tempfile::tempdir().unwrap();
    // Named subjects: OpenSSL (redis-server, redis-cli) builds no chain through an empty one.
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "s19 CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let server_cert = leaf.signed_by(&key, &ca).unwrap();
    std::fs::write(certs.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(certs.path().join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(certs.path().join("server.key"), key.serialize_pem()).unwrap();

    let sentinels = RedisSentinels::start(SentinelOptions {
        tls_dir: Some(certs.path().to_owned()),
        password: Some(PASSWORD.into()),
        ..SentinelOptions::default()
    })
    .await
    .unwrap();
    assert!(sentinels.sentinel_urls()[0].starts_with("rediss://"));
    let mut options = ServerOptions::sentinel(sentinels.sentinel_urls(), sentinels.master_name());
    // The primary's settings (TLS); its address comes from the Sentinels.
    options.config.redis_url = Some("rediss://127.0.0.1:1".into());
    options.config.redis_access = RedisAccess {
        username: None,
        password: Some(Secret::new(PASSWORD)),
        tls: TlsMaterial {
            ca: Some(ca.pem().into_bytes()),
            client: None,
        },
    };
    let server = TestServer::start(options).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config =
        kryonix_e2e::agent_config(&dir.path().join("phone.db"), &server.url(), "acme").unwrap();
    let token = server.device_token("acme", "phone-19").unwrap();
    let agent = open_agent(config, token, None).unwrap();
    for i in 0..50 {
        agent
            .enqueue(
                kryonix_protocol::Namespace::UserCache,
                &format!("k{i}"),
                kryonix_protocol::wire::Op::Put,
                b"v",
                Tier::Critical,
            )
            .unwrap();
    }
    agent.set_network(NetworkProfile::WIFI).unwrap();
    let report = agent.sync_now(TierSet::ALL).await.unwrap();
    assert_eq!(report.items_sent, 50, "{report:?}");
    assert_eq!(report.remaining, 0);
    agent.close().await.unwrap();
}

/// ACLs are per node: on a Sentinel deployment `acl apply` reaches the primary the Sentinels
/// name and its replica, and `acl check` finds the worker user right on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_reach_the_primary_and_its_replica() {
    use kryonix_server::store::redis::{Topology, acl};

    let sentinels = RedisSentinels::start(SentinelOptions::default())
        .await
        .unwrap();
    let topology = Topology::Sentinel {
        sentinels: sentinels.sentinel_urls(),
        master: sentinels.master_name().to_owned(),
        node_url: None,
    };
    let access = RedisAccess::default();
    let nodes = acl::nodes(&topology, &access).await.unwrap();
    assert_eq!(nodes.len(), 2, "the primary and its replica: {nodes:?}");
    let tenant = kryonix_protocol::TenantId::new("acme").unwrap();
    let done = acl::apply(&access, &nodes, &[acl::worker_user(&tenant, "pw")])
        .await
        .unwrap();
    assert_eq!(done.len(), 2);
    let failures = acl::check(
        &access,
        &nodes,
        "tenant_acme_worker",
        &acl::worker_expectations(&tenant),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
}
