//! HTTPS on the server itself, for deployments without a TLS-terminating load balancer: rustls
//! over the PEM certificate chain and key the settings name (`--tls-cert`, `--tls-key`).
//!
//! Certificates are reloaded in place — on SIGHUP, and when either file's modification time
//! changes (checked every few seconds) — without dropping a connection: handshakes after the
//! reload present the new certificate, connections already open keep theirs. A reload that fails
//! (a key that does not match, a half-written file) is logged and the previous certificate stays
//! in use; the next change is tried again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use tokio::task::JoinHandle;

/// Installs the process's rustls crypto provider (aws-lc-rs) once, before any TLS is set up:
/// rustls cannot pick one by itself when the build enables more than one.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// The certificate chain and private key files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server's TLS settings from `files`, or an error naming them.
pub async fn load(files: &TlsFiles) -> io::Result<RustlsConfig> {
    install_crypto_provider();
    RustlsConfig::from_pem_file(&files.cert, &files.key)
        .await
        .map_err(|e| io::Error::other(describe(files, &e)))
}

fn describe(files: &TlsFiles, error: &io::Error) -> String {
    format!(
        "cannot load the TLS certificate {} with key {}: {error}",
        files.cert.display(),
        files.key.display()
    )
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads `config` from `files` on SIGHUP and whenever a file changes (checked every `every`),
/// until the task is aborted; `reloaded` hears whether each attempt worked.
pub fn keep_reloading(
    config: RustlsConfig,
    files: TlsFiles,
    every: Duration,
    reloaded: impl Fn(bool) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = (modified(&files.cert), modified(&files.key));
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<()>();
            let asked = tokio::select! {
                () = signalled => true,
                () = tokio::time::sleep(every) => false,
            };
            let now = (modified(&files.cert), modified(&files.key));
            if !asked && now == seen {
                continue;
            }
            seen = now;
            match config.reload_from_pem_file(&files.cert, &files.key).await {
                Ok(()) => {
                    reloaded(true);
                    tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    reloaded(false);
                    tracing::error!(
                        "{}; still serving the previous certificate",
                        describe(&files, &e)
                    );
                }
            }
        }
    })
}
