//! The broker's read-only HTTP API: health, Prometheus metrics and the chain head.
//! (The projector's query endpoints join it when the projector is embedded.)

use crate::log::{LogStore, SledLog};
use crate::metrics::Metrics;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    log: Arc<SledLog>,
    metrics: Arc<Metrics>,
}

/// A running HTTP server on its own runtime.
pub struct HttpServer {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The routes, separate from the listener so that tests can call them directly.
fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .route(
            "/v1/head",
            get(|State(s): State<AppState>| async move {
                let head = s.log.head();
                Json(serde_json::json!({"seq": head.seq, "hash": hex::encode(head.hash)}))
            }),
        )
        .with_state(state)
}

impl HttpServer {
    /// Binds `addr` and serves until [`HttpServer::shutdown`].
    pub fn start(
        addr: SocketAddr,
        log: Arc<SledLog>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pairbus-http")
            .enable_all()
            .build()?;
        // Bound here (std) so that errors surface now and this works from inside another runtime.
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(AppState { log, metrics });
        runtime.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
        tracing::info!(%addr, "HTTP API listening");
        Ok(HttpServer {
            addr,
            runtime,
            stop: Some(stop),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not `shutdown_timeout`: that would block, and this may run inside another runtime.
        self.runtime.shutdown_background();
    }
}
