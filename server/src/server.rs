//! Serving: accept connections on a bound listener until a shutdown future resolves, then let
//! in-flight requests finish.
//!
//! The caller binds the listener, so tests bind port 0 and read the address back, and a
//! supervisor could hand over a socket. Graceful shutdown stops accepting, lets every request in
//! flight (a push half-way through its Redis script included) complete and answer, and closes
//! idle keep-alive connections. The request timeout layer bounds how long that can take.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{AppState, app};
use crate::tls;

/// How long a graceful shutdown over HTTPS waits for open connections to finish.
const HTTPS_DRAIN: Duration = Duration::from_secs(30);

/// Serves the API on `listener` until `shutdown` resolves and in-flight requests are done.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let https = state.config.tls.clone();
    let listening = |scheme: &str| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, scheme, store = state.store.kind(), "kryonix-server listening");
        }
    };
    match https {
        None => {
            listening("http");
            axum::serve(listener, app(state))
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        Some(files) => {
            let config = tls::load(&files).await?;
            listening("https");
            let counted = state.clone();
            let reloader = tls::keep_reloading(
                config.clone(),
                files,
                state.config.tls_reload_every,
                move |ok| counted.metrics.tls_reloaded(ok),
            );
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(HTTPS_DRAIN));
            });
            let served = axum_server::from_tcp_rustls(listener.into_std()?, config)
                .handle(handle)
                .serve(app(state).into_make_service())
                .await;
            reloader.abort();
            served?;
        }
    }
    tracing::info!("kryonix-server stopped");
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM (what systemd and container runtimes send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
