//! Serving: accept connections on a bound listener until a shutdown future resolves, then let
//! in-flight requests finish.
//!
//! The caller binds the listener, so tests bind port 0 and read the address back, and a
//! supervisor could hand over a socket. Graceful shutdown stops accepting, lets every request in
//! flight (a push half-way through its Redis script included) complete and answer, and closes
//! idle keep-alive connections. The request timeout layer bounds how long that can take.

use std::future::Future;

use tokio::net::TcpListener;

use crate::api::{AppState, app};

/// Serves the API on `listener` until `shutdown` resolves and in-flight requests are done.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, store = state.store.kind(), "kryonix-server listening");
    }
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
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
