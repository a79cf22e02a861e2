//! Scenario 18: whom the agent trusts. The server serves HTTPS with a certificate from a private
//! CA. An agent given that CA syncs; one given another CA, one pinning a key the chain does not
//! hold, and one trusting only the platform's roots are refused before sending anything — the
//! typed `Untrusted` failure — and keep every item; pinning the CA's key (or the server's) works.

use kryonix_core::TierSet;
use kryonix_core::sync::FailureKind;
use kryonix_core::sync::trust::{ServerTrust, SpkiPin};
use kryonix_e2e::{ServerOptions, TestServer, open_agent};
use kryonix_protocol::{NetworkProfile, Tier};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::support::{World, enqueue, total};

struct Pki {
    ca_pem: Vec<u8>,
    ca_der: Vec<u8>,
    server_der: Vec<u8>,
}

/// A CA and a server certificate for 127.0.0.1 under it, written to `dir` as cert.pem/key.pem.
fn pki(dir: &std::path::Path) -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca.pem().into_bytes(),
        ca_der: ca.der().to_vec(),
        server_der: server.der().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_trusted_server_gets_the_items() {
    let certs = tempfile::tempdir().unwrap();
    let ours = pki(certs.path());
    let other = pki(tempfile::tempdir().unwrap().path());
    let mut world = World::plain().await;
    // The world's server, replaced by one serving HTTPS on the same Redis.
    let mut options = ServerOptions::redis(world.redis.url());
    options.config.tls = Some(kryonix_server::tls::TlsFiles {
        cert: certs.path().join("cert.pem"),
        key: certs.path().join("key.pem"),
    });
    world.server = TestServer::start(options).await.unwrap();
    assert!(world.server.url().starts_with("https://"));

    let untrusted = |e: &kryonix_core::Error| matches!(e, kryonix_core::Error::Transport(t) if matches!(t.kind, FailureKind::Untrusted));
    let attempt = |world: &World, name: &str, trust: ServerTrust| {
        let mut config = world.config(name, &world.server.url());
        config.server_trust = trust;
        let token = world.server.device_token("acme", name).unwrap();
        open_agent(config, token, None).unwrap()
    };

    // Refused: another CA, the platform's roots (the private CA is not among them), a pin of a
    // key the chain does not hold. Nothing sent, everything kept.
    for (name, trust) in [
        (
            "other-ca",
            ServerTrust {
                ca_pem: Some(other.ca_pem.clone()),
                pins: vec![],
            },
        ),
        ("platform-roots", ServerTrust::default()),
        (
            "wrong-pin",
            ServerTrust {
                ca_pem: Some(ours.ca_pem.clone()),
                pins: vec![SpkiPin::of_certificate(&other.ca_der).unwrap()],
            },
        ),
    ] {
        let agent = attempt(&world, name, trust);
        let queued = enqueue(&agent, 20, &[Tier::Critical], name);
        agent.set_network(NetworkProfile::WIFI).unwrap();
        let refused = agent.sync_now(TierSet::ALL).await.unwrap_err();
        assert!(untrusted(&refused), "{name}: {refused:?}");
        assert!(!agent.status().unauthorized);
        assert!(
            agent
                .status()
                .last_error
                .unwrap_or_default()
                .contains("certificate"),
            "{name}"
        );
        assert_eq!(
            agent.outbox().stats().unwrap().depth(),
            total(&queued),
            "{name}"
        );
        agent.close().await.unwrap();
    }
    assert_eq!(world.stored_total().await, 0);

    // Trusted: the private CA alone, or with the CA's key pinned, or the server's.
    let mut expected = crate::support::Expected::new();
    for (name, pins) in [
        ("our-ca", vec![]),
        (
            "ca-pin",
            vec![SpkiPin::of_certificate(&ours.ca_der).unwrap()],
        ),
        (
            "server-pin",
            vec![
                SpkiPin::of_certificate(&other.ca_der).unwrap(),
                SpkiPin::of_certificate(&ours.server_der).unwrap(),
            ],
        ),
    ] {
        let agent = attempt(
            &world,
            name,
            ServerTrust {
                ca_pem: Some(ours.ca_pem.clone()),
                pins,
            },
        );
        for (tier, ids) in enqueue(&agent, 20, &[Tier::Critical], name) {
            expected.entry(tier).or_default().extend(ids);
        }
        agent.set_network(NetworkProfile::WIFI).unwrap();
        let report = agent.sync_now(TierSet::ALL).await.unwrap();
        assert_eq!(report.remaining, 0, "{name}: {report:?}");
        agent.close().await.unwrap();
    }
    world.assert_exactly_once(&expected).await;
}
