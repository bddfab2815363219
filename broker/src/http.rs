//! The broker's read-only HTTP API.
//!
//! - `GET /healthz` (no auth): `ok`;
//! - `GET /metrics` (no auth, Prometheus text): counters and histograms of [`Metrics`];
//! - `GET /v1/head`: the chain head `{"seq", "hash"}`;
//! - `GET /v1/refusals?limit=N`: the newest refused events from the journal (default 100).
//!
//! The embedded projector's views, served by [`pairbus_projector::api`] (the same code, routes
//! and JSON as `pairbus-projector serve`): `/v1/devices`, `/v1/devices/<id>`,
//! `/v1/devices/<id>/history`, `/v1/graph`, `/v1/alerts` (the fold's alerts merged with the
//! newest refusals of the journal, see [`pairbus_projector::refusals`]), `/v1/stats`,
//! `/v1/replay`; parameters in that module's documentation and `projector/README.md`.
//!
//! Errors are JSON `{"error": <message>, "code": <code>}`: 400 `bad_request` (malformed, unknown
//! or repeated parameter), 401 `unauthorized`, 404 `unknown_device` (or `not_found`: no such
//! endpoint), 503 `busy` (a replay is running), 500 `internal`.
//!
//! `/v1/` needs an operator's token: `Authorization: Bearer <kid>:<token>`, where `<token>` is
//! the same time-limited token as the MQTT password (`<expiry>.<hex mac>`), e.g.
//! `Bearer operator:admin:1800000000.3f…` (`pairbus-agent --identity FILE token --bearer`).

use crate::embedded::Embedded;
use crate::journal::Journal;
use crate::log::{LogStore, SledLog};
use crate::metrics::Metrics;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use pairbus_projector::api::{self, Backend, MAX_REFUSAL_ALERTS};
use pairbus_projector::query::RecordSource;
use pairbus_projector::{Alert, Projections};
use pairbus_schemas::{Record, RootSecret};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};

pub use pairbus_projector::api::{
    check_bearer, ApiError, AS_OF_RECEIVED_AT, AS_OF_SEQ, MAX_REPLAY_RECORDS,
};

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The event log.
    pub log: Arc<SledLog>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The refusals journal.
    pub journal: Arc<Journal>,
    /// To check operator tokens, and to replay with the embedded projector's keys.
    pub root: RootSecret,
    /// The embedded projector (locked only while a query runs).
    pub projections: Arc<Mutex<Embedded>>,
    /// Held by the running `/v1/replay` (one at a time).
    pub replays: Arc<Mutex<()>>,
}

impl Backend for AppState {
    fn read<R>(&self, f: impl FnOnce(&Projections) -> R) -> R {
        let e = self.projections.lock().unwrap_or_else(|e| e.into_inner());
        f(e.state())
    }

    fn record(&self, seq: u64) -> Option<Record> {
        LogRecords(&*self.log).record(seq).map(Cow::into_owned)
    }

    fn range(&self, seqs: Range<u64>) -> Result<Vec<Record>, String> {
        self.log.range(seqs).map_err(|e| e.to_string())
    }

    fn head(&self) -> u64 {
        self.log.head().seq
    }

    fn root(&self) -> &RootSecret {
        &self.root
    }

    fn replays(&self) -> &Mutex<()> {
        &self.replays
    }

    fn refusals(&self) -> Vec<Alert> {
        match self.journal.latest(MAX_REFUSAL_ALERTS) {
            Ok(entries) => entries
                .iter()
                .filter_map(crate::journal::Entry::alert)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading the refusals journal failed");
                Vec::new()
            }
        }
    }
}

/// The sled log as a [`RecordSource`]: `history` reads its entries' event details from it
/// (the HTTP API through [`AppState`], and `pairbus-broker demo`).
pub struct LogRecords<'a>(pub &'a dyn LogStore);

impl RecordSource for LogRecords<'_> {
    fn record(&self, seq: u64) -> Option<Cow<'_, Record>> {
        match self.0.get(seq) {
            Ok(r) => r.map(Cow::Owned),
            Err(e) => {
                tracing::warn!(seq, error = %e, "history: reading a record failed");
                None
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

/// The routes, separate from the listener so that tests can call them directly.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/head",
            get(|State(s): State<AppState>| async move {
                let head = s.log.head();
                Json(serde_json::json!({"seq": head.seq, "hash": hex::encode(head.hash)}))
            }),
        )
        .route(
            "/v1/refusals",
            get(
                |State(s): State<AppState>, Query(q): Query<Limit>| async move {
                    match s.journal.latest(q.limit.unwrap_or(100).min(10_000)) {
                        Ok(entries) => Json(entries).into_response(),
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Json(serde_json::json!({ "error": e.to_string() })),
                        )
                            .into_response(),
                    }
                },
            ),
        )
        .merge(api::routes::<AppState>())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            api::require_operator::<AppState>,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .merge(v1)
        .fallback(api::not_found)
        .with_state(state)
}

/// A running HTTP server on its own runtime.
pub struct HttpServer {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HttpServer {
    /// Binds `addr` and serves until [`HttpServer::shutdown`].
    pub fn start(addr: SocketAddr, state: AppState) -> std::io::Result<Self> {
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
        let app = router(state);
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
