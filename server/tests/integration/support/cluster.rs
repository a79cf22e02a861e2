//! A real Redis Cluster per test: `deploy/cluster/local-cluster.sh` (the script operators use)
//! starts the nodes on free ports in a temp dir and creates the cluster; drop stops them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tempfile::TempDir;

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    dir: TempDir,
    ports: Vec<u16>,
    tls: bool,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster/local-cluster.sh")
}

/// A port whose cluster-bus port (+10000) is free too, a moment ago.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl LocalCluster {
    /// `primaries` primaries with `replicas` replicas each; retries on other ports when one was
    /// taken meanwhile.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        Self::start_with(primaries, replicas, &[])
    }

    /// A cluster speaking TLS only (certificates from `tls_dir`: ca.pem, server.pem,
    /// server.key) and requiring `password`.
    pub fn start_tls(primaries: usize, tls_dir: &std::path::Path, password: &str) -> Self {
        let mut cluster = Self::start_with(
            primaries,
            0,
            &[
                "--tls-dir".into(),
                tls_dir.display().to_string(),
                "--requirepass".into(),
                password.into(),
            ],
        );
        cluster.tls = true;
        cluster
    }

    fn start_with(primaries: usize, replicas: usize, extra: &[String]) -> Self {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let ports: Vec<u16> = (0..primaries * (1 + replicas))
                .map(|_| free_port())
                .collect();
            let list = ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" ");
            let status = Command::new("bash")
                .arg(script())
                .args(["start", "--dir"])
                .arg(dir.path())
                .args(["--ports", &list, "--replicas", &replicas.to_string()])
                .args(["--node-timeout", "2000"])
                .args(extra)
                .output()
                .unwrap();
            if status.status.success() {
                return Self {
                    dir,
                    ports,
                    tls: false,
                };
            }
            eprintln!(
                "local-cluster start failed, retrying: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        panic!("could not start a local Redis Cluster");
    }

    pub fn seeds(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        self.ports
            .iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .collect()
    }

    /// A cluster connection, to check what the server stored.
    pub async fn connection(&self) -> ClusterConnection {
        ClusterClient::new(self.seeds())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}
