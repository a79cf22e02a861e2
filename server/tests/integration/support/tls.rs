//! TLS for the tests: certificates made here (rcgen) — a CA, a server certificate for
//! 127.0.0.1, an expired one, a client certificate, and an unrelated CA — and a real
//! `redis-server` that speaks TLS only and requires a password, as a managed Redis does.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use tempfile::TempDir;

/// PEM files in a temp dir.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

/// One certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        let ca = Self::ca("Kryonix test CA");
        write("ca.pem", ca.pem());
        let other = Self::ca("Some other CA");
        write("other-ca.pem", other.pem());
        let issue = |name: &str, expired: bool, client: bool| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            if expired {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 1, 1);
            }
            if client {
                params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            }
            let cert = params.signed_by(&key, &ca).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        issue("server", false, false);
        issue("expired", true, false);
        issue("client", false, true);
        Self { dir }
    }

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// The directory holding ca.pem, server.pem and server.key (what `local-cluster.sh
    /// --tls-dir` reads).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    pub fn files(&self, name: &str) -> CertFiles {
        CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        }
    }
}

/// A `redis-server` with `--port 0 --tls-port N` and `requirepass`, stopped on drop.
#[derive(Debug)]
pub struct TlsRedis {
    child: Child,
    pub port: u16,
    /// Holds the log and the data until the server is dropped.
    _dir: TempDir,
}

impl TlsRedis {
    /// Serves `server` (cert and key); with `require_client_cert`, only clients presenting a
    /// certificate of the test CA get in (mutual TLS).
    pub fn start(pki: &Pki, server: &CertFiles, password: &str, require_client_cert: bool) -> Self {
        for _ in 0..5 {
            if let Some(redis) = Self::try_start(pki, server, password, require_client_cert) {
                return redis;
            }
        }
        panic!("could not start redis-server with TLS");
    }

    fn try_start(
        pki: &Pki,
        server: &CertFiles,
        password: &str,
        require_client_cert: bool,
    ) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("redis.log");
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--maxmemory-policy", "noeviction", "--databases", "16"])
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&server.cert)
            .arg("--tls-key-file")
            .arg(&server.key)
            .arg("--tls-ca-cert-file")
            .arg(pki.ca_file())
            .arg("--tls-auth-clients")
            .arg(if require_client_cert { "yes" } else { "no" })
            .arg("--requirepass")
            .arg(password)
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None; // most likely the port was taken
            }
            let ready = std::fs::read_to_string(&log)
                .is_ok_and(|text| text.contains("Ready to accept connections"));
            if ready {
                return Some(Self {
                    child,
                    port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
