//! The broker's read-only HTTP API.
//!
//! - `GET /healthz` (no auth): `ok`;
//! - `GET /metrics` (no auth, Prometheus text): counters and histograms of [`Metrics`];
//! - `GET /v1/head`: the chain head `{"seq", "hash"}`;
//! - `GET /v1/refusals?limit=N`: the newest refused events from the journal (default 100).
//!
//! The embedded projector's views (module `views`; the JSON is exactly what
//! `pairbus-projector --export FILE <command> --json` prints for the same log, shapes in
//! `projector/README.md`):
//!
//! - `GET /v1/devices?state=S`: every device card (sorted by id), optionally in state `S`;
//! - `GET /v1/devices/<id>`: one device card;
//! - `GET /v1/devices/<id>/history?since=T&until=T&type=E`: `{"device", "entries"}`, the
//!   complete ordered trail with each event's `details`; `since`/`until` (inclusive, on
//!   `received_at`) are Unix ms or RFC 3339; `type` is an event type, repeatable or
//!   comma-separated;
//! - `GET /v1/graph?format=json|text|dot`: the pairing graph `{"nodes", "edges"}` (default
//!   json), or its text or Graphviz rendering;
//! - `GET /v1/alerts`: every alert, in log order;
//! - `GET /v1/stats`: `{"last_seq", "actions", "devices", "alerts", "undecodable"}`;
//! - `GET /v1/replay?as_of=SEQ|T&view=device|graph|devices&id=ID`: the view exactly as it
//!   was after log position `SEQ` (or the last record received at or before time `T`), folded
//!   from the log by a fresh projector (at most [`MAX_REPLAY_RECORDS`] records, one replay at
//!   a time); headers `pairbus-as-of-seq` and `pairbus-as-of-received-at` say where it stopped.
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
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pairbus_schemas::{Kid, PrincipalKind, RootSecret};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

mod views;
pub use views::{ApiError, LogRecords, AS_OF_RECEIVED_AT, AS_OF_SEQ, MAX_REPLAY_RECORDS};

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

/// Checks an `Authorization` header value: `Bearer <operator kid>:<token>` at `now` (seconds).
pub fn check_bearer(root: &RootSecret, header: Option<&str>, now: u64) -> Result<Kid, String> {
    let value = header.ok_or("missing Authorization header")?;
    let cred = value
        .strip_prefix("Bearer ")
        .ok_or("expected `Authorization: Bearer <kid>:<token>`")?;
    let (kid, token) = cred.rsplit_once(':').ok_or("expected <kid>:<token>")?;
    let kid = Kid::parse(kid).map_err(|e| e.to_string())?;
    if kid.kind() != PrincipalKind::Operator {
        return Err(format!("{kid} is not an operator"));
    }
    root.derive(&kid)
        .check_token(&kid, token, now)
        .map_err(|e| e.to_string())?;
    Ok(kid)
}

async fn require_operator(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match check_bearer(&s.root, header, now) {
        Ok(_) => next.run(req).await,
        Err(why) => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": why, "code": "unauthorized" })),
        )
            .into_response(),
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
        .merge(views::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .merge(v1)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "error": "no such endpoint", "code": "not_found" })),
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_operator_tokens() {
        let root = RootSecret::from_bytes([5; 32]);
        let op = Kid::parse("operator:admin").unwrap();
        let tok = root.derive(&op).mint_token(&op, 1_000 + 60);
        let header = format!("Bearer operator:admin:{tok}");
        assert_eq!(check_bearer(&root, Some(&header), 1_000).unwrap(), op);
        assert!(check_bearer(&root, None, 1_000).is_err());
        assert!(check_bearer(&root, Some(&format!("Basic {tok}")), 1_000).is_err());
        assert!(check_bearer(&root, Some(&header), 2_000)
            .unwrap_err()
            .contains("expired"));
        let dev = Kid::parse("device:0123456789abcdef").unwrap();
        let dtok = root.derive(&dev).mint_token(&dev, 1_060);
        let e = check_bearer(&root, Some(&format!("Bearer {dev}:{dtok}")), 1_000).unwrap_err();
        assert!(e.contains("not an operator"), "{e}");
    }
}
